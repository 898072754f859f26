//! Scaffold and repair with the built-in LLM agent: the same conversation loop as in trials,
//! with its tools run locally in the repository.
//!
//! The agent may write only under `.aider_fsm/` — never `pipeline.yml` (except when scaffolding
//! a repository that has none), never `.aider_fsm/artifacts/`. `write_file` outside that is
//! refused and the refusal is the tool's answer to the model; a `bash` command that changes a
//! file elsewhere has its changes undone (and is told so). Every session ends with a provenance
//! report listing each file it created, modified or deleted with BLAKE3 hashes before and after.

use crate::exec::{self, CmdSpec};
use crate::runner::{Repairer, StageResult};
use crate::security::{Policy, Unattended};
use crate::spec::{confine, FSM_DIR, PIPELINE_FILE};
use async_trait::async_trait;
use rollout_agents::llm::{LlmAgent, ToolHost};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Largest file whose content is kept to undo a change.
const RESTORE_FILE_CAP: u64 = 8 << 20;
/// Largest total content kept to undo changes.
const RESTORE_TOTAL_CAP: u64 = 256 << 20;
/// Bytes of a file `read_file` returns.
const READ_CAP: usize = 256 * 1024;

/// List every file under `dir` as a path relative to `repo` (no `.git`, symlinks not followed).
pub fn walk(dir: &Path, repo: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if e.file_name() != ".git" {
                walk(&p, repo, out);
            }
        } else if let Ok(rel) = p.strip_prefix(repo) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

/// Files a run writes (outputs, evidence, the venv): not part of the contract.
pub fn is_run_output(rel: &str) -> bool {
    let Some(rest) = rel.strip_prefix(".aider_fsm/") else {
        return false;
    };
    rest.starts_with("artifacts/")
        || rest.starts_with("venv/")
        || matches!(
            rest,
            "runtime_env.json"
                | "rollout.json"
                | "metrics.json"
                | "hints_used.json"
                | "hints_run.json"
        )
}

/// Where the agent may write.
#[derive(Debug, Clone, Copy)]
pub struct WriteScope {
    /// Scaffold of a repository without `pipeline.yml` may create it.
    pub pipeline_yml: bool,
}

impl WriteScope {
    fn allowed(&self, rel: &str) -> bool {
        let in_workspace =
            rel.starts_with(".aider_fsm/") && !rel.starts_with(".aider_fsm/artifacts/");
        in_workspace || (self.pipeline_yml && rel == PIPELINE_FILE)
    }
}

/// One file a session changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileChange {
    pub path: String,
    /// `created`, `modified` or `deleted`.
    pub change: String,
    pub blake3_before: Option<String>,
    pub blake3_after: Option<String>,
}

/// Provenance of a scaffold or repair session (`scaffold_provenance.json`,
/// `repair_provenance.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RepairReport {
    /// `scaffold` or `repair`.
    pub kind: String,
    /// The failed stage (repair).
    pub stage: Option<String>,
    pub failure: Option<String>,
    pub attempt: u32,
    pub model: String,
    pub started_at: String,
    pub duration_seconds: f64,
    /// Every file the session created, modified or deleted.
    pub changed_files: Vec<FileChange>,
    /// Writes refused and changes undone, each with its path and why.
    pub refused: Vec<String>,
    /// Tokens, turns, `stop_reason`.
    pub usage: Value,
    /// The model's final answer.
    pub summary: String,
    /// Why the session itself failed (provider error), if it did.
    pub error: Option<String>,
    pub trajectory: PathBuf,
}

type Snapshot = BTreeMap<String, (String, Option<Vec<u8>>)>;

/// Hash (and, within caps, keep) every file `pick` selects.
fn snapshot(repo: &Path, keep: bool, pick: &dyn Fn(&str) -> bool) -> Snapshot {
    let mut files = Vec::new();
    walk(repo, repo, &mut files);
    let mut total = 0u64;
    let mut out = BTreeMap::new();
    for rel in files.into_iter().filter(|r| pick(r)) {
        let Ok(bytes) = std::fs::read(repo.join(&rel)) else {
            continue;
        };
        let h = blake3::hash(&bytes).to_hex().to_string();
        let n = bytes.len() as u64;
        let kept = (keep && n <= RESTORE_FILE_CAP && total + n <= RESTORE_TOTAL_CAP).then(|| {
            total += n;
            bytes
        });
        out.insert(rel, (h, kept));
    }
    out
}

fn diff(before: &Snapshot, after: &Snapshot) -> Vec<FileChange> {
    let mut out = Vec::new();
    for (p, (h, _)) in before {
        match after.get(p) {
            None => out.push(FileChange {
                path: p.clone(),
                change: "deleted".into(),
                blake3_before: Some(h.clone()),
                blake3_after: None,
            }),
            Some((h2, _)) if h2 != h => out.push(FileChange {
                path: p.clone(),
                change: "modified".into(),
                blake3_before: Some(h.clone()),
                blake3_after: Some(h2.clone()),
            }),
            _ => {}
        }
    }
    for (p, (h, _)) in after {
        if !before.contains_key(p) {
            out.push(FileChange {
                path: p.clone(),
                change: "created".into(),
                blake3_before: None,
                blake3_after: Some(h.clone()),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The tools of a scaffold/repair session, run in the repository on this machine.
pub struct LocalTools {
    repo: PathBuf,
    scope: WriteScope,
    policy: Policy,
    /// Refused writes and undone changes, for the report.
    pub refused: Mutex<Vec<String>>,
}

impl LocalTools {
    pub fn new(repo: &Path, scope: WriteScope, policy: Policy) -> Self {
        Self {
            repo: repo.to_path_buf(),
            scope,
            policy,
            refused: Mutex::new(Vec::new()),
        }
    }

    fn refuse(&self, what: String) -> String {
        self.refused
            .lock()
            .expect("not poisoned")
            .push(what.clone());
        format!("error: refused: {what}")
    }

    /// Resolve a path the model gave, relative to the repository; refuse escapes.
    fn resolve(&self, path: &str) -> Result<(PathBuf, String), String> {
        let root = self.repo.canonicalize().map_err(|e| e.to_string())?;
        let rel_in = path
            .strip_prefix(&format!("{}/", root.display()))
            .unwrap_or(path);
        let p = confine(&root, rel_in)?;
        let rel = p
            .strip_prefix(&root)
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok((p, rel))
    }

    fn scope_note(&self) -> &'static str {
        if self.scope.pipeline_yml {
            "writes are allowed only under .aider_fsm/ (not .aider_fsm/artifacts/) and to a new pipeline.yml"
        } else {
            "writes are allowed only under .aider_fsm/ (never pipeline.yml, never .aider_fsm/artifacts/)"
        }
    }

    fn write_file(&self, path: &str, content: &str) -> String {
        let (p, rel) = match self.resolve(path) {
            Ok(x) => x,
            Err(e) => return self.refuse(format!("write_file {path}: {e}; {}", self.scope_note())),
        };
        if !self.scope.allowed(&rel) {
            return self.refuse(format!("write_file {rel}: {}", self.scope_note()));
        }
        if let Some(parent) = p.parent() {
            if let Err(e) = std::fs::create_dir_all(parent) {
                return format!("error: creating {}: {e}", parent.display());
            }
        }
        match std::fs::write(&p, content) {
            Ok(()) => format!("wrote {rel} ({} bytes)", content.len()),
            Err(e) => format!("error: writing {rel}: {e}"),
        }
    }

    fn read_file(&self, path: &str) -> String {
        let (p, rel) = match self.resolve(path) {
            Ok(x) => x,
            Err(e) => return format!("error: read_file {path}: {e}"),
        };
        match std::fs::read(&p) {
            Ok(b) => {
                let n = b.len();
                let mut s = String::from_utf8_lossy(&b[..n.min(READ_CAP)]).into_owned();
                if n > READ_CAP {
                    s.push_str(&format!("\n[truncated: {rel} has {n} bytes]"));
                }
                s
            }
            Err(e) => format!("error: read_file {rel}: {e}"),
        }
    }

    async fn bash(&self, command: &str, timeout: Duration) -> String {
        if let Err(b) = self.policy.check(command, &self.repo, false) {
            return format!("error: {b}");
        }
        let scope = self.scope;
        let protected = |r: &str| !scope.allowed(r);
        let before = snapshot(&self.repo, true, &protected);
        let env = [
            ("CI".to_string(), "1".to_string()),
            ("GIT_TERMINAL_PROMPT".to_string(), "0".to_string()),
        ];
        let out = match exec::run(
            &CmdSpec {
                cmd: command,
                workdir: &self.repo,
                env: &env,
                timeout,
                inherit_stdin: false,
                output_cap: 64 * 1024,
            },
            &CancellationToken::new(),
        )
        .await
        {
            Ok(o) => o,
            Err(e) => return format!("error: cannot run bash: {e}"),
        };
        let mut text = String::new();
        if out.timed_out {
            text.push_str(&format!("[killed after {} s]\n", timeout.as_secs()));
        }
        text.push_str(&format!("exit code: {}\n", out.rc));
        let so = String::from_utf8_lossy(&out.stdout);
        let se = String::from_utf8_lossy(&out.stderr);
        if !so.is_empty() {
            text.push_str(&format!("stdout:\n{so}\n"));
        }
        if !se.is_empty() {
            text.push_str(&format!("stderr:\n{se}\n"));
        }
        let after = snapshot(&self.repo, false, &protected);
        let changes = diff(&before, &after);
        if !changes.is_empty() {
            let mut undone = Vec::new();
            for c in &changes {
                let p = self.repo.join(&c.path);
                let ok = match before.get(&c.path) {
                    None => std::fs::remove_file(&p).is_ok(),
                    Some((_, Some(bytes))) => std::fs::write(&p, bytes).is_ok(),
                    Some((_, None)) => false,
                };
                undone.push(format!(
                    "{} {}{}",
                    c.change,
                    c.path,
                    if ok { "" } else { " (could not be undone)" }
                ));
            }
            text.push_str(&self.refuse(format!(
                "the command changed files outside the allowed area and the changes were undone: {}; {}",
                undone.join(", "),
                self.scope_note()
            )));
        }
        text
    }
}

#[async_trait]
impl ToolHost for LocalTools {
    async fn call(&self, name: &str, input: &Value, timeout: Duration) -> String {
        let arg = |k: &str| input.get(k).and_then(Value::as_str);
        match name {
            "bash" => match arg("command") {
                Some(c) => self.bash(c, timeout).await,
                None => "error: bash needs a `command` string".into(),
            },
            "read_file" => match arg("path") {
                Some(p) => self.read_file(p),
                None => "error: read_file needs a `path` string".into(),
            },
            "write_file" => match (arg("path"), arg("content")) {
                (Some(p), Some(c)) => self.write_file(p, c),
                _ => "error: write_file needs `path` and `content` strings".into(),
            },
            other => {
                format!("error: unknown tool {other:?}; the tools are bash, read_file, write_file")
            }
        }
    }
}

const SYSTEM: &str =
    "You maintain a repository's evaluation contract for the rollout pipeline runner. \
You act only through the tools: `bash` runs a non-interactive shell command in the repository root \
(under a security policy), `read_file` reads a file and `write_file` writes one (paths relative to \
the repository root). Do not ask questions: nobody will answer. When you are done, reply with a \
short summary and no tool call.";

const CONTRACT_RULES: &str = "The contract (pipeline.yml v1): stages auth, tests, deploy (setup_cmds, \
health_cmds, teardown_cmds, teardown_policy), rollout (run_cmds), evaluation and benchmark (run_cmds, \
metrics_path, required_keys); each with timeout_seconds, retries, env, workdir. Stage scripts live in \
.aider_fsm/stages/*.sh. Deploy setup must write .aider_fsm/runtime_env.json (a JSON object); rollout \
must write .aider_fsm/rollout.json whose paths.samples_jsonl names a JSONL file of \
{\"prompt\", \"completion\", \"reward\"} lines (at least one); evaluation must write its metrics \
JSON object (default .aider_fsm/metrics.json) with every required key and \"ok\": true only when the \
evaluation really succeeded. Never fake results: placeholder success is rejected. Commands like sudo, \
curl|sh, docker prune, interactive programs are blocked.";

/// An LLM agent session in the repository.
pub struct Assistant {
    pub agent: LlmAgent,
    pub model: String,
    /// Longest a session may take.
    pub session_timeout: Duration,
    pub security: crate::spec::SecuritySection,
}

/// `OPENAI_BASE_URL` from `OPENAI_API_BASE` when only the latter is set (non-empty).
pub fn base_url_alias(var: impl Fn(&str) -> Option<String>) -> BTreeMap<String, String> {
    let set = |k: &str| var(k).filter(|v| !v.is_empty());
    match (set("OPENAI_BASE_URL"), set("OPENAI_API_BASE")) {
        (None, Some(alias)) => BTreeMap::from([("OPENAI_BASE_URL".to_string(), alias)]),
        _ => BTreeMap::new(),
    }
}

impl Assistant {
    /// The built-in agent for `model` (endpoint from `OPENAI_BASE_URL`/`OPENAI_API_KEY`, as for
    /// trials; `OPENAI_API_BASE`, the seed's name, is an alias used when `OPENAI_BASE_URL` is
    /// unset); `max_turns` per session.
    pub fn new(model: &str, max_turns: u64, session_timeout: Duration) -> Result<Self, String> {
        let mut kwargs = BTreeMap::new();
        kwargs.insert("max_turns".to_string(), json!(max_turns));
        let agent = LlmAgent::from_spec(&rollout_core::AgentSpec {
            name: "rollout-agent".into(),
            model_name: Some(model.to_string()),
            kwargs,
            env: base_url_alias(|k| std::env::var(k).ok()),
            ..Default::default()
        })?;
        Ok(Self {
            agent,
            model: model.to_string(),
            session_timeout,
            security: Default::default(),
        })
    }

    async fn session(
        &self,
        repo: &Path,
        kind: &str,
        scope: WriteScope,
        instruction: &str,
        dir: &Path,
    ) -> RepairReport {
        let t0 = Instant::now();
        let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let tracked = |r: &str| scope.allowed(r) && !crate::assist::is_run_output(r);
        let before = snapshot(repo, false, &tracked);
        let policy = Policy::new(&self.security, Unattended::Strict).unwrap_or_else(|_| {
            Policy::new(&Default::default(), Unattended::Strict)
                .expect("the default policy compiles")
        });
        let tools = LocalTools::new(repo, scope, policy);
        let trajectory = dir.join("trajectory.json");
        let outcome = self
            .agent
            .converse(
                SYSTEM,
                instruction,
                &tools,
                Instant::now() + self.session_timeout,
                &trajectory,
            )
            .await;
        let after = snapshot(repo, false, &tracked);
        let (usage, summary, error) = match outcome {
            Ok(c) => (
                serde_json::to_value(&c.usage).unwrap_or_default(),
                c.final_text,
                None,
            ),
            Err(e) => (Value::Null, String::new(), Some(e.to_string())),
        };
        RepairReport {
            kind: kind.into(),
            stage: None,
            failure: None,
            attempt: 1,
            model: self.model.clone(),
            started_at,
            duration_seconds: t0.elapsed().as_secs_f64(),
            changed_files: diff(&before, &after),
            refused: tools.refused.into_inner().unwrap_or_default(),
            usage,
            summary,
            error,
            trajectory,
        }
    }

    /// Write a minimal contract into a repository that has none. Refuses when `pipeline.yml`
    /// exists. The report goes to `dir/scaffold_provenance.json`.
    pub async fn scaffold(&self, repo: &Path, dir: &Path) -> Result<RepairReport, String> {
        if repo.join(PIPELINE_FILE).exists() {
            return Err(format!(
                "{} already has a pipeline.yml: scaffold only writes a contract where there is none",
                repo.display()
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut files = Vec::new();
        walk(repo, repo, &mut files);
        files.sort();
        let listing: Vec<&str> = files.iter().take(200).map(String::as_str).collect();
        let readme = ["README.md", "README.rst", "README.txt", "README"]
            .iter()
            .find_map(|r| std::fs::read_to_string(repo.join(r)).ok())
            .map(|t| t.chars().take(4000).collect::<String>())
            .unwrap_or_default();
        let instruction = format!(
            "This repository has no pipeline.yml. Write a minimal, working contract for it: \
             pipeline.yml (version: 1) at the repository root and its stage scripts under \
             {FSM_DIR}/stages/ (tests.sh, deploy_setup.sh, deploy_health.sh, deploy_teardown.sh, \
             rollout.sh, evaluation.sh as the repository needs). Check them by running them.\n\n\
             {CONTRACT_RULES}\n\nFiles in the repository ({} in all):\n{}\n\nREADME:\n{readme}",
            files.len(),
            listing.join("\n")
        );
        let mut report = self
            .session(
                repo,
                "scaffold",
                WriteScope { pipeline_yml: true },
                &instruction,
                dir,
            )
            .await;
        if report.error.is_none() && !repo.join(PIPELINE_FILE).is_file() {
            report.error = Some("the agent did not write pipeline.yml".into());
        }
        let text = serde_json::to_vec_pretty(&report).unwrap_or_default();
        std::fs::write(dir.join("scaffold_provenance.json"), text)
            .map_err(|e| format!("writing {}: {e}", dir.display()))?;
        Ok(report)
    }
}

fn tail_of(path: &Path, n: usize) -> String {
    let Ok(b) = std::fs::read(path) else {
        return String::new();
    };
    let start = b.len().saturating_sub(n);
    String::from_utf8_lossy(&b[start..]).into_owned()
}

#[async_trait]
impl Repairer for Assistant {
    async fn repair(
        &self,
        repo: &Path,
        failed: &StageResult,
        attempt: u32,
        dir: &Path,
    ) -> RepairReport {
        let artifacts = dir.parent().unwrap_or(dir);
        let mut evidence = String::new();
        if let Some(a) = failed.commands.last().and_then(|c| c.attempts.last()) {
            for s in ["cmd.txt", "stdout.txt", "stderr.txt"] {
                let t = tail_of(&artifacts.join(format!("{}_{s}", a.evidence)), 4000);
                evidence.push_str(&format!("--- {s} (tail) ---\n{t}\n"));
            }
        }
        let pipeline = std::fs::read_to_string(repo.join(PIPELINE_FILE)).unwrap_or_default();
        let mut files = Vec::new();
        walk(&repo.join(FSM_DIR), repo, &mut files);
        files.retain(|f| !is_run_output(f));
        files.sort();
        let instruction = format!(
            "The pipeline stage `{}` failed: {}\n\nFix the contract so the stage passes for real. \
             You may change files under {FSM_DIR}/ only (not pipeline.yml, not {FSM_DIR}/artifacts/).\n\n\
             {CONTRACT_RULES}\n\nEvidence of the failing command:\n{evidence}\npipeline.yml:\n{pipeline}\n\
             Contract files under {FSM_DIR}/:\n{}",
            failed.stage,
            failed.reason.as_deref().unwrap_or("unknown"),
            files.join("\n")
        );
        let mut r = self
            .session(
                repo,
                "repair",
                WriteScope {
                    pipeline_yml: false,
                },
                &instruction,
                dir,
            )
            .await;
        r.stage = Some(failed.stage.clone());
        r.failure = failed.reason.clone();
        r.attempt = attempt;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(repo: &Path, pipeline_yml: bool) -> LocalTools {
        LocalTools::new(
            repo,
            WriteScope { pipeline_yml },
            Policy::new(&Default::default(), Unattended::Strict).unwrap(),
        )
    }

    #[tokio::test]
    async fn writes_outside_the_contract_workspace_are_refused_or_undone() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path();
        std::fs::write(repo.join("pipeline.yml"), "version: 1\n").unwrap();
        std::fs::write(repo.join("app.py"), "print(1)\n").unwrap();
        std::fs::create_dir_all(repo.join(".aider_fsm/artifacts/r1")).unwrap();
        std::fs::write(repo.join(".aider_fsm/artifacts/r1/x.txt"), "evidence").unwrap();
        let t = tools(repo, false);
        let w = |p: &str| t.write_file(p, "x");
        assert!(w(".aider_fsm/stages/tests.sh").starts_with("wrote"));
        for p in [
            "pipeline.yml",
            "app.py",
            ".aider_fsm/artifacts/r1/x.txt",
            "../outside.txt",
            "/etc/passwd",
        ] {
            assert!(w(p).starts_with("error: refused"), "{p}: {}", w(p));
        }
        assert_eq!(
            std::fs::read_to_string(repo.join("app.py")).unwrap(),
            "print(1)\n"
        );
        assert_eq!(
            std::fs::read_to_string(repo.join("pipeline.yml")).unwrap(),
            "version: 1\n"
        );
        let out = t
            .bash(
                "echo hacked > app.py; echo new > new.txt; rm .aider_fsm/artifacts/r1/x.txt; echo ok > .aider_fsm/ok.txt",
                Duration::from_secs(10),
            )
            .await;
        assert!(
            out.contains("error: refused") && out.contains("undone"),
            "{out}"
        );
        assert_eq!(
            std::fs::read_to_string(repo.join("app.py")).unwrap(),
            "print(1)\n"
        );
        assert!(!repo.join("new.txt").exists());
        assert_eq!(
            std::fs::read_to_string(repo.join(".aider_fsm/artifacts/r1/x.txt")).unwrap(),
            "evidence"
        );
        assert!(repo.join(".aider_fsm/ok.txt").exists());
        assert_eq!(t.refused.lock().unwrap().len(), 6);
        // Scaffolding may create pipeline.yml.
        let s = tools(repo, true);
        assert!(s
            .write_file("pipeline.yml", "version: 1\n")
            .starts_with("wrote"));
        assert!(s
            .bash("sudo true", Duration::from_secs(5))
            .await
            .contains("safe.sudo"));
    }
}
