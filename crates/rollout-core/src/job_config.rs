//! Job files (FORMATS.md §2): YAML or JSON (JSON is parsed as YAML, of which it is a subset).

use crate::error::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A job: which tasks to run, with which agents, how many times, how many at once.
///
/// Every field is optional in the file; [`JobConfig::validate`] checks that there is at least one
/// task source. Relative paths are resolved against the directory of the job file by
/// [`JobConfig::load`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct JobConfig {
    /// Job name; default: the start time `YYYY-MM-DD__HH-MM-SS`.
    pub name: Option<String>,
    /// Parent directory of job directories; default `jobs`.
    pub jobs_dir: Option<PathBuf>,
    /// Trials per (agent, task); default 1.
    pub n_attempts: Option<u32>,
    /// Trials running at once; default 4.
    pub n_concurrent_trials: Option<usize>,
    /// Multiplies every timeout; default 1.0.
    pub timeout_multiplier: Option<f64>,
    /// Replaces `timeout_multiplier` for the agent run when set.
    pub agent_timeout_multiplier: Option<f64>,
    /// Replaces `timeout_multiplier` for the agent install step when set.
    #[serde(alias = "agent_setup_timeout_multiplier")]
    pub agent_install_timeout_multiplier: Option<f64>,
    /// Replaces `timeout_multiplier` for the verifier when set.
    pub verifier_timeout_multiplier: Option<f64>,
    /// Replaces `timeout_multiplier` for environment builds when set.
    #[serde(alias = "environment_build_timeout_multiplier")]
    pub build_timeout_multiplier: Option<f64>,
    /// Retries of infrastructure failures.
    pub retry: Option<RetryConfig>,
    /// Stop scheduling new trials once this many have ended with an infrastructure or model
    /// provider error (after their retries); the trials already running finish. Default: never.
    pub max_errors: Option<u32>,
    /// Harbor's older block; mapped onto `n_concurrent_trials` and `retry`.
    pub orchestrator: Option<OrchestratorConfig>,
    /// Where and how environments run.
    pub environment: EnvironmentSpec,
    /// Verifier overrides.
    pub verifier: VerifierSpec,
    /// Aggregate metrics to report (mean is always reported).
    pub metrics: Vec<MetricSpec>,
    /// Agents to run each task with; default `[oracle]`.
    pub agents: Vec<AgentSpec>,
    /// Dataset sources.
    pub datasets: Vec<DatasetSpec>,
    /// Single tasks.
    pub tasks: Vec<TaskSpec>,
    /// Term-executor archives (zip / tar.gz) whose tasks to run (a rollout extension).
    pub archives: Vec<PathBuf>,
    /// Base image for executor-archive tasks (default: debian:bookworm-slim + git + runtime).
    pub executor_image: Option<String>,
    /// Shuffle the tasks with this seed before `-l/--n-tasks` (a rollout extension).
    pub shuffle_seed: Option<u64>,
    /// Where the instruction is also placed inside the environment, and what
    /// `ROLLOUT_TASK_INSTRUCTION` names (the Rollout seed's key; default
    /// `/rollout/instruction.md`).
    pub instruction_path: Option<String>,
    /// rollout's log level for this job (the Rollout seed's key); `ROLLOUT_LOG` wins.
    pub log_level: Option<LogLevel>,
}

/// `log_level:` (the Rollout seed's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    #[serde(alias = "warning")]
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Directories an instruction may not be placed in: the verifier's, the tests', and rollout's
/// own files.
const RESERVED_DIRS: [&str; 5] = ["/logs", "/tests", "/solution", "/oracle", "/rollout"];

/// Check `instruction_path`: absolute, plain (no `.`/`..`, no trailing `/`), outside the
/// directories rollout and the verifier own.
pub fn check_instruction_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') || p.ends_with('/') || p.contains('\0') {
        return Err(format!(
            "{p:?}: expected an absolute file path inside the environment, such as /tmp/instruction.md"
        ));
    }
    if p.split('/')
        .skip(1)
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!("{p:?}: no empty, `.` or `..` components"));
    }
    if let Some(d) = RESERVED_DIRS
        .iter()
        .find(|d| p == **d || p.starts_with(&format!("{d}/")))
    {
        return Err(format!(
            "{p:?}: {d} belongs to rollout or the verifier; choose another directory (e.g. /tmp)"
        ));
    }
    Ok(())
}

/// `retry:` — exponential backoff for infrastructure failures. Read in Harbor's words
/// (`max_retries`, `min_wait_sec`, `max_wait_sec`, `multiplier`) or the Rollout seed's
/// (`max_attempts` retries, `initial_delay_ms`, `max_delay_ms`, `multiplier`; `max_attempts`
/// defaults to 3 there), not both for one setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "RetryRepr")]
pub struct RetryConfig {
    pub max_retries: u32,
    pub min_wait_sec: f64,
    pub max_wait_sec: f64,
    pub multiplier: f64,
}

impl RetryConfig {
    /// Seconds to wait before retry number `n` (1-based): `min × multiplier^(n-1)`, capped.
    pub fn backoff_seconds(&self, n: u32) -> f64 {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(n.saturating_sub(1).min(64) as i32);
        (self.min_wait_sec * exp).min(self.max_wait_sec).max(0.0)
    }
}

/// Both spellings of `retry:`.
#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
struct RetryRepr {
    max_retries: Option<u32>,
    min_wait_sec: Option<f64>,
    max_wait_sec: Option<f64>,
    multiplier: Option<f64>,
    max_attempts: Option<u32>,
    initial_delay_ms: Option<f64>,
    max_delay_ms: Option<f64>,
}

impl TryFrom<RetryRepr> for RetryConfig {
    type Error = String;
    fn try_from(r: RetryRepr) -> Result<Self, String> {
        fn one<T>(a: Option<T>, b: Option<T>, names: (&str, &str)) -> Result<Option<T>, String> {
            match (a, b) {
                (Some(_), Some(_)) => Err(format!(
                    "give `{}` or `{}` (the Rollout seed's name), not both",
                    names.0, names.1
                )),
                (a, b) => Ok(a.or(b)),
            }
        }
        let seed_style =
            r.max_attempts.is_some() || r.initial_delay_ms.is_some() || r.max_delay_ms.is_some();
        let d = RetryConfig::default();
        let max_retries = one(
            r.max_retries,
            r.max_attempts,
            ("max_retries", "max_attempts"),
        )?;
        let min_wait = one(
            r.min_wait_sec,
            r.initial_delay_ms.map(|ms| ms / 1000.0),
            ("min_wait_sec", "initial_delay_ms"),
        )?;
        let max_wait = one(
            r.max_wait_sec,
            r.max_delay_ms.map(|ms| ms / 1000.0),
            ("max_wait_sec", "max_delay_ms"),
        )?;
        let out = RetryConfig {
            max_retries: max_retries.unwrap_or(if seed_style { 3 } else { d.max_retries }),
            min_wait_sec: min_wait.unwrap_or(d.min_wait_sec),
            max_wait_sec: max_wait.unwrap_or(if seed_style { 30.0 } else { d.max_wait_sec }),
            multiplier: r.multiplier.unwrap_or(d.multiplier),
        };
        for (name, v) in [
            ("min_wait", out.min_wait_sec),
            ("max_wait", out.max_wait_sec),
            ("multiplier", out.multiplier),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} must be a number ≥ 0, found {v}"));
            }
        }
        Ok(out)
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 0,
            min_wait_sec: 1.0,
            max_wait_sec: 60.0,
            multiplier: 2.0,
        }
    }
}

/// Harbor's `orchestrator:` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(default)]
pub struct OrchestratorConfig {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub n_concurrent_trials: Option<usize>,
    pub retry: Option<RetryConfig>,
    pub quiet: Option<bool>,
}

/// Where environments run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum EnvironmentType {
    #[default]
    Docker,
    Local,
    Kubernetes,
}

/// When to keep a trial's container after it ends.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PreserveEnv {
    #[default]
    Never,
    Always,
    OnFailure,
}

/// When to refresh the base images a Dockerfile names from their registry before building.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Pull every base first, as `docker build --pull` does.
    Always,
    /// Pull a base only when the engine does not have it (Docker's default).
    #[default]
    Missing,
    /// Never pull: a base missing from the engine fails the build.
    Never,
}

impl PullPolicy {
    /// Whether this is the default (`missing`), which configuration files leave out.
    pub fn is_default(&self) -> bool {
        *self == Self::Missing
    }
}

impl std::str::FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Self::Always),
            "missing" => Ok(Self::Missing),
            "never" => Ok(Self::Never),
            other => Err(format!(
                "unknown pull policy {other:?} (expected always, missing or never)"
            )),
        }
    }
}

/// `environment:` block of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(default)]
pub struct EnvironmentSpec {
    #[serde(rename = "type")]
    pub kind: EnvironmentType,
    pub force_build: bool,
    /// When to refresh the base images of a built environment from their registry (`--pull`).
    #[serde(skip_serializing_if = "PullPolicy::is_default")]
    pub pull: PullPolicy,
    pub preserve_env: Option<PreserveEnv>,
    /// Harbor's `delete: false` means "keep every container" (preserve_env: always).
    pub delete: Option<bool>,
    pub override_cpus: Option<f64>,
    pub override_memory_mb: Option<u64>,
    pub override_storage_mb: Option<u64>,
    /// Process limit per container; default 4096.
    pub pids_limit: Option<i64>,
    /// Extra keys (namespace, context, image_registry … for other providers).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl EnvironmentSpec {
    /// The effective preserve policy (`preserve_env`, else Harbor's `delete`).
    pub fn preserve(&self) -> PreserveEnv {
        match (self.preserve_env, self.delete) {
            (Some(p), _) => p,
            (None, Some(false)) => PreserveEnv::Always,
            _ => PreserveEnv::Never,
        }
    }
}

/// `verifier:` block of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct VerifierSpec {
    pub override_timeout_sec: Option<f64>,
    pub max_timeout_sec: Option<f64>,
    pub disable: bool,
}

/// One entry of `metrics:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    #[serde(rename = "type")]
    pub kind: MetricKind,
    /// Arguments of the metric (`script_path` of `uv-script`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kwargs: BTreeMap<String, serde_json::Value>,
}

/// Aggregate over trial rewards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    Mean,
    Sum,
    Min,
    Max,
    /// Harbor's script metric: a program (`kwargs.script_path`) that reads the trials' rewards
    /// as JSONL (`-i FILE`) and writes a JSON object of metrics (`-o FILE`).
    #[serde(rename = "uv-script", alias = "uv_script")]
    UvScript,
}

/// One agent of a job: a built-in (`oracle`, `nop`), or a command agent (`install`/`execute`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSpec {
    /// Agent name (`oracle`, `nop`, or any name for a command agent).
    pub name: String,
    /// Harbor's `import_path` for custom agents: not supported (Python import), reported clearly.
    pub import_path: Option<String>,
    /// Model identifier passed to the agent.
    #[serde(alias = "model")]
    pub model_name: Option<String>,
    /// Version to install, for agents that have one.
    pub version: Option<String>,
    /// Command agent: shell script run once at install time.
    pub install: Option<String>,
    /// Command agent: shell script that does the task.
    pub execute: Option<String>,
    /// Environment variables for the agent (`${VAR}` expanded from the host).
    pub env: BTreeMap<String, String>,
    /// Replaces the task's agent timeout.
    pub override_timeout_sec: Option<f64>,
    /// Replaces the task's agent install timeout.
    #[serde(alias = "override_setup_timeout_sec")]
    pub override_install_timeout_sec: Option<f64>,
    /// Caps the agent timeout.
    pub max_timeout_sec: Option<f64>,
    /// Free options for agents that take them.
    pub kwargs: BTreeMap<String, serde_json::Value>,
}

/// One entry of `datasets:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetSpec {
    /// A directory of task directories.
    pub path: Option<PathBuf>,
    /// A registry (FORMATS.md §3) holding `name`@`version`.
    pub registry: Option<RegistrySpec>,
    pub name: Option<String>,
    pub version: Option<String>,
    /// fnmatch globs on task names to include.
    pub task_names: Vec<String>,
    /// fnmatch globs on task names to exclude.
    pub exclude_task_names: Vec<String>,
    /// Keep at most this many tasks (after filtering, in name order).
    pub n_tasks: Option<usize>,
}

/// Where a registry lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySpec {
    pub path: Option<PathBuf>,
    pub url: Option<String>,
}

/// One entry of `tasks:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSpec {
    pub path: PathBuf,
    /// Harbor's git-sourced single task; not loaded by the core (see the registry source).
    pub git_url: Option<String>,
    pub git_commit_id: Option<String>,
}

impl JobConfig {
    /// Parse a job file's text (YAML or JSON).
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut config: JobConfig =
            serde_norway::from_str(text).map_err(|e| ConfigError::from_yaml(file, &e))?;
        config.apply_legacy();
        config.validate_values().map_err(|(field, msg)| {
            let mut err = ConfigError::field(file, field.clone(), msg);
            err.line = find_yaml_key_line(text, &field);
            err
        })?;
        Ok(config)
    }

    /// Read, parse and resolve relative paths against the file's directory.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError::file(file, format!("cannot read job file: {e}")))?;
        let mut config = Self::parse(&text, file)?;
        let base = file.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Make relative task and dataset paths relative to `base` (a job file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        for d in &mut self.datasets {
            if let Some(p) = &mut d.path {
                fix(p);
            }
            if let Some(RegistrySpec { path: Some(p), .. }) = &mut d.registry {
                fix(p);
            }
        }
        for t in &mut self.tasks {
            fix(&mut t.path);
        }
        for a in &mut self.archives {
            fix(a);
        }
    }

    /// Map Harbor's `orchestrator:` block onto the flat fields (flat fields win).
    fn apply_legacy(&mut self) {
        if let Some(o) = self.orchestrator.take() {
            if self.n_concurrent_trials.is_none() {
                self.n_concurrent_trials = o.n_concurrent_trials;
            }
            if self.retry.is_none() {
                self.retry = o.retry;
            }
        }
    }

    fn validate_values(&self) -> Result<(), (String, String)> {
        let positive = |field: &str, v: Option<f64>| -> Result<(), (String, String)> {
            match v {
                Some(x) if !(x.is_finite() && x > 0.0) => Err((
                    field.to_string(),
                    format!("expected a positive number, found {x}"),
                )),
                _ => Ok(()),
            }
        };
        positive("timeout_multiplier", self.timeout_multiplier)?;
        positive("agent_timeout_multiplier", self.agent_timeout_multiplier)?;
        positive(
            "agent_install_timeout_multiplier",
            self.agent_install_timeout_multiplier,
        )?;
        positive(
            "verifier_timeout_multiplier",
            self.verifier_timeout_multiplier,
        )?;
        positive("build_timeout_multiplier", self.build_timeout_multiplier)?;
        positive(
            "verifier.override_timeout_sec",
            self.verifier.override_timeout_sec,
        )?;
        positive("verifier.max_timeout_sec", self.verifier.max_timeout_sec)?;
        positive("environment.override_cpus", self.environment.override_cpus)?;
        if let Some(p) = &self.instruction_path {
            check_instruction_path(p).map_err(|m| ("instruction_path".to_string(), m))?;
        }
        if let Some(p) = self.environment.pids_limit {
            if p < 1 {
                return Err((
                    "environment.pids_limit".into(),
                    format!("expected at least 1 process, found {p} (Docker would read it as unlimited)"),
                ));
            }
        }
        for (field, v) in [
            (
                "environment.override_memory_mb",
                self.environment.override_memory_mb,
            ),
            (
                "environment.override_storage_mb",
                self.environment.override_storage_mb,
            ),
        ] {
            if v == Some(0) {
                return Err((field.into(), "expected at least 1 MiB, found 0".into()));
            }
        }
        let env = &self.environment;
        if let Some(c) = env.override_cpus {
            crate::task_config::check_cpus(c)
                .map_err(|m| ("environment.override_cpus".to_string(), m))?;
        }
        if let Some(mb) = env.override_memory_mb {
            crate::task_config::check_memory_mb(mb)
                .map_err(|m| ("environment.override_memory_mb".to_string(), m))?;
        }
        if let Some(mb) = env.override_storage_mb {
            crate::task_config::check_storage_mb(mb)
                .map_err(|m| ("environment.override_storage_mb".to_string(), m))?;
        }
        if self.n_attempts == Some(0) {
            return Err(("n_attempts".into(), "expected at least 1 attempt".into()));
        }
        if self.n_concurrent_trials == Some(0) {
            return Err(("n_concurrent_trials".into(), "expected at least 1".into()));
        }
        if self.max_errors == Some(0) {
            return Err((
                "max_errors".into(),
                "expected at least 1 (leave it out to never stop)".into(),
            ));
        }
        for (i, a) in self.agents.iter().enumerate() {
            if a.name.trim().is_empty() {
                return Err((
                    format!("agents[{i}].name"),
                    "every agent needs a name".into(),
                ));
            }
            positive(
                &format!("agents[{i}].override_timeout_sec"),
                a.override_timeout_sec,
            )?;
            positive(&format!("agents[{i}].max_timeout_sec"), a.max_timeout_sec)?;
        }
        for (i, d) in self.datasets.iter().enumerate() {
            match (&d.path, &d.registry) {
                (None, None) => {
                    return Err((
                        format!("datasets[{i}]"),
                        "a dataset needs `path` or `registry` (with `name`)".into(),
                    ))
                }
                (Some(_), Some(_)) => {
                    return Err((
                        format!("datasets[{i}]"),
                        "give `path` or `registry`, not both".into(),
                    ))
                }
                (None, Some(_)) if d.name.is_none() => {
                    return Err((
                        format!("datasets[{i}].name"),
                        "a registry dataset needs a `name`".into(),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Check the values of a configuration that did not come through [`JobConfig::parse`] (one
    /// built from flags, or submitted to `rollout serve`): the same rules, with `origin` naming
    /// where it came from in the error.
    pub fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        self.validate_values()
            .map_err(|(field, msg)| ConfigError::field(origin, field, msg))
    }

    /// Fail unless the job names at least one task source.
    pub fn validate_sources(&self, file: &Path) -> Result<(), ConfigError> {
        if self.datasets.is_empty() && self.tasks.is_empty() && self.archives.is_empty() {
            return Err(ConfigError::file(
                file,
                "no tasks to run: give `tasks:` or `datasets:` in the job file, or -p PATH",
            ));
        }
        Ok(())
    }

    /// Effective trials running at once.
    pub fn concurrency(&self) -> usize {
        self.n_concurrent_trials.unwrap_or(4)
    }

    /// Effective attempts per (agent, task).
    pub fn attempts(&self) -> u32 {
        self.n_attempts.unwrap_or(1)
    }

    /// Effective agents (oracle when none is given).
    pub fn effective_agents(&self) -> Vec<AgentSpec> {
        if self.agents.is_empty() {
            vec![AgentSpec {
                name: "oracle".into(),
                ..Default::default()
            }]
        } else {
            self.agents.clone()
        }
    }
}

/// Best-effort line of a dotted/indexed field (`agents[1].name`) in YAML text: the line of its
/// last key. Good enough for error messages; never used to change behaviour.
fn find_yaml_key_line(text: &str, field: &str) -> Option<usize> {
    let last = field
        .rsplit('.')
        .next()
        .map(|s| s.split('[').next().unwrap_or(s))
        .filter(|s| !s.is_empty())?;
    let first = field.split(['.', '[']).next().unwrap_or(field);
    let mut after_first = first == last;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start().trim_start_matches("- ");
        let key = t.split(':').next().unwrap_or("").trim().trim_matches('"');
        if !after_first && key == first {
            after_first = true;
            if first == last {
                return Some(i + 1);
            }
            continue;
        }
        if after_first && key == last {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JobConfig, ConfigError> {
        JobConfig::parse(text, Path::new("job.yaml"))
    }

    const FULL: &str = r#"
name: my-job
jobs_dir: jobs
n_attempts: 1
n_concurrent_trials: 4
timeout_multiplier: 1.0
retry: {max_retries: 2, min_wait_sec: 1, max_wait_sec: 60, multiplier: 2.0}
environment:
  type: docker
  force_build: false
  preserve_env: never
  override_cpus: 2
  override_memory_mb: 4096
  override_storage_mb: 20480
verifier: {override_timeout_sec: 120, max_timeout_sec: 600, disable: false}
metrics: [{type: mean}]
agents:
  - name: oracle
  - name: my-agent
    install: "pip install my-agent"
    execute: "my-agent --task \"$ROLLOUT_TASK_INSTRUCTION\""
    env: {OPENAI_API_KEY: "${OPENAI_API_KEY}"}
  - name: claude-code
    model_name: anthropic/claude-sonnet-4
datasets:
  - path: datasets/hello
    task_names: ["hello-*"]
  - registry: {path: registry.json}
    name: terminal-bench
    version: "2.0"
tasks:
  - path: examples/hello-world
"#;

    #[test]
    fn the_formats_example_parses() {
        let c = parse(FULL).unwrap();
        assert_eq!(c.name.as_deref(), Some("my-job"));
        assert_eq!(c.concurrency(), 4);
        assert_eq!(c.retry.as_ref().unwrap().max_retries, 2);
        assert_eq!(c.environment.override_memory_mb, Some(4096));
        assert_eq!(c.verifier.override_timeout_sec, Some(120.0));
        assert_eq!(c.agents.len(), 3);
        assert_eq!(
            c.agents[1].execute.as_deref(),
            Some("my-agent --task \"$ROLLOUT_TASK_INSTRUCTION\"")
        );
        assert_eq!(
            c.agents[2].model_name.as_deref(),
            Some("anthropic/claude-sonnet-4")
        );
        assert_eq!(c.datasets[0].task_names, ["hello-*"]);
        assert_eq!(c.datasets[1].version.as_deref(), Some("2.0"));
        assert_eq!(c.tasks[0].path, PathBuf::from("examples/hello-world"));
    }

    #[test]
    fn pull_policy_parses_defaults_to_missing_and_refuses_unknown_values() {
        let base = "agents: [{name: nop}]\ntasks: [{path: t}]\n";
        assert_eq!(parse(base).unwrap().environment.pull, PullPolicy::Missing);
        for (text, want) in [
            ("always", PullPolicy::Always),
            ("missing", PullPolicy::Missing),
            ("never", PullPolicy::Never),
        ] {
            let c = parse(&format!("{base}environment: {{pull: {text}}}\n")).unwrap();
            assert_eq!(c.environment.pull, want);
            assert_eq!(text.parse::<PullPolicy>().unwrap(), want);
        }
        assert!(parse(&format!("{base}environment: {{pull: sometimes}}\n")).is_err());
        // The default is left out of written configurations (config.json stays as before).
        let json = serde_json::to_value(&parse(base).unwrap().environment).unwrap();
        assert!(json.get("pull").is_none(), "{json}");
    }

    #[test]
    fn json_job_files_parse_too() {
        let c =
            parse(r#"{"n_attempts": 3, "agents": [{"name": "nop"}], "tasks": [{"path": "t"}]}"#)
                .unwrap();
        assert_eq!(c.attempts(), 3);
        assert_eq!(c.agents[0].name, "nop");
    }

    #[test]
    fn the_rollout_seeds_job_keys_are_read() {
        // The Rollout seed's SPEC example, verbatim in its keys.
        let c = parse(
            "retry:\n  max_attempts: 3\n  initial_delay_ms: 1000\n  max_delay_ms: 30000\n  multiplier: 2.0\nlog_level: error\ninstruction_path: /tmp/instruction.md\ntasks: [{path: t}]\n",
        )
        .unwrap();
        let r = c.retry.clone().unwrap();
        assert_eq!(
            (r.max_retries, r.min_wait_sec, r.max_wait_sec, r.multiplier),
            (3, 1.0, 30.0, 2.0)
        );
        assert_eq!(c.log_level, Some(LogLevel::Error));
        assert_eq!(c.instruction_path.as_deref(), Some("/tmp/instruction.md"));
        c.validate(Path::new("job.yaml")).unwrap();
        // The seed's default number of retries when its block omits it.
        let c = parse("retry: {initial_delay_ms: 500}\ntasks: [{path: t}]\n").unwrap();
        let r = c.retry.unwrap();
        assert_eq!((r.max_retries, r.min_wait_sec), (3, 0.5));
        // Harbor's spelling keeps its defaults.
        let c = parse("retry: {max_retries: 2}\ntasks: [{path: t}]\n").unwrap();
        assert_eq!(
            c.retry.unwrap(),
            RetryConfig {
                max_retries: 2,
                ..Default::default()
            }
        );
        // One setting in both spellings is ambiguous: refused, naming both.
        let e = parse("retry: {max_retries: 2, max_attempts: 3}\ntasks: [{path: t}]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_attempts") && e.contains("max_retries"),
            "{e}"
        );
        assert!(parse("log_level: loud\ntasks: [{path: t}]\n").is_err());
    }

    #[test]
    fn instruction_paths_stay_out_of_rollouts_directories() {
        for ok in ["/tmp/instruction.md", "/app/TASK.md"] {
            check_instruction_path(ok).unwrap();
        }
        for bad in [
            "tmp/instruction.md",
            "/tmp/",
            "/tmp/../logs/verifier/reward.txt",
            "/logs/verifier/reward.txt",
            "/tests/test.sh",
            "/rollout/instruction.md",
            "/oracle/solve.sh",
        ] {
            assert!(check_instruction_path(bad).is_err(), "{bad}");
        }
        let e = parse("instruction_path: /logs/verifier/reward.txt\ntasks: [{path: t}]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("instruction_path"), "{e}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let r = RetryConfig {
            max_retries: 5,
            min_wait_sec: 1.0,
            max_wait_sec: 5.0,
            multiplier: 2.0,
        };
        let waits: Vec<f64> = (1..=5).map(|n| r.backoff_seconds(n)).collect();
        assert_eq!(waits, [1.0, 2.0, 4.0, 5.0, 5.0]);
    }

    #[test]
    fn defaults() {
        let c = parse("tasks: [{path: t}]").unwrap();
        assert_eq!(c.attempts(), 1);
        assert_eq!(c.concurrency(), 4);
        assert_eq!(c.effective_agents()[0].name, "oracle");
        assert_eq!(c.environment.kind, EnvironmentType::Docker);
    }

    #[test]
    fn harbor_orchestrator_block_is_mapped() {
        let c = parse(
            "orchestrator:\n  type: local\n  n_concurrent_trials: 7\n  retry: {max_retries: 3}\n",
        )
        .unwrap();
        assert_eq!(c.concurrency(), 7);
        assert_eq!(c.retry.unwrap().max_retries, 3);
        let c = parse("n_concurrent_trials: 2\norchestrator: {n_concurrent_trials: 7}\n").unwrap();
        assert_eq!(c.concurrency(), 2);
    }

    #[test]
    fn type_error_names_line_and_field() {
        let e = parse("name: j\nagents:\n  - name: oracle\n    override_timeout_sec: soon\n")
            .unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert_eq!(
            e.field.as_deref(),
            Some("agents[0].override_timeout_sec"),
            "{e}"
        );
    }

    #[test]
    fn unknown_field_is_rejected_with_the_choices() {
        let e = parse("n_attempt: 3\n").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
        assert!(e.message.contains("n_attempts"), "{e}");
    }

    #[test]
    fn semantic_error_points_at_the_key() {
        let e = parse("tasks: [{path: t}]\nn_attempts: 0\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("n_attempts"));
        assert_eq!(e.line, Some(2));
        let e = parse("datasets:\n  - task_names: [a]\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("datasets[0]"));
    }

    #[test]
    fn no_source_is_reported() {
        let c = parse("name: x\n").unwrap();
        let e = c.validate_sources(Path::new("job.yaml")).unwrap_err();
        assert!(e.message.contains("no tasks"), "{e}");
    }

    #[test]
    fn paths_resolve_against_the_job_file() {
        let mut c = parse("tasks: [{path: t}, {path: /abs}]\ndatasets: [{path: d}]\n").unwrap();
        c.resolve_paths(Path::new("/base"));
        assert_eq!(c.tasks[0].path, PathBuf::from("/base/t"));
        assert_eq!(c.tasks[1].path, PathBuf::from("/abs"));
        assert_eq!(c.datasets[0].path.as_deref(), Some(Path::new("/base/d")));
    }
}
