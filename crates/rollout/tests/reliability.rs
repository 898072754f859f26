//! Reliability against the real Docker engine: crash and resume, retries that keep evidence,
//! isolation (network, output floods, fork bombs), CA certificates, garbage collection.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `rollout gc` removes every container whose rollout process is gone, engine-wide. The tests
/// that run it and the tests that leave such containers on purpose take this lock, so that one
/// does not collect what another is about to check.
fn orphan_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn spawn_run(args: &[&str], jobs: &Path) -> Child {
    require_docker();
    rollout_cmd()
        .arg("run")
        .args(args)
        .args(["-o", jobs.to_str().unwrap(), "--job-name", "job"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn job_containers(job_id: &str) -> usize {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.rollout.job={job_id}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn results_in(job: &Path) -> Vec<(String, Value)> {
    let mut v: Vec<(String, Value)> = std::fs::read_dir(job)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("result.json").is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                read_json(&e.path().join("result.json")),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn kill_9_then_resume_completes_every_trial_exactly_once() {
    let _orphans = orphan_lock();
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job");
    let (hello, slow) = (example("hello-world"), fixture("slow-solve"));
    let mut child = spawn_run(
        &[
            "-p",
            hello.to_str().unwrap(),
            "-p",
            slow.to_str().unwrap(),
            "-a",
            "oracle",
            "-k",
            "2",
            "-n",
            "2",
        ],
        tmp.path(),
    );
    // Kill it while the slow trials' agents run.
    wait_for("a slow agent to start", 180, || {
        std::fs::read_to_string(job.join("slow-solve__oracle__1/trial.log"))
            .is_ok_and(|l| l.contains("agent_run started"))
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let control = read_json(&job.join("run_control.json"));
    let job_id = control["run_id"].as_str().unwrap().to_string();
    assert_eq!(
        control["status"], "running",
        "a killed job still says running"
    );
    assert!(
        job_containers(&job_id) > 0,
        "the killed job should have left containers behind"
    );
    let before: Vec<(String, String)> = results_in(&job)
        .into_iter()
        .map(|(n, r)| (n, r["id"].as_str().unwrap().to_string()))
        .collect();

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
    let after = results_in(&job);
    assert_eq!(after.len(), 4, "every trial has exactly one result");
    for (name, id) in &before {
        let kept = after.iter().find(|(n, _)| n == name).unwrap();
        assert_eq!(
            kept.1["id"].as_str().unwrap(),
            id,
            "{name} was complete and must not re-run"
        );
    }
    for (name, r) in &after {
        assert_eq!(r["reward"], 1.0, "{name}");
    }
    let result = read_json(&job.join("result.json"));
    assert_eq!(result["n_total_trials"], 4);
    assert_eq!(result["stats"]["n_trials"], 4);
    assert_eq!(result["trials"].as_object().unwrap().len(), 4);
    assert_eq!(
        read_json(&job.join("run_control.json"))["status"],
        "completed"
    );
    assert_eq!(job_containers(&job_id), 0, "orphans must be removed");
}

#[test]
fn rerunning_a_finished_job_reruns_nothing_and_a_changed_config_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let hello = example("hello-world");
    let first = spawn_run(&["-p", hello.to_str().unwrap(), "-a", "nop"], tmp.path())
        .wait_with_output()
        .unwrap();
    assert_eq!(first.status.code(), Some(0));
    let id = read_json(&tmp.path().join("job/hello-world__nop__1/result.json"))["id"].clone();
    let again = spawn_run(
        &["-p", hello.to_str().unwrap(), "-a", "nop", "-n", "2"],
        tmp.path(),
    )
    .wait_with_output()
    .unwrap();
    assert_eq!(
        again.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        read_json(&tmp.path().join("job/hello-world__nop__1/result.json"))["id"],
        id
    );
    let changed = spawn_run(&["-p", hello.to_str().unwrap(), "-a", "oracle"], tmp.path())
        .wait_with_output()
        .unwrap();
    assert_eq!(changed.status.code(), Some(2));
    let err = String::from_utf8_lossy(&changed.stderr);
    assert!(
        err.contains("agents"),
        "the refusal must name the differing field: {err}"
    );
}

#[test]
fn retry_errors_reruns_only_errored_trials() {
    let tmp = tempfile::tempdir().unwrap();
    let (hello, noreward) = (example("hello-world"), fixture("no-reward"));
    let first = spawn_run(
        &[
            "-p",
            hello.to_str().unwrap(),
            "-p",
            noreward.to_str().unwrap(),
            "-a",
            "oracle",
        ],
        tmp.path(),
    )
    .wait_with_output()
    .unwrap();
    assert_eq!(first.status.code(), Some(1));
    let job = tmp.path().join("job");
    let ok_id = read_json(&job.join("hello-world__oracle__1/result.json"))["id"].clone();
    let err_id = read_json(&job.join("no-reward__oracle__1/result.json"))["id"].clone();
    let out = rollout_cmd()
        .args(["jobs", "resume", job.to_str().unwrap(), "--retry-errors"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        read_json(&job.join("hello-world__oracle__1/result.json"))["id"],
        ok_id
    );
    assert_ne!(
        read_json(&job.join("no-reward__oracle__1/result.json"))["id"],
        err_id
    );
}

#[test]
fn flaky_build_is_retried_and_the_first_attempts_log_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("flaky-build");
    let src = fixture("flaky-build");
    let status = Command::new("cp")
        .args(["-r", src.to_str().unwrap(), task.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let marker = task.join("environment/fail-once");
    std::fs::write(&marker, "x").unwrap();
    let job_file = tmp.path().join("job.yaml");
    std::fs::write(
        &job_file,
        format!(
            "tasks: [{{path: {}}}]\nretry: {{max_retries: 2, min_wait_sec: 5, max_wait_sec: 5}}\n",
            task.display()
        ),
    )
    .unwrap();
    let child = rollout_cmd()
        .args([
            "run",
            job_file.to_str().unwrap(),
            "-o",
            tmp.path().to_str().unwrap(),
            "--job-name",
            "job",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = tmp.path().join("job/job.log");
    wait_for("the first try to fail", 180, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("retrying in"))
    });
    std::fs::remove_file(&marker).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trial = tmp.path().join("job/flaky-build__oracle__1");
    let r = read_json(&trial.join("result.json"));
    assert_eq!(r["reward"], 1.0);
    let tries = r["previous_tries"].as_array().unwrap();
    assert_eq!(tries.len(), 1);
    assert_eq!(tries[0]["error"]["type"], "environment_build_failed");
    let old_log =
        std::fs::read_to_string(trial.join("previous-tries/try-1/environment/build.log")).unwrap();
    assert!(old_log.contains("flaky step failed"), "{old_log}");
    assert_eq!(
        read_json(&trial.join("previous-tries/try-1/result.json"))["error"]["type"],
        "environment_build_failed"
    );
}

#[test]
fn agent_errors_are_not_retried() {
    let r = run_task(&fixture("no-reward"), "oracle", &["--max-retries", "3"]);
    assert_eq!(r.trial()["previous_tries"].as_array().unwrap().len(), 0);
}

#[test]
fn no_network_really_has_none_and_public_has_it() {
    let none = run_task(&fixture("network-none"), "oracle", &[]);
    assert_eq!(
        none.trial()["reward"],
        1.0,
        "a no-network task reached the Debian mirror"
    );
    let public = run_task(&fixture("network-public"), "oracle", &[]);
    assert_eq!(
        public.trial()["reward"],
        1.0,
        "a public task could not reach the Debian mirror"
    );
}

/// A CA of the test's own and a server certificate it signed for `localhost`: (CA PEM, server
/// certificate PEM, server key PEM).
fn own_ca() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "rollout test CA (reliability.rs)");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    (ca_cert.pem(), server.pem(), server_key.serialize_pem())
}

/// pip inside the environment installs a package over HTTPS from a local server whose
/// certificate comes from a CA of the test's own: with `--ca-certs <that CA>` it verifies, with
/// `--ca-certs none` it fails verification. The server runs inside the container on its
/// loopback, so the outcome does not depend on this machine's network, on an intercepting
/// proxy, or on which CAs the base image trusts.
#[test]
fn pip_over_https_verifies_with_the_given_ca_certs_and_not_without() {
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("https-pip");
    rollout_env::archive::copy_tree(&fixture("https-pip"), &task).unwrap();
    let (ca, cert, key) = own_ca();
    std::fs::write(task.join("tests/server.pem"), cert).unwrap();
    std::fs::write(task.join("tests/server.key"), key).unwrap();
    let ca_file = tmp.path().join("test-ca.pem");
    std::fs::write(&ca_file, ca).unwrap();

    let with = run_task(&task, "oracle", &["--ca-certs", ca_file.to_str().unwrap()]);
    let pip_log = |r: &Run| {
        std::fs::read_to_string(r.trial_dir("https-pip__oracle__1").join("verifier/pip.log"))
            .unwrap_or_default()
    };
    assert_eq!(
        with.trial()["reward"],
        1.0,
        "with the test CA, pip must verify the local server; pip log:\n{}\nstderr:\n{}",
        pip_log(&with),
        with.stderr()
    );
    let without = run_task(&task, "oracle", &["--ca-certs", "none"]);
    assert_eq!(
        without.trial()["reward"],
        0.0,
        "without the CA, HTTPS verified"
    );
    let log = pip_log(&without);
    assert!(
        log.contains("CERTIFICATE_VERIFY_FAILED"),
        "pip must fail on certificate verification, not on something else:\n{log}"
    );
}

#[test]
fn endless_output_ends_the_trial_with_an_error() {
    let started = Instant::now();
    let r = run_task(&fixture("endless-output"), "oracle", &[]);
    let t = r.trial();
    let kind = t["error"]["type"].as_str().unwrap_or_default().to_string();
    assert!(
        kind == "agent_execution_failed" || kind == "agent_execution_timeout",
        "{t}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
    let kept = std::fs::metadata(
        r.trial_dir("endless-output__oracle__1")
            .join("agent/command-0/stdout.txt"),
    )
    .unwrap()
    .len();
    assert!(kept <= (1 << 20) + 200, "kept {kept} bytes");
    r.assert_no_containers();
}

#[test]
fn fork_bomb_ends_the_trial_not_the_job() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let job_file = tmp.path().join("job.yaml");
    std::fs::write(
        &job_file,
        format!(
            "tasks: [{{path: {}}}, {{path: {}}}]\nenvironment: {{pids_limit: 256}}\n",
            fixture("fork-bomb").display(),
            example("hello-world").display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = rollout_cmd()
        .args([
            "run",
            job_file.to_str().unwrap(),
            "-o",
            tmp.path().to_str().unwrap(),
            "--job-name",
            "job",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bomb = read_json(&tmp.path().join("job/fork-bomb__oracle__1/result.json"));
    assert_eq!(bomb["error"]["type"], "agent_execution_timeout", "{bomb}");
    assert_eq!(
        bomb["reward"], 1.0,
        "the verifier runs after the bomb is stopped"
    );
    let hello = read_json(&tmp.path().join("job/hello-world__oracle__1/result.json"));
    assert_eq!(
        hello["reward"], 1.0,
        "the other trial of the job is unaffected"
    );
    assert!(
        started.elapsed() < Duration::from_secs(150),
        "took {:?}",
        started.elapsed()
    );
    assert_no_containers(
        read_json(&tmp.path().join("job/result.json"))["id"]
            .as_str()
            .unwrap(),
    );
}

#[test]
fn preserved_environments_are_left_for_gc() {
    let _orphans = orphan_lock();
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let job_file = tmp.path().join("job.yaml");
    std::fs::write(
        &job_file,
        format!(
            "tasks: [{{path: {}}}]\nenvironment: {{preserve_env: always}}\n",
            example("hello-world").display()
        ),
    )
    .unwrap();
    let out = rollout_cmd()
        .args([
            "run",
            job_file.to_str().unwrap(),
            "-o",
            tmp.path().to_str().unwrap(),
            "--job-name",
            "job",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("docker exec -it"),
        "the preserved container must be reported with how to enter it: {stderr}"
    );
    let trial = read_json(&tmp.path().join("job/hello-world__oracle__1/result.json"));
    assert_eq!(trial["environment"]["preserved"], true);
    let container = trial["environment"]["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    let job_id = read_json(&tmp.path().join("job/result.json"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(job_containers(&job_id), 1);

    let dry = rollout_cmd().args(["gc", "--dry-run"]).output().unwrap();
    let listed = String::from_utf8_lossy(&dry.stdout);
    assert!(
        listed.contains(&container[..12]),
        "gc --dry-run should list {container}: {listed}"
    );
    assert_eq!(job_containers(&job_id), 1, "a dry run removes nothing");
    let gc = rollout_cmd().arg("gc").output().unwrap();
    assert_eq!(
        gc.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&gc.stdout)
    );
    assert_eq!(job_containers(&job_id), 0);
}

#[test]
fn two_gc_runs_at_once_both_succeed() {
    let _orphans = orphan_lock();
    // Each `rollout gc` lists the orphans, then removes them one by one; whichever comes second
    // finds some already removed by the first. That is not a failure: the container is gone.
    require_docker();
    let job = format!("gc-race-{}", std::process::id());
    for _ in 0..6 {
        let out = Command::new("docker")
            .args([
                "create",
                "--label",
                "io.rollout.managed=true",
                "--label",
                &format!("io.rollout.job={job}"),
                "debian:bookworm-slim",
                "true",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(job_containers(&job), 6);
    let gcs: Vec<Child> = (0..2)
        .map(|_| {
            rollout_cmd()
                .arg("gc")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut listed = 0;
    for gc in gcs {
        let out = gc.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!stdout.contains("not removed"), "{stdout}");
        listed += stdout.matches(job.as_str()).count();
    }
    assert_eq!(job_containers(&job), 0);
    assert!(
        (6..=12).contains(&listed),
        "each orphan is reported as removed by at least one of the two runs ({listed})"
    );
}

/// A path to the real engine that behaves like Engine 20.10 at its worst (docker/cli#4553): when
/// the engine ends a connection (an exec's output stream ends with its process), the client's
/// side stays open, as if the stream never ended. Everything else passes through unchanged.
/// Returns the socket's path; the proxy lives as long as the test process.
fn engine_that_never_closes_streams(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::net::{UnixListener, UnixStream};
    let socket = dir.join("engine.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(engine) = UnixStream::connect("/var/run/docker.sock") else {
                continue;
            };
            let (mut c_read, mut e_write) =
                (client.try_clone().unwrap(), engine.try_clone().unwrap());
            let (mut e_read, mut c_write) = (engine, client);
            // Engine to client: the engine's end of stream is not passed on (no shutdown). The
            // client's socket stays open as long as the other thread holds it, that is until
            // the client itself lets go.
            std::thread::spawn(move || std::io::copy(&mut e_read, &mut c_write));
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_read, &mut e_write);
                let _ = e_write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    socket
}

/// An engine that keeps an exec's output stream open after its process ended must not hold the
/// trial until its timeout and score it as one: the exec is inspected, and once its process has
/// ended the result is taken (with a warning saying why).
#[test]
fn an_exec_stream_the_engine_never_closes_does_not_hold_the_trial() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let socket = engine_that_never_closes_streams(tmp.path());
    let mut cmd = rollout_cmd();
    cmd.env("DOCKER_HOST", format!("unix://{}", socket.display()));
    let hello = example("hello-world");
    let r = run_with(cmd, &["-p", hello.to_str().unwrap(), "-a", "oracle"]);
    let trial = r.trial();
    assert_eq!(trial["reward"], 1.0, "{trial}\n{}", r.stderr());
    assert!(trial["exception_info"].is_null(), "{trial}");
    let log = std::fs::read_to_string(r.trial_dir("hello-world__oracle__1").join("trial.log"))
        .unwrap_or_default();
    assert!(
        format!("{log}{}", r.stderr()).contains("kept an exec's output open"),
        "the workaround was not needed, so this test did not test it:\n{log}\n{}",
        r.stderr()
    );
}
