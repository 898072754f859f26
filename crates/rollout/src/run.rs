//! `rollout run`: job file + flags → plan → runner → job directory, summary and exit status.

use crate::cli::{EnvKind, RunArgs};
use crate::exit;
use rollout_core::job_config::{AgentSpec, DatasetSpec, EnvironmentType, RegistrySpec};
use rollout_core::result::any_errored;
use rollout_core::JobConfig;
use rollout_env::docker::{DockerProvider, EngineLimits};
use rollout_env::Provider;
use rollout_runner::events::EventSink;
use rollout_runner::writer::{ResultsWriter, RunControl, RunStatus};
use rollout_runner::{JobPlan, RunOptions, Runner};
use rollout_sources::executor::ExecutorOptions;
use rollout_sources::git::GitCache;
use rollout_sources::job::{load_job_tasks, SourceOptions};
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Load every task of the job from its sources; archive agents become the default agent.
/// Errors are printed; the error value is the exit status.
/// `ca_bundle` is the one the environments get; archive tasks' build steps trust it too.
pub(crate) fn load_tasks(
    config: &mut JobConfig,
    ca_bundle: Option<Vec<u8>>,
) -> Result<Vec<rollout_core::Task>, u8> {
    let opts = SourceOptions {
        git: GitCache::new(GitCache::default_root()),
        parallel_clones: 4,
        archives: config.archives.clone(),
        executor: ExecutorOptions {
            base_image: config.executor_image.clone(),
            ca_bundle,
            ..Default::default()
        },
        policy: None,
    };
    match load_job_tasks(config, &opts) {
        Ok(loaded) => {
            if config.agents.is_empty() {
                config.agents = loaded
                    .archive_agents
                    .iter()
                    .map(|p| AgentSpec {
                        name: format!("code:{}", p.display()),
                        ..Default::default()
                    })
                    .collect();
            }
            for t in &loaded.tasks {
                for w in &t.config.warnings {
                    eprintln!(
                        "warning: task {}: {}: {w}",
                        t.name,
                        t.dir.join("task.toml").display()
                    );
                }
                if let Some(why) = &t.invalid {
                    eprintln!(
                        "warning: task {} is invalid, its trials end task_invalid: {why}",
                        t.name
                    );
                }
            }
            Ok(loaded.tasks)
        }
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            Err(exit::USAGE)
        }
    }
}

/// Merge the job file (if any) with the flags; flags win.
pub fn job_config(args: &RunArgs) -> Result<JobConfig, String> {
    let mut config = match &args.config {
        Some(path) => JobConfig::load(path).map_err(|e| e.to_string())?,
        None => JobConfig::default(),
    };
    for p in &args.paths {
        config.datasets.push(DatasetSpec {
            path: Some(p.clone()),
            ..Default::default()
        });
    }
    if !args.agents.is_empty() {
        // A name the job file defines keeps its definition; others are built-ins.
        let defined = std::mem::take(&mut config.agents);
        config.agents = args
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
    if let Some(model) = &args.model {
        if config.agents.is_empty() {
            config.agents = config.effective_agents();
        }
        for a in &mut config.agents {
            a.model_name = Some(model.clone());
        }
    }
    if args.agent_version.is_some() || !args.agent_kwargs.is_empty() {
        if config.agents.is_empty() {
            config.agents = config.effective_agents();
        }
        for a in &mut config.agents {
            if let Some(v) = &args.agent_version {
                a.version = Some(v.clone());
            }
            for kv in &args.agent_kwargs {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("--ak {kv:?}: expected KEY=VALUE"))?;
                let value = serde_json::from_str(v)
                    .unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
                a.kwargs.insert(k.to_string(), value);
            }
        }
    }
    if let Some(n) = args.n_concurrent {
        if n == 0 {
            return Err("-n/--n-concurrent must be at least 1".into());
        }
        config.n_concurrent_trials = Some(n);
    }
    if let Some(k) = args.n_attempts {
        if k == 0 {
            return Err("-k/--n-attempts must be at least 1".into());
        }
        config.n_attempts = Some(k);
    }
    if let Some(d) = &args.jobs_dir {
        config.jobs_dir = Some(d.clone());
    }
    if let Some(n) = &args.job_name {
        if n.is_empty() || n.contains('/') || n == "." || n == ".." {
            return Err(format!("--job-name {n:?} must be a plain directory name"));
        }
        config.name = Some(n.clone());
    }
    if let Some(m) = args.timeout_multiplier {
        if !(m.is_finite() && m > 0.0) {
            return Err("--timeout-multiplier must be a positive number".into());
        }
        config.timeout_multiplier = Some(m);
    }
    if args.force_build {
        config.environment.force_build = true;
    }
    if args.pull {
        config.environment.pull = rollout_core::job_config::PullPolicy::Always;
    }
    for spec in &args.datasets {
        let Some(registry) = &args.registry else {
            return Err(format!(
                "-d {spec}: give the registry with --registry PATH|URL"
            ));
        };
        let (name, version) = rollout_sources::registry::parse_dataset_ref(spec);
        let is_url = registry.starts_with("http://") || registry.starts_with("https://");
        config.datasets.push(DatasetSpec {
            registry: Some(RegistrySpec {
                path: (!is_url).then(|| std::path::PathBuf::from(registry)),
                url: is_url.then(|| registry.clone()),
            }),
            name: Some(name),
            version,
            ..Default::default()
        });
    }
    config.archives.extend(args.archive.iter().cloned());
    if args.executor_image.is_some() {
        config.executor_image = args.executor_image.clone();
    }
    // Task filters apply to every dataset (Harbor's semantics: -l is per dataset).
    for d in &mut config.datasets {
        if !args.include.is_empty() {
            d.task_names = args.include.clone();
        }
        if !args.exclude.is_empty() {
            d.exclude_task_names = args.exclude.clone();
        }
        if args.n_tasks.is_some() {
            d.n_tasks = args.n_tasks;
        }
    }
    if args.shuffle || args.seed.is_some() {
        config.shuffle_seed = Some(args.seed.unwrap_or(0));
    }
    if let Some(n) = args.max_retries {
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
    if let Some(env) = args.env {
        config.environment.kind = match env {
            EnvKind::Docker => EnvironmentType::Docker,
            EnvKind::Local => EnvironmentType::Local,
            EnvKind::Kubernetes => EnvironmentType::Kubernetes,
        };
    }
    let origin = args.config.as_deref().unwrap_or(Path::new("command line"));
    // The same checks as a job file's and a submitted job's (rollout serve).
    config.validate(origin).map_err(|e| e.to_string())?;
    config.validate_sources(origin).map_err(|e| {
        if args.config.is_none() {
            "no tasks to run: give -p TASK_OR_DATASET_DIR (or a job file)".to_string()
        } else {
            e.to_string()
        }
    })?;
    Ok(config)
}

pub fn main(args: RunArgs) -> u8 {
    if let Some(file) = args
        .config
        .as_deref()
        .filter(|c| rollout_core::experiment::is_experiment_file(c))
    {
        return crate::experiment::run(file, &args);
    }
    let mut config = match job_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    if !args.no_preflight && !crate::preflight::gate(&config, Vec::new()) {
        return exit::USAGE;
    }
    let ca_bundle = match crate::ca::bundle_or_exit(&args.ca_certs) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let tasks = match load_tasks(&mut config, ca_bundle.clone()) {
        Ok(t) => t,
        Err(code) => return code,
    };
    if let Err(e) = rollout_core::task::refuse_unenforceable(&tasks) {
        eprintln!("error: {e}");
        return exit::USAGE;
    }
    if config.environment.kind == EnvironmentType::Kubernetes {
        if let Err(e) = crate::kube_cmd::check(&config, &tasks) {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    } else if config.environment.kind != EnvironmentType::Docker {
        eprintln!(
            "error: environment type {:?} is not available in this build of rollout; use --env docker",
            config.environment.kind
        );
        return exit::USAGE;
    }
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
    let plan = match existing {
        Some(dir) => match resume_plan(&dir, config, tasks, args.retry_errors) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::USAGE;
            }
        },
        None => match JobPlan::new(config, tasks) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::USAGE;
            }
        },
    };
    execute(plan, args.json, ca_bundle, Vec::new())
}

/// `rollout jobs resume DIR`.
pub fn resume(args: crate::cli::ResumeArgs) -> u8 {
    let dir = &args.job_dir;
    let config_path = dir.join("config.json");
    let mut config: JobConfig = match JobConfig::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}: is {} a job directory?", dir.display());
            return exit::USAGE;
        }
    };
    config.name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    config.jobs_dir = Some(dir.parent().map(Path::to_path_buf).unwrap_or_default());
    if let Some(n) = args.n_concurrent {
        config.n_concurrent_trials = Some(n.max(1));
    }
    let bundle = match crate::ca::bundle_or_exit(&args.ca_certs) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let tasks = match load_tasks(&mut config, bundle.clone()) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let plan = match resume_plan(dir, config, tasks, args.retry_errors) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    // An experiment run goes on writing the seed's layout.
    match crate::experiment::load_run(dir) {
        None => execute(plan, args.json, bundle, Vec::new()),
        Some(Ok(exp)) => crate::experiment::execute(&exp, plan, args.json, bundle),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
    }
}

/// Keys of a job configuration that do not change results, so may differ on resume.
const RESUMABLE_DIFFERENCES: [&str; 5] = [
    "name",
    "jobs_dir",
    "n_concurrent_trials",
    "retry",
    "orchestrator",
];

/// Top-level fields whose values differ between the stored and the new configuration.
fn differing_fields(stored: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let normalise = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(env) = v.get_mut("environment").and_then(|e| e.as_object_mut()) {
            env.remove("force_build");
            env.remove("pull");
        }
        v
    };
    let (stored, new) = (normalise(stored), normalise(new));
    let empty = serde_json::Map::new();
    let a = stored.as_object().unwrap_or(&empty);
    let b = new.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !RESUMABLE_DIFFERENCES.contains(&k.as_str()))
        .filter(|k| {
            a.get(*k).unwrap_or(&serde_json::Value::Null)
                != b.get(*k).unwrap_or(&serde_json::Value::Null)
        })
        .cloned()
        .collect()
}

/// Plan the rest of the job in `dir`: refuse if it still runs or its configuration changed.
fn resume_plan(
    dir: &Path,
    config: JobConfig,
    tasks: Vec<rollout_core::Task>,
    retry_errors: bool,
) -> Result<JobPlan, String> {
    let stored: serde_json::Value = std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| format!("cannot read {}", dir.join("config.json").display()))?;
    let new = serde_json::to_value(&config).map_err(|e| e.to_string())?;
    let diff = differing_fields(&stored, &new);
    if !diff.is_empty() {
        return Err(format!(
            "job {} exists with a different configuration ({} differ): resuming would mix results; \
             use the same configuration, or another --job-name",
            dir.display(),
            diff.join(", ")
        ));
    }
    let control = RunControl::load(dir);
    if let Some(c) = &control {
        if c.status == RunStatus::Running && c.owner_alive(&rollout_runner::host_name()) {
            return Err(format!(
                "job {} is still running (pid {} on {}): stop it before resuming",
                dir.display(),
                c.pid,
                c.host
            ));
        }
    }
    // The job id labels its containers; a job that never recorded one gets a stable stand-in.
    let job_id = control
        .map(|c| c.run_id)
        .unwrap_or_else(|| rollout_core::digest::bytes_digest(dir.to_string_lossy().as_bytes()));
    JobPlan::resume(config, tasks, job_id, dir.to_path_buf(), retry_errors)
        .map_err(|e| e.to_string())
}

/// Run `plan` to the end; `sinks` get the job's events after the results writer.
pub fn execute(
    plan: JobPlan,
    json: bool,
    ca_bundle: Option<Vec<u8>>,
    sinks: Vec<Arc<dyn EventSink>>,
) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::TRIAL_ERRORS;
        }
    };
    runtime.block_on(run_plan(plan, json, ca_bundle, sinks))
}

async fn run_plan(
    plan: JobPlan,
    json: bool,
    ca_bundle: Option<Vec<u8>>,
    sinks: Vec<Arc<dyn EventSink>>,
) -> u8 {
    let provider: Arc<dyn Provider> = match crate::kube_cmd::provider_for(&plan.config).await {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return exit::TRIAL_ERRORS;
        }
        None => match DockerProvider::connect(EngineLimits::default()).await {
            Ok(p) => Arc::new(p),
            Err(e) => {
                eprintln!("error: {e}");
                return exit::TRIAL_ERRORS;
            }
        },
    };
    // A resumed job first removes what its dead predecessor left running.
    if plan.job_dir.join("config.json").is_file() {
        match provider
            .remove_labelled(rollout_core::labels::JOB, &plan.job_id)
            .await
        {
            Ok(0) => {}
            Ok(n) => eprintln!("removed {n} orphaned container(s) of job {}", plan.job_name),
            Err(e) => eprintln!("warning: could not remove orphaned containers: {e}"),
        }
    }
    let cancel = CancellationToken::new();
    crate::signals::watch(cancel.clone(), provider.clone(), plan.job_id.clone());
    let options = RunOptions {
        ca_bundle: ca_bundle.map(Arc::new),
        ..Default::default()
    };
    let mut runner = Runner::new(provider, cancel.clone(), options);
    crate::signals::watch_pause(runner.pause_handle());
    let writer = Arc::new(ResultsWriter::new());
    runner.subscribe(writer.clone());
    for sink in sinks {
        runner.subscribe(sink);
    }
    let recorder = crate::prov_cmd::trial_recorder();
    if let Some(r) = &recorder {
        runner.subscribe(r.clone());
    }
    let progress = Arc::new(crate::progress::Progress::new(
        plan.trials.len() + plan.kept.len(),
    ));
    runner.subscribe(progress.clone());
    let job_dir = plan.job_dir.clone();
    let metric_specs = plan.config.metrics.clone();
    let mut result = runner.run(plan).await;
    progress.finish();
    let metrics_ok = add_script_metrics(&metric_specs, &mut result, &job_dir).await;
    crate::prov_cmd::finish_recorder(recorder);
    if json {
        match serde_json::to_string_pretty(&result) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: {e}"),
        }
    } else {
        print!("{}", crate::summary::render(&result, &job_dir));
        crate::jobs_cmd::print_failures(&job_dir);
    }
    if let Some(e) = writer.error() {
        eprintln!("error: writing results to {}: {e}", job_dir.display());
        return exit::TRIAL_ERRORS;
    }
    if result.cancelled {
        exit::CANCELLED
    } else if any_errored(&result.stats) || !metrics_ok {
        exit::TRIAL_ERRORS
    } else {
        exit::OK
    }
}

/// Run the job's script metrics over its trials' rewards; their metrics go into the job's
/// stats and result.json. False (after printing why) when one failed.
async fn add_script_metrics(
    specs: &[rollout_core::job_config::MetricSpec],
    result: &mut rollout_core::result::JobResult,
    job_dir: &Path,
) -> bool {
    use rollout_core::job_config::MetricKind;
    if !specs.iter().any(|s| s.kind == MetricKind::UvScript) || result.cancelled {
        return true;
    }
    let rewards = crate::metrics::trial_rewards(job_dir);
    match crate::metrics::run_scripts(specs, &rewards).await {
        Ok(metrics) => {
            result.stats.metrics.extend(metrics);
            let path = job_dir.join("result.json");
            let written = serde_json::to_vec_pretty(&*result)
                .map_err(|e| e.to_string())
                .and_then(|b| std::fs::write(&path, b).map_err(|e| e.to_string()));
            if let Err(e) = written {
                eprintln!("error: writing the metrics to {}: {e}", path.display());
                return false;
            }
            true
        }
        Err(e) => {
            eprintln!("error: metrics: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resume_ignores_concurrency_but_not_agents() {
        let a = json!({"name": "j", "n_concurrent_trials": 4, "agents": [{"name": "oracle"}], "environment": {"force_build": true}});
        let b = json!({"name": "j", "n_concurrent_trials": 8, "agents": [{"name": "oracle"}], "environment": {"force_build": false}});
        assert!(differing_fields(&a, &b).is_empty());
        let c = json!({"name": "j", "agents": [{"name": "nop"}], "n_attempts": 2});
        assert_eq!(
            differing_fields(&a, &c),
            ["agents", "environment", "n_attempts"]
        );
    }
}
