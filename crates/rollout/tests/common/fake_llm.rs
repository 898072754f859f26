//! A scripted OpenAI-compatible Chat Completions server on loopback (real HTTP): it answers
//! with the replies it was given, in order, and records every request it was sent.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// What the fake server answers, in order; and what it was sent.
#[derive(Clone, Default)]
pub struct Script {
    pub replies: Arc<Mutex<Vec<(u16, Value)>>>,
    pub seen: Arc<Mutex<Vec<Value>>>,
}

impl Script {
    /// A script answering 200 with each of `replies`.
    pub fn ok(replies: Vec<Value>) -> Self {
        let s = Self::default();
        *s.replies.lock().unwrap() = replies.into_iter().map(|r| (200, r)).collect();
        s
    }

    /// The requests received so far.
    pub fn seen(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }
}

async fn chat(State(s): State<Script>, Json(body): Json<Value>) -> Response {
    s.seen.lock().unwrap().push(body);
    let (status, reply) = {
        let mut r = s.replies.lock().unwrap();
        if r.is_empty() {
            (500, json!({"error": {"message": "script exhausted"}}))
        } else {
            r.remove(0)
        }
    };
    let mut resp = (StatusCode::from_u16(status).unwrap(), Json(reply)).into_response();
    if status == 429 {
        resp.headers_mut()
            .insert("retry-after", "0".parse().unwrap());
    }
    resp
}

/// Start the server on a free loopback port; returns its base URL (`http://127.0.0.1:N/v1`).
pub fn serve(script: Script) -> String {
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(script);
    format!("http://{}/v1", serve_router(app))
}

/// Serve `app` on a free loopback port from a thread of its own (for as long as the test
/// process lives); returns the address.
pub fn serve_router(app: Router) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

/// A reply calling one tool.
pub fn tool(id: &str, name: &str, args: Value) -> Value {
    json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
        {"id": id, "type": "function", "function": {"name": name, "arguments": args.to_string()}}
    ]}}], "usage": {"prompt_tokens": 100, "completion_tokens": 20}})
}

/// A reply calling `bash`.
pub fn tool_call(id: &str, command: &str) -> Value {
    tool(id, "bash", json!({"command": command}))
}

/// A reply calling `write_file`.
pub fn write_call(id: &str, path: &str, content: &str) -> Value {
    tool(id, "write_file", json!({"path": path, "content": content}))
}

/// A final answer (no tool call).
pub fn final_answer(text: &str) -> Value {
    json!({"choices": [{"message": {"role": "assistant", "content": text}}], "usage": {"prompt_tokens": 150, "completion_tokens": 5}})
}
