//! Provenance commands: `rollout trace`, `lineage`, `log`, `status`, `show`, `reproduce`,
//! `register`, and the store shared by them and by `rollout run` (which records every trial).

pub mod context;
pub mod group;
pub mod pipeline;
pub mod register;
pub mod reproduce;

use clap::Args;
use rollout_launch::exit;
use rollout_store::{ArtifactKind, FileRef, Job, JobKind, LineageNode, Store, StoreError};
use serde::Deserialize;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use group::ProvCommand;
pub use register::RegisterArgs;
pub use reproduce::ReproduceArgs;

static STORE_FLAG: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Remember the global `--store` flag (or `ROLLOUT_STORE`) for the commands that need the store.
pub fn set_store(flag: Option<PathBuf>) {
    let _ = STORE_FLAG.set(flag);
}

/// Whether recording is switched off (`--store off`).
pub fn store_disabled() -> bool {
    STORE_FLAG
        .get()
        .and_then(|f| f.as_deref())
        .is_some_and(|p| p == Path::new("off") || p == Path::new("none"))
}

/// The store given with `--store`/`ROLLOUT_STORE`, if any.
pub fn store_flag() -> Option<PathBuf> {
    STORE_FLAG.get().and_then(|f| f.clone())
}

/// The store file: `--store`/`ROLLOUT_STORE`, else `.rollout/rollout.db` in the project.
pub fn store_path() -> PathBuf {
    match STORE_FLAG.get().and_then(|f| f.clone()) {
        Some(p) => p,
        None => Store::default_path(&std::env::current_dir().unwrap_or_else(|_| ".".into())),
    }
}

/// Where `rollout trace` keeps the Python package listings between traces (beside the store).
pub fn packages_cache_path(store: &Path) -> PathBuf {
    store.with_file_name("python-packages.json")
}

fn open_store() -> Result<Store, u8> {
    if store_disabled() {
        eprintln!("error: the provenance store is switched off (--store off / ROLLOUT_STORE=off)");
        return Err(exit::USAGE);
    }
    Store::open(&store_path()).map_err(|e| {
        eprintln!("error: {e}");
        exit::USAGE
    })
}

/// `.rollout/provenance.toml` next to the store: optional settings.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvConfig {
    /// Also record sha256 digests of files.
    pub sha256: bool,
    /// Record the active Python interpreter's packages with each traced command (default on).
    pub capture_packages: bool,
    /// Paths under these prefixes are never inputs or outputs (replaces the default list).
    pub ignore_prefixes: Option<Vec<String>>,
    /// More regular expressions whose matches `rollout register` redacts.
    pub redact_patterns: Vec<String>,
    /// Variables set for every traced command (`rollout prov env`).
    pub env: std::collections::BTreeMap<String, String>,
}

impl Default for ProvConfig {
    fn default() -> Self {
        Self {
            sha256: false,
            capture_packages: true,
            ignore_prefixes: None,
            redact_patterns: Vec::new(),
            env: Default::default(),
        }
    }
}

impl ProvConfig {
    fn load(store: &Path) -> Result<Self, StoreError> {
        let path = store
            .parent()
            .unwrap_or(Path::new("."))
            .join("provenance.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| StoreError::Config {
                path,
                message: e.to_string(),
            }),
            Err(_) => Ok(ProvConfig::default()),
        }
    }

    /// System and package paths: not part of a project's provenance.
    fn ignore_prefixes(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = rollout_trace::DEFAULT_IGNORED
            .iter()
            .map(PathBuf::from)
            .collect();
        match &self.ignore_prefixes {
            Some(list) => v.extend(list.iter().map(PathBuf::from)),
            None => {
                v.extend(
                    [
                        "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc",
                        "/var", "/run", "/opt", "/snap", "/nix",
                    ]
                    .iter()
                    .map(PathBuf::from),
                );
                if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
                    for sub in [
                        ".pyenv",
                        ".rustup",
                        ".cargo",
                        ".cache",
                        ".local/lib",
                        ".npm",
                    ] {
                        v.push(home.join(sub));
                    }
                }
            }
        }
        v
    }
}

fn load_config(store: &Path) -> Result<ProvConfig, u8> {
    ProvConfig::load(store).map_err(|e| {
        eprintln!("error: {e}");
        exit::USAGE
    })
}

// ---------------------------------------------------------------------------------------------
// rollout trace

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Record the command as a build (setup) step: reproduction runs build steps first.
    #[arg(long)]
    pub build: bool,
    /// Start a new session for this and later traced commands.
    #[arg(long)]
    pub new_session: bool,
    /// Kill the command (and everything it started) after this many seconds.
    #[arg(long, default_value_t = 86400.0)]
    pub timeout: f64,
    /// Print the recorded job as JSON on stderr when done.
    #[arg(long)]
    pub json: bool,
    /// The command and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<OsString>,
}

/// Quote an argument for display as a shell would need it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

pub fn trace(args: TraceArgs) -> u8 {
    tracing::debug!("trace: opening the store");
    let mut store = match open_store() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let config = match load_config(store.path()) {
        Ok(c) => c,
        Err(c) => return c,
    };
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        eprintln!("error: --timeout must be a positive number of seconds");
        return exit::USAGE;
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let git = rollout_store::git::info(&cwd);
    let mut ignore = config.ignore_prefixes();
    if let Some(dir) = std::path::absolute(store.path())
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        ignore.push(dir);
    }
    let mut opts = rollout_trace::TraceOptions::new(args.command.clone());
    if !config.env.is_empty() {
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| !config.env.contains_key(&*k.to_string_lossy()))
            .collect();
        env.extend(config.env.iter().map(|(k, v)| (k.into(), v.into())));
        opts.env = Some(env);
    }
    opts.timeout = Some(Duration::from_secs_f64(args.timeout));
    opts.ignore_prefixes = ignore;
    // While the command runs, a second connection hashes each file it has read (most through
    // the hash cache) and another thread lists the Python packages, so that little is left to
    // do when it ends. The same thread then hashes what the command wrote.
    let (read_tx, read_rx) = std::sync::mpsc::channel::<PathBuf>();
    opts.on_read = Some(read_tx);
    let (ahead_tx, ahead_rx) = std::sync::mpsc::channel();
    let (written_tx, written_rx) = std::sync::mpsc::channel::<Vec<PathBuf>>();
    let hashing = {
        let path = store.path().to_path_buf();
        let sha256 = config.sha256;
        std::thread::Builder::new()
            .name("rollout-hash".into())
            .spawn(move || hash_ahead(&path, sha256, read_rx, ahead_tx, written_rx))
    };
    let context = {
        let packages = config.capture_packages;
        let env = config.env.clone();
        let cache = packages_cache_path(store.path());
        std::thread::Builder::new()
            .name("rollout-context".into())
            .spawn(move || context::capture(packages, &env, Some(&cache)))
    };
    let started_at = rollout_store::now();
    tracing::debug!("trace: starting the command");
    let t0 = Instant::now();
    let traced = rollout_trace::trace(&opts);
    let duration = t0.elapsed().as_secs_f64();
    // Every sender is gone once `opts` is: the hashing thread ends with the last path.
    drop(opts);
    let t = match traced {
        Ok(t) => t,
        Err(e) => {
            // The helper threads end with the process.
            eprintln!("error: {e}");
            return 127;
        }
    };
    // The hashing thread has the tracer's last path (the trace has returned): it hands over
    // the inputs and hashes the files the command wrote, beside the rest of the work (hashing
    // uses every core only while it reads a large file; the rest is one thread's work).
    let outputs = match hashing {
        Ok(h) => {
            let _ = written_tx.send(written(&t));
            Some(h)
        }
        Err(_) => None,
    };
    let ahead = ahead_rx.recv().unwrap_or_default();
    let context = match context.map(|h| h.join()) {
        Ok(Ok(c)) => c,
        _ => context::capture(config.capture_packages, &config.env, None),
    };
    tracing::debug!(
        command_ms = duration * 1e3,
        hashed_ahead = ahead.len(),
        after_ms = t0.elapsed().as_secs_f64() * 1e3,
        "trace: the command ended"
    );
    let status = t.exit.status();
    if t.unresolved > 0 {
        if t.mechanism == rollout_trace::Mechanism::Fanotify {
            eprintln!(
                "rollout trace: warning: {} file event(s) named a directory that was removed before the tracer resolved it, so the record may miss files",
                t.unresolved
            );
        } else {
            eprintln!(
                "rollout trace: warning: {} file syscall(s) had a path the tracer could not read, so the record may miss files (inside a container, allow process_vm_readv or /proc/<pid>/mem, e.g. --cap-add SYS_PTRACE)",
                t.unresolved
            );
        }
    }
    if t.timed_out {
        eprintln!(
            "rollout trace: the command ran longer than --timeout {} s and was killed",
            args.timeout
        );
    }
    let recorded = trace_job(
        &mut store,
        &config,
        &args,
        &t,
        TraceRun {
            cwd,
            git,
            started_at,
            duration,
            context,
        },
        ahead,
        outputs,
    );
    tracing::debug!(
        after_ms = t0.elapsed().as_secs_f64() * 1e3,
        "trace: inputs and outputs hashed"
    );
    let mut job = match recorded {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: recording the trace: {e}");
            return if status == 0 {
                exit::TRIAL_ERRORS
            } else {
                clamp(status)
            };
        }
    };
    let session = match store.trace_session(args.new_session, job.git.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return if status == 0 {
                exit::TRIAL_ERRORS
            } else {
                clamp(status)
            };
        }
    };
    job.session = session.uid;
    if let Err(e) = store.record_job(&job) {
        eprintln!("error: {e}");
        return if status == 0 {
            exit::TRIAL_ERRORS
        } else {
            clamp(status)
        };
    }
    tracing::debug!(
        after_ms = t0.elapsed().as_secs_f64() * 1e3,
        "trace: job recorded"
    );
    if args.json {
        eprintln!("{}", serde_json::to_string_pretty(&job).unwrap_or_default());
    } else {
        eprintln!(
            "rollout trace: job {} ({}): {} input(s), {} output(s), exit {status}, {:.2} s [{}]",
            &job.uid[..8],
            job.kind.as_str(),
            job.inputs.len(),
            job.outputs.len(),
            duration,
            store.path().display()
        );
    }
    // Closing the store checkpoints its log into the database file (a few writes and syncs):
    // free the trace's thousands of paths meanwhile.
    let closing = std::thread::Builder::new()
        .name("rollout-store-close".into())
        .spawn(move || drop(store));
    drop((job, t));
    if let Ok(h) = closing {
        let _ = h.join();
    }
    clamp(status)
}

fn clamp(status: i32) -> u8 {
    u8::try_from(status).unwrap_or(1)
}

/// Paths in byte order (the trace's sets have none), for a record that reads the same each time.
fn sorted<'a>(paths: impl Iterator<Item = &'a PathBuf>) -> Vec<&'a PathBuf> {
    let mut v: Vec<&PathBuf> = paths.collect();
    v.sort_unstable_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
    v
}

/// The paths a traced command wrote, in byte order (the store's order of a job's files).
fn written(t: &rollout_trace::Trace) -> Vec<PathBuf> {
    sorted(t.writes.iter()).into_iter().cloned().collect()
}

/// Hashed files as the inputs or outputs of a job.
pub fn file_refs(v: Vec<(PathBuf, rollout_store::FileDigest)>) -> Vec<FileRef> {
    v.into_iter()
        .map(|(p, d)| FileRef {
            path: p
                .into_os_string()
                .into_string()
                .unwrap_or_else(|p| p.to_string_lossy().into_owned()),
            hash: d.hash,
            size: d.size,
            kind: ArtifactKind::File,
            sha256: d.sha256,
        })
        .collect()
}

/// Hash each path received while a traced command runs, through a second connection to the
/// store at `path`, and send those digests on `ahead` once the tracer's last path is in; then
/// hash the paths received on `written` (the outputs) through the same connection. Without a
/// connection nothing is hashed ahead (the inputs are then hashed after the command) and the
/// outputs are hashed without the cache.
fn hash_ahead(
    path: &Path,
    sha256: bool,
    paths: std::sync::mpsc::Receiver<PathBuf>,
    ahead: std::sync::mpsc::Sender<rollout_store::HashedAhead>,
    written: std::sync::mpsc::Receiver<Vec<PathBuf>>,
) -> rollout_store::Hashed {
    let store = Store::open(path).ok();
    // Without a connection, dropping the receiver turns the tracer's sends into no-ops.
    let read = match &store {
        Some(s) => s.hash_ahead(&paths, sha256),
        None => rollout_store::HashedAhead::default(),
    };
    drop(paths);
    let _ = ahead.send(read);
    let written = written.recv().unwrap_or_default();
    match store {
        Some(s) => s.hash_detached(&written, sha256),
        None => rollout_store::hash_uncached(&written, sha256),
    }
}

/// What is known of a traced run besides its files.
struct TraceRun {
    cwd: PathBuf,
    git: Option<rollout_store::git::GitInfo>,
    started_at: String,
    duration: f64,
    context: serde_json::Value,
}

fn trace_job(
    store: &mut Store,
    config: &ProvConfig,
    args: &TraceArgs,
    t: &rollout_trace::Trace,
    run: TraceRun,
    ahead: rollout_store::HashedAhead,
    outputs: Option<std::thread::JoinHandle<rollout_store::Hashed>>,
) -> Result<Job, StoreError> {
    let TraceRun {
        cwd,
        git,
        started_at,
        duration,
        context,
    } = run;
    // Inputs: read and not written by the command, regular files when it closed them (hashed
    // then, while it ran: `ahead`) and not removed by it since. Outputs: written and still
    // regular files. Both in byte order, the store's order of a job's files.
    let t0 = Instant::now();
    let exclude: Vec<&Path> = t
        .writes
        .iter()
        .chain(&t.removed)
        .map(PathBuf::as_path)
        .collect();
    let inputs = file_refs(store.hash_reads(&t.reads, &exclude, config.sha256, ahead)?);
    let inputs_ms = t0.elapsed().as_secs_f64() * 1e3;
    let hashed = match outputs.map(|h| h.join()) {
        Some(Ok(h)) => h,
        // No thread, or it panicked: hash here.
        _ => rollout_store::hash_uncached(&written(t), config.sha256),
    };
    let outputs = file_refs(store.cache_hashed(hashed)?);
    tracing::debug!(
        inputs_ms,
        outputs_ms = t0.elapsed().as_secs_f64() * 1e3 - inputs_ms,
        "trace: hashed"
    );
    let argv: Vec<String> = args
        .command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let command = argv
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    Ok(Job {
        uid: Job::new_uid(),
        session: String::new(),
        kind: if args.build {
            JobKind::Build
        } else {
            JobKind::Trace
        },
        command,
        argv,
        cwd: cwd.to_string_lossy().into_owned(),
        git,
        started_at,
        duration_sec: duration,
        exit_code: match t.exit {
            rollout_trace::Exit::Code(c) => Some(c as i64),
            rollout_trace::Exit::Signal(_) => None,
        },
        env: std::env::vars_os()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .chain(config.env.clone())
            .collect(),
        metadata: serde_json::json!({
            "context": context,
            "execs": sorted(t.execs.iter().filter(|p| p.is_file())),
            "removed": sorted(t.removed.iter()),
            "processes": t.processes,
            "syscall_stops": t.stops,
            "tracer": t.mechanism.as_str(),
            "tracer_fallback": t.fallback,
            "unresolved_syscalls": t.unresolved,
            "timed_out": t.timed_out,
            "signal": match t.exit { rollout_trace::Exit::Signal(s) => Some(s), _ => None },
        }),
        host: rollout_runner::host_name(),
        inputs,
        outputs,
    })
}

// ---------------------------------------------------------------------------------------------
// Artifact arguments

/// Resolve a `<path | hash>` argument to an artifact hash known to the store.
fn resolve_artifact(store: &mut Store, arg: &str) -> Result<String, String> {
    let p = Path::new(arg);
    if p.is_file() {
        let abs = std::path::absolute(p).map_err(|e| e.to_string())?;
        let d = store.hash_file(&abs, false).map_err(|e| e.to_string())?;
        if store.resolve_hash(&d.hash).is_ok() {
            return Ok(d.hash);
        }
        return match store.hash_of_path(&abs).map_err(|e| e.to_string())? {
            Some(h) => {
                eprintln!(
                    "note: {} changed since it was recorded; showing the recorded version {}",
                    abs.display(),
                    &h[..12]
                );
                Ok(h)
            }
            None => Err(format!(
                "{} is not recorded in the provenance store {}: trace the command that makes it with `rollout trace -- CMD`",
                abs.display(),
                store.path().display()
            )),
        };
    }
    if p.is_dir() {
        if let Ok(abs) = std::path::absolute(p) {
            if let Ok(Some(h)) = store.hash_of_path(&abs) {
                return Ok(h);
            }
        }
    }
    store.resolve_hash(arg).map_err(|e| e.to_string())
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

fn human_size(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

// ---------------------------------------------------------------------------------------------
// rollout lineage

#[derive(Args, Debug)]
pub struct LineageArgs {
    /// A recorded file, or an artifact hash (a unique prefix of at least 6 hex digits).
    pub artifact: String,
    /// How many producing jobs to follow upstream.
    #[arg(long, default_value_t = 10)]
    pub depth: usize,
    /// Print the tree as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn lineage(args: LineageArgs) -> u8 {
    let mut store = match open_store() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let hash = match resolve_artifact(&mut store, &args.artifact) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let tree = match store.lineage(&hash, args.depth) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&tree).unwrap_or_default()
        );
    } else {
        let mut out = String::new();
        render_node(&tree, "", "", &mut out);
        print!("{out}");
    }
    exit::OK
}

fn render_node(n: &LineageNode, first: &str, rest: &str, out: &mut String) {
    let what = match n.kind {
        ArtifactKind::File => human_size(n.size),
        k => k.as_str().to_string(),
    };
    out.push_str(&format!(
        "{first}{} {} ({what}){}\n",
        short(&n.hash),
        n.path.as_deref().unwrap_or("-"),
        if n.truncated {
            "  … (deeper: raise --depth)"
        } else if n.produced_by.is_none() {
            "  [source]"
        } else {
            ""
        }
    ));
    if let Some(j) = &n.produced_by {
        let exit = j
            .job
            .exit_code
            .map_or("signal".to_string(), |c| c.to_string());
        out.push_str(&format!(
            "{rest}└─ job {} {} `{}` at {} (exit {exit}{})\n",
            &j.job.uid[..8.min(j.job.uid.len())],
            j.job.kind.as_str(),
            j.job.command,
            j.job.started_at,
            j.job
                .git_commit
                .as_deref()
                .map(|c| format!(", commit {}", &c[..c.len().min(10)]))
                .unwrap_or_default()
        ));
        let n_in = j.inputs.len();
        for (i, input) in j.inputs.iter().enumerate() {
            let last = i + 1 == n_in;
            let branch = format!("{rest}   {}", if last { "└─ " } else { "├─ " });
            let cont = format!("{rest}   {}", if last { "   " } else { "│  " });
            render_node(input, &branch, &cont, out);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// rollout log

#[derive(Args, Debug)]
pub struct LogArgs {
    /// How many jobs to show.
    #[arg(short = 'n', long, default_value_t = 20)]
    pub limit: usize,
    /// Only jobs whose command matches this full-text query (SQLite FTS5 syntax).
    #[arg(long)]
    pub search: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn log(args: LogArgs) -> u8 {
    let store = match open_store() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let jobs = match store.recent_jobs(args.limit, args.search.as_deref()) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    if args.json {
        let v: Vec<_> = jobs.iter().map(rollout_store_summary).collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return exit::OK;
    }
    if jobs.is_empty() {
        println!("no jobs recorded in {}", store.path().display());
    }
    for j in &jobs {
        let outcome = match j.kind {
            JobKind::Trial => match j.metadata.get("reward").and_then(|r| r.as_f64()) {
                Some(r) => format!("reward {r}"),
                None => "no reward".into(),
            },
            _ => j.exit_code.map_or("signal".into(), |c| format!("exit {c}")),
        };
        println!(
            "{}  {}  {:<5}  {:<10}  {:>7.2}s  {} in / {} out  {}",
            &j.uid[..8.min(j.uid.len())],
            j.started_at.get(..19).unwrap_or(&j.started_at),
            j.kind.as_str(),
            outcome,
            j.duration_sec,
            j.inputs.len(),
            j.outputs.len(),
            j.command
        );
    }
    exit::OK
}

fn rollout_store_summary(j: &Job) -> serde_json::Value {
    serde_json::json!({
        "uid": j.uid, "session": j.session, "kind": j.kind, "command": j.command, "cwd": j.cwd,
        "started_at": j.started_at, "duration_sec": j.duration_sec, "exit_code": j.exit_code,
        "n_inputs": j.inputs.len(), "n_outputs": j.outputs.len(),
        "git_commit": j.git.as_ref().map(|g| g.commit.clone()),
    })
}

// ---------------------------------------------------------------------------------------------
// rollout status

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn status(args: StatusArgs) -> u8 {
    let mut store = match open_store() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let st = match store.status(None) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
        return exit::OK;
    }
    if st.changed.is_empty() && st.stale.is_empty() {
        println!("up to date: every recorded file matches, no stale step");
        return exit::OK;
    }
    if !st.changed.is_empty() {
        println!("changed since last recorded:");
        for c in &st.changed {
            match &c.current {
                Some(h) => println!(
                    "  modified  {}  ({} → {})",
                    c.path,
                    short(&c.recorded),
                    short(h)
                ),
                None => println!("  deleted   {}  (was {})", c.path, short(&c.recorded)),
            }
        }
    }
    if !st.stale.is_empty() {
        println!("stale steps (re-run them, in this order):");
        for s in &st.stale {
            let why = if s.upstream {
                format!("reads {} from a stale step", s.path)
            } else {
                format!(
                    "read {} version {}, since replaced by {}{}",
                    s.path,
                    short(&s.read_hash),
                    s.current_hash.as_deref().map(short).unwrap_or("?"),
                    s.replaced_by
                        .as_deref()
                        .map(|u| format!(" (job {})", &u[..8.min(u.len())]))
                        .unwrap_or_default()
                )
            };
            println!(
                "  {}  `{}`: {why}",
                &s.job.uid[..8.min(s.job.uid.len())],
                s.job.command
            );
        }
    }
    exit::OK
}

// ---------------------------------------------------------------------------------------------
// rollout show

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// A trial directory, a recorded file, an artifact hash, or a job id.
    pub what: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn show(args: ShowArgs) -> u8 {
    let mut store = match open_store() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let p = Path::new(&args.what);
    // A trial directory: its result id is its job id.
    if p.join("result.json").is_file() && p.join("config.json").is_file() {
        let id = std::fs::read(p.join("result.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(String::from));
        let Some(id) = id else {
            eprintln!("error: {} has no readable result.json", p.display());
            return exit::USAGE;
        };
        return match store.job(&id) {
            Ok(j) => print_job(&j, args.json),
            Err(e) => {
                eprintln!("error: {e}: the trial was not recorded (was the store switched off, or is it another store? use --store)");
                exit::USAGE
            }
        };
    }
    match resolve_artifact(&mut store, &args.what) {
        Ok(h) => {
            let info = match store.artifact_info(&h) {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::USAGE;
                }
            };
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&info).unwrap_or_default()
                );
                return exit::OK;
            }
            println!("artifact {}", info.hash);
            println!("  kind      {}", info.kind.as_str());
            println!("  size      {}", human_size(info.size));
            for (alg, d) in &info.digests {
                println!("  {alg:<9} {d}");
            }
            println!("  first seen {}", info.first_seen);
            for path in &info.paths {
                println!("  path      {path}");
            }
            for j in &info.produced_by {
                println!(
                    "  written by {} {} `{}` at {}",
                    &j.uid[..8.min(j.uid.len())],
                    j.kind.as_str(),
                    j.command,
                    j.started_at
                );
            }
            for j in &info.consumed_by {
                println!(
                    "  read by    {} {} `{}` at {}",
                    &j.uid[..8.min(j.uid.len())],
                    j.kind.as_str(),
                    j.command,
                    j.started_at
                );
            }
            exit::OK
        }
        Err(artifact_err) => match store.job(&args.what) {
            Ok(j) => print_job(&j, args.json),
            Err(_) => {
                eprintln!("error: {artifact_err}");
                exit::USAGE
            }
        },
    }
}

fn print_job(j: &Job, json: bool) -> u8 {
    if json {
        println!("{}", serde_json::to_string_pretty(j).unwrap_or_default());
        return exit::OK;
    }
    println!("job {} ({})", j.uid, j.kind.as_str());
    println!("  command   {}", j.command);
    println!("  cwd       {}", j.cwd);
    if let Some(g) = &j.git {
        println!(
            "  git       {} {}{}{}",
            g.repo,
            g.commit,
            g.branch
                .as_deref()
                .map(|b| format!(" ({b})"))
                .unwrap_or_default(),
            if g.dirty { " dirty" } else { "" }
        );
    }
    println!(
        "  started   {}  ({:.2} s, exit {})",
        j.started_at,
        j.duration_sec,
        j.exit_code.map_or("signal".into(), |c| c.to_string())
    );
    if j.kind == JobKind::Trial {
        let m = &j.metadata;
        let s = |k: &str| match m.get(k) {
            Some(serde_json::Value::String(v)) => v.clone(),
            Some(serde_json::Value::Null) | None => "-".into(),
            Some(v) => v.to_string(),
        };
        println!("  trial     {}", s("trial_name"));
        println!("  task      {} ({})", s("task_name"), s("task_path"));
        println!("  agent     {}", s("agent"));
        println!("  image     {} {}", s("image"), s("image_id"));
        println!("  reward    {}  rewards {}", s("reward"), s("rewards"));
        if m.get("error").is_some_and(|e| !e.is_null()) {
            println!("  error     {}", s("error"));
        }
    }
    println!("  inputs:");
    for f in &j.inputs {
        println!("    {}  {}  ({})", short(&f.hash), f.path, f.kind.as_str());
    }
    println!("  outputs:");
    for f in &j.outputs {
        println!(
            "    {}  {}  ({})",
            short(&f.hash),
            f.path,
            human_size(f.size)
        );
    }
    exit::OK
}
