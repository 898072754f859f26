//! The one way into the runner.
//!
//! Every entry point (`rollout run`, experiment runs, `rollout jobs resume`, both `rollout serve`
//! APIs, `rollout preflight`, `rollout reproduce --run`) goes through the same steps, here:
//!
//! 1. the job configuration: a job file (or a submitted configuration) plus typed
//!    [`Overrides`] (what command-line flags set) → [`job_config`];
//! 2. the tasks: every source loaded and filtered with the same options → [`Launcher::load`];
//! 3. the checks: what the chosen provider can enforce → [`check_enforceable`];
//! 4. the plan: a new job, or the rest of an existing one under the resume rules
//!    → [`Launcher::plan`] ([`resume`]);
//! 5. the provider, picked in one place → [`provider::connect`];
//! 6. the run, with the results writer, the provenance recorder and the caller's sinks
//!    (progress bar, server database, experiment layout) → [`Launcher::execute`].
//!
//! `rollout preflight` stops after step 4 (plan only); the others go on to the run.

pub mod ca;
pub mod experiment;
pub mod metrics;
pub mod preflight;
pub mod provider;
pub mod resume;
pub mod signals;

use rollout_core::job_config::{AgentSpec, DatasetSpec, EnvironmentType, PullPolicy, RegistrySpec};
use rollout_core::result::JobResult;
use rollout_core::{JobConfig, Task};
use rollout_env::Provider;
use rollout_runner::events::EventSink;
use rollout_runner::provenance::TrialRecorder;
use rollout_runner::writer::ResultsWriter;
use rollout_runner::{JobPlan, RunOptions, Runner};
use rollout_sources::archive::Limits;
use rollout_sources::executor::ExecutorOptions;
use rollout_sources::git::GitCache;
use rollout_sources::job::{load_job_tasks, SourceOptions};
use rollout_sources::policy::RemotePolicy;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Exit statuses of the commands (documented in README).
pub mod exit {
    pub const OK: u8 = 0;
    pub const TRIAL_ERRORS: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const CANCELLED: u8 = 130;
}

/// Why a job cannot be launched. Each entry point maps these to its own surface (an exit
/// status, an HTTP error code, a failed preflight check), but they are the same refusals.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The request or the job configuration is invalid (flags, job file, resume rules).
    #[error("{0}")]
    Invalid(String),
    /// Several problems, one message each (an experiment file's, an experiment's rows).
    #[error("{}", .0.join("\n"))]
    Problems(Vec<String>),
    /// Task sources failed to load, one message per problem.
    #[error("{}", .errors.join("; "))]
    Sources {
        errors: Vec<String>,
        /// A source the submitter policy refuses (`rollout serve`).
        refused: bool,
    },
    /// A task asks for something the chosen provider cannot enforce.
    #[error("{0}")]
    Unenforceable(String),
    /// The job cannot be planned (agents, no tasks, an existing job directory).
    #[error("{0}")]
    Plan(String),
    /// The environment provider is unavailable (engine or cluster unreachable).
    #[error("{0}")]
    Provider(String),
    /// Writing the job's files failed.
    #[error("{0}")]
    Io(String),
}

impl LaunchError {
    /// One line per problem, for printing as `error: LINE`.
    pub fn lines(&self) -> Vec<String> {
        match self {
            LaunchError::Problems(v) | LaunchError::Sources { errors: v, .. } => v.clone(),
            e => vec![e.to_string()],
        }
    }

    /// Whether the problem is in the request (usage) rather than in the machine running it.
    pub fn is_usage(&self) -> bool {
        !matches!(self, LaunchError::Provider(_) | LaunchError::Io(_))
    }
}

/// The job-configuration fields a request may set over its job file: what `rollout run`'s flags
/// map to (typed, not argv). `None`/empty leaves the job file's value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Task or dataset directories (appended as datasets).
    pub paths: Vec<PathBuf>,
    /// Registry datasets `NAME[@VERSION]` (need `registry`).
    pub datasets: Vec<String>,
    /// The registry of `datasets`: a path or an http(s) URL.
    pub registry: Option<String>,
    /// Executor archives.
    pub archives: Vec<PathBuf>,
    pub executor_image: Option<String>,
    pub shuffle: bool,
    pub seed: Option<u64>,
    /// Agent names: a name the job file defines keeps its definition; others are built-ins.
    pub agents: Vec<String>,
    pub agent_version: Option<String>,
    /// Agent options for every agent (`--ak KEY=VALUE`).
    pub agent_kwargs: Vec<(String, serde_json::Value)>,
    /// Environment variables for every agent (`--ae KEY=VALUE`, literal strings).
    pub agent_env: Vec<(String, String)>,
    /// Models (`-m`, repeatable): every agent runs once per model (agents × models).
    pub models: Vec<String>,
    pub n_concurrent: Option<usize>,
    pub n_attempts: Option<u32>,
    pub jobs_dir: Option<PathBuf>,
    pub job_name: Option<String>,
    /// Task-name globs applied to every dataset.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub n_tasks: Option<usize>,
    pub env: Option<EnvironmentType>,
    pub force_build: bool,
    pub pull: bool,
    /// `--max-errors`: stop starting trials after this many infrastructure or provider errors.
    pub max_errors: Option<u32>,
    pub max_retries: Option<u32>,
    pub timeout_multiplier: Option<f64>,
}

/// Parse an agent option `KEY=VALUE` (a JSON value, else a string).
pub fn parse_agent_kwarg(kv: &str) -> Result<(String, serde_json::Value), String> {
    let (k, v) = kv
        .split_once('=')
        .ok_or_else(|| format!("--ak {kv:?}: expected KEY=VALUE"))?;
    let value =
        serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
    Ok((k.to_string(), value))
}

/// Parse an agent environment variable `KEY=VALUE` (the value is kept as a string).
pub fn parse_agent_env(kv: &str) -> Result<(String, String), String> {
    let (k, v) = kv
        .split_once('=')
        .ok_or_else(|| format!("--ae {kv:?}: expected KEY=VALUE"))?;
    let k = k.trim();
    if k.is_empty() || k.contains(char::is_whitespace) {
        return Err(format!("--ae {kv:?}: {k:?} is not a variable name"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Whether `name` is a plain directory name (a job or run name).
pub fn plain_name(name: &str) -> bool {
    !(name.is_empty() || name.contains('/') || name == "." || name == "..")
}

/// The job configuration of a request: the job file (if any) with the overrides on top,
/// validated as every entry point validates it.
pub fn job_config(file: Option<&Path>, o: &Overrides) -> Result<JobConfig, LaunchError> {
    job_config_inner(file, o).map_err(LaunchError::Invalid)
}

fn job_config_inner(file: Option<&Path>, o: &Overrides) -> Result<JobConfig, String> {
    let mut config = match file {
        Some(path) => JobConfig::load(path).map_err(|e| e.to_string())?,
        None => JobConfig::default(),
    };
    for p in &o.paths {
        config.datasets.push(DatasetSpec {
            path: Some(p.clone()),
            ..Default::default()
        });
    }
    if !o.agents.is_empty() {
        let defined = std::mem::take(&mut config.agents);
        config.agents = o
            .agents
            .iter()
            .map(|name| {
                defined
                    .iter()
                    .find(|a| &a.name == name)
                    .cloned()
                    .unwrap_or_else(|| AgentSpec {
                        name: name.clone(),
                        ..Default::default()
                    })
            })
            .collect();
    }
    // Harbor's sweep: each agent once per model, in agent-then-model order.
    if !o.models.is_empty() {
        let mut models = o.models.clone();
        let mut seen = std::collections::HashSet::new();
        models.retain(|m| seen.insert(m.clone()));
        if config.agents.is_empty() {
            config.agents = config.effective_agents();
        }
        config.agents = std::mem::take(&mut config.agents)
            .into_iter()
            .flat_map(|a| {
                models.iter().map(move |m| AgentSpec {
                    model_name: Some(m.clone()),
                    ..a.clone()
                })
            })
            .collect();
    }
    if o.agent_version.is_some() || !o.agent_kwargs.is_empty() || !o.agent_env.is_empty() {
        if config.agents.is_empty() {
            config.agents = config.effective_agents();
        }
        for a in &mut config.agents {
            if let Some(v) = &o.agent_version {
                a.version = Some(v.clone());
            }
            for (k, v) in &o.agent_kwargs {
                a.kwargs.insert(k.clone(), v.clone());
            }
            for (k, v) in &o.agent_env {
                a.env.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(n) = o.n_concurrent {
        if n == 0 {
            return Err("-n/--n-concurrent must be at least 1".into());
        }
        config.n_concurrent_trials = Some(n);
    }
    if let Some(k) = o.n_attempts {
        if k == 0 {
            return Err("-k/--n-attempts must be at least 1".into());
        }
        config.n_attempts = Some(k);
    }
    if let Some(d) = &o.jobs_dir {
        config.jobs_dir = Some(d.clone());
    }
    if let Some(n) = &o.job_name {
        if !plain_name(n) {
            return Err(format!("--job-name {n:?} must be a plain directory name"));
        }
        config.name = Some(n.clone());
    }
    if let Some(m) = o.timeout_multiplier {
        if !(m.is_finite() && m > 0.0) {
            return Err("--timeout-multiplier must be a positive number".into());
        }
        config.timeout_multiplier = Some(m);
    }
    if o.force_build {
        config.environment.force_build = true;
    }
    if o.pull {
        config.environment.pull = PullPolicy::Always;
    }
    for spec in &o.datasets {
        let Some(registry) = &o.registry else {
            return Err(format!(
                "-d {spec}: give the registry with --registry PATH|URL"
            ));
        };
        let (name, version) = rollout_sources::registry::parse_dataset_ref(spec);
        let is_url = registry.starts_with("http://") || registry.starts_with("https://");
        config.datasets.push(DatasetSpec {
            registry: Some(RegistrySpec {
                path: (!is_url).then(|| PathBuf::from(registry)),
                url: is_url.then(|| registry.clone()),
            }),
            name: Some(name),
            version,
            ..Default::default()
        });
    }
    config.archives.extend(o.archives.iter().cloned());
    if o.executor_image.is_some() {
        config.executor_image = o.executor_image.clone();
    }
    // Task filters apply to every dataset (Harbor's semantics: -l is per dataset).
    for d in &mut config.datasets {
        if !o.include.is_empty() {
            d.task_names = o.include.clone();
        }
        if !o.exclude.is_empty() {
            d.exclude_task_names = o.exclude.clone();
        }
        if o.n_tasks.is_some() {
            d.n_tasks = o.n_tasks;
        }
    }
    if o.shuffle || o.seed.is_some() {
        config.shuffle_seed = Some(o.seed.unwrap_or(0));
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
    // Absolute task paths, so that the job can be resumed from any directory.
    for d in &mut config.datasets {
        if let Some(p) = &mut d.path {
            if let Ok(abs) = p.canonicalize() {
                *p = abs;
            }
        }
    }
    for t in &mut config.tasks {
        if let Ok(abs) = t.path.canonicalize() {
            t.path = abs;
        }
    }
    for a in &mut config.archives {
        if let Ok(abs) = a.canonicalize() {
            *a = abs;
        }
    }
    if let Some(env) = o.env {
        config.environment.kind = env;
    }
    let origin = file.unwrap_or(Path::new("command line"));
    // The same checks as a job file's and a submitted job's (rollout serve).
    config.validate(origin).map_err(|e| e.to_string())?;
    config.validate_sources(origin).map_err(|e| {
        if file.is_none() {
            "no tasks to run: give -p TASK_OR_DATASET_DIR (or a job file)".to_string()
        } else {
            e.to_string()
        }
    })?;
    Ok(config)
}

/// The tasks of a job, and what the loader noticed about them.
#[derive(Debug, Default)]
pub struct Loaded {
    pub tasks: Vec<Task>,
    /// Warnings to show the user (task.toml warnings, invalid tasks whose trials will fail).
    pub warnings: Vec<String>,
}

/// How a job is planned.
#[derive(Debug, Clone)]
pub enum PlanMode {
    /// A new job; an existing job directory of the same name is resumed (`rollout run
    /// --job-name`) under the resume rules.
    NewOrResume { retry_errors: bool },
    /// Always a new job (an experiment run's own directory).
    New,
    /// The rest of the job in this directory, under the resume rules (`rollout jobs resume`).
    Resume { dir: PathBuf, retry_errors: bool },
    /// A server run: the job id is the run id; its directory is resumed when it exists (the
    /// server itself owns the run, so the "still running" rule does not apply).
    ServerRun { id: String },
}

/// Everything about a launch that is not the job itself: where trusted material and limits
/// come from, and what records the run.
#[derive(Clone, Default)]
pub struct Launcher {
    /// The CA bundle environments trust (archive tasks' build steps trust it too).
    pub ca_bundle: Option<Vec<u8>>,
    /// What an untrusted submitter may make rollout fetch (`rollout serve`); None: anything.
    pub policy: Option<Arc<RemotePolicy>>,
    /// Archive extraction limits (None: the defaults).
    pub archive_limits: Option<Limits>,
    /// Where archives are unpacked (None: the shared cache).
    pub unpack_dir: Option<PathBuf>,
    /// The provenance store trials are recorded in; None records nothing.
    pub store: Option<PathBuf>,
    /// The command recorded with each trial.
    pub argv: Vec<String>,
    /// Run the job's `uv-script` metrics on this host after the run. Off for `rollout serve`:
    /// a server never runs a submitted program on its host.
    pub script_metrics: bool,
    /// Timeout of each git process (None: the git cache's default).
    pub git_timeout: Option<std::time::Duration>,
    /// Agent and test timeouts of executor-archive tasks, seconds (None: 600 and 300).
    pub executor_agent_timeout: Option<f64>,
    pub executor_test_timeout: Option<f64>,
    /// Output kept per command (None: 1 MiB).
    pub output_cap: Option<usize>,
}

/// What a finished run produced besides its result.
pub struct Execution {
    pub result: JobResult,
    /// The results writer failed (the job directory is incomplete).
    pub writer_error: Option<String>,
    /// Provenance recording problems (recording never fails a run).
    pub provenance_warnings: Vec<String>,
    /// A script metric failed.
    pub metrics_error: Option<String>,
}

impl Launcher {
    /// Load every task of the job from its sources; archive agents become the default agent.
    pub fn load(&self, config: &mut JobConfig) -> Result<Loaded, LaunchError> {
        let mut executor = ExecutorOptions {
            base_image: config.executor_image.clone(),
            ca_bundle: self.ca_bundle.clone(),
            unpack_dir: self.unpack_dir.clone(),
            agent_timeout_sec: self.executor_agent_timeout,
            test_timeout_sec: self.executor_test_timeout,
            ..Default::default()
        };
        if let Some(l) = &self.archive_limits {
            executor.limits = l.clone();
            executor.parallel_clones = 4;
        }
        let mut git = GitCache::new(GitCache::default_root());
        if let Some(p) = &self.policy {
            git = git.with_policy(p.clone());
        }
        if let Some(t) = self.git_timeout {
            git = git.with_timeout(t);
        }
        let opts = SourceOptions {
            git,
            parallel_clones: 4,
            archives: config.archives.clone(),
            executor,
            policy: self.policy.clone(),
        };
        let loaded = load_job_tasks(config, &opts).map_err(|errors| LaunchError::Sources {
            refused: errors
                .iter()
                .any(|e| e.contains(rollout_sources::policy::REFUSED)),
            errors,
        })?;
        if config.agents.is_empty() && !loaded.archive_agents.is_empty() {
            config.agents = loaded
                .archive_agents
                .iter()
                .map(|p| AgentSpec {
                    name: format!("code:{}", p.display()),
                    ..Default::default()
                })
                .collect();
        }
        let mut warnings = Vec::new();
        for t in &loaded.tasks {
            for w in &t.config.warnings {
                warnings.push(format!(
                    "task {}: {}: {w}",
                    t.name,
                    t.dir.join("task.toml").display()
                ));
            }
            if let Some(why) = &t.invalid {
                warnings.push(format!(
                    "task {} is invalid, its trials end task_invalid: {why}",
                    t.name
                ));
            }
        }
        Ok(Loaded {
            tasks: loaded.tasks,
            warnings,
        })
    }

    /// Plan the job's trials.
    pub fn plan(
        &self,
        config: JobConfig,
        tasks: Vec<Task>,
        mode: PlanMode,
    ) -> Result<JobPlan, LaunchError> {
        match mode {
            PlanMode::New => {
                JobPlan::new(config, tasks).map_err(|e| LaunchError::Plan(e.to_string()))
            }
            PlanMode::NewOrResume { retry_errors } => {
                // An existing job of the same name is resumed, if its configuration is the same.
                let existing = config
                    .name
                    .as_ref()
                    .map(|n| {
                        config
                            .jobs_dir
                            .clone()
                            .unwrap_or_else(|| "jobs".into())
                            .join(n)
                    })
                    .filter(|d| d.join("config.json").is_file());
                match existing {
                    Some(dir) => resume::plan(&dir, config, tasks, retry_errors),
                    None => {
                        JobPlan::new(config, tasks).map_err(|e| LaunchError::Plan(e.to_string()))
                    }
                }
            }
            PlanMode::Resume { dir, retry_errors } => {
                resume::plan(&dir, config, tasks, retry_errors)
            }
            PlanMode::ServerRun { id } => {
                let job_dir = config
                    .jobs_dir
                    .clone()
                    .unwrap_or_else(|| "jobs".into())
                    .join(&id);
                let plan = if job_dir.join("config.json").is_file() {
                    JobPlan::resume(config, tasks, id, job_dir, false)
                } else {
                    JobPlan::new(config, tasks).map(|mut p| {
                        // Containers are labelled with the job id: the run id makes them findable.
                        p.job_id = id;
                        p
                    })
                };
                plan.map_err(|e| LaunchError::Plan(e.to_string()))
            }
        }
    }

    /// Steps 1–4 for a configuration: load, check, plan.
    pub fn prepare(
        &self,
        mut config: JobConfig,
        mode: PlanMode,
    ) -> Result<(JobPlan, Vec<String>), LaunchError> {
        let loaded = self.load(&mut config)?;
        check_enforceable(&config, &loaded.tasks)?;
        let plan = self.plan(config, loaded.tasks, mode)?;
        Ok((plan, loaded.warnings))
    }

    /// Run `plan` to the end on `provider`: the results writer, then `sinks` in order, then the
    /// provenance recorder get every event. A resumed job first removes what its predecessor
    /// left running (`notice` hears about it). `on_runner` sees the runner before it starts
    /// (pause handles).
    pub async fn execute(
        &self,
        plan: JobPlan,
        provider: Arc<dyn Provider>,
        cancel: CancellationToken,
        sinks: Vec<Arc<dyn EventSink>>,
        notice: &(dyn Fn(&str) + Send + Sync),
        on_runner: impl FnOnce(&Runner),
    ) -> Execution {
        if plan.job_dir.join("config.json").is_file() {
            match provider
                .remove_labelled(rollout_core::labels::JOB, &plan.job_id)
                .await
            {
                Ok(0) => {}
                Ok(n) => notice(&format!(
                    "removed {n} orphaned container(s) of job {}",
                    plan.job_name
                )),
                Err(e) => notice(&format!(
                    "warning: could not remove orphaned containers: {e}"
                )),
            }
        }
        let mut options = RunOptions {
            ca_bundle: self.ca_bundle.clone().map(Arc::new),
            ..Default::default()
        };
        if let Some(cap) = self.output_cap {
            options.output_cap = cap;
        }
        let mut runner = Runner::new(provider, cancel, options);
        on_runner(&runner);
        let writer = Arc::new(ResultsWriter::new());
        runner.subscribe(writer.clone());
        for sink in sinks {
            runner.subscribe(sink);
        }
        let recorder = self
            .store
            .clone()
            .map(|store| Arc::new(TrialRecorder::start(store, self.argv.clone())));
        if let Some(r) = &recorder {
            runner.subscribe(r.clone());
        }
        let job_dir = plan.job_dir.clone();
        let metric_specs = plan.config.metrics.clone();
        let mut result = runner.run(plan).await;
        let metrics_error = if self.script_metrics {
            add_script_metrics(&metric_specs, &mut result, &job_dir)
                .await
                .err()
        } else {
            None
        };
        let mut provenance_warnings = Vec::new();
        if let Some(r) = recorder {
            // The recorder joins its worker thread: off the async workers.
            if let Ok(report) = tokio::task::spawn_blocking(move || r.finish()).await {
                provenance_warnings = report.warnings;
            }
        }
        Execution {
            result,
            writer_error: writer.error(),
            provenance_warnings,
            metrics_error,
        }
    }
}

impl Launcher {
    /// Steps 1–6 for a job no one watches (no progress bar, no signals): `rollout reproduce
    /// --run` re-runs a trial this way, in-process. The run is cancelled after `timeout`.
    pub fn run_to_end(
        &self,
        config: JobConfig,
        mode: PlanMode,
        timeout: std::time::Duration,
    ) -> Result<Execution, LaunchError> {
        let (plan, warnings) = self.prepare(config, mode)?;
        for w in warnings {
            eprintln!("warning: {w}");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| LaunchError::Io(format!("cannot start the async runtime: {e}")))?;
        runtime.block_on(async {
            let provider = provider::connect(&plan.config).await?;
            let cancel = CancellationToken::new();
            let timer = {
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(timeout).await;
                    cancel.cancel();
                })
            };
            signals::watch(cancel.clone(), provider.clone(), plan.job_id.clone());
            let done = self
                .execute(
                    plan,
                    provider,
                    cancel,
                    Vec::new(),
                    &|m: &str| eprintln!("{m}"),
                    |_| {},
                )
                .await;
            timer.abort();
            Ok(done)
        })
    }
}

/// Refuse a job whose tasks ask for what the chosen provider cannot enforce, before anything
/// starts: the one place every entry point checks it.
pub fn check_enforceable(config: &JobConfig, tasks: &[Task]) -> Result<(), LaunchError> {
    // What a task asks of its environment (allowlists, GPUs, compose) is checked per trial by
    // the runner against the provider's capabilities (`rollout_core::capabilities`), so that
    // one task the provider cannot serve fails its own trials alike through every door.
    provider::check(config, tasks)
}

/// Run the job's script metrics over its trials' rewards; their metrics go into the job's
/// stats and result.json.
async fn add_script_metrics(
    specs: &[rollout_core::job_config::MetricSpec],
    result: &mut JobResult,
    job_dir: &Path,
) -> Result<(), String> {
    use rollout_core::job_config::MetricKind;
    if !specs.iter().any(|s| s.kind == MetricKind::UvScript) || result.cancelled {
        return Ok(());
    }
    let rewards = metrics::trial_rewards(job_dir);
    let metrics = metrics::run_scripts(specs, &rewards)
        .await
        .map_err(|e| format!("metrics: {e}"))?;
    result.stats.metrics.extend(metrics);
    let path = job_dir.join("result.json");
    serde_json::to_vec_pretty(&*result)
        .map_err(|e| e.to_string())
        .and_then(|b| std::fs::write(&path, b).map_err(|e| e.to_string()))
        .map_err(|e| format!("writing the metrics to {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents(o: &Overrides) -> Vec<(String, Option<String>)> {
        job_config(None, o)
            .unwrap()
            .agents
            .into_iter()
            .map(|a| (a.name, a.model_name))
            .collect()
    }

    #[test]
    fn repeated_models_sweep_every_agent() {
        let o = Overrides {
            paths: vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))],
            agents: vec!["rollout-agent".into(), "codex".into()],
            models: vec!["big".into(), "small".into(), "big".into()],
            ..Default::default()
        };
        let pair = |a: &str, m: &str| (a.to_string(), Some(m.to_string()));
        assert_eq!(
            agents(&o),
            [
                pair("rollout-agent", "big"),
                pair("rollout-agent", "small"),
                pair("codex", "big"),
                pair("codex", "small"),
            ],
            "agents × models, a model named twice runs once"
        );
        let one = Overrides {
            paths: vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))],
            agents: vec!["rollout-agent".into()],
            models: vec!["big".into()],
            ..Default::default()
        };
        assert_eq!(agents(&one), [pair("rollout-agent", "big")]);
    }

    #[test]
    fn agent_kwargs_and_env_go_to_every_agent_of_the_sweep() {
        let o = Overrides {
            paths: vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))],
            agents: vec!["rollout-agent".into()],
            models: vec!["big".into(), "small".into()],
            agent_kwargs: vec![parse_agent_kwarg("max_turns=3").unwrap()],
            agent_env: vec![parse_agent_env("OPENAI_BASE_URL=http://h:1/v1").unwrap()],
            ..Default::default()
        };
        let config = job_config(None, &o).unwrap();
        assert_eq!(config.agents.len(), 2);
        for a in &config.agents {
            assert_eq!(a.kwargs["max_turns"], serde_json::json!(3));
            assert_eq!(a.env["OPENAI_BASE_URL"], "http://h:1/v1");
        }
    }

    #[test]
    fn agent_env_values_stay_strings() {
        assert_eq!(
            parse_agent_env("N=3").unwrap(),
            ("N".to_string(), "3".to_string())
        );
        assert_eq!(parse_agent_env("A=b=c").unwrap().1, "b=c");
        assert!(parse_agent_env("novalue")
            .unwrap_err()
            .contains("KEY=VALUE"));
        assert!(parse_agent_env("=x").is_err());
    }
}
