//! Sessions (`/api/v1/sessions`) against the real server binary and Docker engine: a task
//! solved by exec steps grades 1, one left unsolved grades 0, files go in and out, close
//! removes the container. (The Python package's tests, scripts/test-python, cover the rest:
//! TTLs, warm pools, restarts, auth.)

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Serve {
    child: Child,
    base: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn serve(data: &Path, tasks: &Path) -> Serve {
    require_docker();
    let mut child = rollout_cmd()
        .args(["serve", "--port", "0", "--ca-certs", "none", "--data-dir"])
        .arg(data)
        .arg("--allow-local-paths")
        .arg(tasks)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(
        base.starts_with("http://"),
        "unexpected first line {line:?}"
    );
    Serve { child, base }
}

fn task(root: &Path) -> std::path::PathBuf {
    let d = root.join("answer");
    std::fs::create_dir_all(d.join("environment")).unwrap();
    std::fs::create_dir_all(d.join("tests")).unwrap();
    std::fs::write(
        d.join("environment/Dockerfile"),
        "FROM debian:bookworm-slim\nWORKDIR /app\n",
    )
    .unwrap();
    std::fs::write(
        d.join("instruction.md"),
        "Write done into /app/answer.txt\n",
    )
    .unwrap();
    std::fs::write(d.join("task.toml"), "version = \"1.0\"\n").unwrap();
    std::fs::write(
        d.join("tests/test.sh"),
        "#!/bin/bash\n[ \"$(cat /app/answer.txt)\" = done ] && echo 1 > /logs/verifier/reward.txt || echo 0 > /logs/verifier/reward.txt\n",
    )
    .unwrap();
    d
}

fn container_exists(id: &str) -> bool {
    Command::new("docker")
        .args(["inspect", id])
        .output()
        .unwrap()
        .status
        .success()
}

async fn call(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = c.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(json!(text)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_is_set_up_stepped_graded_and_closed_like_a_trial() {
    let tmp = tempfile::tempdir().unwrap();
    let tasks = tmp.path().join("tasks");
    let task = task(&tasks);
    let server = serve(&tmp.path().join("data"), &tasks);
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let url = |p: &str| format!("{}{p}", server.base);
    let open = json!({"task": task.display().to_string()});
    let mut rewards = Vec::new();
    for solve in [true, false] {
        let (status, s) = call(
            &c,
            reqwest::Method::POST,
            url("/api/v1/sessions"),
            Some(open.clone()),
        )
        .await;
        assert_eq!(status, 201, "{s}");
        assert_eq!(s["instruction"], "Write done into /app/answer.txt\n");
        let id = s["id"].as_str().unwrap().to_string();
        let container = s["container_id"].as_str().unwrap().to_string();
        assert!(container_exists(&container));
        if solve {
            let put = c
                .put(url(&format!("/api/v1/sessions/{id}/files/app/answer.txt")))
                .body("done\n")
                .send()
                .await
                .unwrap();
            assert_eq!(put.status().as_u16(), 200);
        }
        let (status, out) = call(
            &c,
            reqwest::Method::POST,
            url(&format!("/api/v1/sessions/{id}/exec")),
            Some(json!({"command": "cat /app/answer.txt; echo oops >&2; exit 3"})),
        )
        .await;
        assert_eq!(status, 200, "{out}");
        assert_eq!(out["exit_code"], 3);
        // stdout and stderr come back apart (the unsolved session's `cat` complains first).
        let stderr = out["stderr"].as_str().unwrap();
        assert!(stderr.ends_with("oops\n"), "{out}");
        assert_eq!(stderr.contains("No such file"), !solve, "{out}");
        let got = c
            .get(url(&format!("/api/v1/sessions/{id}/files/app/answer.txt")))
            .send()
            .await
            .unwrap();
        assert_eq!(got.status().as_u16(), if solve { 200 } else { 404 });
        let (status, grade) = call(
            &c,
            reqwest::Method::POST,
            url(&format!("/api/v1/sessions/{id}/grade")),
            None,
        )
        .await;
        assert_eq!(status, 200, "{grade}");
        rewards.push(grade["reward"].as_f64().unwrap());
        let (status, closed) = call(
            &c,
            reqwest::Method::DELETE,
            url(&format!("/api/v1/sessions/{id}")),
            None,
        )
        .await;
        assert_eq!(status, 200, "{closed}");
        assert!(!container_exists(&container), "close left the container");
        let (status, job) = call(
            &c,
            reqwest::Method::GET,
            url(&format!("/api/v1/jobs/{id}")),
            None,
        )
        .await;
        assert_eq!(status, 200, "{job}");
        assert_eq!(job["status"], "completed");
        let (status, _) = call(
            &c,
            reqwest::Method::POST,
            url(&format!("/api/v1/sessions/{id}/exec")),
            Some(json!({"command": "true"})),
        )
        .await;
        assert_eq!(status, 410);
    }
    assert_eq!(rewards, vec![1.0, 0.0]);
}
