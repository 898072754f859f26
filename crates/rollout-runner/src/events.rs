//! What the runner tells the world.

use rollout_core::job_config::AgentSpec;
use rollout_core::result::{JobResult, Phase, TrialResult};
use rollout_core::ErrorKind;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

/// The configuration of one trial, as written to `<trial>/config.json`.
#[derive(Debug, Clone, Serialize)]
pub struct TrialConfig {
    pub trial_name: String,
    pub trial_id: String,
    pub job_id: String,
    pub job_name: String,
    pub task_name: String,
    pub task_path: String,
    pub task_checksum: String,
    pub dataset: Option<String>,
    /// The job-file entry of the agent (env values as written, before host expansion).
    pub agent: AgentSpec,
    pub attempt: u32,
    pub timeouts_sec: TimeoutsSec,
    pub environment: EnvironmentConfigOut,
}

/// Effective timeouts of a trial, in seconds.
#[derive(Debug, Clone, Serialize)]
pub struct TimeoutsSec {
    pub build: f64,
    pub agent_install: f64,
    pub agent: f64,
    pub verifier: f64,
}

/// Effective environment settings of a trial.
#[derive(Debug, Clone, Serialize)]
pub struct EnvironmentConfigOut {
    #[serde(rename = "type")]
    pub kind: String,
    pub docker_image: Option<String>,
    pub cpus: f64,
    pub memory_mb: u64,
    pub storage_mb: u64,
    pub pids_limit: i64,
    pub network_mode: rollout_core::task_config::NetworkMode,
    pub workdir: Option<String>,
}

/// Something that happened in a job. Serialised as an object tagged by `type` (snake_case:
/// `phase_finished` …), error kinds as their snake_case names.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The job began; `config` is the resolved job configuration.
    JobStarted {
        job_id: String,
        job_name: String,
        job_dir: PathBuf,
        n_trials: usize,
        /// Trials already complete from an earlier run of this job (resume).
        n_kept: usize,
        concurrency: usize,
        config: Arc<serde_json::Value>,
    },
    TrialStarted {
        config: Arc<TrialConfig>,
        trial_dir: PathBuf,
    },
    PhaseStarted {
        trial: String,
        phase: Phase,
    },
    PhaseFinished {
        trial: String,
        phase: Phase,
        seconds: f64,
        /// The error kind the phase ended with, if any.
        error: Option<ErrorKind>,
    },
    /// A step of a multi-step trial began (`index` is 1-based, of `total`).
    StepStarted {
        trial: String,
        step: String,
        index: usize,
        total: usize,
    },
    /// A step of a multi-step trial ended; `result` is what goes into `step_results`.
    StepFinished {
        trial: String,
        result: Arc<rollout_core::result::StepResult>,
    },
    TrialFinished {
        result: Arc<TrialResult>,
        trial_dir: PathBuf,
    },
    /// Cancellation was requested; running trials are being stopped.
    Cancelling,
    /// No new trial starts until [`Event::Resumed`]; running trials go on.
    Paused,
    /// Trials start again.
    Resumed,
    /// A note worth a log line (a preserved container, a warning …).
    Note {
        trial: Option<String>,
        message: String,
    },
    JobFinished {
        result: Arc<JobResult>,
        job_dir: PathBuf,
    },
}

/// A consumer of events. Called synchronously, in order, from the runner's tasks: keep it quick.
pub trait EventSink: Send + Sync {
    fn on_event(&self, event: &Event);
}
