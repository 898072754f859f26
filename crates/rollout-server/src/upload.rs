//! Sessions on an uploaded task archive (`POST /api/v1/sessions` with a tar.gz, tar or zip of a
//! task directory, or of a dataset directory holding the task).
//!
//! The archive arrives as the multipart field `archive` (optionally with a `task` field naming
//! the task when it holds several), or as the whole request body with Content-Type
//! `application/gzip`, `application/zip`, `application/x-tar` or `application/octet-stream`
//! (`?task=NAME` names the task). It is stored under the caps of `POST /api/v1/jobs`
//! (`--max-archive-bytes`) and unpacked by the same hardened extraction
//! ([`rollout_sources::archive`]: links out of the tree, devices and FIFOs, `..` and absolute
//! paths, too many files or bytes, decompression bombs are refused with the reason). The task
//! is then loaded as a directory task would be; its files live as long as the session (its
//! tests are copied in when it is graded) and are removed when it ends, or at the next start of
//! a server that was killed.

use crate::error::ApiError;
use crate::pool::Template;
use crate::seed::{multipart_error, save_field, save_stream};
use crate::sessions::load_template;
use crate::AppState;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::StatusCode;
use rollout_core::job_config::DatasetSpec;
use rollout_core::JobConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Names of upload directories under the runs directory.
const PREFIX: &str = "session-upload-";

/// An uploaded archive's directory: removed when dropped.
pub struct UploadDir(PathBuf);

impl UploadDir {
    fn create(state: &AppState) -> Result<Self, ApiError> {
        let dir = state
            .config
            .runs_dir()
            .join(format!("{PREFIX}{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::internal(format!("creating {}: {e}", dir.display())))?;
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for UploadDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// At start-up: the upload directories of sessions a killed server had open.
pub fn remove_leftovers(state: &AppState) {
    if let Ok(entries) = std::fs::read_dir(state.config.runs_dir()) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(PREFIX) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn refused(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_session", message)
}

/// Store the request's archive, unpack it and load the task: the template and the directory
/// holding its files.
pub async fn template(
    state: &Arc<AppState>,
    multipart: bool,
    mut task: Option<String>,
    req: Request,
) -> Result<(Arc<Template>, UploadDir), ApiError> {
    let dir = UploadDir::create(state)?;
    let archive = dir.path().join("archive.bin");
    let cap = state.config.limits.max_archive_bytes;
    if multipart {
        let mut mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?;
        let mut got = false;
        while let Some(mut field) = mp.next_field().await.map_err(multipart_error)? {
            let name = field.name().map(str::to_string);
            match name.as_deref() {
                Some("archive") | Some("file") => {
                    if got {
                        return Err(refused("the request holds two archives: a session runs one task"));
                    }
                    save_field(&mut field, &archive, cap).await?;
                    got = true;
                }
                Some("task") => {
                    let t = field.text().await.map_err(multipart_error)?;
                    task = Some(t.trim().to_string()).filter(|t| !t.is_empty());
                }
                other => {
                    return Err(refused(format!(
                        "unknown multipart field {:?}: send the task archive as `archive` (and, when it holds several tasks, the task's name as `task`)",
                        other.unwrap_or("")
                    )))
                }
            }
        }
        if !got {
            return Err(refused(
                "the multipart request has no `archive` field: attach the task directory as a tar.gz, tar or zip archive",
            ));
        }
    } else {
        save_body(req, &archive, cap).await?;
    }
    let dest = dir.path().join("tasks");
    let limits = state.config.limits.clone();
    let (a, d) = (archive.clone(), dest.clone());
    tokio::task::spawn_blocking(move || {
        let r = rollout_sources::archive::extract_file(&a, &d, &limits);
        let _ = std::fs::remove_file(&a);
        r
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| {
        ApiError::bad_request(
            "invalid_archive",
            format!("the task archive was refused: {e}"),
        )
    })?;
    // The archive's root is the task directory, or a directory of tasks (its `tasks/` when it
    // has one); `task` picks one of several.
    let tasks = dest.join("tasks");
    let root = if !dest.join("task.toml").exists() && tasks.is_dir() {
        tasks
    } else {
        dest
    };
    let config = JobConfig {
        datasets: vec![DatasetSpec {
            path: Some(root),
            task_names: task.into_iter().collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let template = load_template(state, config).await.map_err(|mut e| {
        if e.code == "no_tasks" || e.code == "invalid_source" {
            e.message = format!(
                "{} (the archive must hold a task directory with task.toml, or a directory of tasks and the task's name as `task`)",
                e.message
            );
        }
        e
    })?;
    Ok((template, dir))
}

/// The request body into `path`, at most `cap` bytes (413 past it).
async fn save_body(req: Request, path: &Path, cap: u64) -> Result<u64, ApiError> {
    let n = save_stream(req.into_body().into_data_stream(), path, cap, |e| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("reading the archive: {e}"),
        )
    })
    .await?;
    if n == 0 {
        return Err(refused(
            "the request body is empty: send the task archive (tar.gz, tar or zip)",
        ));
    }
    Ok(n)
}
