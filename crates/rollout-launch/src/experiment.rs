//! `rollout run experiment.yaml`: an AgentLab-shaped experiment run as a rollout job, with the
//! run directory in the seed's layout beside rollout's own (docs/experiments.md):
//!
//! ```text
//! .lab/runs/run_<id>/
//!   runtime/run_control.json            {schema_version, run_id, status, active_trials, updated_at}
//!   experiment.json                     the experiment as read
//!   tasks/<task_id>/                    the rows as task directories
//!   trials/index.json                   trial name -> n (kept across `rollout jobs resume`)
//!   trials/trial_<n>/
//!     benchmark_preflight.json          benchmark_trial_preflight_v1: task_id, task_image, grading
//!     out/benchmark_score.json          what the benchmark adapter wrote (valid JSON)
//!     trial_result.json                 classification: graded | grade_error | error, reward
//!     harbor -> ../../<trial_name>      the trial's full rollout directory (logs, result.json)
//!   <trial_name>/, config.json, result.json, run_control.json   (rollout's job layout)
//! ```

use crate::{LaunchError, Overrides};
use rollout_core::experiment::{self, Experiment, ImageSource};
use rollout_core::result::TrialResult;
use rollout_core::JobConfig;
use rollout_runner::events::{Event, EventSink};
use rollout_runner::fsutil::write_json;
use rollout_runner::writer::RUN_CONTROL;
use rollout_runner::JobPlan;
use rollout_sources::jsonl::{ADAPTER_OUT_DIR, GRADE_EXIT_FILE, SCORE_FILE};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Schema of `benchmark_preflight.json`.
pub const PREFLIGHT_SCHEMA: &str = "benchmark_trial_preflight_v1";
/// Schema of `trials/trial_<n>/trial_result.json`.
pub const TRIAL_RESULT_SCHEMA: &str = "experiment_trial_result_v1";
/// Trial name -> number of its `trials/trial_<n>` directory.
pub const TRIAL_INDEX: &str = "trials/index.json";
/// Default parent of run directories, as AgentLab's.
pub const RUNS_DIR: &str = ".lab/runs";

/// A new experiment run, prepared: its rows are task directories in the run directory, and the
/// job configuration has the request's overrides.
pub struct Prepared {
    pub exp: Experiment,
    pub config: JobConfig,
    pub run_dir: PathBuf,
}

impl Prepared {
    /// Nothing ran: leave no half-made run directory behind.
    pub fn discard(&self) {
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// Prepare a new run of the experiment `file` (`rollout run FILE` where FILE is an
/// experiment). Of the overrides, the run's place (`jobs_dir`, `job_name`) and its execution
/// settings apply; the experiment defines the tasks and agents.
pub fn prepare(file: &Path, o: &Overrides) -> Result<Prepared, LaunchError> {
    let exp = experiment::load(file).map_err(|e| {
        LaunchError::Problems(
            e.errors
                .iter()
                .map(|m| format!("{}: {m}", e.file.display()))
                .collect(),
        )
    })?;
    let runs_dir = o.jobs_dir.clone().unwrap_or_else(|| RUNS_DIR.into());
    let run_name = match &o.job_name {
        Some(n) if !crate::plain_name(n) => {
            return Err(LaunchError::Invalid(format!(
                "--job-name {n:?} must be a plain directory name"
            )))
        }
        Some(n) => n.clone(),
        None => format!(
            "run_{}_{}",
            chrono::Utc::now().format("%Y%m%d_%H%M%S"),
            &uuid_hex()[..6]
        ),
    };
    let run_dir = runs_dir.join(&run_name);
    if run_dir.exists() {
        return Err(LaunchError::Invalid(format!(
            "run directory {} exists: continue it with `rollout jobs resume {}`, or choose another --job-name",
            run_dir.display(),
            run_dir.display()
        )));
    }
    let tasks_dir = run_dir.join(rollout_runner::plan::INPUTS_DIR);
    let prepared = match rollout_sources::experiment::prepare(&exp, &tasks_dir) {
        Ok(p) => p,
        Err(errors) => {
            // Nothing ran: leave no half-made run directory behind.
            let _ = std::fs::remove_dir_all(&run_dir);
            return Err(LaunchError::Problems(errors));
        }
    };
    let mut config = prepared.config;
    std::fs::create_dir_all(&runs_dir)
        .map_err(|e| LaunchError::Invalid(format!("cannot create {}: {e}", runs_dir.display())))?;
    config.name = Some(run_name.clone());
    config.jobs_dir = Some(runs_dir.canonicalize().unwrap_or(runs_dir));
    if let Some(n) = o.n_concurrent {
        config.n_concurrent_trials = Some(n.max(1));
    }
    if o.max_errors.is_some() {
        config.max_errors = o.max_errors;
    }
    if let Some(n) = o.max_retries {
        config
            .retry
            .get_or_insert_with(Default::default)
            .max_retries = n;
    }
    if let Some(m) = o.timeout_multiplier.filter(|m| m.is_finite() && *m > 0.0) {
        config.timeout_multiplier = Some(m);
    }
    config.environment.force_build = o.force_build;
    if let Some(n) = o.n_tasks {
        for d in &mut config.datasets {
            d.n_tasks = Some(n);
        }
    }
    Ok(Prepared {
        exp,
        config,
        run_dir,
    })
}

/// Record the experiment in its run directory (`experiment.json`) before the run starts.
pub fn record(exp: &Experiment, plan: &JobPlan) -> Result<(), LaunchError> {
    write_json(&plan.job_dir.join("experiment.json"), exp)
        .map_err(|e| LaunchError::Io(format!("writing {}: {e}", plan.job_dir.display())))
}

/// The sink that writes the seed's layout beside the plan's job directory.
pub fn sink(exp: &Experiment, plan: &JobPlan) -> Result<Arc<ExperimentSink>, LaunchError> {
    ExperimentSink::new(exp, plan).map(Arc::new).map_err(|e| {
        LaunchError::Io(format!(
            "writing {}: {e}",
            plan.job_dir.join(TRIAL_INDEX).display()
        ))
    })
}

/// The experiment a run directory was started from (`experiment.json`), if it is one.
pub fn load_run(dir: &Path) -> Option<Result<Experiment, String>> {
    let path = dir.join("experiment.json");
    let bytes = std::fs::read(&path).ok()?;
    Some(
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not an experiment rollout wrote: {e}", path.display())),
    )
}

fn uuid_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Writes the seed's run layout from the job's events.
pub struct ExperimentSink {
    run_dir: PathBuf,
    grading: Option<String>,
    image_source: ImageSource,
    global_image: Option<String>,
    /// Row id -> its `task.image`.
    task_images: HashMap<String, Option<String>>,
    /// Trial name -> its number (1-based, plan order).
    numbers: HashMap<String, usize>,
    error: Mutex<Option<String>>,
}

/// The seed's words for a run that was stopped: its test plan (SM-01) knows `cancelled`, not
/// rollout's `interrupted` (Ctrl-C, SIGTERM) or `killed` (`rollout jobs kill`), which stay
/// readable as `cancel_reason`. The job directory's own run_control.json keeps rollout's.
fn seed_status(control: &mut Value) {
    let status = control
        .get("status")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(reason @ ("interrupted" | "killed")) = status.as_deref() {
        control["cancel_reason"] = json!(reason);
        control["status"] = json!("cancelled");
    }
}

impl ExperimentSink {
    /// The sink of a run: trials are numbered in plan order, and the numbering is kept in
    /// `trials/index.json` so that a resumed run (whose plan holds only the trials left) writes
    /// to the same `trial_<n>` directories. Trials the index does not know yet get the next
    /// numbers, in plan order.
    pub fn new(exp: &Experiment, plan: &JobPlan) -> std::io::Result<Self> {
        let task_images = rollout_sources::jsonl::load_rows(&exp.dataset)
            .map(|rows| rows.into_iter().map(|r| (r.id, r.image)).collect())
            .unwrap_or_default();
        let index_path = plan.job_dir.join(TRIAL_INDEX);
        let mut numbers: HashMap<String, usize> = match std::fs::read(&index_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(e),
        };
        let mut next = numbers.values().copied().max().unwrap_or(0);
        for t in &plan.trials {
            if !numbers.contains_key(&t.name) {
                next += 1;
                numbers.insert(t.name.clone(), next);
            }
        }
        write_json(&index_path, &numbers)?;
        Ok(Self {
            run_dir: plan.job_dir.clone(),
            grading: exp.grader.clone(),
            image_source: exp.image_source,
            global_image: exp.image.clone(),
            task_images,
            numbers,
            error: Mutex::new(None),
        })
    }

    /// The first error met while writing the layout.
    pub fn error(&self) -> Option<String> {
        self.error.lock().expect("sink poisoned").clone()
    }

    fn trial_dir(&self, trial_name: &str) -> Option<PathBuf> {
        let n = self.numbers.get(trial_name)?;
        Some(self.run_dir.join("trials").join(format!("trial_{n}")))
    }

    /// `runtime/run_control.json`: the job's state file, in the seed's place and words.
    fn mirror_control(&self) -> std::io::Result<()> {
        let Ok(bytes) = std::fs::read(self.run_dir.join(RUN_CONTROL)) else {
            return Ok(());
        };
        let mut control: Value = serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
        seed_status(&mut control);
        write_json(&self.run_dir.join("runtime").join(RUN_CONTROL), &control)
    }

    fn trial_started(
        &self,
        trial_name: &str,
        task_id: &str,
        attempt: u32,
        trial_dir: &Path,
    ) -> std::io::Result<()> {
        let Some(dir) = self.trial_dir(trial_name) else {
            return Ok(());
        };
        std::fs::create_dir_all(&dir)?;
        let task_image = match self.image_source {
            ImageSource::PerTask => self.task_images.get(task_id).cloned().flatten(),
            ImageSource::Global => self.global_image.clone(),
        };
        let preflight = json!({
            "schema_version": PREFLIGHT_SCHEMA,
            "trial_id": dir.file_name().map(|n| n.to_string_lossy().into_owned()),
            "trial_name": trial_name,
            "task_id": task_id,
            "task_image": task_image,
            "image_source": self.image_source,
            "replication": attempt,
            "agent_dir": experiment::AGENT_DIR,
            "grading": {
                "enabled": self.grading.is_some(),
                "command": self.grading,
                "out_dir": ADAPTER_OUT_DIR,
                "score_file": SCORE_FILE,
            },
        });
        write_json(&dir.join("benchmark_preflight.json"), &preflight)?;
        let link = dir.join("harbor");
        if std::fs::symlink_metadata(&link).is_err() {
            let target = Path::new("..").join("..").join(
                trial_dir
                    .file_name()
                    .unwrap_or_else(|| std::ffi::OsStr::new(trial_name)),
            );
            std::os::unix::fs::symlink(target, &link)?;
        }
        Ok(())
    }

    fn trial_finished(&self, result: &TrialResult, trial_dir: &Path) -> std::io::Result<()> {
        let Some(dir) = self.trial_dir(&result.trial_name) else {
            return Ok(());
        };
        std::fs::create_dir_all(dir.join("out"))?;
        let out = trial_dir.join("verifier").join("out");
        let (classification, reason) = if self.grading.is_some() {
            match grade(&out, result) {
                Ok(score) => {
                    write_json(&dir.join("out").join(SCORE_FILE), &score)?;
                    match &result.error {
                        Some(e) => ("error", Some(format!("{}: {}", e.kind, e.message))),
                        None => ("graded", None),
                    }
                }
                Err(reason) => match &result.error {
                    // The agent or the infrastructure failed before grading could run.
                    Some(e) if !e.kind.to_string().starts_with("verifier_") => {
                        ("error", Some(format!("{}: {}", e.kind, e.message)))
                    }
                    _ => ("grade_error", Some(reason)),
                },
            }
        } else {
            match &result.error {
                Some(e) => ("error", Some(format!("{}: {}", e.kind, e.message))),
                None => ("graded", None),
            }
        };
        let summary = json!({
            "schema_version": TRIAL_RESULT_SCHEMA,
            "trial_id": dir.file_name().map(|n| n.to_string_lossy().into_owned()),
            "trial_name": result.trial_name,
            "task_id": result.task_name,
            "replication": result.attempt,
            "classification": classification,
            "reason": reason,
            "reward": result.reward,
            "error_kind": result.error.as_ref().map(|e| e.kind.to_string()),
            "seconds": result.seconds,
        });
        write_json(&dir.join("trial_result.json"), &summary)
    }
}

/// The adapter's score, or why grading failed: the adapter exited non-zero, wrote no score file,
/// wrote one that is not a JSON object, or one without a reward the verifier could read.
fn grade(out: &Path, result: &TrialResult) -> Result<Value, String> {
    let code = std::fs::read_to_string(out.join(GRADE_EXIT_FILE)).map_err(|_| {
        "the benchmark adapter did not run (no exit status in $OUT_DIR)".to_string()
    })?;
    if code.trim() != "0" {
        return Err(format!(
            "the benchmark adapter exited with status {}",
            code.trim()
        ));
    }
    let path = out.join(SCORE_FILE);
    let bytes = std::fs::read(&path)
        .map_err(|_| format!("the benchmark adapter wrote no {SCORE_FILE} in $OUT_DIR"))?;
    let score: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{SCORE_FILE} is not valid JSON: {e}"))?;
    if !score.is_object() {
        return Err(format!("{SCORE_FILE} must be a JSON object"));
    }
    if result.reward.is_none() {
        return Err(format!(
            "{SCORE_FILE} has no numeric reward/score nor boolean resolved/passed"
        ));
    }
    Ok(score)
}

impl EventSink for ExperimentSink {
    fn on_event(&self, event: &Event) {
        let res = match event {
            Event::TrialStarted { config, trial_dir } => self
                .trial_started(
                    &config.trial_name,
                    &config.task_name,
                    config.attempt,
                    trial_dir,
                )
                .and_then(|()| self.mirror_control()),
            Event::TrialFinished { result, trial_dir } => self
                .trial_finished(result, trial_dir)
                .and_then(|()| self.mirror_control()),
            Event::JobStarted { .. }
            | Event::Paused
            | Event::Resumed
            | Event::Cancelling
            | Event::JobFinished { .. } => self.mirror_control(),
            Event::PhaseStarted { .. }
            | Event::PhaseFinished { .. }
            | Event::StepStarted { .. }
            | Event::StepFinished { .. }
            | Event::Note { .. } => Ok(()),
        };
        if let Err(e) = res {
            let mut first = self.error.lock().expect("sink poisoned");
            if first.is_none() {
                eprintln!(
                    "error: writing the experiment layout in {}: {e}",
                    self.run_dir.display()
                );
                *first = Some(e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod seed_status_tests {
    use super::*;

    #[test]
    fn stopped_runs_read_cancelled_in_the_seed_file() {
        for (ours, seed) in [
            ("interrupted", "cancelled"),
            ("killed", "cancelled"),
            ("completed", "completed"),
            ("failed", "failed"),
            ("running", "running"),
        ] {
            let mut c = json!({"status": ours, "run_id": "r"});
            seed_status(&mut c);
            assert_eq!(c["status"], seed, "{ours}");
            let reason = (ours != seed).then_some(ours);
            assert_eq!(c["cancel_reason"].as_str(), reason, "{ours}");
        }
    }
}
