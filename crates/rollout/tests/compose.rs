//! Multi-container tasks (environment/docker-compose.yaml) against the real Docker engine: the
//! services run, are reachable by name, start in depends_on order, and leave nothing behind on
//! any path. The tasks are written by the tests; every image is FROM debian:bookworm-slim (the
//! HTTP sidecar is a few lines of the base image's perl, so nothing is downloaded).

mod common;

use common::compose_task::{http_task, task, write};
use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// `rollout gc` collects engine-wide; the cleanup tests leave orphans on purpose. They take
/// this lock so that one does not collect what another is about to check.
fn orphan_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn labelled(kind: &str, job_id: &str) -> Vec<String> {
    let label = format!("label=io.rollout.job={job_id}");
    let args: Vec<&str> = match kind {
        "container" => vec!["ps", "-aq", "--filter", &label],
        "network" => vec!["network", "ls", "-q", "--filter", &label],
        _ => vec!["volume", "ls", "-q", "--filter", &label],
    };
    let out = Command::new("docker").args(&args).output().unwrap();
    assert!(out.status.success(), "docker {args:?} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn assert_nothing_left(job_id: &str, when: &str) {
    for kind in ["container", "network", "volume"] {
        let left = labelled(kind, job_id);
        assert!(
            left.is_empty(),
            "{when}: {kind}s of job {job_id} left: {left:?}"
        );
    }
}

fn job_id(job: &Path) -> String {
    read_json(&job.join("run_control.json"))["run_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn main_reaches_a_healthchecked_sidecar_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let t = http_task(tmp.path(), "http-sidecar", "");
    for (agent, reward) in [("oracle", 1.0), ("nop", 0.0)] {
        let run = run_task(&t, agent, &[]);
        let trial = run.trial();
        assert_eq!(
            trial["reward"],
            reward,
            "{agent}: {trial}\nstderr:\n{}",
            run.stderr()
        );
        assert!(trial["error"].is_null(), "{agent}: {}", trial["error"]);
        let id = run.job_result()["id"].as_str().unwrap().to_string();
        assert_nothing_left(&id, agent);
    }
}

#[test]
fn an_init_service_fills_a_named_volume_before_main_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let compose = r#"services:
  main:
    depends_on:
      init:
        condition: service_completed_successfully
    volumes:
      - seed:/seed:ro
  init:
    image: debian:bookworm-slim
    command: ["sh", "-c", "sleep 1; echo 42 > /seed/value"]
    volumes:
      - type: volume
        source: seed
        target: /seed
volumes:
  seed:
"#;
    let t = task(
        tmp.path(),
        "init-volume",
        compose,
        "#!/bin/bash\nset -eu\ncp /seed/value /app/answer.txt\n",
        "42",
    );
    for (agent, reward) in [("oracle", 1.0), ("nop", 0.0)] {
        let run = run_task(&t, agent, &[]);
        let trial = run.trial();
        assert_eq!(
            trial["reward"],
            reward,
            "{agent}: {trial}\nstderr:\n{}",
            run.stderr()
        );
        let id = run.job_result()["id"].as_str().unwrap().to_string();
        assert_nothing_left(&id, agent);
    }
    // A failing init service fails the trial as an environment start failure, naming it.
    let broken = task(
        tmp.path(),
        "init-fails",
        &compose.replace("echo 42 > /seed/value", "echo init broke >&2; exit 3"),
        "#!/bin/bash\ncp /seed/value /app/answer.txt\n",
        "42",
    );
    let run = run_task(&broken, "oracle", &[]);
    let trial = run.trial();
    assert_eq!(
        trial["error"]["type"], "environment_start_failed",
        "{trial}"
    );
    let msg = trial["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("`init`") && msg.contains("exited with 3") && msg.contains("init broke"),
        "{msg}"
    );
    let id = run.job_result()["id"].as_str().unwrap().to_string();
    assert_nothing_left(&id, "failed init");
}

#[test]
fn an_unsupported_key_fails_that_task_only_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = task(
        tmp.path(),
        "publishes-ports",
        "services:\n  main:\n    depends_on: [api]\n  api:\n    image: debian:bookworm-slim\n    ports: [\"8080:8080\"]\n",
        "#!/bin/bash\necho x > /app/answer.txt\n",
        "x",
    );
    let good = example("hello-world");
    let run = run(&[
        "-p",
        bad.to_str().unwrap(),
        "-p",
        good.to_str().unwrap(),
        "-a",
        "oracle",
    ]);
    let trials = run.trials();
    assert_eq!(trials.len(), 2, "stderr:\n{}", run.stderr());
    let bad_trial = trials
        .iter()
        .find(|t| t["task_name"] == "publishes-ports")
        .unwrap();
    assert_eq!(
        bad_trial["error"]["type"], "environment_unsupported",
        "{bad_trial}"
    );
    let msg = bad_trial["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("docker-compose.yaml")
            && msg.contains("services.api.ports")
            && msg.contains("key `ports`"),
        "{msg}"
    );
    assert!(
        bad_trial["reward"].is_null(),
        "a refused task has no reward"
    );
    assert!(
        bad_trial["environment"]["container_id"].is_null(),
        "nothing was started for the refused task: {bad_trial}"
    );
    let good_trial = trials
        .iter()
        .find(|t| t["task_name"] == "hello-world")
        .unwrap();
    assert_eq!(good_trial["reward"], 1.0);
    let id = run.job_result()["id"].as_str().unwrap().to_string();
    assert_nothing_left(&id, "end of job");
}

/// Start a job on a compose task whose oracle sleeps before fetching; return once the agent
/// runs (every service is up then).
fn start_slow(root: &Path, sleep: u32) -> (Child, std::path::PathBuf) {
    require_docker();
    let t = http_task(root, "slow-compose", &format!("sleep {sleep}"));
    let child = rollout_cmd()
        .args(["run", "-p", t.to_str().unwrap(), "-a", "oracle"])
        .args(["-o", root.to_str().unwrap(), "--job-name", "job"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let job = root.join("job");
    wait_for("the agent to start", 300, || {
        std::fs::read_to_string(job.join("slow-compose__oracle__1/trial.log"))
            .is_ok_and(|l| l.contains("agent_run started"))
    });
    (child, job)
}

fn left_behind(job_id: &str) -> usize {
    ["container", "network", "volume"]
        .iter()
        .map(|k| labelled(k, job_id).len())
        .sum()
}

#[test]
fn sigint_removes_every_service_network_and_volume() {
    let _orphans = orphan_lock();
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, job) = start_slow(tmp.path(), 300);
    let id = job_id(&job);
    assert_eq!(labelled("container", &id).len(), 2, "main and api run");
    assert_eq!(labelled("network", &id).len(), 1, "one trial network");
    assert_eq!(labelled("volume", &id).len(), 1, "one named volume");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = child.wait().unwrap();
    assert!(!code.success(), "a cancelled job does not exit 0");
    assert_nothing_left(&id, "after SIGINT");
}

#[test]
fn kill_9_then_resume_and_gc_leave_nothing() {
    let _orphans = orphan_lock();
    // kill -9, then `rollout gc`.
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, job) = start_slow(tmp.path(), 300);
    let id = job_id(&job);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        left_behind(&id) >= 3,
        "a killed job leaves its services behind"
    );
    let gc = rollout_cmd().arg("gc").output().unwrap();
    let listed = String::from_utf8_lossy(&gc.stdout);
    assert_eq!(gc.status.code(), Some(0), "{listed}");
    assert!(
        listed.contains("network"),
        "gc reports the network: {listed}"
    );
    assert_nothing_left(&id, "after rollout gc");

    // kill -9, then `rollout jobs resume`: the trial completes and nothing is left.
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, job) = start_slow(tmp.path(), 3);
    let id = job_id(&job);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        left_behind(&id) >= 3,
        "a killed job leaves its services behind"
    );
    let out = rollout_cmd()
        .args(["jobs", "resume", job.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trial = read_json(&job.join("slow-compose__oracle__1/result.json"));
    assert_eq!(trial["reward"], 1.0, "{trial}");
    assert_nothing_left(&id, "after jobs resume");
}

#[test]
fn no_network_keeps_services_reachable_but_nothing_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let t = http_task(tmp.path(), "offline-compose", "");
    // The verifier also checks that main has no route out of the trial network.
    let toml = t.join("task.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        text.replace(
            "[environment]\n",
            "[environment]\nnetwork_mode = \"no-network\"\n",
        ),
    )
    .unwrap();
    write(
        &t,
        "tests/test.sh",
        "#!/bin/bash\necho 0 > /logs/verifier/reward.txt\nif perl -MIO::Socket::INET -e 'exit(IO::Socket::INET->new(PeerAddr => \"1.1.1.1:53\", Timeout => 3) ? 0 : 1)'; then echo outside reachable; exit 0; fi\n[ \"$(cat /app/answer.txt)\" = tok-4711 ] && echo 1 > /logs/verifier/reward.txt\nexit 0\n",
    );
    let run = run_task(&t, "oracle", &[]);
    let trial = run.trial();
    assert_eq!(trial["reward"], 1.0, "{trial}\nstderr:\n{}", run.stderr());
}
