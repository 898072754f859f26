//! Scheduling: trials run at most `n_concurrent_trials` at a time; cancellation stops scheduling
//! and cancels running trials, whose containers are removed; a label sweep at the end removes
//! anything a cancelled create left behind.

use crate::events::{Event, EventSink};
use crate::plan::JobPlan;
use crate::plan::TrialPlan;
use crate::trial::TrialRun;
use chrono::Utc;
use rollout_core::job_config::PreserveEnv;
use rollout_core::result::{compute_stats, ErrorInfo, JobResult, TrialResult, TryRecord};
use rollout_core::timeouts::seconds;
use rollout_core::{labels, ErrorKind, JobConfig, RESULT_SCHEMA_VERSION};
use rollout_env::Provider;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Knobs of a run that are not part of the job file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Bytes kept of each captured output stream (tail).
    pub output_cap: usize,
    /// Bytes copied at most out of each of `/logs/agent`, `/logs/verifier`, `/logs/artifacts`.
    pub download_cap: u64,
    /// A PEM bundle placed at [`CA_BUNDLE_PATH`] in every environment, with the usual variables
    /// pointing at it (for networks behind a TLS-intercepting proxy).
    pub ca_bundle: Option<Arc<Vec<u8>>>,
}

/// Where the CA bundle goes inside environments.
pub const CA_BUNDLE_PATH: &str = "/rollout/ca-certificates.crt";

/// Variables that make common tools (OpenSSL, Python requests, pip, curl, Node, git) trust
/// the bundle.
pub const CA_BUNDLE_VARS: [&str; 6] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
];

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            output_cap: rollout_env::exec::DEFAULT_OUTPUT_CAP,
            download_cap: download_cap_from_env(),
            ca_bundle: None,
        }
    }
}

/// Variable setting the cap on what is copied out of each of `/logs/agent`, `/logs/verifier`,
/// `/logs/artifacts`, in MiB (default 256).
pub const LOGS_CAP_VAR: &str = "ROLLOUT_LOGS_CAP_MB";

/// The copy-out cap: [`LOGS_CAP_VAR`] when it holds a positive number of MiB, else 256 MiB.
fn download_cap_from_env() -> u64 {
    std::env::var(LOGS_CAP_VAR)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|mb| (1..=1 << 20).contains(mb))
        .map_or(256 << 20, |mb| mb << 20)
}

/// What every trial of a job shares.
pub(crate) struct Shared {
    pub provider: Arc<dyn Provider>,
    pub sinks: Vec<Arc<dyn EventSink>>,
    pub cancel: CancellationToken,
    pub options: RunOptions,
    pub job: JobInfo,
    pub host: String,
}

pub(crate) struct JobInfo {
    pub job_id: String,
    pub job_name: String,
    pub config: JobConfig,
}

impl Shared {
    pub fn emit(&self, e: &Event) {
        for s in &self.sinks {
            s.on_event(e);
        }
    }
}

/// Runs jobs.
pub struct Runner {
    provider: Arc<dyn Provider>,
    sinks: Vec<Arc<dyn EventSink>>,
    cancel: CancellationToken,
    options: RunOptions,
    pause: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Runner {
    pub fn new(
        provider: Arc<dyn Provider>,
        cancel: CancellationToken,
        options: RunOptions,
    ) -> Self {
        Self {
            provider,
            sinks: Vec::new(),
            cancel,
            options,
            pause: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// A handle that pauses (`true`: no new trial starts; running ones go on) and resumes
    /// (`false`) the job.
    pub fn pause_handle(&self) -> Arc<tokio::sync::watch::Sender<bool>> {
        self.pause.clone()
    }

    /// Add a consumer of events.
    pub fn subscribe(&mut self, sink: Arc<dyn EventSink>) {
        self.sinks.push(sink);
    }

    /// Run every trial of `plan`; returns the job result (also sent as `JobFinished`).
    pub async fn run(&self, plan: JobPlan) -> JobResult {
        let started_at = Utc::now();
        let t0 = Instant::now();
        let concurrency = plan.config.concurrency();
        let shared = Arc::new(Shared {
            provider: self.provider.clone(),
            sinks: self.sinks.clone(),
            cancel: self.cancel.clone(),
            options: self.options.clone(),
            job: JobInfo {
                job_id: plan.job_id.clone(),
                job_name: plan.job_name.clone(),
                config: plan.config.clone(),
            },
            host: host_name(),
        });
        shared.emit(&Event::JobStarted {
            job_id: plan.job_id.clone(),
            job_name: plan.job_name.clone(),
            job_dir: plan.job_dir.clone(),
            n_trials: plan.trials.len() + plan.kept.len(),
            n_kept: plan.kept.len(),
            concurrency,
            config: Arc::new(serde_json::to_value(&plan.config).unwrap_or_default()),
        });
        let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut running = JoinSet::new();
        let mut results: Vec<TrialResult> = plan.kept.clone();
        let mut cancel_announced = false;
        let finish = |r: TrialResult,
                      shared: &Shared,
                      results: &mut Vec<TrialResult>,
                      dir: std::path::PathBuf| {
            let r = Arc::new(r);
            shared.emit(&Event::TrialFinished {
                result: r.clone(),
                trial_dir: dir,
            });
            results.push(Arc::unwrap_or_clone(r));
        };
        // Pausing and resuming are announced as they happen.
        let announcer = {
            let shared = shared.clone();
            let mut rx = self.pause.subscribe();
            tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    let paused = *rx.borrow_and_update();
                    shared.emit(if paused {
                        &Event::Paused
                    } else {
                        &Event::Resumed
                    });
                }
            })
        };
        let mut pause_rx = self.pause.subscribe();
        let max_errors = plan.config.max_errors;
        'schedule: for (i, trial) in plan.trials.iter().enumerate() {
            // Reap finished trials while waiting for a slot, so events stay timely.
            let permit = loop {
                tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => break None,
                    Some(done) = running.join_next(), if !running.is_empty() => {
                        if let Ok((r, dir, _permit)) = done { finish(r, &shared, &mut results, dir); }
                    }
                    p = semaphore.clone().acquire_owned() => break p.ok(),
                }
            };
            let Some(permit) = permit else {
                break 'schedule;
            };
            // A pause, even one that arrived while waiting for the slot, holds: keep the slot
            // and start nothing until resumed, reaping finished trials meanwhile.
            while *pause_rx.borrow_and_update() {
                tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => break 'schedule,
                    Some(done) = running.join_next(), if !running.is_empty() => {
                        if let Ok((r, dir, _permit)) = done { finish(r, &shared, &mut results, dir); }
                    }
                    _ = pause_rx.changed() => {}
                }
            }
            if let Some(max) = max_errors {
                let errors = results
                    .iter()
                    .filter(|r| counts_toward_max_errors(r))
                    .count();
                if errors >= max as usize {
                    let not_started = plan.trials.len() - i;
                    shared.emit(&Event::Note {
                        trial: None,
                        message: format!(
                            "{errors} trial(s) ended with infrastructure or model provider errors (max_errors {max}): \
                             not starting the remaining {not_started} trial(s); fix the cause and resume the job \
                             with the same --job-name to run them"
                        ),
                    });
                    break 'schedule;
                }
            }
            let shared = shared.clone();
            let trial = trial.clone();
            let dir = plan.job_dir.join(&trial.name);
            running.spawn(async move {
                // The slot is handed back with the result, so that a trial is counted (for
                // max_errors) before the next one can take its slot.
                let r = run_with_retries(&shared, &trial, &dir).await;
                (r, dir, permit)
            });
        }
        loop {
            tokio::select! {
                _ = self.cancel.cancelled(), if !cancel_announced => {
                    cancel_announced = true;
                    shared.emit(&Event::Cancelling);
                }
                done = running.join_next() => match done {
                    Some(Ok((r, dir, _permit))) => finish(r, &shared, &mut results, dir),
                    Some(Err(e)) => shared.emit(&Event::Note { trial: None, message: format!("a trial task failed: {e}") }),
                    None => break,
                }
            }
        }
        announcer.abort();
        if self.cancel.is_cancelled() && !cancel_announced {
            shared.emit(&Event::Cancelling);
        }
        // Safety net: a create cancelled mid-flight can leave a container we never saw.
        if plan.config.environment.preserve() == PreserveEnv::Never {
            match self
                .provider
                .remove_labelled(labels::JOB, &plan.job_id)
                .await
            {
                Ok(0) => {}
                Ok(n) => shared.emit(&Event::Note {
                    trial: None,
                    message: format!("removed {n} leftover container(s) of this job"),
                }),
                Err(e) => shared.emit(&Event::Note {
                    trial: None,
                    message: format!(
                        "could not sweep this job's containers: {e}; run `rollout gc`"
                    ),
                }),
            }
        }
        results.sort_by(|a, b| a.trial_name.cmp(&b.trial_name));
        let result = job_result(&plan, &results, started_at, t0, self.cancel.is_cancelled());
        let result = Arc::new(result);
        shared.emit(&Event::JobFinished {
            result: result.clone(),
            job_dir: plan.job_dir.clone(),
        });
        Arc::unwrap_or_clone(result)
    }
}

/// Whether a finished trial counts toward the job's `max_errors`: it ended with an
/// infrastructure or model provider error (which says nothing about the agent's skill, and
/// usually repeats for every trial).
fn counts_toward_max_errors(r: &TrialResult) -> bool {
    r.error.as_ref().is_some_and(|e| {
        matches!(
            e.kind.class(),
            rollout_core::ErrorClass::Infrastructure | rollout_core::ErrorClass::Provider
        )
    })
}

/// Run a trial, retrying infrastructure and transient provider failures with exponential backoff. The evidence of each
/// failed try moves to `previous-tries/try-<n>/` and is listed in the final result.
async fn run_with_retries(shared: &Shared, plan: &TrialPlan, dir: &Path) -> TrialResult {
    // A resumed trial starts from scratch: whatever an interrupted run left goes.
    if dir.exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
    let retry = shared.job.config.retry.clone().unwrap_or_default();
    let mut previous = Vec::new();
    let mut n = 1u32;
    loop {
        let mut r = TrialRun {
            shared,
            plan,
            dir: dir.to_path_buf(),
        }
        .run()
        .await;
        let retryable = r.error.as_ref().is_some_and(|e| e.kind.retryable());
        if !retryable || n > retry.max_retries || shared.cancel.is_cancelled() {
            r.previous_tries = previous;
            return r;
        }
        let rel = format!("previous-tries/try-{n}");
        if let Err(e) = stash_try(dir, &rel, &r) {
            shared.emit(&Event::Note {
                trial: Some(plan.name.clone()),
                message: format!("could not keep the evidence of try {n}: {e}"),
            });
        }
        previous.push(TryRecord {
            number: n,
            error: r.error.clone(),
            started_at: r.started_at,
            finished_at: r.finished_at,
            seconds: r.seconds,
            dir: rel,
        });
        let wait = retry.backoff_seconds(n);
        let e = r.error.as_ref().expect("a retryable error");
        shared.emit(&Event::Note {
            trial: Some(plan.name.clone()),
            message: format!(
                "try {n} ended with {}: {}; retrying in {wait:.1} s",
                e.kind, e.message
            ),
        });
        shared.provider.forget_failures();
        tokio::select! {
            _ = shared.cancel.cancelled() => {
                r.error = Some(ErrorInfo::new(ErrorKind::Cancelled, format!("cancelled while waiting to retry after {}", e.kind)));
                r.previous_tries = previous;
                return r;
            }
            _ = tokio::time::sleep(seconds(wait)) => {}
        }
        n += 1;
    }
}

/// Move a failed try's files into `dir/rel` and write its result there.
fn stash_try(dir: &Path, rel: &str, result: &TrialResult) -> std::io::Result<()> {
    let dest = dir.join(rel);
    std::fs::create_dir_all(&dest)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == "previous-tries" {
            continue;
        }
        std::fs::rename(entry.path(), dest.join(entry.file_name()))?;
    }
    crate::fsutil::write_json(&dest.join("result.json"), result)
}

fn job_result(
    plan: &JobPlan,
    results: &[TrialResult],
    started_at: chrono::DateTime<Utc>,
    t0: Instant,
    cancelled: bool,
) -> JobResult {
    let group = |key: &dyn Fn(&TrialResult) -> String| {
        let mut groups: BTreeMap<String, Vec<&TrialResult>> = BTreeMap::new();
        for r in results {
            groups.entry(key(r)).or_default().push(r);
        }
        groups
            .into_iter()
            .map(|(k, v)| (k, compute_stats(v)))
            .collect::<BTreeMap<_, _>>()
    };
    let dataset = |r: &TrialResult| r.dataset.clone().unwrap_or_else(|| "-".into());
    JobResult {
        schema_version: RESULT_SCHEMA_VERSION.into(),
        id: plan.job_id.clone(),
        name: plan.job_name.clone(),
        started_at,
        finished_at: Some(Utc::now()),
        seconds: t0.elapsed().as_secs_f64(),
        n_total_trials: plan.trials.len() + plan.kept.len(),
        n_not_started: plan.trials.len() + plan.kept.len() - results.len(),
        cancelled,
        stats: compute_stats(results),
        by_agent: group(&|r| r.agent.name.clone()),
        by_dataset: group(&dataset),
        by_agent_dataset: group(&|r| format!("{} / {}", r.agent.name, dataset(r))),
        by_agent_model_dataset: {
            let mut g: BTreeMap<(String, Option<String>, String), Vec<&TrialResult>> =
                BTreeMap::new();
            for r in results {
                g.entry((r.agent.name.clone(), r.agent.model_name.clone(), dataset(r)))
                    .or_default()
                    .push(r);
            }
            g.into_iter()
                .map(
                    |((agent, model, dataset), v)| rollout_core::result::GroupStats {
                        agent,
                        model,
                        dataset,
                        stats: compute_stats(v),
                    },
                )
                .collect()
        },
        trials: results
            .iter()
            .map(|r| (r.trial_name.clone(), r.reward))
            .collect(),
        harbor_stats: Some(rollout_core::harbor_result::HarborJobStats::from_trials(
            results,
            plan.trials.len() + plan.kept.len(),
        )),
    }
}

/// This machine's host name (recorded on containers and in `run_control.json`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
