//! Domain types of rollout and the parsing of the files users write.
//!
//! This crate knows what a [`Task`], a job configuration ([`JobConfig`]), a trial result
//! ([`TrialResult`]) and a job result ([`JobResult`]) are, how to read `task.toml` and job files
//! (FORMATS.md §1–2) with errors that name the file, line and field, and how timeouts combine.
//! It does no I/O beyond reading the files it is asked to parse: no Docker, no network, no writes.

pub mod allowlist;
pub mod capabilities;
pub mod compose;
pub mod digest;
pub mod envvars;
pub mod error;
pub mod experiment;
pub mod harbor_result;
pub mod job_config;
pub mod kinds;
pub mod result;
pub mod reward;
pub mod schema;
pub mod task;
pub mod task_config;
pub mod timeouts;

pub use error::ConfigError;
pub use job_config::{AgentSpec, DatasetSpec, JobConfig, RetryConfig};
pub use kinds::{ErrorClass, ErrorKind};
pub use result::{ErrorInfo, JobResult, PhaseTiming, TrialResult};
pub use task::{Task, TaskFilter};
pub use task_config::TaskConfig;
pub use timeouts::{Multipliers, Timeouts};

/// Whether the rollout process `pid` that recorded `host` still runs. A process on another host
/// cannot be checked and counts as alive.
pub fn owner_alive(pid: u32, host: &str, this_host: &str) -> bool {
    if host != this_host {
        return true;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("rollout"))
}

/// rollout's cache directory: `$ROLLOUT_CACHE_DIR`, else `$XDG_CACHE_HOME/rollout`, else
/// `~/.cache/rollout`. Holds the git cache, unpacked archives and prepared code agents.
pub fn cache_root() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("ROLLOUT_CACHE_DIR").filter(|d| !d.is_empty()) {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return std::path::PathBuf::from(d).join("rollout");
    }
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache/rollout")
}

/// Version of rollout's result JSON schemas written by this build (`rollout_schema_version`
/// of trial and job `result.json`; their `schema_version` is Harbor's document version 1).
/// 2.0 added Harbor's result fields and moved rollout's version out of `schema_version`.
pub const RESULT_SCHEMA_VERSION: &str = "2.0";

/// Label keys put on every resource rollout creates, so that cleanup can find them.
pub mod labels {
    /// The job a container (or network, image build) belongs to.
    pub const JOB: &str = "io.rollout.job";
    /// The trial a container belongs to.
    pub const TRIAL: &str = "io.rollout.trial";
    /// Set on everything rollout creates.
    pub const MANAGED: &str = "io.rollout.managed";
    /// PID of the rollout process that created the resource (for orphan detection).
    pub const PID: &str = "io.rollout.pid";
    /// Host name of the machine whose rollout process created the resource.
    pub const HOST: &str = "io.rollout.host";
    /// Content hash of the environment directory an image was built from.
    pub const ENV_HASH: &str = "io.rollout.env-hash";
    /// The compose service a container of a multi-container trial runs (`main` for the
    /// task's own container).
    pub const SERVICE: &str = "io.rollout.service";
}
