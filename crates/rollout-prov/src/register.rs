//! `rollout register <artifact> --server URL [--dry-run]`: push an artifact's lineage (sessions,
//! jobs, artifacts, inputs and outputs) to a remote `rollout serve` as one JSON bundle
//! (`POST <server>/api/v1/bundles`), with secrets redacted from commands, arguments,
//! environments and metadata.

use super::{load_config, open_store, resolve_artifact, short};
use clap::Args;
use rollout_launch::exit;
use rollout_store::Redactor;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct RegisterArgs {
    /// The artifact: a recorded file, or a hash (unique prefix of at least 6 hex digits).
    pub artifact: String,
    /// The `rollout serve` to register with (`http(s)://host:port`).
    #[arg(long, env = "ROLLOUT_SERVER")]
    pub server: Option<String>,
    /// Print the bundle that would be sent, and send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Another regular expression whose matches are redacted (repeatable; added to the built-in
    /// patterns and to `redact_patterns` in .rollout/provenance.toml).
    #[arg(long = "redact")]
    pub redact: Vec<String>,
    /// Bearer token for the server.
    #[arg(long, env = "ROLLOUT_SERVER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Give up on the server after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
}

/// Bytes of a server's error answer shown to the user.
const ERROR_BODY_CAP: usize = 2000;

pub fn main(args: RegisterArgs) -> u8 {
    let mut store = match open_store() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let config = match load_config(store.path()) {
        Ok(c) => c,
        Err(c) => return c,
    };
    let hash = match resolve_artifact(&mut store, &args.artifact) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let mut patterns = config.redact_patterns.clone();
    patterns.extend(args.redact.iter().cloned());
    let redactor = match Redactor::new(&patterns) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let mut bundle = match store.export_bundle(&hash) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    redactor.bundle(&mut bundle);
    let body = match serde_json::to_vec_pretty(&bundle) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::TRIAL_ERRORS;
        }
    };
    if args.dry_run {
        println!("{}", String::from_utf8_lossy(&body));
        eprintln!(
            "dry run: would send {} job(s), {} artifact(s), {} session(s) for {}{}",
            bundle.jobs.len(),
            bundle.artifacts.len(),
            bundle.sessions.len(),
            short(&hash),
            args.server
                .as_deref()
                .map(|s| format!(" to {s}"))
                .unwrap_or_default()
        );
        return exit::OK;
    }
    let Some(server) = args.server.as_deref() else {
        eprintln!("error: give the server with --server URL (or ROLLOUT_SERVER), or use --dry-run");
        return exit::USAGE;
    };
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        eprintln!("error: --server {server:?} must be an http:// or https:// URL");
        return exit::USAGE;
    }
    let url = format!("{}/api/v1/bundles", server.trim_end_matches('/'));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::TRIAL_ERRORS;
        }
    };
    let timeout = Duration::from_secs_f64(args.timeout.max(1.0));
    let result = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let mut req = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = &args.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        Ok::<_, String>((status, text))
    });
    match result {
        Ok((status, _)) if status.is_success() => {
            println!(
                "registered {} with {server}: {} job(s), {} artifact(s), {} session(s)",
                short(&hash),
                bundle.jobs.len(),
                bundle.artifacts.len(),
                bundle.sessions.len()
            );
            exit::OK
        }
        Ok((status, text)) => {
            let cut: String = text.chars().take(ERROR_BODY_CAP).collect();
            eprintln!("error: {url} answered {status}: {cut}");
            exit::TRIAL_ERRORS
        }
        Err(e) => {
            eprintln!("error: POST {url}: {e} (is `rollout serve` running there?)");
            exit::TRIAL_ERRORS
        }
    }
}
