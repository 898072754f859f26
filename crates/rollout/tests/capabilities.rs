//! What a provider cannot enforce is refused identically whichever way a task comes in —
//! `rollout run` and `rollout serve`'s `POST /api/v1/jobs` (`POST /submit` takes executor
//! archives, whose tasks cannot ask for a network mode or GPUs) — and what it
//! can enforce runs identically: every entry point reaches the same per-trial check
//! (`rollout_core::capabilities::check_enforceable`) through the runner. Against the real
//! engine, on this GPU-less machine: an allowlist task (enforced on Docker), a GPU task and an
//! allowlist task with compose services (both refused).

mod common;

use common::serve::multipart;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `rollout serve` process on a free loopback port.
struct Server {
    child: Child,
    base: String,
    log: PathBuf,
    data: PathBuf,
}

impl Server {
    fn start(root: &Path) -> Server {
        require_docker();
        let data = root.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let log = root.join("server.log");
        let mut child = rollout_cmd()
            .args(["serve", "--port", "0", "--data-dir"])
            .arg(&data)
            .args(["--executor-image", "debian:bookworm-slim"])
            .env("ROLLOUT_CACHE_DIR", root.join("cache"))
            .env("ROLLOUT_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "server did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        let base = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server {
            child,
            base,
            log,
            data,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ALLOWLIST: &str =
    "[environment]\ndocker_image = \"debian:bookworm-slim\"\nnetwork_mode = \"allowlist\"\nallowed_hosts = [\"deb.debian.org\"]\n";

/// The three tasks under `src/tasks`, plus a no-op agent under `src/agent_code` for `/submit`.
fn write_tasks(src: &Path) {
    let tasks: [(&str, String, bool); 3] = [
        // Enforced: the verifier sees the proxy and no DNS for outside names.
        ("allowlist", ALLOWLIST.to_string(), false),
        (
            "gpu",
            "[environment]\ndocker_image = \"debian:bookworm-slim\"\ngpus = 1\n".to_string(),
            false,
        ),
        ("compose-allowlist", ALLOWLIST.to_string(), true),
    ];
    for (name, toml, compose) in tasks {
        let t = src.join("tasks").join(name);
        for d in ["tests", "solution", "environment"] {
            std::fs::create_dir_all(t.join(d)).unwrap();
        }
        std::fs::write(t.join("task.toml"), toml).unwrap();
        std::fs::write(t.join("instruction.md"), "Do nothing.\n").unwrap();
        if compose {
            std::fs::write(
                t.join("environment/docker-compose.yaml"),
                "services:\n  main:\n    image: debian:bookworm-slim\n  db:\n    image: debian:bookworm-slim\n    command: [\"sleep\", \"infinity\"]\n",
            )
            .unwrap();
        }
        let test = t.join("tests/test.sh");
        std::fs::write(
            &test,
            "#!/bin/bash\nif [ -n \"$HTTP_PROXY\" ] && ! getent hosts deb.debian.org >/dev/null; then echo 1; else echo 0; fi > /logs/verifier/reward.txt\n",
        )
        .unwrap();
        std::fs::set_permissions(&test, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(t.join("solution/solve.sh"), "#!/bin/sh\ntrue\n").unwrap();
    }
    std::fs::create_dir_all(src.join("agent_code")).unwrap();
    std::fs::write(src.join("agent_code/agent.sh"), "true\n").unwrap();
}

/// What each task's trial ended with: (error type, error message) or the reward.
fn outcomes(job_dir: &Path) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(job_dir).unwrap().flatten() {
        let p = e.path().join("result.json");
        if !p.is_file() {
            continue;
        }
        let r = read_json(&p);
        let Some(task) = r["task_name"].as_str() else {
            continue;
        };
        let outcome = match r["error"]["type"].as_str() {
            Some(kind) if kind == "environment_unsupported" => json!({
                "error": kind,
                "message": r["error"]["message"],
            }),
            _ => {
                json!({"reward": r["reward"], "error": r["error"]["type"]})
            }
        };
        out.insert(task.to_string(), outcome);
    }
    out
}

/// Poll `path` until its `status` is final; returns the body.
async fn wait_done(server: &Server, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let v: Value = reqwest::get(server.url(path))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if matches!(
            v["status"].as_str(),
            Some("completed" | "failed" | "cancelled" | "interrupted")
        ) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never finished: {v}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_and_enforcement_are_the_same_through_run_and_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_tasks(&src);

    // `rollout run`, with the agent every entry point can use.
    let run = run(&["-p", src.join("tasks").to_str().unwrap(), "-a", "oracle"]);
    let via_run = outcomes(&run.job_dir);
    assert_eq!(via_run.len(), 3, "{via_run:?}\nstderr:\n{}", run.stderr());
    assert_eq!(via_run["allowlist"]["reward"], 1.0, "{via_run:?}");
    for refused in ["gpu", "compose-allowlist"] {
        assert_eq!(
            via_run[refused]["error"], "environment_unsupported",
            "{via_run:?}"
        );
    }
    let gpu = via_run["gpu"]["message"].as_str().unwrap();
    assert!(
        gpu.contains("environment.gpus") && gpu.contains("GPU"),
        "{gpu}"
    );
    let compose = via_run["compose-allowlist"]["message"].as_str().unwrap();
    assert!(compose.contains("multi-container"), "{compose}");

    let server = Server::start(&tmp.path().join("server"));
    let archive = tmp.path().join("tasks.tar.gz");
    let st = Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .args(["tasks", "agent_code"])
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = std::fs::read(&archive).unwrap();

    // POST /api/v1/jobs with the same tasks and agent.
    let config = json!({"agents": [{"name": "oracle"}]});
    let (ct, body) = multipart(&[
        ("config", None, config.to_string().as_bytes()),
        ("archive", Some("tasks.tar.gz"), &bytes),
    ]);
    let resp = reqwest::Client::new()
        .post(server.url("/api/v1/jobs"))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let job: Value = resp.json().await.unwrap();
    assert_eq!(status, 202, "{job}\n{}", server.log());
    let id = job["id"].as_str().unwrap().to_string();
    wait_done(&server, &format!("/api/v1/jobs/{id}")).await;
    let via_jobs = outcomes(&server.data.join("jobs").join(&id));
    assert_eq!(via_jobs, via_run, "/api/v1/jobs differs from rollout run");

    // POST /submit takes term-executor archives (workspace.yaml tasks), which have no
    // network_mode or gpus: it cannot ask for what a provider might refuse. Its trials run
    // through the same runner, hence the same check.
}
