//! One trial's lifecycle. Every phase is timed, bounded and cancellable; the first error wins;
//! teardown always runs.

use crate::events::{EnvironmentConfigOut, Event, TimeoutsSec, TrialConfig};
use crate::plan::TrialPlan;
use crate::runner::{Shared, CA_BUNDLE_PATH, CA_BUNDLE_VARS};
use chrono::Utc;
use rollout_agents::{AgentContext, INSTRUCTION_PATH};
use rollout_core::job_config::PreserveEnv;
use rollout_core::result::{
    main_reward, CommandOutcome, EnvironmentInfo, ErrorInfo, Phase, PhaseTiming, TrialResult,
};
use rollout_core::{labels, ErrorKind, RESULT_SCHEMA_VERSION};
use rollout_env::archive::TarBuilder;
use rollout_env::{EnvSpec, Environment, ExecRequest, ImageSource};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Teardown is never cancelled, but it is bounded.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// Uploading tests or downloading logs is bounded too (the engine could hang).
const COPY_TIMEOUT: Duration = Duration::from_secs(300);

/// Mutable state of a running trial (or of one step of a multi-step trial).
#[derive(Default)]
pub(crate) struct State {
    pub error: Option<ErrorInfo>,
    pub phases: BTreeMap<Phase, PhaseTiming>,
    pub env_info: EnvironmentInfo,
    pub agent_install: Option<CommandOutcome>,
    pub agent_run: Option<CommandOutcome>,
    pub verifier: Option<CommandOutcome>,
    pub rewards: Option<BTreeMap<String, f64>>,
    pub step_results: Vec<rollout_core::result::StepResult>,
}

impl State {
    pub fn fail(&mut self, e: ErrorInfo) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    pub fn cancelled(&self) -> bool {
        self.error
            .as_ref()
            .is_some_and(|e| e.kind == ErrorKind::Cancelled)
    }
}

pub(crate) struct TrialRun<'a> {
    pub shared: &'a Shared,
    pub plan: &'a TrialPlan,
    pub dir: PathBuf,
}

/// What the verifier of a trial (or of one step) runs with.
pub(crate) struct VerifySpec {
    /// Host directories merged into `/tests`, in order: a later one's files win.
    pub tests: Vec<PathBuf>,
    pub timeout: Duration,
    /// `[verifier] env` as written (expanded from the host when the verifier runs).
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
}

impl VerifySpec {
    /// The task's own verifier: `tests/`, `[verifier]`, the trial's verifier timeout.
    pub(crate) fn of_task(plan: &TrialPlan) -> Self {
        let v = &plan.task.config.verifier;
        Self {
            tests: vec![plan.task.tests_dir()],
            timeout: plan.timeouts.verifier,
            env: v.env.clone(),
            user: v.user.clone(),
        }
    }
}

impl TrialRun<'_> {
    pub(crate) fn emit(&self, e: Event) {
        self.shared.emit(&e);
    }

    pub(crate) fn note(&self, message: String) {
        self.emit(Event::Note {
            trial: Some(self.plan.name.clone()),
            message,
        });
    }

    /// Run one phase: events, timing, cancellation, error recording.
    pub(crate) async fn phase<T>(
        &self,
        st: &mut State,
        phase: Phase,
        cancellable: bool,
        fut: impl Future<Output = Result<T, ErrorInfo>>,
    ) -> Option<T> {
        self.emit(Event::PhaseStarted {
            trial: self.plan.name.clone(),
            phase,
        });
        let started_at = Utc::now();
        let t0 = Instant::now();
        let cancel = self.shared.cancel.clone();
        let result = if cancellable {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(ErrorInfo::new(ErrorKind::Cancelled, format!("cancelled during {}", phase.as_str()))),
                r = fut => r,
            }
        } else {
            fut.await
        };
        let seconds = t0.elapsed().as_secs_f64();
        st.phases.insert(
            phase,
            PhaseTiming {
                started_at,
                finished_at: Utc::now(),
                seconds,
            },
        );
        self.emit(Event::PhaseFinished {
            trial: self.plan.name.clone(),
            phase,
            seconds,
            error: result.as_ref().err().map(|e| e.kind),
        });
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                st.fail(e);
                None
            }
        }
    }

    /// The trial's configuration (`config.json`).
    pub(crate) fn describe(&self) -> Arc<TrialConfig> {
        let plan = self.plan;
        let task = &plan.task;
        let job = &self.shared.job;
        let env_cfg = &task.config.environment;
        let cpus = job.config.environment.override_cpus.unwrap_or(env_cfg.cpus);
        let memory_mb = self.memory_mb();
        let storage_mb = job
            .config
            .environment
            .override_storage_mb
            .unwrap_or(env_cfg.storage_mb);
        let pids_limit = job.config.environment.pids_limit.unwrap_or(4096);
        Arc::new(TrialConfig {
            trial_name: plan.name.clone(),
            trial_id: plan.id.clone(),
            job_id: job.job_id.clone(),
            job_name: job.job_name.clone(),
            task_name: task.name.clone(),
            task_path: task.dir.display().to_string(),
            task_checksum: task.checksum.clone(),
            dataset: task.dataset.clone(),
            agent: plan.agent_spec.clone(),
            attempt: plan.attempt,
            timeouts_sec: TimeoutsSec {
                build: plan.timeouts.build.as_secs_f64(),
                agent_install: plan.timeouts.agent_install.as_secs_f64(),
                agent: plan.timeouts.agent.as_secs_f64(),
                verifier: plan.timeouts.verifier.as_secs_f64(),
            },
            environment: EnvironmentConfigOut {
                kind: self.shared.provider.name().into(),
                docker_image: env_cfg.docker_image.clone(),
                cpus,
                memory_mb,
                storage_mb,
                pids_limit,
                network_mode: env_cfg.network_mode,
                workdir: env_cfg.workdir.clone(),
            },
        })
    }

    /// The spec of the trial's environment, with `extra_labels` on the container.
    pub(crate) fn env_spec(&self, extra_labels: &BTreeMap<String, String>) -> EnvSpec {
        let plan = self.plan;
        let job = &self.shared.job;
        let config = self.describe();
        let env = &config.environment;
        let env_cfg = &plan.task.config.environment;
        let mut labels = BTreeMap::from([
            (labels::JOB.to_string(), job.job_id.clone()),
            (labels::TRIAL.to_string(), plan.id.clone()),
            (labels::MANAGED.to_string(), "true".to_string()),
            (labels::PID.to_string(), std::process::id().to_string()),
            (labels::HOST.to_string(), self.shared.host.clone()),
        ]);
        for (k, v) in extra_labels {
            labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
        EnvSpec {
            name: plan.name.clone(),
            labels,
            cpus: env.cpus,
            memory_mb: env.memory_mb,
            storage_mb: env.storage_mb,
            pids_limit: env.pids_limit,
            network: env_cfg.network_mode,
            allowed_hosts: env_cfg.allowed_hosts.clone(),
            env: self.task_env(),
            workdir: env_cfg.workdir.clone(),
            mounts: Vec::new(),
            gpus: env_cfg.gpus,
        }
    }

    /// The trial's result from its final state.
    pub(crate) fn result(
        &self,
        st: State,
        started_at: chrono::DateTime<Utc>,
        t0: Instant,
    ) -> TrialResult {
        let plan = self.plan;
        let task = &plan.task;
        let job = &self.shared.job;
        let reward = st.rewards.as_ref().and_then(main_reward);
        TrialResult {
            schema_version: RESULT_SCHEMA_VERSION.into(),
            id: plan.id.clone(),
            trial_name: plan.name.clone(),
            trial_uri: file_uri(&self.dir),
            job_id: job.job_id.clone(),
            job_name: job.job_name.clone(),
            task_name: task.name.clone(),
            task_path: task.dir.display().to_string(),
            task_checksum: task.checksum.clone(),
            dataset: task.dataset.clone(),
            agent: plan.agent.info(),
            attempt: plan.attempt,
            rewards: st.rewards,
            reward,
            error: st.error,
            environment: st.env_info,
            agent_install: st.agent_install,
            agent_run: st.agent_run,
            verifier: st.verifier,
            started_at,
            finished_at: Utc::now(),
            seconds: t0.elapsed().as_secs_f64(),
            phases: st.phases,
            previous_tries: Vec::new(),
            step_results: st.step_results,
        }
    }

    pub async fn run(self) -> TrialResult {
        let plan = self.plan;
        let task = &plan.task;
        let started_at = Utc::now();
        let t0 = Instant::now();
        let job = &self.shared.job;
        let memory_mb = self.memory_mb();
        let config = self.describe();
        let mut st = State {
            env_info: EnvironmentInfo {
                kind: self.shared.provider.name().into(),
                ..Default::default()
            },
            ..Default::default()
        };
        if let Err(e) = ["agent", "verifier", "artifacts"]
            .iter()
            .try_for_each(|d| create_private_dir(&self.dir.join(d)))
        {
            st.fail(ErrorInfo::new(
                ErrorKind::InternalError,
                format!("creating {}: {e}", self.dir.display()),
            ));
        }
        self.emit(Event::TrialStarted {
            config: config.clone(),
            trial_dir: self.dir.clone(),
        });
        if let Some(refusal) = self.task_refusal().await {
            st.fail(refusal);
        } else if let Err(why) = plan.agent.check(task) {
            st.fail(ErrorInfo::new(ErrorKind::AgentConfigInvalid, why));
        }

        let mut env_slot: Option<Box<dyn Environment>> = None;
        if st.error.is_none() {
            let spec = self.env_spec(&BTreeMap::new());
            let mut env_info = std::mem::take(&mut st.env_info);
            self.phase(
                &mut st,
                Phase::EnvironmentSetup,
                true,
                self.setup(spec, &mut env_slot, &mut env_info),
            )
            .await;
            st.env_info = env_info;
        }

        if let Some(env) = env_slot.as_deref() {
            let agent_logs = self.dir.join("agent");
            let ctx = AgentContext {
                task,
                env,
                logs_dir: &agent_logs,
                user: task.config.agent.user.clone(),
                install_timeout: plan.timeouts.agent_install,
                run_timeout: plan.timeouts.agent,
                env_vars: vec![(
                    "ROLLOUT_TASK_INSTRUCTION".into(),
                    instruction_path(&self.shared.job.config).into(),
                )],
                output_cap: self.shared.options.output_cap,
            };
            let mark = if st.error.is_none() {
                crate::sandbox::mark(env).await
            } else {
                crate::sandbox::Mark::default()
            };
            let copied = std::sync::Mutex::new(Copied::default());
            let ended = std::sync::Mutex::new(None);
            if st.error.is_none() {
                let installed = self
                    .phase(&mut st, Phase::AgentInstall, true, async {
                        backstop(
                            plan.timeouts.agent_install,
                            ErrorKind::AgentInstallTimeout,
                            "the agent's install step",
                            async { plan.agent.install(&ctx).await.map_err(agent_error) },
                        )
                        .await
                    })
                    .await;
                if let Some(Some(outcome)) = installed {
                    if outcome.timed_out {
                        st.fail(ErrorInfo::new(
                            ErrorKind::AgentInstallTimeout,
                            format!(
                                "the agent's install step ran past its {:.0} s timeout",
                                plan.timeouts.agent_install.as_secs_f64()
                            ),
                        ));
                    } else if outcome.output_limit_exceeded {
                        st.fail(ErrorInfo::new(
                            ErrorKind::AgentInstallFailed,
                            format!("the agent's install step wrote more than {} MiB of output and was killed", rollout_env::exec::DEFAULT_MAX_OUTPUT >> 20),
                        ));
                    } else if outcome.exit_code != Some(0) && self.oom_since(env, &mark).await {
                        st.fail(out_of_memory(
                            ErrorKind::AgentOutOfMemory,
                            "the agent's install step",
                            memory_mb,
                            "",
                        ));
                    } else if outcome.exit_code != Some(0) {
                        st.fail(ErrorInfo::new(
                            ErrorKind::AgentInstallFailed,
                            format!("the agent's install step exited with {}; see agent/setup/stderr.txt", code(&outcome)),
                        ));
                    }
                    st.agent_install = Some(outcome);
                }
            }
            // A multi-step task runs its steps (each an agent run, a verification and a
            // collection) in this one environment.
            let multi_step = task.is_multi_step();
            if multi_step && st.error.is_none() {
                let guard = crate::steps::Guard {
                    mark: &mark,
                    copied: &copied,
                };
                self.run_steps(env, &ctx, &mut st, &guard).await;
            }
            let agent_ran =
                !multi_step && st.error.is_none() && self.agent_phase(&mut st, &ctx).await;
            // The agent may have done the work even if it failed or timed out: verify anyway.
            if agent_ran && !st.cancelled() && !job.config.verifier.disable {
                if let Some((outcome, rewards)) = self
                    .phase(
                        &mut st,
                        Phase::Verify,
                        true,
                        self.verify(env, &VerifySpec::of_task(plan), &mark, &ended, &copied),
                    )
                    .await
                {
                    st.verifier = Some(outcome);
                    st.rewards = Some(rewards);
                }
                let ended = *ended.lock().expect("not poisoned");
                if let Some(ended) = ended {
                    self.agent_ended(&mut st, &ended, memory_mb);
                }
            }
            if !st.cancelled() && !multi_step {
                self.phase(&mut st, Phase::Collect, true, self.collect(env, &copied))
                    .await;
            }
            if !st.cancelled() && !multi_step && !task.config.artifacts.is_empty() {
                self.collect_artifacts(env).await;
            }
            let copied = std::mem::take(&mut *copied.lock().expect("not poisoned"));
            st.env_info.truncated = copied.truncated;
            st.env_info.skipped_entries = copied.skipped;
            let keep = match job.config.environment.preserve() {
                PreserveEnv::Always => true,
                PreserveEnv::OnFailure => {
                    st.error.is_some()
                        || st
                            .rewards
                            .as_ref()
                            .and_then(main_reward)
                            .is_none_or(|r| r < 1.0)
                }
                PreserveEnv::Never => false,
            };
            st.env_info.container_id = Some(env.id().to_string());
            if keep {
                st.env_info.preserved = true;
                self.note(format!(
                    "kept container {id} (preserve_env): enter it with `docker exec -it {id} bash`; `rollout gc` removes it",
                    id = env.id()
                ));
            } else {
                self.phase(&mut st, Phase::Teardown, false, async {
                    match tokio::time::timeout(TEARDOWN_TIMEOUT, env.destroy()).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(ErrorInfo::new(
                            ErrorKind::EnvironmentTeardownFailed,
                            e.to_string(),
                        )),
                        Err(_) => Err(ErrorInfo::new(
                            ErrorKind::EnvironmentTeardownFailed,
                            "removing the container took over 60 s",
                        )),
                    }
                })
                .await;
            }
        }

        self.result(st, started_at, t0)
    }

    /// Run the agent on `ctx` (its instruction, timeout and user); whether it ran far enough
    /// for its work to be verified.
    pub(crate) async fn agent_phase(&self, st: &mut State, ctx: &AgentContext<'_>) -> bool {
        let mut agent_ran = false;
        // What a failing agent did before its provider failed (its model usage) is kept.
        let mut partial: Option<CommandOutcome> = None;
        let ran = self
            .phase(st, Phase::AgentRun, true, async {
                backstop(
                    ctx.run_timeout,
                    ErrorKind::AgentExecutionTimeout,
                    "the agent",
                    async {
                        self.plan.agent.run(ctx).await.map_err(|e| {
                            if let rollout_agents::AgentError::Provider {
                                outcome: Some(o), ..
                            } = &e
                            {
                                partial = Some((**o).clone());
                            }
                            agent_error(e)
                        })
                    },
                )
                .await
            })
            .await;
        if ran.is_none() && st.agent_run.is_none() {
            st.agent_run = partial;
        }
        // A provider failure ends the agent, not the environment: what the agent did
        // before it is still verified. So does the runner's deadline: the agent's processes
        // are ended before the verifier runs, as after the agent's own timeout.
        if ran.is_none()
            && st.error.as_ref().is_some_and(|e| {
                e.kind.class() == rollout_core::ErrorClass::Provider
                    || e.kind == ErrorKind::AgentExecutionTimeout
            })
        {
            agent_ran = true;
        }
        if let Some(outcome) = ran {
            agent_ran = true;
            if outcome.timed_out {
                st.fail(ErrorInfo::new(
                    ErrorKind::AgentExecutionTimeout,
                    format!("the agent ran past its {:.0} s timeout and was killed; the verifier still ran", ctx.run_timeout.as_secs_f64()),
                ));
            } else if outcome.output_limit_exceeded {
                st.fail(ErrorInfo::new(
                    ErrorKind::AgentExecutionFailed,
                    format!("the agent wrote more than {} MiB of output and was killed; the verifier still ran", rollout_env::exec::DEFAULT_MAX_OUTPUT >> 20),
                ));
            } else if outcome.exit_code != Some(0) {
                st.fail(ErrorInfo::new(
                    ErrorKind::AgentExecutionFailed,
                    format!(
                        "the agent exited with {}; see agent/command-0/stderr.txt",
                        code(&outcome)
                    ),
                ));
            }
            st.agent_run = Some(outcome);
        }
        agent_ran
    }

    /// Why this trial's task cannot run at all, before any environment starts: its files are
    /// invalid, it sets keys rollout cannot honour, or it asks for what the provider cannot
    /// enforce ([`rollout_core::capabilities::check_enforceable`]).
    pub(crate) async fn task_refusal(&self) -> Option<ErrorInfo> {
        let task = &self.plan.task;
        if let Some(why) = &task.invalid {
            return Some(ErrorInfo::new(ErrorKind::TaskInvalid, why.clone()));
        }
        let unsupported = task.unsupported();
        if !unsupported.is_empty() {
            return Some(ErrorInfo::new(
                ErrorKind::EnvironmentUnsupported,
                format!("refused before starting: {}", unsupported.join("; ")),
            ));
        }
        // The one check of what the provider enforces, identical for every entry point.
        let caps = self.shared.provider.capabilities();
        if let Err(refusal) = rollout_core::capabilities::check_enforceable(task, &caps) {
            return Some(ErrorInfo::new(
                ErrorKind::EnvironmentUnsupported,
                format!("refused before starting: {refusal}"),
            ));
        }
        None
    }

    /// The task's `[environment] env`, expanded from the host.
    fn task_env(&self) -> BTreeMap<String, String> {
        let (env, missing) =
            rollout_core::envvars::expand_map(&self.plan.task.config.environment.env);
        if !missing.is_empty() {
            self.note(format!(
                "[environment] env refers to unset host variable(s) {}: they are empty",
                missing.join(", ")
            ));
        }
        let mut env = env;
        if self.shared.options.ca_bundle.is_some() {
            for var in CA_BUNDLE_VARS {
                env.entry(var.to_string())
                    .or_insert_with(|| CA_BUNDLE_PATH.to_string());
            }
        }
        env
    }

    /// The archive for the copy path: log directories, the instruction, the agent's files.
    fn setup_archive(&self) -> std::io::Result<Vec<u8>> {
        let task = &self.plan.task;
        let mut tar = TarBuilder::new();
        tar.dir("/logs", 0o755)?
            .dir("/logs/agent", 0o777)?
            .dir("/logs/verifier", 0o777)?
            .dir("/logs/artifacts", 0o777)?
            .dir("/rollout", 0o755)?
            .file(INSTRUCTION_PATH, 0o644, task.instruction.as_bytes())?;
        let seed_path = instruction_path(&self.shared.job.config);
        if seed_path != INSTRUCTION_PATH {
            tar.file(seed_path, 0o644, task.instruction.as_bytes())?;
        }
        if let Some(bundle) = &self.shared.options.ca_bundle {
            tar.file(CA_BUNDLE_PATH, 0o644, bundle)?;
        }
        for files in self.plan.agent.files(task) {
            match files.source.file_name().filter(|_| files.source.is_file()) {
                Some(name) => {
                    let bytes = std::fs::read(&files.source)?;
                    tar.dir(&files.target, 0o755)?.file(
                        &format!("{}/{}", files.target, name.to_string_lossy()),
                        0o644,
                        &bytes,
                    )?;
                }
                None => {
                    tar.host_dir(&files.target, &files.source)?;
                }
            }
            for alias in &files.aliases {
                tar.symlink(alias, &files.target)?;
            }
        }
        tar.finish()
    }

    pub(crate) async fn setup(
        &self,
        spec: EnvSpec,
        slot: &mut Option<Box<dyn Environment>>,
        info: &mut EnvironmentInfo,
    ) -> Result<(), ErrorInfo> {
        let task = &self.plan.task;
        // A compose file is read (and refused if need be) before anything is built.
        let compose = crate::compose::load(task, &spec, self.shared.provider.as_ref())?;
        let source = match &task.config.environment.docker_image {
            Some(reference) => ImageSource::Prebuilt {
                reference: reference.clone(),
            },
            None => ImageSource::Build {
                context: task.environment_dir(),
                timeout: self.plan.timeouts.build,
                force: self.shared.job.config.environment.force_build,
                pull: self.shared.job.config.environment.pull,
            },
        };
        let image_labels = BTreeMap::from([(labels::MANAGED.to_string(), "true".to_string())]);
        let image = match self
            .shared
            .provider
            .prepare_image(&source, &image_labels)
            .await
        {
            Ok(image) => image,
            Err(e) => {
                if let Some(log) = e.build_log() {
                    self.write_text(Path::new("environment/build.log"), log);
                }
                return Err(ErrorInfo::new(e.kind(), e.to_string()));
            }
        };
        if let Some(log) = &image.build_log {
            self.write_text(Path::new("environment/build.log"), log);
        }
        if let Some(reason) = &image.build_reason {
            self.note(format!(
                "built environment image {}: {reason}",
                image.reference
            ));
        }
        info.image = Some(image.reference.clone());
        info.image_id = Some(image.id.clone());
        info.built = image.fresh;
        info.base_images = image.bases.clone();
        let provider = &self.shared.provider;
        let env = match &compose {
            Some(project) => {
                let options = rollout_env::compose::ComposeOptions {
                    build_timeout: self.plan.timeouts.build,
                    force_build: self.shared.job.config.environment.force_build,
                    pull: self.shared.job.config.environment.pull,
                    start_timeout: self.plan.timeouts.build,
                };
                provider
                    .create_compose(&image, &spec, project, &options)
                    .await
            }
            None => provider.create(&image, &spec).await,
        }
        .map_err(|e| ErrorInfo::new(e.kind(), e.to_string()))?;
        let env = slot.insert(env);
        info.container_id = Some(env.id().to_string());
        // Files go in as one archive and logs come out through the archive API (capped, no
        // link followed): no host path is ever bound into the environment.
        let packed = self.setup_archive().map_err(|e| {
            ErrorInfo::new(
                ErrorKind::InternalError,
                format!("packing the environment's files: {e}"),
            )
        })?;
        bounded(env.upload_tar(packed), "copying files in").await?;
        if let Some(check) = &task.config.environment.healthcheck {
            rollout_env::health::wait_healthy(env.as_ref(), check)
                .await
                .map_err(|e| ErrorInfo::new(e.kind(), e.to_string()))?;
        }
        Ok(())
    }

    /// Copy `tests/` to `/tests` and run `test.sh`. When the verifier runs as root, the tests
    /// travel as a tar stream on the command's stdin (one engine call instead of two); an image
    /// without `tar`, or a non-root verifier, gets them through the archive API.
    async fn run_tests(
        &self,
        env: &dyn Environment,
        venv: BTreeMap<String, String>,
        spec: &VerifySpec,
    ) -> Result<rollout_env::ExecOutput, ErrorInfo> {
        let user = spec.user.clone();
        let as_root = user.as_deref().is_none_or(|u| u == "root" || u == "0");
        let tests: Vec<PathBuf> = spec.tests.iter().filter(|d| d.is_dir()).cloned().collect();
        let archive = |root: &'static str| {
            let tests = tests.clone();
            async move {
                tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                    let mut b = TarBuilder::new();
                    for dir in &tests {
                        b.host_dir(root, dir)?;
                    }
                    b.finish()
                })
                .await
                .map_err(|e| ErrorInfo::new(ErrorKind::InternalError, e.to_string()))?
                .map_err(|e| {
                    ErrorInfo::new(ErrorKind::VerifierFailed, format!("packing tests/: {e}"))
                })
            }
        };
        let request = |script: &str| {
            let mut req = ExecRequest::bash(script, spec.timeout)
                .user(user.clone())
                .env(venv.clone());
            req.output_cap = self.shared.options.output_cap;
            req
        };
        if as_root {
            let mut req = request(&format!(
                "command -v tar >/dev/null 2>&1 || {{ echo '{NO_TAR}' >&2; exit 127; }}; \
                 mkdir -p /tests && tar -xf - -C /tests && exec bash /tests/test.sh"
            ));
            req.stdin = Some(archive(".").await?);
            let out = env
                .exec(req)
                .await
                .map_err(|e| ErrorInfo::new(e.kind(), e.to_string()))?;
            if !String::from_utf8_lossy(&out.stderr.bytes).contains(NO_TAR) {
                return Ok(out);
            }
        }
        bounded(
            env.upload_tar(archive("/tests").await?),
            "copying tests/ in",
        )
        .await?;
        env.exec(request("bash /tests/test.sh"))
            .await
            .map_err(|e| ErrorInfo::new(e.kind(), e.to_string()))
    }

    pub(crate) async fn verify(
        &self,
        env: &dyn Environment,
        spec: &VerifySpec,
        mark: &crate::sandbox::Mark,
        ended_out: &std::sync::Mutex<Option<crate::sandbox::Ended>>,
        copied: &std::sync::Mutex<Copied>,
    ) -> Result<(CommandOutcome, BTreeMap<String, f64>), ErrorInfo> {
        // Nothing the agent started may run, or have written, when the verifier scores.
        let ended = crate::sandbox::end_agent(env, mark, spec.user.as_deref()).await?;
        *ended_out.lock().expect("not poisoned") = Some(ended);
        let (venv, missing) = rollout_core::envvars::expand_map(&spec.env);
        if !missing.is_empty() {
            self.note(format!(
                "[verifier] env refers to unset host variable(s) {}: they are empty",
                missing.join(", ")
            ));
        }
        let out = backstop(
            spec.timeout,
            ErrorKind::VerifierTimeout,
            "tests/test.sh",
            self.run_tests(env, venv, spec),
        )
        .await?;
        self.write_text(Path::new("verifier/test-stdout.txt"), &out.stdout.to_text());
        self.write_text(Path::new("verifier/test-stderr.txt"), &out.stderr.to_text());
        let outcome = rollout_agents::outcome_of(&out);
        if out.output_limit_exceeded {
            return Err(ErrorInfo::new(
                ErrorKind::VerifierFailed,
                format!(
                    "tests/test.sh wrote more than {} MiB of output and was killed",
                    rollout_env::exec::DEFAULT_MAX_OUTPUT >> 20
                ),
            ));
        }
        if out.timed_out {
            return Err(ErrorInfo::new(
                ErrorKind::VerifierTimeout,
                format!(
                    "tests/test.sh ran past its {:.0} s timeout",
                    spec.timeout.as_secs_f64()
                ),
            ));
        }
        let dest = self.dir.join("verifier");
        let download = bounded(
            env.download_dir("/logs/verifier", &dest, self.shared.options.download_cap),
            "copying /logs/verifier out",
        )
        .await?;
        copied
            .lock()
            .expect("not poisoned")
            .add("/logs/verifier", &download);
        let parsed = match crate::sandbox::read_reward_files(dest, &download).await {
            Ok((json, txt)) => rollout_core::reward::parse_rewards(json.as_deref(), txt.as_deref()),
            Err(e) => Err(e),
        };
        if parsed.is_err()
            && outcome.exit_code != Some(0)
            && ended.oom_total.is_some()
            && crate::sandbox::oom_kills(env).await > ended.oom_total
        {
            return Err(out_of_memory(
                ErrorKind::VerifierOutOfMemory,
                "tests/test.sh",
                self.memory_mb(),
                " and it wrote no usable reward",
            ));
        }
        let rewards = parsed.map_err(|mut e| {
            if e.kind == ErrorKind::VerifierRewardMissing {
                let stderr = out.stderr.to_text();
                let tail: Vec<&str> = stderr.trim().lines().rev().take(3).collect();
                e.message = format!(
                    "{} (test.sh exited with {}{})",
                    e.message,
                    code(&outcome),
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; stderr ends: {}",
                            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                        )
                    }
                );
            }
            e
        })?;
        Ok((outcome, rewards))
    }

    pub(crate) async fn collect(
        &self,
        env: &dyn Environment,
        copied: &std::sync::Mutex<Copied>,
    ) -> Result<(), ErrorInfo> {
        let cap = self.shared.options.download_cap;
        for (from, to) in [("/logs/agent", "agent"), ("/logs/artifacts", "artifacts")] {
            let info = bounded(
                env.download_dir(from, &self.dir.join(to), cap),
                "copying logs out",
            )
            .await?;
            copied.lock().expect("not poisoned").add(from, &info);
            if info.truncated {
                self.note(format!(
                    "{from} was larger than the {} MiB cap: only part of it was copied",
                    cap >> 20
                ));
            }
            if info.skipped > 0 {
                self.note(format!(
                    "{from}: {} links or special files were not copied",
                    info.skipped
                ));
            }
        }
        Ok(())
    }

    /// The memory limit of this trial's environment, in MiB.
    pub(crate) fn memory_mb(&self) -> u64 {
        self.shared
            .job
            .config
            .environment
            .override_memory_mb
            .unwrap_or(self.plan.task.config.environment.memory_mb)
    }

    /// The task's `artifacts` (Harbor's layout): each source lands under the trial's
    /// `artifacts/` at its `destination`, else at its container path without the leading `/`
    /// (`/app/out.txt` → `artifacts/app/out.txt`), within the trial's download cap overall. A
    /// missing artifact is a note, as in Harbor; `artifacts/manifest.json` lists what happened.
    async fn collect_artifacts(&self, env: &dyn Environment) {
        let base = self.dir.join("artifacts");
        let mut remaining = self.shared.options.download_cap;
        let mut manifest = Vec::new();
        for (i, a) in self.plan.task.config.artifacts.iter().enumerate() {
            let relative = a
                .destination
                .clone()
                .unwrap_or_else(|| a.source.trim_start_matches('/').to_string());
            let relative = relative.trim_end_matches('/');
            let target = base.join(relative);
            let status = if a.service.as_deref().is_some_and(|s| s != "main") {
                format!(
                    "not collected: service {:?} is not the agent's container",
                    a.service
                )
            } else if relative.is_empty() || relative == "manifest.json" {
                "not collected: it would overwrite the artifacts directory or its manifest".into()
            } else {
                match self.collect_artifact(env, i, a, &target, remaining).await {
                    Ok((status, bytes)) => {
                        remaining = remaining.saturating_sub(bytes);
                        status
                    }
                    Err(why) => format!("failed: {why}"),
                }
            };
            if status != "ok" {
                self.note(format!("artifact {}: {status}", a.source));
            }
            manifest.push(serde_json::json!({
                "source": a.source,
                "destination": relative,
                "status": status,
            }));
        }
        let text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
        if let Err(e) = std::fs::create_dir_all(&base)
            .and_then(|_| std::fs::write(base.join("manifest.json"), text))
        {
            self.note(format!("writing artifacts/manifest.json: {e}"));
        }
    }

    /// Copy one artifact: a directory straight out (through an in-container staging copy when
    /// it has `exclude` patterns), a file through a staging directory holding only it.
    pub(crate) async fn collect_artifact(
        &self,
        env: &dyn Environment,
        index: usize,
        a: &rollout_core::task_config::ArtifactSpec,
        target: &Path,
        cap: u64,
    ) -> Result<(String, u64), String> {
        use rollout_core::task_config::shell_quote;
        let src = shell_quote(&a.source);
        let stage = format!("/tmp/.rollout-artifact-{index}");
        let qstage = shell_quote(&stage);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "artifact".into());
        let excludes: String = a
            .exclude
            .iter()
            .map(|p| format!(" --exclude={}", shell_quote(p)))
            .collect();
        let script = format!(
            "if [ -d {src} ]; then \
               if [ -n {ex} ]; then rm -rf {qstage} && mkdir -p {qstage} && tar -C {src}{excludes} -cf - . | tar -C {qstage} -xf - && echo staged-dir; else echo dir; fi; \
             elif [ -e {src} ]; then rm -rf {qstage} && mkdir -p {qstage} && cp -p {src} {qstage}/{qname} && echo staged-file; \
             else echo missing; fi",
            ex = shell_quote(excludes.trim()),
            qname = shell_quote(&name),
        );
        let req = ExecRequest::sh(script, Duration::from_secs(120)).user(Some("0".into()));
        let out = env.exec(req).await.map_err(|e| e.to_string())?;
        let kind = out.stdout.to_text().trim().to_string();
        let (from, dest) = match kind.as_str() {
            "missing" => return Ok(("missing: not found in the environment".into(), 0)),
            "dir" => (a.source.clone(), target.to_path_buf()),
            "staged-dir" => (stage.clone(), target.to_path_buf()),
            "staged-file" => (
                stage.clone(),
                target.parent().unwrap_or(target).to_path_buf(),
            ),
            _ => {
                return Err(format!(
                    "could not stage it (exit {}): {}",
                    out.exit_code
                        .map_or_else(|| "none".into(), |c| c.to_string()),
                    out.stderr.to_text().trim()
                ))
            }
        };
        let info = bounded(
            env.download_dir(&from, &dest, cap),
            "copying an artifact out",
        )
        .await;
        if from == stage {
            let cleanup = ExecRequest::sh(format!("rm -rf {qstage}"), Duration::from_secs(60))
                .user(Some("0".into()));
            let _ = env.exec(cleanup).await;
        }
        let info = info.map_err(|e| e.message)?;
        if !info.found {
            return Ok(("missing: not found in the environment".into(), 0));
        }
        let status = if info.truncated {
            format!("truncated: over the {} MiB download cap", cap >> 20)
        } else {
            "ok".into()
        };
        Ok((status, info.bytes))
    }

    /// Whether the kernel's OOM killer ended a process of the environment since `mark`.
    async fn oom_since(&self, env: &dyn Environment, mark: &crate::sandbox::Mark) -> bool {
        match (mark.oom_kills, crate::sandbox::oom_kills(env).await) {
            (Some(before), Some(now)) => now > before,
            _ => false,
        }
    }

    /// Record what ending the agent found: an out-of-memory kill turns the agent's failure
    /// into `agent_out_of_memory`.
    pub(crate) fn agent_ended(
        &self,
        st: &mut State,
        ended: &crate::sandbox::Ended,
        memory_mb: u64,
    ) {
        if ended.hard_stopped {
            self.note("the agent's processes could not be killed from inside the environment: every process was stopped (its filesystem is kept)".into());
        } else if ended.killed > 0 {
            self.note(format!(
                "killed {} process(es) the agent left running before the verifier ran",
                ended.killed
            ));
        }
        if ended.oom_kills.unwrap_or(0) == 0 {
            return;
        }
        match &mut st.error {
            Some(e) if e.kind == ErrorKind::AgentExecutionFailed => {
                *e = out_of_memory(
                    ErrorKind::AgentOutOfMemory,
                    "the agent",
                    memory_mb,
                    "; the verifier still ran",
                );
            }
            _ => self.note(format!(
                "the memory limit ({memory_mb} MiB) was hit while the agent ran: the kernel killed {} process(es)",
                ended.oom_kills.unwrap_or(0)
            )),
        }
    }

    pub(crate) fn write_text(&self, rel: &Path, text: &str) {
        let path = self.dir.join(rel);
        let res = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(&path, text));
        if let Err(e) = res {
            self.note(format!("could not write {}: {e}", path.display()));
        }
    }
}

/// Marker printed when the image has no `tar` (the tests then go in through the archive API).
const NO_TAR: &str = "rollout: no tar in this image";

/// What the copies out of the environment left behind, for the trial's result.
#[derive(Debug, Default)]
pub(crate) struct Copied {
    /// Directories cut at the cap.
    truncated: Vec<String>,
    /// Links and special files not copied.
    skipped: u64,
}

impl Copied {
    fn add(&mut self, from: &str, info: &rollout_env::DownloadInfo) {
        if info.truncated {
            self.truncated.push(from.to_string());
        }
        self.skipped += info.skipped;
    }
}

/// A directory of the trial that the environment's files are copied into: mode 0755 whatever
/// the umask, never group- or world-writable.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
}

fn out_of_memory(kind: ErrorKind, who: &str, memory_mb: u64, tail: &str) -> ErrorInfo {
    ErrorInfo::new(
        kind,
        format!(
            "{who} ran out of memory: the kernel killed a process at the {memory_mb} MiB limit (raise [environment] memory_mb, or override_memory_mb for the job){tail}"
        ),
    )
}

/// How long past a command's own timeout the runner waits for it before giving up on it.
pub(crate) const DEADLINE_GRACE: Duration = Duration::from_secs(60);

/// The runner's deadline over a phase whose command has its own `timeout` (enforced by the
/// agent or the provider): should that handling hang, the phase ends `kind` at `timeout` +
/// [`DEADLINE_GRACE`] all the same.
pub(crate) async fn backstop<T>(
    timeout: Duration,
    kind: ErrorKind,
    what: &str,
    fut: impl Future<Output = Result<T, ErrorInfo>>,
) -> Result<T, ErrorInfo> {
    let limit = timeout.saturating_add(DEADLINE_GRACE);
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(ErrorInfo::new(
            kind,
            format!(
                "{what} did not return within its {:.0} s timeout plus {} s of grace: the runner stopped waiting for it",
                timeout.as_secs_f64(),
                DEADLINE_GRACE.as_secs()
            ),
        )),
    }
}

pub(crate) async fn bounded<T>(
    fut: impl Future<Output = Result<T, rollout_env::EnvError>>,
    what: &str,
) -> Result<T, ErrorInfo> {
    match tokio::time::timeout(COPY_TIMEOUT, fut).await {
        Ok(r) => r.map_err(|e| ErrorInfo::new(e.kind(), e.to_string())),
        Err(_) => Err(ErrorInfo::new(
            ErrorKind::EnvironmentApiError,
            format!("{what} took over {} s", COPY_TIMEOUT.as_secs()),
        )),
    }
}

pub(crate) fn agent_error(e: rollout_agents::AgentError) -> ErrorInfo {
    match e {
        rollout_agents::AgentError::Env(e) => ErrorInfo::new(e.kind(), e.to_string()),
        rollout_agents::AgentError::Config(m) => ErrorInfo::new(ErrorKind::AgentConfigInvalid, m),
        rollout_agents::AgentError::Host(m) => ErrorInfo::new(ErrorKind::InternalError, m),
        rollout_agents::AgentError::Provider { kind, message, .. } => ErrorInfo::new(kind, message),
    }
}

pub(crate) fn code(o: &CommandOutcome) -> String {
    o.exit_code
        .map_or_else(|| "no exit code".into(), |c| c.to_string())
}

/// Where agents read the instruction: the job's `instruction_path` (the Rollout seed's key,
/// where the instruction is placed too) or [`INSTRUCTION_PATH`].
pub(crate) fn instruction_path(config: &rollout_core::JobConfig) -> &str {
    config
        .instruction_path
        .as_deref()
        .unwrap_or(INSTRUCTION_PATH)
}

/// `file://` URI of a directory, absolute (Harbor's `trial_uri`).
fn file_uri(dir: &std::path::Path) -> String {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    format!("file://{}", abs.display())
}
