//! `rollout serve`: the evaluation executor as an HTTP service.
//!
//! Two faces over one runner:
//! - the term-executor API (`/submit`, `/batch/{id}`, `/ws` …), field for field, so the seed's
//!   clients work unchanged ([`seed`]);
//! - the native job API under `/api/v1` (job configurations, trials, files, SSE and WebSocket
//!   streams, an OpenAPI document) ([`api`]).
//!
//! Both turn a submission into a [`rollout_runner::JobPlan`] and run it through the same
//! [`rollout_runner::Runner`] and Docker provider as `rollout run` ([`runs`]), recording runs and
//! trials in SQLite under `--data-dir` ([`db`]) so they survive a restart.
//!
//! Not here: the provenance store (an optional path is kept in [`ServerConfig::store_path`] for
//! the endpoints that will serve it), the command line (crate `rollout`).

#![recursion_limit = "512"]

pub mod api;
pub mod auth;
pub mod db;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod pool;
pub mod prov;
pub mod redact;
pub mod runs;
pub mod seed;
pub mod sessions;
pub mod stream;
pub mod upload;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use rollout_env::Provider;
use rollout_sources::archive::Limits;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::{Auth, AuthMode};
pub use error::ApiError;

/// The server's version, reported by `/status` and the OpenAPI document.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything `rollout serve` is told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the database, uploads and job directories live.
    pub data_dir: PathBuf,
    /// Runs executing at once; more wait in a queue.
    pub max_batches: usize,
    /// Default and maximum trials at once within one run.
    pub max_concurrent_tasks: usize,
    /// Archive extraction caps (archive size, files, extracted bytes, compression ratio).
    pub limits: Limits,
    /// Largest request body accepted.
    pub max_body_bytes: u64,
    /// On shutdown: how long running trials may go on before they are cancelled.
    pub shutdown_grace: Duration,
    /// Finished runs older than this are deleted with their files.
    pub ttl: Duration,
    /// Restart runs a previous server left unfinished, instead of marking them interrupted.
    pub resume_interrupted: bool,
    /// Base image of executor-archive tasks (default: Debian + git + the language runtime).
    pub executor_image: Option<String>,
    /// CA bundle for environments and builds.
    pub ca_bundle: Option<Vec<u8>>,
    /// The provenance store (crate rollout-store), when one is configured.
    pub store_path: Option<PathBuf>,
    /// Reads of runs (jobs, trials, batches, streams) without credentials (`--public-reads`);
    /// secrets are redacted either way.
    pub public_reads: bool,
    /// Operator limits on submitted job settings and tasks.
    pub caps: Caps,
    /// What submitters may make the server fetch (repositories, registries, local paths).
    pub sources: rollout_sources::policy::RemotePolicy,
    /// Session limits and warm pools (`/api/v1/sessions`).
    pub sessions: sessions::SessionConfig,
    /// Runs still queued or running this long after submission are cancelled (the seed's
    /// `SESSION_TTL_SECS`); None: no limit.
    pub max_run_age: Option<Duration>,
    /// Each git process of a submission (the seed's `CLONE_TIMEOUT_SECS`); None: the default.
    pub clone_timeout: Option<Duration>,
    /// Agent and test timeouts of executor-archive tasks, seconds (the seed's
    /// `AGENT_TIMEOUT_SECS` and `TEST_TIMEOUT_SECS`); None: 600 and 300.
    pub executor_agent_timeout: Option<f64>,
    pub executor_test_timeout: Option<f64>,
    /// Output kept per command (the seed's `MAX_OUTPUT_BYTES`); None: 1 MiB.
    pub max_output_bytes: Option<usize>,
    /// Origins browsers may call the API from (`--cors-origin`; `*`: any). Empty: no CORS.
    pub cors_origins: Vec<String>,
    /// Where environments run (`--env`): the provider's kind. Sessions and pools run there;
    /// a submitted job must name it as its `environment.type`.
    pub environment: rollout_core::job_config::EnvironmentType,
}

/// Operator limits on what one submission may ask for (`--max-memory-mb` …). A submission over
/// a limit is refused with a 400 naming the setting and the limit; none is silently lowered.
#[derive(Debug, Clone, PartialEq)]
pub struct Caps {
    /// Memory of one trial's container, MiB (the job's override or the task's `memory_mb`).
    pub max_memory_mb: u64,
    /// CPUs of one trial's container.
    pub max_cpus: f64,
    /// Processes of one trial's container (`pids_limit`; the default 4096 is lowered to it).
    pub max_pids: i64,
    /// `n_attempts`, and `retry.max_retries`.
    pub max_attempts: u32,
    /// Every timeout multiplier.
    pub max_timeout_multiplier: f64,
    /// Trials of one job (tasks × agents × attempts).
    pub max_trials_per_job: usize,
}

impl Caps {
    /// Defaults from this host: its memory and CPUs, 8192 processes, 100 attempts, a timeout
    /// multiplier of 10, 1000 trials per job.
    pub fn from_host() -> Self {
        let memory_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map(|kb| kb / 1024)
            .unwrap_or(8192);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            max_memory_mb: memory_mb.max(64),
            max_cpus: cpus as f64,
            max_pids: 8192,
            max_attempts: 100,
            max_timeout_multiplier: 10.0,
            max_trials_per_job: 1000,
        }
    }
}

impl ServerConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        let limits = Limits::default();
        Self {
            data_dir,
            max_batches: 2,
            max_concurrent_tasks: 8,
            max_body_bytes: limits.max_archive_bytes + (1 << 20),
            limits,
            shutdown_grace: Duration::from_secs(30),
            ttl: Duration::from_secs(7 * 24 * 3600),
            resume_interrupted: false,
            executor_image: None,
            ca_bundle: None,
            store_path: None,
            public_reads: false,
            caps: Caps::from_host(),
            sources: Default::default(),
            sessions: Default::default(),
            max_run_age: None,
            clone_timeout: None,
            executor_agent_timeout: None,
            executor_test_timeout: None,
            max_output_bytes: None,
            cors_origins: Vec::new(),
            environment: rollout_core::job_config::EnvironmentType::Docker,
        }
    }
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("serve.db")
    }
    pub fn jobs_dir(&self) -> PathBuf {
        self.data_dir.join("jobs")
    }
    pub fn runs_dir(&self) -> PathBuf {
        self.data_dir.join("runs")
    }
}

/// What every handler shares.
pub struct AppState {
    pub config: ServerConfig,
    pub db: db::Db,
    pub auth: Auth,
    pub metrics: metrics::Metrics,
    pub provider: Arc<dyn Provider>,
    /// One permit per run allowed to execute at once.
    pub slots: Arc<Semaphore>,
    /// Runs not yet finished, by id: their event channel and cancel token.
    pub live: Mutex<HashMap<String, Arc<runs::LiveRun>>>,
    /// Run tasks, awaited on shutdown.
    pub tasks: TaskTracker,
    /// Cancelled when the server begins to shut down: no new submissions.
    pub shutdown: CancellationToken,
    /// Cancelled when streams must end (after runs have stopped).
    pub streams_end: CancellationToken,
    pub started_at: Instant,
    /// The server's paths, as they are shown in responses.
    pub paths: redact::PathScrubber,
    /// Open sessions and warm pools.
    pub sessions: sessions::Sessions,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("creating {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

impl AppState {
    /// Open the data directory and database; runs a previous server left unfinished are marked
    /// interrupted here (or resumed by [`resume_interrupted`] when configured).
    pub fn new(
        config: ServerConfig,
        auth: Auth,
        provider: Arc<dyn Provider>,
    ) -> Result<Arc<Self>, ServeError> {
        for dir in [
            config.data_dir.clone(),
            config.jobs_dir(),
            config.runs_dir(),
        ] {
            std::fs::create_dir_all(&dir).map_err(|source| ServeError::DataDir {
                path: dir.clone(),
                source,
            })?;
        }
        let db = db::Db::open(&config.db_path())?;
        let slots = Arc::new(Semaphore::new(config.max_batches.max(1)));
        let sessions =
            sessions::Sessions::new(&config.data_dir).map_err(|source| ServeError::DataDir {
                path: config.data_dir.join("server-id"),
                source,
            })?;
        Ok(Arc::new(Self {
            db,
            auth,
            metrics: metrics::Metrics::default(),
            provider,
            slots,
            live: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            streams_end: CancellationToken::new(),
            started_at: Instant::now(),
            paths: redact::PathScrubber::new(&config.data_dir),
            sessions,
            config,
        }))
    }

    pub fn live_run(&self, id: &str) -> Option<Arc<runs::LiveRun>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }
}

/// One route: method, path (axum syntax, which is also OpenAPI's but for `{*rest}`), handler.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub handler: MethodRouter<Arc<AppState>>,
}

fn route(method: &'static str, path: &'static str, handler: MethodRouter<Arc<AppState>>) -> Route {
    Route {
        method,
        path,
        handler,
    }
}

/// Every route the server answers; [`router`] is built from this list and the OpenAPI test
/// compares it with the document.
pub fn routes() -> Vec<Route> {
    vec![
        route("get", "/health", get(seed::health)),
        route("get", "/status", get(seed::status)),
        route("get", "/metrics", get(seed::metrics)),
        route("post", "/submit", post(seed::submit)),
        route("get", "/batches", get(seed::list_batches)),
        route("get", "/batch/{id}", get(seed::get_batch)),
        route("get", "/batch/{id}/tasks", get(seed::get_batch_tasks)),
        route("get", "/batch/{id}/task/{task_id}", get(seed::get_task)),
        route("post", "/batch/{id}/cancel", post(seed::cancel_batch)),
        route("get", "/ws", get(stream::seed_ws)),
        route("get", "/api/v1/openapi.json", get(openapi::serve_document)),
        route("post", "/api/v1/jobs", post(api::submit_job)),
        route("get", "/api/v1/jobs", get(api::list_jobs)),
        route("get", "/api/v1/jobs/{id}", get(api::get_job)),
        route("post", "/api/v1/jobs/{id}/cancel", post(api::cancel_job)),
        route("get", "/api/v1/jobs/{id}/trials", get(api::list_trials)),
        route(
            "get",
            "/api/v1/jobs/{id}/trials/{trial}",
            get(api::get_trial),
        ),
        route(
            "get",
            "/api/v1/jobs/{id}/trials/{trial}/files/{*path}",
            get(api::download_file),
        ),
        route("get", "/api/v1/jobs/{id}/events", get(stream::job_sse)),
        route("get", "/api/v1/jobs/{id}/ws", get(stream::job_ws)),
        route("post", "/api/v1/sessions", post(sessions::open_session)),
        route("get", "/api/v1/sessions", get(sessions::list_sessions)),
        route("get", "/api/v1/sessions/{id}", get(sessions::get_session)),
        route(
            "delete",
            "/api/v1/sessions/{id}",
            axum::routing::delete(sessions::close_session),
        ),
        route("post", "/api/v1/sessions/{id}/exec", post(sessions::exec)),
        route("post", "/api/v1/sessions/{id}/grade", post(sessions::grade)),
        route(
            "get",
            "/api/v1/sessions/{id}/files/{*path}",
            get(sessions::get_file),
        ),
        route(
            "put",
            "/api/v1/sessions/{id}/files/{*path}",
            axum::routing::put(sessions::put_file),
        ),
        route("post", "/api/v1/pools", post(pool::create_pool)),
        route("get", "/api/v1/pools", get(pool::list_pools)),
        route("post", "/api/v1/bundles", post(prov::post_bundle)),
        route("get", "/api/v1/artifacts/{hash}", get(prov::get_artifact)),
        route(
            "get",
            "/api/v1/artifacts/{hash}/lineage",
            get(prov::get_lineage),
        ),
    ]
}

/// The HTTP application.
pub fn router(state: Arc<AppState>) -> Router {
    let mut app: Router<Arc<AppState>> = Router::new();
    for r in routes() {
        app = app.route(r.path, r.handler);
    }
    let limit = usize::try_from(state.config.max_body_bytes).unwrap_or(usize::MAX);
    app.fallback(|| async {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint: see /api/v1/openapi.json",
        )
    })
    .layer(DefaultBodyLimit::max(limit))
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        scrub_errors,
    ))
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        count_requests,
    ))
    .layer(
        tower_http::trace::TraceLayer::new_for_http()
            .make_span_with(
                // Method and path only: headers (credentials) and query strings stay out of logs.
                |req: &axum::http::Request<axum::body::Body>| {
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path())
                },
            )
            .on_response(
                tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO),
            ),
    )
    .layer(cors_layer(&state.config.cors_origins))
    .with_state(state)
}

/// CORS for browser clients on other origins (`--cors-origin`): none unless configured.
/// Credentials travel in headers (Authorization, X-Hotkey…), never cookies, so no
/// `Access-Control-Allow-Credentials` is sent.
fn cors_layer(origins: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    if origins.is_empty() {
        return CorsLayer::new();
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| axum::http::HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods(Any)
        .allow_headers(Any)
        .max_age(Duration::from_secs(3600))
}

/// Error bodies (small JSON documents) lose every host path: whatever produced the message,
/// no response tells a client where the server keeps its files.
async fn scrub_errors(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, 1 << 20).await {
        Ok(b) => b,
        Err(_) => {
            return axum::response::IntoResponse::into_response(ApiError::internal(
                "the error response could not be read",
            ))
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let scrubbed = state.paths.scrub(&text);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    axum::response::Response::from_parts(parts, axum::body::Body::from(scrubbed))
}

async fn count_requests(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    metrics::Metrics::inc(&state.metrics.http_requests);
    next.run(req).await
}

/// Serve on `listener` until `stop` is cancelled (SIGTERM/SIGINT in the binary), then shut down
/// gracefully: stop accepting, let running trials go on for `shutdown_grace`, cancel the rest
/// (their containers are removed), mark unfinished runs interrupted, end the streams.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> Result<(), ServeError> {
    serve_with(state, listener, stop, || {}).await
}

/// [`serve`], calling `ready` once the server is ready for clients: what a previous run of it
/// left (containers of its sessions and pools, unfinished runs) has been swept or recovered.
/// A client told the server is up before that (the binary's "listening on" line) could see
/// the predecessor's containers still there, or have its new ones swept.
pub async fn serve_with(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
    ready: impl FnOnce(),
) -> Result<(), ServeError> {
    sessions::startup(&state).await;
    runs::recover(&state).await;
    ready();
    runs::spawn_reaper(state.clone());
    sessions::spawn_reaper(state.clone());
    let app = router(state.clone());
    let shutdown = state.shutdown.clone();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .into_future(),
    );
    stop.cancelled().await;
    tracing::info!(
        "shutting down: no new connections; running trials have {:?}",
        state.config.shutdown_grace
    );
    state.shutdown.cancel();
    sessions::shutdown(&state).await;
    runs::drain(&state).await;
    state.streams_end.cancel();
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(r)) => r?,
        Ok(Err(e)) => tracing::warn!("server task: {e}"),
        Err(_) => tracing::warn!("connections still open 10 s after shutdown; closing"),
    }
    Ok(())
}

use std::future::IntoFuture;
