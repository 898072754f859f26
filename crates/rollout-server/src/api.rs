//! The native job API under `/api/v1`: jobs from job configurations (FORMATS.md §2, the same
//! JSON as `rollout run -c`), with an optional archive of Harbor-format tasks.
//!
//! A submitted configuration may only reach what it uploaded: dataset and task paths are
//! relative to the archive root, host paths, `archives`, local registries and `code:` agents
//! outside the archive are refused, agent environment values may not expand host variables
//! (`${…}`), and environments are Docker. Settings are validated as `rollout run` validates a
//! job file and capped by the operator's limits ([`crate::Caps`]); tasks are checked once
//! loaded ([`crate::runs::plan`]).

use crate::db::{RunKind, RunRow, TrialRow};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::runs::{self, Summary};
use crate::seed::{
    accepting, authorize, authorize_read, cancel_run, load_run, multipart_error, redact_run,
    save_field, NewRun,
};
use crate::AppState;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rollout_core::job_config::EnvironmentType;
use rollout_core::JobConfig;
use serde_json::{json, Value};
use std::path::{Component, PathBuf};
use std::sync::Arc;

/// Downloads up to this size are redacted (larger ones are streamed as they are).
const REDACTED_DOWNLOAD_MAX: u64 = 64 << 20;

/// The native job object.
pub(crate) fn job_json(run: &RunRow, trials: &[TrialRow]) -> Value {
    let s = Summary::of(trials);
    json!({
        "id": run.id,
        "kind": run.kind,
        "status": run.status,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "n_trials": s.total,
        "n_finished": s.completed,
        "n_passed": s.passed,
        "mean_reward": s.aggregate_reward,
        "mean_reward_by_key": s.reward_keys,
        "concurrency": run.concurrent_tasks,
        "error": run.error,
        "config": run.config,
        "result": run.result,
    })
}

/// The native trial object.
pub(crate) fn trial_json(t: &TrialRow) -> Value {
    json!({
        "name": t.trial_name,
        "task_name": t.task_id,
        "status": t.status(),
        "reward": t.reward,
        "passed": t.passed,
        "error": t.error,
        "duration_ms": t.duration_ms,
        "started_at": t.started_at,
        "finished_at": t.finished_at,
        "result": t.result,
    })
}

/// A path inside the upload: relative, without `..`.
fn confined(
    root: Option<&std::path::Path>,
    p: &std::path::Path,
    what: &str,
) -> Result<PathBuf, ApiError> {
    let Some(root) = root else {
        return Err(ApiError::bad_request(
            "invalid_job",
            format!("{what} {}: a submitted job may only name paths inside its uploaded archive, and none was uploaded", p.display()),
        ));
    };
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(ApiError::bad_request(
            "invalid_job",
            format!("{what} {}: must be a relative path inside the uploaded archive (no `..`, not absolute)", p.display()),
        ));
    }
    Ok(root.join(p))
}

/// A setting over an operator limit.
fn over(
    field: &str,
    value: impl std::fmt::Display,
    limit: impl std::fmt::Display,
    flag: &str,
) -> ApiError {
    ApiError::bad_request(
        "over_limit",
        format!("{field} = {value} exceeds this server's limit of {limit} ({flag}): ask for less, or ask the operator to raise it"),
    )
}

/// Refuse job settings over the operator's limits; a process limit left unset gets the cap
/// when the runner's default (4096) is above it.
pub(crate) fn enforce_caps(caps: &crate::Caps, c: &mut JobConfig) -> Result<(), ApiError> {
    let env = &mut c.environment;
    if let Some(m) = env.override_memory_mb.filter(|m| *m > caps.max_memory_mb) {
        return Err(over(
            "environment.override_memory_mb",
            m,
            caps.max_memory_mb,
            "--max-memory-mb",
        ));
    }
    if let Some(n) = env.override_cpus.filter(|n| *n > caps.max_cpus) {
        return Err(over(
            "environment.override_cpus",
            n,
            caps.max_cpus,
            "--max-cpus",
        ));
    }
    match env.pids_limit {
        Some(p) if p > caps.max_pids => {
            return Err(over(
                "environment.pids_limit",
                p,
                caps.max_pids,
                "--max-pids",
            ))
        }
        None if caps.max_pids < 4096 => env.pids_limit = Some(caps.max_pids),
        _ => {}
    }
    if let Some(n) = c.n_attempts.filter(|n| *n > caps.max_attempts) {
        return Err(over("n_attempts", n, caps.max_attempts, "--max-attempts"));
    }
    if let Some(n) = c
        .retry
        .as_ref()
        .map(|r| r.max_retries)
        .filter(|n| *n > caps.max_attempts)
    {
        return Err(over(
            "retry.max_retries",
            n,
            caps.max_attempts,
            "--max-attempts",
        ));
    }
    for (field, v) in [
        ("timeout_multiplier", c.timeout_multiplier),
        ("agent_timeout_multiplier", c.agent_timeout_multiplier),
        (
            "agent_install_timeout_multiplier",
            c.agent_install_timeout_multiplier,
        ),
        ("verifier_timeout_multiplier", c.verifier_timeout_multiplier),
        ("build_timeout_multiplier", c.build_timeout_multiplier),
    ] {
        if let Some(m) = v.filter(|m| *m > caps.max_timeout_multiplier) {
            return Err(over(
                field,
                m,
                caps.max_timeout_multiplier,
                "--max-timeout-multiplier",
            ));
        }
    }
    Ok(())
}

/// Make a submitted configuration safe to run here; `root` is the extracted archive.
fn sanitize(
    state: &AppState,
    id: &str,
    mut c: JobConfig,
    root: Option<&std::path::Path>,
) -> Result<JobConfig, ApiError> {
    let kind = state.config.environment;
    if c.environment.kind != kind {
        let name = match kind {
            EnvironmentType::Kubernetes => "kubernetes",
            _ => "docker",
        };
        return Err(ApiError::bad_request(
            "invalid_job",
            format!("environment.type must be {name} on this server (it runs its environments there: rollout serve --env {name})"),
        ));
    }
    if !c.archives.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_job",
            "`archives` name host files: upload the tasks as the multipart `archive` instead",
        ));
    }
    // The same value checks as `rollout run` applies to a job file and its flags.
    c.validate(std::path::Path::new("submitted job"))
        .map_err(|e| ApiError::bad_request("invalid_job", e.to_string()))?;
    enforce_caps(&state.config.caps, &mut c)?;
    for d in &mut c.datasets {
        if let Some(reg) = &d.registry {
            if reg.path.is_some() && state.config.sources.local_roots.is_empty() {
                return Err(ApiError::bad_request(
                    "source_refused",
                    "a registry given by `path` is a file on the server, and this server reads none: use `url` (the operator can allow directories with --allow-local-paths)",
                ));
            }
        }
        if let Some(p) = &d.path {
            d.path = Some(confined(root, p, "datasets[].path")?);
        }
    }
    for t in &mut c.tasks {
        t.path = confined(root, &t.path, "tasks[].path")?;
    }
    for a in &mut c.agents {
        if let Some(p) = a.name.strip_prefix("code:") {
            let full = confined(root, std::path::Path::new(p), "agent code:")?;
            a.name = format!("code:{}", full.display());
        }
        // Keys an agent would otherwise take from the server's environment (API keys,
        // endpoints) are set empty: an empty value is "unset" to the agent, never the server's.
        for k in rollout_agents::host_env_keys(a) {
            a.env.entry(k.to_string()).or_default();
        }
        if let Some((k, var)) = a.env.iter().find_map(|(k, v)| {
            rollout_core::envvars::references(v)
                .into_iter()
                .next()
                .map(|var| (k, var))
        }) {
            return Err(ApiError::bad_request(
                "host_variable",
                format!(
                    "agent {}: env.{k} reads the server's variable ${{{var}}}: a submitted job may not read the server's environment; send the value itself (it is redacted in every response)",
                    a.name
                ),
            ));
        }
    }
    if let (Some(root), true) = (root, c.datasets.is_empty() && c.tasks.is_empty()) {
        // The archive's `tasks/` directory when it has one, else its root.
        let tasks = root.join("tasks");
        let dataset = if tasks.is_dir() {
            tasks
        } else {
            root.to_path_buf()
        };
        c.datasets.push(rollout_core::job_config::DatasetSpec {
            path: Some(dataset),
            ..Default::default()
        });
    }
    let max = state.config.max_concurrent_tasks;
    c.n_concurrent_trials = Some(c.concurrency().clamp(1, max));
    c.name = Some(id.to_string());
    c.jobs_dir = Some(state.config.jobs_dir());
    c.validate_sources(std::path::Path::new("submitted job"))
        .map_err(|e| ApiError::bad_request("invalid_job", e.to_string()))?;
    Ok(c)
}

fn parse_config(bytes: &[u8]) -> Result<JobConfig, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("invalid_job", format!("job configuration: {e}")))
}

/// `POST /api/v1/jobs`: a JSON job configuration, or multipart with fields `config` (the JSON)
/// and `archive` (zip / tar.gz of Harbor task directories).
pub async fn submit_job(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    req: Request,
) -> Result<impl IntoResponse, ApiError> {
    accepting(&state)?;
    authorize(&state, &headers)?;
    let result = submit_inner(&state, &headers, req).await;
    if result.is_err() {
        Metrics::inc(&state.metrics.submissions_rejected);
    }
    let run = result?;
    tracing::info!(job = %run.id, trials = run.total_tasks, "job submitted");
    let trials = state.db.list_trials(&run.id)?;
    let mut v = job_json(&run, &trials);
    redact_run(&state, &run, &mut v);
    Ok((StatusCode::ACCEPTED, Json(v)))
}

async fn submit_inner(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    req: Request,
) -> Result<RunRow, ApiError> {
    let mut new = NewRun::create(state)?;
    let is_multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let mut config = None;
    let mut archive = None;
    if is_multipart {
        let mut mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?;
        while let Some(mut field) = mp.next_field().await.map_err(multipart_error)? {
            let name = field.name().map(str::to_string);
            match name.as_deref() {
                Some("config") => {
                    let bytes = field.bytes().await.map_err(multipart_error)?;
                    config = Some(parse_config(&bytes)?);
                }
                Some("archive") | Some("file") => {
                    let path = new.dir.join("archive.bin");
                    save_field(&mut field, &path, state.config.limits.max_archive_bytes).await?;
                    archive = Some(path);
                }
                _ => {}
            }
        }
    } else {
        let bytes = axum::body::to_bytes(req.into_body(), state.config.max_body_bytes as usize)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_too_large",
                    e.to_string(),
                )
            })?;
        config = Some(parse_config(&bytes)?);
    }
    let config = config.unwrap_or_default();
    let root = match archive {
        Some(path) => {
            let dest = new.dir.join("tasks");
            let limits = state.config.limits.clone();
            let d = dest.clone();
            tokio::task::spawn_blocking(move || {
                rollout_sources::archive::extract_file(&path, &d, &limits)
            })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::bad_request("invalid_archive", e.to_string()))?;
            Some(dest)
        }
        None => None,
    };
    let config = sanitize(state, &new.id, config, root.as_deref())?;
    let st = state.clone();
    let id = new.id.clone();
    let plan = tokio::task::spawn_blocking(move || runs::plan(&st, &id, config))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    let run = runs::start(state, RunKind::Job, &new.id, plan, &new.dir)?;
    new.keep();
    Ok(run)
}

fn load_job(state: &AppState, id: &str) -> Result<RunRow, ApiError> {
    load_run(state, id).map_err(|e| {
        if e.status == StatusCode::NOT_FOUND {
            ApiError::not_found("job", id)
        } else {
            e
        }
    })
}

pub async fn list_jobs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize_read(&state, &headers)?;
    let runs = state.db.list_runs(None)?;
    let mut jobs = Vec::with_capacity(runs.len());
    for r in &runs {
        let trials = state.db.list_trials(&r.id)?;
        let mut j = job_json(r, &trials);
        // The list stays small: configuration and result are in GET /api/v1/jobs/{id}.
        if let Some(o) = j.as_object_mut() {
            o.remove("config");
            o.remove("result");
        }
        redact_run(&state, r, &mut j);
        jobs.push(j);
    }
    Ok(Json(json!({"jobs": jobs})))
}

pub async fn get_job(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize_read(&state, &headers)?;
    let run = load_job(&state, &id)?;
    let trials = state.db.list_trials(&id)?;
    let mut v = job_json(&run, &trials);
    redact_run(&state, &run, &mut v);
    Ok(Json(v))
}

pub async fn cancel_job(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers)?;
    load_job(&state, &id)?;
    let (code, _) = cancel_run(&state, &id)?;
    Ok((code, Json(json!({"id": id, "status": "cancelling"}))))
}

pub async fn list_trials(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize_read(&state, &headers)?;
    let run = load_job(&state, &id)?;
    let trials = state.db.list_trials(&id)?;
    let mut v = json!({
        "job_id": id,
        "trials": trials.iter().map(trial_json).collect::<Vec<_>>(),
    });
    redact_run(&state, &run, &mut v);
    Ok(Json(v))
}

pub async fn get_trial(
    State(state): State<Arc<AppState>>,
    Path((id, trial)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize_read(&state, &headers)?;
    let run = load_job(&state, &id)?;
    let t = state
        .db
        .get_trial(&id, &trial)?
        .ok_or_else(|| ApiError::not_found("trial", &trial))?;
    let mut v = trial_json(&t);
    redact_run(&state, &run, &mut v);
    Ok(Json(v))
}

/// `GET /api/v1/jobs/{id}/trials/{trial}/files/{*path}`: a file of the trial directory
/// (result.json, agent/…, verifier/…), confined to that directory (symlinks included).
pub async fn download_file(
    State(state): State<Arc<AppState>>,
    Path((id, trial, path)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let run = load_job(&state, &id)?;
    let t = state
        .db
        .get_trial(&id, &trial)?
        .ok_or_else(|| ApiError::not_found("trial", &trial))?;
    let rel = std::path::Path::new(&path);
    if path.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(ApiError::bad_request(
            "invalid_path",
            "the file path must be relative to the trial directory, without `..`",
        ));
    }
    let trial_dir = run.job_dir.join(&t.trial_name);
    let not_found = || ApiError::not_found("file", &path);
    let base = tokio::fs::canonicalize(&trial_dir)
        .await
        .map_err(|_| not_found())?;
    let full = tokio::fs::canonicalize(base.join(rel))
        .await
        .map_err(|_| not_found())?;
    if !full.starts_with(&base) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "path_escape",
            "the path leads outside the trial directory",
        ));
    }
    let meta = tokio::fs::metadata(&full).await.map_err(|_| not_found())?;
    if !meta.is_file() {
        return Err(ApiError::bad_request(
            "not_a_file",
            format!("{path} is not a file"),
        ));
    }
    // Files small enough to hold lose the run's secrets (a trial's config.json holds the
    // agent's environment; a log may echo it) and the server's paths.
    if meta.len() <= REDACTED_DOWNLOAD_MAX {
        let bytes = tokio::fs::read(&full).await.map_err(|_| not_found())?;
        let r = crate::redact::Redactor {
            paths: &state.paths,
            secrets: crate::redact::secrets_of(&run.config),
        };
        let body = match std::str::from_utf8(&bytes) {
            Ok(text) => match serde_json::from_str::<Value>(text) {
                Ok(mut v) if path.ends_with(".json") => {
                    r.value(&mut v);
                    serde_json::to_vec_pretty(&v).unwrap_or_default()
                }
                _ => r.text(text).into_bytes(),
            },
            Err(_) => bytes,
        };
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, body.len())
            .body(Body::from(body))
            .map_err(|e| ApiError::internal(e.to_string()));
    }
    let file = tokio::fs::File::open(&full)
        .await
        .map_err(|_| not_found())?;
    let stream = tokio_util::io::ReaderStream::new(file);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, meta.len())
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn submitted_paths_stay_inside_the_upload() {
        let root = Path::new("/data/runs/x/tasks");
        assert_eq!(
            confined(Some(root), Path::new("tasks/a"), "p").unwrap(),
            root.join("tasks/a")
        );
        for bad in ["/etc", "../x", "a/../../b"] {
            assert_eq!(
                confined(Some(root), Path::new(bad), "p").unwrap_err().code,
                "invalid_job",
                "{bad}"
            );
        }
        assert!(confined(None, Path::new("a"), "p").is_err());
    }
}
