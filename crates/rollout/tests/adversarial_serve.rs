//! `rollout serve` against a hostile submitter, over a real socket: each abuse of issue 19 is a
//! request that must end in a 4xx with a precise JSON error, never in a run; secrets sent with a
//! job never come back; no response names a server path.

mod common;

use common::serve::{client, multipart, Server};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A server with its data, cache and log under `root`.
fn start_server(root: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    Server::spawn(
        &root.join("data"),
        &root.join("cache"),
        &root.join("server.log"),
        extra,
        env,
    )
}

/// A tar.gz of `src`'s entries `dirs`.
fn tar_gz(src: &Path, dirs: &[&str], out: &Path) -> Vec<u8> {
    let st = Command::new("tar")
        .arg("czf")
        .arg(out)
        .arg("-C")
        .arg(src)
        .args(dirs)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(out).unwrap()
}

/// A Harbor task directory `name` under `root/src/tasks` with this task.toml.
fn harbor_task(root: &Path, name: &str, toml: &str) {
    let t = root.join("src/tasks").join(name);
    std::fs::create_dir_all(t.join("tests")).unwrap();
    std::fs::create_dir_all(t.join("solution")).unwrap();
    std::fs::write(t.join("task.toml"), toml).unwrap();
    std::fs::write(t.join("instruction.md"), "Do nothing.\n").unwrap();
    std::fs::write(
        t.join("tests/test.sh"),
        "#!/bin/sh\necho 1 > /logs/verifier/reward.txt\n",
    )
    .unwrap();
    std::fs::write(t.join("solution/solve.sh"), "#!/bin/sh\ntrue\n").unwrap();
}

const IMAGE: &str = "[environment]\ndocker_image = \"debian:bookworm-slim\"\n";

/// The response of a request: status, JSON body, raw text.
async fn send(req: reqwest::RequestBuilder) -> (u16, Value, String) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(json!({"raw": text}));
    (status, v, text)
}

async fn post_job(
    server: &Server,
    config: &Value,
    archive: Option<&[u8]>,
    auth: Option<&str>,
) -> (u16, Value, String) {
    let mut req = client().post(server.url("/api/v1/jobs"));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let req = match archive {
        Some(bytes) => {
            let (ct, body) = multipart(&[
                ("config", None, config.to_string().as_bytes()),
                ("archive", Some("tasks.tar.gz"), bytes),
            ]);
            req.header("content-type", ct).body(body)
        }
        None => req
            .header("content-type", "application/json")
            .body(config.to_string()),
    };
    send(req).await
}

/// `POST /submit` of an executor archive.
async fn submit_archive(server: &Server, bytes: &[u8]) -> (u16, Value, String) {
    let (ct, body) = multipart(&[("archive", Some("batch.tar.gz"), bytes)]);
    send(
        client()
            .post(server.url("/submit"))
            .header("content-type", ct)
            .body(body),
    )
    .await
}

/// A refusal: the status, the error code, a message containing `needle`, and no server path.
#[track_caller]
fn assert_refused(
    got: &(u16, Value, String),
    status: u16,
    code: &str,
    needle: &str,
    forbidden: &[&Path],
) {
    let (s, v, text) = got;
    assert_eq!(*s, status, "{text}");
    assert_eq!(v["error"], code, "{text}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    for p in forbidden {
        let p = p.display().to_string();
        assert!(!text.contains(&p), "server path {p} in {text}");
    }
}

/// Every file under `dir` (recursively) as bytes.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_tasks_and_jobs_cannot_read_the_servers_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = "server-secret-6d1c0a57b9";
    let server = start_server(tmp.path(), &[], &[("SERVE_ADV_SECRET", secret)]);
    let forbidden = [tmp.path()];
    for (name, toml) in [
        (
            "env-leak",
            format!("{IMAGE}env = {{ LEAK = \"${{SERVE_ADV_SECRET}}\" }}\n"),
        ),
        (
            "verifier-leak",
            format!("{IMAGE}\n[verifier]\nenv = {{ LEAK = \"x-${{SERVE_ADV_SECRET:-none}}\" }}\n"),
        ),
    ] {
        let root = tmp.path().join(name);
        harbor_task(&root, name, &toml);
        let bytes = tar_gz(&root.join("src"), &["tasks"], &root.join("a.tar.gz"));
        let got = post_job(
            &server,
            &json!({"agents": [{"name": "oracle"}]}),
            Some(&bytes),
            None,
        )
        .await;
        assert_refused(&got, 400, "host_variable", "SERVE_ADV_SECRET", &forbidden);
        assert!(!got.2.contains(secret));
    }
    // The agent's environment of a job configuration.
    let root = tmp.path().join("ok");
    harbor_task(&root, "ok", IMAGE);
    let bytes = tar_gz(&root.join("src"), &["tasks"], &root.join("a.tar.gz"));
    let got = post_job(
        &server,
        &json!({"agents": [{"name": "oracle", "env": {"K": "${SERVE_ADV_SECRET}"}}]}),
        Some(&bytes),
        None,
    )
    .await;
    assert_refused(&got, 400, "host_variable", "env.K", &forbidden);
    // Nothing of the secret anywhere: responses, log, data directory.
    assert!(!server.log().contains(secret), "{}", server.log());
    for (path, bytes) in files_under(&server.data) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(secret),
            "secret in {}",
            path.display()
        );
    }
    // No run was created by the refusals.
    let list: Value = client()
        .get(server.url("/api/v1/jobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repositories_and_registries_on_the_servers_side_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(tmp.path(), &[], &[]);
    // The server's own paths (the submitted ones may be echoed: the submitter wrote them).
    let cache = tmp.path().join("cache");
    let forbidden = [server.data.as_path(), cache.as_path()];
    // A listener standing for an internal service: nothing may connect to it.
    let internal = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    internal.set_nonblocking(true).unwrap();
    let port = internal.local_addr().unwrap().port();
    // A local repository the server could read.
    let repo = tmp.path().join("private-repo");
    std::fs::create_dir_all(&repo).unwrap();
    let pwned = tmp.path().join("pwned");
    for (i, (repo_line, needle)) in [
        (format!("file://{}", repo.display()), "--allow-local-paths"),
        (repo.display().to_string(), "--allow-local-paths"),
        (
            format!("https://127.0.0.1:{port}/x.git"),
            "resolves to 127.0.0.1",
        ),
        (format!("https://localhost:{port}/x.git"), "loopback"),
        (
            "https://169.254.169.254/latest/x.git".to_string(),
            "169.254.169.254",
        ),
        (format!("http://127.0.0.1:{port}/x.git"), "only https"),
        (format!("ssh://git@127.0.0.1:{port}/x.git"), "only https"),
        (
            format!("ext::sh -c touch% {}", pwned.display()),
            "remote helpers",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let src = tmp.path().join(format!("exec-{i}"));
        let t = src.join("tasks/t1");
        std::fs::create_dir_all(t.join("tests")).unwrap();
        std::fs::write(
            t.join("workspace.yaml"),
            format!("repo: {repo_line:?}\nversion: \"1\"\nlanguage: bash\n"),
        )
        .unwrap();
        std::fs::write(t.join("prompt.md"), "x\n").unwrap();
        std::fs::write(t.join("tests/test_a.sh"), "true\n").unwrap();
        std::fs::create_dir_all(src.join("agent_code")).unwrap();
        std::fs::write(src.join("agent_code/agent.sh"), "true\n").unwrap();
        let bytes = tar_gz(
            &src,
            &["tasks", "agent_code"],
            &tmp.path().join(format!("e{i}.tgz")),
        );
        let got = submit_archive(&server, &bytes).await;
        assert_refused(&got, 400, "source_refused", needle, &forbidden);
    }
    // Registries: fetched from the server, so never from its own network or disk.
    for (location, needle) in [
        (
            format!("https://127.0.0.1:{port}/registry.json"),
            "--allow-registry",
        ),
        (
            format!("https://localhost:{port}/registry.json"),
            "loopback",
        ),
        (
            format!("http://127.0.0.1:{port}/registry.json"),
            "only https",
        ),
    ] {
        let got = post_job(
            &server,
            &json!({"datasets": [{"registry": {"url": location}, "name": "d"}]}),
            None,
            None,
        )
        .await;
        assert_refused(&got, 400, "source_refused", needle, &forbidden);
    }
    let got = post_job(
        &server,
        &json!({"datasets": [{"registry": {"path": "/etc/passwd"}, "name": "d"}]}),
        None,
        None,
    )
    .await;
    assert_refused(
        &got,
        400,
        "source_refused",
        "--allow-local-paths",
        &forbidden,
    );
    assert!(
        matches!(internal.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the server connected to the internal listener"
    );
    assert!(!pwned.exists(), "a remote helper ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_settings_are_validated_like_the_cli_and_capped_by_the_operator() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(
        tmp.path(),
        &[
            "--max-memory-mb",
            "4096",
            "--max-cpus",
            "2",
            "--max-pids",
            "1024",
            "--max-attempts",
            "5",
            "--max-timeout-multiplier",
            "4",
            "--max-trials-per-job",
            "3",
        ],
        &[],
    );
    let forbidden = [tmp.path()];
    let base = json!({"datasets": [{"path": "tasks"}]});
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let env = |k: &str, v: Value| with("environment", json!({ k: v }));
    for (config, code, needle) in [
        (env("pids_limit", json!(-1)), "invalid_job", "pids_limit"),
        (env("pids_limit", json!(0)), "invalid_job", "pids_limit"),
        (env("pids_limit", json!(100000)), "over_limit", "--max-pids"),
        (
            env("override_memory_mb", json!(200000)),
            "over_limit",
            "--max-memory-mb",
        ),
        (env("override_cpus", json!(64)), "over_limit", "--max-cpus"),
        (
            env("override_cpus", json!(-2)),
            "invalid_job",
            "override_cpus",
        ),
        (
            with("timeout_multiplier", json!(100000)),
            "over_limit",
            "--max-timeout-multiplier",
        ),
        (
            with("timeout_multiplier", json!(-1)),
            "invalid_job",
            "timeout_multiplier",
        ),
        (
            with("verifier_timeout_multiplier", json!(50)),
            "over_limit",
            "verifier_timeout_multiplier",
        ),
        (
            with("n_attempts", json!(20000)),
            "over_limit",
            "--max-attempts",
        ),
        (with("n_attempts", json!(0)), "invalid_job", "n_attempts"),
        (
            with("n_concurrent_trials", json!(0)),
            "invalid_job",
            "n_concurrent_trials",
        ),
        (
            with("retry", json!({"max_retries": 1000})),
            "over_limit",
            "retry.max_retries",
        ),
    ] {
        let got = post_job(&server, &config, None, None).await;
        assert_refused(&got, 400, code, needle, &forbidden);
    }
    // Task-level: what the task asks for, what `rollout run` refuses, and the trial count.
    let cases = [
        (
            "big",
            format!("{IMAGE}memory_mb = 200000\n"),
            json!({}),
            "over_limit",
            "memory_mb = 200000",
        ),
        (
            "many-cpus",
            format!("{IMAGE}cpus = 16\n"),
            json!({}),
            "over_limit",
            "--max-cpus",
        ),
        (
            "many",
            IMAGE.to_string(),
            json!(4),
            "over_limit",
            "--max-trials-per-job",
        ),
    ];
    for (name, toml, attempts, code, needle) in cases {
        let root = tmp.path().join(name);
        harbor_task(&root, name, &toml);
        let bytes = tar_gz(&root.join("src"), &["tasks"], &root.join("a.tar.gz"));
        let mut config = json!({"agents": [{"name": "oracle"}]});
        if attempts.is_number() {
            config["n_attempts"] = attempts;
        }
        let got = post_job(&server, &config, Some(&bytes), None).await;
        assert_refused(&got, 400, code, needle, &forbidden);
    }
    // A task with a broken task.toml fails its own trial, as under `rollout run`
    // (task_invalid); the error names the file relative to the upload, never a server path.
    let root = tmp.path().join("broken");
    harbor_task(&root, "broken", "[environment\n");
    let bytes = tar_gz(&root.join("src"), &["tasks"], &root.join("a.tar.gz"));
    let config = json!({"agents": [{"name": "oracle"}]});
    let got = post_job(&server, &config, Some(&bytes), None).await;
    assert_eq!(got.0, 202, "{}", got.2);
    let id = got.1["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let trials = loop {
        let j = send(client().get(server.url(&format!("/api/v1/jobs/{id}")))).await;
        if matches!(j.1["status"].as_str(), Some("completed" | "failed")) {
            break send(client().get(server.url(&format!("/api/v1/jobs/{id}/trials")))).await;
        }
        assert!(std::time::Instant::now() < deadline, "{}", j.2);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(trials.2.contains("task_invalid"), "{}", trials.2);
    assert!(trials.2.contains("tasks/broken/task.toml"), "{}", trials.2);
    for p in &forbidden {
        let p = p.display().to_string();
        assert!(!trials.2.contains(&p), "server path {p} in {}", trials.2);
    }
    // The limits are published.
    let status: Value = client()
        .get(server.url("/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["limits"]["max_memory_mb"], 4096);
    assert_eq!(status["limits"]["max_trials_per_job"], 3);
    assert_eq!(status["public_reads"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_details_need_credentials_and_never_show_submitted_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let token = "adv-token-0c9b1e";
    let hashes = blake3::hash(token.as_bytes()).to_hex().to_string();
    let server = start_server(
        tmp.path(),
        &["--auth", "token"],
        &[("ROLLOUT_SERVE_TOKEN_HASHES", &hashes)],
    );
    // The scheme is case-insensitive.
    let auth = format!("BEARER {token}");
    let api_key = "sk-adversarial-7f3e9d2c41";
    let kw_secret = "kw-secret-55aa33bb";
    let root = tmp.path().join("job");
    harbor_task(&root, "hello", IMAGE);
    let bytes = tar_gz(&root.join("src"), &["tasks"], &root.join("a.tar.gz"));
    let config = json!({"agents": [{"name": "oracle",
        "env": {"OPENAI_API_KEY": api_key},
        "kwargs": {"api_key": kw_secret}}]});
    let got = post_job(&server, &config, Some(&bytes), Some(&auth)).await;
    assert_eq!(got.0, 202, "{}", got.2);
    // An installed agent submitted without keys gets them blank, never the server's.
    let got_cc = post_job(
        &server,
        &json!({"agents": [{"name": "claude-code"}], "n_attempts": 1}),
        Some(&bytes),
        Some(&auth),
    )
    .await;
    assert_eq!(got_cc.0, 202, "{}", got_cc.2);
    let cc_id = got_cc.1["id"].as_str().unwrap().to_string();
    let cancel = send(
        client()
            .post(server.url(&format!("/api/v1/jobs/{cc_id}/cancel")))
            .header("authorization", &auth),
    )
    .await;
    assert!(matches!(cancel.0, 202 | 409), "{}", cancel.2);
    assert_eq!(
        got_cc.1["config"]["agents"][0]["env"]["ANTHROPIC_API_KEY"],
        ""
    );
    // Wait (bounded) until the cancelled job has removed its containers.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let j = send(
            client()
                .get(server.url(&format!("/api/v1/jobs/{cc_id}")))
                .header("authorization", &auth),
        )
        .await;
        if matches!(
            j.1["status"].as_str(),
            Some("cancelled" | "completed" | "failed")
        ) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", j.2);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !got.2.contains(api_key) && !got.2.contains(kw_secret),
        "{}",
        got.2
    );
    let id = got.1["id"].as_str().unwrap().to_string();

    // Without the token: 401 on every read of the job.
    for path in [
        format!("/api/v1/jobs/{id}"),
        "/api/v1/jobs".to_string(),
        format!("/api/v1/jobs/{id}/trials"),
        format!("/api/v1/jobs/{id}/events"),
        format!("/batch/{id}"),
        format!("/batch/{id}/tasks"),
    ] {
        let got = send(client().get(server.url(&path))).await;
        assert_eq!(got.0, 401, "{path}: {}", got.2);
        assert_eq!(got.1["error"], "missing_credentials", "{path}");
    }

    // With it: the event stream to the end, redacted.
    let mut resp = client()
        .get(server.url(&format!("/api/v1/jobs/{id}/events")))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut stream = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(300), resp.chunk())
        .await
        .expect("the event stream stalled")
        .unwrap()
    {
        stream.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(stream.contains("event: job_finished"), "{stream}");
    assert!(stream.contains("[redacted]"), "{stream}");

    let get = |path: String| {
        let auth = auth.clone();
        let url = server.url(&path);
        async move { send(client().get(url).header("authorization", auth)).await }
    };
    let job = get(format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job.0, 200, "{}", job.2);
    assert_eq!(job.1["status"], "completed", "{}", job.2);
    let agent = &job.1["config"]["agents"][0];
    assert_eq!(agent["env"]["OPENAI_API_KEY"], "[redacted]");
    assert_eq!(agent["kwargs"]["api_key"], "[redacted]");
    let trials = get(format!("/api/v1/jobs/{id}/trials")).await;
    let name = trials.1["trials"][0]["name"].as_str().unwrap().to_string();
    let file = get(format!("/api/v1/jobs/{id}/trials/{name}/files/config.json")).await;
    assert_eq!(file.0, 200, "{}", file.2);
    assert_eq!(
        file.1["agent"]["env"]["OPENAI_API_KEY"], "[redacted]",
        "{}",
        file.2
    );
    let mut texts = vec![stream];
    for r in [
        job,
        trials,
        file,
        get(format!("/api/v1/jobs/{id}/trials/{name}")).await,
        get("/api/v1/jobs".to_string()).await,
        get(format!("/batch/{id}/tasks")).await,
    ] {
        assert_eq!(r.0, 200, "{}", r.2);
        texts.push(r.2);
    }
    let data = server.data.display().to_string();
    let cache = tmp.path().join("cache").display().to_string();
    for t in &texts {
        assert!(
            !t.contains(api_key) && !t.contains(kw_secret),
            "secret in {t}"
        );
        assert!(
            !t.contains(&data) && !t.contains(&cache),
            "server path in {t}"
        );
    }
    // Trial names carry no path either.
    assert!(
        !name.contains('/') && name.starts_with("hello__oracle__"),
        "{name}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_reads_open_reads_but_keep_secrets_redacted() {
    let tmp = tempfile::tempdir().unwrap();
    let hashes = blake3::hash(b"t0k").to_hex().to_string();
    let server = start_server(
        tmp.path(),
        &["--auth", "token", "--public-reads"],
        &[("ROLLOUT_SERVE_TOKEN_HASHES", &hashes)],
    );
    // Reads are open; submissions are not.
    let got = send(client().get(server.url("/api/v1/jobs"))).await;
    assert_eq!(got.0, 200, "{}", got.2);
    let got = post_job(&server, &json!({"datasets": [{"path": "x"}]}), None, None).await;
    assert_eq!(got.0, 401, "{}", got.2);
    let got = send(client().get(server.url("/api/v1/jobs/nope"))).await;
    assert_eq!(got.0, 404, "{}", got.2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_registry_cannot_lead_outside_the_allowed_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    let server = start_server(
        tmp.path(),
        &["--allow-local-paths", allowed.to_str().unwrap()],
        &[],
    );
    // A repository outside the allowed directory, named by a registry inside it.
    let outside = tmp.path().join("outside-repo");
    std::fs::create_dir_all(&outside).unwrap();
    let registry = allowed.join("registry.json");
    std::fs::write(
        &registry,
        json!([{"name": "d", "version": "1", "tasks": [
            {"name": "t", "git_url": outside.display().to_string()}
        ]}])
        .to_string(),
    )
    .unwrap();
    let got = post_job(
        &server,
        &json!({"datasets": [{"registry": {"path": registry}, "name": "d"}]}),
        None,
        None,
    )
    .await;
    let cache = tmp.path().join("cache");
    assert_refused(
        &got,
        400,
        "source_refused",
        "not under a directory the server allows",
        &[server.data.as_path(), cache.as_path()],
    );
    // A registry outside it is refused before it is read.
    let got = post_job(
        &server,
        &json!({"datasets": [{"registry": {"path": "/etc/hostname"}, "name": "d"}]}),
        None,
        None,
    )
    .await;
    assert_refused(&got, 400, "source_refused", "--allow-local-paths", &[]);
}
