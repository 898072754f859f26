//! Runs: a submission becomes a job plan, waits for a slot, runs through the runner, and every
//! runner event updates the database and the run's event stream.

use crate::db::{RunKind, RunRow, RunStatus, TaskStatus, TrialEnd, TrialRow};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::AppState;
use chrono::Utc;
use rollout_core::result::Phase;
use rollout_core::JobConfig;
use rollout_launch::{LaunchError, PlanMode};
use rollout_runner::{Event, EventSink, JobPlan};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Events kept for a slow stream subscriber before it is told it lagged.
const CHANNEL_CAPACITY: usize = 1024;
/// Bytes of verifier output kept per trial in the database.
const TEST_OUTPUT_CAP: usize = 64 << 10;
/// Bytes of each check's log kept in `test_results`.
const CHECK_OUTPUT_CAP: usize = 16 << 10;

/// One event of a run, as streamed (SSE, WebSocket).
#[derive(Debug, Clone, Serialize)]
pub struct StreamEvent {
    /// Position in the run's stream, from 1.
    pub seq: u64,
    /// `job_status` (`extracting`), `task_status` (each change of a task's status),
    /// `job_started`, `trial_started`, `phase_started`, `phase_finished`, `trial_finished`,
    /// `cancelling`, `job_finished`.
    pub event: &'static str,
    pub job_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    pub data: serde_json::Value,
    /// When the server emitted it (RFC 3339, microseconds).
    pub emitted_at: String,
}

impl StreamEvent {
    /// The seed's event name, for the events the seed streams.
    pub fn seed_name(&self) -> Option<&'static str> {
        Some(match self.event {
            "job_started" => "batch_started",
            "trial_started" => "task_started",
            "trial_finished" => "task_complete",
            "job_finished" => "batch_complete",
            "task_status" => "task_status",
            "job_status" => "batch_status",
            _ => return None,
        })
    }
}

/// A run that has not finished: its stream and its cancel switch.
pub struct LiveRun {
    pub id: String,
    pub tx: broadcast::Sender<Arc<StreamEvent>>,
    pub cancel: CancellationToken,
    /// Set when the cancel comes from a shutdown (the run becomes `interrupted`).
    pub interrupted: AtomicBool,
    /// The last sequence number given. Held while the event is sent, so that events reach
    /// every subscriber in the order of their numbers even when two tasks emit at once.
    seq: Mutex<u64>,
}

impl LiveRun {
    fn new(id: &str) -> Arc<Self> {
        Arc::new(Self {
            id: id.to_string(),
            tx: broadcast::channel(CHANNEL_CAPACITY).0,
            cancel: CancellationToken::new(),
            interrupted: AtomicBool::new(false),
            seq: Mutex::new(0),
        })
    }

    pub fn emit(
        &self,
        event: &'static str,
        trial: Option<&str>,
        task_id: Option<&str>,
        data: serde_json::Value,
    ) {
        // A poisoned lock only means another emitter panicked; its number stays given.
        let mut seq = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        *seq += 1;
        let emitted_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let e = StreamEvent {
            seq: *seq,
            event,
            job_id: self.id.clone(),
            trial: trial.map(str::to_string),
            task_id: task_id.map(str::to_string),
            data,
            emitted_at,
        };
        // No subscriber is not an error.
        let _ = self.tx.send(Arc::new(e));
        drop(seq);
    }
}

/// The launcher of a server's runs: its CA bundle, source policy, archive limits and store.
fn launcher(state: &AppState, id: &str) -> rollout_launch::Launcher {
    rollout_launch::Launcher {
        ca_bundle: state.config.ca_bundle.clone(),
        policy: Some(Arc::new(state.config.sources.clone())),
        archive_limits: Some(state.config.limits.clone()),
        // Unpacked into the run's directory: removed with the run (--ttl).
        unpack_dir: Some(state.config.runs_dir().join(id).join("archives")),
        store: state.config.store_path.clone(),
        argv: vec!["rollout".into(), "serve".into(), format!("run:{id}")],
        // A server never runs a submitted program on its host.
        script_metrics: false,
        git_timeout: state.config.clone_timeout,
        executor_agent_timeout: state.config.executor_agent_timeout,
        executor_test_timeout: state.config.executor_test_timeout,
        output_cap: state.config.max_output_bytes,
    }
}

/// Load the tasks of `config` and plan its trials, with job id `id` (resuming the job
/// directory when it already holds this job), through the launcher every entry point uses.
/// Blocking: clones and archive extraction.
pub fn plan(state: &AppState, id: &str, mut config: JobConfig) -> Result<JobPlan, ApiError> {
    let launcher = launcher(state, id);
    // Registries are checked before anything is fetched (and again, pinned, when fetched).
    if let Some(policy) = &launcher.policy {
        for d in &config.datasets {
            if let Some(reg) = &d.registry {
                let location = match (&reg.path, &reg.url) {
                    (Some(p), _) => p.display().to_string(),
                    (None, Some(u)) => u.clone(),
                    (None, None) => continue,
                };
                policy.check_registry(&location).map_err(|m| {
                    ApiError::bad_request("source_refused", format!("registry {location}: {m}"))
                })?;
            }
        }
    }
    let loaded = launcher.load(&mut config).map_err(|e| match e {
        LaunchError::Sources { refused: true, .. } => {
            ApiError::bad_request("source_refused", e.to_string())
        }
        e if config.archives.is_empty() => ApiError::bad_request("invalid_source", e.to_string()),
        e => ApiError::bad_request("invalid_archive", e.to_string()),
    })?;
    check_tasks(state, &config, &loaded.tasks)?;
    if loaded.tasks.is_empty() {
        return Err(ApiError::bad_request(
            "no_tasks",
            "the submission holds no task to run",
        ));
    }
    let plan = launcher
        .plan(
            config,
            loaded.tasks,
            PlanMode::ServerRun { id: id.to_string() },
        )
        .map_err(|e| ApiError::bad_request("invalid_job", e.to_string()))?;
    let n = plan.trials.len() + plan.kept.len();
    let max = state.config.caps.max_trials_per_job;
    if n > max {
        return Err(ApiError::bad_request(
            "over_limit",
            format!("the job has {n} trials (tasks × agents × attempts), over this server's limit of {max} (--max-trials-per-job): split it, or ask the operator to raise it"),
        ));
    }
    Ok(plan)
}

/// What `rollout run` refuses of the loaded tasks, and what a server refuses on top: tasks
/// that read the server's environment (`${VAR}`), and resources over the operator's limits.
fn check_tasks(
    state: &AppState,
    config: &JobConfig,
    tasks: &[rollout_core::Task],
) -> Result<(), ApiError> {
    rollout_launch::check_enforceable(config, tasks).map_err(|e| match e {
        LaunchError::Unenforceable(m) => ApiError::bad_request("unsupported_task", m),
        e => ApiError::bad_request("invalid_job", e.to_string()),
    })?;
    let caps = &state.config.caps;
    let env = &config.environment;
    for t in tasks {
        if let Some((field, var)) = rollout_core::task::host_env_references(t)
            .into_iter()
            .next()
        {
            return Err(ApiError::bad_request(
                "host_variable",
                format!(
                    "task {}: {field} reads the server's variable ${{{var}}}: a submitted task may not read the server's environment; put the value in the task (or `$${{…}}` for a literal)",
                    t.name
                ),
            ));
        }
        let e = &t.config.environment;
        let memory = env.override_memory_mb.unwrap_or(e.memory_mb);
        if memory > caps.max_memory_mb {
            return Err(ApiError::bad_request(
                "over_limit",
                format!("task {}: memory_mb = {memory} exceeds this server's limit of {} MiB (--max-memory-mb)", t.name, caps.max_memory_mb),
            ));
        }
        let cpus = env.override_cpus.unwrap_or(e.cpus);
        if cpus > caps.max_cpus {
            return Err(ApiError::bad_request(
                "over_limit",
                format!(
                    "task {}: cpus = {cpus} exceeds this server's limit of {} (--max-cpus)",
                    t.name, caps.max_cpus
                ),
            ));
        }
    }
    Ok(())
}

/// Record a new run and start it (it waits for a slot).
pub fn start(
    state: &Arc<AppState>,
    kind: RunKind,
    id: &str,
    plan: JobPlan,
    work_dir: &Path,
) -> Result<RunRow, ApiError> {
    let trials: Vec<(String, String)> = plan
        .trials
        .iter()
        .map(|t| (t.name.clone(), t.task.name.clone()))
        .chain(
            plan.kept
                .iter()
                .map(|r| (r.trial_name.clone(), r.task_name.clone())),
        )
        .collect();
    let run = RunRow {
        id: id.to_string(),
        kind,
        status: RunStatus::Pending,
        created_at: Utc::now(),
        started_at: None,
        finished_at: None,
        concurrent_tasks: plan.config.concurrency() as u32,
        total_tasks: trials.len() as u32,
        error: None,
        config: serde_json::to_value(&plan.config).unwrap_or_default(),
        job_dir: plan.job_dir.clone(),
        work_dir: work_dir.to_path_buf(),
        result: None,
    };
    state.db.insert_run(&run, &trials)?;
    Metrics::inc(&state.metrics.batches_total);
    launch(state, id, Work::Planned(plan));
    Ok(run)
}

/// What a run starts from: a plan (a job submitted through the native API, a resumed run), or
/// a batch's configuration, planned (its archive unpacked, its repositories cloned) once the
/// run has a slot.
enum Work {
    Planned(JobPlan),
    ToPlan(JobConfig),
}

/// Record a new batch and start it: its tasks (`task_ids`, from the archive, not yet cloned)
/// are its rows until it is planned; it waits for a slot, then reports `extracting` and, per
/// task, `cloning_repo` while it unpacks the archive and clones. A task whose repository cannot
/// be cloned fails alone; the others run.
pub fn start_batch(
    state: &Arc<AppState>,
    id: &str,
    config: JobConfig,
    task_ids: &[String],
    work_dir: &Path,
) -> Result<RunRow, ApiError> {
    let trials: Vec<(String, String)> = task_ids.iter().map(|t| (t.clone(), t.clone())).collect();
    let run = RunRow {
        id: id.to_string(),
        kind: RunKind::Batch,
        status: RunStatus::Pending,
        created_at: Utc::now(),
        started_at: None,
        finished_at: None,
        concurrent_tasks: config.concurrency() as u32,
        total_tasks: trials.len() as u32,
        error: None,
        config: serde_json::to_value(&config).unwrap_or_default(),
        job_dir: config
            .jobs_dir
            .clone()
            .unwrap_or_else(|| "jobs".into())
            .join(id),
        work_dir: work_dir.to_path_buf(),
        result: None,
    };
    state.db.insert_run(&run, &trials)?;
    Metrics::inc(&state.metrics.batches_total);
    launch(state, id, Work::ToPlan(config));
    Ok(run)
}

fn launch(state: &Arc<AppState>, id: &str, work: Work) {
    let live = LiveRun::new(id);
    state
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.to_string(), live.clone());
    let state2 = state.clone();
    state.tasks.spawn(execute(state2, live, work));
}

/// A task's status changed: in the database and on the stream (`task_status`).
fn task_status(state: &AppState, live: &LiveRun, trial: &str, task: &str, status: TaskStatus) {
    let _ = state.db.set_trial_status(&live.id, trial, status);
    live.emit(
        "task_status",
        Some(trial),
        Some(task),
        serde_json::json!({"task_id": task, "trial": trial, "status": status}),
    );
}

/// Plan a batch that has its slot: `extracting`, each task `cloning_repo`, then the planned
/// trials replace the task rows. Tasks whose clone failed are planned as invalid: their trials
/// fail with the clone's error. None (the run recorded as failed) when nothing can run.
async fn plan_batch(
    state: &Arc<AppState>,
    live: &Arc<LiveRun>,
    config: JobConfig,
) -> Option<JobPlan> {
    let id = live.id.clone();
    let _ = state.db.set_run_status(&id, RunStatus::Extracting, None);
    live.emit(
        "job_status",
        None,
        None,
        serde_json::json!({"status": RunStatus::Extracting}),
    );
    for t in state.db.list_trials(&id).unwrap_or_default() {
        task_status(
            state,
            live,
            &t.trial_name,
            &t.task_id,
            TaskStatus::CloningRepo,
        );
    }
    let st = state.clone();
    let pid = id.clone();
    let planned = tokio::task::spawn_blocking(move || plan(&st, &pid, config))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))
        .and_then(|r| r);
    match planned {
        Ok(p) => {
            let trials: Vec<(String, String)> = p
                .trials
                .iter()
                .map(|t| (t.name.clone(), t.task.name.clone()))
                .collect();
            let _ = state
                .db
                .replace_trials(&id, &trials, TaskStatus::CloningRepo);
            let _ = state
                .db
                .set_run_config(&id, &serde_json::to_value(&p.config).unwrap_or_default());
            Some(p)
        }
        Err(e) => {
            tracing::warn!(run = %id, "planning the batch failed: {}", e.message);
            let message = format!("{}: {}", e.code, e.message);
            for t in state.db.list_trials(&id).unwrap_or_default() {
                let _ = state.db.finish_trial(
                    &id,
                    &t.trial_name,
                    &TrialEnd {
                        status: TaskStatus::Failed,
                        reward: None,
                        passed: false,
                        error: Some(message.clone()),
                        duration_ms: 0,
                        test_output: String::new(),
                        test_results: serde_json::json!([]),
                        result: serde_json::Value::Null,
                    },
                );
            }
            let _ = state
                .db
                .set_run_status(&id, RunStatus::Extracting, Some(&message));
            None
        }
    }
}

async fn execute(state: Arc<AppState>, live: Arc<LiveRun>, work: Work) {
    let id = live.id.clone();
    Metrics::inc(&state.metrics.batches_queued);
    let permit = tokio::select! {
        p = state.slots.clone().acquire_owned() => p.ok(),
        _ = live.cancel.cancelled() => None,
    };
    Metrics::dec(&state.metrics.batches_queued);
    let Some(_permit) = permit else {
        finish(&state, &live, None, Instant::now()).await;
        return;
    };
    let plan = match work {
        Work::Planned(p) => p,
        Work::ToPlan(config) => match plan_batch(&state, &live, config).await {
            Some(p) if !live.cancel.is_cancelled() => p,
            _ => {
                finish(&state, &live, None, Instant::now()).await;
                return;
            }
        },
    };
    if let Err(e) = state.db.set_run_status(&id, RunStatus::Running, None) {
        tracing::error!(run = %id, "{e}");
    }
    Metrics::inc(&state.metrics.batches_active);
    let t0 = Instant::now();
    // A resumed job first removes what its predecessor left running.
    if let Err(e) = state
        .provider
        .remove_labelled(rollout_core::labels::JOB, &id)
        .await
    {
        tracing::warn!(run = %id, "removing leftover containers: {e}");
    }
    let sink = Arc::new(Sink {
        state: state.clone(),
        live: live.clone(),
        tasks: Mutex::new(HashMap::new()),
    });
    let done = launcher(&state, &id)
        .execute(
            plan,
            state.provider.clone(),
            live.cancel.clone(),
            vec![sink],
            &|m: &str| tracing::info!(run = %id, "{m}"),
            |_| {},
        )
        .await;
    if let Some(e) = &done.writer_error {
        tracing::error!(run = %id, "writing results: {e}");
    }
    for w in &done.provenance_warnings {
        tracing::warn!(run = %id, "provenance: {w}");
    }
    let result = done.result;
    Metrics::dec(&state.metrics.batches_active);
    let value = serde_json::to_value(&result).unwrap_or_default();
    finish(&state, &live, Some(value), t0).await;
}

/// Record the end of a run, tell the stream, forget the live run.
async fn finish(
    state: &Arc<AppState>,
    live: &Arc<LiveRun>,
    result: Option<serde_json::Value>,
    t0: Instant,
) {
    let id = &live.id;
    // Whatever a cancel left behind (the runner sweeps too; this covers a run never started).
    if let Err(e) = state
        .provider
        .remove_labelled(rollout_core::labels::JOB, id)
        .await
    {
        tracing::warn!(run = %id, "removing containers: {e}");
    }
    let status = if live.interrupted.load(Ordering::SeqCst) {
        RunStatus::Interrupted
    } else if live.cancel.is_cancelled() {
        RunStatus::Cancelled
    } else if result.is_none() {
        RunStatus::Failed
    } else {
        RunStatus::Completed
    };
    let open_status = match status {
        RunStatus::Interrupted => TaskStatus::Interrupted,
        _ => TaskStatus::Cancelled,
    };
    let db = &state.db;
    if let Some(r) = &result {
        let _ = db.set_run_result(id, r);
    }
    let _ = db.close_open_trials(id, open_status);
    let _ = db.set_run_status(id, status, None);
    match status {
        RunStatus::Completed => Metrics::inc(&state.metrics.batches_completed),
        RunStatus::Cancelled => Metrics::inc(&state.metrics.batches_cancelled),
        RunStatus::Interrupted => Metrics::inc(&state.metrics.batches_interrupted),
        _ => Metrics::inc(&state.metrics.batches_failed),
    }
    if result.is_some() {
        state
            .metrics
            .batch_duration
            .observe(t0.elapsed().as_secs_f64());
    }
    let trials = db.list_trials(id).unwrap_or_default();
    let summary = Summary::of(&trials);
    live.emit(
        "job_finished",
        None,
        None,
        serde_json::json!({
            "status": status,
            "total": summary.total,
            "passed": summary.passed,
            "failed": summary.failed,
            "reward": summary.aggregate_reward,
            "duration_ms": t0.elapsed().as_millis() as u64,
        }),
    );
    state
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(id);
}

/// Counts over a run's trials.
pub struct Summary {
    pub total: usize,
    pub completed: usize,
    pub passed: usize,
    pub failed: usize,
    /// Sum of rewards / number of trials (a trial without a reward counts 0).
    pub aggregate_reward: f64,
    /// Keyed rewards (`{"correctness": 1, "performance": 0.5}`): per key, the mean over the
    /// trials (a trial without the key counts 0). Empty when every reward is a plain `reward`.
    pub reward_keys: std::collections::BTreeMap<String, f64>,
}

impl Summary {
    pub fn of(trials: &[TrialRow]) -> Self {
        let total = trials.len();
        let done: Vec<&TrialRow> = trials.iter().filter(|t| t.status().is_final()).collect();
        let passed = done.iter().filter(|t| t.passed == Some(true)).count();
        let sum: f64 = trials.iter().filter_map(|t| t.reward).sum();
        let mut reward_keys = std::collections::BTreeMap::<String, f64>::new();
        for t in trials {
            let rewards = t
                .result
                .as_ref()
                .and_then(|r| r.get("rewards"))
                .and_then(|r| r.as_object());
            for (k, v) in rewards.into_iter().flatten() {
                *reward_keys.entry(k.clone()).or_default() += v.as_f64().unwrap_or(0.0);
            }
        }
        if reward_keys.len() == 1 && reward_keys.contains_key("reward") {
            reward_keys.clear();
        }
        for v in reward_keys.values_mut() {
            *v /= total.max(1) as f64;
        }
        Self {
            total,
            completed: done.len(),
            passed,
            failed: done.len() - passed,
            aggregate_reward: if total == 0 { 0.0 } else { sum / total as f64 },
            reward_keys,
        }
    }
}

/// Turns runner events into database rows and stream events.
struct Sink {
    state: Arc<AppState>,
    live: Arc<LiveRun>,
    /// Trial name → task id.
    tasks: Mutex<HashMap<String, String>>,
}

impl Sink {
    fn task_of(&self, trial: &str) -> Option<String> {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(trial)
            .cloned()
    }
}

fn phase_status(phase: Phase) -> Option<TaskStatus> {
    match phase {
        Phase::EnvironmentSetup => Some(TaskStatus::InstallingDeps),
        Phase::AgentInstall | Phase::StepSetup | Phase::AgentRun => Some(TaskStatus::RunningAgent),
        Phase::Verify => Some(TaskStatus::RunningTests),
        Phase::Collect | Phase::Teardown => None,
    }
}

impl EventSink for Sink {
    fn on_event(&self, event: &Event) {
        let id = &self.live.id;
        let db = &self.state.db;
        match event {
            Event::JobStarted {
                n_trials,
                n_kept,
                concurrency,
                ..
            } => self.live.emit(
                "job_started",
                None,
                None,
                serde_json::json!({"total_tasks": n_trials, "kept": n_kept, "concurrent_tasks": concurrency}),
            ),
            Event::TrialStarted { config, .. } => {
                self.tasks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(config.trial_name.clone(), config.task_name.clone());
                task_status(
                    &self.state,
                    &self.live,
                    &config.trial_name,
                    &config.task_name,
                    TaskStatus::InstallingDeps,
                );
                self.live.emit(
                    "trial_started",
                    Some(&config.trial_name),
                    Some(&config.task_name),
                    serde_json::json!({"task_id": config.task_name, "trial": config.trial_name, "attempt": config.attempt}),
                );
            }
            Event::PhaseStarted { trial, phase } => {
                let task = self.task_of(trial);
                if let Some(s) = phase_status(*phase) {
                    task_status(
                        &self.state,
                        &self.live,
                        trial,
                        task.as_deref().unwrap_or(trial),
                        s,
                    );
                }
                self.live.emit(
                    "phase_started",
                    Some(trial),
                    task.as_deref(),
                    serde_json::json!({"phase": phase.as_str()}),
                );
            }
            Event::PhaseFinished {
                trial,
                phase,
                seconds,
                error,
            } => {
                let task = self.task_of(trial);
                self.live.emit(
                    "phase_finished",
                    Some(trial),
                    task.as_deref(),
                    serde_json::json!({"phase": phase.as_str(), "seconds": seconds, "error": error}),
                );
            }
            Event::TrialFinished { result, trial_dir } => {
                let end = trial_end(result, trial_dir);
                let _ = db.finish_trial(id, &result.trial_name, &end);
                let m = &self.state.metrics;
                if end.status != TaskStatus::Cancelled {
                    Metrics::inc(&m.tasks_total);
                    Metrics::inc(if end.passed {
                        &m.tasks_passed
                    } else {
                        &m.tasks_failed
                    });
                    m.task_duration.observe(result.seconds);
                }
                self.live.emit(
                    "trial_finished",
                    Some(&result.trial_name),
                    Some(&result.task_name),
                    serde_json::json!({
                        "task_id": result.task_name,
                        "trial": result.trial_name,
                        "status": end.status,
                        "passed": end.passed,
                        "reward": end.reward,
                        "error": end.error,
                        "duration_ms": end.duration_ms,
                    }),
                );
            }
            Event::Cancelling => self
                .live
                .emit("cancelling", None, None, serde_json::json!({})),
            Event::Note { trial, message } => self.live.emit(
                "note",
                trial.as_deref(),
                None,
                serde_json::json!({"message": message}),
            ),
            Event::Paused
            | Event::Resumed
            | Event::JobFinished { .. }
            | Event::StepStarted { .. }
            | Event::StepFinished { .. } => {}
        }
    }
}

fn read_capped(path: &Path, cap: usize) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let start = bytes.len().saturating_sub(cap);
    let mut s = String::from_utf8_lossy(&bytes[start..]).into_owned();
    if start > 0 {
        s.insert_str(0, "[… truncated]\n");
    }
    Some(s)
}

/// A finished trial in the seed's terms: `test_results` from the executor verifier's
/// `PASS name` / `FAIL name (exit N)` lines and each check's log.
pub(crate) fn trial_end(result: &rollout_core::TrialResult, trial_dir: &Path) -> TrialEnd {
    let verifier = trial_dir.join("verifier");
    let test_output =
        read_capped(&verifier.join("test-stdout.txt"), TEST_OUTPUT_CAP).unwrap_or_default();
    let mut tests = Vec::new();
    for line in test_output.lines() {
        let (passed, rest) = if let Some(r) = line.strip_prefix("PASS ") {
            (true, r)
        } else if let Some(r) = line.strip_prefix("FAIL ") {
            (false, r)
        } else {
            continue;
        };
        let (name, exit_code) = match rest.split_once(" (exit ") {
            Some((n, code)) => (n, code.trim_end_matches(')').parse::<i64>().unwrap_or(-1)),
            None => (rest, 0),
        };
        if name.contains('/') || name.starts_with('.') {
            continue;
        }
        let output = read_capped(&verifier.join(format!("{name}.log")), CHECK_OUTPUT_CAP)
            .unwrap_or_default();
        tests.push(serde_json::json!({"name": name, "passed": passed, "exit_code": exit_code, "output": output}));
    }
    let cancelled = result.is_cancelled();
    let passed = !cancelled && result.reward.is_some_and(|r| r >= 1.0);
    let status = if cancelled {
        TaskStatus::Cancelled
    } else if result.reward.is_some() {
        TaskStatus::Completed
    } else {
        TaskStatus::Failed
    };
    TrialEnd {
        status,
        reward: result.reward,
        passed,
        error: result
            .error
            .as_ref()
            .map(|e| format!("{}: {}", e.kind, e.message)),
        duration_ms: (result.seconds * 1000.0) as u64,
        test_output,
        test_results: serde_json::Value::Array(tests),
        result: serde_json::to_value(result).unwrap_or_default(),
    }
}

/// Cancel a run (client request). Returns false when it is not running or queued.
pub fn cancel(state: &AppState, id: &str) -> bool {
    match state.live_run(id) {
        Some(live) => {
            live.cancel.cancel();
            true
        }
        None => false,
    }
}

/// At start: runs a previous server left pending or running are marked interrupted, or
/// re-planned and resumed (`--resume-interrupted`; finished trials are kept).
pub async fn recover(state: &Arc<AppState>) {
    let open = match state.db.runs_with_status(&[
        RunStatus::Pending,
        RunStatus::Extracting,
        RunStatus::Running,
        RunStatus::Interrupted,
    ]) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("listing unfinished runs: {e}");
            return;
        }
    };
    for run in open {
        let was_interrupted_before = run.status == RunStatus::Interrupted;
        if !was_interrupted_before {
            // Containers of the dead server's trials.
            let _ = state
                .provider
                .remove_labelled(rollout_core::labels::JOB, &run.id)
                .await;
        }
        if state.config.resume_interrupted {
            let config: Result<JobConfig, _> = serde_json::from_value(run.config.clone());
            let planned = match config {
                Ok(c) => {
                    let st = state.clone();
                    let id = run.id.clone();
                    tokio::task::spawn_blocking(move || plan(&st, &id, c))
                        .await
                        .map_err(|e| ApiError::internal(e.to_string()))
                        .and_then(|r| r)
                }
                Err(e) => Err(ApiError::internal(format!("stored configuration: {e}"))),
            };
            match planned {
                Ok(p) => {
                    tracing::info!(run = %run.id, "resuming interrupted run");
                    let _ = state.db.set_run_status(&run.id, RunStatus::Pending, None);
                    // A batch stopped before it was planned has one row per task: its trials
                    // replace them.
                    let rows = state.db.list_trials(&run.id).unwrap_or_default();
                    if !p
                        .trials
                        .iter()
                        .any(|t| rows.iter().any(|r| r.trial_name == t.name))
                    {
                        let trials: Vec<(String, String)> = p
                            .trials
                            .iter()
                            .map(|t| (t.name.clone(), t.task.name.clone()))
                            .collect();
                        let _ = state
                            .db
                            .replace_trials(&run.id, &trials, TaskStatus::Queued);
                    }
                    for t in &p.trials {
                        let _ = state
                            .db
                            .set_trial_status(&run.id, &t.name, TaskStatus::Queued);
                    }
                    launch(state, &run.id, Work::Planned(p));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(run = %run.id, "cannot resume: {e}");
                    let _ = state.db.set_run_status(
                        &run.id,
                        RunStatus::Interrupted,
                        Some(&format!("could not resume: {}", e.message)),
                    );
                    continue;
                }
            }
        }
        if !was_interrupted_before {
            tracing::info!(run = %run.id, "marking run interrupted by the restart");
            let _ = state.db.close_open_trials(&run.id, TaskStatus::Interrupted);
            let _ = state.db.set_run_status(
                &run.id,
                RunStatus::Interrupted,
                Some("the server stopped while this run was unfinished; restart with --resume-interrupted to resume it"),
            );
            Metrics::inc(&state.metrics.batches_interrupted);
        }
    }
}

/// Shutdown: runs may finish within the grace period; then the rest are cancelled (as
/// interrupted) and awaited, which removes their containers.
pub async fn drain(state: &Arc<AppState>) {
    state.tasks.close();
    // Queued runs never start now.
    let live: Vec<Arc<LiveRun>> = state
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    for l in &live {
        let queued = state
            .db
            .get_run(&l.id)
            .ok()
            .flatten()
            .is_some_and(|r| r.status == RunStatus::Pending);
        if queued {
            l.interrupted.store(true, Ordering::SeqCst);
            l.cancel.cancel();
        }
    }
    if tokio::time::timeout(state.config.shutdown_grace, state.tasks.wait())
        .await
        .is_err()
    {
        let live: Vec<Arc<LiveRun>> = state
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        tracing::info!(
            "grace period over: cancelling {} run(s); they resume with --resume-interrupted",
            live.len()
        );
        for l in live {
            l.interrupted.store(true, Ordering::SeqCst);
            l.cancel.cancel();
        }
        if tokio::time::timeout(Duration::from_secs(120), state.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("runs still stopping after 120 s; exiting anyway");
        }
    }
}

/// Every so often, delete finished runs older than `--ttl` with their files.
pub fn spawn_reaper(state: Arc<AppState>) {
    let shortest = match state.config.max_run_age {
        Some(age) => age.min(state.config.ttl),
        None => state.config.ttl,
    };
    let every = (shortest / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = state.shutdown.cancelled() => return,
            }
            let st = state.clone();
            let _ = tokio::task::spawn_blocking(move || reap(&st)).await;
        }
    });
}

/// Cancel runs still queued or running `--max-run-age` after their submission (the seed's
/// `SESSION_TTL_SECS`); returns how many.
pub fn expire_running(state: &AppState) -> usize {
    let Some(age) = state.config.max_run_age else {
        return 0;
    };
    let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
    let Some(cutoff) = Utc::now().checked_sub_signed(age) else {
        return 0;
    };
    let mut n = 0;
    for r in state.db.list_runs(None).unwrap_or_default() {
        if !r.status.is_final() && r.created_at < cutoff && cancel(state, &r.id) {
            tracing::warn!(run = %r.id, "cancelled: still unfinished after --max-run-age");
            n += 1;
        }
    }
    n
}

/// Delete finished runs older than the TTL; returns how many.
pub fn reap(state: &AppState) -> usize {
    expire_running(state);
    let ttl = chrono::Duration::from_std(state.config.ttl).unwrap_or(chrono::Duration::MAX);
    let Some(cutoff) = Utc::now().checked_sub_signed(ttl) else {
        return 0;
    };
    let runs = state.db.list_runs(None).unwrap_or_default();
    let mut n = 0;
    for r in runs {
        let done_at = r.finished_at.unwrap_or(r.created_at);
        if r.status.is_final() && state.live_run(&r.id).is_none() && done_at < cutoff {
            for dir in [&r.job_dir, &r.work_dir] {
                if dir.starts_with(&state.config.data_dir) {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            if state.db.delete_run(&r.id).is_ok() {
                tracing::info!(run = %r.id, "expired (--ttl)");
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod keyed_reward_tests {
    use super::*;

    fn row(rewards: serde_json::Value, reward: Option<f64>) -> TrialRow {
        TrialRow {
            run_id: "r".into(),
            trial_name: "t".into(),
            task_id: "t".into(),
            status: Some(TaskStatus::Completed),
            reward,
            passed: Some(false),
            error: None,
            duration_ms: None,
            started_at: None,
            finished_at: None,
            test_output: None,
            test_results: None,
            result: Some(serde_json::json!({ "rewards": rewards })),
        }
    }

    #[test]
    fn keyed_rewards_are_averaged_per_key() {
        let s = Summary::of(&[
            row(
                serde_json::json!({"correctness": 1, "performance": 0.5}),
                None,
            ),
            row(serde_json::json!({"correctness": 1}), None),
        ]);
        assert_eq!(s.reward_keys["correctness"], 1.0);
        assert_eq!(s.reward_keys["performance"], 0.25);
        let plain = Summary::of(&[row(serde_json::json!({"reward": 1}), Some(1.0))]);
        assert!(plain.reward_keys.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trials run at once and each emits its own events: a subscriber must still receive them
    /// in the order of their numbers (a client resumes from the last `id:` it saw).
    #[test]
    fn events_emitted_at_once_arrive_in_the_order_of_their_numbers() {
        const THREADS: usize = 4;
        // All of a round's events fit in the channel, so the reader reads after the round.
        const EACH: usize = CHANNEL_CAPACITY / THREADS;
        for round in 0..100 {
            let run = LiveRun::new("job-1");
            let mut rx = run.tx.subscribe();
            let barrier = Arc::new(std::sync::Barrier::new(THREADS));
            let emitters: Vec<_> = (0..THREADS)
                .map(|t| {
                    let run = run.clone();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        let trial = format!("t{t}");
                        barrier.wait();
                        for i in 0..EACH {
                            run.emit("note", Some(&trial), None, serde_json::json!(i));
                        }
                    })
                })
                .collect();
            for e in emitters {
                e.join().unwrap();
            }
            let seqs: Vec<u64> = (0..THREADS * EACH)
                .map(|_| rx.try_recv().expect("every event is in the channel").seq)
                .collect();
            assert!(
                seqs.windows(2).all(|w| w[0] + 1 == w[1]) && seqs[0] == 1,
                "round {round}: events out of order near {:?}",
                seqs.windows(2).find(|w| w[0] + 1 != w[1])
            );
        }
    }
}
