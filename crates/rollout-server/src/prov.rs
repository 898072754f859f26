//! Provenance endpoints: lineage bundles pushed by `rollout register` are imported into the
//! server's provenance store (crate rollout-store), and artifacts are answered from it
//! (docs/provenance.md, docs/serve.md).
//!
//! `POST /api/v1/bundles` needs auth like every write; `GET /api/v1/artifacts/{hash}` and
//! `…/lineage` are reads, open like the other reads. Without a store (`--store off`) they answer
//! 404 `store_disabled`.

use crate::error::ApiError;
use crate::seed::authorize;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use rollout_store::{Bundle, Store, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Deepest lineage a request may ask for.
const MAX_DEPTH: usize = 64;

fn store_path(state: &AppState) -> Result<std::path::PathBuf, ApiError> {
    state.config.store_path.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "store_disabled",
            "this server keeps no provenance store (started with --store off)",
        )
    })
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::UnknownArtifact(h) => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_artifact",
            format!("no artifact {h} in this server's store (push it with `rollout register`)"),
        ),
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            other.to_string(),
        ),
    }
}

/// Run a store operation off the async workers (SQLite is blocking).
async fn with_store<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let path = store_path(state)?;
    tokio::task::spawn_blocking(move || {
        let mut store = Store::open(&path)?;
        f(&mut store)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            format!("the store task failed: {e}"),
        )
    })?
    .map_err(store_error)
}

/// `POST /api/v1/bundles`: import a lineage bundle.
pub async fn post_bundle(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    authorize(&state, &headers)?;
    let bundle: Bundle = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_bundle",
            format!(
                "the body is not a lineage bundle (as `rollout register --dry-run` prints): {e}"
            ),
        )
    })?;
    let root = bundle.root.clone();
    let stats = with_store(&state, move |s| s.import_bundle(&bundle)).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"root": root, "imported": stats})),
    ))
}

/// `GET /api/v1/artifacts/{hash}`.
pub async fn get_artifact(
    State(state): State<Arc<AppState>>,
    Path(hash): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = with_store(&state, move |s| s.artifact_info(&hash)).await?;
    Ok(Json(serde_json::to_value(info).unwrap_or(Value::Null)))
}

#[derive(Debug, Deserialize)]
pub struct DepthQuery {
    depth: Option<usize>,
}

/// `GET /api/v1/artifacts/{hash}/lineage?depth=N`.
pub async fn get_lineage(
    State(state): State<Arc<AppState>>,
    Path(hash): Path<String>,
    Query(q): Query<DepthQuery>,
) -> Result<Json<Value>, ApiError> {
    let depth = q.depth.unwrap_or(10).min(MAX_DEPTH);
    let node = with_store(&state, move |s| s.lineage(&hash, depth)).await?;
    Ok(Json(serde_json::to_value(node).unwrap_or(Value::Null)))
}
