//! `rollout jobs pause|resume|kill|list|show|diff|export`: act on a job from another terminal,
//! or read it back (the reading is `rollout_runner::report`).
//!
//! A running job's `run_control.json` names its process; pause and resume send it SIGUSR1 and
//! SIGUSR2, kill sends SIGTERM (the same clean cancellation as Ctrl-C) and, if the process does
//! not end in time, SIGKILL followed by a sweep of the job's containers.

use crate::cli::ResumeArgs;
use crate::error::{exit, CliError, CliResult};
use rollout_core::result::JobResult;
use rollout_runner::writer::{RunControl, RunStatus, RUN_CONTROL};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long `kill` waits for a clean cancellation before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(120);

/// The state of the job in `dir`, and whether its process still runs.
fn control(dir: &Path) -> Result<(RunControl, bool), String> {
    let c = RunControl::load(dir).ok_or_else(|| {
        format!(
            "{} has no readable {RUN_CONTROL}: is it a job directory?",
            dir.display()
        )
    })?;
    let alive = c.owner_alive(&rollout_runner::host_name());
    Ok((c, alive))
}

fn signal(pid: u32, sig: i32) -> Result<(), String> {
    // SAFETY: kill(2) with a pid read from the job's state file and checked to be a rollout
    // process on this host.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "cannot signal process {pid}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Wait (bounded) until `cond` holds for the job's state.
fn wait_for(dir: &Path, secs: u64, cond: impl Fn(&RunControl) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if RunControl::load(dir).is_some_and(|c| cond(&c)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub fn pause(dir: &Path) -> CliResult {
    let (c, alive) = control(dir).map_err(CliError::Usage)?;
    if !alive || c.status != RunStatus::Running {
        return Err(CliError::usage(format!(
            "job {} is not running (status {:?}); nothing to pause",
            dir.display(),
            c.status
        )));
    }
    signal(c.pid, libc::SIGUSR1).map_err(CliError::Failed)?;
    if !wait_for(dir, 10, |c| c.status == RunStatus::Paused) {
        return Err(CliError::failed(format!(
            "job {} did not report paused within 10 s",
            dir.display()
        )));
    }
    let n = RunControl::load(dir).map_or(0, |c| c.active_trials.len());
    println!("paused {}: no new trial starts; {n} running trial(s) go on. `rollout jobs resume` continues.", dir.display());
    Ok(exit::OK)
}

pub fn resume(args: ResumeArgs) -> CliResult {
    let dir = &args.job_dir;
    if let Ok((c, true)) = control(dir) {
        if c.status == RunStatus::Paused {
            signal(c.pid, libc::SIGUSR2).map_err(CliError::Failed)?;
            if !wait_for(dir, 10, |c| c.status == RunStatus::Running) {
                return Err(CliError::failed(format!(
                    "job {} did not report running within 10 s",
                    dir.display()
                )));
            }
            println!("resumed {}", dir.display());
            return Ok(exit::OK);
        }
    }
    crate::run::resume(args)
}

pub fn kill(dir: &Path) -> CliResult {
    let (c, alive) = control(dir).map_err(CliError::Usage)?;
    if alive && matches!(c.status, RunStatus::Running | RunStatus::Paused) {
        signal(c.pid, libc::SIGTERM).map_err(CliError::Failed)?;
        let deadline = Instant::now() + KILL_GRACE;
        while rollout_core::owner_alive(c.pid, &c.host, &rollout_runner::host_name())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        if rollout_core::owner_alive(c.pid, &c.host, &rollout_runner::host_name()) {
            eprintln!(
                "job did not stop within {} s: killing process {}",
                KILL_GRACE.as_secs(),
                c.pid
            );
            let _ = signal(c.pid, libc::SIGKILL);
        }
    }
    // Whatever the process left (or a crash left) goes too.
    let removed = sweep(dir, &c.run_id);
    let mut c = RunControl::load(dir).unwrap_or(c);
    c.status = RunStatus::Killed;
    c.active_trials.clear();
    c.updated_at = chrono::Utc::now();
    rollout_runner::fsutil::write_json(&dir.join(RUN_CONTROL), &c).map_err(|e| {
        CliError::failed(format!("updating {}: {e}", dir.join(RUN_CONTROL).display()))
    })?;
    println!(
        "killed {}{}",
        dir.display(),
        removed.map_or(String::new(), |n| format!(
            "; removed {n} container(s) or pod(s)"
        ))
    );
    Ok(exit::OK)
}

/// Remove the containers of job `job_id` (in `dir`) from its provider; None when it cannot be
/// reached.
fn sweep(dir: &Path, job_id: &str) -> Option<usize> {
    let config = rollout_core::JobConfig::load(&dir.join("config.json")).unwrap_or_default();
    let rt = crate::error::runtime(Some(1)).ok()?;
    rt.block_on(async {
        let p = rollout_launch::provider::connect(&config).await.ok()?;
        p.remove_labelled(rollout_core::labels::JOB, job_id)
            .await
            .ok()
    })
}

/// Status shown for a job: a "running" job whose process is gone was interrupted.
fn status_of(dir: &Path) -> (String, Option<RunControl>) {
    match control(dir) {
        Ok((c, alive)) => {
            let s = match c.status {
                RunStatus::Running | RunStatus::Paused if !alive => {
                    "interrupted (process gone)".to_string()
                }
                s => format!("{s:?}").to_lowercase(),
            };
            (s, Some(c))
        }
        Err(_) => ("unknown".into(), None),
    }
}

fn job_result(dir: &Path) -> Option<JobResult> {
    serde_json::from_slice(&std::fs::read(dir.join("result.json")).ok()?).ok()
}

fn count_results(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.path().join("result.json").is_file())
            .count()
    })
}

pub fn list(jobs_dir: &Path, json: bool) -> CliResult {
    let entries = std::fs::read_dir(jobs_dir)
        .map_err(|_| CliError::usage(format!("cannot read {}", jobs_dir.display())))?;
    let mut dirs: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    if json {
        let jobs: Vec<serde_json::Value> = dirs
            .iter()
            .map(|d| {
                let (status, control) = status_of(d);
                let result = job_result(d);
                serde_json::json!({
                    "job_dir": d,
                    "status": status,
                    "trials_finished": count_results(d),
                    "n_total_trials": result.as_ref().map(|r| r.n_total_trials),
                    "mean_reward": result.as_ref().and_then(|r| r.stats.mean_reward),
                    "started_at": control.map(|c| c.started_at),
                })
            })
            .collect();
        return Ok(print_json(&jobs));
    }
    println!(
        "{:<32} {:<28} {:>8} {:>11}  started",
        "job", "status", "trials", "mean reward"
    );
    for d in &dirs {
        let (status, control) = status_of(d);
        let result = job_result(d);
        let done = count_results(d);
        let total = result
            .as_ref()
            .map(|r| r.n_total_trials.to_string())
            .unwrap_or_else(|| "?".into());
        let mean = result
            .as_ref()
            .and_then(|r| r.stats.mean_reward)
            .map_or("-".into(), |m| format!("{m:.3}"));
        let started = control
            .map(|c| c.started_at.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let name = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!(
            "{name:<32} {status:<28} {:>8} {mean:>11}  {started}",
            format!("{done}/{total}")
        );
    }
    println!("{} job(s) in {}", dirs.len(), jobs_dir.display());
    Ok(exit::OK)
}

fn print_json(v: &impl serde::Serialize) -> u8 {
    match serde_json::to_string_pretty(v) {
        Ok(s) => {
            println!("{s}");
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::TRIAL_ERRORS
        }
    }
}

fn load(dir: &Path) -> Result<rollout_runner::report::JobReport, u8> {
    rollout_runner::report::JobReport::load(dir).map_err(|e| {
        eprintln!("error: {e}");
        exit::USAGE
    })
}

/// The failed and errored trials of the job in `dir`, with their error kind and log (printed
/// at the end of `rollout run`).
pub fn print_failures(dir: &Path) {
    if let Ok(r) = rollout_runner::report::JobReport::load(dir) {
        let f = rollout_runner::report::failures(dir, &r.trials);
        print!("{}", rollout_runner::report::render_failures(&f));
    }
}

pub fn diff(a: &Path, b: &Path, json: bool) -> u8 {
    let (a, b) = match (load(a), load(b)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(c), _) | (_, Err(c)) => return c,
    };
    let d = rollout_runner::report::diff(&a, &b);
    if json {
        return print_json(&d);
    }
    print!("{}", rollout_runner::report::render_diff(&d));
    exit::OK
}

pub fn export(dir: &Path, format: rollout_runner::report::ExportFormat) -> u8 {
    match load(dir) {
        Ok(r) => {
            print!("{}", rollout_runner::report::export(&r, format));
            exit::OK
        }
        Err(c) => c,
    }
}

pub fn show(dir: &Path, json: bool) -> CliResult {
    if !dir.join("config.json").is_file() {
        return Err(CliError::usage(format!(
            "{} is not a job directory",
            dir.display()
        )));
    }
    let report = match load(dir) {
        Ok(r) => r,
        Err(c) => return Err(CliError::Exit(c)),
    };
    let (status, control) = status_of(dir);
    if json {
        return Ok(print_json(&serde_json::json!({
            "job_dir": dir,
            "status": status,
            "control": control,
            "result": report.result,
            "trials": report.trials,
            "unreadable": report.unreadable,
        })));
    }
    println!("job {}: {status}", dir.display());
    if let Some(c) = &control {
        println!(
            "id {}  pid {} on {}  started {}  updated {}",
            c.run_id, c.pid, c.host, c.started_at, c.updated_at
        );
        if !c.active_trials.is_empty() {
            println!("running: {}", c.active_trials.join(", "));
        }
    }
    match &report.result {
        Some(r) => print!("{}", crate::summary::render(r, dir)),
        None => println!(
            "{} trial(s) finished so far; no job result yet",
            count_results(dir)
        ),
    }
    if !report.trials.is_empty() {
        println!();
        print!("{}", rollout_runner::report::render_trials(&report.trials));
    }
    for p in &report.unreadable {
        println!("unreadable: {}", p.display());
    }
    let f = rollout_runner::report::failures(dir, &report.trials);
    print!("{}", rollout_runner::report::render_failures(&f));
    Ok(exit::OK)
}
