//! `rollout run`: job file + flags → plan → runner → job directory, summary and exit status.

use crate::cli::{EnvKind, RunArgs};
use crate::exit;
use rollout_core::job_config::{AgentSpec, DatasetSpec, EnvironmentType};
use rollout_core::result::any_errored;
use rollout_core::{JobConfig, TaskFilter};
use rollout_env::docker::{DockerProvider, EngineLimits};
use rollout_env::Provider;
use rollout_runner::writer::ResultsWriter;
use rollout_runner::{JobPlan, RunOptions, Runner};
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

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
    if let Some(env) = args.env {
        config.environment.kind = match env {
            EnvKind::Docker => EnvironmentType::Docker,
            EnvKind::Local => EnvironmentType::Local,
            EnvKind::Kubernetes => EnvironmentType::Kubernetes,
        };
    }
    let origin = args.config.as_deref().unwrap_or(Path::new("command line"));
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
    let config = match job_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let tasks = match rollout_core::task::tasks_of_job(&config) {
        Ok(t) => t,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return exit::USAGE;
        }
    };
    let filter = match TaskFilter::new(&args.include, &args.exclude, args.n_tasks) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let tasks = if args.include.is_empty() && args.exclude.is_empty() && args.n_tasks.is_none() {
        tasks
    } else {
        filter.apply(tasks)
    };
    if config.environment.kind != EnvironmentType::Docker {
        eprintln!(
            "error: environment type {:?} is not available in this build of rollout; use --env docker",
            config.environment.kind
        );
        return exit::USAGE;
    }
    let plan = match JobPlan::new(config, tasks) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
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
    runtime.block_on(run_plan(plan, args.json))
}

async fn run_plan(plan: JobPlan, json: bool) -> u8 {
    let provider: Arc<dyn Provider> = match DockerProvider::connect(EngineLimits::default()).await {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("error: {e}");
            return exit::TRIAL_ERRORS;
        }
    };
    let cancel = CancellationToken::new();
    crate::signals::watch(cancel.clone(), provider.clone(), plan.job_id.clone());
    let mut runner = Runner::new(provider, cancel.clone(), RunOptions::default());
    let writer = Arc::new(ResultsWriter::new());
    runner.subscribe(writer.clone());
    let progress = Arc::new(crate::progress::Progress::new(plan.trials.len()));
    runner.subscribe(progress.clone());
    let job_dir = plan.job_dir.clone();
    let result = runner.run(plan).await;
    progress.finish();
    if json {
        match serde_json::to_string_pretty(&result) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: {e}"),
        }
    } else {
        print!("{}", crate::summary::render(&result, &job_dir));
    }
    if let Some(e) = writer.error() {
        eprintln!("error: writing results to {}: {e}", job_dir.display());
        return exit::TRIAL_ERRORS;
    }
    if result.cancelled {
        exit::CANCELLED
    } else if any_errored(&result.stats) {
        exit::TRIAL_ERRORS
    } else {
        exit::OK
    }
}
