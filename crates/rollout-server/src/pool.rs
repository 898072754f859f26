//! Warm pools: started environments of a task kept ready for sessions
//! (`rollout serve --warm-pool TASK_OR_DATASET=N`, `POST /api/v1/pools`).
//!
//! A pool holds up to N sandboxes set up exactly as a session's (image, files, instruction,
//! healthcheck, mark). Opening a session on the pool's task pops one (under the pool's lock:
//! never handed out twice) and refills the pool in the background. A pool whose environments
//! fail to start records the error and retries after a pause. Pool containers carry the
//! server's label like sessions' and are removed at shutdown and at the next start-up.

use crate::error::ApiError;
use crate::sessions::{check_local, load_template, lock, start_sandbox};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use rollout_agents::Agent;
use rollout_core::job_config::AgentSpec;
use rollout_core::timeouts::Timeouts;
use rollout_core::{JobConfig, Task};
use rollout_runner::session::Sandbox;
use rollout_runner::{JobPlan, TrialPlan};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Pause before a pool retries after an environment failed to start.
const RETRY_PAUSE: Duration = Duration::from_secs(10);

/// What a sandbox of a task is made from.
pub struct Template {
    pub task: Arc<Task>,
    pub name: String,
    pub agent_spec: AgentSpec,
    pub agent: Arc<dyn Agent>,
    pub timeouts: Timeouts,
    pub config: JobConfig,
}

impl Template {
    /// From a planned one-trial job.
    pub fn of(plan: &JobPlan) -> Self {
        let t = &plan.trials[0];
        Self {
            task: t.task.clone(),
            name: t.name.clone(),
            agent_spec: t.agent_spec.clone(),
            agent: t.agent.clone(),
            timeouts: t.timeouts,
            config: plan.config.clone(),
        }
    }

    /// A new trial of it.
    pub fn trial(&self) -> TrialPlan {
        TrialPlan {
            name: self.name.clone(),
            id: uuid::Uuid::new_v4().to_string(),
            task: self.task.clone(),
            agent_spec: self.agent_spec.clone(),
            agent: self.agent.clone(),
            attempt: 1,
            timeouts: self.timeouts,
        }
    }
}

/// One task's pool.
pub struct Pool {
    /// The task directory (canonical).
    pub key: String,
    pub template: Arc<Template>,
    size: AtomicUsize,
    ready: Mutex<VecDeque<(Sandbox, String)>>,
    starting: AtomicUsize,
    taken: AtomicUsize,
    last_error: Mutex<Option<String>>,
}

impl Pool {
    fn new(key: String, template: Arc<Template>, size: usize) -> Self {
        Self {
            key,
            template,
            size: AtomicUsize::new(size),
            ready: Mutex::new(VecDeque::new()),
            starting: AtomicUsize::new(0),
            taken: AtomicUsize::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// Take a ready sandbox (and start refilling), if there is one.
    pub fn take(self: &Arc<Self>, state: &Arc<AppState>) -> Option<(Sandbox, String)> {
        let got = lock(&self.ready).pop_front();
        if got.is_some() {
            self.taken.fetch_add(1, Ordering::Relaxed);
        }
        refill(state, self);
        got
    }

    fn json(&self) -> Value {
        json!({
            "task": self.key,
            "task_name": self.template.task.name,
            "size": self.size.load(Ordering::SeqCst),
            "ready": lock(&self.ready).len(),
            "starting": self.starting.load(Ordering::SeqCst),
            "taken": self.taken.load(Ordering::Relaxed),
            "last_error": lock(&self.last_error).clone(),
        })
    }
}

/// The pool of a task directory (canonical path) or task name.
pub fn find(state: &AppState, task: &str) -> Option<Arc<Pool>> {
    let pools = lock(&state.sessions.pools);
    if let Some(p) = pools.get(task) {
        return Some(p.clone());
    }
    if let Ok(c) = std::path::Path::new(task).canonicalize() {
        if let Some(p) = pools.get(&c.display().to_string()) {
            return Some(p.clone());
        }
    }
    let mut by_name = pools.values().filter(|p| p.template.task.name == task);
    match (by_name.next(), by_name.next()) {
        (Some(p), None) => Some(p.clone()),
        _ => None,
    }
}

/// Start sandboxes until the pool holds `size` (ready or starting).
pub fn refill(state: &Arc<AppState>, pool: &Arc<Pool>) {
    loop {
        if state.shutdown.is_cancelled() {
            return;
        }
        let ready = lock(&pool.ready).len();
        let starting = pool.starting.load(Ordering::SeqCst);
        if ready + starting >= pool.size.load(Ordering::SeqCst) {
            return;
        }
        if pool
            .starting
            .compare_exchange(starting, starting + 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            continue;
        }
        let state = state.clone();
        let pool = pool.clone();
        tokio::spawn(async move {
            let r = start_sandbox(&state, &pool.template).await;
            match r {
                Ok(sb) => {
                    let current = lock(&state.sessions.pools)
                        .get(&pool.key)
                        .is_some_and(|p| Arc::ptr_eq(p, &pool));
                    let keep = current
                        && !state.shutdown.is_cancelled()
                        && lock(&pool.ready).len() < pool.size.load(Ordering::SeqCst);
                    if keep {
                        lock(&pool.ready).push_back(sb);
                        *lock(&pool.last_error) = None;
                        pool.starting.fetch_sub(1, Ordering::SeqCst);
                    } else {
                        pool.starting.fetch_sub(1, Ordering::SeqCst);
                        discard(&state, sb).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(task = %pool.template.task.name, "warm pool: {}: {}", e.kind, e.message);
                    *lock(&pool.last_error) = Some(format!("{}: {}", e.kind, e.message));
                    tokio::select! {
                        _ = state.shutdown.cancelled() => {}
                        _ = tokio::time::sleep(RETRY_PAUSE) => {}
                    }
                    pool.starting.fetch_sub(1, Ordering::SeqCst);
                    refill(&state, &pool);
                }
            }
        });
    }
}

/// Remove a sandbox never handed to a session, with its files.
async fn discard(state: &AppState, (sb, id): (Sandbox, String)) {
    sb.close().await;
    let dir = state
        .config
        .jobs_dir()
        .join(format!("{}{id}", crate::sessions::JOB_PREFIX));
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
}

/// Set the size of the pool of `template` (creating it), and refill it.
fn set_pool(state: &Arc<AppState>, key: String, template: Arc<Template>, size: usize) -> Arc<Pool> {
    let pool = {
        let mut pools = lock(&state.sessions.pools);
        let pool = pools
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Pool::new(key, template, size)))
            .clone();
        pool.size.store(size, Ordering::SeqCst);
        pool
    };
    // Shrink: drop what is over the size.
    let extra: Vec<(Sandbox, String)> = {
        let mut ready = lock(&pool.ready);
        let n = ready.len().saturating_sub(size);
        ready.drain(..n).collect()
    };
    for sb in extra {
        let state = state.clone();
        tokio::spawn(async move { discard(&state, sb).await });
    }
    refill(state, &pool);
    pool
}

/// The pools given on the command line (`--warm-pool`): each task of each directory.
pub async fn start_configured(state: &Arc<AppState>) {
    for (path, size) in state.config.sessions.warm_pools.clone() {
        let dir = match path.canonicalize() {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("--warm-pool {}: {e}", path.display());
                continue;
            }
        };
        let tasks = match rollout_core::task::discover_lenient(&dir) {
            Ok(t) => t,
            Err(errs) => {
                let errs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
                tracing::error!("--warm-pool {}: {}", dir.display(), errs.join("; "));
                continue;
            }
        };
        for t in tasks {
            let key = t.dir.display().to_string();
            let config = JobConfig {
                tasks: vec![rollout_core::job_config::TaskSpec {
                    path: t.dir.clone(),
                    git_url: None,
                    git_commit_id: None,
                }],
                ..Default::default()
            };
            match load_template(state, config).await {
                Ok(tpl) => {
                    set_pool(state, key, tpl, size);
                }
                Err(e) => tracing::error!("--warm-pool {}: {}", t.dir.display(), e.message),
            }
        }
    }
}

/// Remove every pool's sandboxes (shutdown).
pub async fn drain_all(state: &Arc<AppState>) {
    let pools: Vec<Arc<Pool>> = lock(&state.sessions.pools).values().cloned().collect();
    for p in pools {
        p.size.store(0, Ordering::SeqCst);
        let ready: Vec<(Sandbox, String)> = lock(&p.ready).drain(..).collect();
        futures_util::future::join_all(ready.into_iter().map(|sb| discard(state, sb))).await;
    }
}

/// `POST /api/v1/pools`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolRequest {
    pub task: String,
    pub size: usize,
}

pub async fn create_pool(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    crate::seed::authorize(&state, &headers)?;
    crate::seed::accepting(&state)?;
    let req: PoolRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_pool", format!("the request body: {e}")))?;
    let max = state.config.sessions.max_pool_size;
    if req.size > max {
        return Err(ApiError::bad_request(
            "over_limit",
            format!(
                "size = {} exceeds this server's limit of {max} environments per pool (--max-pool-size)",
                req.size
            ),
        ));
    }
    let pool = match find(&state, &req.task) {
        Some(p) => set_pool(&state, p.key.clone(), p.template.clone(), req.size),
        None => {
            let dir = check_local(&state, &req.task)?;
            let config = JobConfig {
                tasks: vec![rollout_core::job_config::TaskSpec {
                    path: dir.clone(),
                    git_url: None,
                    git_commit_id: None,
                }],
                ..Default::default()
            };
            let tpl = load_template(&state, config).await?;
            set_pool(&state, tpl.task.dir.display().to_string(), tpl, req.size)
        }
    };
    Ok(Json(pool.json()))
}

pub async fn list_pools(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    crate::seed::authorize(&state, &headers)?;
    let mut pools: Vec<Arc<Pool>> = lock(&state.sessions.pools).values().cloned().collect();
    pools.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(Json(
        json!({"pools": pools.iter().map(|p| p.json()).collect::<Vec<_>>()}),
    ))
}
