//! Agents: what runs inside the environment to do the task.
//!
//! An [`Agent`] installs itself (optionally) and runs. Built in: `oracle` (runs the task's
//! `solution/solve.sh`), `nop` (does nothing: the baseline a task must fail), and command agents
//! defined in the job file (`install` and `execute` shell scripts). Agents only run commands through
//! the [`Environment`]; the runner decides what their outcome means.

pub mod agent_logs;
pub mod code;
pub mod installed;
pub mod llm;
pub mod mcp;
pub mod streams;

use async_trait::async_trait;
use rollout_core::job_config::AgentSpec;
use rollout_core::result::{AgentInfo, CommandOutcome};
use rollout_core::Task;
use rollout_env::{EnvError, Environment, ExecRequest};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Path of the instruction inside the environment; `ROLLOUT_TASK_INSTRUCTION` points here.
pub const INSTRUCTION_PATH: &str = "/rollout/instruction.md";

/// What an agent gets to work with.
pub struct AgentContext<'a> {
    pub task: &'a Task,
    pub env: &'a dyn Environment,
    /// Host directory for the agent's logs (`<trial>/agent`).
    pub logs_dir: &'a Path,
    /// User the agent runs as (`[agent] user`).
    pub user: Option<String>,
    pub install_timeout: Duration,
    pub run_timeout: Duration,
    /// Variables for every agent command (the instruction path …).
    pub env_vars: Vec<(String, String)>,
    /// Cap per captured stream.
    pub output_cap: usize,
}

/// Why an agent could not even be run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Host(String),
    /// The model provider failed (after the agent's own retries); `outcome` is what the agent
    /// did until then (its model usage), when it knows.
    #[error("{message}")]
    Provider {
        kind: rollout_core::ErrorKind,
        message: String,
        outcome: Option<Box<CommandOutcome>>,
    },
}

/// A host directory an agent needs inside the environment from the start.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentFiles {
    /// Absolute path inside the environment.
    pub target: String,
    /// Host directory whose contents go there, or a single file placed inside it (a private
    /// copy: the agent may change it).
    pub source: std::path::PathBuf,
    /// Other paths inside the environment that must show the same directory.
    pub aliases: Vec<String>,
}

/// An agent.
#[async_trait]
pub trait Agent: Send + Sync {
    /// Name, version and model, for results.
    fn info(&self) -> AgentInfo;

    /// Whether this agent can run `task` at all (e.g. the oracle needs `solution/solve.sh`).
    fn check(&self, _task: &Task) -> Result<(), String> {
        Ok(())
    }

    /// Directories to place in the environment when it is set up (before install).
    fn files(&self, _task: &Task) -> Vec<AgentFiles> {
        Vec::new()
    }

    /// Directories to place in the environment before step `step` (0-based) of a multi-step
    /// task runs; each target is emptied first. The oracle puts the step's solution at
    /// `/solution`.
    fn step_files(&self, _task: &Task, _step: usize) -> Vec<AgentFiles> {
        Vec::new()
    }

    /// Install step; `None` when the agent has nothing to install.
    async fn install(&self, ctx: &AgentContext<'_>) -> Result<Option<CommandOutcome>, AgentError>;

    /// Do the task.
    async fn run(&self, ctx: &AgentContext<'_>) -> Result<CommandOutcome, AgentError>;
}

/// Run a command and keep its output under `<logs_dir>/<step>/` as `stdout.txt`, `stderr.txt`
/// and `return-code.txt` (Harbor's layout).
pub async fn run_logged(
    ctx: &AgentContext<'_>,
    step: &str,
    req: ExecRequest,
) -> Result<CommandOutcome, AgentError> {
    let out = ctx.env.exec(req).await?;
    let dir = ctx.logs_dir.join(step);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("stdout.txt"), out.stdout.to_text())?;
        std::fs::write(dir.join("stderr.txt"), out.stderr.to_text())?;
        let code = match (out.timed_out, out.exit_code) {
            (true, _) => "timeout".to_string(),
            (false, Some(c)) => c.to_string(),
            (false, None) => "unknown".to_string(),
        };
        std::fs::write(dir.join("return-code.txt"), code)
    };
    write()
        .map_err(|e| AgentError::Host(format!("writing agent logs to {}: {e}", dir.display())))?;
    Ok(outcome_of(&out))
}

/// Bookkeeping of an exec for results.
pub fn outcome_of(out: &rollout_env::ExecOutput) -> CommandOutcome {
    CommandOutcome {
        exit_code: out.exit_code,
        timed_out: out.timed_out,
        seconds: out.duration.as_secs_f64(),
        stdout_bytes: out.stdout.total,
        stderr_bytes: out.stderr.total,
        output_truncated: out.stdout.truncated() || out.stderr.truncated(),
        output_limit_exceeded: out.output_limit_exceeded,
        usage: None,
    }
}

fn request(
    ctx: &AgentContext<'_>,
    script: String,
    timeout: Duration,
    user: Option<String>,
) -> ExecRequest {
    let mut req = ExecRequest::bash(script, timeout)
        .user(user)
        .env(ctx.env_vars.iter().cloned());
    req.output_cap = ctx.output_cap;
    req
}

/// Refuse a task with MCP servers for an agent that has no way to receive them (a run without
/// the task's tools would be scored as if the agent had failed on its own).
pub(crate) fn no_mcp_support(name: &str, what: &str, task: &Task) -> Result<(), String> {
    let servers = &task.config.environment.mcp_servers;
    if servers.is_empty() {
        return Ok(());
    }
    Err(format!(
        "agent {name} is {what}, which rollout cannot give the task's MCP servers ({}): use \
         rollout-agent or an installed agent that speaks MCP (claude-code, codex, gemini-cli, \
         opencode, goose)",
        servers
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Runs the task's reference solution: a copy of `solution/` is placed at `/solution` (and at
/// `/oracle`, the Rollout seed's name) when the environment is set up, and `solve.sh` runs.
pub struct Oracle;

#[async_trait]
impl Agent for Oracle {
    fn info(&self) -> AgentInfo {
        AgentInfo {
            name: "oracle".into(),
            version: None,
            model_name: None,
        }
    }

    fn check(&self, task: &Task) -> Result<(), String> {
        if task.is_multi_step() {
            for step in &task.config.steps {
                let solve = task.step_solution_dir(&step.name).join("solve.sh");
                if !solve.is_file() {
                    return Err(format!(
                        "the oracle agent needs {} for step {:?}, which does not exist",
                        solve.display(),
                        step.name
                    ));
                }
            }
            return Ok(());
        }
        if task.solution_dir().join("solve.sh").is_file() {
            Ok(())
        } else {
            Err(format!(
                "the oracle agent needs {}, which does not exist",
                task.solution_dir().join("solve.sh").display()
            ))
        }
    }

    fn files(&self, task: &Task) -> Vec<AgentFiles> {
        if task.is_multi_step() {
            // Each step brings its own solution (step_files).
            return Vec::new();
        }
        vec![AgentFiles {
            target: "/solution".into(),
            source: task.solution_dir(),
            aliases: vec!["/oracle".into()],
        }]
    }

    fn step_files(&self, task: &Task, step: usize) -> Vec<AgentFiles> {
        task.config
            .steps
            .get(step)
            .map(|s| AgentFiles {
                target: "/solution".into(),
                source: task.step_solution_dir(&s.name),
                aliases: vec!["/oracle".into()],
            })
            .into_iter()
            .collect()
    }

    async fn install(&self, _ctx: &AgentContext<'_>) -> Result<Option<CommandOutcome>, AgentError> {
        Ok(None)
    }

    async fn run(&self, ctx: &AgentContext<'_>) -> Result<CommandOutcome, AgentError> {
        let req = request(
            ctx,
            "bash /solution/solve.sh".into(),
            ctx.run_timeout,
            ctx.user.clone(),
        )
        .env(solution_env(ctx.task));
        run_logged(ctx, "command-0", req).await
    }
}

/// The task's `[solution] env`, `${VAR}` references expanded from the host (as Harbor does):
/// the environment of `solve.sh` only.
fn solution_env(task: &Task) -> Vec<(String, String)> {
    let (env, _missing) = rollout_core::envvars::expand_map(&task.config.solution_env);
    env.into_iter().collect()
}

/// Does nothing; every task should score 0 with it.
pub struct Nop;

#[async_trait]
impl Agent for Nop {
    fn info(&self) -> AgentInfo {
        AgentInfo {
            name: "nop".into(),
            version: None,
            model_name: None,
        }
    }

    async fn install(&self, _ctx: &AgentContext<'_>) -> Result<Option<CommandOutcome>, AgentError> {
        Ok(None)
    }

    async fn run(&self, _ctx: &AgentContext<'_>) -> Result<CommandOutcome, AgentError> {
        Ok(CommandOutcome {
            exit_code: Some(0),
            ..Default::default()
        })
    }
}

/// A command agent from the job file: `install` runs once as root (installing usually needs it),
/// `execute` runs as the task's agent user, both with `bash -c` and the agent's `env`.
pub struct CommandAgent {
    spec: AgentSpec,
    env: Vec<(String, String)>,
}

impl CommandAgent {
    /// Build from a job-file entry; `${VAR}` in `env` values is expanded from the host now, and
    /// an unset variable without a default is an error naming it.
    pub fn new(spec: &AgentSpec) -> Result<Self, String> {
        let (env, missing) = rollout_core::envvars::expand_map(&spec.env);
        if !missing.is_empty() {
            return Err(format!(
                "agent {}: env refers to unset host variable(s) {}: export them or give a default with ${{VAR:-default}}",
                spec.name,
                missing.join(", ")
            ));
        }
        Ok(Self {
            spec: spec.clone(),
            env: env.into_iter().collect(),
        })
    }

    fn with_env(&self, mut req: ExecRequest) -> ExecRequest {
        req.env.extend(self.env.iter().cloned());
        if let Some(model) = &self.spec.model_name {
            req.env.push(("ROLLOUT_MODEL".into(), model.clone()));
        }
        req
    }
}

#[async_trait]
impl Agent for CommandAgent {
    fn info(&self) -> AgentInfo {
        AgentInfo {
            name: self.spec.name.clone(),
            version: self.spec.version.clone(),
            model_name: self.spec.model_name.clone(),
        }
    }

    fn check(&self, task: &Task) -> Result<(), String> {
        no_mcp_support(&self.spec.name, "a command agent", task)
    }

    async fn install(&self, ctx: &AgentContext<'_>) -> Result<Option<CommandOutcome>, AgentError> {
        let Some(script) = &self.spec.install else {
            return Ok(None);
        };
        let req = self.with_env(request(
            ctx,
            script.clone(),
            ctx.install_timeout,
            Some("0".into()),
        ));
        run_logged(ctx, "setup", req).await.map(Some)
    }

    async fn run(&self, ctx: &AgentContext<'_>) -> Result<CommandOutcome, AgentError> {
        let script = self.spec.execute.clone().unwrap_or_default();
        let req = self.with_env(request(ctx, script, ctx.run_timeout, ctx.user.clone()));
        run_logged(ctx, "command-0", req).await
    }
}

/// The variables an agent reads from the host's environment when its entry's `env` does not
/// set them (API keys, endpoints). `rollout serve` sets them empty in submitted jobs: a
/// submitter's agent may not use, or see, the server's credentials.
pub fn host_env_keys(spec: &AgentSpec) -> Vec<&'static str> {
    if let Some(r) = installed::recipe(&spec.name) {
        return r.env_keys.to_vec();
    }
    if llm::NAMES.contains(&spec.name.as_str()) {
        return vec![
            "OPENAI_BASE_URL",
            "OPENAI_API_KEY",
            "ANTHROPIC_BASE_URL",
            "ANTHROPIC_API_KEY",
        ];
    }
    Vec::new()
}

/// The agent a job-file entry (or `-a NAME`) names.
pub fn from_spec(spec: &AgentSpec) -> Result<Arc<dyn Agent>, String> {
    if spec.execute.is_some() || spec.install.is_some() {
        if spec.execute.is_none() {
            return Err(format!(
                "agent {}: a command agent needs `execute:` (its install step alone does nothing)",
                spec.name
            ));
        }
        return Ok(Arc::new(CommandAgent::new(spec)?));
    }
    if let Some(path) = &spec.import_path {
        return Err(format!(
            "agent {}: import_path {path:?} names a Python class; rollout runs agents as commands: \
             give `install:` and `execute:` scripts instead",
            spec.name
        ));
    }
    if let Some(path) = spec.name.strip_prefix("code:") {
        let (dir, language) = code::prepare_program(Path::new(path))?;
        return Ok(Arc::new(code::CodeAgent::new(
            spec.name.clone(),
            dir,
            language,
            spec.model_name.clone(),
        )));
    }
    if let Some(agent) = installed::InstalledAgent::from_spec(spec) {
        return Ok(Arc::new(agent?));
    }
    if llm::NAMES.contains(&spec.name.as_str()) {
        return Ok(Arc::new(llm::LlmAgent::from_spec(spec)?));
    }
    match spec.name.as_str() {
        "oracle" => Ok(Arc::new(Oracle)),
        "nop" => Ok(Arc::new(Nop)),
        other => Err(format!(
            "unknown agent {other:?}: built-in agents are `oracle`, `nop`, `rollout-agent` (-m MODEL) and the installed CLI agents claude-code, codex, aider, opencode, gemini-cli, mini-swe-agent, openhands, openhands-sdk, qwen-code (goose and cursor-cli are known and refused: not on a package registry); use `code:PATH` for a program, or \
             define a command agent in the job file with `name`, `install` and `execute`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> AgentSpec {
        AgentSpec {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn builtins_and_command_agents_resolve() {
        assert_eq!(from_spec(&spec("oracle")).unwrap().info().name, "oracle");
        assert_eq!(from_spec(&spec("nop")).unwrap().info().name, "nop");
        let mut c = spec("mine");
        c.execute = Some("true".into());
        c.model_name = Some("m".into());
        let a = from_spec(&c).unwrap();
        assert_eq!(a.info().name, "mine");
        assert_eq!(a.info().model_name.as_deref(), Some("m"));
    }

    #[test]
    fn unknown_agent_says_what_exists() {
        let e = from_spec(&spec("claude-cod")).err().unwrap();
        assert!(e.contains("oracle") && e.contains("execute"), "{e}");
        let mut c = spec("x");
        c.install = Some("true".into());
        assert!(from_spec(&c).err().unwrap().contains("execute"));
    }

    #[test]
    fn command_agent_env_is_expanded_and_missing_vars_reported() {
        let mut c = spec("x");
        c.execute = Some("true".into());
        c.env
            .insert("K".into(), "${ROLLOUT_TEST_SURELY_UNSET_VAR}".into());
        let e = from_spec(&c).err().unwrap();
        assert!(e.contains("ROLLOUT_TEST_SURELY_UNSET_VAR"), "{e}");
        c.env.insert(
            "K".into(),
            "${ROLLOUT_TEST_SURELY_UNSET_VAR:-fallback}".into(),
        );
        assert!(from_spec(&c).is_ok());
    }
}
