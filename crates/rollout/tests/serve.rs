//! `rollout serve` over a real socket, against the real Docker engine: the term-executor client
//! flow, authentication, hostile uploads, restart durability, concurrency, cancel, the native
//! job API with its event stream and downloads, and the OpenAPI document.

mod common;

use common::serve::{client, multipart, Server};
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A server for these tests: archives may name repositories in the test's directory.
fn start_server(data: &Path, cache: &Path, extra: &[&str]) -> Server {
    start_server_env(data, cache, extra, &[])
}

fn start_server_env(data: &Path, cache: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let log = data.with_file_name(format!(
        "{}-{}.log",
        data.file_name().unwrap().to_string_lossy(),
        uuid_like()
    ));
    let parent = data.parent().unwrap().to_str().unwrap().to_string();
    let mut args: Vec<&str> = extra.to_vec();
    // The executor archives of these tests name repositories in the test's directory.
    args.extend(["--allow-local-paths", parent.as_str()]);
    Server::spawn(data, cache, &log, &args, env)
}

fn uuid_like() -> String {
    format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// An executor archive: `solvable` (passes once the agent wrote solved.txt) and `unsolvable`
/// (a check that cannot pass); the agent sleeps `agent_sleep` seconds first.
fn executor_archive(root: &Path, name: &str, agent_sleep: u32) -> PathBuf {
    let src = root.join(format!("{name}-src"));
    let repo = root.join("proj");
    if !repo.exists() {
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q"]);
        std::fs::write(repo.join("README.md"), "project\n").unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "init"]);
    }
    let commit = git(&repo, &["rev-parse", "HEAD"]);
    for (id, solvable) in [("solvable", true), ("unsolvable", false)] {
        let t = src.join("tasks").join(id);
        std::fs::create_dir_all(t.join("tests")).unwrap();
        std::fs::write(
            t.join("workspace.yaml"),
            format!("repo: file://{}\nversion: \"1\"\nbase_commit: {commit}\ninstall:\n  - echo installed > /repo/.installed\nlanguage: bash\n", repo.display()),
        )
        .unwrap();
        std::fs::write(t.join("prompt.md"), "Create solved.txt.\n").unwrap();
        std::fs::write(
            t.join("tests/test_installed.sh"),
            "test -f /repo/.installed\n",
        )
        .unwrap();
        let check = if solvable {
            "grep -q solved solved.txt\n"
        } else {
            "grep -q impossible README.md\n"
        };
        std::fs::write(t.join("tests/test_main.sh"), check).unwrap();
    }
    std::fs::create_dir_all(src.join("agent_code")).unwrap();
    std::fs::write(
        src.join("agent_code/agent.sh"),
        format!("sleep {agent_sleep}\ntest -f \"$TASK_PROMPT\" && cd \"$REPO_DIR\" && echo solved > solved.txt\n"),
    )
    .unwrap();
    let archive = root.join(format!("{name}.tar.gz"));
    let st = Command::new("tar")
        .args([
            "czf",
            archive.to_str().unwrap(),
            "-C",
            src.to_str().unwrap(),
            "tasks",
            "agent_code",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    archive
}

async fn submit(
    server: &Server,
    archive: &Path,
    query: &str,
    headers: &[(&str, String)],
) -> (u16, Value) {
    let bytes = std::fs::read(archive).unwrap();
    let (ct, body) = multipart(&[("archive", Some("batch.tar.gz"), &bytes)]);
    let mut req = client()
        .post(server.url(&format!("/submit{query}")))
        .header("content-type", ct)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(json!({"raw": text})),
    )
}

/// The server's Prometheus text.
async fn metrics(server: &Server) -> String {
    client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `metrics` holds the sample line `line` (name and value) exactly.
fn assert_metric(metrics: &str, line: &str) {
    assert!(
        metrics.lines().any(|l| l == line),
        "no line `{line}` in the metrics:\n{metrics}"
    );
}

async fn get(server: &Server, path: &str) -> Value {
    let mut req = client().get(server.url(path));
    if let Some(a) = &server.auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.unwrap();
    assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
    resp.json().await.unwrap()
}

/// Poll `path` until `cond` holds on its JSON (bounded). A batch or task that reached a final
/// status (`completed`, `failed`, `cancelled`: none is ever left) without `cond` holding fails at
/// once. On failure the server's log comes first and the last JSON (with a batch's tasks, which
/// carry the errors) last, so the end of a CI log shows why.
async fn poll(server: &Server, path: &str, secs: u64, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = get(server, path).await;
        if cond(&v) {
            return v;
        }
        let settled = ["completed", "failed", "cancelled"]
            .iter()
            .any(|s| v["status"] == *s);
        if settled || Instant::now() >= deadline {
            let tasks = match path.strip_prefix("/batch/") {
                Some(id) if !id.contains('/') => {
                    get(server, &format!("/batch/{id}/tasks")).await.to_string()
                }
                _ => String::new(),
            };
            let why = if settled {
                "settled without the condition".to_string()
            } else {
                format!("timed out after {secs} s")
            };
            // The server's log without this loop's own requests.
            let log = server.log();
            let log: Vec<&str> = log
                .lines()
                .filter(|l| !(l.contains("method=GET") && l.contains("on_response")))
                .collect();
            panic!(
                "{}\n--- polling {path}: {why}\nlast answer: {v}\ntasks: {tasks}",
                log.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn keypair(seed: u8) -> schnorrkel::Keypair {
    schnorrkel::MiniSecretKey::from_bytes(&[seed; 32])
        .unwrap()
        .expand_to_keypair(schnorrkel::ExpansionMode::Ed25519)
}

fn hotkey_of(kp: &schnorrkel::Keypair) -> String {
    rollout_server::auth::ss58_encode(&kp.public.to_bytes(), 42)
}

fn signed_headers(kp: &schnorrkel::Keypair, nonce: &str) -> Vec<(&'static str, String)> {
    let hotkey = hotkey_of(kp);
    let sig = kp.sign_simple(b"substrate", format!("{hotkey}{nonce}").as_bytes());
    vec![
        ("x-hotkey", hotkey),
        ("x-nonce", nonce.to_string()),
        ("x-signature", format!("0x{}", hex::encode(sig.to_bytes()))),
    ]
}

fn containers_of(job: &str) -> String {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.rollout.job={job}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_client_flow_streams_events_and_reports_results() {
    let tmp = tempfile::tempdir().unwrap();
    let kp = keypair(1);
    std::fs::write(tmp.path().join("hotkeys"), format!("{}\n", hotkey_of(&kp))).unwrap();
    // The seed's clients sign submissions only: their server opens reads.
    let server = start_server(
        &tmp.path().join("data"),
        &tmp.path().join("cache"),
        &[
            "--auth",
            "hotkey",
            "--hotkeys-file",
            tmp.path().join("hotkeys").to_str().unwrap(),
            "--public-reads",
        ],
    );
    let archive = executor_archive(tmp.path(), "batch", 0);
    let (status, body) = submit(
        &server,
        &archive,
        "?concurrent_tasks=2",
        &signed_headers(&kp, "nonce-1"),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["batch_id"].as_str().unwrap().to_string();
    assert_eq!(body["total_tasks"], 2);
    assert_eq!(body["concurrent_tasks"], 2);
    assert_eq!(body["ws_url"], format!("/ws?batch_id={id}"));

    let (mut ws, _) =
        tokio_tungstenite::connect_async(server.ws_url(&format!("/ws?batch_id={id}")))
            .await
            .unwrap();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, ws.next()).await {
        match msg {
            Ok(tokio_tungstenite::tungstenite::Message::Text(t)) => {
                events.push(serde_json::from_str::<Value>(&t).unwrap())
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    // The seed's stream ends with `stream_closed`, right after the batch's last event.
    let closed = events.pop().unwrap();
    assert_eq!(closed, json!({"event": "stream_closed", "batch_id": id}));
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names.first(), Some(&"snapshot"), "{names:?}");
    assert_eq!(
        names.last(),
        Some(&"batch_complete"),
        "{names:?}\n{}",
        server.log()
    );
    let snap = &events[0]["data"];
    // Whatever had not happened at connect time must arrive as an event.
    if snap["status"] == "pending" {
        assert!(names.contains(&"batch_started"), "{names:?}");
    }
    for t in snap["tasks"].as_array().unwrap() {
        let task = t["task_id"].as_str().unwrap();
        if t["status"] == "queued" {
            assert!(
                events
                    .iter()
                    .any(|e| e["event"] == "task_started" && e["task_id"] == task),
                "{events:?}"
            );
        }
        assert!(
            events
                .iter()
                .any(|e| e["event"] == "task_complete" && e["task_id"] == task),
            "{events:?}"
        );
    }
    let done = events.last().unwrap();
    assert_eq!(done["batch_id"], id.as_str());
    assert_eq!(done["data"]["status"], "completed");
    assert_eq!(done["data"]["total"], 2);
    assert_eq!(done["data"]["passed"], 1);
    assert_eq!(done["data"]["reward"], 0.5);

    let batch = get(&server, &format!("/batch/{id}")).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["total_tasks"], 2);
    assert_eq!(batch["completed_tasks"], 2);
    assert_eq!(batch["passed_tasks"], 1);
    assert_eq!(batch["failed_tasks"], 1);
    assert_eq!(batch["aggregate_reward"], 0.5);
    assert!(batch["error"].is_null());
    assert!(batch["duration_ms"].as_i64().unwrap() > 0);

    let tasks = get(&server, &format!("/batch/{id}/tasks")).await;
    let tasks = tasks["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    let solvable = get(&server, &format!("/batch/{id}/task/solvable")).await;
    assert_eq!(solvable["status"], "completed");
    assert_eq!(solvable["passed"], true);
    assert_eq!(solvable["reward"], 1.0);
    let results = solvable["test_results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{solvable}");
    assert!(results
        .iter()
        .all(|r| r["passed"] == true && r["exit_code"] == 0));
    let unsolvable = get(&server, &format!("/batch/{id}/task/unsolvable")).await;
    assert_eq!(unsolvable["passed"], false);
    assert_eq!(unsolvable["reward"], 0.0);
    let failing: Vec<&Value> = unsolvable["test_results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["passed"] == false)
        .collect();
    assert_eq!(failing.len(), 1);
    assert_eq!(failing[0]["name"], "test_main.sh");
    assert_eq!(failing[0]["exit_code"], 1);

    let resp = client()
        .get(server.url(&format!("/batch/{id}/task/nope")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"], "not_found");
    assert!(err["message"].as_str().unwrap().contains("nope"));

    let list = get(&server, "/batches").await;
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["batch_id"] == id.as_str() && b["status"] == "completed"));
    let metrics = metrics(&server).await;
    assert_metric(&metrics, "rollout_serve_tasks_passed 1");
    assert_metric(&metrics, "rollout_serve_tasks_failed 1");
    assert_metric(&metrics, "rollout_serve_batches_completed 1");
    assert_metric(&metrics, "rollout_serve_task_duration_seconds_count 2");
    // The seed's own metric names, for its dashboards.
    assert_metric(&metrics, "term_executor_tasks_passed 1");
    assert_metric(&metrics, "term_executor_batches_completed 1");
    let status = get(&server, "/status").await;
    assert_eq!(status["total_batches"], 1);
    assert_eq!(status["tasks_passed"], 1);
    assert_eq!(status["auth"], "hotkey");
    assert!(status["limits"]["max_archive_bytes"].as_u64().unwrap() > 0);
    assert!(
        containers_of(&id).is_empty(),
        "containers left: {}",
        containers_of(&id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_refuses_missing_bad_replayed_and_unlisted_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let kp = keypair(2);
    let stranger = keypair(3);
    std::fs::write(
        tmp.path().join("hotkeys"),
        format!("# allowed\n{}\n", hotkey_of(&kp)),
    )
    .unwrap();
    let server = start_server(
        &tmp.path().join("hk"),
        &tmp.path().join("cache"),
        &[
            "--auth",
            "hotkey",
            "--hotkeys-file",
            tmp.path().join("hotkeys").to_str().unwrap(),
        ],
    );
    let empty = tmp.path().join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    // Missing headers.
    let (s, b) = submit(&server, &empty, "", &[]).await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (401, "missing_credentials"),
        "{b}"
    );
    // A signature by another key.
    let mut forged = signed_headers(&kp, "n-forged");
    forged[2].1 = signed_headers(&stranger, "n-forged")[2].1.clone();
    let (s, b) = submit(&server, &empty, "", &forged).await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (401, "invalid_signature"),
        "{b}"
    );
    // A valid signature passes authentication (the empty archive is refused after it) ...
    let good = signed_headers(&kp, "n-once");
    let (s, b) = submit(&server, &empty, "", &good).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"], "invalid_archive");
    // ... once.
    let (s, b) = submit(&server, &empty, "", &good).await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (401, "nonce_reused"),
        "{b}"
    );
    // A hotkey outside the allowlist.
    let (s, b) = submit(&server, &empty, "", &signed_headers(&stranger, "n-2")).await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (403, "unauthorized_hotkey"),
        "{b}"
    );
    // A malformed SS58 address.
    let mut bad = signed_headers(&kp, "n-3");
    bad[0].1 = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQZ".into();
    let (s, b) = submit(&server, &empty, "", &bad).await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (401, "invalid_hotkey"),
        "{b}"
    );
    // Cancels need credentials too; health and metrics do not.
    let r = client()
        .post(server.url("/batch/x/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        client()
            .get(server.url("/health"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let metrics = metrics(&server).await;
    assert_metric(&metrics, "rollout_serve_auth_failures_total 6");

    // Token mode: hashes only on the server.
    let token = "tok-3f9a1c77e2";
    std::fs::write(
        tmp.path().join("tokens"),
        format!("{}\n", blake3::hash(token.as_bytes()).to_hex()),
    )
    .unwrap();
    let tserver = start_server(
        &tmp.path().join("tk"),
        &tmp.path().join("cache"),
        &[
            "--auth",
            "token",
            "--tokens-file",
            tmp.path().join("tokens").to_str().unwrap(),
        ],
    );
    let (s, b) = submit(&tserver, &empty, "", &[]).await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (401, "missing_credentials")
    );
    let (s, b) = submit(
        &tserver,
        &empty,
        "",
        &[("authorization", "Bearer wrong".into())],
    )
    .await;
    assert_eq!((s, b["error"].as_str().unwrap()), (401, "invalid_token"));
    let (s, b) = submit(
        &tserver,
        &empty,
        "",
        &[("authorization", format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (400, "invalid_archive"),
        "{b}"
    );
    // Secrets never reach the logs.
    for log in [server.log(), tserver.log()] {
        assert!(log.contains("authentication refused"), "{log}");
        assert!(!log.contains(token) && !log.contains("wrong"), "{log}");
        assert!(!log.contains(&good[2].1[2..]), "signature logged: {log}");
        assert!(!log.contains(&hotkey_of(&kp)), "hotkey logged: {log}");
    }
}

fn python(script: &str) {
    let ok = Command::new("python3")
        .args(["-c", script])
        .status()
        .unwrap()
        .success();
    assert!(ok, "python3 failed: {script}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_hostile_archives_are_refused_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = start_server(
        &data,
        &tmp.path().join("cache"),
        &["--max-archive-bytes", "200000"],
    );
    let status = get(&server, "/status").await;
    assert_eq!(status["limits"]["max_archive_bytes"], 200000);
    // Too large.
    let big = tmp.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 300_000]).unwrap();
    let (s, b) = submit(&server, &big, "", &[]).await;
    assert_eq!(s, 413, "{b}");
    assert!(
        ["archive_too_large", "request_too_large"].contains(&b["error"].as_str().unwrap()),
        "{b}"
    );
    // Path traversal.
    let trav = tmp.path().join("trav.tar.gz");
    python(&format!("import tarfile, io\nt = tarfile.open('{}', 'w:gz')\nd = b'x'\ni = tarfile.TarInfo('tasks/a/../../../escaped.txt'); i.size = 1; t.addfile(i, io.BytesIO(d))\nt.close()\n", trav.display()));
    let (s, b) = submit(&server, &trav, "", &[]).await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (400, "invalid_archive"),
        "{b}"
    );
    assert!(b["message"].as_str().unwrap().contains(".."), "{b}");
    // Symlink escape: a link to / and a file written through it.
    let link = tmp.path().join("link.tar.gz");
    python(&format!("import tarfile, io\nt = tarfile.open('{}', 'w:gz')\ni = tarfile.TarInfo('tasks/evil'); i.type = tarfile.SYMTYPE; i.linkname = '{}'; t.addfile(i)\nd = b'x'\ni = tarfile.TarInfo('tasks/evil/pwned.txt'); i.size = 1; t.addfile(i, io.BytesIO(d))\nt.close()\n", link.display(), tmp.path().display()));
    let (s, b) = submit(&server, &link, "", &[]).await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (400, "invalid_archive"),
        "{b}"
    );
    assert!(!tmp.path().join("pwned.txt").exists());
    // Compression bomb: 50 MB of zeros in a tiny gzip.
    let bomb = tmp.path().join("bomb.tar.gz");
    python(&format!("import tarfile, io\nt = tarfile.open('{}', 'w:gz')\nd = bytes(50 << 20)\ni = tarfile.TarInfo('tasks/a/zeros'); i.size = len(d); t.addfile(i, io.BytesIO(d))\nt.close()\n", bomb.display()));
    assert!(std::fs::metadata(&bomb).unwrap().len() < 200_000);
    let (s, b) = submit(&server, &bomb, "", &[]).await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (400, "invalid_archive"),
        "{b}"
    );
    assert!(b["message"].as_str().unwrap().contains("ratio"), "{b}");
    // Not an archive; no archive field at all.
    let junk = tmp.path().join("junk.bin");
    std::fs::write(&junk, b"hello").unwrap();
    let (s, b) = submit(&server, &junk, "", &[]).await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (400, "invalid_archive"),
        "{b}"
    );
    let (ct, body) = multipart(&[("other", None, b"x")]);
    let r = client()
        .post(server.url("/submit"))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Nothing of the refused uploads stays on disk, and no batch was recorded.
    let runs: Vec<_> = std::fs::read_dir(data.join("runs")).unwrap().collect();
    assert!(runs.is_empty(), "{runs:?}");
    assert_eq!(get(&server, "/batches").await, json!([]));
    let metrics = metrics(&server).await;
    assert_metric(&metrics, "rollout_serve_submissions_rejected_total 6");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_interrupted_by_a_crash_is_marked_then_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cache = tmp.path().join("cache");
    let archive = executor_archive(tmp.path(), "slow", 6);
    let mut a = start_server(&data, &cache, &[]);
    let (s, b) = submit(&a, &archive, "", &[]).await;
    assert_eq!(s, 202, "{b}");
    let id = b["batch_id"].as_str().unwrap().to_string();
    poll(&a, &format!("/batch/{id}/tasks"), 240, |v| {
        v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["status"] == "running_agent")
    })
    .await;
    a.signal(libc::SIGKILL);
    a.wait_exit(10);
    assert!(
        !containers_of(&id).is_empty(),
        "a killed server leaves its containers"
    );

    // Restart: the batch is interrupted, never lost, and its containers are removed.
    let mut b_server = start_server(&data, &cache, &[]);
    let batch = get(&b_server, &format!("/batch/{id}")).await;
    assert_eq!(batch["status"], "interrupted", "{batch}");
    assert!(batch["error"]
        .as_str()
        .unwrap()
        .contains("--resume-interrupted"));
    let tasks = get(&b_server, &format!("/batch/{id}/tasks")).await;
    assert!(
        tasks["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] == "interrupted"),
        "{tasks}"
    );
    assert!(containers_of(&id).is_empty());
    b_server.signal(libc::SIGTERM);
    assert_eq!(b_server.wait_exit(60), Some(0));

    // With --resume-interrupted the batch runs to the end.
    let c = start_server(&data, &cache, &["--resume-interrupted"]);
    let batch = poll(&c, &format!("/batch/{id}"), 300, |v| {
        v["status"] == "completed"
    })
    .await;
    assert_eq!(batch["passed_tasks"], 1, "{batch}");
    assert_eq!(batch["aggregate_reward"], 0.5);
    assert!(containers_of(&id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_queue_beyond_the_limit_and_cancel_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(
        &tmp.path().join("data"),
        &tmp.path().join("cache"),
        &["--max-batches", "2"],
    );
    let fast = executor_archive(tmp.path(), "fast", 0);
    let slow = executor_archive(tmp.path(), "slow", 600);
    // The same archive twice at once: each batch unpacks on its own.
    let (r1, r2) = tokio::join!(
        submit(&server, &fast, "", &[]),
        submit(&server, &fast, "", &[])
    );
    assert_eq!((r1.0, r2.0), (202, 202), "{r1:?} {r2:?}");
    // A third waits for a slot.
    let (s, b) = submit(&server, &slow, "?concurrent_tasks=1", &[]).await;
    assert_eq!(s, 202, "{b}");
    let slow_id = b["batch_id"].as_str().unwrap().to_string();
    let status = get(&server, "/status").await;
    if get(&server, &format!("/batch/{slow_id}")).await["status"] == "pending" {
        assert_eq!(status["queued_batches"], 1, "{status}");
    }
    for r in [&r1.1, &r2.1] {
        let id = r["batch_id"].as_str().unwrap();
        let batch = poll(&server, &format!("/batch/{id}"), 300, |v| {
            v["status"] == "completed"
        })
        .await;
        assert_eq!(batch["passed_tasks"], 1, "{batch}");
        assert_eq!(batch["aggregate_reward"], 0.5);
    }
    poll(&server, &format!("/batch/{slow_id}/tasks"), 240, |v| {
        v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["status"] == "running_agent")
    })
    .await;
    let r = client()
        .post(server.url(&format!("/batch/{slow_id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let batch = poll(&server, &format!("/batch/{slow_id}"), 120, |v| {
        v["status"] == "cancelled"
    })
    .await;
    assert_eq!(batch["passed_tasks"], 0, "{batch}");
    let tasks = get(&server, &format!("/batch/{slow_id}/tasks")).await;
    assert!(
        tasks["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] == "cancelled"),
        "{tasks}"
    );
    assert!(
        containers_of(&slow_id).is_empty(),
        "cancelled batch left containers"
    );
    let r = client()
        .post(server.url(&format!("/batch/{slow_id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let metrics = metrics(&server).await;
    assert_metric(&metrics, "rollout_serve_batches_cancelled 1");
    assert_metric(&metrics, "rollout_serve_batches_completed 2");
}

/// A tar.gz of the hello-world example as `tasks/hello-world`.
fn harbor_archive(root: &Path) -> PathBuf {
    let src = root.join("harbor");
    std::fs::create_dir_all(src.join("tasks")).unwrap();
    let st = Command::new("cp")
        .args([
            "-r",
            example("hello-world").to_str().unwrap(),
            src.join("tasks/hello-world").to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let archive = root.join("harbor.tar.gz");
    let st = Command::new("tar")
        .args([
            "czf",
            archive.to_str().unwrap(),
            "-C",
            src.to_str().unwrap(),
            "tasks",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    archive
}

/// Check `value` against the schema `name` of the OpenAPI document: required properties present,
/// declared types respected, recursively through objects, arrays, `$ref` and `allOf`.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) {
    if let Some(r) = schema.get("$ref").and_then(|r| r.as_str()) {
        let name = r.rsplit('/').next().unwrap();
        let s = &doc["components"]["schemas"][name];
        assert!(!s.is_null(), "{at}: unknown schema {name}");
        return validate(doc, s, value, at);
    }
    if let Some(all) = schema.get("allOf").and_then(|a| a.as_array()) {
        for s in all {
            validate(doc, s, value, at);
        }
        return;
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().map(|x| x.as_str().unwrap()).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        });
        assert!(ok, "{at}: {value} is not of type {types:?}");
    }
    if let Some(e) = schema.get("enum").and_then(|e| e.as_array()) {
        assert!(e.contains(value), "{at}: {value} not in {e:?}");
    }
    if let Some(obj) = value.as_object() {
        for req in schema
            .get("required")
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
        {
            let k = req.as_str().unwrap();
            assert!(
                obj.contains_key(k),
                "{at}: required property {k} missing in {value}"
            );
        }
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (k, s) in props {
                if let Some(v) = obj.get(k) {
                    validate(doc, s, v, &format!("{at}.{k}"));
                }
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            validate(doc, items, v, &format!("{at}[{i}]"));
        }
    }
}

fn schema_of(doc: &Value, path: &str, method: &str, status: &str) -> Value {
    doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_job_api_streams_events_lists_trials_and_serves_files() {
    let tmp = tempfile::tempdir().unwrap();
    let token = "native-token-51c2";
    let hashes = blake3::hash(token.as_bytes()).to_hex().to_string();
    let mut server = start_server_env(
        &tmp.path().join("data"),
        &tmp.path().join("cache"),
        &["--auth", "token"],
        &[("ROLLOUT_SERVE_TOKEN_HASHES", &hashes)],
    );
    let auth = format!("Bearer {token}");
    // Reads need the token as writes do.
    server.auth = Some(auth.clone());
    let doc = get(&server, "/api/v1/openapi.json").await;
    let archive = std::fs::read(harbor_archive(tmp.path())).unwrap();
    let config =
        json!({"agents": [{"name": "oracle"}], "datasets": [{"path": "tasks"}], "n_attempts": 2});
    let (ct, body) = multipart(&[
        ("config", None, config.to_string().as_bytes()),
        ("archive", Some("tasks.tar.gz"), &archive),
    ]);
    let r = client()
        .post(server.url("/api/v1/jobs"))
        .header("content-type", &ct)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "submissions need the token");
    let r = client()
        .post(server.url("/api/v1/jobs"))
        .header("content-type", ct)
        .header("authorization", &auth)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let job: Value = r.json().await.unwrap();
    validate(
        &doc,
        &schema_of(&doc, "/api/v1/jobs", "post", "202"),
        &job,
        "POST /api/v1/jobs",
    );
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["n_trials"], 2);

    // SSE: snapshot first, then the runner's events, ending with job_finished.
    let mut resp = client()
        .get(server.url(&format!("/api/v1/jobs/{id}/events")))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(300), resp.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        text.push_str(&String::from_utf8_lossy(&chunk));
        assert!(Instant::now() < deadline);
    }
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let name = block
            .lines()
            .find_map(|l| l.strip_prefix("event: "))
            .unwrap_or("");
        let data = block
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or("null");
        if name.is_empty() {
            continue; // keep-alive comment
        }
        events.push((
            name.to_string(),
            serde_json::from_str::<Value>(data).unwrap(),
        ));
    }
    assert_eq!(events[0].0, "snapshot");
    assert_eq!(events.last().unwrap().0, "job_finished", "{text}");
    for (name, e) in &events[1..] {
        validate(&doc, &doc["components"]["schemas"]["StreamEvent"], e, name);
        assert_eq!(e["event"], name.as_str());
        assert_eq!(e["job_id"], id.as_str());
    }
    let seqs: Vec<u64> = events[1..]
        .iter()
        .map(|(_, e)| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    let job = get(&server, &format!("/api/v1/jobs/{id}")).await;
    validate(
        &doc,
        &schema_of(&doc, "/api/v1/jobs/{id}", "get", "200"),
        &job,
        "job",
    );
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["n_passed"], 2);
    assert_eq!(job["mean_reward"], 1.0);
    assert_eq!(job["result"]["stats"]["n_trials"], 2);
    let jobs = get(&server, "/api/v1/jobs").await;
    validate(
        &doc,
        &schema_of(&doc, "/api/v1/jobs", "get", "200"),
        &jobs,
        "jobs",
    );
    let trials = get(&server, &format!("/api/v1/jobs/{id}/trials")).await;
    validate(
        &doc,
        &schema_of(&doc, "/api/v1/jobs/{id}/trials", "get", "200"),
        &trials,
        "trials",
    );
    let list = trials["trials"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let name = list[0]["name"].as_str().unwrap().to_string();
    let trial = get(&server, &format!("/api/v1/jobs/{id}/trials/{name}")).await;
    validate(
        &doc,
        &schema_of(&doc, "/api/v1/jobs/{id}/trials/{trial}", "get", "200"),
        &trial,
        "trial",
    );
    assert_eq!(trial["reward"], 1.0);
    for (path, method, status) in [("/status", "get", "200"), ("/health", "get", "200")] {
        let v = get(&server, path).await;
        validate(&doc, &schema_of(&doc, path, method, status), &v, path);
    }

    // Downloads: authenticated, confined to the trial directory.
    let file = format!("/api/v1/jobs/{id}/trials/{name}/files/result.json");
    let r = client().get(server.url(&file)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client()
        .get(server.url(&file))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let downloaded: Value = r.json().await.unwrap();
    assert_eq!(downloaded["trial_name"], name.as_str());
    assert_eq!(downloaded["id"], trial["result"]["id"]);
    assert_eq!(downloaded["reward"], 1.0);
    let r = client()
        .get(server.url(&format!(
            "/api/v1/jobs/{id}/trials/{name}/files/verifier/test-stdout.txt"
        )))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for evil in [
        "..%2F..%2F..%2Fserve.db",
        "%2Fetc%2Fpasswd",
        "agent/..%2F..%2Fconfig.json",
    ] {
        let r = client()
            .get(server.url(&format!("/api/v1/jobs/{id}/trials/{name}/files/{evil}")))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{evil}");
        let e: Value = r.json().await.unwrap();
        validate(&doc, &doc["components"]["schemas"]["Error"], &e, evil);
    }

    // A configuration may not reach host paths.
    let r = client()
        .post(server.url("/api/v1/jobs"))
        .header("content-type", "application/json")
        .header("authorization", &auth)
        .body(json!({"datasets": [{"path": "/etc"}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"], "invalid_job", "{e}");
    assert!(containers_of(&id).is_empty());
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let doc = rollout_server::openapi::document();
    let mut routed: Vec<(String, String)> = rollout_server::routes()
        .iter()
        .map(|r| {
            (
                rollout_server::openapi::openapi_path(r.path),
                r.method.to_string(),
            )
        })
        .collect();
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (p.clone(), m.clone()))
        })
        .collect();
    routed.sort();
    documented.sort();
    assert_eq!(routed, documented);
    // Every reference resolves.
    let text = doc.to_string();
    for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = part.split('"').next().unwrap();
        assert!(
            !doc["components"]["schemas"][name].is_null(),
            "dangling $ref {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cancels_after_the_grace_and_old_runs_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cache = tmp.path().join("cache");
    // Finished runs older than the TTL disappear with their files.
    let server = start_server(&data, &cache, &["--ttl", "3"]);
    let fast = executor_archive(tmp.path(), "fast", 0);
    let (s, b) = submit(&server, &fast, "", &[]).await;
    assert_eq!(s, 202, "{b}");
    let id = b["batch_id"].as_str().unwrap().to_string();
    poll(&server, &format!("/batch/{id}"), 300, |v| {
        v["status"] == "completed"
    })
    .await;
    assert!(data.join("jobs").join(&id).is_dir());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client()
            .get(server.url(&format!("/batch/{id}")))
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run was not reaped:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!data.join("jobs").join(&id).exists());
    assert!(!data.join("runs").join(&id).exists());
    // The archive was unpacked in the run's directory, not in the shared cache: nothing of it
    // outlives the run.
    let leftovers: Vec<PathBuf> = std::fs::read_dir(cache.join("archives"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "archive cache not reaped: {leftovers:?}"
    );
    drop(server);

    // SIGTERM: running trials get the grace period, then are cancelled; nothing is left.
    let mut server = start_server(&data, &cache, &["--shutdown-grace", "1"]);
    let slow = executor_archive(tmp.path(), "slow", 600);
    let (s, b) = submit(&server, &slow, "", &[]).await;
    assert_eq!(s, 202, "{b}");
    let id = b["batch_id"].as_str().unwrap().to_string();
    poll(&server, &format!("/batch/{id}/tasks"), 240, |v| {
        v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["status"] == "running_agent")
    })
    .await;
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(120), Some(0), "{}", server.log());
    assert!(
        containers_of(&id).is_empty(),
        "containers left after SIGTERM"
    );
    assert!(
        server.log().contains("grace period over"),
        "{}",
        server.log()
    );
    let again = start_server(&data, &cache, &[]);
    let batch = get(&again, &format!("/batch/{id}")).await;
    assert_eq!(batch["status"], "interrupted", "{batch}");
}

/// `rollout ARGS` with its own provenance store, from `cwd`, in a blocking thread.
async fn rollout_with_store(cwd: &Path, store: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = rollout_cmd();
    cmd.current_dir(cwd).env("ROLLOUT_STORE", store).args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_pushes_lineage_that_the_server_stores_and_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let token = "prov-token-7d1e";
    std::fs::write(
        tmp.path().join("tokens"),
        format!("{}\n", blake3::hash(token.as_bytes()).to_hex()),
    )
    .unwrap();
    let server_store = tmp.path().join("server/rollout.db");
    let server = start_server_env(
        &tmp.path().join("data"),
        &tmp.path().join("cache"),
        &[
            "--auth",
            "token",
            "--tokens-file",
            tmp.path().join("tokens").to_str().unwrap(),
        ],
        &[("ROLLOUT_STORE", server_store.to_str().unwrap())],
    );

    // A traced step on "another machine" (its own store) makes an artifact.
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("in.txt"), "provenance\n").unwrap();
    let local = tmp.path().join("local/rollout.db");
    let traced = rollout_with_store(
        &work,
        &local,
        &["trace", "--", "sh", "-c", "tr a-z A-Z < in.txt > out.txt"],
    )
    .await;
    assert!(traced.status.success(), "{traced:?}");
    let hash = blake3::hash(&std::fs::read(work.join("out.txt")).unwrap())
        .to_hex()
        .to_string();

    // Not on the server yet; registering without the token is refused.
    let resp = client()
        .get(server.url(&format!("/api/v1/artifacts/{hash}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unknown_artifact");
    let refused = rollout_with_store(
        &work,
        &local,
        &["register", "out.txt", "--server", &server.base],
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{refused:?}"
    );

    let pushed = rollout_with_store(
        &work,
        &local,
        &[
            "register",
            "out.txt",
            "--server",
            &server.base,
            "--token",
            token,
        ],
    )
    .await;
    assert!(pushed.status.success(), "{pushed:?}\n{}", server.log());

    let info = get(&server, &format!("/api/v1/artifacts/{hash}")).await;
    assert_eq!(info["hash"], hash.as_str(), "{info}");
    let lineage = get(
        &server,
        &format!("/api/v1/artifacts/{}/lineage", &hash[..12]),
    )
    .await;
    assert_eq!(lineage["hash"], hash.as_str(), "{lineage}");
    let text = lineage.to_string();
    assert!(
        text.contains("tr a-z A-Z"),
        "the producing job is missing: {text}"
    );
    assert!(
        text.contains("in.txt"),
        "the step's input is missing: {text}"
    );
    // The token never reaches the server's logs.
    assert!(!server.log().contains(token));
}

/// A deployment configured the term-executor's way (its environment variables, its clients'
/// `X-Hotkey` header alone) gets what it configured: limits in /status, the seed's timeouts on
/// the generated tasks, CORS, and the seed's WebSocket messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_deployment_variables_and_hotkey_header_clients_work() {
    let tmp = tempfile::tempdir().unwrap();
    let hotkey = hotkey_of(&keypair(3));
    std::fs::write(tmp.path().join("hotkeys"), format!("{hotkey}\n")).unwrap();
    let server = start_server_env(
        &tmp.path().join("data"),
        &tmp.path().join("cache"),
        &[
            "--auth",
            "hotkey-header",
            "--hotkeys-file",
            tmp.path().join("hotkeys").to_str().unwrap(),
        ],
        &[
            // Flags win over the variables: the helper's `--port 0` beats PORT.
            ("PORT", "1"),
            ("MAX_CONCURRENT_TASKS", "3"),
            ("AGENT_TIMEOUT_SECS", "3"),
            ("TEST_TIMEOUT_SECS", "20"),
            ("CLONE_TIMEOUT_SECS", "45"),
            ("MAX_OUTPUT_BYTES", "4096"),
            ("MAX_ARCHIVE_BYTES", "5000000"),
            ("SESSION_TTL_SECS", "7200"),
            ("ROLLOUT_SERVE_CORS_ORIGINS", "https://dash.example.org"),
        ],
    );
    let status = get(&server, "/status").await;
    assert_eq!(status["auth"], "hotkey-header");
    assert_eq!(status["max_concurrent_tasks"], 3);
    let limits = &status["limits"];
    assert_eq!(limits["max_archive_bytes"], 5_000_000);
    assert_eq!(limits["max_output_bytes"], 4096);
    assert_eq!(limits["agent_timeout_secs"], 3.0);
    assert_eq!(limits["test_timeout_secs"], 20.0);
    assert_eq!(limits["clone_timeout_secs"], 45);
    assert_eq!(limits["session_ttl_secs"], 7200);

    // CORS: the configured origin is answered, another is not.
    let preflight = |origin: &'static str| {
        client()
            .request(reqwest::Method::OPTIONS, server.url("/submit"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "x-hotkey")
            .send()
    };
    let ok = preflight("https://dash.example.org").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://dash.example.org"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // The seed's clients send X-Hotkey alone.
    let archive = executor_archive(tmp.path(), "batch", 30);
    let (status, body) = submit(&server, &archive, "", &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, body) = submit(
        &server,
        &archive,
        "",
        &[("x-hotkey", hotkey_of(&keypair(4)))],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, body) = submit(&server, &archive, "", &[("x-hotkey", hotkey.clone())]).await;
    assert_eq!(status, 202, "{body}");
    let id = body["batch_id"].as_str().unwrap().to_string();

    // An unknown batch: the socket opens, names the batch, closes.
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("/ws?batch_id=nope"))
        .await
        .unwrap();
    match ws.next().await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v, json!({"error": "batch_not_found", "batch_id": "nope"}));
        }
        other => panic!("expected batch_not_found, got {other:?}"),
    }

    // AGENT_TIMEOUT_SECS=3 against an agent that sleeps 30 s: both tasks time out.
    let batch = poll(&server, &format!("/batch/{id}"), 300, |b| {
        b["status"] == "completed" || b["status"] == "failed"
    })
    .await;
    assert_eq!(batch["passed_tasks"], 0, "{batch}");
    let tasks = get(&server, &format!("/batch/{id}/tasks")).await;
    for t in tasks["tasks"].as_array().unwrap() {
        let err = t["error"].to_string();
        assert!(err.starts_with("\"agent_execution_timeout"), "{t}");
    }
    let metrics = metrics(&server).await;
    assert_metric(&metrics, "term_executor_batches_total 1");
}

/// SESSION_TTL_SECS (`--max-run-age`): a batch still running past it is cancelled, as the seed's
/// reaper does, and its containers are removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_past_the_seed_session_ttl_are_cancelled() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server_env(
        &tmp.path().join("data"),
        &tmp.path().join("cache"),
        &[],
        &[("SESSION_TTL_SECS", "5")],
    );
    let archive = executor_archive(tmp.path(), "slow", 600);
    let (status, body) = submit(&server, &archive, "", &[]).await;
    assert_eq!(status, 202, "{body}");
    let id = body["batch_id"].as_str().unwrap().to_string();
    let batch = poll(&server, &format!("/batch/{id}"), 240, |b| {
        b["status"] == "cancelled"
    })
    .await;
    assert_eq!(batch["passed_tasks"], 0, "{batch}");
    assert!(
        server.log().contains("--max-run-age"),
        "the reason is logged: {}",
        server.log()
    );
    wait_for("the batch's containers to go", 60, || {
        containers_of(&id).is_empty()
    });
}

/// The service's container image (deploy/serve.Dockerfile, built by scripts/serve-image from
/// this build's binary) serves the API and runs a job's trials as sibling containers on the
/// host engine through the mounted socket, configured by the seed's variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_image_runs_jobs_on_the_host_engine() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let tag = format!("rollout-serve:test-{}", std::process::id());
    let out = Command::new(repo().join("scripts/serve-image"))
        .arg(&tag)
        .env("ROLLOUT_BIN", env!("CARGO_BIN_EXE_rollout"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/serve-image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    /// Removes the container and the image on every path.
    struct Cleanup(String, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-fv", &self.0]).output();
            let _ = Command::new("docker").args(["rmi", "-f", &self.1]).output();
        }
    }
    let name = format!("rollout-serve-test-{}", std::process::id());
    let _cleanup = Cleanup(name.clone(), tag.clone());
    let run = Command::new("docker")
        .args([
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            "io.rollout.test=serve-image",
        ])
        .args(["-v", "/var/run/docker.sock:/var/run/docker.sock"])
        .args(["-p", "127.0.0.1::9090"])
        .args(["-e", "PORT=9090", "-e", "MAX_CONCURRENT_TASKS=2"])
        .args(["-e", "ROLLOUT_LOG=info"])
        .arg(&tag)
        .args([
            "--ca-certs",
            "none",
            "--executor-image",
            "debian:bookworm-slim",
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let logs = || {
        let o = Command::new("docker")
            .args(["logs", &name])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let port = Command::new("docker")
        .args(["port", &name, "9090/tcp"])
        .output()
        .unwrap();
    let mapped = String::from_utf8_lossy(&port.stdout);
    let base = format!("http://{}", mapped.lines().next().unwrap_or("").trim());
    let get_json = |path: String| {
        let url = format!("{base}{path}");
        async move {
            let r = client().get(url).send().await.ok()?;
            r.json::<Value>().await.ok()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(v) = get_json("/status".into()).await {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "server did not answer: {}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // PORT chose the listening port inside; MAX_CONCURRENT_TASKS the limit.
    assert_eq!(status["max_concurrent_tasks"], 2, "{status}");

    let archive = std::fs::read(harbor_archive(tmp.path())).unwrap();
    let config = json!({"agents": [{"name": "oracle"}], "datasets": [{"path": "tasks"}]});
    let (ct, body) = multipart(&[
        ("config", None, config.to_string().as_bytes()),
        ("archive", Some("tasks.tar.gz"), &archive),
    ]);
    let r = client()
        .post(format!("{base}/api/v1/jobs"))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "{}", logs());
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(300);
    let job = loop {
        let j = get_json(format!("/api/v1/jobs/{id}"))
            .await
            .unwrap_or_default();
        if matches!(
            j["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            break j;
        }
        assert!(
            Instant::now() < deadline,
            "job did not finish: {j}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(job["status"], "completed", "{job}\n{}", logs());
    assert_eq!(job["mean_reward"], 1.0, "{job}");
    // The trial ran as a sibling container, labelled with the job, and was removed.
    assert_no_containers(&id);
}

/// The seed's order: a batch is answered 202 before any repository is cloned; then it reports
/// `extracting` and, per task, `cloning_repo`, and a repository that cannot be cloned fails its
/// own task (with the clone's error) while the other task runs and scores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_answers_before_cloning_and_a_failed_clone_fails_only_its_task() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    // The unclonable repository: a git "server" whose listener never answers, so the clone of
    // `bad` hangs until the test closes it (then it fails).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = start_server(
        &tmp.path().join("data"),
        &tmp.path().join("cache"),
        &["--allow-repo-host", "127.0.0.1"],
    );
    let repo = tmp.path().join("proj");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("README.md"), "project\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "init"]);
    let src = tmp.path().join("src");
    let bad_url = format!("http://127.0.0.1:{port}/bad.git");
    for (id, url) in [
        ("bad", bad_url.clone()),
        ("good", format!("file://{}", repo.display())),
    ] {
        let t = src.join("tasks").join(id);
        std::fs::create_dir_all(t.join("tests")).unwrap();
        std::fs::write(
            t.join("workspace.yaml"),
            format!("repo: {url}\nversion: \"1\"\nlanguage: bash\n"),
        )
        .unwrap();
        std::fs::write(t.join("prompt.md"), "Create solved.txt.\n").unwrap();
        std::fs::write(t.join("tests/test_main.sh"), "grep -q solved solved.txt\n").unwrap();
    }
    std::fs::create_dir_all(src.join("agent_code")).unwrap();
    std::fs::write(
        src.join("agent_code/agent.sh"),
        "cd \"$REPO_DIR\" && echo solved > solved.txt\n",
    )
    .unwrap();
    let archive = tmp.path().join("batch.tar.gz");
    let st = Command::new("tar")
        .args([
            "czf",
            archive.to_str().unwrap(),
            "-C",
            src.to_str().unwrap(),
        ])
        .args(["tasks", "agent_code"])
        .status()
        .unwrap();
    assert!(st.success());

    // Answered while the clone of `bad` cannot have finished (its server has not answered).
    let (status, body) = submit(&server, &archive, "", &[]).await;
    assert_eq!(status, 202, "{body}\n{}", server.log());
    assert_eq!(body["total_tasks"], 2);
    let id = body["batch_id"].as_str().unwrap().to_string();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(server.ws_url(&format!("/ws?batch_id={id}")))
            .await
            .unwrap();
    // The batch is unpacking and `bad` is cloning, for as long as its server stays silent.
    poll(&server, &format!("/batch/{id}/task/bad"), 120, |t| {
        t["status"] == "cloning_repo"
    })
    .await;
    assert_eq!(
        get(&server, &format!("/batch/{id}")).await["status"],
        "extracting"
    );
    assert_eq!(
        get(&server, &format!("/batch/{id}/task/good")).await["status"],
        "cloning_repo"
    );
    drop(listener); // the pending connection is reset: the clone fails

    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, ws.next()).await {
        match msg {
            Ok(tokio_tungstenite::tungstenite::Message::Text(t)) => {
                events.push(serde_json::from_str::<Value>(&t).unwrap())
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(
        events.last().unwrap()["event"],
        "stream_closed",
        "{events:?}\n{}",
        server.log()
    );
    // Each task's statuses as the stream reported them: the snapshot's, then every change.
    let mut seen: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for t in events[0]["data"]["tasks"].as_array().unwrap() {
        seen.entry(t["task_id"].as_str().unwrap().into())
            .or_default()
            .push(t["status"].as_str().unwrap().into());
    }
    for e in &events[1..] {
        let status = match e["event"].as_str().unwrap() {
            "task_status" | "task_complete" => e["data"]["status"].as_str().unwrap(),
            _ => continue,
        };
        let list = seen
            .entry(e["task_id"].as_str().unwrap().into())
            .or_default();
        if list.last().map(String::as_str) != Some(status) {
            list.push(status.into());
        }
    }
    let strip =
        |v: &Vec<String>| -> Vec<String> { v.iter().filter(|s| *s != "queued").cloned().collect() };
    assert_eq!(
        strip(&seen["good"]),
        [
            "cloning_repo",
            "installing_deps",
            "running_agent",
            "running_tests",
            "completed"
        ],
        "{events:?}"
    );
    let bad = strip(&seen["bad"]);
    assert_eq!(
        bad.first().map(String::as_str),
        Some("cloning_repo"),
        "{bad:?}"
    );
    assert_eq!(bad.last().map(String::as_str), Some("failed"), "{bad:?}");
    assert!(
        !bad.iter()
            .any(|s| s == "running_agent" || s == "running_tests"),
        "{bad:?}"
    );

    let batch = get(&server, &format!("/batch/{id}")).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["total_tasks"], 2);
    assert_eq!(batch["passed_tasks"], 1);
    assert_eq!(batch["failed_tasks"], 1);
    assert_eq!(batch["aggregate_reward"], 0.5);
    let good = get(&server, &format!("/batch/{id}/task/good")).await;
    assert_eq!(good["status"], "completed", "{good}");
    assert_eq!(good["reward"], 1.0);
    let bad = get(&server, &format!("/batch/{id}/task/bad")).await;
    assert_eq!(bad["status"], "failed", "{bad}");
    assert_eq!(bad["passed"], false);
    let error = bad["error"].as_str().unwrap();
    assert!(
        error.contains("git clone failed") && error.contains(&bad_url),
        "{error}"
    );
}
