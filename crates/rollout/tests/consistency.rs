//! One way into the runner (issue 20): the same task gets the same outcome whichever entry point
//! runs it. Six edge tasks (a network allowlist, enforced on Docker by the egress proxy; no
//! network; no tests/test.sh; an invalid task.toml; a compose task; a plain task), and a task
//! asking for a GPU this machine lacks (refused per trial as `environment_unsupported`), go
//! through `rollout run`, `rollout jobs resume`, `rollout preflight`, an experiment file
//! (`rollout run exp.yaml` and `rollout preflight exp.yaml`), `rollout serve`'s `/submit`
//! (term-executor archive) and its `/api/v1/jobs`. Against the real Docker engine.
//!
//! The experiment and executor formats cannot say everything a task directory can; each such
//! case goes through its closest equivalent, and [`experiment_case`] and [`executor_case`] say
//! why. A well-formed task always gets the same outcome through every door.

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

/// POST a multipart body to the server: the status and the JSON answer.
async fn post(server: &Server, path: &str, fields: &[(&str, Option<&str>, &[u8])]) -> (u16, Value) {
    let (ct, body) = multipart(fields);
    let r = client()
        .post(server.url(path))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
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
    let (status, v) = post(
        server,
        "/api/v1/jobs",
        &[
            ("config", None, config.to_string().as_bytes()),
            (
                "archive",
                Some("tasks.tar.gz"),
                &std::fs::read(&archive).unwrap(),
            ),
        ],
    )
    .await;
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

/// The grader of the plain rows and checks: the agent wrote `ok` to answer.txt.
const ANSWER_CHECK: &str = "[ \"$(cat answer.txt 2>/dev/null)\" = ok ]";
/// Exits 0 only when nothing outside answers (the no-network task's own test, as a check).
const NO_NETWORK_CHECK: &str =
    "if timeout 10 bash -c 'exec 3<>/dev/tcp/deb.debian.org/80' 2>/dev/null; then exit 1; fi";

/// The experiment equivalent of an edge task: a `task_boundary_v2` row and the experiment's
/// network policy (YAML). AgentLab's shape sets the network per experiment
/// (`runtime.policy.network`), not per row, so each task is its own one-row experiment; rows name
/// an image rather than an environment directory, so:
/// - `compose`: a row cannot describe services; its closest equivalent is the plain row.
/// - `bad-toml`: a row has no task.toml; its equivalent is a malformed row, and the format checks
///   its dataset file whole (FORMATS.md §5, as `rollout run rows.jsonl`): the experiment is
///   refused before anything runs (exit 2, no run directory) where run ends the task's trial
///   `task_invalid`. Both are "not runnable", which preflight reports alike.
/// - `no-tests`: a row without a grader (and no benchmark adapter): a task without
///   tests/test.sh, `task_invalid` like the directory.
/// - `gpu`: the experiment has no GPU setting (`resources` are cpus and memory): not a case.
fn experiment_case(name: &str) -> Option<(Value, &'static str)> {
    let row = |extra: Value| {
        let mut task = json!({"id": name, "instruction": "Write ok to answer.txt."});
        task.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"schema_version": "task_boundary_v2", "task": task,
               "workspace_files": {"README.md": "edge task\n"}})
    };
    let graded = row(json!({"grader": ANSWER_CHECK}));
    Some(match name {
        "plain" | "compose" => (graded, "{mode: full}"),
        "no-network" => (row(json!({"grader": NO_NETWORK_CHECK})), "{mode: none}"),
        "allowlist" => (graded, "{mode: allowlist, allowed_hosts: [example.com]}"),
        "no-tests" => (row(json!({})), "{mode: full}"),
        "bad-toml" => (
            row(json!({"grader": ANSWER_CHECK, "workspace": "../outside"})),
            "{mode: full}",
        ),
        _ => return None,
    })
}

/// `rollout run exp.yaml` of the one-row experiment of `name`, and whether `rollout preflight
/// exp.yaml` passes.
fn via_experiment(name: &str, root: &Path) -> Option<(Outcome, bool)> {
    let (row, network) = experiment_case(name)?;
    let dir = root.join(format!("exp-{name}"));
    write(&dir, "rows.jsonl", &format!("{row}\n"));
    let exp = dir.join("experiment.yaml");
    write(
        &dir,
        "experiment.yaml",
        &format!(
            "experiment: {{id: {name}}}\ndataset: {{path: rows.jsonl}}\n\
             design: {{replications: 1, max_concurrency: 1}}\n\
             runtime:\n  agent:\n    command: echo ok > answer.txt\n    image: debian:bookworm-slim\n\
             \x20 policy:\n    timeout_ms: 120000\n    network: {network}\n    resources: {{cpus: 1, memory_mb: 512}}\n"
        ),
    );
    let (preflight_ok, _) = via_preflight(&[exp.to_str().unwrap()], root);
    let runs = root.join("runs");
    let job = format!("exp-{name}");
    let out = rollout_cmd()
        .current_dir(root)
        .args(["run", exp.to_str().unwrap(), "-o", runs.to_str().unwrap()])
        .args(["--job-name", &job])
        .output()
        .unwrap();
    let outcome = job_outcome(out.status.code(), &runs.join(&job), &out);
    if outcome == Outcome::Refused {
        assert!(
            !runs.join(&job).exists(),
            "a refused run leaves no directory"
        );
    }
    Some((outcome, preflight_ok))
}

/// The executor-archive equivalent of an edge task: its `tasks/<id>/` files (term-executor's
/// format, FORMATS.md §4) as (relative path, content). The format has no network policy and no
/// services: a batch's tasks run with the default network in one container each, so
/// `no-network`, `allowlist` and `compose` have as closest equivalent the plain task (a check
/// that needs no network), which must then score as those tasks do. `no-tests` is a task without
/// any check (`task_invalid`, like the directory). `bad-toml` is a task whose workspace.yaml
/// lacks the required `repo`: `/submit` checks an archive whole and answers 400 (the archive is
/// refused, as an invalid task.toml makes the task not runnable). No GPU setting: `gpu` is not
/// a case.
fn executor_case(name: &str, repo: &Path, commit: &str) -> Option<Vec<(String, String)>> {
    let workspace = format!(
        "repo: file://{}\nversion: \"1\"\nbase_commit: {commit}\nlanguage: bash\n",
        repo.display()
    );
    let mut files = vec![(
        "prompt.md".to_string(),
        "Write ok to answer.txt.\n".to_string(),
    )];
    match name {
        "plain" | "no-network" | "allowlist" | "compose" => {
            files.push(("workspace.yaml".into(), workspace));
            files.push(("tests/test_answer.sh".into(), format!("{ANSWER_CHECK}\n")));
        }
        "no-tests" => files.push(("workspace.yaml".into(), workspace)),
        "bad-toml" => {
            files.push(("workspace.yaml".into(), "version: \"1\"\n".into()));
            files.push(("tests/test_answer.sh".into(), format!("{ANSWER_CHECK}\n")));
        }
        _ => return None,
    }
    Some(files)
}

/// `POST /submit` of an archive holding the executor equivalents of `names` and an agent that
/// writes `ok`: each task's outcome (all [`Outcome::Refused`] on a 400).
async fn via_submit(
    server: &Server,
    names: &[&str],
    root: &Path,
    label: &str,
) -> BTreeMap<String, Outcome> {
    let (repo, commit) = git_repo(&root.join(format!("repo-{label}")));
    let src = root.join(format!("submit-{label}"));
    for name in names {
        for (rel, content) in executor_case(name, &repo, &commit).unwrap() {
            write(&src.join("tasks").join(name), &rel, &content);
        }
    }
    write(
        &src,
        "agent_code/agent.sh",
        "cd \"$REPO_DIR\" && echo ok > answer.txt\n",
    );
    let archive = root.join(format!("submit-{label}.tar.gz"));
    tar_gz(&src, &["tasks", "agent_code"], &archive);
    match submit(server, &archive).await {
        Some(id) => batch_outcomes(server, &id).await,
        None => names
            .iter()
            .map(|n| (n.to_string(), Outcome::Refused))
            .collect(),
    }
}

/// `POST /submit` of `archive`: the batch id, or None when the archive is refused (400).
async fn submit(server: &Server, archive: &Path) -> Option<String> {
    let archive = std::fs::read(archive).unwrap();
    let (status, v) = post(
        server,
        "/submit",
        &[("archive", Some("batch.tar.gz"), archive.as_slice())],
    )
    .await;
    if status == 400 {
        return None;
    }
    assert_eq!(status, 202, "{v}\n{}", server.log());
    Some(v["batch_id"].as_str().unwrap().to_string())
}

/// The outcome of every task of the batch `id`, once it is final.
async fn batch_outcomes(server: &Server, id: &str) -> BTreeMap<String, Outcome> {
    finished_trials(
        server,
        &format!("/api/v1/jobs/{id}"),
        &format!("/api/v1/jobs/{id}/trials"),
    )
    .await
    .iter()
    .map(|t| {
        (
            t["task_name"].as_str().unwrap().to_string(),
            trial_outcome(&t["result"]),
        )
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_point_gives_each_edge_task_the_same_outcome() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let tasks = edge_tasks(&root.join("tasks"));
    let parent = root.to_str().unwrap().to_string();
    let server = Server::spawn(
        &root.join("data"),
        &root.join("cache"),
        &root.join("server.log"),
        // The executor archives' repositories are local.
        &["--allow-local-paths", parent.as_str()],
        &[],
    );
    // `/submit`: the well-formed tasks in one archive (their trials run side by side, each
    // scored alone), the malformed one in another.
    let well_formed: Vec<&str> = tasks
        .keys()
        .copied()
        .filter(|n| executor_case(n, root, "0").is_some() && *n != "bad-toml")
        .collect();
    let mut by_submit = via_submit(&server, &well_formed, root, "batch").await;
    by_submit.extend(via_submit(&server, &["bad-toml"], root, "bad").await);
    assert_eq!(by_submit.len(), 6, "{by_submit:?}");
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
        let (n, r) = (name.to_string(), root.to_path_buf());
        let experiment = tokio::task::spawn_blocking(move || via_experiment(&n, &r))
            .await
            .unwrap();
        let submit = by_submit.get(*name).cloned();
        eprintln!(
            "{name:<12} run {run:?}  resume {resume:?}  api {api:?}  preflight ok {preflight_ok}  experiment {experiment:?}  submit {submit:?}"
        );
        assert_eq!(resume, run, "{name}: resume and run disagree");
        assert_eq!(api, run, "{name}: serve /api/v1/jobs and run disagree");
        assert_eq!(
            preflight_ok,
            run.runnable(),
            "{name}: preflight and run disagree ({run:?}): {report:#}"
        );
        // The experiment and the executor archive: the same outcome, except that a malformed
        // entry refuses its whole file (see experiment_case, executor_case); preflight agrees.
        let same_or_refused = |other: &Outcome| {
            if name == &"bad-toml" {
                assert_eq!(run, Outcome::Error("task_invalid".into()));
                assert_eq!(other, &Outcome::Refused, "{name}");
            } else {
                assert_eq!(other, &run, "{name}: {other:?} and run {run:?} disagree");
            }
        };
        match (&experiment, &submit) {
            (Some((outcome, preflight_ok)), Some(submitted)) => {
                same_or_refused(outcome);
                same_or_refused(submitted);
                assert_eq!(
                    *preflight_ok,
                    run.runnable(),
                    "{name}: preflight of the experiment and run disagree"
                );
            }
            (None, None) => assert_eq!(name, &"gpu", "only gpu has no equivalent"),
            other => panic!("{name}: {other:?}"),
        }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_archive_scores_the_same_through_run_and_submit() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (repo, commit) = git_repo(&root.join("proj"));
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
    let by_run = experiment_outcomes(&jobs.join("run"));

    // rollout serve: POST /submit
    let parent = root.to_str().unwrap().to_string();
    let server = Server::spawn(
        &root.join("data"),
        &root.join("cache"),
        &root.join("server.log"),
        &["--allow-local-paths", parent.as_str()],
        &[],
    );
    let id = submit(&server, &archive)
        .await
        .expect("the archive is accepted");
    let by_submit = batch_outcomes(&server, &id).await;
    eprintln!("run {by_run:?}\nsubmit {by_submit:?}");
    assert_eq!(by_submit, by_run);
    assert_eq!(by_run["solvable"], Outcome::Reward("1.0".into()));
    assert_eq!(by_run["unsolvable"], Outcome::Reward("0.0".into()));
}

fn agentlab(name: &str) -> PathBuf {
    repo().join("tests/fixtures/agentlab").join(name)
}

/// The trials of the job (or experiment run) directory `run` as outcomes, by task name.
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

    // An allowlist policy without its hosts: refused by preflight and by run alike.
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
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/runtime/policy/network/allowed_hosts is required"),
        "{}",
        text(&out)
    );
    assert!(!tmp.path().join(".lab/runs/refused").exists());
}
