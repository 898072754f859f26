//! A persistent cache of git checkouts: each (url, commit) is fetched once into
//! `<root>/<blake3(url)[..16]>/<commit>/` and reused from then on without touching the remote.
//!
//! Layout of the cache root:
//!
//! ```text
//! <root>/<url-key>/<commit>/        the working tree at that commit (no .git directory)
//! <root>/<url-key>/<commit>.json    {"url", "commit", "requested", "fetched_unix"}
//! <root>/<url-key>/.tmp-*/          clones in progress (renamed into place when complete)
//! ```
//!
//! A tree appears under its final name only through an atomic rename of a complete clone, so its
//! presence means it is complete. The `.git` directory is removed from the tree so that a task at
//! the repository root has a deterministic checksum and a clean build context.
//!
//! Every git process runs with a timeout (killed on expiry, with its process group), capped
//! captured output, no terminal prompts and no system or global git configuration.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// Default limit for one git process.
pub const DEFAULT_GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// Captured stdout kept (the head); the rest is drained and dropped.
const STDOUT_CAP: usize = 1 << 20;
/// Captured stderr kept (the tail); the rest is dropped.
const STDERR_CAP: usize = 64 << 10;
/// Characters of stderr quoted in an error message.
const STDERR_QUOTE: usize = 1500;

/// Why a task source could not be fetched, parsed or loaded. Messages say what failed and what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceError {
    /// The `git` program could not be started.
    #[error("cannot run `git`: {message}; install git and make sure it is on PATH")]
    GitUnavailable { message: String },

    /// A git command failed.
    #[error(
        "git {step} failed for {url}{}: {}\n  hint: {hint}",
        at(commit),
        quote(stderr)
    )]
    Git {
        url: String,
        commit: Option<String>,
        /// What was being done (`fetch`, `ls-remote`, `checkout` …).
        step: String,
        /// The tail of git's stderr.
        stderr: String,
        /// What to do about it.
        hint: String,
    },

    /// A git command ran out of time and was killed.
    #[error(
        "git {step} for {url}{} timed out after {secs} s and was killed; check that the URL is \
         reachable (network, proxy, credentials) or raise the git timeout{}",
        at(commit),
        tail_note(stderr)
    )]
    GitTimeout {
        url: String,
        commit: Option<String>,
        step: String,
        secs: u64,
        stderr: String,
    },

    /// The pinned commit does not exist in the repository.
    #[error(
        "commit {commit} not found in {url}: {}\n  hint: check git_commit_id (a commit reachable \
         from a branch or tag of that repository), or leave it empty to use the default branch",
        quote(stderr)
    )]
    CommitNotFound {
        url: String,
        commit: String,
        stderr: String,
    },

    /// The url or commit cannot be used as given.
    #[error("invalid git source {url}{}: {message}", at(commit))]
    InvalidSource {
        url: String,
        commit: Option<String>,
        message: String,
    },

    /// A file-system operation of the cache failed.
    #[error("{context}: {message}")]
    Io { context: String, message: String },

    /// A registry file is not valid (FORMATS.md §3).
    #[error(
        "registry {origin}{}{}: {message}",
        line_col(line, column),
        field_note(field)
    )]
    Registry {
        /// Path or URL of the registry.
        origin: String,
        line: Option<usize>,
        column: Option<usize>,
        /// Path of the field at fault (`[0].tasks[2].git_url`).
        field: Option<String>,
        message: String,
    },

    /// A registry could not be downloaded.
    #[error(
        "cannot fetch registry {url}: {message}\n  hint: check the URL and the network, or \
         download the file and pass its local path"
    )]
    Fetch { url: String, message: String },

    /// No dataset of that name (and version) in the registry.
    #[error(
        "{}\n  available: {}",
        match version { Some(v) => format!("dataset {name}@{v} is not in the registry"), None => format!("dataset {name} is not in the registry") },
        if available.is_empty() { "(none)".to_string() } else { available.join(", ") }
    )]
    DatasetNotFound {
        name: String,
        version: Option<String>,
        /// `name@version` of the datasets that would match by name, or of all datasets.
        available: Vec<String>,
    },

    /// A task's `path` does not lead to a directory of its checkout.
    #[error("path {path:?} of {url} at {commit}: {message}")]
    TaskPath {
        url: String,
        commit: String,
        path: String,
        message: String,
    },

    /// A checked-out task directory is not a valid task.
    #[error("{error}")]
    TaskLoad {
        #[source]
        error: rollout_core::ConfigError,
    },

    /// Something failed for one task of a registry dataset.
    #[error("dataset {dataset}, task {task}: {source}")]
    InTask {
        dataset: String,
        task: String,
        #[source]
        source: Box<SourceError>,
    },
}

fn at(commit: &Option<String>) -> String {
    commit
        .as_deref()
        .map(|c| format!(" at commit {c}"))
        .unwrap_or_default()
}

fn quote(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        return "(git printed nothing)".into();
    }
    let chars = s.chars().count();
    if chars <= STDERR_QUOTE {
        s.to_string()
    } else {
        let tail: String = s.chars().skip(chars - STDERR_QUOTE).collect();
        format!("…{tail}")
    }
}

fn tail_note(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!("; git said: {}", quote(stderr))
    }
}

fn line_col(line: &Option<usize>, column: &Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(", line {l}, column {c}"),
        (Some(l), None) => format!(", line {l}"),
        _ => String::new(),
    }
}

fn field_note(field: &Option<String>) -> String {
    field
        .as_deref()
        .map(|f| format!(", field `{f}`"))
        .unwrap_or_default()
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SourceError {
    let context = context.into();
    move |e| SourceError::Io {
        context,
        message: e.to_string(),
    }
}

/// A working tree in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checkout {
    /// The url as requested.
    pub url: String,
    /// The full commit id of the tree.
    pub commit: String,
    /// The working tree (no `.git` inside).
    pub dir: PathBuf,
    /// True when this call cloned it; false when it came from the cache (or another caller won
    /// the race to clone it).
    pub fresh: bool,
}

/// One working tree held by the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheEntry {
    /// The url it was cloned from (empty when its metadata file is missing).
    pub url: String,
    pub commit: String,
    pub dir: PathBuf,
    /// Size of the tree in bytes.
    pub bytes: u64,
}

/// What is recorded next to each tree (`<commit>.json`).
#[derive(Debug, Serialize, Deserialize)]
struct EntryMeta {
    url: String,
    commit: String,
    /// The commit as requested (`null` for the default branch).
    #[serde(default)]
    requested: Option<String>,
    #[serde(default)]
    fetched_unix: u64,
}

/// A persistent clone cache (see the module docs).
#[derive(Debug, Clone)]
pub struct GitCache {
    root: PathBuf,
    timeout: Duration,
    /// Extra `-c key=value` for every git command (tests use it to force protocol v0).
    extra_config: Vec<String>,
    /// What an untrusted submitter may clone (`rollout serve`); None: anything (the CLI).
    policy: Option<std::sync::Arc<crate::policy::RemotePolicy>>,
}

impl GitCache {
    /// A cache rooted at `root` (created on first use).
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            timeout: DEFAULT_GIT_TIMEOUT,
            extra_config: Vec::new(),
            policy: None,
        }
    }

    /// Clone only what `policy` allows: every url is checked before the cache is consulted,
    /// and every git command is limited to the checked protocol and addresses.
    pub fn with_policy(mut self, policy: std::sync::Arc<crate::policy::RemotePolicy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Limit each git process to `timeout` (default 600 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `$ROLLOUT_CACHE_DIR/git` if set, else `$XDG_CACHE_HOME/rollout/git`, else `~/.cache/rollout/git`.
    pub fn default_root() -> PathBuf {
        rollout_core::cache_root().join("git")
    }

    /// The cache's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The per-url directory: `root/<blake3(url)[..16]>`.
    fn url_dir(&self, url: &str) -> PathBuf {
        self.root
            .join(&blake3::hash(url.as_bytes()).to_hex().as_str()[..16])
    }

    /// A working tree of `url` at `commit` (None or empty: the default branch's HEAD, resolved to
    /// a commit id). Cloned once per (url, commit); a later call for the same pinned full commit id
    /// runs no git command at all. An abbreviated commit id is looked up in the cache first; a
    /// branch or tag name is resolved with `git ls-remote` on every call.
    pub fn checkout(&self, url: &str, commit: Option<&str>) -> Result<Checkout, SourceError> {
        let requested = normalize_commit(commit);
        validate_source(url, requested.as_deref())?;
        if let Some(policy) = &self.policy {
            policy
                .check_repo(url)
                .map_err(|message| SourceError::InvalidSource {
                    url: url.into(),
                    commit: requested.clone(),
                    message,
                })?;
        }
        let url_dir = self.url_dir(url);

        // What commit id the tree will have, when it can be known before fetching.
        let known: Option<String> = match requested.as_deref() {
            None => Some(self.resolve_remote(url, None)?),
            Some(c) if is_full_sha(c) => Some(c.to_ascii_lowercase()),
            Some(c) if is_hex(c) && c.len() >= 4 => find_prefix(&url_dir, c)?,
            Some(c) => Some(self.resolve_remote(url, Some(c))?),
        };
        if let Some(sha) = &known {
            let dir = url_dir.join(sha);
            if dir.is_dir() {
                return Ok(Checkout {
                    url: url.to_string(),
                    commit: sha.clone(),
                    dir,
                    fresh: false,
                });
            }
        }

        std::fs::create_dir_all(&url_dir).map_err(io_err(format!(
            "creating cache directory {}",
            url_dir.display()
        )))?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&url_dir)
            .map_err(io_err(format!(
                "creating a temporary directory in {}",
                url_dir.display()
            )))?;
        let work = tmp.path();
        let sha = self.fetch_into(work, url, requested.as_deref(), known.as_deref())?;
        std::fs::remove_dir_all(work.join(".git"))
            .map_err(io_err(format!("removing {}", work.join(".git").display())))?;

        let target = url_dir.join(&sha);
        if target.is_dir() {
            // Someone else completed it while we fetched (or an abbreviated id named it).
            return Ok(Checkout {
                url: url.to_string(),
                commit: sha,
                dir: target,
                fresh: false,
            });
        }
        write_meta(
            &url_dir,
            &EntryMeta {
                url: url.to_string(),
                commit: sha.clone(),
                requested: requested.clone(),
                fetched_unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            },
        )?;
        let work = tmp.keep();
        match std::fs::rename(&work, &target) {
            Ok(()) => Ok(Checkout {
                url: url.to_string(),
                commit: sha,
                dir: target,
                fresh: true,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&work);
                if target.is_dir() {
                    // Lost the race: the winner's tree is identical.
                    Ok(Checkout {
                        url: url.to_string(),
                        commit: sha,
                        dir: target,
                        fresh: false,
                    })
                } else {
                    Err(SourceError::Io {
                        context: format!("moving the clone of {url} into {}", target.display()),
                        message: e.to_string(),
                    })
                }
            }
        }
    }

    /// Many checkouts, at most `parallel` at once, deduplicated by (url, commit); results in input
    /// order. A duplicate request gets the same result, with `fresh` false.
    pub fn checkout_many(
        &self,
        requests: &[(String, Option<String>)],
        parallel: usize,
    ) -> Vec<Result<Checkout, SourceError>> {
        let mut keys: Vec<(String, Option<String>)> = Vec::new();
        let mut index: HashMap<(String, Option<String>), usize> = HashMap::new();
        let mut slots = Vec::with_capacity(requests.len());
        for (url, commit) in requests {
            let key = (url.clone(), normalize_commit(commit.as_deref()));
            let i = *index.entry(key.clone()).or_insert_with(|| {
                keys.push(key);
                keys.len() - 1
            });
            slots.push(i);
        }
        let results: Vec<Mutex<Option<Result<Checkout, SourceError>>>> =
            keys.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let workers = parallel.max(1).min(keys.len());
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((url, commit)) = keys.get(i) else {
                        break;
                    };
                    let r = self.checkout(url, commit.as_deref());
                    *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                });
            }
        });
        let results: Vec<Result<Checkout, SourceError>> = results
            .into_iter()
            .map(|m| {
                m.into_inner()
                    .unwrap_or_else(|p| p.into_inner())
                    .expect("every key was checked out")
            })
            .collect();
        let mut seen = vec![false; results.len()];
        slots
            .into_iter()
            .map(|i| {
                let mut r = results[i].clone();
                if std::mem::replace(&mut seen[i], true) {
                    if let Ok(c) = &mut r {
                        c.fresh = false;
                    }
                }
                r
            })
            .collect()
    }

    /// What the cache holds, sorted by url then commit.
    pub fn list(&self) -> Result<Vec<CacheEntry>, SourceError> {
        let mut out = Vec::new();
        for url_dir in visible_dirs(&self.root)? {
            for dir in visible_dirs(&url_dir)? {
                let commit = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let url = std::fs::read(url_dir.join(format!("{commit}.json")))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<EntryMeta>(&b).ok())
                    .map(|m| m.url)
                    .unwrap_or_default();
                out.push(CacheEntry {
                    url,
                    commit,
                    bytes: rollout_core::digest::tree_bytes(&dir),
                    dir,
                });
            }
        }
        out.sort_by(|a, b| a.url.cmp(&b.url).then_with(|| a.commit.cmp(&b.commit)));
        Ok(out)
    }

    /// Remove everything (including unfinished clones); returns the bytes freed.
    pub fn clean(&self) -> Result<u64, SourceError> {
        if !self.root.exists() {
            return Ok(0);
        }
        let bytes = rollout_core::digest::tree_bytes(&self.root);
        match std::fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(bytes),
            Err(e) => Err(SourceError::Io {
                context: format!(
                    "removing the git cache {} (remove it by hand if this persists)",
                    self.root.display()
                ),
                message: e.to_string(),
            }),
        }
    }

    /// The commit a ref names on the remote (`None`: HEAD, the default branch).
    fn resolve_remote(&self, url: &str, name: Option<&str>) -> Result<String, SourceError> {
        let pattern = name.unwrap_or("HEAD");
        let out = self.git(None, url, name, "ls-remote", &["ls-remote", url, pattern])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let refs: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(sha, r)| (sha.trim(), r.trim()))
            .collect();
        let wanted: Vec<String> = match name {
            None => vec!["HEAD".into()],
            Some(n) => vec![
                format!("refs/heads/{n}"),
                format!("refs/tags/{n}^{{}}"),
                format!("refs/tags/{n}"),
                n.to_string(),
            ],
        };
        for w in &wanted {
            if let Some((sha, _)) = refs.iter().find(|(_, r)| r == w) {
                if is_full_sha(sha) {
                    return Ok(sha.to_ascii_lowercase());
                }
            }
        }
        Err(match name {
            None => SourceError::Git {
                url: url.into(),
                commit: None,
                step: "ls-remote".into(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                hint: "the repository has no default branch (is it empty?); push a commit or pin \
                       git_commit_id"
                    .into(),
            },
            Some(n) => SourceError::CommitNotFound {
                url: url.into(),
                commit: n.into(),
                stderr: format!("no branch or tag named {n:?}"),
            },
        })
    }

    /// Fetch `url` into a fresh repository in `work` and check out the commit; returns its full id.
    /// `known` is the full id when known in advance; otherwise `requested` is an abbreviated id.
    fn fetch_into(
        &self,
        work: &Path,
        url: &str,
        requested: Option<&str>,
        known: Option<&str>,
    ) -> Result<String, SourceError> {
        let label = known.or(requested).map(str::to_string);
        let commit = label.as_deref();
        self.git(Some(work), url, commit, "init", &["init", "-q"])?;
        self.git(
            Some(work),
            url,
            commit,
            "remote add",
            &["remote", "add", "origin", url],
        )?;
        let sha = match known {
            Some(sha) => {
                let exact = self.git(
                    Some(work),
                    url,
                    commit,
                    "fetch",
                    &["fetch", "-q", "--depth", "1", "--no-tags", "origin", sha],
                );
                match exact {
                    Ok(_) => {}
                    Err(e @ SourceError::GitTimeout { .. }) => return Err(e),
                    Err(SourceError::Git {
                        stderr: exact_err, ..
                    }) => {
                        // The server may refuse fetching by id: fetch everything instead.
                        self.fetch_all(work, url, commit)?;
                        if !self.has_commit(work, url, sha)? {
                            return Err(SourceError::CommitNotFound {
                                url: url.into(),
                                commit: sha.into(),
                                stderr: exact_err,
                            });
                        }
                    }
                    Err(e) => return Err(e),
                }
                sha.to_string()
            }
            None => {
                let short = requested.unwrap_or_default();
                self.fetch_all(work, url, commit)?;
                let spec = format!("{short}^{{commit}}");
                match self.git(
                    Some(work),
                    url,
                    commit,
                    "rev-parse",
                    &["rev-parse", "-q", "--verify", &spec],
                ) {
                    Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_string(),
                    Err(SourceError::Git { stderr, .. }) => {
                        return Err(SourceError::CommitNotFound {
                            url: url.into(),
                            commit: short.into(),
                            stderr: if stderr.trim().is_empty() {
                                "no commit has that abbreviated id (or it is ambiguous)".into()
                            } else {
                                stderr
                            },
                        })
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        self.git(
            Some(work),
            url,
            Some(&sha),
            "checkout",
            &["checkout", "-q", "--detach", &sha],
        )?;
        let head = self.git(
            Some(work),
            url,
            Some(&sha),
            "rev-parse",
            &["rev-parse", "HEAD"],
        )?;
        let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
        if head != sha {
            return Err(SourceError::Git {
                url: url.into(),
                commit: Some(sha),
                step: "checkout".into(),
                stderr: format!("HEAD is {head} after the checkout"),
                hint: "this is a bug in rollout's git cache; run `rollout cache clean` and retry"
                    .into(),
            });
        }
        Ok(sha)
    }

    fn fetch_all(&self, work: &Path, url: &str, commit: Option<&str>) -> Result<(), SourceError> {
        self.git(
            Some(work),
            url,
            commit,
            "fetch",
            &[
                "fetch",
                "-q",
                "--no-tags",
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ],
        )
        .map(|_| ())
    }

    fn has_commit(&self, work: &Path, url: &str, sha: &str) -> Result<bool, SourceError> {
        let spec = format!("{sha}^{{commit}}");
        match self.git(
            Some(work),
            url,
            Some(sha),
            "cat-file",
            &["cat-file", "-e", &spec],
        ) {
            Ok(_) => Ok(true),
            Err(SourceError::Git { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Run one git command for `url`; a non-zero exit is [`SourceError::Git`].
    fn git(
        &self,
        dir: Option<&Path>,
        url: &str,
        commit: Option<&str>,
        step: &str,
        args: &[&str],
    ) -> Result<Captured, SourceError> {
        let mut config = self.extra_config.clone();
        if let Some(policy) = &self.policy {
            // Checked (and resolved) again for every command: what it connects to is what was
            // checked.
            let extra = policy
                .git_config(url)
                .map_err(|message| SourceError::InvalidSource {
                    url: url.into(),
                    commit: commit.map(str::to_string),
                    message,
                })?;
            config.extend(extra);
        }
        let mut cmd = git_command(&config);
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        cmd.args(args);
        let commit = commit.map(str::to_string);
        match run_capped(cmd, self.timeout) {
            Ok(out) if out.status.success() => Ok(out),
            Ok(out) => Err(SourceError::Git {
                url: url.into(),
                commit,
                step: step.into(),
                hint: hint_for(step, &String::from_utf8_lossy(&out.stderr)),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }),
            Err(RunError::Spawn(e)) => Err(SourceError::GitUnavailable {
                message: e.to_string(),
            }),
            Err(RunError::Wait(e)) => Err(SourceError::Io {
                context: format!("waiting for git {step} ({url})"),
                message: e.to_string(),
            }),
            Err(RunError::Timeout { stderr }) => Err(SourceError::GitTimeout {
                url: url.into(),
                commit,
                step: step.into(),
                secs: self.timeout.as_secs(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            }),
        }
    }
}

/// What to suggest for a failed git step, from its stderr.
fn hint_for(step: &str, stderr: &str) -> String {
    let s = stderr.to_ascii_lowercase();
    if s.contains("could not read username")
        || s.contains("authentication failed")
        || s.contains("permission denied")
        || s.contains("terminal prompts disabled")
    {
        "the repository needs credentials and git may not prompt here: use a public URL, an ssh \
         URL with a loaded ssh agent, or a URL that carries a token"
            .into()
    } else if s.contains("does not appear to be a git repository")
        || s.contains("not found")
        || s.contains("does not exist")
    {
        "check git_url: the repository does not exist or is not reachable".into()
    } else if s.contains("could not resolve host") || s.contains("unable to access") {
        "check the network (and proxy settings) and the host name in git_url".into()
    } else if step == "ls-remote" || step == "fetch" {
        "check git_url and that the repository is reachable from this machine".into()
    } else {
        "run `rollout cache clean` and retry; if it persists, run the same git command by hand"
            .into()
    }
}

/// `git` with a controlled environment: no prompts, no system/global config, no inherited
/// repository variables, no background maintenance.
fn git_command(extra_config: &[String]) -> Command {
    let mut cmd = Command::new("git");
    for kv in [
        "gc.auto=0",
        "maintenance.auto=false",
        "advice.detachedHead=false",
        "init.defaultBranch=main",
        "core.askPass=",
        "credential.helper=",
        "core.fsmonitor=false",
        "fetch.writeCommitGraph=false",
    ]
    .iter()
    .copied()
    .chain(extra_config.iter().map(String::as_str))
    {
        cmd.arg("-c").arg(kv);
    }
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", null_device())
        .env("SSH_ASKPASS_REQUIRE", "never")
        .env("LC_ALL", "C");
    if std::env::var_os("GIT_SSH_COMMAND").is_none() && std::env::var_os("GIT_SSH").is_none() {
        cmd.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_NAMESPACE",
        "GIT_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn null_device() -> &'static str {
    if cfg!(windows) {
        "NUL"
    } else {
        "/dev/null"
    }
}

/// Output of a finished process.
#[derive(Debug)]
struct Captured {
    status: ExitStatus,
    /// The first [`STDOUT_CAP`] bytes.
    stdout: Vec<u8>,
    /// The last [`STDERR_CAP`] bytes.
    stderr: Vec<u8>,
}

#[derive(Debug)]
enum RunError {
    Spawn(std::io::Error),
    Wait(std::io::Error),
    /// Killed on expiry; what it had printed to stderr.
    Timeout {
        stderr: Vec<u8>,
    },
}

/// Run `cmd` (stdin closed) with a deadline; on expiry kill it and its process group.
fn run_capped(mut cmd: Command, timeout: Duration) -> Result<Captured, RunError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    let out_rx = spawn_reader(child.stdout.take(), STDOUT_CAP, false);
    let err_rx = spawn_reader(child.stderr.take(), STDERR_CAP, true);
    let deadline = Instant::now() + timeout;
    let mut poll = Duration::from_millis(2);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => {
                kill_group(&mut child);
                return Err(RunError::Wait(e));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(&mut child);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(poll.min(deadline - now));
        poll = (poll * 2).min(Duration::from_millis(50));
    };
    // A descendant that escaped the process group may hold the pipes open: do not wait forever.
    let grace = Duration::from_secs(if status.is_some() { 10 } else { 2 });
    let stdout = out_rx.recv_timeout(grace).unwrap_or_default();
    let stderr = err_rx.recv_timeout(grace).unwrap_or_default();
    match status {
        Some(status) => Ok(Captured {
            status,
            stdout,
            stderr,
        }),
        None => Err(RunError::Timeout { stderr }),
    }
}

fn kill_group(child: &mut std::process::Child) {
    #[cfg(unix)]
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals the process group we created for the child
        // (process_group(0) makes its pid the group id); it has no memory-safety preconditions.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
}

/// Read a pipe to its end on a thread, keeping at most `cap` bytes (the head, or the tail).
fn spawn_reader<R: Read + Send + 'static>(
    pipe: Option<R>,
    cap: usize,
    keep_tail: bool,
) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(mut pipe) = pipe {
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if keep_tail {
                            kept.extend_from_slice(&buf[..n]);
                            if kept.len() > 2 * cap {
                                kept.drain(..kept.len() - cap);
                            }
                        } else if kept.len() < cap {
                            let take = n.min(cap - kept.len());
                            kept.extend_from_slice(&buf[..take]);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        if keep_tail && kept.len() > cap {
            kept.drain(..kept.len() - cap);
        }
        let _ = tx.send(kept);
    });
    rx
}

/// None for a missing, empty or blank commit; otherwise the trimmed commit.
fn normalize_commit(commit: Option<&str>) -> Option<String> {
    commit
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A full SHA-1 or SHA-256 object id.
pub(crate) fn is_full_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && is_hex(s)
}

/// Whether a commit or ref name is safe to pass to git (no option injection, no odd characters).
pub(crate) fn commit_problem(commit: &str) -> Option<&'static str> {
    if commit.starts_with('-') {
        Some("a commit or ref must not start with `-`")
    } else if commit.contains("..") {
        Some("a commit or ref must not contain `..`")
    } else if !commit
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
    {
        Some("a commit is a hexadecimal id (or a branch or tag name: letters, digits, `._/-`)")
    } else {
        None
    }
}

fn validate_source(url: &str, commit: Option<&str>) -> Result<(), SourceError> {
    let invalid = |message: &str| SourceError::InvalidSource {
        url: url.into(),
        commit: commit.map(str::to_string),
        message: message.into(),
    };
    if url.trim().is_empty() {
        return Err(invalid("the git url is empty"));
    }
    if url.starts_with('-') {
        return Err(invalid("a git url must not start with `-`"));
    }
    if url.chars().any(char::is_control) {
        return Err(invalid("the git url contains control characters"));
    }
    if let Some(c) = commit {
        if let Some(p) = commit_problem(c) {
            return Err(invalid(p));
        }
    }
    Ok(())
}

/// The unique cached commit starting with `prefix`, if any.
fn find_prefix(url_dir: &Path, prefix: &str) -> Result<Option<String>, SourceError> {
    let prefix = prefix.to_ascii_lowercase();
    let matches: Vec<String> = visible_dirs(url_dir)?
        .into_iter()
        .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.starts_with(&prefix))
        .collect();
    Ok(if matches.len() == 1 {
        matches.into_iter().next()
    } else {
        None
    })
}

/// Sub-directories of `dir` whose names do not start with `.` (none when `dir` is missing).
fn visible_dirs(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("listing {}", dir.display()))(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Write `<url_dir>/<commit>.json` atomically.
fn write_meta(url_dir: &Path, meta: &EntryMeta) -> Result<(), SourceError> {
    let path = url_dir.join(format!("{}.json", meta.commit));
    let ctx = || format!("writing {}", path.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".meta-")
        .tempfile_in(url_dir)
        .map_err(io_err(ctx()))?;
    serde_json::to_writer_pretty(&mut tmp, meta).map_err(|e| SourceError::Io {
        context: ctx(),
        message: e.to_string(),
    })?;
    tmp.persist(&path).map_err(|e| io_err(ctx())(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    fn run(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A repository with two commits of `f`; returns (dir, first, second).
    fn two_commit_repo(root: &Path) -> (PathBuf, String, String) {
        let repo = root.join("src");
        fs::create_dir_all(&repo).unwrap();
        run(&repo, &["init", "-q", "-b", "main"]);
        run(&repo, &["config", "user.name", "t"]);
        run(&repo, &["config", "user.email", "t@example.invalid"]);
        fs::write(repo.join("f"), "one").unwrap();
        run(&repo, &["add", "f"]);
        run(&repo, &["commit", "-qm", "one"]);
        let first = run(&repo, &["rev-parse", "HEAD"]);
        fs::write(repo.join("f"), "two").unwrap();
        run(&repo, &["commit", "-qam", "two"]);
        let second = run(&repo, &["rev-parse", "HEAD"]);
        (repo, first, second)
    }

    #[test]
    fn timeout_kills_the_process_group() {
        let start = Instant::now();
        let err = run_capped(sh("sleep 30 & sleep 30"), Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, RunError::Timeout { .. }), "{err:?}");
        // Under the 2 s grace for the pipes: the background sleep (holding them) was killed too.
        assert!(
            start.elapsed() < Duration::from_millis(1800),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn output_is_capped() {
        let out = run_capped(
            sh("head -c 3000000 /dev/zero; head -c 300000 /dev/zero >&2; echo END >&2"),
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout.len(), STDOUT_CAP);
        assert_eq!(out.stderr.len(), STDERR_CAP);
        assert!(out.stderr.ends_with(b"END\n"));
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run_capped(
            Command::new("/nonexistent/definitely-not-git"),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, RunError::Spawn(_)));
    }

    #[test]
    fn commit_names_are_checked() {
        assert!(commit_problem("--upload-pack=x").is_some());
        assert!(commit_problem("a b").is_some());
        assert!(commit_problem("main..x").is_some());
        assert!(commit_problem("release/1.0").is_none());
        assert!(commit_problem(&"a".repeat(40)).is_none());
        assert!(is_full_sha(&"A".repeat(40)));
        assert!(!is_full_sha(&"g".repeat(40)));
        let c = GitCache::new(PathBuf::from("/nonexistent"));
        let e = c.checkout("-oops", None).unwrap_err();
        assert!(matches!(e, SourceError::InvalidSource { .. }), "{e}");
    }

    #[test]
    fn refused_fetch_by_id_falls_back_to_a_full_fetch() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, first, _) = two_commit_repo(tmp.path());
        let url = format!("file://{}", repo.display());
        // Protocol v0 servers refuse unadvertised ids unless configured otherwise.
        let mut cache = GitCache::new(tmp.path().join("cache"));
        cache.extra_config.push("protocol.version=0".into());
        let co = cache.checkout(&url, Some(&first)).unwrap();
        assert!(co.fresh);
        assert_eq!(fs::read_to_string(co.dir.join("f")).unwrap(), "one");
        assert!(!co.dir.join(".git").exists());
    }

    #[test]
    fn abbreviated_ids_and_branch_names_resolve() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, first, second) = two_commit_repo(tmp.path());
        let url = repo.display().to_string(); // a plain local path
        let cache = GitCache::new(tmp.path().join("cache"));
        let co = cache.checkout(&url, Some(&first[..10])).unwrap();
        assert_eq!(co.commit, first);
        assert!(co.fresh);
        // Found in the cache by prefix, without the remote.
        let again = cache.checkout(&url, Some(&first[..8])).unwrap();
        assert_eq!(
            (again.commit.as_str(), again.fresh),
            (first.as_str(), false)
        );
        let main = cache.checkout(&url, Some("main")).unwrap();
        assert_eq!(main.commit, second);
        assert_eq!(fs::read_to_string(main.dir.join("f")).unwrap(), "two");
        let e = cache.checkout(&url, Some("no-such-branch")).unwrap_err();
        assert!(matches!(e, SourceError::CommitNotFound { .. }), "{e}");
        let e = cache.checkout(&url, Some("abcdef12")).unwrap_err();
        assert!(e.to_string().contains("abcdef12"), "{e}");
    }

    #[test]
    fn metadata_records_the_url() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, first, _) = two_commit_repo(tmp.path());
        let url = format!("file://{}", repo.display());
        let cache = GitCache::new(tmp.path().join("cache"));
        let co = cache.checkout(&url, Some(&first)).unwrap();
        let meta: EntryMeta = serde_json::from_slice(
            &fs::read(co.dir.parent().unwrap().join(format!("{first}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(meta.url, url);
        assert_eq!(meta.commit, first);
        assert_eq!(
            co.dir.parent().unwrap().file_name().unwrap().len(),
            16,
            "url key is 16 hex chars"
        );
    }
}
