//! `rollout reproduce <artifact> [--run]`: the plan that made an artifact (git commit, build
//! steps, run steps, inputs that must come from elsewhere) and, with `--run`, its execution in a
//! fresh clone with a comparison of the result. A trial result is reproduced by running the same
//! trial again (same task digest, agent configuration, job settings) and comparing rewards.

use super::{open_store, resolve_artifact, short, store_path};
use clap::Args;
use rollout_launch::exit;
use rollout_store::{FileRef, Job, JobKind, Store};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct ReproduceArgs {
    /// The artifact: a recorded file, or a hash (unique prefix of at least 6 hex digits).
    pub artifact: String,
    /// Execute the plan (in a fresh clone; a trial: run it again) and compare the outcome.
    #[arg(long)]
    pub run: bool,
    /// Kill a step (or the re-run trial) after this many seconds.
    #[arg(long, default_value_t = 3600.0)]
    pub step_timeout: f64,
    /// Keep the fresh clone (its path is printed) instead of removing it.
    #[arg(long)]
    pub keep: bool,
    /// Print the plan (and the outcome) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Where an input that no step of the plan produces comes from.
#[derive(Debug, Serialize)]
struct ExternalInput {
    path: String,
    hash: String,
    /// `git` (in the commit), `working-tree` (copied from the project: same content),
    /// `in-place` (outside the repository, unchanged), or `missing`/`changed`.
    source: &'static str,
}

#[derive(Debug, Serialize)]
struct Plan {
    artifact: String,
    path: String,
    git_repo: Option<String>,
    git_commit: Option<String>,
    git_dirty: bool,
    build_steps: Vec<Step>,
    run_steps: Vec<Step>,
    external_inputs: Vec<ExternalInput>,
}

#[derive(Debug, Serialize, Clone)]
struct Step {
    job: String,
    command: String,
    argv: Vec<String>,
    cwd: String,
}

#[derive(Debug, Serialize)]
struct Outcome {
    matches: bool,
    expected: String,
    reproduced: Option<String>,
    steps: Vec<StepOutcome>,
    checkout: Option<String>,
}

#[derive(Debug, Serialize)]
struct StepOutcome {
    command: String,
    exit_code: Option<i32>,
    seconds: f64,
}

pub fn main(args: ReproduceArgs) -> u8 {
    let mut store = match open_store() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let hash = match resolve_artifact(&mut store, &args.artifact) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let (producer, path) = match store.producer(&hash, None) {
        Ok(Some(p)) => p,
        Ok(None) => {
            eprintln!(
                "error: artifact {} was not produced by any recorded job (it is a source: nothing to reproduce)",
                short(&hash)
            );
            return exit::USAGE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    if producer.kind == JobKind::Trial {
        return trial(&args, &producer);
    }
    let plan = match plan(&store, &hash, &path, &producer) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    if !args.run {
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&plan).unwrap_or_default()
            );
        } else {
            print_plan(&plan);
        }
        return exit::OK;
    }
    if !args.json {
        print_plan(&plan);
    }
    match execute(&plan, &args) {
        Ok(outcome) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"plan": plan, "outcome": outcome})
                    )
                    .unwrap_or_default()
                );
            } else if outcome.matches {
                println!(
                    "reproduced: {} has the recorded hash {}",
                    plan.path,
                    short(&plan.artifact)
                );
            } else {
                println!(
                    "NOT reproduced: {} hashes to {} instead of {}",
                    plan.path,
                    outcome
                        .reproduced
                        .as_deref()
                        .map(short)
                        .unwrap_or("(missing)"),
                    short(&plan.artifact)
                );
            }
            if outcome.matches {
                exit::OK
            } else {
                exit::TRIAL_ERRORS
            }
        }
        Err(e) => {
            eprintln!("error: reproduce: {e}");
            exit::TRIAL_ERRORS
        }
    }
}

fn step(j: &Job) -> Step {
    Step {
        job: j.uid.clone(),
        command: j.command.clone(),
        argv: j.argv.clone(),
        cwd: j.cwd.clone(),
    }
}

fn plan(store: &Store, hash: &str, path: &str, producer: &Job) -> Result<Plan, String> {
    let lineage = store.lineage_jobs(hash).map_err(|e| e.to_string())?;
    let sessions: HashSet<&str> = lineage.iter().map(|j| j.session.as_str()).collect();
    let in_lineage: HashSet<&str> = lineage.iter().map(|j| j.uid.as_str()).collect();
    // Build steps: those of the lineage, and every build step of its sessions recorded before
    // the artifact's producer.
    let mut builds: Vec<Job> = Vec::new();
    for s in &sessions {
        for j in store.session_jobs(s).map_err(|e| e.to_string())? {
            if j.kind == JobKind::Build
                && j.started_at <= producer.started_at
                && !in_lineage.contains(j.uid.as_str())
            {
                builds.push(j);
            }
        }
    }
    builds.extend(lineage.iter().filter(|j| j.kind == JobKind::Build).cloned());
    builds.sort_by(|a, b| a.started_at.cmp(&b.started_at));
    let runs: Vec<&Job> = lineage
        .iter()
        .filter(|j| j.kind != JobKind::Build)
        .collect();
    let git = producer.git.clone();
    // Inputs no step produces must come from git, the working tree, or stay in place.
    let mut produced: HashSet<(&str, &str)> = HashSet::new();
    let mut external = Vec::new();
    let mut seen = HashSet::new();
    for j in builds.iter().chain(runs.iter().copied()) {
        for i in &j.inputs {
            if !produced.contains(&(i.path.as_str(), i.hash.as_str()))
                && seen.insert((i.path.clone(), i.hash.clone()))
            {
                external.push(ExternalInput {
                    path: i.path.clone(),
                    hash: i.hash.clone(),
                    source: input_source(git.as_ref(), i),
                });
            }
        }
        for o in &j.outputs {
            produced.insert((o.path.as_str(), o.hash.as_str()));
        }
    }
    Ok(Plan {
        artifact: hash.to_string(),
        path: path.to_string(),
        git_repo: git.as_ref().map(|g| g.repo.clone()),
        git_commit: git.as_ref().map(|g| g.commit.clone()),
        git_dirty: git.as_ref().is_some_and(|g| g.dirty),
        build_steps: builds.iter().map(step).collect(),
        run_steps: runs.iter().map(|j| step(j)).collect(),
        external_inputs: external,
    })
}

fn input_source(git: Option<&rollout_store::git::GitInfo>, i: &FileRef) -> &'static str {
    let p = Path::new(&i.path);
    if let Some(g) = git {
        if let Ok(rel) = p.strip_prefix(&g.repo) {
            let spec = format!("{}:{}", g.commit, rel.display());
            if let Some(bytes) = git_blob(Path::new(&g.repo), &spec) {
                if blake3::hash(&bytes).to_hex().as_str() == i.hash {
                    return "git";
                }
            }
            return match rollout_store::file_digest(p, false) {
                Ok(d) if d.hash == i.hash => "working-tree",
                Ok(_) => "changed",
                Err(_) => "missing",
            };
        }
    }
    match rollout_store::file_digest(p, false) {
        Ok(d) if d.hash == i.hash => "in-place",
        Ok(_) => "changed",
        Err(_) => "missing",
    }
}

/// The bytes of `commit:path` in a repository (bounded by a timeout; None when absent).
fn git_blob(repo: &Path, spec: &str) -> Option<Vec<u8>> {
    let out = run_bounded(
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["cat-file", "blob", spec])
            .stdin(Stdio::null())
            .stderr(Stdio::null()),
        Duration::from_secs(30),
    )?;
    Some(out)
}

/// Run a command capturing stdout (up to 256 MiB), killing it at the deadline.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut child = cmd.stdout(Stdio::piped()).spawn().ok()?;
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stdout).take(256 << 20).read_to_end(&mut buf);
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        buf
    });
    let status = wait_deadline(&mut child, Instant::now() + timeout)?;
    let out = reader.join().ok()?;
    status.success().then_some(out)
}

fn wait_deadline(
    child: &mut std::process::Child,
    deadline: Instant,
) -> Option<std::process::ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                // The step runs in its own process group: end all of it.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

fn print_plan(p: &Plan) {
    println!("artifact {} ({})", short(&p.artifact), p.path);
    match (&p.git_repo, &p.git_commit) {
        (Some(r), Some(c)) => println!(
            "1. check out {r} at {c}{}",
            if p.git_dirty {
                " (the work tree had uncommitted changes when recorded)"
            } else {
                ""
            }
        ),
        _ => println!("1. no git repository recorded: steps run in their original directories"),
    }
    println!("2. build steps:");
    if p.build_steps.is_empty() {
        println!("   (none)");
    }
    for s in &p.build_steps {
        println!("   {}  (in {})", s.command, s.cwd);
    }
    println!("3. run steps:");
    for s in &p.run_steps {
        println!("   {}  (in {})", s.command, s.cwd);
    }
    if !p.external_inputs.is_empty() {
        println!("inputs no step produces:");
        for i in &p.external_inputs {
            println!("   {:<12} {}  {}", i.source, short(&i.hash), i.path);
        }
    }
}

fn execute(plan: &Plan, args: &ReproduceArgs) -> Result<Outcome, String> {
    let (Some(repo), Some(commit)) = (&plan.git_repo, &plan.git_commit) else {
        return Err(
            "the artifact's job did not run in a git repository: there is no commit to check out; \
             run its steps by hand (see the plan)"
                .into(),
        );
    };
    for i in &plan.external_inputs {
        if matches!(i.source, "missing" | "changed") {
            return Err(format!(
                "input {} ({}) is {} and no recorded step produces it: restore it first",
                i.path,
                short(&i.hash),
                i.source
            ));
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix("rollout-reproduce-")
        .tempdir()
        .map_err(|e| format!("creating a temporary directory: {e}"))?;
    let checkout = tmp.path().join("checkout");
    let timeout = Duration::from_secs_f64(args.step_timeout.max(1.0));
    let clone = run_bounded(
        Command::new("git")
            .args(["clone", "--quiet", "--no-checkout"])
            .arg(repo)
            .arg(&checkout)
            .stdin(Stdio::null())
            .stderr(Stdio::null()),
        timeout,
    );
    if clone.is_none() {
        return Err(format!("git clone {repo} failed"));
    }
    if run_bounded(
        Command::new("git")
            .arg("-C")
            .arg(&checkout)
            .args(["checkout", "--quiet", commit])
            .stdin(Stdio::null())
            .stderr(Stdio::null()),
        timeout,
    )
    .is_none()
    {
        return Err(format!("git checkout {commit} failed in the fresh clone"));
    }
    let map = |p: &str| -> String {
        match Path::new(p).strip_prefix(repo) {
            Ok(rel) => checkout.join(rel).to_string_lossy().into_owned(),
            Err(_) => p.to_string(),
        }
    };
    for i in &plan.external_inputs {
        if i.source == "working-tree" {
            let dest = PathBuf::from(map(&i.path));
            if let Some(d) = dest.parent() {
                std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            }
            std::fs::copy(&i.path, &dest)
                .map_err(|e| format!("copying {} into the clone: {e}", i.path))?;
        }
    }
    let mut steps = Vec::new();
    for s in plan.build_steps.iter().chain(&plan.run_steps) {
        let argv: Vec<String> = s
            .argv
            .iter()
            .map(|a| a.replace(repo.as_str(), &map(repo)))
            .collect();
        let Some((prog, rest)) = argv.split_first() else {
            continue;
        };
        let cwd = map(&s.cwd);
        std::fs::create_dir_all(&cwd).map_err(|e| format!("{cwd}: {e}"))?;
        eprintln!("reproduce: running `{}` in {cwd}", s.command);
        let stderr = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let mut child = Command::new(prog)
            .args(rest)
            .current_dir(&cwd)
            .env("PWD", &cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stderr))
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting `{}`: {e}", s.command))?;
        let status = wait_deadline(&mut child, Instant::now() + timeout);
        let code = status.and_then(|s| s.code());
        steps.push(StepOutcome {
            command: s.command.clone(),
            exit_code: code,
            seconds: t0.elapsed().as_secs_f64(),
        });
        if status.is_none() {
            return Err(format!(
                "step `{}` ran longer than --step-timeout {} s",
                s.command, args.step_timeout
            ));
        }
        if code != Some(0) {
            return Err(format!(
                "step `{}` failed with exit {}",
                s.command,
                code.map_or("signal".into(), |c| c.to_string())
            ));
        }
    }
    let target = map(&plan.path);
    let reproduced = rollout_store::file_digest(Path::new(&target), false)
        .ok()
        .map(|d| d.hash);
    let kept = if args.keep {
        let p = tmp.keep();
        eprintln!(
            "reproduce: the clone is kept at {}",
            p.join("checkout").display()
        );
        Some(p.join("checkout").to_string_lossy().into_owned())
    } else {
        None
    };
    Ok(Outcome {
        matches: reproduced.as_deref() == Some(plan.artifact.as_str()),
        expected: plan.artifact.clone(),
        reproduced,
        steps,
        checkout: kept,
    })
}

// ---------------------------------------------------------------------------------------------
// Trials

fn trial(args: &ReproduceArgs, job: &Job) -> u8 {
    let m = &job.metadata;
    let get = |k: &str| m.get(k).and_then(|v| v.as_str()).map(String::from);
    let task_path = get("task_path").unwrap_or_default();
    let recorded_digest = get("task_digest");
    let current_digest = rollout_store::tree_digest(Path::new(&task_path))
        .ok()
        .map(|d| d.0);
    let recorded_reward = m.get("reward").and_then(|r| r.as_f64());
    let agent = m.get("agent").cloned().unwrap_or_default();
    let recorded_bases: BTreeMap<String, String> = m
        .get("base_images")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let bases_now = current_base_ids(recorded_bases.keys());
    let bases_changed: Vec<&String> = recorded_bases
        .iter()
        .filter(|(r, id)| bases_now.get(*r) != Some(*id))
        .map(|(r, _)| r)
        .collect();
    let plan = serde_json::json!({
        "trial": get("trial_name"),
        "job": job.uid,
        "task_path": task_path,
        "task_digest": recorded_digest,
        "task_digest_now": current_digest,
        "image": get("image"),
        "image_id": get("image_id"),
        "base_images": recorded_bases,
        "base_images_now": bases_now,
        "base_images_changed": bases_changed,
        "agent": agent,
        "reward": recorded_reward,
    });
    if !args.json || !args.run {
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&plan).unwrap_or_default()
            );
        } else {
            println!(
                "trial {} (job {})",
                get("trial_name").unwrap_or_default(),
                job.uid
            );
            println!("  task      {task_path}");
            println!(
                "  digest    {} (now {})",
                recorded_digest.as_deref().unwrap_or("?"),
                current_digest.as_deref().unwrap_or("unreadable")
            );
            println!(
                "  image     {} {}",
                get("image").unwrap_or_default(),
                get("image_id").unwrap_or_default()
            );
            for (reference, id) in &recorded_bases {
                let now = bases_now.get(reference).map_or("absent", String::as_str);
                let note = if now == id {
                    String::new()
                } else {
                    format!(" (now {now}: a re-run would build on a different base)")
                };
                println!("  base      {reference} {id}{note}");
            }
            println!("  agent     {agent}");
            println!(
                "  reward    {}",
                recorded_reward.map_or("none".into(), |r| r.to_string())
            );
            println!("plan: run this trial again with the same task, agent and job settings, compare rewards");
        }
        if !args.run {
            return exit::OK;
        }
    }
    if recorded_digest.is_none() || recorded_digest != current_digest {
        eprintln!(
            "error: the task directory {task_path} is not the one the trial ran (recorded digest {}, now {}): restore it first",
            recorded_digest.as_deref().unwrap_or("?"),
            current_digest.as_deref().unwrap_or("unreadable")
        );
        return exit::USAGE;
    }
    let mut config = m
        .get("job_config")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    if let Some(o) = config.as_object_mut() {
        for k in ["name", "jobs_dir", "datasets", "archives", "shuffle_seed"] {
            o.remove(k);
        }
        o.insert("tasks".into(), serde_json::json!([{ "path": task_path }]));
        o.insert("agents".into(), serde_json::json!([agent]));
        o.insert("n_attempts".into(), serde_json::json!(1));
        o.insert("n_concurrent_trials".into(), serde_json::json!(1));
    }
    let tmp = match tempfile::Builder::new()
        .prefix("rollout-reproduce-")
        .tempdir()
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: creating a temporary directory: {e}");
            return exit::TRIAL_ERRORS;
        }
    };
    let job_file = tmp.path().join("job.json");
    if let Err(e) = std::fs::write(
        &job_file,
        serde_json::to_vec_pretty(&config).unwrap_or_default(),
    ) {
        eprintln!("error: writing {}: {e}", job_file.display());
        return exit::TRIAL_ERRORS;
    }
    eprintln!("reproduce: running the trial again");
    // In this process, through the launcher `rollout run` uses: the same job file, placed in
    // the temporary directory as `-o DIR --job-name reproduce` would.
    if let Err(e) = rerun(&job_file, tmp.path(), args.step_timeout) {
        for line in e.lines() {
            eprintln!("error: {line}");
        }
    }
    let job_dir = tmp.path().join("reproduce");
    let trial = std::fs::read_dir(&job_dir).ok().and_then(|rd| {
        rd.flatten()
            .map(|e| e.path().join("result.json"))
            .find(|p| p.is_file())
    });
    let Some(result) = trial
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        eprintln!(
            "error: the re-run trial left no result in {}",
            job_dir.display()
        );
        return exit::TRIAL_ERRORS;
    };
    let reward = result.get("reward").and_then(|r| r.as_f64());
    let image_id = result
        .pointer("/environment/image_id")
        .and_then(|v| v.as_str())
        .map(String::from);
    let matches = reward == recorded_reward;
    let outcome = serde_json::json!({
        "matches": matches,
        "reward": reward,
        "recorded_reward": recorded_reward,
        "image_id": image_id,
        "recorded_image_id": get("image_id"),
        "base_images": result.pointer("/environment/base_images"),
        "recorded_base_images": recorded_bases,
        "trial_id": result.get("id"),
    });
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"plan": plan, "outcome": outcome}))
                .unwrap_or_default()
        );
    } else {
        if image_id != get("image_id") {
            println!(
                "note: the environment image differs: {} now, {} then",
                image_id.as_deref().unwrap_or("?"),
                get("image_id").unwrap_or_default()
            );
        }
        let rerun_bases: BTreeMap<String, String> = result
            .pointer("/environment/base_images")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        for (reference, id) in &recorded_bases {
            if rerun_bases.get(reference) != Some(id) {
                println!(
                    "note: base image {reference} differs: {} now, {id} then",
                    rerun_bases.get(reference).map_or("?", String::as_str)
                );
            }
        }
        if matches {
            println!(
                "reproduced: reward {} as recorded",
                reward.map_or("none".into(), |r| r.to_string())
            );
        } else {
            println!(
                "NOT reproduced: reward {} instead of {}",
                reward.map_or("none".into(), |r| r.to_string()),
                recorded_reward.map_or("none".into(), |r| r.to_string())
            );
        }
    }
    if matches {
        exit::OK
    } else {
        exit::TRIAL_ERRORS
    }
}

/// Run the job file `job_file` as `rollout run JOB_FILE -o DIR --job-name reproduce` would
/// (preflight included), bounded by `timeout_secs`.
fn rerun(
    job_file: &Path,
    dir: &Path,
    timeout_secs: f64,
) -> Result<(), rollout_launch::LaunchError> {
    use rollout_launch::{LaunchError, Launcher, Overrides, PlanMode};
    let overrides = Overrides {
        jobs_dir: Some(dir.to_path_buf()),
        job_name: Some("reproduce".into()),
        ..Default::default()
    };
    let config = rollout_launch::job_config(Some(job_file), &overrides)?;
    if !rollout_launch::preflight::gate(&config, Vec::new()) {
        return Err(LaunchError::Invalid(
            "the trial's job did not pass preflight".into(),
        ));
    }
    let launcher = Launcher {
        ca_bundle: rollout_launch::ca::bundle(&rollout_launch::ca::CaCerts::Auto)
            .map_err(LaunchError::Invalid)?,
        store: Some(store_path()),
        argv: std::env::args().collect(),
        script_metrics: true,
        ..Default::default()
    };
    let done = launcher.run_to_end(
        config,
        PlanMode::NewOrResume {
            retry_errors: false,
        },
        Duration::from_secs_f64(timeout_secs.max(1.0)),
    )?;
    for w in &done.provenance_warnings {
        eprintln!("warning: provenance: {w}");
    }
    Ok(())
}

/// The engine ids the local Docker engine has now for `references` (absent ones left out; an
/// unreachable engine gives none).
fn current_base_ids<'a>(references: impl Iterator<Item = &'a String>) -> BTreeMap<String, String> {
    let references: Vec<String> = references.cloned().collect();
    if references.is_empty() {
        return BTreeMap::new();
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return BTreeMap::new();
    };
    rt.block_on(async {
        let mut out = BTreeMap::new();
        let Ok(Ok(provider)) = tokio::time::timeout(
            Duration::from_secs(30),
            rollout_env::docker::DockerProvider::connect(Default::default()),
        )
        .await
        else {
            return out;
        };
        for r in references {
            if let Ok(Ok(info)) =
                tokio::time::timeout(Duration::from_secs(20), provider.client().inspect_image(&r))
                    .await
            {
                out.insert(r, info.id.unwrap_or_default());
            }
        }
        out
    })
}
