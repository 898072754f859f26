//! The HTTP server of `rollout view`: the pages (one embedded vanilla-JS app) and the JSON API
//! under `/api` they read.

use crate::detail::{self, Caps};
use crate::index::Catalog;
use crate::{assets, fsguard, stats};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::collections::HashMap;
use std::sync::Arc;

type Shared = Arc<Catalog>;

/// The router over a catalog.
pub fn router(catalog: Arc<Catalog>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/jobs/{id}", get(page))
        .route("/jobs/{id}/trials/{trial}", get(page))
        .route("/compare", get(page))
        .route("/assets/app.js", get(app_js))
        .route("/assets/style.css", get(style_css))
        .route("/api/jobs", get(api_jobs))
        .route("/api/jobs/{id}", get(api_job))
        .route("/api/jobs/{id}/trials/{trial}", get(api_trial))
        .route("/api/jobs/{id}/files/{*path}", get(api_file))
        .route("/api/compare", get(api_compare))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page") })
        .with_state(catalog)
}

fn error(code: StatusCode, msg: &str) -> Response {
    (code, Json(serde_json::json!({ "error": msg }))).into_response()
}

/// Pages never run inline script or load anything from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'";

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        assets::page_shell(),
    )
        .into_response()
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        assets::APP_JS,
    )
        .into_response()
}

async fn style_css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        assets::STYLE_CSS,
    )
        .into_response()
}

fn json_bytes(bytes: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("reading the job directory failed: {e}"),
        )
    })
}

async fn api_jobs(State(cat): State<Shared>) -> Response {
    match blocking(move || {
        let list: Vec<_> = cat
            .jobs()
            .iter()
            .map(|j| j.view().summary.clone())
            .collect();
        serde_json::to_vec(&list).unwrap_or_default()
    })
    .await
    {
        Ok(b) => json_bytes(b),
        Err(r) => r,
    }
}

async fn api_job(State(cat): State<Shared>, UrlPath(id): UrlPath<String>) -> Response {
    match blocking(move || cat.job(&id).map(|j| j.view_json())).await {
        Ok(Some(b)) => json_bytes((*b).clone()),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such job"),
        Err(r) => r,
    }
}

async fn api_trial(
    State(cat): State<Shared>,
    UrlPath((id, trial)): UrlPath<(String, String)>,
) -> Response {
    match blocking(move || {
        let job = cat.job(&id)?;
        detail::trial_detail(&job.dir, &trial, Caps::VIEW)
    })
    .await
    {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such trial"),
        Err(r) => r,
    }
}

async fn api_file(
    State(cat): State<Shared>,
    UrlPath((id, path)): UrlPath<(String, String)>,
) -> Response {
    let Some(job) = cat.job(&id) else {
        return error(StatusCode::NOT_FOUND, "no such job");
    };
    let rel = path.clone();
    let opened = blocking(move || {
        use std::io::Read;
        let f = fsguard::open(&job.dir, &rel)?;
        let mut buf = Vec::new();
        // Files are served whole up to 512 MiB.
        let _ = f.take(512 << 20).read_to_end(&mut buf);
        Ok::<_, fsguard::GuardError>(buf)
    })
    .await;
    match opened {
        Ok(Ok(bytes)) => {
            let name = path
                .rsplit('/')
                .next()
                .unwrap_or("file")
                .replace(['"', '\\'], "_");
            let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
                .unwrap_or(HeaderValue::from_static("attachment"));
            (
                [
                    // Never rendered by the browser: the content is the agent's.
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    ),
                    (header::CONTENT_DISPOSITION, disposition),
                    (
                        header::X_CONTENT_TYPE_OPTIONS,
                        HeaderValue::from_static("nosniff"),
                    ),
                ],
                bytes,
            )
                .into_response()
        }
        Ok(Err(e)) => error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(r) => r,
    }
}

async fn api_compare(
    State(cat): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (Some(a), Some(b)) = (q.get("a").cloned(), q.get("b").cloned()) else {
        return error(StatusCode::BAD_REQUEST, "compare needs ?a=JOB&b=JOB");
    };
    match blocking(move || {
        let ja = cat.job(&a)?.view();
        let jb = cat.job(&b)?.view();
        Some(serde_json::json!({
            "a": ja.summary, "b": jb.summary,
            "comparison": stats::compare(&ja.trials, &jb.trials),
        }))
    })
    .await
    {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such job"),
        Err(r) => r,
    }
}
