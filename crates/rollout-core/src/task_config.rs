//! `task.toml` (FORMATS.md §1): every field optional, legacy spellings accepted, unknown keys kept.

use crate::error::ConfigError;
use serde::{de, Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The parsed `task.toml` of a task, with defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskConfig {
    /// `version` or `schema_version`; default "1.0".
    pub version: String,
    /// Free-text origin of the task.
    pub source: Option<String>,
    /// Free map (author_name, difficulty, category, tags …).
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Newer Harbor "package identity" (`[task] name, version, …`).
    pub task: Option<TaskIdentity>,
    /// `[verifier]`.
    pub verifier: VerifierConfig,
    /// `[agent]`.
    pub agent: AgentConfig,
    /// `[environment]`.
    pub environment: EnvironmentConfig,
    /// `[solution] env`: environment of the oracle's `solve.sh`.
    pub solution_env: BTreeMap<String, String>,
    /// Top-level `artifacts`: paths collected from the environment at the end of the trial.
    pub artifacts: Vec<ArtifactSpec>,
    /// `[[steps]]` of a multi-step task (Harbor schema ≥ 1.1); empty for a single-step task.
    pub steps: Vec<StepConfig>,
    /// `multi_step_reward_strategy`: how step rewards become the trial's (default mean).
    pub multi_step_reward_strategy: Option<MultiStepRewardStrategy>,
    /// Keys rollout does not interpret, by dotted path, kept verbatim (e.g. Harbor's `solution`).
    pub extra: BTreeMap<String, serde_json::Value>,
    /// Harbor keys this task sets that rollout cannot honour without changing the outcome
    /// (`environment.os = "windows"`, `environment.tpu`, a separate verifier environment …):
    /// the task's trials are refused with `environment_unsupported`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unsupported: Vec<Unsupported>,
    /// Things worth telling the user that do not stop the task (`version` and `schema_version`
    /// that disagree …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A key of the task that rollout refuses to run (see [`TaskConfig::unsupported`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unsupported {
    /// Dotted path of the key (`environment.os`).
    pub field: String,
    /// 1-based line in task.toml, where found.
    pub line: Option<usize>,
    /// Why rollout cannot run it, and what to do.
    pub reason: String,
}

/// One entry of `[task] authors` (Harbor's `Author`); a bare string is taken as the name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Author {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl<'de> Deserialize<'de> for Author {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            name: String,
            email: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            Name(String),
            Full(Full),
        }
        match V::deserialize(d).map_err(|_| {
            de::Error::custom(
                "expected an author such as { name = \"Ada\", email = \"ada@example.com\" }",
            )
        })? {
            V::Name(name) => Ok(Author { name, email: None }),
            V::Full(f) => Ok(Author {
                name: f.name,
                email: f.email,
            }),
        }
    }
}

/// `[task]`: the newer Harbor package identity.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TaskIdentity {
    pub name: Option<String>,
    pub version: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub authors: Vec<Author>,
    #[serde(default)]
    pub keywords: Vec<String>,
}

/// `[verifier]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifierConfig {
    /// Seconds test.sh may run; default 600.
    pub timeout_sec: f64,
    /// Environment for test.sh (`${VAR}` expanded from the host).
    pub env: BTreeMap<String, String>,
    /// Run test.sh as this user (default: the image's user).
    pub user: Option<String>,
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentConfig {
    /// Seconds the agent may run; default 600.
    pub timeout_sec: f64,
    /// Seconds the agent's install step may run; default 300.
    pub install_timeout_sec: f64,
    /// Run the agent as this user (default: the image's user).
    pub user: Option<String>,
}

/// Network access of the environment.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkMode {
    /// Full outbound access (default).
    #[default]
    Public,
    /// No network at all.
    NoNetwork,
    /// Only `allowed_hosts`.
    Allowlist,
}

/// `[environment]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvironmentConfig {
    /// Seconds a build may take; default 600.
    pub build_timeout_sec: f64,
    /// A prebuilt image to use instead of building `environment/`.
    pub docker_image: Option<String>,
    /// CPU limit; default 1.
    pub cpus: f64,
    /// Memory limit in MiB; default 2048.
    pub memory_mb: u64,
    /// Disk limit in MiB; default 10240.
    pub storage_mb: u64,
    /// Network access; default public.
    pub network_mode: NetworkMode,
    /// Hosts reachable in `allowlist` mode.
    pub allowed_hosts: Vec<String>,
    /// Environment of every process in the environment (`${VAR}` expanded from the host).
    pub env: BTreeMap<String, String>,
    /// Default working directory of every command (default: the image's WORKDIR).
    pub workdir: Option<String>,
    /// Wait for this check to pass before the agent starts.
    pub healthcheck: Option<Healthcheck>,
    /// GPUs the environment needs (0 = none).
    pub gpus: u32,
    /// Acceptable GPU models (empty = any).
    pub gpu_types: Vec<String>,
    /// `[[environment.mcp_servers]]`: MCP tool servers offered to the agent.
    pub mcp_servers: Vec<McpServerConfig>,
    /// `skills_dir`: a directory of agent skills inside the environment.
    pub skills_dir: Option<String>,
}

/// One `[[environment.mcp_servers]]` entry (Harbor's `MCPServerConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct McpServerConfig {
    /// Name the agent knows the server by.
    pub name: String,
    /// How to reach it; Harbor's default is `sse`, and `http` means `streamable-http`.
    #[serde(default)]
    pub transport: McpTransport,
    /// Endpoint of the `sse` and `streamable-http` transports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Program of the `stdio` transport.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Arguments of the `stdio` program.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// HTTP headers of the HTTP transports (`${VAR}` references, never literal credentials).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Transport of an MCP server.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum McpTransport {
    Stdio,
    #[default]
    Sse,
    #[serde(alias = "http")]
    StreamableHttp,
}

/// An artifact to collect: a path in the environment (Harbor's `str | ArtifactConfig`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArtifactSpec {
    /// Absolute path (file or directory) inside the environment.
    pub source: String,
    /// Where under the trial's `artifacts/` it lands (default: derived from `source`).
    pub destination: Option<String>,
    /// Patterns left out when `source` is a directory.
    pub exclude: Vec<String>,
    /// Compose service to collect from (`None` or `main` = the agent's container).
    pub service: Option<String>,
}

/// One `[[steps]]` entry of a multi-step task. Unset timeouts and users fall back to the
/// task-level `[agent]` / `[verifier]` values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepConfig {
    /// Directory name under `steps/`.
    pub name: String,
    /// `[steps.agent] timeout_sec`.
    pub agent_timeout_sec: Option<f64>,
    /// `[steps.agent] user`.
    pub agent_user: Option<String>,
    /// `[steps.verifier] timeout_sec`.
    pub verifier_timeout_sec: Option<f64>,
    /// `[steps.verifier] env`, over the task-level verifier env.
    pub verifier_env: BTreeMap<String, String>,
    /// `[steps.verifier] user`.
    pub verifier_user: Option<String>,
    /// Stop the remaining steps when this step's reward is below it.
    pub min_reward: Option<MinReward>,
    /// Checked after this step's setup, before its agent runs.
    pub healthcheck: Option<Healthcheck>,
    /// Collected after this step's verification into `steps/<name>/artifacts/`.
    pub artifacts: Vec<ArtifactSpec>,
}

/// `min_reward`: a float gates the `reward` key; a table gates each named key.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MinReward {
    Reward(f64),
    PerKey(BTreeMap<String, f64>),
}

/// How a multi-step trial's reward is derived from its steps' rewards.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum MultiStepRewardStrategy {
    /// Per-key mean over the steps that were verified (missing keys count 0).
    #[default]
    Mean,
    /// The last step's rewards.
    Final,
}

/// `[environment.healthcheck]`, with Docker's semantics: failures during `start_period_sec`
/// do not count; `retries` consecutive failures after it mark the environment unhealthy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Healthcheck {
    /// Shell command (run with `sh -c`); exit 0 means healthy.
    pub command: String,
    /// Seconds between checks; default 1.
    pub interval_sec: f64,
    /// Seconds one check may take; default 30.
    pub timeout_sec: f64,
    /// Grace period in seconds; default 0.
    pub start_period_sec: f64,
    /// Consecutive failures after the grace period that mean "never healthy"; default 10.
    pub retries: u32,
    /// Seconds between checks during the start period; default `interval_sec`.
    pub start_interval_sec: Option<f64>,
}

impl Default for TaskConfig {
    fn default() -> Self {
        parse_raw(RawTaskConfig::default()).expect("defaults are valid")
    }
}

impl TaskConfig {
    /// Parse the text of a `task.toml`; `file` is used in error messages only.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let raw: RawTaskConfig =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(file, text, &e))?;
        let mut config = parse_raw(raw).map_err(|(field, msg)| {
            let mut err = ConfigError::field(file, field.clone(), msg);
            err.line = find_key_line(text, &field);
            err
        })?;
        for u in &mut config.unsupported {
            u.line = find_key_line(text, &u.field);
        }
        if let Ok(table) = text.parse::<toml::Table>() {
            collect_unknown("", &table, &mut config.extra);
        }
        Ok(config)
    }

    /// Keys present in the file that rollout does not interpret (kept in `extra`); worth a
    /// warning in `rollout tasks check`, since a typo lands here too.
    pub fn unknown_keys(&self) -> impl Iterator<Item = &str> {
        self.extra.keys().map(String::as_str)
    }

    /// Read and parse `task.toml` from disk.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError::file(file, format!("cannot read file: {e}")))?;
        Self::parse(&text, file)
    }
}

// ---- JSON Schema of the file as written (`rollout schema task`) -----------------------------

/// JSON Schema of `task.toml` as written (read as TOML, checked as JSON): generated from the
/// types the file is parsed into, so it cannot drift from the parser. Unknown keys are allowed
/// (rollout keeps them), as the parser does.
pub fn task_toml_schema() -> schemars::Schema {
    let mut s = crate::schema::generator().into_root_schema_for::<RawTaskConfig>();
    s.insert("title".into(), "rollout task.toml".into());
    s.insert(
        "description".into(),
        "A task's task.toml (Harbor's format), as the JSON TOML reads into. Keys rollout does \
         not interpret are allowed and kept."
            .into(),
    );
    s
}

macro_rules! hand_schema {
    ($ty:ty, $name:literal, $json:tt) => {
        impl schemars::JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::Schema::try_from(serde_json::json!($json)).expect("a schema object")
            }
        }
    };
}

hand_schema!(Version, "Version", {
    "description": "A version such as \"1.0\" (a number is accepted).",
    "type": ["string", "number"]
});
hand_schema!(Seconds, "Seconds", {
    "description": "Non-negative seconds.",
    "type": "number", "minimum": 0
});
hand_schema!(SizeMb, "Size", {
    "description": "A size such as \"2G\", \"512M\" or \"1.5Gi\", or a number of MiB.",
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": "^\\s*[0-9.]+\\s*([kKmMgGtT][iI]?[bB]?)?\\s*$"}
    ]
});
hand_schema!(User, "User", {
    "description": "A user name or a numeric UID.",
    "anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]
});
hand_schema!(CommandText, "Command", {
    "description": "A shell command, or an argv array (joined with shell quoting).",
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
});
hand_schema!(Author, "Author", {
    "description": "An author: a name, or { name, email }.",
    "anyOf": [
        {"type": "string"},
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "email": {"type": ["string", "null"]}},
            "required": ["name"],
            "additionalProperties": false
        }
    ]
});

// ---- raw (as written) form -------------------------------------------------------------------

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "TaskToml")]
struct RawTaskConfig {
    version: Option<Version>,
    schema_version: Option<Version>,
    source: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, serde_json::Value>,
    task: Option<TaskIdentity>,
    #[serde(default)]
    verifier: RawVerifier,
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    environment: RawEnvironment,
    #[serde(default)]
    solution: RawSolution,
    #[serde(default)]
    artifacts: Vec<RawArtifact>,
    #[serde(default)]
    steps: Vec<RawStep>,
    multi_step_reward_strategy: Option<MultiStepRewardStrategy>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Solution")]
struct RawSolution {
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// `"path"` or `{source, destination, exclude, service}`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
#[schemars(rename = "Artifact")]
enum RawArtifact {
    Path(String),
    Full {
        source: String,
        destination: Option<String>,
        #[serde(default)]
        exclude: Vec<String>,
        service: Option<String>,
    },
}

impl From<RawArtifact> for ArtifactSpec {
    fn from(raw: RawArtifact) -> Self {
        match raw {
            RawArtifact::Path(source) => ArtifactSpec {
                source,
                destination: None,
                exclude: Vec::new(),
                service: None,
            },
            RawArtifact::Full {
                source,
                destination,
                exclude,
                service,
            } => ArtifactSpec {
                source,
                destination,
                exclude,
                service,
            },
        }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Step")]
struct RawStep {
    name: String,
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    verifier: RawVerifier,
    min_reward: Option<RawMinReward>,
    healthcheck: Option<RawHealthcheck>,
    #[serde(default)]
    artifacts: Vec<RawArtifact>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
#[schemars(rename = "MinReward")]
enum RawMinReward {
    Reward(f64),
    PerKey(BTreeMap<String, f64>),
}

/// `version = "1.0"` or `version = 1.0`.
#[derive(Debug)]
struct Version(String);

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            S(String),
            F(f64),
            I(i64),
        }
        match V::deserialize(d)
            .map_err(|_| de::Error::custom("expected a version string such as \"1.0\""))?
        {
            V::S(s) => Ok(Version(s)),
            V::F(f) => Ok(Version(format!("{f:?}"))),
            V::I(i) => Ok(Version(format!("{i}.0"))),
        }
    }
}

/// Non-negative, finite seconds; integers accepted.
#[derive(Debug, Clone, Copy)]
struct Seconds(f64);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !v.is_finite() || v < 0.0 {
            return Err(de::Error::custom(format!(
                "expected a non-negative number of seconds, found {v}"
            )));
        }
        Ok(Seconds(v))
    }
}

/// A size like "2G", "512M", "1.5Gi" or a bare number of MiB.
#[derive(Debug, Clone, Copy)]
struct SizeMb(u64);

impl<'de> Deserialize<'de> for SizeMb {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            S(String),
            N(f64),
        }
        let v = V::deserialize(d)
            .map_err(|_| de::Error::custom("expected a size such as \"2G\" or \"512M\""))?;
        match v {
            V::N(n) if n >= 0.0 => Ok(SizeMb(n.round() as u64)),
            V::N(n) => Err(de::Error::custom(format!(
                "expected a non-negative size, found {n}"
            ))),
            V::S(s) => parse_size_mb(&s).map(SizeMb).ok_or_else(|| {
                de::Error::custom(format!(
                    "expected a size such as \"2G\", \"512M\" or \"1.5Gi\", found {s:?}"
                ))
            }),
        }
    }
}

/// Parse "2G" / "512Mi" / "1024" (MiB) into MiB; units are binary (K = KiB …).
pub fn parse_size_mb(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.trim_end_matches('b').trim_end_matches('i');
    let mb = match unit {
        "" | "m" => n,
        "k" => n / 1024.0,
        "g" => n * 1024.0,
        "t" => n * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(mb.round() as u64)
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Verifier")]
struct RawVerifier {
    timeout_sec: Option<Seconds>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    user: Option<User>,
    network_mode: Option<NetworkMode>,
    allowed_hosts: Option<Vec<String>>,
    environment_mode: Option<VerifierEnvironmentMode>,
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    environment: Option<toml::Table>,
    #[serde(default)]
    #[schemars(with = "Vec<BTreeMap<String, serde_json::Value>>")]
    collect: Vec<toml::Table>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Agent")]
struct RawAgent {
    timeout_sec: Option<Seconds>,
    #[serde(alias = "setup_timeout_sec")]
    install_timeout_sec: Option<Seconds>,
    user: Option<User>,
    network_mode: Option<NetworkMode>,
    allowed_hosts: Option<Vec<String>>,
}

/// `[verifier] environment_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
enum VerifierEnvironmentMode {
    Shared,
    Separate,
}

/// A user name or a numeric UID (Harbor accepts both).
#[derive(Debug, Clone)]
struct User(String);

impl<'de> Deserialize<'de> for User {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            S(String),
            I(u32),
        }
        match V::deserialize(d)
            .map_err(|_| de::Error::custom("expected a user name or a numeric UID"))?
        {
            V::S(s) => Ok(User(s)),
            V::I(i) => Ok(User(i.to_string())),
        }
    }
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Environment")]
struct RawEnvironment {
    build_timeout_sec: Option<Seconds>,
    docker_image: Option<String>,
    cpus: Option<f64>,
    memory_mb: Option<u64>,
    memory: Option<SizeMb>,
    storage_mb: Option<u64>,
    storage: Option<SizeMb>,
    network_mode: Option<NetworkMode>,
    allow_internet: Option<bool>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    workdir: Option<String>,
    healthcheck: Option<RawHealthcheck>,
    gpus: Option<u32>,
    #[serde(default)]
    gpu_types: Vec<String>,
    #[serde(default)]
    mcp_servers: Vec<McpServerConfig>,
    skills_dir: Option<String>,
    os: Option<String>,
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    tpu: Option<toml::Table>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Healthcheck")]
struct RawHealthcheck {
    #[serde(alias = "cmd", alias = "test")]
    command: CommandText,
    interval_sec: Option<Seconds>,
    timeout_sec: Option<Seconds>,
    start_period_sec: Option<Seconds>,
    start_interval_sec: Option<Seconds>,
    retries: Option<u32>,
}

/// A command given as a string or as an argv array (joined with shell quoting).
#[derive(Debug)]
struct CommandText(String);

impl<'de> Deserialize<'de> for CommandText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            S(String),
            A(Vec<String>),
        }
        match V::deserialize(d)
            .map_err(|_| de::Error::custom("expected a command string or an array of strings"))?
        {
            V::S(s) => Ok(CommandText(s)),
            V::A(a) => Ok(CommandText(
                a.iter()
                    .map(|p| shell_quote(p))
                    .collect::<Vec<_>>()
                    .join(" "),
            )),
        }
    }
}

/// Quote one word for `sh`.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Largest `cpus` accepted (a whole large machine; beyond it the number is a typo).
pub const MAX_CPUS: f64 = 1024.0;
/// Smallest memory limit the engines accept (Docker refuses less than 6 MiB).
pub const MIN_MEMORY_MB: u64 = 6;
/// Largest memory limit accepted: 4 TiB. Far below where MiB → bytes overflows.
pub const MAX_MEMORY_MB: u64 = 4 << 20;
/// Largest storage limit accepted: 1 PiB.
pub const MAX_STORAGE_MB: u64 = 1 << 30;

/// A CPU count: positive, finite, at most [`MAX_CPUS`].
pub fn check_cpus(cpus: f64) -> Result<(), String> {
    if !(cpus.is_finite() && cpus > 0.0) {
        return Err(format!("expected a positive number of CPUs, found {cpus}"));
    }
    if cpus > MAX_CPUS {
        return Err(format!("expected at most {MAX_CPUS} CPUs, found {cpus}"));
    }
    Ok(())
}

/// A memory limit in MiB: between [`MIN_MEMORY_MB`] and [`MAX_MEMORY_MB`].
pub fn check_memory_mb(mb: u64) -> Result<(), String> {
    if mb < MIN_MEMORY_MB {
        return Err(format!(
            "expected at least {MIN_MEMORY_MB} MiB (Docker's minimum), found {mb}"
        ));
    }
    if mb > MAX_MEMORY_MB {
        return Err(format!(
            "expected at most {MAX_MEMORY_MB} MiB (4 TiB), found {mb} MiB"
        ));
    }
    Ok(())
}

/// A storage limit in MiB: at most [`MAX_STORAGE_MB`].
pub fn check_storage_mb(mb: u64) -> Result<(), String> {
    if mb > MAX_STORAGE_MB {
        return Err(format!(
            "expected at most {MAX_STORAGE_MB} MiB (1 PiB), found {mb} MiB"
        ));
    }
    Ok(())
}

type FieldError = (String, String);

fn parse_raw(raw: RawTaskConfig) -> Result<TaskConfig, FieldError> {
    let mut warnings = Vec::new();
    // Harbor renames a legacy `version` to `schema_version` unless that is set too: then
    // `schema_version` wins.
    let version = match (raw.version, raw.schema_version) {
        (Some(legacy), Some(v)) => {
            if legacy.0 != v.0 {
                warnings.push(format!(
                    "`version = {:?}` and `schema_version = {:?}` disagree: using schema_version {:?} (as Harbor does); remove `version`",
                    legacy.0, v.0, v.0
                ));
            }
            v.0
        }
        (Some(v), None) | (None, Some(v)) => v.0,
        (None, None) => "1.0".into(),
    };
    let env = raw.environment;
    let cpus = env.cpus.unwrap_or(1.0);
    check_cpus(cpus).map_err(|m| ("environment.cpus".to_string(), m))?;
    let memory_key = if env.memory_mb.is_none() && env.memory.is_some() {
        "environment.memory"
    } else {
        "environment.memory_mb"
    };
    let memory_mb = env.memory_mb.or(env.memory.map(|m| m.0)).unwrap_or(2048);
    check_memory_mb(memory_mb).map_err(|m| (memory_key.to_string(), m))?;
    let storage_key = if env.storage_mb.is_none() && env.storage.is_some() {
        "environment.storage"
    } else {
        "environment.storage_mb"
    };
    let storage_mb = env.storage_mb.or(env.storage.map(|m| m.0)).unwrap_or(10240);
    check_storage_mb(storage_mb).map_err(|m| (storage_key.to_string(), m))?;
    let network_mode = match (env.network_mode, env.allow_internet) {
        (Some(mode), _) => mode,
        (None, Some(false)) => NetworkMode::NoNetwork,
        (None, _) => NetworkMode::Public,
    };
    if network_mode == NetworkMode::Allowlist && env.allowed_hosts.is_empty() {
        return Err((
            "environment.allowed_hosts".into(),
            "network_mode = \"allowlist\" needs a non-empty allowed_hosts list".into(),
        ));
    }
    if let Err(e) = crate::allowlist::parse(&env.allowed_hosts) {
        return Err(("environment.allowed_hosts".into(), e));
    }
    if let Some(image) = &env.docker_image {
        if image.trim().is_empty() {
            return Err((
                "environment.docker_image".into(),
                "expected a non-empty image reference".into(),
            ));
        }
    }
    let healthcheck = env
        .healthcheck
        .map(|h| healthcheck_of(h, "environment.healthcheck"))
        .transpose()?;
    for (i, server) in env.mcp_servers.iter().enumerate() {
        check_mcp_server(server).map_err(|msg| (format!("environment.mcp_servers[{i}]"), msg))?;
    }
    let mut steps = Vec::with_capacity(raw.steps.len());
    let mut raw_steps_unsupported = Vec::with_capacity(raw.steps.len());
    for (i, step) in raw.steps.into_iter().enumerate() {
        raw_steps_unsupported.push(step_unsupported(&step, network_mode, &env.allowed_hosts));
        steps.push(step_of(step, i, &steps)?);
    }
    check_artifacts(&raw.artifacts, "artifacts")?;
    let mut unsupported = Vec::new();
    let mut refuse = |field: &str, reason: String| {
        unsupported.push(Unsupported {
            field: field.to_string(),
            line: None,
            reason,
        })
    };
    match env.os.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("linux") => {}
        Some("windows") => refuse(
            "environment.os",
            "Windows containers are not supported: rollout runs Linux containers only".into(),
        ),
        Some(other) => {
            return Err((
                "environment.os".into(),
                format!("expected \"linux\" or \"windows\", found {other:?}"),
            ))
        }
    }
    if env.tpu.is_some() {
        refuse(
            "environment.tpu",
            "TPU slices are not supported by rollout's Docker or Kubernetes providers".into(),
        );
    }
    for (phase, net, hosts) in [
        ("agent", raw.agent.network_mode, &raw.agent.allowed_hosts),
        (
            "verifier",
            raw.verifier.network_mode,
            &raw.verifier.allowed_hosts,
        ),
    ] {
        match net {
            None if hosts.is_some() => {
                return Err((
                    format!("{phase}.allowed_hosts"),
                    "allowed_hosts is only valid with network_mode = \"allowlist\"".into(),
                ))
            }
            None => {}
            Some(mode) => {
                let same = mode == network_mode
                    && (mode != NetworkMode::Allowlist
                        || hosts.as_deref().unwrap_or_default() == env.allowed_hosts.as_slice());
                if !same {
                    refuse(
                        &format!("{phase}.network_mode"),
                        format!(
                            "a {phase}-phase network policy ({}) that differs from [environment]'s ({}) is not supported: rollout applies one network policy to the whole trial",
                            network_name(mode),
                            network_name(network_mode)
                        ),
                    );
                }
            }
        }
    }
    if raw.verifier.environment_mode == Some(VerifierEnvironmentMode::Shared)
        && raw.verifier.environment.is_some()
    {
        return Err((
            "verifier.environment_mode".into(),
            "environment_mode = \"shared\" conflicts with [verifier.environment]: omit one".into(),
        ));
    }
    if raw.verifier.environment_mode == Some(VerifierEnvironmentMode::Separate)
        || raw.verifier.environment.is_some()
    {
        let field = if raw.verifier.environment.is_some() {
            "verifier.environment"
        } else {
            "verifier.environment_mode"
        };
        refuse(
            field,
            "a separate verifier environment is not supported: rollout verifies in the agent's environment".into(),
        );
    }
    if !raw.verifier.collect.is_empty() {
        refuse(
            "verifier.collect",
            "[[verifier.collect]] hooks are not supported: rollout does not run commands between the agent phase and artifact collection".into(),
        );
    }
    for (i, step) in raw_steps_unsupported.iter().enumerate() {
        for (key, reason) in step {
            refuse(&format!("steps[{i}].{key}"), reason.clone());
        }
    }
    Ok(TaskConfig {
        version,
        source: raw.source,
        metadata: raw.metadata,
        task: raw.task,
        verifier: VerifierConfig {
            timeout_sec: raw.verifier.timeout_sec.map_or(600.0, |s| s.0),
            env: raw.verifier.env,
            user: raw.verifier.user.map(|u| u.0),
        },
        agent: AgentConfig {
            timeout_sec: raw.agent.timeout_sec.map_or(600.0, |s| s.0),
            install_timeout_sec: raw.agent.install_timeout_sec.map_or(300.0, |s| s.0),
            user: raw.agent.user.map(|u| u.0),
        },
        environment: EnvironmentConfig {
            build_timeout_sec: env.build_timeout_sec.map_or(600.0, |s| s.0),
            docker_image: env.docker_image,
            cpus,
            memory_mb,
            storage_mb,
            network_mode,
            allowed_hosts: env.allowed_hosts,
            env: env.env,
            workdir: env.workdir,
            healthcheck,
            gpus: env.gpus.unwrap_or(0),
            gpu_types: env.gpu_types,
            mcp_servers: env.mcp_servers,
            skills_dir: env.skills_dir,
        },
        solution_env: raw.solution.env,
        artifacts: raw.artifacts.into_iter().map(ArtifactSpec::from).collect(),
        steps,
        multi_step_reward_strategy: raw.multi_step_reward_strategy,
        extra: BTreeMap::new(),
        unsupported,
        warnings,
    })
}

fn healthcheck_of(h: RawHealthcheck, field: &str) -> Result<Healthcheck, FieldError> {
    if h.command.0.trim().is_empty() {
        return Err((
            format!("{field}.command"),
            "expected a non-empty command".into(),
        ));
    }
    Ok(Healthcheck {
        command: h.command.0,
        interval_sec: h.interval_sec.map_or(1.0, |s| s.0),
        timeout_sec: h.timeout_sec.map_or(30.0, |s| s.0),
        start_period_sec: h.start_period_sec.map_or(0.0, |s| s.0),
        retries: h.retries.unwrap_or(10),
        start_interval_sec: h.start_interval_sec.map(|s| s.0),
    })
}

/// Harbor's transport rules: a URL for the HTTP transports, a command for stdio.
fn check_mcp_server(server: &McpServerConfig) -> Result<(), String> {
    if server.name.trim().is_empty() {
        return Err("expected a non-empty `name`".into());
    }
    match server.transport {
        McpTransport::Sse | McpTransport::StreamableHttp if server.url.is_none() => Err(format!(
            "MCP server {:?}: `url` is required for transport {:?}",
            server.name,
            transport_name(server.transport)
        )),
        McpTransport::Stdio if server.command.is_none() => Err(format!(
            "MCP server {:?}: `command` is required for transport \"stdio\"",
            server.name
        )),
        McpTransport::Stdio if !server.headers.is_empty() => Err(format!(
            "MCP server {:?}: `headers` only apply to the HTTP transports",
            server.name
        )),
        _ => Ok(()),
    }
}

/// The name Harbor writes for a transport.
pub fn transport_name(t: McpTransport) -> &'static str {
    match t {
        McpTransport::Stdio => "stdio",
        McpTransport::Sse => "sse",
        McpTransport::StreamableHttp => "streamable-http",
    }
}

/// Artifact sources are container paths that also decide where the copy lands on the host:
/// no `..` may escape the trial's `artifacts/`.
fn check_artifacts(list: &[RawArtifact], field: &str) -> Result<(), FieldError> {
    for (i, a) in list.iter().enumerate() {
        let (source, destination) = match a {
            RawArtifact::Path(s) => (s, None),
            RawArtifact::Full {
                source,
                destination,
                ..
            } => (source, destination.as_ref()),
        };
        for (what, path) in [("source", Some(source)), ("destination", destination)] {
            let Some(path) = path else { continue };
            if path.trim().is_empty() || path.split('/').any(|c| c == "..") {
                return Err((
                    format!("{field}[{i}]"),
                    format!("artifact {what} {path:?} must be a non-empty path without `..`"),
                ));
            }
        }
    }
    Ok(())
}

/// The name Harbor writes for a network mode.
pub fn network_name(mode: NetworkMode) -> &'static str {
    match mode {
        NetworkMode::Public => "public",
        NetworkMode::NoNetwork => "no-network",
        NetworkMode::Allowlist => "allowlist",
    }
}

/// Keys of one step that rollout cannot honour (relative to the step), with the reason.
fn step_unsupported(
    step: &RawStep,
    network: NetworkMode,
    hosts: &[String],
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (phase, net, allowed) in [
        ("agent", step.agent.network_mode, &step.agent.allowed_hosts),
        (
            "verifier",
            step.verifier.network_mode,
            &step.verifier.allowed_hosts,
        ),
    ] {
        if let Some(mode) = net {
            let same = mode == network
                && (mode != NetworkMode::Allowlist
                    || allowed.as_deref().unwrap_or_default() == hosts);
            if !same {
                out.push((
                    format!("{phase}.network_mode"),
                    format!(
                        "a {phase}-phase network policy ({}) that differs from [environment]'s ({}) is not supported",
                        network_name(mode),
                        network_name(network)
                    ),
                ));
            }
        }
    }
    if step.verifier.environment.is_some()
        || step.verifier.environment_mode == Some(VerifierEnvironmentMode::Separate)
    {
        out.push((
            "verifier.environment".into(),
            "a separate verifier environment is not supported: rollout verifies in the agent's environment".into(),
        ));
    }
    if !step.verifier.collect.is_empty() {
        out.push((
            "verifier.collect".into(),
            "[[verifier.collect]] hooks are not supported".into(),
        ));
    }
    out
}

fn step_of(raw: RawStep, i: usize, earlier: &[StepConfig]) -> Result<StepConfig, FieldError> {
    let field = format!("steps[{i}]");
    let name = raw.name;
    let portable = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !portable {
        return Err((
            format!("{field}.name"),
            format!("step name {name:?} must be a portable directory name (letters, digits, `-`, `_`, `.`)"),
        ));
    }
    if earlier.iter().any(|s| s.name.eq_ignore_ascii_case(&name)) {
        return Err((
            format!("{field}.name"),
            format!("step name {name:?} is used twice (names are compared without case)"),
        ));
    }
    check_artifacts(&raw.artifacts, &format!("{field}.artifacts"))?;
    Ok(StepConfig {
        name,
        agent_timeout_sec: raw.agent.timeout_sec.map(|s| s.0),
        agent_user: raw.agent.user.map(|u| u.0),
        verifier_timeout_sec: raw.verifier.timeout_sec.map(|s| s.0),
        verifier_env: raw.verifier.env,
        verifier_user: raw.verifier.user.map(|u| u.0),
        min_reward: raw.min_reward.map(|m| match m {
            RawMinReward::Reward(r) => MinReward::Reward(r),
            RawMinReward::PerKey(k) => MinReward::PerKey(k),
        }),
        healthcheck: raw
            .healthcheck
            .map(|h| healthcheck_of(h, &format!("{field}.healthcheck")))
            .transpose()?,
        artifacts: raw.artifacts.into_iter().map(ArtifactSpec::from).collect(),
    })
}

/// Keys rollout interprets, per table; everything else is kept in `extra`.
const KNOWN_KEYS: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "version",
            "schema_version",
            "source",
            "metadata",
            "task",
            "verifier",
            "agent",
            "environment",
            "solution",
            "artifacts",
            "steps",
            "multi_step_reward_strategy",
        ],
    ),
    ("solution", &["env"]),
    (
        "task",
        &["name", "version", "description", "authors", "keywords"],
    ),
    (
        "verifier",
        &[
            "timeout_sec",
            "env",
            "user",
            "network_mode",
            "allowed_hosts",
            "environment_mode",
            "environment",
            "collect",
        ],
    ),
    (
        "agent",
        &[
            "timeout_sec",
            "install_timeout_sec",
            "setup_timeout_sec",
            "user",
            "network_mode",
            "allowed_hosts",
        ],
    ),
    (
        "environment",
        &[
            "build_timeout_sec",
            "docker_image",
            "cpus",
            "memory_mb",
            "memory",
            "storage_mb",
            "storage",
            "network_mode",
            "allow_internet",
            "allowed_hosts",
            "env",
            "workdir",
            "healthcheck",
            "gpus",
            "gpu_types",
            "mcp_servers",
            "skills_dir",
            "os",
            "tpu",
        ],
    ),
    (
        "environment.healthcheck",
        &[
            "command",
            "cmd",
            "test",
            "interval_sec",
            "timeout_sec",
            "start_period_sec",
            "start_interval_sec",
            "retries",
        ],
    ),
];

/// Collect the keys of `table` (at dotted `prefix`) that rollout does not interpret.
fn collect_unknown(
    prefix: &str,
    table: &toml::Table,
    out: &mut BTreeMap<String, serde_json::Value>,
) {
    let Some((_, known)) = KNOWN_KEYS.iter().find(|(p, _)| *p == prefix) else {
        return;
    };
    for (key, value) in table {
        let dotted = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if !known.contains(&key.as_str()) {
            out.insert(
                dotted,
                serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
            );
        } else if let toml::Value::Table(sub) = value {
            collect_unknown(&dotted, sub, out);
        }
    }
}

/// Best-effort line of `a.b.c` in a TOML text: the line of key `c` inside table `[a.b]`.
fn find_key_line(text: &str, dotted: &str) -> Option<usize> {
    let (table, key) = match dotted.rsplit_once('.') {
        Some((t, k)) => (t, k),
        None => ("", dotted),
    };
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            current = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            // A key written as its own table (`[verifier.environment]`).
            if current == dotted {
                return Some(i + 1);
            }
            continue;
        }
        let k = t.split('=').next().unwrap_or("").trim();
        if current == table && k == key {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TaskConfig, ConfigError> {
        TaskConfig::parse(text, Path::new("task.toml"))
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.version, "1.0");
        assert_eq!(c.verifier.timeout_sec, 600.0);
        assert_eq!(c.agent.timeout_sec, 600.0);
        assert_eq!(c.agent.install_timeout_sec, 300.0);
        assert_eq!(c.environment.build_timeout_sec, 600.0);
        assert_eq!(c.environment.cpus, 1.0);
        assert_eq!(c.environment.memory_mb, 2048);
        assert_eq!(c.environment.storage_mb, 10240);
        assert_eq!(c.environment.network_mode, NetworkMode::Public);
        assert!(c.environment.docker_image.is_none());
        assert!(c.environment.healthcheck.is_none());
        assert_eq!(c, TaskConfig::default());
    }

    #[test]
    fn harbor_task_toml_parses() {
        let c = parse(
            r#"
version = "1.0"

[metadata]
author_name = "someone"
difficulty = "easy"
tags = ["file-ops"]

[verifier]
timeout_sec = 120.0

[agent]
timeout_sec = 300

[environment]
build_timeout_sec = 900.0
cpus = 2
memory_mb = 4096
storage_mb = 20480

[solution]
env = { A = "b" }
"#,
        )
        .unwrap();
        assert_eq!(c.verifier.timeout_sec, 120.0);
        assert_eq!(c.agent.timeout_sec, 300.0);
        assert_eq!(c.environment.cpus, 2.0);
        assert_eq!(c.environment.memory_mb, 4096);
        assert_eq!(c.metadata["difficulty"], "easy");
        assert_eq!(c.solution_env["A"], "b");
        assert_eq!(c.unknown_keys().count(), 0);
    }

    #[test]
    fn legacy_spellings_are_accepted() {
        let c = parse(
            "schema_version = \"1.1\"\n[environment]\nmemory = \"4G\"\nstorage = \"512M\"\nallow_internet = false\n[agent]\nsetup_timeout_sec = 42\n",
        )
        .unwrap();
        assert_eq!(c.version, "1.1");
        assert_eq!(c.environment.memory_mb, 4096);
        assert_eq!(c.environment.storage_mb, 512);
        assert_eq!(c.environment.network_mode, NetworkMode::NoNetwork);
        assert_eq!(c.agent.install_timeout_sec, 42.0);
    }

    #[test]
    fn memory_mb_wins_over_legacy_memory() {
        let c = parse("[environment]\nmemory = \"4G\"\nmemory_mb = 1000\n").unwrap();
        assert_eq!(c.environment.memory_mb, 1000);
    }

    #[test]
    fn explicit_network_mode_wins_over_allow_internet() {
        let c =
            parse("[environment]\nallow_internet = false\nnetwork_mode = \"public\"\n").unwrap();
        assert_eq!(c.environment.network_mode, NetworkMode::Public);
    }

    #[test]
    fn healthcheck_defaults_and_array_command() {
        let c = parse(
            "[environment.healthcheck]\ncommand = [\"curl\", \"-f\", \"http://localhost/a b\"]\nretries = 3\n",
        )
        .unwrap();
        let h = c.environment.healthcheck.unwrap();
        assert_eq!(h.command, "curl -f 'http://localhost/a b'");
        assert_eq!(h.retries, 3);
        assert_eq!(h.interval_sec, 1.0);
        assert_eq!(h.start_period_sec, 0.0);
    }

    #[test]
    fn wrong_type_names_line_and_field() {
        let e = parse("version = \"1.0\"\n\n[environment]\ncpus = \"many\"\n").unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert_eq!(e.field.as_deref(), Some("environment.cpus"), "{e}");
        assert!(e.to_string().starts_with("task.toml:4:"), "{e}");
    }

    #[test]
    fn negative_timeout_is_rejected_with_expectation() {
        let e = parse("[agent]\ntimeout_sec = -1\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("non-negative"), "{e}");
    }

    #[test]
    fn unknown_network_mode_lists_choices() {
        let e = parse("[environment]\nnetwork_mode = \"internet\"\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("public"), "{e}");
    }

    #[test]
    fn semantic_errors_point_at_the_key() {
        let e = parse("[environment]\ncpus = 0\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("environment.cpus"));
        assert_eq!(e.line, Some(2));
        let e = parse("[environment]\nnetwork_mode = \"allowlist\"\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("environment.allowed_hosts"));
    }

    #[test]
    fn unknown_keys_are_kept_not_rejected() {
        let c = parse("custom = 1\n[verifier]\ntimeout = 5\n[environment]\ngpu = 1\n").unwrap();
        let keys: Vec<_> = c.unknown_keys().collect();
        assert_eq!(keys, ["custom", "environment.gpu", "verifier.timeout"]);
        assert_eq!(c.extra["verifier.timeout"], 5);
    }

    #[test]
    fn resource_numbers_are_bounded() {
        let e = parse("[environment]\nmemory_mb = 17592186044928\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("environment.memory_mb"), "{e}");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.to_string().contains("at most 4194304 MiB"), "{e}");
        let e = parse("[environment]\nmemory_mb = 9999999999999\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("environment.memory_mb"), "{e}");
        let e = parse("[environment]\nmemory = \"99999999T\"\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("environment.memory"), "{e}");
        let e = parse("[environment]\nstorage = \"9999999999999999999999G\"\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("environment.storage"), "{e}");
        let e = parse("[environment]\ncpus = 1e12\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("environment.cpus"), "{e}");
        let e = parse("[environment]\nmemory_mb = -1\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("environment.memory_mb"), "{e}");
        let c = parse("[environment]\nmemory_mb = 4194304\ncpus = 64\n").unwrap();
        assert_eq!(c.environment.memory_mb, 4 << 20);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_mb("2G"), Some(2048));
        assert_eq!(parse_size_mb("2Gi"), Some(2048));
        assert_eq!(parse_size_mb("512MB"), Some(512));
        assert_eq!(parse_size_mb("1.5g"), Some(1536));
        assert_eq!(parse_size_mb("1024"), Some(1024));
        assert_eq!(parse_size_mb("2X"), None);
    }

    #[test]
    fn harbor_multi_step_mcp_and_artifact_keys_are_typed() {
        let c = parse(
            r#"
schema_version = "1.1"
multi_step_reward_strategy = "final"
artifacts = ["/app/out.txt", { source = "/app/logs", destination = "logs", exclude = ["*.tmp"] }]

[environment]
gpus = 1
gpu_types = ["H100"]
skills_dir = "/skills"

[[environment.mcp_servers]]
name = "calc"
transport = "http"
url = "http://mcp:8000/mcp"

[[environment.mcp_servers]]
name = "local"
transport = "stdio"
command = "python3"
args = ["-m", "srv"]

[solution.env]
HINT = "1"

[[steps]]
name = "write"
min_reward = 1.0
artifacts = ["/app/step.txt"]
[steps.agent]
timeout_sec = 30
[steps.verifier]
env = { MODE = "strict" }
[steps.healthcheck]
command = "true"

[[steps]]
name = "review"
min_reward = { correctness = 0.5 }
"#,
        )
        .unwrap();
        assert_eq!(c.unknown_keys().count(), 0, "{:?}", c.extra);
        assert_eq!(
            c.multi_step_reward_strategy,
            Some(MultiStepRewardStrategy::Final)
        );
        assert_eq!(c.artifacts.len(), 2);
        assert_eq!(c.artifacts[1].destination.as_deref(), Some("logs"));
        assert_eq!(c.environment.gpus, 1);
        assert_eq!(c.environment.skills_dir.as_deref(), Some("/skills"));
        assert_eq!(
            c.environment.mcp_servers[0].transport,
            McpTransport::StreamableHttp
        );
        assert_eq!(c.environment.mcp_servers[1].args, ["-m", "srv"]);
        assert_eq!(c.solution_env["HINT"], "1");
        assert_eq!(c.steps.len(), 2);
        assert_eq!(c.steps[0].agent_timeout_sec, Some(30.0));
        assert_eq!(c.steps[0].verifier_env["MODE"], "strict");
        assert_eq!(c.steps[0].min_reward, Some(MinReward::Reward(1.0)));
        assert!(c.steps[0].healthcheck.is_some());
        assert_eq!(
            c.steps[1].min_reward,
            Some(MinReward::PerKey([("correctness".to_string(), 0.5)].into()))
        );
    }

    /// Every key of Harbor 0.26's task schema (models/task/config.py, schema 1.4).
    pub(crate) const EVERY_HARBOR_KEY: &str = r#"
schema_version = "1.4"
source = "https://example.com/tasks"
multi_step_reward_strategy = "mean"
artifacts = ["/app/out.txt", { source = "/app/logs", destination = "logs", exclude = ["*.tmp"], service = "main" }]

[task]
name = "acme/every-key"
version = "0.1.0"
description = "uses every key"
authors = [{ name = "Ada", email = "ada@example.com" }, { name = "Bob" }]
keywords = ["demo"]

[metadata]
difficulty = "easy"

[verifier]
timeout_sec = 120.0
env = { MODE = "x" }
user = "root"
network_mode = "public"
environment_mode = "shared"

[agent]
timeout_sec = 300.0
user = 0
network_mode = "public"

[environment]
build_timeout_sec = 600.0
docker_image = "debian:bookworm-slim"
os = "linux"
cpus = 1
memory_mb = 1024
storage_mb = 2048
gpus = 0
gpu_types = ["H100"]
network_mode = "public"
env = { A = "b" }
skills_dir = "/skills"
workdir = "/app"
allow_internet = true

[environment.healthcheck]
command = "true"
interval_sec = 5.0
timeout_sec = 30.0
start_period_sec = 0.0
start_interval_sec = 1.0
retries = 3

[[environment.mcp_servers]]
name = "calc"
transport = "streamable-http"
url = "http://mcp:8000/mcp"
headers = { Authorization = "Bearer ${TOKEN}" }

[solution]
env = { HINT = "1" }

[[steps]]
name = "one"
min_reward = 0.5
artifacts = ["/app/step.txt"]
[steps.agent]
timeout_sec = 10
user = "agent"
network_mode = "public"
[steps.verifier]
timeout_sec = 10
env = { S = "1" }
user = "root"
[steps.healthcheck]
command = "true"
"#;

    #[test]
    fn every_harbor_key_is_known_and_runnable() {
        let c = parse(EVERY_HARBOR_KEY).unwrap();
        assert_eq!(c.unknown_keys().collect::<Vec<_>>(), Vec::<&str>::new());
        assert!(c.unsupported.is_empty(), "{:?}", c.unsupported);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.version, "1.4");
        assert_eq!(c.agent.user.as_deref(), Some("0"));
        let authors = &c.task.as_ref().unwrap().authors;
        assert_eq!(authors[0].email.as_deref(), Some("ada@example.com"));
        assert_eq!(authors[1].name, "Bob");
        let h = c.environment.healthcheck.unwrap();
        assert_eq!(h.start_interval_sec, Some(1.0));
    }

    #[test]
    fn version_and_schema_version_take_schema_version() {
        let c = parse("version = \"1.0\"\nschema_version = \"1.4\"\n").unwrap();
        assert_eq!(c.version, "1.4");
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("schema_version"), "{:?}", c.warnings);
        let c = parse("version = \"1.1\"\nschema_version = \"1.1\"\n").unwrap();
        assert_eq!(c.version, "1.1");
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn keys_rollout_cannot_honour_are_refused_with_their_line() {
        for (text, field, line) in [
            ("[environment]\nos = \"Windows\"\n", "environment.os", 2),
            (
                "[environment.tpu]\ntype = \"v6e\"\ntopology = \"2x4\"\n",
                "environment.tpu",
                1,
            ),
            (
                "[agent]\nnetwork_mode = \"no-network\"\n",
                "agent.network_mode",
                2,
            ),
            (
                "[verifier]\nenvironment_mode = \"separate\"\n",
                "verifier.environment_mode",
                2,
            ),
            (
                "[verifier.environment]\ncpus = 2\n",
                "verifier.environment",
                1,
            ),
            (
                "[[verifier.collect]]\ncommand = \"true\"\n",
                "verifier.collect",
                1,
            ),
        ] {
            let c = parse(text).unwrap();
            assert_eq!(c.unsupported.len(), 1, "{text}: {:?}", c.unsupported);
            assert_eq!(c.unsupported[0].field, field, "{text}");
            assert_eq!(c.unsupported[0].line, Some(line), "{text}");
        }
        // The same policy as the environment's is honoured, not refused.
        let c = parse("[environment]\nnetwork_mode = \"no-network\"\n[verifier]\nnetwork_mode = \"no-network\"\n").unwrap();
        assert!(c.unsupported.is_empty());
        // Values Harbor rejects are errors.
        assert!(parse("[environment]\nos = \"plan9\"\n").is_err());
        assert!(parse("[agent]\nallowed_hosts = [\"a.com\"]\n").is_err());
        assert!(parse(
            "[verifier]\nenvironment_mode = \"shared\"\n[verifier.environment]\ncpus = 1\n"
        )
        .is_err());
    }

    #[test]
    fn invalid_steps_mcp_servers_and_artifacts_name_the_field() {
        for (text, field) in [
            ("[[steps]]\nname = \"../x\"", "steps[0].name"),
            (
                "[[steps]]\nname = \"a\"\n[[steps]]\nname = \"A\"",
                "steps[1].name",
            ),
            (
                "[[environment.mcp_servers]]\nname = \"m\"\ntransport = \"sse\"",
                "environment.mcp_servers[0]",
            ),
            (
                "[[environment.mcp_servers]]\nname = \"m\"\ntransport = \"stdio\"",
                "environment.mcp_servers[0]",
            ),
            ("artifacts = [\"/a/../../etc\"]", "artifacts[0]"),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{text}: {err}");
        }
    }
}
