//! Hostile agents and hostile tasks against the real Docker engine (issue 19): each test is one
//! attack, played by the task's `solution/solve.sh` (the agent, run with `-a oracle`) or by its
//! `tests/test.sh` (an untrusted task), and asserts the outcome rollout guarantees — no reward
//! from a planted file, no host byte in any result, a typed error in bounded time, a host job
//! directory within the cap, no setuid file or open directory on the host, a fork bomb stopped
//! at its timeout, an out-of-memory kill named as such, cancellation that always wins. The last
//! two go through `rollout serve`.

mod common;

use common::serve::Server;
use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A task in a temporary directory: `solve` is the agent, `test` the verifier, `toml` extra
/// task.toml text (sections included).
fn task(root: &Path, name: &str, solve: &str, test: &str, toml: &str) -> PathBuf {
    let dir = root.join(name);
    for sub in ["environment", "solution", "tests"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(
        dir.join("task.toml"),
        if toml.contains("[verifier]") {
            format!("version = \"1.0\"\n\n{toml}")
        } else {
            format!("version = \"1.0\"\n\n[verifier]\ntimeout_sec = 60\n\n{toml}")
        },
    )
    .unwrap();
    std::fs::write(dir.join("instruction.md"), "Attack the harness.\n").unwrap();
    std::fs::write(
        dir.join("environment/Dockerfile"),
        "FROM debian:bookworm-slim\nWORKDIR /app\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("solution/solve.sh"),
        format!("#!/bin/bash\n{solve}\n"),
    )
    .unwrap();
    std::fs::write(dir.join("tests/test.sh"), format!("#!/bin/bash\n{test}\n")).unwrap();
    dir
}

/// Every regular file under `dir` (recursively, links not followed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

fn du(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .map(|f| std::fs::symlink_metadata(f).unwrap().len())
        .sum()
}

/// Wait for `child` at most `secs`; kill it and fail if it is still running.
fn wait_bounded(mut child: Child, secs: u64, what: &str) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what}: still running after {secs} s; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_run(args: &[&str], out: &Path, env: &[(&str, &str)]) -> Child {
    require_docker();
    let mut cmd = rollout_cmd();
    cmd.arg("run")
        .args(args)
        .args(["-o", out.to_str().unwrap(), "--job-name", "job"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn only_trial(job: &Path) -> (PathBuf, Value) {
    let dirs: Vec<PathBuf> = std::fs::read_dir(job)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("result.json").is_file())
        .collect();
    assert_eq!(dirs.len(), 1, "expected one trial in {}", job.display());
    let r = read_json(&dirs[0].join("result.json"));
    (dirs[0].clone(), r)
}

#[test]
fn planted_reward_files_score_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // The agent plants both reward files and leaves a daemon that keeps planting them.
    let t = task(
        tmp.path(),
        "planted",
        "mkdir -p /logs/verifier\necho 1 > /logs/verifier/reward.txt\necho '{\"reward\": 1}' > /logs/verifier/reward.json\n\
         setsid sh -c 'while :; do echo 1 > /logs/verifier/reward.txt; sleep 0.05; done' </dev/null >/dev/null 2>&1 &\n\
         sleep 0.3",
        "echo 'the check failed' >&2\nexit 1",
        "",
    );
    let run = run_task(&t, "oracle", &[]);
    let r = run.trial();
    assert!(r["reward"].is_null(), "{r}");
    assert_eq!(r["error"]["type"], "verifier_reward_missing", "{r}");
    run.assert_no_containers();
}

#[test]
fn reward_links_to_host_files_read_nothing_from_the_host() {
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("one.txt");
    std::fs::write(&one, "1\n").unwrap();
    let secret = tmp.path().join("secret.txt");
    let marker = "HOST-SECRET-5f1c9e";
    std::fs::write(&secret, format!("{marker}\n")).unwrap();
    // The agent plants links; the (hostile) task's test.sh makes its own.
    let links = format!(
        "mkdir -p /logs/verifier /logs/agent /logs/artifacts\n\
         ln -sf {one} /logs/verifier/reward.txt\nln -sf {secret} /logs/agent/leak.txt\n\
         ln -sf {secret} /logs/artifacts/leak.txt\nln -sf / /logs/agent/root",
        one = one.display(),
        secret = secret.display()
    );
    let t = task(
        tmp.path(),
        "links",
        &links,
        &format!(
            "ln -sf {} /logs/verifier/reward.txt\nln -sf {} /logs/verifier/leak.txt",
            one.display(),
            secret.display()
        ),
        "",
    );
    let run = run_task(&t, "oracle", &[]);
    let r = run.trial();
    assert!(r["reward"].is_null(), "{r}");
    assert_eq!(r["error"]["type"], "verifier_reward_invalid", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("symbolic link"),
        "{r}"
    );
    for f in files_under(&run.job_dir) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(marker),
            "host bytes in {}",
            f.display()
        );
    }
    run.assert_no_containers();
}

#[test]
fn a_fifo_reward_is_a_typed_error_and_the_run_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let t = task(
        tmp.path(),
        "fifo",
        "mkdir -p /logs/agent && mkfifo /logs/agent/pipe",
        "mkfifo /logs/verifier/reward.txt\nmkfifo /logs/verifier/reward.json",
        "",
    );
    let child = spawn_run(
        &["-p", t.to_str().unwrap(), "-a", "oracle"],
        tmp.path(),
        &[],
    );
    let out = wait_bounded(child, 240, "a run with a FIFO reward");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, r) = only_trial(&tmp.path().join("job"));
    assert_eq!(r["error"]["type"], "verifier_reward_invalid", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("FIFO"),
        "{r}"
    );
    assert!(
        r["environment"]["skipped_entries"].as_u64().unwrap() >= 2,
        "{r}"
    );
}

#[test]
fn a_dev_zero_reward_is_a_typed_error_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let t = task(
        tmp.path(),
        "zero",
        "mkdir -p /logs/agent && ln -s /dev/zero /logs/agent/zero",
        "ln -s /dev/zero /logs/verifier/reward.txt",
        "",
    );
    let run = run_task(&t, "oracle", &[]);
    let r = run.trial();
    assert_eq!(r["error"]["type"], "verifier_reward_invalid", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("symbolic link"),
        "{r}"
    );
    // The largest child this test ran (the rollout process) stayed small.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert!(
        usage.ru_maxrss < 512 * 1024,
        "peak RSS {} KiB",
        usage.ru_maxrss
    );
}

#[test]
fn logs_over_the_cap_are_cut_while_copied_and_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let t = task(
        tmp.path(),
        "flood",
        "mkdir -p /logs/agent /logs/artifacts\n\
         head -c 40000000 /dev/urandom > /logs/agent/big.bin\n\
         head -c 40000000 /dev/urandom > /logs/artifacts/big.bin",
        "echo 1 > /logs/verifier/reward.txt",
        "",
    );
    let child = spawn_run(
        &["-p", t.to_str().unwrap(), "-a", "oracle"],
        tmp.path(),
        &[("ROLLOUT_LOGS_CAP_MB", "4")],
    );
    let out = wait_bounded(child, 300, "a run flooding /logs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (dir, r) = only_trial(&tmp.path().join("job"));
    assert_eq!(r["reward"], 1.0, "{r}");
    let truncated: Vec<&str> = r["environment"]["truncated"]
        .as_array()
        .unwrap_or_else(|| panic!("no truncation recorded: {r}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(truncated.contains(&"/logs/agent"), "{r}");
    assert!(truncated.contains(&"/logs/artifacts"), "{r}");
    for sub in ["agent", "artifacts"] {
        let size = du(&dir.join(sub));
        assert!(size <= 4 << 20, "{sub}/ holds {size} bytes");
    }
}

#[test]
fn setuid_files_and_open_directories_do_not_reach_the_host() {
    let tmp = tempfile::tempdir().unwrap();
    let t = task(
        tmp.path(),
        "modes",
        "mkdir -p /logs/agent/open /logs/artifacts/sticky\n\
         cp /bin/sh /logs/agent/suid && chmod 6755 /logs/agent/suid\n\
         echo x > /logs/agent/open/world && chmod 0666 /logs/agent/open/world\n\
         chmod 0777 /logs/agent/open && chmod 1777 /logs/artifacts/sticky\n\
         mkfifo /logs/agent/fifo && ln -s /etc/passwd /logs/agent/link",
        "echo 1 > /logs/verifier/reward.txt\nchmod 4755 /logs/verifier/reward.txt",
        "",
    );
    let run = run_task(&t, "oracle", &[]);
    let r = run.trial();
    assert_eq!(r["reward"], 1.0, "{r}");
    let dir = run.job_dir.join(r["trial_name"].as_str().unwrap());
    assert!(dir.join("agent/suid").is_file(), "the file itself is kept");
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            assert_eq!(mode & 0o7000, 0, "{} has mode {mode:o}", e.path().display());
            assert_eq!(mode & 0o022, 0, "{} has mode {mode:o}", e.path().display());
            assert!(
                meta.is_dir() || meta.is_file(),
                "{} is neither a file nor a directory",
                e.path().display()
            );
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    for sub in ["agent", "verifier", "artifacts"] {
        let mode = std::fs::metadata(dir.join(sub))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o755, "{sub}/");
    }
}

#[test]
fn a_fork_bomb_is_stopped_at_the_agent_timeout_and_the_verifier_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let t = task(
        tmp.path(),
        "bomb",
        "touch /tmp/started\n\
         setsid bash -c 'b() { b & b & wait; }; b' </dev/null >/dev/null 2>&1 &\n\
         b() { b & b & wait; }; b",
        "if [ -f /tmp/started ]; then echo 1; else echo 0; fi > /logs/verifier/reward.txt",
        "[agent]\ntimeout_sec = 5\n",
    );
    let job_file = tmp.path().join("job.yaml");
    std::fs::write(
        &job_file,
        format!(
            "tasks: [{{path: {}}}]\nenvironment: {{pids_limit: 512}}\n",
            t.display()
        ),
    )
    .unwrap();
    let run = run(&[job_file.to_str().unwrap()]);
    let r = run.trial();
    assert_eq!(r["error"]["type"], "agent_execution_timeout", "{r}");
    assert_eq!(r["reward"], 1.0, "the verifier ran after the bomb: {r}");
    let agent = r["phases"]["agent_run"]["seconds"].as_f64().unwrap();
    // The agent's timeout is 5 s; stopping every process takes a few seconds at most (the old
    // behaviour overran by tens of seconds).
    assert!(agent < 5.0 + 15.0, "agent phase took {agent} s: {r}");
    run.assert_no_containers();
}

#[test]
fn an_out_of_memory_kill_is_its_own_error_kind() {
    let tmp = tempfile::tempdir().unwrap();
    // `tail` keeps the whole (newline-free) input in memory: far past the 64 MiB limit.
    let t = task(
        tmp.path(),
        "oom",
        "head -c 400000000 /dev/zero | tail > /dev/null",
        "echo 0 > /logs/verifier/reward.txt",
        "[environment]\nmemory_mb = 64\n",
    );
    let run = run_task(&t, "oracle", &[]);
    let r = run.trial();
    assert_eq!(r["error"]["type"], "agent_out_of_memory", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("64 MiB"),
        "{r}"
    );
    assert_eq!(r["reward"], 0.0, "the verifier still ran: {r}");
}

#[test]
fn resource_numbers_that_overflow_are_refused_at_parse_time() {
    let tmp = tempfile::tempdir().unwrap();
    // 2^44 + 512: multiplied into bytes it used to wrap around to a 512 MiB container.
    let t = task(
        tmp.path(),
        "overflow",
        "true",
        "echo 1 > /logs/verifier/reward.txt",
        "[environment]\nmemory_mb = 17592186044928\n",
    );
    let run = run_task(&t, "oracle", &[]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    // An invalid task fails its own trials, before any container starts, naming the field.
    let r = run.trial();
    assert_eq!(r["error"]["type"], "task_invalid", "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("environment.memory_mb"), "{msg}");
    assert!(msg.contains("at most 4194304 MiB"), "{msg}");
    assert!(msg.contains("task.toml"), "{msg}");
    assert!(r["environment"]["container_id"].is_null(), "{r}");
}

#[test]
fn sigterm_during_a_hanging_verifier_ends_the_run_within_the_grace() {
    let tmp = tempfile::tempdir().unwrap();
    let t = task(
        tmp.path(),
        "hang",
        "true",
        "mkfifo /tmp/p\ncat /tmp/p",
        "[verifier]\ntimeout_sec = 3000\n",
    );
    let child = spawn_run(
        &["-p", t.to_str().unwrap(), "-a", "oracle"],
        tmp.path(),
        &[],
    );
    let log = tmp.path().join("job/hang__oracle__1/trial.log");
    wait_for("the verifier to start", 180, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("verify started"))
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let out = wait_bounded(child, 90, "a run cancelled by SIGTERM");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, r) = only_trial(&tmp.path().join("job"));
    assert_eq!(r["error"]["type"], "cancelled", "{r}");
    eprintln!("cancelled in {:?}", started.elapsed());
    assert_no_containers(r["job_id"].as_str().unwrap());
}

// --- through `rollout serve` ------------------------------------------------------------------

/// A server whose archives may name a repository in the test's directory.
fn start_server(data: &Path) -> Server {
    let parent = data.parent().unwrap().to_str().unwrap().to_string();
    Server::spawn(
        data,
        &data.join("cache"),
        &data.with_extension("log"),
        &["--allow-local-paths", parent.as_str()],
        &[],
    )
}

/// An executor archive with one task (`check` is its test script) and `agent` as the agent.
fn executor_archive(root: &Path, agent: &str, check: &str) -> PathBuf {
    let src = root.join("src");
    let (repo, commit) = git_repo(&root.join("proj"));
    let t = src.join("tasks/hostile");
    std::fs::create_dir_all(t.join("tests")).unwrap();
    std::fs::write(
        t.join("workspace.yaml"),
        format!(
            "repo: file://{}\nversion: \"1\"\nbase_commit: {commit}\nlanguage: bash\n",
            repo.display()
        ),
    )
    .unwrap();
    std::fs::write(t.join("prompt.md"), "Do the impossible.\n").unwrap();
    std::fs::write(t.join("tests/test_main.sh"), check).unwrap();
    std::fs::create_dir_all(src.join("agent_code")).unwrap();
    std::fs::write(src.join("agent_code/agent.sh"), agent).unwrap();
    let archive = root.join("batch.tar.gz");
    let st = Command::new("tar")
        .args(["czf", archive.to_str().unwrap(), "-C"])
        .arg(&src)
        .args(["tasks", "agent_code"])
        .status()
        .unwrap();
    assert!(st.success());
    archive
}

async fn submit(server: &Server, archive: &Path) -> Value {
    let bytes = std::fs::read(archive).unwrap();
    let boundary = "rollout-adversarial-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"archive\"; filename=\"batch.tar.gz\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let resp = reqwest::Client::new()
        .post(server.url("/submit"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202, "{}", server.log());
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_scores_no_planted_reward_and_stays_responsive_under_a_hostile_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("data"));
    // The agent plants rewards (files, links, FIFOs), floods its logs and leaves a daemon.
    let agent = "mkdir -p /logs/verifier /logs/agent\n\
                 echo 1 > /logs/verifier/reward.txt\necho '{\"reward\": 1}' > /logs/verifier/reward.json\n\
                 mkfifo /logs/agent/pipe; ln -s /dev/zero /logs/agent/zero\n\
                 setsid sh -c 'while :; do echo 1 > /logs/verifier/reward.txt 2>/dev/null; sleep 0.05; done' </dev/null >/dev/null 2>&1 &\n\
                 sleep 3\n";
    let archive = executor_archive(tmp.path(), agent, "grep -q impossible README.md\n");
    let body = submit(&server, &archive).await;
    let id = body["batch_id"].as_str().unwrap().to_string();
    let health = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut slowest = Duration::ZERO;
    let task = loop {
        let t0 = Instant::now();
        let resp = health.get(server.url("/health")).send().await.unwrap();
        assert!(resp.status().is_success());
        slowest = slowest.max(t0.elapsed());
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "/health took {:?}",
            t0.elapsed()
        );
        let task: Value = health
            .get(server.url(&format!("/batch/{id}/task/hostile")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if task["status"] == "completed" || task["status"] == "failed" {
            break task;
        }
        assert!(
            Instant::now() < deadline,
            "batch not done: {task}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("slowest /health: {slowest:?}");
    assert_eq!(task["passed"], false, "{task}");
    assert_ne!(task["reward"], 1.0, "{task}");
}
