//! `rollout run` and `rollout jobs resume`: flags → the launcher → summary and exit status.

use crate::cli::{EnvKind, PreflightArgs, ResumeArgs, RunArgs};
use crate::error::{exit, CliError, CliResult};
use rollout_core::job_config::EnvironmentType;
use rollout_core::result::any_errored;
use rollout_core::JobConfig;
use rollout_launch::{experiment, Launcher, Overrides, PlanMode};
use rollout_runner::events::EventSink;
use rollout_runner::JobPlan;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The job-configuration fields `rollout run`'s flags set.
pub fn overrides(args: &RunArgs) -> Result<Overrides, CliError> {
    let agent_kwargs = args
        .agent_kwargs
        .iter()
        .map(|kv| rollout_launch::parse_agent_kwarg(kv).map_err(CliError::Usage))
        .collect::<Result<_, _>>()?;
    let agent_env = args
        .agent_env
        .iter()
        .map(|kv| rollout_launch::parse_agent_env(kv).map_err(CliError::Usage))
        .collect::<Result<_, _>>()?;
    Ok(Overrides {
        paths: args.paths.clone(),
        datasets: args.datasets.clone(),
        registry: args.registry.clone(),
        archives: args.archive.clone(),
        executor_image: args.executor_image.clone(),
        shuffle: args.shuffle,
        seed: args.seed,
        agents: args.agents.clone(),
        agent_version: args.agent_version.clone(),
        agent_kwargs,
        agent_env,
        models: args.models.clone(),
        n_concurrent: args.n_concurrent,
        n_attempts: args.n_attempts,
        jobs_dir: args.jobs_dir.clone(),
        job_name: args.job_name.clone(),
        include: args.include.clone(),
        exclude: args.exclude.clone(),
        n_tasks: args.n_tasks,
        env: args.env.map(|e| match e {
            EnvKind::Docker => EnvironmentType::Docker,
            EnvKind::Local => EnvironmentType::Local,
            EnvKind::Kubernetes => EnvironmentType::Kubernetes,
        }),
        force_build: args.force_build,
        pull: args.pull,
        max_retries: args.max_retries,
        max_errors: args.max_errors,
        timeout_multiplier: args.timeout_multiplier,
    })
}

/// The launcher of a command-line run: the CA bundle of `--ca-certs`, the `--store`.
pub fn launcher(ca_certs: &rollout_launch::ca::CaCerts) -> Result<Launcher, CliError> {
    Ok(Launcher {
        ca_bundle: rollout_launch::ca::bundle(ca_certs).map_err(CliError::Usage)?,
        store: (!rollout_prov::store_disabled()).then(rollout_prov::store_path),
        argv: std::env::args().collect(),
        script_metrics: true,
        ..Default::default()
    })
}

/// Load the job's tasks (printing the loader's warnings) and check them.
fn load(launcher: &Launcher, config: &mut JobConfig) -> Result<Vec<rollout_core::Task>, CliError> {
    let loaded = launcher.load(config)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    rollout_launch::check_enforceable(config, &loaded.tasks)?;
    Ok(loaded.tasks)
}

pub fn main(args: RunArgs) -> CliResult {
    let overrides = overrides(&args)?;
    if let Some(file) = args
        .config
        .as_deref()
        .filter(|c| rollout_core::experiment::is_experiment_file(c))
    {
        let prepared = experiment::prepare(file, &overrides)?;
        if !args.no_preflight && !rollout_launch::preflight::gate(&prepared.config, Vec::new()) {
            prepared.discard();
            return Err(CliError::Exit(exit::USAGE));
        }
        let launcher = launcher(&args.ca_certs)?;
        let mut config = prepared.config;
        let tasks = load(&launcher, &mut config)?;
        let plan = launcher.plan(config, tasks, PlanMode::New)?;
        experiment::record(&prepared.exp, &plan)?;
        eprintln!(
            "experiment {}: run directory {}",
            prepared.exp.id,
            plan.job_dir.display()
        );
        let sink = experiment::sink(&prepared.exp, &plan)?;
        return execute(&launcher, plan, args.json, Some(sink));
    }
    let mut config = rollout_launch::job_config(args.config.as_deref(), &overrides)?;
    if let Some(level) = config.log_level {
        crate::set_job_log_level(level.as_str());
    }
    if !args.no_preflight && !rollout_launch::preflight::gate(&config, Vec::new()) {
        return Err(CliError::Exit(exit::USAGE));
    }
    let launcher = launcher(&args.ca_certs)?;
    let tasks = load(&launcher, &mut config)?;
    let plan = launcher.plan(
        config,
        tasks,
        PlanMode::NewOrResume {
            retry_errors: args.retry_errors,
        },
    )?;
    execute(&launcher, plan, args.json, None)
}

/// `rollout jobs resume DIR` of a job whose process is gone.
pub fn resume(args: ResumeArgs) -> CliResult {
    let dir = &args.job_dir;
    let mut config = rollout_launch::resume::stored_config(dir)?;
    if let Some(n) = args.n_concurrent {
        config.n_concurrent_trials = Some(n.max(1));
    }
    let launcher = launcher(&args.ca_certs)?;
    let tasks = load(&launcher, &mut config)?;
    let plan = launcher.plan(
        config,
        tasks,
        PlanMode::Resume {
            dir: dir.clone(),
            retry_errors: args.retry_errors,
        },
    )?;
    // An experiment run goes on writing the seed's layout.
    let sink = match experiment::load_run(dir) {
        None => None,
        Some(Ok(exp)) => Some(experiment::sink(&exp, &plan)?),
        Some(Err(e)) => return Err(CliError::Usage(e)),
    };
    execute(&launcher, plan, args.json, sink)
}

/// Run `plan` to the end with the progress bar, Ctrl-C and pause signals; print the summary.
fn execute(
    launcher: &Launcher,
    plan: JobPlan,
    json: bool,
    experiment: Option<Arc<experiment::ExperimentSink>>,
) -> CliResult {
    let runtime = crate::error::runtime(Some(2))?;
    let code = runtime.block_on(async {
        let provider = rollout_launch::provider::connect(&plan.config)
            .await
            .map_err(CliError::failed)?;
        let cancel = CancellationToken::new();
        rollout_launch::signals::watch(cancel.clone(), provider.clone(), plan.job_id.clone());
        let progress = Arc::new(crate::progress::Progress::new(
            plan.trials.len() + plan.kept.len(),
        ));
        let mut sinks: Vec<Arc<dyn EventSink>> = Vec::new();
        if let Some(s) = &experiment {
            sinks.push(s.clone());
        }
        sinks.push(progress.clone());
        let job_dir = plan.job_dir.clone();
        let done = launcher
            .execute(
                plan,
                provider,
                cancel,
                sinks,
                &|m: &str| eprintln!("{m}"),
                |runner| rollout_launch::signals::watch_pause(runner.pause_handle()),
            )
            .await;
        progress.finish();
        if let Some(e) = &done.metrics_error {
            eprintln!("error: {e}");
        }
        for w in &done.provenance_warnings {
            eprintln!("warning: provenance: {w}");
        }
        let result = &done.result;
        if json {
            match serde_json::to_string_pretty(result) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("error: {e}"),
            }
        } else {
            print!("{}", crate::summary::render(result, &job_dir));
            crate::jobs_cmd::print_failures(&job_dir);
        }
        if let Some(e) = done.writer_error {
            eprintln!("error: writing results to {}: {e}", job_dir.display());
            return Ok::<u8, CliError>(exit::TRIAL_ERRORS);
        }
        Ok(if result.cancelled {
            exit::CANCELLED
        } else if any_errored(&result.stats) || done.metrics_error.is_some() {
            exit::TRIAL_ERRORS
        } else {
            exit::OK
        })
    })?;
    // An error writing the experiment layout makes the status at least TRIAL_ERRORS.
    let layout_failed = experiment.is_some_and(|s| s.error().is_some());
    Ok(if layout_failed {
        code.max(exit::TRIAL_ERRORS)
    } else {
        code
    })
}

/// `rollout preflight`: the checks, rendered.
pub fn preflight(args: PreflightArgs) -> CliResult {
    use rollout_launch::preflight;
    let checks = preflight::run_checks(&preflight::Request {
        config: args.config,
        paths: args.paths,
        agents: args.agents,
        build: args.build,
    });
    if args.json {
        println!(
            "{}",
            preflight::json_report(&checks).map_err(CliError::failed)?
        );
    } else {
        print!("{}", preflight::render(&checks));
    }
    Ok(if preflight::passed(&checks) {
        exit::OK
    } else {
        exit::TRIAL_ERRORS
    })
}
