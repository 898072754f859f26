//! The job API's handlers over the in-memory fake provider (`rollout_env::testing`): submit a
//! job with its tasks, follow it to its result, cancel one mid-agent. No container engine is
//! involved (these tests pass with `DOCKER_HOST=unix:///nonexistent`).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::IntoResponse;
use rollout_env::testing::{Act, FakeProvider, Role};
use rollout_server::{api, AppState, Auth, ServerConfig};
use serde_json::{json, Value};
use std::sync::Arc;

const BOUNDARY: &str = "rollout-test-boundary";

/// A tar of two tasks, `a` and `b`.
fn tasks_tar(root: &std::path::Path) -> Vec<u8> {
    for name in ["a", "b"] {
        let d = root.join(name);
        std::fs::create_dir_all(d.join("tests")).unwrap();
        std::fs::create_dir_all(d.join("environment")).unwrap();
        std::fs::write(d.join("instruction.md"), "Do it.\n").unwrap();
        std::fs::write(d.join("tests/test.sh"), "true\n").unwrap();
        std::fs::write(d.join("environment/Dockerfile"), "FROM x\n").unwrap();
    }
    let mut tar = rollout_env::archive::TarBuilder::new();
    tar.host_dir("a", &root.join("a")).unwrap();
    tar.host_dir("b", &root.join("b")).unwrap();
    tar.finish().unwrap()
}

fn multipart(config: &Value, archive: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"config\"\r\nContent-Type: application/json\r\n\r\n{config}\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"archive\"; filename=\"tasks.tar\"\r\nContent-Type: application/x-tar\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(archive);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

struct Server {
    _tmp: tempfile::TempDir,
    state: Arc<AppState>,
    fake: FakeProvider,
    archive: Vec<u8>,
}

impl Server {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let fake = FakeProvider::new();
        let config = ServerConfig::new(tmp.path().join("data"));
        let state = AppState::new(config, Auth::None, Arc::new(fake.clone())).unwrap();
        let archive = tasks_tar(&tmp.path().join("src"));
        Self {
            _tmp: tmp,
            state,
            fake,
            archive,
        }
    }

    async fn submit(&self, config: Value) -> (StatusCode, Value) {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&format!("multipart/form-data; boundary={BOUNDARY}")).unwrap(),
        );
        let mut req = Request::builder()
            .method("POST")
            .uri("/api/v1/jobs")
            .body(Body::from(multipart(&config, &self.archive)))
            .unwrap();
        *req.headers_mut() = headers.clone();
        let resp = api::submit_job(State(self.state.clone()), headers, req)
            .await
            .into_response();
        body(resp).await
    }

    async fn job(&self, id: &str) -> Value {
        let resp = api::get_job(
            State(self.state.clone()),
            Path(id.to_string()),
            HeaderMap::new(),
        )
        .await
        .into_response();
        let (code, v) = body(resp).await;
        assert_eq!(code, StatusCode::OK, "{v}");
        v
    }

    async fn trials(&self, id: &str) -> Value {
        let resp = api::list_trials(
            State(self.state.clone()),
            Path(id.to_string()),
            HeaderMap::new(),
        )
        .await
        .into_response();
        let (code, v) = body(resp).await;
        assert_eq!(code, StatusCode::OK, "{v}");
        v
    }

    /// Wait for the job's run task to end (the server's task tracker), bounded.
    async fn finished(&self, id: &str) -> Value {
        self.state.tasks.close();
        tokio::time::timeout(std::time::Duration::from_secs(60), self.state.tasks.wait())
            .await
            .expect("the job ended within a minute");
        self.job(id).await
    }
}

async fn body(resp: axum::response::Response) -> (StatusCode, Value) {
    let code = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    (code, v)
}

fn job_config() -> Value {
    json!({
        "agents": [{"name": "worker", "execute": "do-the-work"}],
        "tasks": [{"path": "a"}, {"path": "b"}],
    })
}

#[tokio::test]
async fn a_submitted_job_runs_to_its_result_without_an_engine() {
    let s = Server::new();
    s.fake
        .verifier([Act::reward_txt("1"), Act::reward_txt("0")]);
    let (code, job) = s.submit(job_config()).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["n_trials"], 2);
    let job = s.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["n_finished"], 2);
    assert_eq!(job["n_passed"], 1);
    assert_eq!(job["mean_reward"], 0.5);
    let trials = s.trials(&id).await;
    let trials = trials["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 2);
    let l = s.fake.ledger();
    assert_eq!(l.created.len(), 2);
    assert!(l.leaked().is_empty(), "{:?}", l.leaked());
    assert_eq!(l.created.len(), l.destroyed.len());
}

#[tokio::test]
async fn a_job_cancelled_mid_agent_ends_cancelled_with_its_environments_removed() {
    let s = Server::new();
    s.fake.agent("do-the-work", [Act::hang()]);
    let mut config = job_config();
    config["n_concurrent_trials"] = json!(2);
    let (code, job) = s.submit(config).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        s.fake.until(|l| l.running(Role::Other) == 2),
    )
    .await
    .expect("both agents started");
    let resp = api::cancel_job(State(s.state.clone()), Path(id.clone()), HeaderMap::new())
        .await
        .into_response();
    let (code, v) = body(resp).await;
    assert!(code.is_success(), "{code} {v}");
    let job = s.finished(&id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let l = s.fake.ledger();
    assert_eq!(l.execs_of(Role::Verifier), 0);
    assert!(l.leaked().is_empty(), "{:?}", l.leaked());
    assert_eq!(l.created.len(), l.destroyed.len());
}

#[tokio::test]
async fn a_job_with_an_unknown_agent_is_refused_before_anything_runs() {
    let s = Server::new();
    let (code, v) = s
        .submit(json!({"agents": [{"name": "no-such-agent"}], "tasks": [{"path": "a"}]}))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("no-such-agent"), "{v}");
    assert_eq!(s.fake.ledger().create_calls, 0);
}
