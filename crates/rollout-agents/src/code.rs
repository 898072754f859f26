//! Code agents (term-executor style): a program run as the agent.
//!
//! `-a code:PATH` names a program file, or a directory whose files are concatenated in path order
//! (the term-executor's `agent_code/`). The language comes from the extension; the program runs in
//! the task's working directory with `TASK_PROMPT` (path of the instruction), `REPO_DIR` (the
//! working directory) and `ROLLOUT_TASK_INSTRUCTION`.

use crate::{request, run_logged, Agent, AgentContext, AgentError, AgentFiles};
use async_trait::async_trait;
use rollout_core::result::{AgentInfo, CommandOutcome};
use rollout_core::Task;
use std::path::{Path, PathBuf};

/// Where the program is placed inside the environment.
const AGENT_DIR: &str = "/rollout/agent";

/// Languages a code agent may be written in, by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Python,
    JavaScript,
    TypeScript,
    Shell,
    Go,
    Rust,
}

impl Language {
    /// The language of a file extension.
    pub fn from_extension(ext: &str) -> Option<Self> {
        Some(match ext {
            "py" => Self::Python,
            "js" | "mjs" | "cjs" => Self::JavaScript,
            "ts" => Self::TypeScript,
            "sh" | "bash" => Self::Shell,
            "go" => Self::Go,
            "rs" => Self::Rust,
            _ => return None,
        })
    }

    /// File extension used for the program.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Python => "py",
            Self::JavaScript => "js",
            Self::TypeScript => "ts",
            Self::Shell => "sh",
            Self::Go => "go",
            Self::Rust => "rs",
        }
    }

    /// The shell command that runs `program` (an absolute path inside the environment).
    pub fn command(self, program: &str) -> String {
        match self {
            Self::Python => format!("python3 {program}"),
            Self::JavaScript => format!("node {program}"),
            // Node ≥ 22.6 runs TypeScript by stripping types.
            Self::TypeScript => format!("node --experimental-strip-types {program}"),
            Self::Shell => format!("bash {program}"),
            Self::Go => format!("go run {program}"),
            Self::Rust => {
                format!("rustc -O -o /tmp/rollout-agent-bin {program} && /tmp/rollout-agent-bin")
            }
        }
    }

    /// Debian packages that provide the runtime (for generated environments).
    pub fn debian_packages(self) -> &'static [&'static str] {
        match self {
            Self::Python => &["python3", "python3-pip", "python3-venv"],
            Self::JavaScript | Self::TypeScript => &["nodejs", "npm"],
            Self::Shell => &[],
            Self::Go => &["golang-go"],
            Self::Rust => &["rustc", "cargo"],
        }
    }
}

/// The program of a code agent: a file, or a directory whose program files are concatenated in
/// path order. Returns the program text and its language.
pub fn read_program(source: &Path) -> Result<(Vec<u8>, Language), String> {
    let files: Vec<PathBuf> = if source.is_dir() {
        let mut v = rollout_core::digest::list_files(source)
            .map_err(|e| format!("reading {}: {e}", source.display()))?
            .into_iter()
            .map(|rel| source.join(rel))
            .collect::<Vec<_>>();
        v.retain(|p| language_of(p).is_some());
        v
    } else if source.is_file() {
        vec![source.to_path_buf()]
    } else {
        return Err(format!(
            "code agent {}: no such file or directory",
            source.display()
        ));
    };
    let mut languages: Vec<Language> = files.iter().filter_map(|p| language_of(p)).collect();
    languages.dedup();
    let language = match languages.as_slice() {
        [l] => *l,
        [] => {
            return Err(format!(
                "code agent {}: no program file (.py .js .ts .sh .go .rs) found",
                source.display()
            ))
        }
        _ => {
            return Err(format!(
                "code agent {}: files in several languages; use one",
                source.display()
            ))
        }
    };
    let mut program = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).map_err(|e| format!("reading {}: {e}", f.display()))?;
        program.extend_from_slice(&bytes);
        if !program.ends_with(b"\n") {
            program.push(b'\n');
        }
    }
    Ok((program, language))
}

fn language_of(p: &Path) -> Option<Language> {
    p.extension()
        .and_then(|e| e.to_str())
        .and_then(Language::from_extension)
}

/// Write the program of `source` into rollout's cache, content-addressed
/// (`<cache>/code-agents/<blake3>/agent.<ext>`), and return that directory and the language.
pub fn prepare_program(source: &Path) -> Result<(PathBuf, Language), String> {
    let (program, language) = read_program(source)?;
    let dir = rollout_core::cache_root()
        .join("code-agents")
        .join(&rollout_core::digest::bytes_digest(&program)[..24]);
    let path = dir.join(format!("agent.{}", language.extension()));
    if !path.is_file() {
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let tmp = dir.join(format!(".agent.{}.tmp", std::process::id()));
        std::fs::write(&tmp, &program)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok((dir, language))
}

/// A program run as the agent.
pub struct CodeAgent {
    name: String,
    /// Directory holding the prepared program (`agent.<ext>`).
    dir: PathBuf,
    language: Language,
    model: Option<String>,
}

impl CodeAgent {
    /// An agent running the program prepared in `dir` (see [`prepare_program`]).
    pub fn new(name: String, dir: PathBuf, language: Language, model: Option<String>) -> Self {
        Self {
            name,
            dir,
            language,
            model,
        }
    }
}

#[async_trait]
impl Agent for CodeAgent {
    fn check(&self, task: &Task) -> Result<(), String> {
        crate::no_mcp_support(&self.name, "a program agent (code:)", task)
    }

    fn info(&self) -> AgentInfo {
        AgentInfo {
            name: self.name.clone(),
            version: None,
            model_name: self.model.clone(),
        }
    }

    fn files(&self, _task: &Task) -> Vec<AgentFiles> {
        vec![AgentFiles {
            target: AGENT_DIR.into(),
            source: self.dir.clone(),
            aliases: Vec::new(),
        }]
    }

    async fn install(&self, _ctx: &AgentContext<'_>) -> Result<Option<CommandOutcome>, AgentError> {
        Ok(None)
    }

    async fn run(&self, ctx: &AgentContext<'_>) -> Result<CommandOutcome, AgentError> {
        let program = format!("{AGENT_DIR}/agent.{}", self.language.extension());
        let script = format!(
            "export REPO_DIR=\"${{REPO_DIR:-$PWD}}\"; export TASK_PROMPT={prompt}; cd \"$REPO_DIR\" && {cmd}",
            prompt = crate::INSTRUCTION_PATH,
            cmd = self.language.command(&program)
        );
        let mut req = request(ctx, script, ctx.run_timeout, ctx.user.clone());
        if let Some(model) = &self.model {
            req.env.push(("ROLLOUT_MODEL".into(), model.clone()));
        }
        run_logged(ctx, "command-0", req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_programs_are_concatenated_in_path_order() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("b.py"), "print('b')").unwrap();
        std::fs::write(src.path().join("a.py"), "print('a')\n").unwrap();
        std::fs::write(src.path().join("README.md"), "ignored").unwrap();
        let (program, lang) = read_program(src.path()).unwrap();
        assert_eq!(lang, Language::Python);
        assert_eq!(
            String::from_utf8(program).unwrap(),
            "print('a')\nprint('b')\n"
        );
    }

    #[test]
    fn mixed_or_unknown_languages_are_refused() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("a.py"), "").unwrap();
        std::fs::write(src.path().join("b.sh"), "").unwrap();
        assert!(read_program(src.path())
            .unwrap_err()
            .contains("several languages"));
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("a.txt"), "").unwrap();
        assert!(read_program(src.path()).unwrap_err().contains("no program"));
    }

    #[test]
    fn languages_have_runners() {
        for ext in ["py", "js", "ts", "sh", "go", "rs"] {
            let l = Language::from_extension(ext).unwrap();
            assert!(l.command("/p").contains("/p"));
        }
    }
}
