//! Event streams: the seed's WebSocket (`/ws?batch_id=…`) and the native job streams (SSE and
//! WebSocket). Each starts with a snapshot of the run, then relays its events live, and ends
//! after the run's final event (or at once when the run had already finished).

use crate::error::ApiError;
use crate::runs::StreamEvent;
use crate::seed::{authorize_read, batch_json, load_run, task_json};
use crate::AppState;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// What a subscriber receives next.
enum Next {
    Event(Arc<StreamEvent>),
    Lagged(u64),
    End,
}

/// Subscribe to a run (before reading its snapshot, so that no event falls in between).
fn subscribe(state: &AppState, id: &str) -> Option<broadcast::Receiver<Arc<StreamEvent>>> {
    state.live_run(id).map(|l| l.tx.subscribe())
}

async fn next(rx: &mut Option<broadcast::Receiver<Arc<StreamEvent>>>, state: &AppState) -> Next {
    let Some(r) = rx.as_mut() else {
        return Next::End;
    };
    tokio::select! {
        e = r.recv() => match e {
            Ok(e) => Next::Event(e),
            Err(broadcast::error::RecvError::Lagged(n)) => Next::Lagged(n),
            Err(broadcast::error::RecvError::Closed) => Next::End,
        },
        _ = state.streams_end.cancelled() => Next::End,
    }
}

#[derive(Debug, Deserialize)]
pub struct WsQuery {
    pub batch_id: Option<String>,
}

/// `GET /ws?batch_id=…`: the seed's stream.
pub async fn seed_ws(
    State(state): State<Arc<AppState>>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    authorize_read(&state, &headers)?;
    let id = q.batch_id.ok_or_else(|| {
        ApiError::bad_request("missing_batch_id", "give the batch as /ws?batch_id=ID")
    })?;
    match load_run(&state, &id) {
        Ok(_) => Ok(ws.on_upgrade(move |socket| seed_ws_loop(state, id, socket))),
        // As the seed: the socket opens, says which batch is unknown, and closes.
        Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => {
            Ok(ws.on_upgrade(move |mut socket| async move {
                let msg = json!({"error": "batch_not_found", "batch_id": id});
                let _ = socket.send(Message::Text(msg.to_string().into())).await;
                let _ = socket.send(Message::Close(None)).await;
            }))
        }
        Err(e) => Err(e),
    }
}

/// The seed's last message before the socket closes: the batch's stream has ended.
async fn close_seed_stream(socket: &mut WebSocket, id: &str) {
    let msg = json!({"event": "stream_closed", "batch_id": id});
    let _ = socket.send(Message::Text(msg.to_string().into())).await;
    let _ = socket.send(Message::Close(None)).await;
}

fn snapshot(state: &AppState, id: &str) -> Option<Value> {
    let run = state.db.get_run(id).ok()??;
    let trials = state.db.list_trials(id).ok()?;
    let mut batch = batch_json(&run, &trials);
    batch["tasks"] = Value::Array(trials.iter().map(|t| task_json(t, false)).collect());
    crate::seed::redact_run(state, &run, &mut batch);
    Some(batch)
}

/// The secrets of a run, to redact its events with.
fn secrets(state: &AppState, id: &str) -> Vec<String> {
    state
        .db
        .get_run(id)
        .ok()
        .flatten()
        .map(|r| crate::redact::secrets_of(&r.config))
        .unwrap_or_default()
}

/// An event as sent: the run's secrets and the server's paths redacted.
fn redacted(state: &AppState, secrets: &[String], e: &StreamEvent) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    crate::redact::Redactor {
        paths: &state.paths,
        secrets: secrets.to_vec(),
    }
    .value(&mut v);
    v
}

async fn seed_ws_loop(state: Arc<AppState>, id: String, mut socket: WebSocket) {
    let mut rx = subscribe(&state, &id);
    let secrets = secrets(&state, &id);
    let Some(snap) = snapshot(&state, &id) else {
        return;
    };
    let final_already = rx.is_none();
    let msg = json!({"event": "snapshot", "batch_id": id, "data": snap});
    if socket
        .send(Message::Text(msg.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    if final_already {
        close_seed_stream(&mut socket, &id).await;
        return;
    }
    loop {
        match next(&mut rx, &state).await {
            Next::Event(e) => {
                let Some(name) = e.seed_name() else { continue };
                let data = redacted(&state, &secrets, &e)["data"].take();
                let mut msg = json!({"event": name, "batch_id": id, "data": data});
                if let Some(t) = &e.task_id {
                    msg["task_id"] = json!(t);
                }
                if socket
                    .send(Message::Text(msg.to_string().into()))
                    .await
                    .is_err()
                {
                    return;
                }
                if e.event == "job_finished" {
                    break;
                }
            }
            Next::Lagged(n) => {
                let msg = json!({"event": "lagged", "batch_id": id, "data": {"missed": n}});
                if socket
                    .send(Message::Text(msg.to_string().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Next::End => break,
        }
    }
    close_seed_stream(&mut socket, &id).await;
}

fn job_snapshot(state: &AppState, id: &str) -> Option<Value> {
    let run = state.db.get_run(id).ok()??;
    let trials = state.db.list_trials(id).ok()?;
    let mut job = crate::api::job_json(&run, &trials);
    job["trials"] = Value::Array(trials.iter().map(crate::api::trial_json).collect());
    crate::seed::redact_run(state, &run, &mut job);
    Some(job)
}

fn load_job(state: &AppState, id: &str) -> Result<(), ApiError> {
    load_run(state, id).map(|_| ()).map_err(|e| {
        if e.status == axum::http::StatusCode::NOT_FOUND {
            ApiError::not_found("job", id)
        } else {
            e
        }
    })
}

/// `GET /api/v1/jobs/{id}/events`: Server-Sent Events. The first event is `snapshot` (the job
/// with its trials); then one event per runner event, named as [`StreamEvent::event`], with
/// `id:` its sequence number; the stream ends after `job_finished`.
pub async fn job_sse(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    authorize_read(&state, &headers)?;
    load_job(&state, &id)?;
    let rx = subscribe(&state, &id);
    let secrets = Arc::new(secrets(&state, &id));
    let snap = job_snapshot(&state, &id).ok_or_else(|| ApiError::not_found("job", &id))?;
    let first = SseEvent::default().event("snapshot").data(snap.to_string());
    let done = rx.is_none();
    let stream = futures_util::stream::unfold(
        (Some(first), rx, state, done, secrets),
        |(first, mut rx, state, done, secrets)| async move {
            if let Some(f) = first {
                return Some((Ok::<_, Infallible>(f), (None, rx, state, done, secrets)));
            }
            if done {
                return None;
            }
            match next(&mut rx, &state).await {
                Next::Event(e) => {
                    let finished = e.event == "job_finished";
                    let ev = SseEvent::default()
                        .event(e.event)
                        .id(e.seq.to_string())
                        .data(redacted(&state, &secrets, &e).to_string());
                    Some((Ok(ev), (None, rx, state, finished, secrets)))
                }
                Next::Lagged(n) => {
                    let ev = SseEvent::default()
                        .event("lagged")
                        .data(json!({"missed": n}).to_string());
                    Some((Ok(ev), (None, rx, state, false, secrets)))
                }
                Next::End => None,
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// `GET /api/v1/jobs/{id}/ws`: the same events as the SSE stream, one JSON text message each
/// (`{"event": "snapshot", "data": …}` first).
pub async fn job_ws(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    authorize_read(&state, &headers)?;
    load_job(&state, &id)?;
    Ok(ws.on_upgrade(move |socket| job_ws_loop(state, id, socket)))
}

async fn job_ws_loop(state: Arc<AppState>, id: String, mut socket: WebSocket) {
    let mut rx = subscribe(&state, &id);
    let secrets = secrets(&state, &id);
    let Some(snap) = job_snapshot(&state, &id) else {
        return;
    };
    let done = rx.is_none();
    let msg = json!({"event": "snapshot", "job_id": id, "data": snap});
    if socket
        .send(Message::Text(msg.to_string().into()))
        .await
        .is_err()
        || done
    {
        let _ = socket.send(Message::Close(None)).await;
        return;
    }
    loop {
        let text = match next(&mut rx, &state).await {
            Next::Event(e) => {
                let t = redacted(&state, &secrets, &e).to_string();
                let finished = e.event == "job_finished";
                if socket.send(Message::Text(t.into())).await.is_err() {
                    return;
                }
                if finished {
                    break;
                }
                continue;
            }
            Next::Lagged(n) => json!({"event": "lagged", "job_id": id, "data": {"missed": n}}),
            Next::End => break,
        };
        if socket
            .send(Message::Text(text.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
