//! Interactive sandboxes (RL sessions): a trial's environment driven step by step from outside.
//!
//! [`Sandbox::open`] runs a trial's environment setup exactly as a trial does (the task's image,
//! its files, the instruction at `/rollout/instruction.md`, the healthcheck) and marks where the
//! caller's processes begin. The caller then runs commands and copies files through
//! [`Sandbox::env`]. [`Sandbox::grade`] is the trial's verify phase: every process started since
//! the mark is killed, `/logs/verifier` is reset, `tests/` is copied in, `test.sh` runs and the
//! reward files are read without following links. [`Sandbox::close`] removes the environment
//! and returns the trial's result.
//!
//! Not here: who may open sandboxes, how many, for how long (crate rollout-server).

use crate::plan::TrialPlan;
use crate::runner::{host_name, JobInfo, Shared};
use crate::trial::{Copied, State, TrialRun, VerifySpec};
use crate::{RunOptions, TrialConfig};
use chrono::Utc;
use rollout_core::result::{CommandOutcome, ErrorInfo, Phase, PhaseTiming, TrialResult};
use rollout_core::{ErrorKind, JobConfig};
use rollout_env::{Environment, Provider};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Removing the environment is bounded.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything needed to open a sandbox.
pub struct SandboxSpec {
    pub provider: Arc<dyn Provider>,
    /// The trial: task, agent (the `nop` agent: the caller is the agent), timeouts.
    pub plan: Arc<TrialPlan>,
    pub job_id: String,
    pub job_name: String,
    /// The job's settings (resource overrides, `verifier.disable` is ignored: grading is asked).
    pub config: JobConfig,
    pub options: RunOptions,
    /// The trial directory (its `verifier/`, `environment/build.log` land there).
    pub dir: PathBuf,
    /// Labels added to the environment's containers.
    pub labels: BTreeMap<String, String>,
}

/// What grading found.
#[derive(Debug, Clone)]
pub struct Grade {
    pub rewards: BTreeMap<String, f64>,
    pub verifier: CommandOutcome,
    /// Processes the caller left running that were killed before the tests ran.
    pub killed: u64,
}

/// One open sandbox.
pub struct Sandbox {
    shared: Shared,
    plan: Arc<TrialPlan>,
    dir: PathBuf,
    env: Box<dyn Environment>,
    mark: crate::sandbox::Mark,
    st: tokio::sync::Mutex<State>,
    started_at: chrono::DateTime<Utc>,
    t0: Instant,
    config: Arc<TrialConfig>,
    copies: std::sync::atomic::AtomicUsize,
}

impl Sandbox {
    /// Build or reuse the task's image, start the environment and set it up as a trial's.
    /// On failure nothing is left running; the error says what failed.
    pub async fn open(spec: SandboxSpec) -> Result<Self, ErrorInfo> {
        let started_at = Utc::now();
        let t0 = Instant::now();
        let shared = Shared {
            provider: spec.provider,
            sinks: Vec::new(),
            cancel: CancellationToken::new(),
            options: spec.options,
            job: JobInfo {
                job_id: spec.job_id,
                job_name: spec.job_name,
                config: spec.config,
            },
            host: host_name(),
        };
        let plan = spec.plan;
        let dir = spec.dir;
        let run = TrialRun {
            shared: &shared,
            plan: &plan,
            dir: dir.clone(),
        };
        ["agent", "verifier", "artifacts"]
            .iter()
            .try_for_each(|d| crate::trial::create_private_dir(&dir.join(d)))
            .map_err(|e| {
                ErrorInfo::new(
                    ErrorKind::InternalError,
                    format!("creating {}: {e}", dir.display()),
                )
            })?;
        if let Some(refusal) = run.task_refusal().await {
            return Err(refusal);
        }
        if plan.task.is_multi_step() {
            return Err(ErrorInfo::new(
                ErrorKind::EnvironmentUnsupported,
                format!(
                    "task {} has [[steps]]: sessions run single-step tasks only (run it with `rollout run`)",
                    plan.task.name
                ),
            ));
        }
        let config = run.describe();
        let env_spec = run.env_spec(&spec.labels);
        let mut st = State::default();
        st.env_info.kind = shared.provider.name().into();
        let mut slot = None;
        let mut info = std::mem::take(&mut st.env_info);
        let setup_t0 = Instant::now();
        let setup_started = Utc::now();
        let r = run.setup(env_spec, &mut slot, &mut info).await;
        st.env_info = info;
        st.phases.insert(
            Phase::EnvironmentSetup,
            PhaseTiming {
                started_at: setup_started,
                finished_at: Utc::now(),
                seconds: setup_t0.elapsed().as_secs_f64(),
            },
        );
        if let Err(e) = r {
            if let Some(env) = slot {
                let _ = tokio::time::timeout(TEARDOWN_TIMEOUT, env.destroy()).await;
            }
            return Err(e);
        }
        let env = slot.expect("setup succeeded");
        let mark = crate::sandbox::mark(env.as_ref()).await;
        drop(run);
        Ok(Self {
            shared,
            plan,
            dir,
            env,
            mark,
            st: tokio::sync::Mutex::new(st),
            started_at,
            t0,
            config,
            copies: Default::default(),
        })
    }

    /// The running environment: exec, upload, download.
    pub fn env(&self) -> &dyn Environment {
        self.env.as_ref()
    }

    /// The task's instruction.
    pub fn instruction(&self) -> &str {
        &self.plan.task.instruction
    }

    /// The trial's plan (task, id, name).
    pub fn plan(&self) -> &Arc<TrialPlan> {
        &self.plan
    }

    /// The trial directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The trial's configuration (`config.json`).
    pub fn config(&self) -> &Arc<TrialConfig> {
        &self.config
    }

    /// The job's settings.
    pub fn job_config(&self) -> &JobConfig {
        &self.shared.job.config
    }

    /// Seconds since opening began.
    pub fn age(&self) -> Duration {
        self.t0.elapsed()
    }

    fn run(&self) -> TrialRun<'_> {
        TrialRun {
            shared: &self.shared,
            plan: &self.plan,
            dir: self.dir.clone(),
        }
    }

    /// Run the task's tests as a trial's verify phase does and return the rewards. The
    /// outcome (rewards or error) is the trial's.
    pub async fn grade(&self) -> Result<Grade, ErrorInfo> {
        let mut st = self.st.lock().await;
        let run = self.run();
        let ended = std::sync::Mutex::new(None);
        let copied = std::sync::Mutex::new(Copied::default());
        let started_at = Utc::now();
        let t0 = Instant::now();
        let r = run
            .verify(
                self.env.as_ref(),
                &VerifySpec::of_task(&self.plan),
                &self.mark,
                &ended,
                &copied,
            )
            .await;
        st.phases.insert(
            Phase::Verify,
            PhaseTiming {
                started_at,
                finished_at: Utc::now(),
                seconds: t0.elapsed().as_secs_f64(),
            },
        );
        let ended = *ended.lock().expect("not poisoned");
        if let Some(ended) = &ended {
            run.agent_ended(&mut st, ended, run.memory_mb());
        }
        match r {
            Ok((outcome, rewards)) => {
                st.verifier = Some(outcome.clone());
                st.rewards = Some(rewards.clone());
                Ok(Grade {
                    rewards,
                    verifier: outcome,
                    killed: ended.map_or(0, |e| e.killed),
                })
            }
            Err(e) => {
                st.fail(e.clone());
                Err(e)
            }
        }
    }

    /// Record an error as the trial's (the first one wins), e.g. the session expired.
    pub async fn fail(&self, e: ErrorInfo) {
        self.st.lock().await.fail(e);
    }

    /// Copy `source` (a file or a directory) out of the environment into `target_dir` as the
    /// runner collects artifacts: through the archive API, at most `cap` bytes, links and
    /// special files never materialised on the host. Returns the path written (a file or a
    /// directory under `target_dir`) and the bytes received; `Ok(None)` when `source` does not
    /// exist.
    pub async fn copy_out(
        &self,
        source: &str,
        target_dir: &Path,
        cap: u64,
    ) -> Result<Option<(PathBuf, u64, bool)>, String> {
        let name = Path::new(source)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty() && n != "..")
            .unwrap_or_else(|| "root".into());
        let target = target_dir.join(&name);
        let spec = rollout_core::task_config::ArtifactSpec {
            source: source.to_string(),
            destination: None,
            exclude: Vec::new(),
            service: None,
        };
        let (status, bytes) = self
            .run()
            .collect_artifact(
                self.env.as_ref(),
                1000 + self
                    .copies
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                &spec,
                &target,
                cap,
            )
            .await?;
        if status.starts_with("missing") {
            return Ok(None);
        }
        Ok(Some((target, bytes, status.starts_with("truncated"))))
    }

    /// Remove the environment and return the trial's result. Idempotent on the environment;
    /// call it once.
    pub async fn close(&self) -> TrialResult {
        let mut st = std::mem::take(&mut *self.st.lock().await);
        let started_at = Utc::now();
        let t0 = Instant::now();
        st.env_info.container_id = Some(self.env.id().to_string());
        let r = tokio::time::timeout(TEARDOWN_TIMEOUT, self.env.destroy()).await;
        st.phases.insert(
            Phase::Teardown,
            PhaseTiming {
                started_at,
                finished_at: Utc::now(),
                seconds: t0.elapsed().as_secs_f64(),
            },
        );
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => st.fail(ErrorInfo::new(
                ErrorKind::EnvironmentTeardownFailed,
                e.to_string(),
            )),
            Err(_) => st.fail(ErrorInfo::new(
                ErrorKind::EnvironmentTeardownFailed,
                "removing the container took over 60 s",
            )),
        }
        self.run().result(st, self.started_at, self.t0)
    }
}
