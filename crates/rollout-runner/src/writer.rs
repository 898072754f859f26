//! The results writer: turns events into a Harbor-compatible job directory.
//!
//! `<job>/config.json`, `<job>/result.json`, `<job>/job.log`, and per trial `config.json`,
//! `result.json`, `trial.log`. JSON files are written atomically.

use crate::events::{Event, EventSink};
use crate::fsutil::write_json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Writes the job directory. Remembers the first write error for the caller to report.
#[derive(Default)]
pub struct ResultsWriter {
    state: Mutex<WriterState>,
}

#[derive(Default)]
struct WriterState {
    job_dir: Option<PathBuf>,
    job_log: Option<std::fs::File>,
    control: Option<RunControl>,
    error: Option<String>,
}

/// Status of a job in `run_control.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Paused,
    Interrupted,
    Completed,
    Failed,
    Killed,
}

/// `<job>/run_control.json`: who runs the job and how far it is, kept current while it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunControl {
    pub schema_version: String,
    /// The job id.
    pub run_id: String,
    pub job_name: String,
    pub status: RunStatus,
    /// Process and host that own the job while it runs.
    pub pid: u32,
    pub host: String,
    /// Trials running now.
    pub active_trials: Vec<String>,
    pub started_at: chrono::DateTime<Utc>,
    pub updated_at: chrono::DateTime<Utc>,
}

impl RunControl {
    /// Read a job's state file.
    pub fn load(job_dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(job_dir.join(RUN_CONTROL)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Whether the owning process is alive on this host (a job run elsewhere counts as alive).
    pub fn owner_alive(&self, this_host: &str) -> bool {
        rollout_core::owner_alive(self.pid, &self.host, this_host)
    }
}

/// File name of the job state file.
pub const RUN_CONTROL: &str = "run_control.json";

fn write_control(st: &mut WriterState) -> std::io::Result<()> {
    if let (Some(dir), Some(c)) = (&st.job_dir, st.control.as_mut()) {
        c.updated_at = Utc::now();
        write_json(&dir.join(RUN_CONTROL), c)?;
    }
    Ok(())
}

impl ResultsWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// The first error met while writing, if any.
    pub fn error(&self) -> Option<String> {
        self.state.lock().expect("writer poisoned").error.clone()
    }
}

fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{line}")
}

fn stamp() -> String {
    Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

impl EventSink for ResultsWriter {
    fn on_event(&self, event: &Event) {
        let mut st = self.state.lock().expect("writer poisoned");
        let log_job = |st: &mut WriterState, line: String| -> std::io::Result<()> {
            if let Some(f) = st.job_log.as_mut() {
                writeln!(f, "{} {line}", stamp())?;
            }
            Ok(())
        };
        let res: std::io::Result<()> = (|| {
            match event {
            Event::JobStarted {
                job_id,
                job_name,
                job_dir,
                n_trials,
                n_kept,
                concurrency,
                config,
            } => {
                std::fs::create_dir_all(job_dir)?;
                write_json(&job_dir.join("config.json"), &**config)?;
                st.job_log = Some(std::fs::OpenOptions::new().create(true).append(true).open(job_dir.join("job.log"))?);
                st.job_dir = Some(job_dir.clone());
                let now = Utc::now();
                st.control = Some(RunControl {
                    schema_version: "1.0".into(),
                    run_id: job_id.clone(),
                    job_name: job_name.clone(),
                    status: RunStatus::Running,
                    pid: std::process::id(),
                    host: crate::runner::host_name(),
                    active_trials: Vec::new(),
                    started_at: now,
                    updated_at: now,
                });
                write_control(&mut st)?;
                let resumed = if *n_kept > 0 { format!(" ({n_kept} kept from an earlier run)") } else { String::new() };
                log_job(&mut st, format!("job {job_name} ({job_id}) started: {n_trials} trials{resumed}, {concurrency} at a time"))
            }
            Event::TrialStarted { config, trial_dir } => {
                std::fs::create_dir_all(trial_dir)?;
                write_json(&trial_dir.join("config.json"), &**config)?;
                if let Some(c) = st.control.as_mut() {
                    c.active_trials.push(config.trial_name.clone());
                }
                write_control(&mut st)?;
                append_line(&trial_dir.join("trial.log"), &format!("{} trial {} started", stamp(), config.trial_name))?;
                log_job(&mut st, format!("{} started", config.trial_name))
            }
            Event::PhaseStarted { trial, phase } => {
                if let Some(dir) = &st.job_dir {
                    append_line(&dir.join(trial).join("trial.log"), &format!("{} {} started", stamp(), phase.as_str()))?;
                }
                Ok(())
            }
            Event::PhaseFinished { trial, phase, seconds, error } => {
                if let Some(dir) = &st.job_dir {
                    let tail = error.as_ref().map_or(String::new(), |e| format!(" with {e}"));
                    append_line(&dir.join(trial).join("trial.log"), &format!("{} {} finished in {seconds:.3} s{tail}", stamp(), phase.as_str()))?;
                }
                Ok(())
            }
            Event::StepStarted { trial, step, index, total } => {
                if let Some(dir) = &st.job_dir {
                    append_line(&dir.join(trial).join("trial.log"), &format!("{} step {index}/{total} {step} started", stamp()))?;
                }
                Ok(())
            }
            Event::StepFinished { trial, result } => {
                if let Some(dir) = &st.job_dir {
                    let outcome = match (&result.error, result.reward) {
                        (Some(e), r) => format!("error {}: {}{}", e.kind, e.message, r.map_or(String::new(), |r| format!(" (reward {r})"))),
                        (None, Some(r)) => format!("reward {r}"),
                        (None, None) => "no reward".into(),
                    };
                    let stopped = result.stopped.as_ref().map_or(String::new(), |s| format!("; {s}"));
                    append_line(&dir.join(trial).join("trial.log"), &format!("{} step {} finished in {:.3} s: {outcome}{stopped}", stamp(), result.step_name, result.seconds))?;
                }
                Ok(())
            }
            Event::TrialFinished { result, trial_dir } => {
                write_json(&trial_dir.join("result.json"), &**result)?;
                if let Some(c) = st.control.as_mut() {
                    c.active_trials.retain(|t| t != &result.trial_name);
                }
                write_control(&mut st)?;
                let outcome = match (&result.error, result.reward) {
                    (Some(e), r) => format!("error {}: {}{}", e.kind, e.message, r.map_or(String::new(), |r| format!(" (reward {r})"))),
                    (None, Some(r)) => format!("reward {r}"),
                    (None, None) => "no reward (verifier disabled)".into(),
                };
                append_line(&trial_dir.join("trial.log"), &format!("{} finished in {:.3} s: {outcome}", stamp(), result.seconds))?;
                log_job(&mut st, format!("{} finished: {outcome}", result.trial_name))
            }
            Event::Cancelling => log_job(&mut st, "cancelling: no new trials; running trials are stopped and their containers removed".into()),
            Event::Paused | Event::Resumed => {
                let paused = matches!(event, Event::Paused);
                if let Some(c) = st.control.as_mut() {
                    c.status = if paused { RunStatus::Paused } else { RunStatus::Running };
                }
                write_control(&mut st)?;
                log_job(&mut st, if paused { "paused: no new trial starts; running trials go on".into() } else { "resumed".into() })
            }
            Event::Note { trial, message } => {
                if let (Some(t), Some(dir)) = (trial, &st.job_dir) {
                    append_line(&dir.join(t).join("trial.log"), &format!("{} {message}", stamp()))?;
                }
                log_job(&mut st, match trial {
                    Some(t) => format!("{t}: {message}"),
                    None => message.clone(),
                })
            }
            Event::JobFinished { result, job_dir } => {
                write_json(&job_dir.join("result.json"), &**result)?;
                if let Some(c) = st.control.as_mut() {
                    c.status = if result.cancelled {
                        RunStatus::Interrupted
                    } else if rollout_core::result::any_errored(&result.stats) {
                        RunStatus::Failed
                    } else {
                        RunStatus::Completed
                    };
                    c.active_trials.clear();
                }
                write_control(&mut st)?;
                log_job(&mut st, format!("job finished in {:.3} s", result.seconds))
            }
        }
        })();
        if let Err(e) = res {
            tracing::error!("writing job results: {e}");
            if st.error.is_none() {
                st.error = Some(e.to_string());
            }
        }
    }
}
