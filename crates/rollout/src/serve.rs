//! `rollout serve`: the evaluation executor as an HTTP service (crate rollout-server).

use crate::error::{exit, CliError, CliResult};
use clap::{Args, ValueEnum};
use rollout_env::Provider;
use rollout_server::{AppState, Auth, ServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `--auth`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum AuthArg {
    /// No authentication (keep the default loopback bind).
    None,
    /// `Authorization: Bearer TOKEN`, checked against BLAKE3 hashes (--tokens-file or
    /// ROLLOUT_SERVE_TOKEN_HASHES).
    Token,
    /// The term-executor's X-Hotkey + X-Nonce + X-Signature (sr25519), allowlist in
    /// --hotkeys-file.
    Hotkey,
    /// The first term-executor's `X-Hotkey` header alone, allowlist in --hotkeys-file: an
    /// identity without proof, for that service's existing clients. Reads are open, as there.
    HotkeyHeader,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on. The default is loopback only; expose it deliberately.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Port (0: any free port; the chosen one is printed).
    #[arg(long, default_value_t = 8080, env = "PORT")]
    pub port: u16,
    /// Where the database (serve.db), uploads (runs/) and job directories (jobs/) live.
    #[arg(
        long = "data-dir",
        default_value = "rollout-serve",
        env = "WORKSPACE_BASE"
    )]
    pub data_dir: PathBuf,
    /// Runs (batches or jobs) executing at once; further ones queue.
    #[arg(long = "max-batches", default_value_t = 2)]
    pub max_batches: usize,
    /// Trials at once within one run: the default and the cap of ?concurrent_tasks=N.
    #[arg(
        long = "max-concurrent-tasks",
        default_value_t = 8,
        env = "MAX_CONCURRENT_TASKS"
    )]
    pub max_concurrent_tasks: usize,
    /// Who may submit, cancel and download.
    #[arg(long, value_enum, default_value = "none")]
    pub auth: AuthArg,
    /// BLAKE3 hashes (hex) of accepted tokens, one a line (`printf %s "$TOKEN" | b3sum`).
    #[arg(long = "tokens-file")]
    pub tokens_file: Option<PathBuf>,
    /// SS58 hotkeys allowed to submit, one a line (--auth hotkey and hotkey-header).
    #[arg(long = "hotkeys-file")]
    pub hotkeys_file: Option<PathBuf>,
    /// Seconds running trials may go on after SIGTERM before they are cancelled.
    #[arg(long = "shutdown-grace", default_value_t = 30)]
    pub shutdown_grace: u64,
    /// Finished runs older than this are deleted with their files: seconds, or a number with
    /// s, m, h or d.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Resume runs a previous server left unfinished (finished trials are kept) instead of
    /// marking them interrupted.
    #[arg(long = "resume-interrupted")]
    pub resume_interrupted: bool,
    /// Largest archive accepted, in bytes.
    #[arg(long = "max-archive-bytes", env = "MAX_ARCHIVE_BYTES")]
    pub max_archive_bytes: Option<u64>,
    /// Largest total of extracted bytes per archive.
    #[arg(long = "max-extracted-bytes")]
    pub max_extracted_bytes: Option<u64>,
    /// Most files per archive.
    #[arg(long = "max-files")]
    pub max_files: Option<u64>,
    /// Highest compression ratio of an archive (past 1 MiB extracted).
    #[arg(long = "max-compression-ratio")]
    pub max_ratio: Option<f64>,
    /// Base image of executor-archive tasks (default: debian:bookworm-slim + git + runtime).
    #[arg(long = "executor-image")]
    pub executor_image: Option<String>,
    /// Extra CAs environments trust (as for `rollout run`).
    #[arg(long = "ca-certs", default_value = "auto")]
    pub ca_certs: rollout_launch::ca::CaCerts,
    /// Let anyone read runs, trials and their event streams without credentials (secrets stay
    /// redacted; downloads still need credentials).
    #[arg(long = "public-reads")]
    pub public_reads: bool,
    /// A host submitted repositories may be cloned from (repeatable; `*.example.com` for its
    /// sub-domains). Once one is given, only listed hosts are cloned from, over https, http,
    /// ssh or git, at any address. Default: any https host on a public address.
    #[arg(long = "allow-repo-host", value_name = "HOST")]
    pub allow_repo_host: Vec<String>,
    /// A URL prefix submitted registries may be fetched from (repeatable). Once one is given,
    /// only URLs under listed prefixes are fetched. Default: any https URL on a public address.
    #[arg(long = "allow-registry", value_name = "URL_PREFIX")]
    pub allow_registry: Vec<String>,
    /// A directory under which submitted repositories (`repo:`, `git_url`) and registries may
    /// name local paths (repeatable). Default: none.
    #[arg(long = "allow-local-paths", value_name = "DIR")]
    pub allow_local_paths: Vec<PathBuf>,
    /// Most memory of one trial's container, MiB (default: this host's memory).
    #[arg(long = "max-memory-mb")]
    pub max_memory_mb: Option<u64>,
    /// Most CPUs of one trial's container (default: this host's CPUs).
    #[arg(long = "max-cpus")]
    pub max_cpus: Option<f64>,
    /// Most processes of one trial's container (default 8192).
    #[arg(long = "max-pids")]
    pub max_pids: Option<i64>,
    /// Most attempts per task and agent, and retries (default 100).
    #[arg(long = "max-attempts")]
    pub max_attempts: Option<u32>,
    /// Largest timeout multiplier (default 10).
    #[arg(long = "max-timeout-multiplier")]
    pub max_timeout_multiplier: Option<f64>,
    /// Most trials in one job (default 1000).
    #[arg(long = "max-trials-per-job")]
    pub max_trials_per_job: Option<usize>,
    /// Sessions (/api/v1/sessions) unused for this long are closed: seconds, or a number with
    /// s, m, h or d.
    #[arg(long = "session-idle-ttl", default_value = "30m", value_parser = parse_duration)]
    pub session_idle_ttl: Duration,
    /// Sessions are closed this long after they opened, used or not.
    #[arg(long = "session-max-lifetime", default_value = "24h", value_parser = parse_duration)]
    pub session_max_lifetime: Duration,
    /// Open sessions per credential (per token or hotkey; in all without auth).
    #[arg(long = "max-sessions-per-token", default_value_t = 64)]
    pub max_sessions_per_token: usize,
    /// Longest timeout of one session command.
    #[arg(long = "session-max-exec-timeout", default_value = "1h", value_parser = parse_duration)]
    pub session_max_exec_timeout: Duration,
    /// Largest file uploaded to or downloaded from a session, in bytes.
    #[arg(long = "session-max-file-bytes", default_value_t = 64 << 20)]
    pub session_max_file_bytes: u64,
    /// Keep N started environments of each task of TASK_OR_DATASET (a task directory or a
    /// directory of tasks) ready for sessions: `--warm-pool ./tasks/hello=4` (repeatable).
    #[arg(long = "warm-pool", value_name = "TASK_OR_DATASET=N", value_parser = parse_warm_pool)]
    pub warm_pool: Vec<(PathBuf, usize)>,
    /// Most environments one warm pool keeps (also the cap of POST /api/v1/pools).
    #[arg(long = "max-pool-size", default_value_t = 64)]
    pub max_pool_size: usize,
    /// Cancel runs still queued or running this long after submission: seconds, or a number
    /// with s, m, h or d (default: no limit).
    #[arg(long = "max-run-age", env = "SESSION_TTL_SECS", value_parser = parse_duration)]
    pub max_run_age: Option<Duration>,
    /// Timeout of each git process of a submission (clone, fetch): seconds or 90s, 5m…
    /// (default 10m).
    #[arg(long = "clone-timeout", env = "CLONE_TIMEOUT_SECS", value_parser = parse_duration)]
    pub clone_timeout: Option<Duration>,
    /// Agent timeout of executor-archive tasks (default 600 s).
    #[arg(long = "agent-timeout", env = "AGENT_TIMEOUT_SECS", value_parser = parse_duration)]
    pub agent_timeout: Option<Duration>,
    /// Test timeout of executor-archive tasks (default 300 s).
    #[arg(long = "test-timeout", env = "TEST_TIMEOUT_SECS", value_parser = parse_duration)]
    pub test_timeout: Option<Duration>,
    /// Output kept per command, bytes (default 1 MiB); the rest is cut and the cut reported.
    #[arg(long = "max-output-bytes", env = "MAX_OUTPUT_BYTES")]
    pub max_output_bytes: Option<usize>,
    /// An origin browsers may call this server from (repeatable, or comma-separated in
    /// ROLLOUT_SERVE_CORS_ORIGINS; `*` for any). Default: none (no CORS headers).
    #[arg(
        long = "cors-origin",
        value_name = "ORIGIN",
        env = "ROLLOUT_SERVE_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origin: Vec<String>,
    /// Where sessions, warm pools and submitted jobs run: the Docker engine (default) or the
    /// Kubernetes cluster of ROLLOUT_K8S_* / the kubeconfig (submitted jobs must then say
    /// environment.type: kubernetes).
    #[arg(long = "env", value_enum, default_value = "docker")]
    pub env: crate::cli::ContainerEnv,
}

fn parse_warm_pool(s: &str) -> Result<(PathBuf, usize), String> {
    let (path, n) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?}: expected TASK_OR_DATASET=N, e.g. ./tasks/hello=4"))?;
    let n: usize = n
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: N must be a whole number of environments"))?;
    if path.is_empty() {
        return Err(format!("{s:?}: the task or dataset directory is empty"));
    }
    Ok((PathBuf::from(path), n))
}

/// The operator's limits and allow-lists onto the server configuration.
fn apply_limits(args: &ServeArgs, config: &mut ServerConfig) -> Result<(), String> {
    let caps = &mut config.caps;
    if let Some(v) = args.max_memory_mb {
        if v == 0 {
            return Err("--max-memory-mb must be at least 1".into());
        }
        caps.max_memory_mb = v;
    }
    if let Some(v) = args.max_cpus {
        if !(v.is_finite() && v > 0.0) {
            return Err("--max-cpus must be a positive number".into());
        }
        caps.max_cpus = v;
    }
    if let Some(v) = args.max_pids {
        if v < 1 {
            return Err("--max-pids must be at least 1".into());
        }
        caps.max_pids = v;
    }
    if let Some(v) = args.max_attempts {
        if v == 0 {
            return Err("--max-attempts must be at least 1".into());
        }
        caps.max_attempts = v;
    }
    if let Some(v) = args.max_timeout_multiplier {
        if !(v.is_finite() && v > 0.0) {
            return Err("--max-timeout-multiplier must be a positive number".into());
        }
        caps.max_timeout_multiplier = v;
    }
    if let Some(v) = args.max_trials_per_job {
        if v == 0 {
            return Err("--max-trials-per-job must be at least 1".into());
        }
        caps.max_trials_per_job = v;
    }
    if args.max_sessions_per_token == 0 {
        return Err("--max-sessions-per-token must be at least 1".into());
    }
    for (p, n) in &args.warm_pool {
        if *n > args.max_pool_size {
            return Err(format!(
                "--warm-pool {}={n}: over --max-pool-size {}",
                p.display(),
                args.max_pool_size
            ));
        }
        if !p.is_dir() {
            return Err(format!(
                "--warm-pool {}: not a directory (give a task directory or a directory of tasks)",
                p.display()
            ));
        }
    }
    config.sessions = rollout_server::sessions::SessionConfig {
        idle_ttl: args.session_idle_ttl,
        max_lifetime: args.session_max_lifetime,
        max_per_token: args.max_sessions_per_token,
        max_exec_timeout: args.session_max_exec_timeout,
        max_exec_output: config.sessions.max_exec_output,
        max_file_bytes: args.session_max_file_bytes,
        warm_pools: args.warm_pool.clone(),
        max_pool_size: args.max_pool_size,
    };
    if args.max_output_bytes == Some(0) {
        return Err("--max-output-bytes must be at least 1".into());
    }
    config.max_run_age = args.max_run_age;
    config.clone_timeout = args.clone_timeout;
    config.executor_agent_timeout = args.agent_timeout.map(|d| d.as_secs_f64());
    config.executor_test_timeout = args.test_timeout.map(|d| d.as_secs_f64());
    config.max_output_bytes = args.max_output_bytes;
    for o in &args.cors_origin {
        let o = o.trim();
        let lower = o.to_ascii_lowercase();
        if !(o == "*" || lower.starts_with("https://") || lower.starts_with("http://")) {
            return Err(format!(
                "--cors-origin {o:?}: expected `*` or an origin such as https://app.example.com"
            ));
        }
        config.cors_origins.push(o.to_string());
    }
    let sources = &mut config.sources;
    sources.repo_hosts = args.allow_repo_host.clone();
    sources.registry_prefixes = args.allow_registry.clone();
    for p in &args.allow_local_paths {
        let abs = p
            .canonicalize()
            .map_err(|e| format!("--allow-local-paths {}: {e}", p.display()))?;
        sources.local_roots.push(abs);
    }
    for u in &sources.registry_prefixes {
        let lower = u.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            return Err(format!(
                "--allow-registry {u:?}: expected an http(s) URL prefix"
            ));
        }
    }
    Ok(())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a number of seconds, or e.g. 90m, 12h, 7d"))?;
    let mult = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (s, m, h, d)")),
    };
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("{s:?}: must be positive"));
    }
    Ok(Duration::from_secs_f64(n * mult))
}

pub fn main(args: ServeArgs) -> CliResult {
    crate::error::runtime(None)?.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> CliResult {
    let auth = match args.auth {
        AuthArg::None => Ok(Auth::None),
        AuthArg::Token => Auth::tokens(
            args.tokens_file.as_deref(),
            std::env::var("ROLLOUT_SERVE_TOKEN_HASHES").ok().as_deref(),
        ),
        AuthArg::Hotkey => Auth::hotkeys(args.hotkeys_file.as_deref()),
        AuthArg::HotkeyHeader => Auth::hotkey_header(args.hotkeys_file.as_deref()),
    };
    let auth = auth.map_err(CliError::usage)?;
    if args.auth == AuthArg::None && !args.host.is_loopback() {
        eprintln!(
            "warning: listening on {} without authentication: anyone who reaches it can run code here (use --auth token|hotkey)",
            args.host
        );
    }
    let data_dir = std::path::absolute(&args.data_dir)
        .map_err(|e| CliError::usage(format!("--data-dir {}: {e}", args.data_dir.display())))?;
    if args.auth == AuthArg::HotkeyHeader {
        eprintln!(
            "warning: --auth hotkey-header trusts the X-Hotkey header without a signature: anyone who knows an allowed hotkey can submit (prefer --auth hotkey or token)"
        );
    }
    let mut config = ServerConfig::new(data_dir);
    config.max_batches = args.max_batches.max(1);
    config.max_concurrent_tasks = args.max_concurrent_tasks.max(1);
    if let Some(v) = args.max_archive_bytes {
        config.limits.max_archive_bytes = v;
    }
    if let Some(v) = args.max_extracted_bytes {
        config.limits.max_total_bytes = v;
    }
    if let Some(v) = args.max_files {
        config.limits.max_files = v;
    }
    if let Some(v) = args.max_ratio {
        config.limits.max_ratio = v;
    }
    // Room for the multipart framing and a job configuration around the archive.
    config.max_body_bytes = config.limits.max_archive_bytes + (1 << 20);
    config.shutdown_grace = Duration::from_secs(args.shutdown_grace);
    config.ttl = args.ttl;
    config.resume_interrupted = args.resume_interrupted;
    config.executor_image = args.executor_image.clone();
    config.public_reads = args.public_reads;
    apply_limits(&args, &mut config).map_err(CliError::Usage)?;
    // The provenance store: the global --store (ROLLOUT_STORE), else one in the data directory;
    // `--store off` keeps none (the provenance endpoints then answer 404).
    config.store_path = if rollout_prov::store_disabled() {
        None
    } else {
        Some(rollout_prov::store_flag().unwrap_or_else(|| config.data_dir.join("rollout.db")))
    };
    config.ca_bundle = rollout_launch::ca::bundle(&args.ca_certs).map_err(CliError::Usage)?;
    // The local Docker engine or a cluster (submitted jobs must name it as their
    // `environment.type`), picked where every command picks its provider.
    let provider: Arc<dyn Provider> = match args.env {
        crate::cli::ContainerEnv::Docker => Arc::new(
            rollout_launch::provider::docker()
                .await
                .map_err(CliError::failed)?,
        ),
        crate::cli::ContainerEnv::Kubernetes => {
            config.environment = rollout_core::job_config::EnvironmentType::Kubernetes;
            let mut job = rollout_core::JobConfig::default();
            job.environment.kind = config.environment;
            Arc::new(
                rollout_launch::provider::kube(&job)
                    .await
                    .map_err(CliError::failed)?,
            )
        }
    };
    let state = AppState::new(config, auth, provider).map_err(CliError::usage)?;
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::usage(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr();
    let stop = CancellationToken::new();
    rollout_launch::signals::shutdown_on_signal(
        stop.clone(),
        "shutting down: finishing or cancelling running trials",
    );
    // "listening" only once a previous run's leftovers are swept (clients wait for this line).
    let ready = move || match local {
        Ok(a) => println!("rollout serve listening on http://{a}"),
        Err(e) => eprintln!("warning: {e}"),
    };
    rollout_server::serve_with(state, listener, stop, ready)
        .await
        .map_err(CliError::failed)?;
    eprintln!("rollout serve stopped");
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604800));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("3w").is_err());
    }
}
