//! Repo-owned pipeline contracts (the OpenCode-FSM seed): the repository under evaluation says in
//! `pipeline.yml` (+ `.aider_fsm/`) how to deploy it, roll it out and measure it; this crate runs
//! that contract through an [`rollout_env::Environment`] (the host's `local` one, or a Docker
//! container: [`sandbox`]) under a security policy, keeps the evidence of every command, tells
//! subscribers what happens ([`events`]), and refuses placeholder success (missing metrics keys,
//! `ok: false`, rollouts without samples).
//!
//! Not for: running Harbor tasks (that is `rollout-runner`), or recording runs in the
//! provenance store ([`PipelineResult`] carries what a recorder needs; `rollout-prov` records it).

pub mod assist;
pub mod events;
pub mod exec;
pub mod runner;
pub mod sandbox;
pub mod security;
pub mod spec;
pub mod validate;
pub mod verify;

pub use events::{PipelineEvent, PipelineSink};
pub use runner::{run, Mode, RunOptions, RuntimeHints, StageResult, StageStatus};
pub use sandbox::{DockerOptions, EnvChoice, EnvironmentInfo};
pub use security::Unattended;
pub use spec::{ContractError, PipelineSpec};

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Why a pipeline could not be run at all (a failing stage is a [`PipelineResult`], not this).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Spec(#[from] ContractError),
    /// The contract is invalid (a path leaving the repository, a bad regex …).
    #[error("invalid contract: {0}\n  hint: run `rollout pipeline validate` to see every problem")]
    Contract(String),
    /// The command line asks for something the contract cannot give.
    #[error("{0}")]
    Usage(String),
    #[error("{context}: {message}")]
    Io { context: String, message: String },
}

/// A file and its content hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Relative to the repository root.
    pub path: String,
    pub blake3: String,
    pub bytes: u64,
}

/// The repository a pipeline ran in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoInfo {
    pub path: PathBuf,
    /// The git URL it was cloned from.
    pub url: Option<String>,
    /// Its commit (from the clone, or `git rev-parse HEAD`).
    pub commit: Option<String>,
}

/// Everything a run did and found (`pipeline_result.json`, `--json`): what a provenance
/// recorder needs — inputs (repo commit, contract files with hashes) and outputs (metrics and
/// samples paths, the evidence directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineResult {
    pub schema_version: String,
    pub run_id: String,
    /// Every selected stage passed its commands and verification, and the run was not cancelled.
    pub ok: bool,
    pub cancelled: bool,
    pub repo: RepoInfo,
    pub mode: Mode,
    pub unattended: Unattended,
    /// The contract as it was when the run started.
    pub contract_files: Vec<FileDigest>,
    pub artifacts_dir: PathBuf,
    /// Every stage run (failed rounds before a repair included), in order.
    pub stages: Vec<StageResult>,
    pub teardown: Option<StageResult>,
    pub failed_stage: Option<String>,
    /// `<stage>.<what>: detail`, e.g. `evaluation.missing_keys: score`.
    pub failure: Option<String>,
    pub runtime_env_path: Option<PathBuf>,
    pub rollout_path: Option<PathBuf>,
    pub samples_path: Option<PathBuf>,
    /// Valid samples in `samples_path`.
    pub samples: Option<u64>,
    pub metrics_path: Option<PathBuf>,
    pub metrics: Option<serde_json::Value>,
    /// Repair attempts, with the files each changed.
    pub repairs: Vec<assist::RepairReport>,
    /// What deploy's `runtime_env.json` said about the inference endpoint, model and service
    /// (exported to later stages as `AIDER_FSM_INFERENCE_BASE_URL` …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeHints>,
    /// Where the stages ran (`local`, or `docker` with the image and container).
    #[serde(default)]
    pub environment: Option<EnvironmentInfo>,
    pub started_at: String,
    pub finished_at: String,
    pub duration_seconds: f64,
}
