//! The speed floor for `scripts/bench`: what one trial costs when nothing but the Engine API
//! calls are made. For each trial: create a container (`sleep infinity`, init), start it, exec
//! the solve script, exec the test script, force-remove it (no stop). Trials run with the given
//! concurrency; a JSON summary goes to stdout.
//!
//! Every container carries the label `io.rollout.bench=1` and a per-run label; whatever this
//! run created is removed on exit, also after an error or Ctrl-C.

use anyhow::{bail, Context, Result};
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use bollard::Docker;
use clap::Parser;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BENCH_LABEL: &str = "io.rollout.bench";
const RUN_LABEL: &str = "io.rollout.bench.run";
const STEPS: [&str; 5] = ["create", "start", "solve", "test", "remove"];

/// Seconds spent in each of [`STEPS`] by one trial.
type StepTimes = [f64; 5];

/// Run N trials of create → start → exec solve → exec test → remove with plain Engine API calls.
#[derive(Parser, Debug)]
#[command(name = "rollout-bench-floor", version)]
struct Args {
    /// Image to run (must exist locally).
    #[arg(long)]
    image: String,
    /// Number of trials.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Trials in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Solve script, run as `bash -c SCRIPT`.
    #[arg(long)]
    solve: String,
    /// Test script, run as `bash -c SCRIPT`.
    #[arg(long)]
    test: String,
}

struct Bench {
    docker: Docker,
    args: Args,
    run_id: String,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let code = match run(args).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rollout-bench-floor: error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

async fn run(args: Args) -> Result<()> {
    if args.trials == 0 || args.concurrency == 0 {
        bail!("--trials and --concurrency must be at least 1");
    }
    let docker = Docker::connect_with_defaults()
        .context("connecting to the Docker engine")?
        .negotiate_version()
        .await
        .context("negotiating the Engine API version")?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let bench = Arc::new(Bench {
        docker,
        run_id: format!("{}-{nanos}", std::process::id()),
        args,
    });

    let outcome = tokio::select! {
        r = run_trials(bench.clone()) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let cleanup = remove_leftovers(&bench).await;
    let (total, trials) = outcome?;
    cleanup?;

    let per_trial: Vec<f64> = trials.iter().map(|steps| steps.iter().sum()).collect();
    let n = per_trial.len() as f64;
    let mean = per_trial.iter().sum::<f64>() / n;
    let mean_steps: serde_json::Map<String, serde_json::Value> = STEPS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let m = trials.iter().map(|steps| steps[i]).sum::<f64>() / n;
            (name.to_string(), m.into())
        })
        .collect();
    let summary = serde_json::json!({
        "trials": bench.args.trials,
        "concurrency": bench.args.concurrency,
        "total_seconds": total,
        "per_trial_seconds": per_trial,
        "mean_trial_seconds": mean,
        "mean_step_seconds": mean_steps,
    });
    println!("{summary}");
    Ok(())
}

/// Run all trials with `concurrency` workers; returns (wall seconds, per-trial step times in
/// trial order).
async fn run_trials(bench: Arc<Bench>) -> Result<(f64, Vec<StepTimes>)> {
    let n = bench.args.trials;
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let times = Arc::new(Mutex::new(vec![[f64::NAN; 5]; n]));
    let started = Instant::now();
    let mut workers = AbortOnDrop(Vec::new());
    for _ in 0..bench.args.concurrency.min(n) {
        let (bench, next, failed, times) =
            (bench.clone(), next.clone(), failed.clone(), times.clone());
        workers.0.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || failed.load(Ordering::Relaxed) {
                    return Ok(());
                }
                match trial(&bench, i).await {
                    Ok(secs) => times.lock().unwrap()[i] = secs,
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e.context(format!("trial {i}")));
                    }
                }
            }
        }));
    }
    let mut first_error = None;
    for w in workers.0.iter_mut() {
        let r = w.await.context("a worker panicked").and_then(|r| r);
        if let Err(e) = r {
            first_error.get_or_insert(e);
        }
    }
    let total = started.elapsed().as_secs_f64();
    if let Some(e) = first_error {
        return Err(e);
    }
    let times = times.lock().unwrap().clone();
    Ok((total, times))
}

/// Aborts the workers when dropped (the run was interrupted), so none starts a new trial.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<Result<()>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for w in &self.0 {
            w.abort();
        }
    }
}

/// One trial; returns the seconds spent in each step (their sum is the trial's wall time,
/// from before create to after remove).
async fn trial(bench: &Bench, _index: usize) -> Result<StepTimes> {
    let docker = &bench.docker;
    let mut times = [0.0; 5];
    let mut lap = Instant::now();
    let mut split = |step: usize| {
        let now = Instant::now();
        times[step] = (now - lap).as_secs_f64();
        lap = now;
    };
    let body = ContainerCreateBody {
        image: Some(bench.args.image.clone()),
        cmd: Some(vec!["sleep".into(), "infinity".into()]),
        labels: Some(HashMap::from([
            (BENCH_LABEL.to_string(), "1".to_string()),
            (RUN_LABEL.to_string(), bench.run_id.clone()),
        ])),
        host_config: Some(HostConfig {
            init: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = docker
        .create_container(None, body)
        .await
        .context("creating the container")?
        .id;
    split(0);
    let steps = async {
        docker
            .start_container(&id, None)
            .await
            .context("starting the container")?;
        split(1);
        exec(docker, &id, &bench.args.solve)
            .await
            .context("solve")?;
        split(2);
        exec(docker, &id, &bench.args.test).await.context("test")?;
        split(3);
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let removed = docker
        .remove_container(
            &id,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
        .context("removing the container");
    split(4);
    steps?;
    removed?;
    Ok(times)
}

/// `bash -c SCRIPT` in the container, attached; waits for the end and requires exit code 0.
async fn exec(docker: &Docker, id: &str, script: &str) -> Result<()> {
    let created = docker
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(vec![
                    "bash".to_string(),
                    "-c".to_string(),
                    script.to_string(),
                ]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .context("creating the exec")?;
    let mut output_tail = Vec::new();
    match docker
        .start_exec(&created.id, None)
        .await
        .context("starting the exec")?
    {
        StartExecResults::Attached { mut output, .. } => {
            while let Some(item) = output.next().await {
                let item = item.context("reading exec output")?;
                output_tail.extend_from_slice(&item.into_bytes());
                if output_tail.len() > 8192 {
                    output_tail.drain(..output_tail.len() - 4096);
                }
            }
        }
        StartExecResults::Detached => bail!("the engine did not attach to the exec"),
    }
    // The exit code can lag a moment behind the end of the output stream.
    for _ in 0..400 {
        let info = docker
            .inspect_exec(&created.id)
            .await
            .context("inspecting the exec")?;
        if info.running != Some(true) {
            return match info.exit_code {
                Some(0) => Ok(()),
                code => bail!(
                    "exited with {code:?}; output ends with:\n{}",
                    String::from_utf8_lossy(&output_tail)
                ),
            };
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("the exec still reports running 2 s after its output ended")
}

/// Force-remove every container this run created (by its run label).
async fn remove_leftovers(bench: &Bench) -> Result<()> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{RUN_LABEL}={}", bench.run_id)],
    )]);
    let list = bench
        .docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .context("listing leftover containers")?;
    for c in list {
        let Some(id) = c.id else { continue };
        let r = bench
            .docker
            .remove_container(
                &id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
        match r {
            Ok(()) => {}
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(e).with_context(|| format!("removing container {id}")),
        }
    }
    Ok(())
}
