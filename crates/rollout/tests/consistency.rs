//! One way into the runner (issue 20): the same task gets the same outcome whichever entry point
//! runs it. Edge tasks (no network, no tests/test.sh, an invalid task.toml, a compose task, a
//! plain task, a network allowlist (enforced on Docker by the egress proxy), a task asking for a
//! GPU this machine lacks, refused per trial as `environment_unsupported`) go through `rollout run`,
//! `rollout jobs resume`, `rollout preflight` and `rollout serve`'s `/api/v1/jobs`; an experiment
//! goes through run, resume and preflight; an executor archive through `rollout run --archive` and
//! `rollout serve`'s `/submit`. Against the real Docker engine.

mod common;

use common::serve::{client, multipart, Server};
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// What happened to one task.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// The job was refused before anything ran (exit 2, HTTP 400).
    Refused,
    /// The trial ended with this reward.
    Reward(String),
    /// The trial ended in this error kind.
    Error(String),
}

impl Outcome {
    /// Whether preflight should pass: the task runs (to a reward or a runtime error), rather than
    /// being refused or failing as task_invalid.
    fn runnable(&self) -> bool {
        match self {
            Outcome::Refused => false,
            Outcome::Error(kind) => kind != "task_invalid" && kind != "environment_unsupported",
            Outcome::Reward(_) => true,
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    if rel.ends_with(".sh") {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

const TOML: &str = "version = \"1.0\"\n[agent]\ntimeout_sec = 120.0\n[verifier]\ntimeout_sec = 60.0\n[environment]\nworkdir = \"/app\"\nmemory_mb = 512\n";

/// A task whose oracle writes `ok` to /app/answer.txt and whose verifier rewards it.
fn plain_task(root: &Path, name: &str, toml: &str) -> PathBuf {
    let t = root.join(name);
    write(&t, "instruction.md", "Write ok to /app/answer.txt.\n");
    write(&t, "task.toml", toml);
    write(
        &t,
        "environment/Dockerfile",
        "FROM debian:bookworm-slim\nWORKDIR /app\n",
    );
    write(
        &t,
        "solution/solve.sh",
        "#!/bin/bash\necho ok > /app/answer.txt\n",
    );
    write(
        &t,
        "tests/test.sh",
        "#!/bin/bash\necho 0 > /logs/verifier/reward.txt\n[ \"$(cat /app/answer.txt 2>/dev/null)\" = ok ] && echo 1 > /logs/verifier/reward.txt\nexit 0\n",
    );
    t
}

/// The edge tasks, each in its own directory under `root`: name → task directory.
fn edge_tasks(root: &Path) -> BTreeMap<&'static str, PathBuf> {
    let mut tasks = BTreeMap::new();
    tasks.insert("plain", plain_task(root, "plain", TOML));
    let no_net = plain_task(
        root,
        "no-network",
        &TOML.replace(
            "[environment]\n",
            "[environment]\nnetwork_mode = \"no-network\"\n",
        ),
    );
    // Reward 1 only when the network is really off.
    write(
        &no_net,
        "tests/test.sh",
        "#!/bin/bash\nif timeout 10 bash -c 'exec 3<>/dev/tcp/deb.debian.org/80' 2>/dev/null; then echo 0; else echo 1; fi > /logs/verifier/reward.txt\n",
    );
    tasks.insert("no-network", no_net);
    let no_tests = plain_task(root, "no-tests", TOML);
    std::fs::remove_file(no_tests.join("tests/test.sh")).unwrap();
    tasks.insert("no-tests", no_tests);
    tasks.insert(
        "bad-toml",
        plain_task(
            root,
            "bad-toml",
            "version = \"1.0\"\n[agent\ntimeout_sec = \n",
        ),
    );
    let compose = plain_task(root, "compose", TOML);
    write(
        &compose,
        "environment/docker-compose.yaml",
        "services:\n  main:\n    depends_on:\n      side:\n        condition: service_started\n  side:\n    image: debian:bookworm-slim\n    command: [\"sleep\", \"300\"]\n",
    );
    tasks.insert("compose", compose);
    tasks.insert(
        "allowlist",
        plain_task(
            root,
            "allowlist",
            &TOML.replace(
                "[environment]\n",
                "[environment]\nnetwork_mode = \"allowlist\"\nallowed_hosts = [\"example.com\"]\n",
            ),
        ),
    );
    tasks.insert(
        "gpu",
        plain_task(
            root,
            "gpu",
            &TOML.replace("[environment]\n", "[environment]\ngpus = 1\n"),
        ),
    );
    tasks
}

/// The outcome of the only trial of the job in `job_dir`, after a command that exited `code`.
fn job_outcome(code: Option<i32>, job_dir: &Path, out: &Output) -> Outcome {
    if code == Some(2) {
        return Outcome::Refused;
    }
    let trials: Vec<PathBuf> = std::fs::read_dir(job_dir)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", job_dir.display(), text(out)))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("result.json").is_file())
        .collect();
    assert_eq!(trials.len(), 1, "{trials:?}\n{}", text(out));
    trial_outcome(&read_json(&trials[0].join("result.json")))
}

/// A trial result (result.json) as an outcome.
fn trial_outcome(r: &Value) -> Outcome {
    match r["error"]["type"].as_str() {
        Some(kind) => Outcome::Error(kind.to_string()),
        None => Outcome::Reward(format!("{}", r["reward"])),
    }
}

/// `rollout run -p TASK -a oracle`.
fn via_run(task: &Path, jobs: &Path, name: &str) -> Outcome {
    let out = rollout_cmd()
        .args(["run", "-p", task.to_str().unwrap(), "-a", "oracle"])
        .args(["-o", jobs.to_str().unwrap(), "--job-name", name])
        .output()
        .unwrap();
    job_outcome(out.status.code(), &jobs.join(name), &out)
}

/// `rollout jobs resume DIR` of a job directory that holds only the job's configuration (a job
/// whose process died before it ran anything).
fn via_resume(task: &Path, jobs: &Path, name: &str) -> Outcome {
    let dir = jobs.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let config = rollout_core::JobConfig {
        name: Some(name.to_string()),
        jobs_dir: Some(jobs.to_path_buf()),
        tasks: vec![rollout_core::job_config::TaskSpec {
            path: task.to_path_buf(),
            ..Default::default()
        }],
        agents: vec![rollout_core::job_config::AgentSpec {
            name: "oracle".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    let out = rollout_cmd()
        .args(["jobs", "resume", dir.to_str().unwrap()])
        .output()
        .unwrap();
    job_outcome(out.status.code(), &dir, &out)
}

/// `rollout preflight -p TASK -a oracle --json`: whether it passes.
fn via_preflight(args: &[&str], cwd: &Path) -> (bool, Value) {
    let out = rollout_cmd()
        .current_dir(cwd)
        .arg("preflight")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(
        out.status.code(),
        Some(if report["ok"] == true { 0 } else { 1 }),
        "{}",
        text(&out)
    );
    (report["ok"] == true, report)
}

fn tar_gz(src: &Path, entries: &[&str], archive: &Path) {
    let st = Command::new("tar")
        .arg("czf")
        .arg(archive)
        .arg("-C")
        .arg(src)
        .args(entries)
        .status()
        .unwrap();
    assert!(st.success());
}

async fn get(server: &Server, path: &str) -> Value {
    client()
        .get(server.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Poll the job (bounded) until it is final; its trials' results.
async fn finished_trials(server: &Server, job_path: &str, trials_path: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let job = get(server, job_path).await;
        let status = job["status"].as_str().unwrap_or_default().to_string();
        if ["completed", "failed", "cancelled", "interrupted"].contains(&status.as_str()) {
            assert_eq!(status, "completed", "{job}\n{}", server.log());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{job_path} not finished: {job}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let trials = get(server, trials_path).await;
    trials
        .as_array()
        .or_else(|| trials["trials"].as_array())
        .or_else(|| trials["tasks"].as_array())
        .unwrap_or_else(|| panic!("no trials in {trials}"))
        .clone()
}

/// `POST /api/v1/jobs` with the task as the uploaded archive's `tasks/<name>`.
async fn via_api(server: &Server, task: &Path, scratch: &Path, name: &str) -> Outcome {
    let src = scratch.join(format!("api-{name}"));
    std::fs::create_dir_all(src.join("tasks")).unwrap();
    let st = Command::new("cp")
        .arg("-r")
        .arg(task)
        .arg(src.join("tasks").join(name))
        .status()
        .unwrap();
    assert!(st.success());
    let archive = scratch.join(format!("api-{name}.tar.gz"));
    tar_gz(&src, &["tasks"], &archive);
    let config = json!({"agents": [{"name": "oracle"}], "datasets": [{"path": "tasks"}]});
    let (ct, body) = multipart(&[
        ("config", None, config.to_string().as_bytes()),
        (
            "archive",
            Some("tasks.tar.gz"),
            &std::fs::read(&archive).unwrap(),
        ),
    ]);
    let r = client()
        .post(server.url("/api/v1/jobs"))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    if status == 400 {
        return Outcome::Refused;
    }
    assert_eq!(status, 202, "{v}\n{}", server.log());
    let id = v["id"].as_str().unwrap().to_string();
    let trials = finished_trials(
        server,
        &format!("/api/v1/jobs/{id}"),
        &format!("/api/v1/jobs/{id}/trials"),
    )
    .await;
    assert_eq!(trials.len(), 1, "{trials:?}");
    trial_outcome(&trials[0]["result"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_point_gives_each_edge_task_the_same_outcome() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let tasks = edge_tasks(&root.join("tasks"));
    let server = Server::spawn(
        &root.join("data"),
        &root.join("cache"),
        &root.join("server.log"),
        &[],
        &[],
    );
    let mut table = Vec::new();
    for (name, task) in &tasks {
        let (t, j) = (task.clone(), root.join("jobs"));
        let n = name.to_string();
        let run = tokio::task::spawn_blocking(move || via_run(&t, &j, &format!("run-{n}")))
            .await
            .unwrap();
        let (t, j) = (task.clone(), root.join("jobs"));
        let n = name.to_string();
        let resume =
            tokio::task::spawn_blocking(move || via_resume(&t, &j, &format!("resume-{n}")))
                .await
                .unwrap();
        let t = task.clone();
        let r = root.to_path_buf();
        let (preflight_ok, report) = tokio::task::spawn_blocking(move || {
            via_preflight(&["-p", t.to_str().unwrap(), "-a", "oracle"], &r)
        })
        .await
        .unwrap();
        let api = via_api(&server, task, root, name).await;
        eprintln!(
            "{name:<12} run {run:?}  resume {resume:?}  api {api:?}  preflight ok {preflight_ok}"
        );
        assert_eq!(resume, run, "{name}: resume and run disagree");
        assert_eq!(api, run, "{name}: serve /api/v1/jobs and run disagree");
        assert_eq!(
            preflight_ok,
            run.runnable(),
            "{name}: preflight and run disagree ({run:?}): {report:#}"
        );
        table.push((*name, run));
    }
    // And each outcome is the one the task asks for.
    let expect = |name: &str| match name {
        "plain" | "no-network" | "compose" => Outcome::Reward("1.0".into()),
        "no-tests" | "bad-toml" => Outcome::Error("task_invalid".into()),
        "allowlist" => Outcome::Reward("1.0".into()),
        "gpu" => Outcome::Error("environment_unsupported".into()),
        _ => unreachable!(),
    };
    for (name, outcome) in &table {
        assert_eq!(outcome, &expect(name), "{name}");
    }
}

/// A git repository for executor archives to check out.
fn git_repo(root: &Path) -> (PathBuf, String) {
    let repo = root.join("proj");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    std::fs::write(repo.join("README.md"), "project\n").unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "init"]);
    let commit = git(&["rev-parse", "HEAD"]);
    (repo, commit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_archive_scores_the_same_through_run_and_submit() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (repo, commit) = git_repo(root);
    let src = root.join("src");
    for (id, check) in [
        ("solvable", "grep -q solved solved.txt\n"),
        ("unsolvable", "grep -q impossible README.md\n"),
    ] {
        let t = src.join("tasks").join(id);
        write(
            &t,
            "workspace.yaml",
            &format!(
                "repo: file://{}\nversion: \"1\"\nbase_commit: {commit}\nlanguage: bash\n",
                repo.display()
            ),
        );
        write(&t, "prompt.md", "Create solved.txt.\n");
        write(&t, "tests/test_main.sh", check);
    }
    write(
        &src,
        "agent_code/agent.sh",
        "cd \"$REPO_DIR\" && echo solved > solved.txt\n",
    );
    let archive = root.join("batch.tar.gz");
    tar_gz(&src, &["tasks", "agent_code"], &archive);

    // rollout run --archive
    let jobs = root.join("jobs");
    let out = rollout_cmd()
        .args(["run", "--archive", archive.to_str().unwrap()])
        .args([
            "--executor-image",
            "debian:bookworm-slim",
            "--ca-certs",
            "none",
        ])
        .args(["-o", jobs.to_str().unwrap(), "--job-name", "run"])
        .env("ROLLOUT_CACHE_DIR", root.join("cache"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "a reward of 0 is no error: {}",
        text(&out)
    );
    let mut by_run = BTreeMap::new();
    for e in std::fs::read_dir(jobs.join("run")).unwrap() {
        let p = e.unwrap().path().join("result.json");
        if p.is_file() {
            let r = read_json(&p);
            by_run.insert(
                r["task_name"].as_str().unwrap().to_string(),
                trial_outcome(&r),
            );
        }
    }

    // rollout serve: POST /submit
    let parent = root.to_str().unwrap().to_string();
    let server = Server::spawn(
        &root.join("data"),
        &root.join("cache"),
        &root.join("server.log"),
        &["--allow-local-paths", parent.as_str()],
        &[],
    );
    let (ct, body) = multipart(&[(
        "archive",
        Some("batch.tar.gz"),
        &std::fs::read(&archive).unwrap(),
    )]);
    let r = client()
        .post(server.url("/submit"))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "{}", server.log());
    let v: Value = r.json().await.unwrap();
    let id = v["batch_id"].as_str().unwrap().to_string();
    let trials = finished_trials(
        &server,
        &format!("/api/v1/jobs/{id}"),
        &format!("/api/v1/jobs/{id}/trials"),
    )
    .await;
    let by_submit: BTreeMap<String, Outcome> = trials
        .iter()
        .map(|t| {
            (
                t["task_name"].as_str().unwrap().to_string(),
                trial_outcome(&t["result"]),
            )
        })
        .collect();
    eprintln!("run {by_run:?}\nsubmit {by_submit:?}");
    assert_eq!(by_submit, by_run);
    assert_eq!(by_run["solvable"], Outcome::Reward("1.0".into()));
    assert_eq!(by_run["unsolvable"], Outcome::Reward("0.0".into()));
}

fn agentlab(name: &str) -> PathBuf {
    repo().join("tests/fixtures/agentlab").join(name)
}

/// The experiment's trials as outcomes, by task id (from the seed's layout).
fn experiment_outcomes(run: &Path) -> BTreeMap<String, Outcome> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(run).unwrap() {
        let p = e.unwrap().path().join("result.json");
        if p.is_file() {
            let r = read_json(&p);
            out.insert(
                r["task_name"].as_str().unwrap().to_string(),
                trial_outcome(&r),
            );
        }
    }
    out
}

#[test]
fn an_experiment_gets_the_same_outcome_through_run_resume_and_preflight() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    // The fixture's experiment names files beside it: work on a copy.
    let dir = tmp.path().join("exp");
    let st = Command::new("cp")
        .arg("-r")
        .arg(agentlab(""))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    let exp = dir.join("experiment.yaml");
    let (ok, report) = via_preflight(&[exp.to_str().unwrap()], tmp.path());
    assert!(ok, "{report:#}");
    let out = rollout_cmd()
        .current_dir(tmp.path())
        .args(["run", exp.to_str().unwrap(), "--job-name", "run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = tmp.path().join(".lab/runs/run");
    let by_run = experiment_outcomes(&run);
    assert_eq!(by_run.len(), 2, "{by_run:?}");
    assert!(
        by_run.values().all(|o| *o == Outcome::Reward("1.0".into())),
        "{by_run:?}"
    );
    // Resumed from scratch: every trial runs again, through `rollout jobs resume`.
    for e in std::fs::read_dir(&run).unwrap() {
        let p = e.unwrap().path();
        if p.join("result.json").is_file() {
            std::fs::remove_file(p.join("result.json")).unwrap();
        }
    }
    let out = rollout_cmd()
        .current_dir(tmp.path())
        .args(["jobs", "resume", run.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(experiment_outcomes(&run), by_run);

    // A network policy no provider here can enforce: refused by preflight and by run alike.
    let text_of = std::fs::read_to_string(&exp).unwrap();
    let allow = dir.join("allowlist.yaml");
    std::fs::write(&allow, text_of.replace("mode: none", "mode: allowlist")).unwrap();
    let (ok, report) = via_preflight(&[allow.to_str().unwrap()], tmp.path());
    assert!(!ok, "{report:#}");
    let out = rollout_cmd()
        .current_dir(tmp.path())
        .args(["run", allow.to_str().unwrap(), "--job-name", "refused"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!tmp.path().join(".lab/runs/refused").exists());
}
