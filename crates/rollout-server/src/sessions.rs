//! Sessions (`/api/v1/sessions`): a task's environment driven step by step by a client (an RL
//! trainer), graded on request as a trial's verify phase grades it.
//!
//! A session is one trial of its own session job (`jobs/session-<id>/<task>__nop__1/`, a row in
//! the job list): its exec, upload and download steps are the trajectory
//! (`agent/trajectory.json`), its grade is the trial's rewards, its close is the trial's end
//! (`result.json`, the database, the provenance store). The environment work itself is the
//! runner's ([`rollout_runner::session::Sandbox`]): setup, the verifier (agent processes
//! killed first, the reward read without following links), the copy out.
//!
//! Limits: an idle TTL and a maximum lifetime ([`SessionConfig`]), a number of open sessions
//! per credential, caps on exec output, timeouts and file sizes. Every container carries the
//! server's identity ([`SERVER_LABEL`], a random id kept in the data directory): a server
//! removes what it (or a previous run of it, killed) left at start-up and at shutdown.
//!
//! Warm pools ([`crate::pool`]) keep started environments of a task ready; opening a session on
//! that task takes one.

use crate::db::{RunKind, RunRow, RunStatus, TaskStatus};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::pool::{Pool, Template};
use crate::upload;
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use rollout_core::job_config::AgentSpec;
use rollout_core::result::ErrorInfo;
use rollout_core::{ErrorKind, JobConfig, TrialResult};
use rollout_env::archive::TarBuilder;
use rollout_env::ExecRequest;
use rollout_runner::events::{Event, EventSink};
use rollout_runner::session::{Sandbox, SandboxSpec};
use rollout_runner::writer::ResultsWriter;
use rollout_runner::RunOptions;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Label carrying the identity of the server that made a session's or pool's container.
pub const SERVER_LABEL: &str = "io.rollout.server";
/// Label carrying the session (job) id of a container.
pub const SESSION_LABEL: &str = "io.rollout.session";
/// Job names of session jobs start with this.
pub const JOB_PREFIX: &str = "session-";
/// Bytes of each stream kept per exec step in the trajectory.
const TRAJECTORY_OUTPUT: usize = 16 << 10;
/// Passes of the start-up sweep of a previous run's containers, at most.
const STARTUP_SWEEPS: usize = 4;
/// Ended sessions remembered (to answer "expired" rather than "unknown").
const ENDED_KEPT: usize = 4096;

/// Session limits (`rollout serve --session-idle-ttl …`).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// A session nobody used for this long is closed.
    pub idle_ttl: Duration,
    /// A session is closed this long after it opened, used or not.
    pub max_lifetime: Duration,
    /// Open sessions per credential (token, hotkey; everyone when there is no auth).
    pub max_per_token: usize,
    /// Longest exec timeout a client may ask for.
    pub max_exec_timeout: Duration,
    /// Bytes kept of each exec output stream (tail), at most.
    pub max_exec_output: usize,
    /// Largest file uploaded or downloaded.
    pub max_file_bytes: u64,
    /// Warm pools to keep from the start: task or dataset directory, environments per task.
    pub warm_pools: Vec<(std::path::PathBuf, usize)>,
    /// Most environments one pool keeps.
    pub max_pool_size: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle_ttl: Duration::from_secs(30 * 60),
            max_lifetime: Duration::from_secs(24 * 3600),
            max_per_token: 64,
            max_exec_timeout: Duration::from_secs(3600),
            max_exec_output: 1 << 20,
            max_file_bytes: 64 << 20,
            warm_pools: Vec::new(),
            max_pool_size: 64,
        }
    }
}

/// One open session.
pub struct Session {
    pub id: String,
    owner: String,
    job_name: String,
    sandbox: Arc<Sandbox>,
    writer: Arc<ResultsWriter>,
    created: Instant,
    created_at: DateTime<Utc>,
    last_used: Mutex<Instant>,
    /// Requests running now (an exec longer than the idle TTL does not expire its session).
    busy: AtomicUsize,
    closing: AtomicBool,
    warm: bool,
    steps: Mutex<Vec<Value>>,
    /// The grade, once asked (a session is graded once; exec and upload end there).
    graded: tokio::sync::Mutex<Option<Value>>,
    config: Arc<Value>,
    /// The uploaded task archive's files, when the session was opened on one (removed when
    /// the session ends).
    upload: Mutex<Option<upload::UploadDir>>,
}

/// Why a session ended, remembered for a while.
#[derive(Debug, Clone)]
struct Ended {
    owner: String,
    reason: &'static str,
}

/// The server's sessions and pools.
pub struct Sessions {
    /// This server's identity (kept in `<data-dir>/server-id`).
    pub server_id: String,
    open: Mutex<HashMap<String, Arc<Session>>>,
    /// Sessions being opened, per owner (they count against the limit).
    opening: Mutex<HashMap<String, usize>>,
    ended: Mutex<(HashMap<String, Ended>, VecDeque<String>)>,
    pub(crate) pools: Mutex<HashMap<String, Arc<Pool>>>,
}

impl Sessions {
    /// The registry of a server whose data directory is `data_dir` (its identity is read from
    /// `server-id` there, or made).
    pub fn new(data_dir: &std::path::Path) -> std::io::Result<Self> {
        let path = data_dir.join("server-id");
        let server_id = match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => {
                let id = uuid::Uuid::new_v4().to_string();
                std::fs::write(&path, &id)?;
                id
            }
        };
        Ok(Self {
            server_id,
            open: Mutex::new(HashMap::new()),
            opening: Mutex::new(HashMap::new()),
            ended: Mutex::new((HashMap::new(), VecDeque::new())),
            pools: Mutex::new(HashMap::new()),
        })
    }

    fn get(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.open).get(id).cloned()
    }

    fn remember_end(&self, id: &str, owner: &str, reason: &'static str) {
        let mut ended = lock(&self.ended);
        let (map, order) = &mut *ended;
        map.insert(
            id.to_string(),
            Ended {
                owner: owner.to_string(),
                reason,
            },
        );
        order.push_back(id.to_string());
        while order.len() > ENDED_KEPT {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    /// Open sessions (for `/status` and tests).
    pub fn n_open(&self) -> usize {
        lock(&self.open).len()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Who is asking (the same credentials as the rest of `/api/v1`).
fn principal(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    state
        .auth
        .check(headers)
        .map(|p| p.0)
        .inspect_err(|_| Metrics::inc(&state.metrics.auth_failures))
}

/// The caller's open session `id`: 404 for an unknown one (or another caller's), 410 for one
/// that ended (expired, closed).
fn session_of(state: &AppState, who: &str, id: &str) -> Result<Arc<Session>, ApiError> {
    if let Some(s) = state.sessions.get(id).filter(|s| s.owner == who) {
        if s.closing.load(Ordering::SeqCst) {
            return Err(gone(id, "closed"));
        }
        return Ok(s);
    }
    let ended = lock(&state.sessions.ended).0.get(id).cloned();
    match ended {
        Some(e) if e.owner == who => Err(gone(id, e.reason)),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "session_not_found",
            format!("no open session {id:?}"),
        )),
    }
}

fn gone(id: &str, reason: &str) -> ApiError {
    let (code, why) = match reason {
        "idle" => (
            "session_expired",
            "it was idle for longer than the server's --session-idle-ttl",
        ),
        "lifetime" => (
            "session_expired",
            "it reached the server's --session-max-lifetime",
        ),
        "shutdown" => ("session_closed", "the server shut down"),
        _ => ("session_closed", "it was closed"),
    };
    ApiError::new(
        StatusCode::GONE,
        code,
        format!("session {id} has ended: {why}; open a new one"),
    )
}

/// Marks a session in use for the life of a request.
struct Busy<'a>(&'a Session);

impl<'a> Busy<'a> {
    fn new(s: &'a Session) -> Self {
        s.busy.fetch_add(1, Ordering::SeqCst);
        *lock(&s.last_used) = Instant::now();
        Self(s)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        *lock(&self.0.last_used) = Instant::now();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

fn error_info(e: &ErrorInfo) -> ApiError {
    let status = match e.kind.class() {
        rollout_core::ErrorClass::Provider | rollout_core::ErrorClass::Infrastructure => {
            StatusCode::BAD_GATEWAY
        }
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(status, e.kind.as_str(), e.message.clone())
}

// ---------------------------------------------------------------------------------------------
// Opening

/// `POST /api/v1/sessions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    /// A task directory on the server (under --allow-local-paths, or a warm pool's), or the
    /// name of a task a warm pool keeps.
    pub task: Option<String>,
    /// A registry dataset (as in a job configuration) holding `task`.
    pub dataset: Option<rollout_core::job_config::DatasetSpec>,
}

/// Find the template and pool for a request, loading the task when no pool has it.
async fn resolve(
    state: &Arc<AppState>,
    req: OpenRequest,
) -> Result<(Arc<Template>, Option<Arc<Pool>>), ApiError> {
    let Some(task) = req.task.filter(|t| !t.trim().is_empty()) else {
        return Err(ApiError::bad_request(
            "invalid_session",
            "`task` is required: a task directory on the server, or a warm pool's task name",
        ));
    };
    if req.dataset.is_none() {
        if let Some(pool) = crate::pool::find(state, &task) {
            return Ok((pool.template.clone(), Some(pool)));
        }
    }
    let mut config = JobConfig::default();
    match req.dataset {
        Some(mut d) => {
            if d.registry.is_none() || d.path.is_some() {
                return Err(ApiError::bad_request(
                    "invalid_session",
                    "`dataset` must name a registry dataset (registry + name); a directory on the server is given as `task`",
                ));
            }
            d.task_names = vec![task.clone()];
            d.exclude_task_names.clear();
            d.n_tasks = None;
            config.datasets = vec![d];
        }
        None => {
            let path = check_local(state, &task)?;
            config.tasks = vec![rollout_core::job_config::TaskSpec {
                path,
                git_url: None,
                git_commit_id: None,
            }];
        }
    }
    let template = load_template(state, config).await?;
    Ok((template, None))
}

/// A task directory the source policy allows (`--allow-local-paths`), canonical.
pub(crate) fn check_local(state: &AppState, task: &str) -> Result<std::path::PathBuf, ApiError> {
    let refused =
        |why: &str| ApiError::bad_request("source_refused", format!("task {task:?}: {why}"));
    let roots = &state.config.sources.local_roots;
    if roots.is_empty() {
        return Err(refused("this server opens no task directory of its own (the operator can allow directories with --allow-local-paths, or keep a warm pool of the task)"));
    }
    let p = std::path::Path::new(task);
    if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(refused(
            "must be an absolute path without `..` under a directory the server allows, or a warm pool's task name",
        ));
    }
    let canonical = p.canonicalize().ok();
    let inside = canonical.as_ref().is_some_and(|c| {
        roots
            .iter()
            .filter_map(|r| r.canonicalize().ok())
            .any(|r| c.starts_with(r))
    });
    match (inside, canonical) {
        (true, Some(c)) => Ok(c),
        _ => Err(refused(
            "is not a directory under one the server allows (--allow-local-paths)",
        )),
    }
}

/// Load one task into a template (blocking work off the async workers).
pub(crate) async fn load_template(
    state: &Arc<AppState>,
    mut config: JobConfig,
) -> Result<Arc<Template>, ApiError> {
    let id = uuid::Uuid::new_v4().to_string();
    // The server's provider: the trial records it, and a cluster's checks apply (a task built
    // from a Dockerfile needs a registry) before anything starts.
    config.environment.kind = state.config.environment;
    config.agents = vec![AgentSpec {
        name: "nop".into(),
        ..Default::default()
    }];
    config.jobs_dir = Some(state.config.runs_dir().join(&id).join("plan"));
    config.name = Some(format!("{JOB_PREFIX}{id}"));
    let st = state.clone();
    let plan = tokio::task::spawn_blocking(move || crate::runs::plan(&st, &id, config))
        .await
        .map_err(|e| ApiError::internal(format!("loading the task: {e}")))??;
    if plan.trials.len() != 1 {
        return Err(ApiError::bad_request(
            "invalid_session",
            format!(
                "the request names {} tasks; a session runs exactly one",
                plan.trials.len()
            ),
        ));
    }
    Ok(Arc::new(Template::of(&plan)))
}

/// Start a sandbox from `template` for a new session job.
pub(crate) async fn start_sandbox(
    state: &AppState,
    template: &Template,
) -> Result<(Sandbox, String), ErrorInfo> {
    let job_id = uuid::Uuid::new_v4().to_string();
    let job_name = format!("{JOB_PREFIX}{job_id}");
    let plan = template.trial();
    let dir = state.config.jobs_dir().join(&job_name).join(&plan.name);
    let mut config = template.config.clone();
    config.name = Some(job_name.clone());
    config.jobs_dir = Some(state.config.jobs_dir());
    let spec = SandboxSpec {
        provider: state.provider.clone(),
        plan: Arc::new(plan),
        job_id: job_id.clone(),
        job_name: job_name.clone(),
        config,
        options: RunOptions {
            ca_bundle: state.config.ca_bundle.clone().map(Arc::new),
            ..Default::default()
        },
        dir,
        labels: BTreeMap::from([
            (SERVER_LABEL.to_string(), state.sessions.server_id.clone()),
            (SESSION_LABEL.to_string(), job_id.clone()),
        ]),
    };
    match Sandbox::open(spec).await {
        Ok(s) => Ok((s, job_id)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(state.config.jobs_dir().join(&job_name));
            Err(e)
        }
    }
}

/// Reserve a place for `who` under the per-credential limit.
struct Reservation<'a> {
    state: &'a AppState,
    who: String,
}

impl<'a> Reservation<'a> {
    fn take(state: &'a AppState, who: &str) -> Result<Self, ApiError> {
        let open = lock(&state.sessions.open);
        let mut opening = lock(&state.sessions.opening);
        let n = open.values().filter(|s| s.owner == who).count()
            + opening.get(who).copied().unwrap_or(0);
        let max = state.config.sessions.max_per_token;
        if n >= max {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sessions",
                format!("{n} sessions are open (or opening) for these credentials, the server's limit (--max-sessions-per-token {max}): close one first"),
            ));
        }
        *opening.entry(who.to_string()).or_default() += 1;
        Ok(Self {
            state,
            who: who.to_string(),
        })
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut opening = lock(&self.state.sessions.opening);
        if let Some(n) = opening.get_mut(&self.who) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                opening.remove(&self.who);
            }
        }
    }
}

/// `POST /api/v1/sessions?task=NAME`: the task to open in an uploaded archive holding several.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenQuery {
    pub task: Option<String>,
}

/// How the request gives its task.
fn is_upload(headers: &HeaderMap) -> Option<bool> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let ct = ct.split(';').next().unwrap_or("").trim().to_string();
    match ct.as_str() {
        "multipart/form-data" => Some(true),
        "application/gzip"
        | "application/x-gzip"
        | "application/zip"
        | "application/x-tar"
        | "application/octet-stream" => Some(false),
        _ => None,
    }
}

pub async fn open_session(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<OpenQuery>,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers)?;
    crate::seed::accepting(&state)?;
    let reservation;
    let t0 = Instant::now();
    let (template, pool, upload) = match is_upload(&headers) {
        Some(multipart) => {
            reservation = Reservation::take(&state, &who)?;
            let (template, dir) = upload::template(&state, multipart, q.task, req).await?;
            (template, None, Some(dir))
        }
        None => {
            let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .map_err(|e| {
                    ApiError::bad_request("invalid_session", format!("the request body: {e}"))
                })?;
            let req: OpenRequest = serde_json::from_slice(&body).map_err(|e| {
                ApiError::bad_request("invalid_session", format!("the request body: {e} (a task archive is sent as multipart `archive`, or as the body with Content-Type application/gzip, application/zip or application/x-tar)"))
            })?;
            reservation = Reservation::take(&state, &who)?;
            let (template, pool) = resolve(&state, req).await?;
            (template, pool, None)
        }
    };
    let warm = pool.as_ref().and_then(|p| p.take(&state));
    let was_warm = warm.is_some();
    let (sandbox, id) = match warm {
        Some(w) => w,
        None => start_sandbox(&state, &template)
            .await
            .map_err(|e| error_info(&e))?,
    };
    if state.shutdown.is_cancelled() {
        sandbox.close().await;
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let session = register(&state, sandbox, &id, &who, was_warm, upload)?;
    drop(reservation);
    tracing::info!(
        session = %id,
        warm = was_warm,
        ms = t0.elapsed().as_millis() as u64,
        "session opened"
    );
    Ok((StatusCode::CREATED, Json(session_json(&state, &session))).into_response())
}

/// Record a session's job and trial as started, and make it reachable.
fn register(
    state: &Arc<AppState>,
    sandbox: Sandbox,
    id: &str,
    who: &str,
    warm: bool,
    upload: Option<upload::UploadDir>,
) -> Result<Arc<Session>, ApiError> {
    let config = sandbox.config().clone();
    let job_name = config.job_name.clone();
    let job_dir = state.config.jobs_dir().join(&job_name);
    let job_config = serde_json::to_value(sandbox.job_config()).unwrap_or_default();
    let now = Utc::now();
    let run = RunRow {
        id: id.to_string(),
        kind: RunKind::Job,
        status: RunStatus::Pending,
        created_at: now,
        started_at: None,
        finished_at: None,
        concurrent_tasks: 1,
        total_tasks: 1,
        error: None,
        config: job_config.clone(),
        job_dir: job_dir.clone(),
        work_dir: state.config.runs_dir().join(id),
        result: None,
    };
    let trial = (config.trial_name.clone(), config.task_name.clone());
    let sandbox = Arc::new(sandbox);
    if let Err(e) = state.db.insert_run(&run, std::slice::from_ref(&trial)) {
        let s = sandbox.clone();
        tokio::spawn(async move { s.close().await });
        return Err(e.into());
    }
    let _ = state.db.set_run_status(id, RunStatus::Running, None);
    let _ = state
        .db
        .set_trial_status(id, &trial.0, TaskStatus::RunningAgent);
    let writer = Arc::new(ResultsWriter::new());
    let config_value = Arc::new(job_config);
    writer.on_event(&Event::JobStarted {
        job_id: id.to_string(),
        job_name: job_name.clone(),
        job_dir,
        n_trials: 1,
        n_kept: 0,
        concurrency: 1,
        config: config_value.clone(),
    });
    writer.on_event(&Event::TrialStarted {
        config: config.clone(),
        trial_dir: sandbox.dir().to_path_buf(),
    });
    let session = Arc::new(Session {
        id: id.to_string(),
        owner: who.to_string(),
        job_name,
        sandbox,
        writer,
        created: Instant::now(),
        created_at: now,
        last_used: Mutex::new(Instant::now()),
        busy: AtomicUsize::new(0),
        closing: AtomicBool::new(false),
        warm,
        steps: Mutex::new(Vec::new()),
        graded: tokio::sync::Mutex::new(None),
        config: config_value,
        upload: Mutex::new(upload),
    });
    lock(&state.sessions.open).insert(id.to_string(), session.clone());
    Ok(session)
}

fn session_json(state: &AppState, s: &Session) -> Value {
    let cfg = s.sandbox.config();
    let ttl = state.config.sessions.idle_ttl;
    json!({
        "id": s.id,
        "task_name": cfg.task_name,
        "trial_name": cfg.trial_name,
        "job_id": s.id,
        "instruction": s.sandbox.instruction(),
        "warm": s.warm,
        "created_at": s.created_at,
        "idle_ttl_sec": ttl.as_secs_f64(),
        "expires_in_sec": (state.config.sessions.max_lifetime.saturating_sub(s.created.elapsed())).as_secs_f64(),
        "steps": lock(&s.steps).len(),
        "graded": s.graded.try_lock().map(|g| g.is_some()).unwrap_or(false),
        "container_id": s.sandbox.env().id(),
    })
}

pub async fn list_sessions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = principal(&state, &headers)?;
    let mut list: Vec<Arc<Session>> = lock(&state.sessions.open)
        .values()
        .filter(|s| s.owner == who && !s.closing.load(Ordering::SeqCst))
        .cloned()
        .collect();
    list.sort_by_key(|s| s.created_at);
    let sessions: Vec<Value> = list.iter().map(|s| session_json(&state, s)).collect();
    Ok(Json(json!({ "sessions": sessions })))
}

pub async fn get_session(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = principal(&state, &headers)?;
    let s = session_of(&state, &who, &id)?;
    Ok(Json(session_json(&state, &s)))
}

// ---------------------------------------------------------------------------------------------
// Steps

/// A command: a shell script (run with `bash -c`) or an argv.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Command {
    Script(String),
    Argv(Vec<String>),
}

/// `POST /api/v1/sessions/{id}/exec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    pub command: Command,
    /// Seconds (default 60).
    pub timeout_sec: Option<f64>,
    pub user: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// Text written to the command's stdin.
    pub stdin: Option<String>,
    /// Bytes kept of each output stream (tail); at most the server's cap.
    pub max_output_bytes: Option<usize>,
}

fn refuse_if_graded(graded: &Option<Value>, id: &str) -> Result<(), ApiError> {
    if graded.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "session_graded",
            format!("session {id} was graded: the tests are in its environment now, so it takes no more commands or files (open a new session)"),
        ));
    }
    Ok(())
}

pub async fn exec(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let who = principal(&state, &headers)?;
    let s = session_of(&state, &who, &id)?;
    let req: ExecBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_exec", format!("the request body: {e}")))?;
    let caps = &state.config.sessions;
    let timeout = req.timeout_sec.unwrap_or(60.0);
    if !(timeout.is_finite() && timeout > 0.0) {
        return Err(ApiError::bad_request(
            "invalid_exec",
            "timeout_sec must be a positive number of seconds",
        ));
    }
    if timeout > caps.max_exec_timeout.as_secs_f64() {
        return Err(ApiError::bad_request(
            "over_limit",
            format!(
                "timeout_sec = {timeout} exceeds this server's limit of {} s (--session-max-exec-timeout)",
                caps.max_exec_timeout.as_secs()
            ),
        ));
    }
    let cap = req.max_output_bytes.unwrap_or(caps.max_exec_output);
    if cap > caps.max_exec_output {
        return Err(ApiError::bad_request(
            "over_limit",
            format!(
                "max_output_bytes = {cap} exceeds this server's limit of {} bytes",
                caps.max_exec_output
            ),
        ));
    }
    let (argv, shown) = match req.command {
        Command::Script(s) => (
            vec!["bash".to_string(), "-c".to_string(), s.clone()],
            Value::String(s),
        ),
        Command::Argv(a) if a.is_empty() => {
            return Err(ApiError::bad_request(
                "invalid_exec",
                "command is an empty argv",
            ))
        }
        Command::Argv(a) => (a.clone(), json!(a)),
    };
    let mut er = ExecRequest::argv(argv, Duration::from_secs_f64(timeout))
        .user(req.user.clone())
        .env(req.env.clone());
    er.workdir = req.cwd.clone();
    er.output_cap = cap;
    er.stdin = req.stdin.map(String::into_bytes);
    let _busy = Busy::new(&s);
    // Held while the command runs: a grade waits for it, and no command starts after one.
    let graded = s.graded.lock().await;
    refuse_if_graded(&graded, &id)?;
    let started_at = Utc::now();
    let out = s.sandbox.env().exec(er).await;
    drop(graded);
    let out = out.map_err(|e| {
        if s.closing.load(Ordering::SeqCst) {
            gone(&id, "closed")
        } else {
            error_info(&ErrorInfo::new(e.kind(), e.to_string()))
        }
    })?;
    let text = |c: &rollout_env::Captured| String::from_utf8_lossy(&c.bytes).into_owned();
    let resp = json!({
        "exit_code": out.exit_code,
        "timed_out": out.timed_out,
        "output_limit_exceeded": out.output_limit_exceeded,
        "stdout": text(&out.stdout),
        "stderr": text(&out.stderr),
        "stdout_bytes": out.stdout.total,
        "stderr_bytes": out.stderr.total,
        "stdout_truncated": out.stdout.truncated(),
        "stderr_truncated": out.stderr.truncated(),
        "seconds": out.duration.as_secs_f64(),
    });
    let tail = |c: &rollout_env::Captured| {
        let b = &c.bytes[c.bytes.len().saturating_sub(TRAJECTORY_OUTPUT)..];
        String::from_utf8_lossy(b).into_owned()
    };
    lock(&s.steps).push(json!({
        "type": "exec",
        "started_at": started_at,
        "command": shown,
        "user": req.user,
        "cwd": req.cwd,
        "env_keys": req.env.keys().collect::<Vec<_>>(),
        "timeout_sec": timeout,
        "exit_code": out.exit_code,
        "timed_out": out.timed_out,
        "seconds": out.duration.as_secs_f64(),
        "stdout": tail(&out.stdout),
        "stderr": tail(&out.stderr),
        "stdout_bytes": out.stdout.total,
        "stderr_bytes": out.stderr.total,
    }));
    Ok(Json(resp))
}

/// A path inside the environment from the URL's `{*path}`: absolute, without `..`.
fn env_path(raw: &str) -> Result<String, ApiError> {
    let p = format!("/{}", raw.trim_start_matches('/'));
    if p == "/" || p.split('/').any(|c| c == "..") || p.contains('\0') {
        return Err(ApiError::bad_request(
            "invalid_path",
            format!("{p:?}: give a file path inside the environment, without `..`"),
        ));
    }
    Ok(p.trim_end_matches('/').to_string())
}

#[derive(Debug, Deserialize)]
pub struct PutQuery {
    /// Octal file mode (default 644).
    pub mode: Option<String>,
}

pub async fn put_file(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((id, path)): Path<(String, String)>,
    Query(q): Query<PutQuery>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let who = principal(&state, &headers)?;
    let s = session_of(&state, &who, &id)?;
    let path = env_path(&path)?;
    let max = state.config.sessions.max_file_bytes;
    if body.len() as u64 > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "over_limit",
            format!(
                "the file is {} bytes, over this server's limit of {max} (--session-max-file-bytes)",
                body.len()
            ),
        ));
    }
    let mode = match q.mode.as_deref() {
        None => 0o644,
        Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_mode",
                    format!("mode {m:?}: expected octal, e.g. 755"),
                )
            })?,
    };
    let _busy = Busy::new(&s);
    let graded = s.graded.lock().await;
    refuse_if_graded(&graded, &id)?;
    let n = body.len();
    let p = path.clone();
    let tar = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let mut b = TarBuilder::new();
        b.file(&p, mode, &body)?;
        b.finish()
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(format!("packing the file: {e}")))?;
    s.sandbox
        .env()
        .upload_tar(tar)
        .await
        .map_err(|e| error_info(&ErrorInfo::new(e.kind(), e.to_string())))?;
    drop(graded);
    lock(&s.steps).push(json!({
        "type": "upload", "started_at": Utc::now(), "path": path, "bytes": n, "mode": format!("{mode:o}"),
    }));
    Ok(Json(json!({"path": path, "bytes": n})))
}

pub async fn get_file(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers)?;
    let s = session_of(&state, &who, &id)?;
    let path = env_path(&path)?;
    let _busy = Busy::new(&s);
    let max = state.config.sessions.max_file_bytes;
    let tmp = tempfile::Builder::new()
        .prefix("session-download-")
        .tempdir_in(&state.config.data_dir)
        .map_err(|e| ApiError::internal(format!("a temporary directory: {e}")))?;
    let copied = s
        .sandbox
        .copy_out(&path, tmp.path(), max)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "copy_failed",
                format!("copying {path} out: {e}"),
            )
        })?;
    let Some((target, _bytes, truncated)) = copied else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "file_not_found",
            format!("{path} does not exist in the session's environment"),
        ));
    };
    if truncated {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "over_limit",
            format!("{path} is larger than this server's limit of {max} bytes (--session-max-file-bytes)"),
        ));
    }
    let (kind, bytes) = tokio::task::spawn_blocking(move || read_out(&target, max))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("reading the copy of {path}: {e}")))?;
    lock(&s.steps).push(json!({
        "type": "download", "started_at": Utc::now(), "path": path, "bytes": bytes.len(), "kind": kind,
    }));
    let content_type = if kind == "file" {
        "application/octet-stream"
    } else {
        "application/x-tar"
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::HeaderName::from_static("x-rollout-kind"), kind),
        ],
        Body::from(bytes),
    )
        .into_response())
}

/// The host copy: a regular file's bytes (opened without following links), or a directory as
/// a tar archive of its regular files.
fn read_out(target: &std::path::Path, max: u64) -> std::io::Result<(&'static str, Vec<u8>)> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let meta = std::fs::symlink_metadata(target)?;
    if meta.is_dir() {
        let mut b = TarBuilder::new();
        b.host_dir(".", target)?;
        return Ok(("directory", b.finish()?));
    }
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(target)?;
    let mut bytes = Vec::new();
    f.take(max + 1).read_to_end(&mut bytes)?;
    Ok(("file", bytes))
}

pub async fn grade(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = principal(&state, &headers)?;
    let s = session_of(&state, &who, &id)?;
    let _busy = Busy::new(&s);
    let mut graded = s.graded.lock().await;
    if let Some(g) = graded.as_ref() {
        return Ok(Json(g.clone()));
    }
    let t0 = Instant::now();
    let r = s.sandbox.grade().await;
    let value = match &r {
        Ok(g) => json!({
            "rewards": g.rewards,
            "reward": rollout_core::result::main_reward(&g.rewards),
            "exit_code": g.verifier.exit_code,
            "killed_processes": g.killed,
            "seconds": t0.elapsed().as_secs_f64(),
            "error": null,
        }),
        Err(e) => json!({
            "rewards": null,
            "reward": null,
            "exit_code": null,
            "killed_processes": 0,
            "seconds": t0.elapsed().as_secs_f64(),
            "error": {"kind": e.kind.to_string(), "message": e.message},
        }),
    };
    *graded = Some(value.clone());
    lock(&s.steps).push(json!({"type": "grade", "started_at": Utc::now(), "result": value}));
    match r {
        Ok(_) => Ok(Json(value)),
        Err(e) => Err(error_info(&e)),
    }
}

pub async fn close_session(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = principal(&state, &headers)?;
    let s = session_of(&state, &who, &id)?;
    let result = end(&state, &s, "closed").await;
    Ok(Json(json!({
        "id": id,
        "reward": result.as_ref().and_then(|r| r.reward),
        "rewards": result.as_ref().and_then(|r| r.rewards.clone()),
        "error": result.as_ref().and_then(|r| r.error.as_ref()).map(|e| json!({"kind": e.kind.to_string(), "message": e.message})),
    })))
}

/// End a session: remove its environment, record its trial. `None` when it was already ending.
pub(crate) async fn end(
    state: &Arc<AppState>,
    s: &Arc<Session>,
    reason: &'static str,
) -> Option<TrialResult> {
    if s.closing.swap(true, Ordering::SeqCst) {
        return None;
    }
    state.sessions.remember_end(&s.id, &s.owner, reason);
    let graded = s.graded.try_lock().map(|g| g.is_some()).unwrap_or(true);
    if !graded {
        let why = match reason {
            "idle" => Some("the session expired: idle for longer than --session-idle-ttl"),
            "lifetime" => Some("the session expired: it reached --session-max-lifetime"),
            "shutdown" => Some("the server shut down while the session was open"),
            _ => None,
        };
        if let Some(why) = why {
            s.sandbox
                .fail(ErrorInfo::new(ErrorKind::AgentExecutionTimeout, why))
                .await;
        }
    }
    let dir = s.sandbox.dir().to_path_buf();
    let steps = std::mem::take(&mut *lock(&s.steps));
    let trajectory = json!({
        "schema_version": "1",
        "session_id": s.id,
        "task_name": s.sandbox.config().task_name,
        "warm": s.warm,
        "end_reason": reason,
        "steps": steps,
    });
    if let Err(e) =
        rollout_runner::fsutil::write_json(&dir.join("agent/trajectory.json"), &trajectory)
    {
        tracing::warn!(session = %s.id, "writing the trajectory: {e}");
    }
    let result = s.sandbox.close().await;
    let upload = lock(&s.upload).take();
    if let Some(dir) = upload {
        let _ = tokio::task::spawn_blocking(move || drop(dir)).await;
    }
    let result = Arc::new(result);
    lock(&state.sessions.open).remove(&s.id);
    let finished = Event::TrialFinished {
        result: result.clone(),
        trial_dir: dir.clone(),
    };
    s.writer.on_event(&finished);
    let job_dir = state.config.jobs_dir().join(&s.job_name);
    let job_result = job_result(&s.id, &s.job_name, &result);
    s.writer.on_event(&Event::JobFinished {
        result: Arc::new(job_result.clone()),
        job_dir: job_dir.clone(),
    });
    if let Some(e) = s.writer.error() {
        tracing::warn!(session = %s.id, "writing results: {e}");
    }
    let end = crate::runs::trial_end(&result, &dir);
    let _ = state.db.finish_trial(&s.id, &result.trial_name, &end);
    let _ = state.db.set_run_result(
        &s.id,
        &serde_json::to_value(&job_result).unwrap_or_default(),
    );
    let status = if reason == "shutdown" {
        RunStatus::Interrupted
    } else {
        RunStatus::Completed
    };
    let _ = state.db.set_run_status(&s.id, status, None);
    if let Some(store) = state.config.store_path.clone() {
        let recorder = rollout_runner::provenance::TrialRecorder::start(
            store,
            vec![
                "rollout".into(),
                "serve".into(),
                format!("session:{}", s.id),
            ],
        );
        recorder.on_event(&Event::JobStarted {
            job_id: s.id.clone(),
            job_name: s.job_name.clone(),
            job_dir,
            n_trials: 1,
            n_kept: 0,
            concurrency: 1,
            config: s.config.clone(),
        });
        recorder.on_event(&Event::TrialStarted {
            config: s.sandbox.config().clone(),
            trial_dir: dir,
        });
        recorder.on_event(&finished);
        let id = s.id.clone();
        tokio::task::spawn_blocking(move || {
            for w in recorder.finish().warnings {
                tracing::warn!(session = %id, "provenance: {w}");
            }
        });
    }
    tracing::info!(session = %s.id, reason, reward = ?result.reward, "session ended");
    Some(Arc::unwrap_or_clone(result))
}

fn job_result(id: &str, name: &str, r: &TrialResult) -> rollout_core::result::JobResult {
    use rollout_core::result::compute_stats;
    let one = std::slice::from_ref(r);
    let dataset = r.dataset.clone().unwrap_or_else(|| "-".into());
    rollout_core::result::JobResult {
        schema_version: rollout_core::RESULT_SCHEMA_VERSION.into(),
        id: id.to_string(),
        name: name.to_string(),
        started_at: r.started_at,
        finished_at: Some(r.finished_at),
        seconds: r.seconds,
        n_total_trials: 1,
        n_not_started: 0,
        cancelled: false,
        stats: compute_stats(one),
        by_agent: BTreeMap::from([(r.agent.name.clone(), compute_stats(one))]),
        by_dataset: BTreeMap::from([(dataset.clone(), compute_stats(one))]),
        by_agent_dataset: BTreeMap::from([(
            format!("{} / {}", r.agent.name, dataset),
            compute_stats(one),
        )]),
        by_agent_model_dataset: vec![rollout_core::result::GroupStats {
            agent: r.agent.name.clone(),
            model: r.agent.model_name.clone(),
            dataset,
            stats: compute_stats(one),
        }],
        trials: BTreeMap::from([(r.trial_name.clone(), r.reward)]),
        harbor_stats: Some(rollout_core::harbor_result::HarborJobStats::from_trials(
            one, 1,
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

/// At start-up: remove every container a previous run of this server left (it was killed),
/// mark its open sessions interrupted, drop the files of pool environments never handed out.
pub async fn startup(state: &Arc<AppState>) {
    let id = &state.sessions.server_id;
    // Sweep until a pass finds nothing (a few passes at most): a create the killed server had
    // sent is finished by the engine on its own, and its container may appear only after the
    // first listing. The label is set at create, so every such container is found.
    let mut total = 0;
    for _ in 0..STARTUP_SWEEPS {
        match state.provider.remove_labelled(SERVER_LABEL, id).await {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) => {
                tracing::warn!("removing this server's leftover containers: {e}");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!("removed {total} container(s) a previous run of this server left");
    }
    let runs = state
        .db
        .runs_with_status(&[RunStatus::Pending, RunStatus::Running])
        .unwrap_or_default();
    for run in runs {
        let is_session = run
            .config
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.starts_with(JOB_PREFIX));
        if is_session {
            let _ = state.db.close_open_trials(&run.id, TaskStatus::Interrupted);
            let _ = state.db.set_run_status(
                &run.id,
                RunStatus::Interrupted,
                Some("the server stopped while the session was open"),
            );
        }
    }
    if let Ok(entries) = std::fs::read_dir(state.config.jobs_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_prefix(JOB_PREFIX) {
                if matches!(state.db.get_run(id), Ok(None)) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    upload::remove_leftovers(state);
    crate::pool::start_configured(state).await;
}

/// Close sessions past their idle TTL or lifetime, once a second.
pub fn spawn_reaper(state: Arc<AppState>) {
    let every = (state.config.sessions.idle_ttl / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let cfg = &state.config.sessions;
            let expired: Vec<(Arc<Session>, &'static str)> = lock(&state.sessions.open)
                .values()
                .filter_map(|s| {
                    if s.closing.load(Ordering::SeqCst) {
                        None
                    } else if s.created.elapsed() >= cfg.max_lifetime {
                        Some((s.clone(), "lifetime"))
                    } else if s.busy.load(Ordering::SeqCst) == 0
                        && lock(&s.last_used).elapsed() >= cfg.idle_ttl
                    {
                        Some((s.clone(), "idle"))
                    } else {
                        None
                    }
                })
                .collect();
            for (s, why) in expired {
                let state = state.clone();
                tokio::spawn(async move {
                    end(&state, &s, why).await;
                });
            }
        }
    });
}

/// At shutdown: end every session (recorded as interrupted), empty the pools, and sweep.
pub async fn shutdown(state: &Arc<AppState>) {
    let open: Vec<Arc<Session>> = lock(&state.sessions.open).values().cloned().collect();
    let ends = open.iter().map(|s| end(state, s, "shutdown"));
    futures_util::future::join_all(ends).await;
    crate::pool::drain_all(state).await;
    if let Err(e) = state
        .provider
        .remove_labelled(SERVER_LABEL, &state.sessions.server_id)
        .await
    {
        tracing::warn!("removing session containers: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAPI

/// The session and pool operations of the OpenAPI document.
pub fn openapi_paths() -> Vec<(&'static str, &'static str, Value)> {
    let sec = json!([{"bearer": []}, {"hotkey": []}]);
    let err = |codes: &[&str]| {
        let mut m = serde_json::Map::new();
        for c in codes {
            m.insert(c.to_string(), json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
        }
        m
    };
    let op = |summary: &str,
              params: Vec<&str>,
              body: Option<Value>,
              status: &str,
              schema: Value,
              codes: &[&str]| {
        let mut responses = err(codes);
        responses.insert(
            status.into(),
            json!({"description": "ok", "content": {"application/json": {"schema": schema}}}),
        );
        let params: Vec<Value> = params
            .into_iter()
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut o = json!({"summary": summary, "parameters": params, "responses": responses, "security": sec});
        if let Some(b) = body {
            o["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": b}}});
        }
        o
    };
    let r = |n: &str| json!({"$ref": format!("#/components/schemas/{n}")});
    let mut get_file = op(
        "Download a file (bytes) or a directory (a tar archive of its regular files)",
        vec!["id", "path"],
        None,
        "200",
        json!({}),
        &["401", "403", "404", "410", "413"],
    );
    get_file["responses"]["200"] = json!({"description": "the file's bytes (X-Rollout-Kind: file) or a tar archive (X-Rollout-Kind: directory)", "content": {"application/octet-stream": {}, "application/x-tar": {}}});
    let mut put_file = op(
        "Upload a file (the request body is its bytes; ?mode=755 sets its mode)",
        vec!["id", "path"],
        None,
        "200",
        json!({"type": "object"}),
        &["400", "401", "403", "404", "409", "410", "413"],
    );
    put_file["requestBody"] =
        json!({"required": true, "content": {"application/octet-stream": {}}});
    let mut open = op("Open a session on a task (a task on the server, or an uploaded task archive): its environment is started and its instruction returned", vec![], Some(r("SessionOpen")), "201", r("Session"), &["400", "401", "403", "413", "422", "429", "502", "503"]);
    let archive = json!({"type": "string", "format": "binary"});
    open["requestBody"]["content"]["multipart/form-data"] = json!({"schema": {"type": "object", "required": ["archive"], "properties": {
        "archive": {"type": "string", "format": "binary", "description": "a tar.gz, tar or zip of the task directory (or of a directory of tasks)"},
        "task": {"type": "string", "description": "the task's name, when the archive holds several"}}}});
    for ct in [
        "application/gzip",
        "application/zip",
        "application/x-tar",
        "application/octet-stream",
    ] {
        open["requestBody"]["content"][ct] = json!({"schema": archive.clone()});
    }
    open["parameters"] = json!([{"name": "task", "in": "query", "required": false, "schema": {"type": "string"}, "description": "with an archive body: the task's name, when the archive holds several"}]);
    vec![
        ("post", "/api/v1/sessions", open),
        ("get", "/api/v1/sessions", op("The caller's open sessions", vec![], None, "200", json!({"type": "object", "required": ["sessions"], "properties": {"sessions": {"type": "array", "items": r("Session")}}}), &["401", "403"])),
        ("get", "/api/v1/sessions/{id}", op("One open session", vec!["id"], None, "200", r("Session"), &["401", "403", "404", "410"])),
        ("delete", "/api/v1/sessions/{id}", op("Close a session: its environment is removed and its trial recorded", vec!["id"], None, "200", r("SessionClosed"), &["401", "403", "404", "410"])),
        ("post", "/api/v1/sessions/{id}/exec", op("Run a command in the session's environment", vec!["id"], Some(r("ExecRequest")), "200", r("ExecResult"), &["400", "401", "403", "404", "409", "410", "502"])),
        ("post", "/api/v1/sessions/{id}/grade", op("Run the task's tests as a trial's verifier does (every process the session started is killed first) and return the rewards; the session then takes no more commands", vec!["id"], None, "200", r("Grade"), &["401", "403", "404", "410", "422", "502"])),
        ("get", "/api/v1/sessions/{id}/files/{*path}", get_file),
        ("put", "/api/v1/sessions/{id}/files/{*path}", put_file),
        ("post", "/api/v1/pools", op("Keep N started environments of a task ready (a pool; size 0 empties it)", vec![], Some(r("PoolRequest")), "200", r("Pool"), &["400", "401", "403", "422"])),
        ("get", "/api/v1/pools", op("The warm pools", vec![], None, "200", json!({"type": "object", "required": ["pools"], "properties": {"pools": {"type": "array", "items": r("Pool")}}}), &["401", "403"])),
    ]
}

/// The schemas of [`openapi_paths`].
pub fn openapi_schemas() -> Value {
    json!({
        "SessionOpen": {"type": "object", "required": ["task"], "properties": {
            "task": {"type": "string", "description": "a task directory on the server (under --allow-local-paths, or a warm pool's), or a warm pool's task name; with `dataset`, the task's name in it"},
            "dataset": {"type": "object", "description": "a registry dataset as in a job configuration (registry + name [+ version])"}}},
        "Session": {"type": "object", "required": ["id", "task_name", "instruction", "warm", "created_at"], "properties": {
            "id": {"type": "string"}, "task_name": {"type": "string"}, "trial_name": {"type": "string"},
            "job_id": {"type": "string", "description": "the session job (GET /api/v1/jobs/{id})"},
            "instruction": {"type": "string"}, "warm": {"type": "boolean", "description": "taken from a warm pool"},
            "created_at": {"type": "string"}, "idle_ttl_sec": {"type": "number"}, "expires_in_sec": {"type": "number"},
            "steps": {"type": "integer"}, "graded": {"type": "boolean"}, "container_id": {"type": "string"}}},
        "SessionClosed": {"type": "object", "required": ["id", "reward"], "properties": {
            "id": {"type": "string"}, "reward": {"type": ["number", "null"]}, "rewards": {"type": ["object", "null"]}, "error": {"type": ["object", "null"]}}},
        "ExecRequest": {"type": "object", "required": ["command"], "properties": {
            "command": {"oneOf": [{"type": "string", "description": "run with bash -c"}, {"type": "array", "items": {"type": "string"}}]},
            "timeout_sec": {"type": "number", "description": "default 60, at most --session-max-exec-timeout"},
            "user": {"type": "string"}, "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "cwd": {"type": "string"}, "stdin": {"type": "string"}, "max_output_bytes": {"type": "integer"}}},
        "ExecResult": {"type": "object", "required": ["exit_code", "timed_out", "stdout", "stderr"], "properties": {
            "exit_code": {"type": ["integer", "null"]}, "timed_out": {"type": "boolean"}, "output_limit_exceeded": {"type": "boolean"},
            "stdout": {"type": "string"}, "stderr": {"type": "string"}, "stdout_bytes": {"type": "integer"}, "stderr_bytes": {"type": "integer"},
            "stdout_truncated": {"type": "boolean"}, "stderr_truncated": {"type": "boolean"}, "seconds": {"type": "number"}}},
        "Grade": {"type": "object", "required": ["rewards", "reward"], "properties": {
            "rewards": {"type": ["object", "null"], "additionalProperties": {"type": "number"}}, "reward": {"type": ["number", "null"]},
            "exit_code": {"type": ["integer", "null"]}, "killed_processes": {"type": "integer"}, "seconds": {"type": "number"}, "error": {"type": ["object", "null"]}}},
        "PoolRequest": {"type": "object", "required": ["task", "size"], "properties": {
            "task": {"type": "string", "description": "a task directory under --allow-local-paths"}, "size": {"type": "integer"}}},
        "Pool": {"type": "object", "required": ["task", "task_name", "size", "ready", "starting"], "properties": {
            "task": {"type": "string"}, "task_name": {"type": "string"}, "size": {"type": "integer"}, "ready": {"type": "integer"},
            "starting": {"type": "integer"}, "taken": {"type": "integer"}, "last_error": {"type": ["string", "null"]}}},
    })
}
