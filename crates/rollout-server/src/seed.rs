//! The term-executor API, field for field: `/health`, `/status`, `/metrics`, `/submit`,
//! `/batch/{id}`, `/batch/{id}/tasks`, `/batch/{id}/task/{task_id}`, `/batches`, plus
//! `POST /batch/{id}/cancel`.

use crate::db::{RunKind, RunRow, RunStatus, TrialRow};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::runs::{self, Summary};
use crate::AppState;
use axum::extract::multipart::Field;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use rollout_core::JobConfig;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn status(State(state): State<Arc<AppState>>) -> Json<Value> {
    let m = &state.metrics;
    let active = Metrics::get(&m.batches_active);
    let l = &state.config.limits;
    Json(json!({
        "version": crate::VERSION,
        "uptime_secs": state.started_at.elapsed().as_secs(),
        "active_batches": active,
        "queued_batches": Metrics::get(&m.batches_queued),
        "total_batches": Metrics::get(&m.batches_total),
        "completed_batches": Metrics::get(&m.batches_completed),
        "tasks_passed": Metrics::get(&m.tasks_passed),
        "tasks_failed": Metrics::get(&m.tasks_failed),
        "max_concurrent_tasks": state.config.max_concurrent_tasks,
        "max_batches": state.config.max_batches,
        "has_active_batch": active > 0,
        "auth": state.auth.mode().as_str(),
        "shutting_down": state.shutdown.is_cancelled(),
        "limits": {
            "max_body_bytes": state.config.max_body_bytes,
            "max_archive_bytes": l.max_archive_bytes,
            "max_extracted_bytes": l.max_total_bytes,
            "max_files": l.max_files,
            "max_compression_ratio": l.max_ratio,
            "max_path_len": l.max_path_len,
            "max_memory_mb": state.config.caps.max_memory_mb,
            "max_cpus": state.config.caps.max_cpus,
            "max_pids": state.config.caps.max_pids,
            "max_attempts": state.config.caps.max_attempts,
            "max_timeout_multiplier": state.config.caps.max_timeout_multiplier,
            "max_trials_per_job": state.config.caps.max_trials_per_job,
            "max_output_bytes": state.config.max_output_bytes.unwrap_or(rollout_env::exec::DEFAULT_OUTPUT_CAP),
            "session_ttl_secs": state.config.max_run_age.map(|d| d.as_secs()),
            "clone_timeout_secs": state.config.clone_timeout.map(|d| d.as_secs()),
            "agent_timeout_secs": state.config.executor_agent_timeout,
            "test_timeout_secs": state.config.executor_test_timeout,
        },
        "public_reads": state.config.public_reads,
    }))
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Check credentials, counting failures.
pub(crate) fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    state.auth.check(headers).map(|_| ()).inspect_err(|_| {
        Metrics::inc(&state.metrics.auth_failures);
    })
}

/// Check credentials for a read of runs, trials and streams: the same as for writes, unless the
/// operator opened reads (`--public-reads`).
pub(crate) fn authorize_read(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.config.public_reads || state.auth.reads_open() {
        return Ok(());
    }
    authorize(state, headers)
}

/// Redact `value`, a response about `run`: its submitted secrets and the server's paths.
pub(crate) fn redact_run(state: &AppState, run: &RunRow, value: &mut Value) {
    crate::redact::Redactor {
        paths: &state.paths,
        secrets: crate::redact::secrets_of(&run.config),
    }
    .value(value);
}

/// Refuse submissions once shutdown began.
pub(crate) fn accepting(state: &AppState) -> Result<(), ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::unavailable(
            "the server is shutting down; submit again once it is back",
        ));
    }
    Ok(())
}

/// Stream a multipart field to `path`, refusing more than `cap` bytes.
pub(crate) async fn save_field(
    field: &mut Field<'_>,
    path: &std::path::Path,
    cap: u64,
) -> Result<u64, ApiError> {
    save_stream(field, path, cap, multipart_error).await
}

/// Write the chunks of `stream` to `path`, refusing more than `cap` bytes (413
/// `archive_too_large`); a chunk that cannot be read is `read_error`'s error.
pub(crate) async fn save_stream<S, E>(
    mut stream: S,
    path: &std::path::Path,
    cap: u64,
    read_error: impl Fn(E) -> ApiError,
) -> Result<u64, ApiError>
where
    S: futures_util::Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
{
    use futures_util::StreamExt;
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| ApiError::internal(format!("storing the upload: {e}")))?;
    let mut n: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(&read_error)?;
        n += chunk.len() as u64;
        if n > cap {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "archive_too_large",
                format!(
                    "the archive exceeds the server's limit of {cap} bytes (see /status limits)"
                ),
            ));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::internal(format!("storing the upload: {e}")))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::internal(format!("storing the upload: {e}")))?;
    Ok(n)
}

pub(crate) fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!(
                "the request body exceeds the server's limit: {}",
                e.body_text()
            ),
        )
    } else {
        ApiError::bad_request("invalid_multipart", e.body_text())
    }
}

#[derive(Debug, Deserialize)]
pub struct SubmitQuery {
    pub concurrent_tasks: Option<usize>,
}

/// A fresh run id and its work directory; the directory is removed again on any error.
pub(crate) struct NewRun {
    pub id: String,
    pub dir: std::path::PathBuf,
    keep: bool,
}

impl NewRun {
    pub fn create(state: &AppState) -> Result<Self, ApiError> {
        let id = uuid::Uuid::new_v4().to_string();
        let dir = state.config.runs_dir().join(&id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::internal(format!("creating {}: {e}", dir.display())))?;
        Ok(Self {
            id,
            dir,
            keep: false,
        })
    }
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for NewRun {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `POST /submit`: multipart field `archive` (or `file`) holding a term-executor archive.
pub async fn submit(
    State(state): State<Arc<AppState>>,
    Query(q): Query<SubmitQuery>,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Result<impl IntoResponse, ApiError> {
    accepting(&state)?;
    authorize(&state, &headers)?;
    let result = submit_inner(&state, q, &mut multipart).await;
    if result.is_err() {
        Metrics::inc(&state.metrics.submissions_rejected);
    }
    let run = result?;
    tracing::info!(batch = %run.id, tasks = run.total_tasks, "batch submitted");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "batch_id": run.id,
            "total_tasks": run.total_tasks,
            "concurrent_tasks": run.concurrent_tasks,
            "ws_url": format!("/ws?batch_id={}", run.id),
        })),
    ))
}

async fn submit_inner(
    state: &Arc<AppState>,
    q: SubmitQuery,
    multipart: &mut Multipart,
) -> Result<RunRow, ApiError> {
    let concurrent = match q.concurrent_tasks {
        Some(0) => {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "concurrent_tasks must be at least 1",
            ))
        }
        Some(n) => n.min(state.config.max_concurrent_tasks),
        None => state.config.max_concurrent_tasks,
    };
    let mut new = NewRun::create(state)?;
    let archive = new.dir.join("archive.bin");
    let mut got = false;
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        if matches!(field.name(), Some("archive") | Some("file")) {
            save_field(&mut field, &archive, state.config.limits.max_archive_bytes).await?;
            got = true;
            break;
        }
    }
    if !got {
        return Err(ApiError::bad_request(
            "missing_archive",
            "no multipart field `archive` (or `file`) in the request",
        ));
    }
    // Checked before the answer, nothing cloned: the archive unpacks within the limits, every
    // task parses, there is an agent, and every repository is one this server may clone. The
    // clones come after the 202 (`extracting`, `cloning_repo`), and one that fails fails its
    // own task only.
    let limits = state.config.limits.clone();
    let policy = state.config.sources.clone();
    let scratch = new.dir.join("inspect");
    let a = archive.clone();
    let seen = tokio::task::spawn_blocking(move || {
        rollout_sources::executor::inspect(&a, &limits, &scratch)
            .map_err(|e| ApiError::bad_request("invalid_archive", e.to_string()))
            .and_then(|i| {
                for (id, ws) in &i.tasks {
                    policy.check_repo(&ws.repo).map_err(|m| {
                        ApiError::bad_request("source_refused", format!("task {id}: {m}"))
                    })?;
                }
                Ok(i)
            })
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    if !seen.has_agent_code {
        return Err(ApiError::bad_request(
            "missing_agent_code",
            "the archive has no agent_code/ directory: there is no agent to evaluate",
        ));
    }
    let max = state.config.caps.max_trials_per_job;
    if seen.tasks.len() > max {
        return Err(ApiError::bad_request(
            "over_limit",
            format!("the batch has {} tasks, over this server's limit of {max} trials (--max-trials-per-job): split it, or ask the operator to raise it", seen.tasks.len()),
        ));
    }
    let config = JobConfig {
        name: Some(new.id.clone()),
        jobs_dir: Some(state.config.jobs_dir()),
        n_concurrent_trials: Some(concurrent),
        archives: vec![archive],
        executor_image: state.config.executor_image.clone(),
        ..Default::default()
    };
    let ids: Vec<String> = seen.tasks.into_iter().map(|(id, _)| id).collect();
    let run = runs::start_batch(state, &new.id, config, &ids, &new.dir)?;
    new.keep();
    Ok(run)
}

/// The seed's batch object (plus `created_at`, `concurrent_tasks`, `kind`).
pub(crate) fn batch_json(run: &RunRow, trials: &[TrialRow]) -> Value {
    let s = Summary::of(trials);
    let duration_ms = run.started_at.map(|start| {
        (run.finished_at.unwrap_or_else(chrono::Utc::now) - start)
            .num_milliseconds()
            .max(0)
    });
    json!({
        "batch_id": run.id,
        "status": run.status,
        "total_tasks": s.total,
        "completed_tasks": s.completed,
        "passed_tasks": s.passed,
        "failed_tasks": s.failed,
        "aggregate_reward": s.aggregate_reward,
        "error": run.error,
        "duration_ms": duration_ms,
        "created_at": run.created_at,
        "concurrent_tasks": run.concurrent_tasks,
    })
}

/// The seed's task object; `detail` adds `test_results`.
pub(crate) fn task_json(t: &TrialRow, detail: bool) -> Value {
    let mut v = json!({
        "task_id": t.task_id,
        "trial_name": t.trial_name,
        "status": t.status(),
        "passed": t.passed,
        "reward": t.reward,
        "test_output": t.test_output,
        "error": t.error,
        "duration_ms": t.duration_ms,
    });
    if detail {
        v["test_results"] = t.test_results.clone().unwrap_or_else(|| json!([]));
    }
    v
}

pub(crate) fn load_run(state: &AppState, id: &str) -> Result<RunRow, ApiError> {
    state
        .db
        .get_run(id)?
        .ok_or_else(|| ApiError::not_found("batch", id))
}

pub async fn get_batch(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize_read(&state, &headers)?;
    let run = load_run(&state, &id)?;
    let trials = state.db.list_trials(&id)?;
    let mut v = batch_json(&run, &trials);
    redact_run(&state, &run, &mut v);
    Ok(Json(v))
}

pub async fn get_batch_tasks(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize_read(&state, &headers)?;
    let run = load_run(&state, &id)?;
    let trials = state.db.list_trials(&id)?;
    let mut v = json!({
        "batch_id": id,
        "tasks": trials.iter().map(|t| task_json(t, false)).collect::<Vec<_>>(),
    });
    redact_run(&state, &run, &mut v);
    Ok(Json(v))
}

pub async fn get_task(
    State(state): State<Arc<AppState>>,
    Path((id, task_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize_read(&state, &headers)?;
    let run = load_run(&state, &id)?;
    let t = state
        .db
        .get_trial(&id, &task_id)?
        .ok_or_else(|| ApiError::not_found("task", &task_id))?;
    let mut v = task_json(&t, true);
    redact_run(&state, &run, &mut v);
    Ok(Json(v))
}

pub async fn list_batches(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize_read(&state, &headers)?;
    let runs = state.db.list_runs(Some(RunKind::Batch))?;
    Ok(Json(Value::Array(
        runs.iter()
            .map(|r| json!({"batch_id": r.id, "created_at": r.created_at, "status": r.status}))
            .collect(),
    )))
}

/// Cancel a run: 202 when it was queued or running, 409 when already finished.
pub(crate) fn cancel_run(
    state: &AppState,
    id: &str,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let run = load_run(state, id)?;
    if runs::cancel(state, id) {
        tracing::info!(run = %id, "cancel requested");
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"batch_id": id, "status": "cancelling"})),
        ));
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "not_running",
        format!(
            "run {id} is {} and cannot be cancelled",
            RunStatus::as_str(run.status)
        ),
    ))
}

pub async fn cancel_batch(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers)?;
    cancel_run(&state, &id)
}
