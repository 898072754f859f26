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

/// A tar.gz of `root`'s entry `name`, made by tar(1) as a user would.
fn tar_gz(root: &Path, name: &str) -> Vec<u8> {
    let out = root.join(format!("{name}.tar.gz"));
    let st = Command::new("tar")
        .arg("czf")
        .arg(&out)
        .arg("-C")
        .arg(root)
        .arg(name)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(out).unwrap()
}

fn uploads_left(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("runs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("session-upload-"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_opens_on_an_uploaded_task_archive_and_hostile_archives_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    task(&src);
    let archive = tar_gz(&src, "answer");
    // The server reads no directory of its own: the task comes only from the upload.
    let data = tmp.path().join("data");
    let server = common::serve::Server::spawn(
        &data,
        &tmp.path().join("cache"),
        &tmp.path().join("server.log"),
        &[],
        &[],
    );
    let c = common::serve::client();
    let sessions = server.url("/api/v1/sessions");
    // Multipart (`archive`), then the raw body.
    let (ct, body) = common::serve::multipart(&[("archive", Some("answer.tar.gz"), &archive)]);
    let multipart = c
        .post(&sessions)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    let raw = c
        .post(&sessions)
        .header("content-type", "application/gzip")
        .body(archive.clone())
        .send()
        .await
        .unwrap();
    for (resp, solve, open) in [(multipart, true, 2), (raw, false, 1)] {
        let status = resp.status().as_u16();
        let s: Value = resp.json().await.unwrap();
        assert_eq!(status, 201, "{s}\n{}", server.log());
        assert_eq!(s["task_name"], "answer", "{s}");
        assert_eq!(s["instruction"], "Write done into /app/answer.txt\n");
        let id = s["id"].as_str().unwrap().to_string();
        let container = s["container_id"].as_str().unwrap().to_string();
        if solve {
            let (status, out) = call(
                &c,
                reqwest::Method::POST,
                server.url(&format!("/api/v1/sessions/{id}/exec")),
                Some(json!({"command": "echo done > /app/answer.txt"})),
            )
            .await;
            assert_eq!(status, 200, "{out}");
        }
        let (status, grade) = call(
            &c,
            reqwest::Method::POST,
            server.url(&format!("/api/v1/sessions/{id}/grade")),
            None,
        )
        .await;
        assert_eq!(status, 200, "{grade}");
        assert_eq!(grade["reward"], if solve { 1.0 } else { 0.0 }, "{grade}");
        assert_eq!(
            uploads_left(&data).len(),
            open,
            "each open session keeps its task's files"
        );
        let (status, closed) = call(
            &c,
            reqwest::Method::DELETE,
            server.url(&format!("/api/v1/sessions/{id}")),
            None,
        )
        .await;
        assert_eq!(status, 200, "{closed}");
        assert!(!container_exists(&container), "close left the container");
        assert_eq!(uploads_left(&data).len(), open - 1, "close left the upload");
    }

    // Hostile archives: refused before any container starts, with the reason; nothing stays.
    let hostile = tmp.path().join("hostile");
    let escape = task(&hostile.join("escape"));
    std::os::unix::fs::symlink("/etc/passwd", escape.join("tests/expected")).unwrap();
    let fifo = task(&hostile.join("fifo"));
    let st = Command::new("mkfifo")
        .arg(fifo.join("tests/pipe"))
        .status()
        .unwrap();
    assert!(st.success());
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "application/gzip",
            tar_gz(&hostile.join("escape"), "answer"),
            "invalid_archive",
            "points outside the destination",
        ),
        (
            "application/gzip",
            tar_gz(&hostile.join("fifo"), "answer"),
            "invalid_archive",
            "fifo",
        ),
        (
            "application/zip",
            b"not an archive at all".to_vec(),
            "invalid_archive",
            "unknown archive format",
        ),
    ];
    for (ct, bytes, code, says) in cases {
        let resp = c
            .post(&sessions)
            .header("content-type", ct)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let e: Value = resp.json().await.unwrap();
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["error"], code, "{e}");
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains(says), "{msg}");
        assert!(
            !msg.contains(&*data.to_string_lossy()),
            "a server path leaked: {msg}"
        );
    }
    // A multipart request without the archive.
    let (ct, body) = common::serve::multipart(&[("task", None, b"answer")]);
    let (status, e) = send_raw(&c, &sessions, &ct, body).await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("no `archive`"),
        "{e}"
    );
    assert_eq!(uploads_left(&data), Vec::<String>::new());
    let (status, list) = call(&c, reqwest::Method::GET, sessions.clone(), None).await;
    assert_eq!(status, 200);
    assert_eq!(list["sessions"], json!([]));
}

async fn send_raw(c: &reqwest::Client, url: &str, ct: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = c
        .post(url)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}
