//! The provenance store: one SQLite file (default `.rollout/rollout.db` in the project directory)
//! holding content-addressed artifacts (BLAKE3, optionally also sha256), jobs (a traced command,
//! a build step or a trial) with their inputs and outputs, sessions that group jobs, a hash cache
//! keyed by (path, size, mtime), and full-text search over commands.
//!
//! It answers the provenance questions: who produced this artifact ([`Store::lineage`]), what is
//! known about it ([`Store::artifact_info`]), which recorded files changed and which consumers are
//! stale ([`Store::status`]), and exports/imports the lineage of an artifact as a [`Bundle`] for
//! registration with a remote `rollout serve`.
//!
//! It is not the job directory (that stays the human-readable record of a run) and does not run
//! anything: tracing is `rollout-trace`, reproduction is the CLI.

mod collections;
mod hash;
mod model;
mod query;
mod redact;
mod schema;

pub mod git;

pub use collections::{Collection, Member};
pub use hash::{file_digest, tree_digest, FileDigest};
pub use model::*;
pub use redact::{Redactor, DEFAULT_REDACT_PATTERNS, REDACTED};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// File name of the store inside a project's `.rollout/` directory.
pub const DEFAULT_DB: &str = ".rollout/rollout.db";

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("provenance store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("provenance store {path}: cannot create its directory: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "provenance store {path} has schema version {found}, newer than this rollout understands ({supported}): upgrade rollout"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("cannot hash {path}: {source}")]
    Hash {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no artifact {0} in the provenance store (give a recorded file path or a hash of at least 6 hex digits)")]
    UnknownArtifact(String),
    #[error("{prefix} matches {n} artifacts: give more digits")]
    AmbiguousHash { prefix: String, n: usize },
    #[error("no job {0} in the provenance store")]
    UnknownJob(String),
    #[error("no collection {0:?} in the provenance store (create it with `rollout prov collection create`)")]
    UnknownCollection(String),
    #[error("collection {0:?} already exists")]
    CollectionExists(String),
    #[error("stored JSON of {what} is invalid: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid redaction pattern {pattern:?}: {source}")]
    Pattern {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("provenance config {path}: {message}")]
    Config { path: PathBuf, message: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An open provenance store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// A hash cache row to write.
struct CacheEntry {
    path: String,
    size: i64,
    mtime: i64,
    hash: String,
    sha256: Option<String>,
}

/// Digests worked out ahead of [`Store::hash_reads`] (see [`Store::hash_ahead`]).
#[derive(Default)]
pub struct HashedAhead {
    /// By the path's bytes, so in byte order (the order of a job's files in the store).
    digests: std::collections::BTreeMap<std::ffi::OsString, (FileDigest, Option<CacheEntry>)>,
    /// Paths received but not hashed (missing, not a regular file, or a failure of this
    /// connection): they are looked at again after the command.
    retry: Vec<PathBuf>,
    /// How many paths were received.
    received: usize,
}

impl HashedAhead {
    /// How many files are hashed.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

/// Files hashed away from the connection that records (see [`hash_uncached`] and
/// [`Store::hash_detached`]), to be put into the hash cache by [`Store::cache_hashed`].
pub struct Hashed {
    files: Vec<(PathBuf, FileDigest, Option<CacheEntry>)>,
}

/// Hash files without looking them up in the hash cache, leaving out what is missing or not a
/// regular file: for files a command has just written, whose cache rows cannot be current.
/// Needs no connection, so it runs on a thread beside other store work; pass the result to
/// [`Store::cache_hashed`].
pub fn hash_uncached(paths: &[PathBuf], sha256: bool) -> Hashed {
    let files = paths
        .iter()
        .filter_map(|p| digest_uncached(p, sha256))
        .collect();
    Hashed { files }
}

/// One file of [`hash_uncached`]: `None` when missing or not a regular file.
fn digest_uncached(path: &Path, sha256: bool) -> Option<(PathBuf, FileDigest, Option<CacheEntry>)> {
    let meta = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
    let (d, entry) = digest_fresh(path, &meta, sha256).ok()?;
    Some((path.to_path_buf(), d, entry))
}

/// Hash a regular file whose metadata is `meta`, with the cache row to write when the file did
/// not change while it was hashed.
fn digest_fresh(
    path: &Path,
    meta: &std::fs::Metadata,
    sha256: bool,
) -> std::io::Result<(FileDigest, Option<CacheEntry>)> {
    let size = meta.len() as i64;
    let mtime = hash::mtime_ns(meta);
    let d = file_digest(path, sha256)?;
    let after = std::fs::metadata(path).ok();
    let unchanged = after.is_some_and(|m| m.len() as i64 == size && hash::mtime_ns(&m) == mtime);
    let entry = unchanged.then(|| CacheEntry {
        path: path.to_string_lossy().into_owned(),
        size,
        mtime,
        hash: d.hash.clone(),
        sha256: d.sha256.clone(),
    });
    Ok((d, entry))
}

/// How long a writer waits for another process's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Run `op` again while SQLite answers "busy" where its busy handler does not apply (a
/// journal-mode switch), for at most [`BUSY_TIMEOUT`].
fn retry_busy<T>(mut op: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match op() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

impl Store {
    /// Open (creating and migrating when needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let err = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        // WAL lets readers run beside one writer; two writers queue on the busy timeout.
        // Switching a new store to WAL takes its lock without SQLite's busy handler, so
        // processes creating the store at once retry it here.
        retry_busy(|| conn.pragma_update(None, "journal_mode", "WAL")).map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        // A job with thousands of inputs is one transaction: keep its pages and statement
        // journals in memory (up to 32 MiB) rather than spilling them to the WAL and temp files
        // mid-transaction.
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(err)?;
        conn.pragma_update(None, "cache_size", -32768)
            .map_err(err)?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
        };
        schema::migrate(&mut store)?;
        Ok(store)
    }

    /// Where the store file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn sql<T>(&self, r: rusqlite::Result<T>) -> Result<T> {
        r.map_err(|source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    /// The default store path for work in `dir`: `.rollout/rollout.db` in the project directory
    /// ([`project_dir`]).
    pub fn default_path(dir: &Path) -> PathBuf {
        project_dir(dir).join(DEFAULT_DB)
    }

    /// Record a session (no-op when its uid is already there).
    pub fn ensure_session(&mut self, s: &Session) -> Result<()> {
        let git = s
            .git
            .as_ref()
            .map(|g| serde_json::to_string(g).expect("git info"));
        let r = self.conn.execute(
            "INSERT OR IGNORE INTO sessions (uid, name, kind, created_at, git) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![s.uid, s.name, s.kind, s.created_at, git],
        );
        self.sql(r).map(|_| ())
    }

    /// The session traced jobs go to: the latest `trace` session, or a new one when there is
    /// none or `new` is set.
    pub fn trace_session(&mut self, new: bool, git: Option<&git::GitInfo>) -> Result<Session> {
        if !new {
            let r = self
                .conn
                .query_row(
                    "SELECT uid, name, kind, created_at, git FROM sessions WHERE kind = 'trace' ORDER BY created_at DESC, id DESC LIMIT 1",
                    [],
                    query::session_row,
                )
                .optional();
            if let Some(s) = self.sql(r)? {
                return Ok(s);
            }
        }
        let s = Session {
            uid: uuid::Uuid::new_v4().to_string(),
            name: None,
            kind: "trace".into(),
            created_at: now(),
            git: git.cloned(),
        };
        self.ensure_session(&s)?;
        Ok(s)
    }

    /// Record a job with its inputs and outputs, in one transaction. Artifacts are created as
    /// needed; the job's step hash is computed here. A job whose uid exists is replaced.
    pub fn record_job(&mut self, job: &Job) -> Result<()> {
        self.write(|tx| insert_job(tx, job))
    }

    /// Run `f` in one immediate (write-locking) transaction and commit it; SQLite errors name
    /// the store file.
    pub(crate) fn write<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let value = f(&tx).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(value)
    }

    /// Hash a file through the hash cache: unchanged (path, size, mtime) reuse the digest.
    pub fn hash_file(&mut self, path: &Path, sha256: bool) -> Result<FileDigest> {
        let (d, update) = self.digest_with_cache(path, sha256)?;
        self.write_cache(update.as_slice())?;
        Ok(d)
    }

    /// Hash many files through the cache (missing paths and what is not a regular file are left
    /// out); the cache is updated in one transaction after hashing, so no lock is held while
    /// reading files.
    pub fn hash_files(
        &mut self,
        paths: &[PathBuf],
        sha256: bool,
    ) -> Result<Vec<(PathBuf, FileDigest)>> {
        let mut out = Vec::with_capacity(paths.len());
        let mut updates = Vec::new();
        for p in paths {
            match self.digest_with_cache(p, sha256) {
                Ok((d, u)) => {
                    out.push((p.clone(), d));
                    updates.extend(u);
                }
                Err(StoreError::Hash { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.write_cache(&updates)?;
        Ok(out)
    }

    /// Hash each path received from `paths` through the cache as it comes, from this
    /// connection, until every sender is gone, and keep the digests for
    /// [`Store::hash_reads`] (a path that is missing, not a regular file, or that this
    /// connection fails on is kept to be looked at again then).
    /// Meant for a second connection that works while a traced command still runs: a digest
    /// is the file as it is when received.
    ///
    /// The paths that arrive together are looked up in one read transaction: taking the
    /// store's read lock for each lookup cost more than the lookup. No transaction is held
    /// while waiting for the next path, so a long command never pins an old snapshot.
    pub fn hash_ahead(
        &self,
        paths: &std::sync::mpsc::Receiver<PathBuf>,
        sha256: bool,
    ) -> HashedAhead {
        /// Paths looked up in one transaction at most, so that a steady stream still lets the
        /// snapshot move on.
        const BATCH: usize = 4096;
        let mut ahead = HashedAhead::default();
        while let Ok(first) = paths.recv() {
            let in_tx = self.conn.execute_batch("BEGIN").is_ok();
            let mut next = Some(first);
            let mut n = 0;
            while let Some(path) = next.take() {
                ahead.received += 1;
                match self.digest_with_cache(&path, sha256) {
                    Ok(v) => {
                        ahead.digests.insert(path.into_os_string(), v);
                    }
                    Err(_) => ahead.retry.push(path),
                }
                n += 1;
                if n < BATCH {
                    next = paths.try_recv().ok();
                }
            }
            if in_tx {
                // A read-only transaction: ending it cannot lose anything.
                let _ = self.conn.execute_batch("COMMIT");
            }
        }
        ahead
    }

    /// The inputs of a traced command: the files of `reads` that are not in `exclude`, hashed
    /// through the cache (missing paths and what is not a regular file are left out), in byte
    /// order. `ahead` must come from [`Store::hash_ahead`] fed with the paths of this `reads`
    /// as the tracer recorded them (`rollout_trace::TraceOptions::on_read`): when it received
    /// every one of them, its digests are taken in its order and only the paths it could not
    /// hash are looked at again; otherwise each path is looked up.
    pub fn hash_reads(
        &mut self,
        reads: &std::collections::HashSet<PathBuf>,
        exclude: &[&Path],
        sha256: bool,
        ahead: HashedAhead,
    ) -> Result<Vec<(PathBuf, FileDigest)>> {
        let HashedAhead {
            mut digests,
            retry,
            received,
        } = ahead;
        let mut out = Vec::with_capacity(reads.len());
        let mut updates = Vec::new();
        let mut late: Vec<PathBuf> = Vec::new();
        if received == reads.len() {
            // Each read path is sent once, so `digests` and `retry` hold exactly `reads`.
            let mut retry = retry;
            for x in exclude {
                digests.remove(x.as_os_str());
                retry.retain(|p| p != x);
            }
            for (p, (d, u)) in digests {
                let p = PathBuf::from(p);
                if sha256 && d.sha256.is_none() {
                    late.push(p);
                } else {
                    out.push((p, d));
                    updates.extend(u);
                }
            }
            late.extend(retry);
        } else {
            let exclude: std::collections::HashSet<&[u8]> = exclude
                .iter()
                .map(|p| p.as_os_str().as_encoded_bytes())
                .collect();
            for p in reads {
                if exclude.contains(p.as_os_str().as_encoded_bytes()) {
                    continue;
                }
                match digests.remove(p.as_os_str()) {
                    Some((d, u)) if !sha256 || d.sha256.is_some() => {
                        out.push((p.clone(), d));
                        updates.extend(u);
                    }
                    _ => late.push(p.clone()),
                }
            }
        }
        for p in late {
            match self.digest_with_cache(&p, sha256) {
                Ok((d, u)) => {
                    out.push((p, d));
                    updates.extend(u);
                }
                Err(StoreError::Hash { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // Sorted already when everything came from `digests` in order (an O(n) check).
        if !out.is_sorted_by(|a, b| a.0.as_os_str() <= b.0.as_os_str()) {
            out.sort_unstable_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));
        }
        self.write_cache(&updates)?;
        Ok(out)
    }

    /// Hash files through the hash cache from this connection without writing to it (missing
    /// paths and what is not a regular file are left out): for a second connection working
    /// beside the one that records; pass the result to [`Store::cache_hashed`] there. A file
    /// opened for writing but left unchanged (same size and mtime) is not read again.
    pub fn hash_detached(&self, paths: &[PathBuf], sha256: bool) -> Hashed {
        let files = paths
            .iter()
            .filter_map(|p| match self.digest_with_cache(p, sha256) {
                Ok((d, u)) => Some((p.clone(), d, u)),
                // A failure of this connection: hashed without the cache.
                Err(StoreError::Sqlite { .. }) => digest_uncached(p, sha256),
                Err(_) => None,
            })
            .collect();
        Hashed { files }
    }

    /// Put files hashed by [`hash_uncached`] or [`Store::hash_detached`] into the hash cache, in
    /// one transaction, and return their digests.
    pub fn cache_hashed(&mut self, hashed: Hashed) -> Result<Vec<(PathBuf, FileDigest)>> {
        let mut updates = Vec::new();
        let out = hashed
            .files
            .into_iter()
            .map(|(p, d, u)| {
                updates.extend(u);
                (p, d)
            })
            .collect();
        self.write_cache(&updates)?;
        Ok(out)
    }

    fn digest_with_cache(
        &self,
        path: &Path,
        sha256: bool,
    ) -> Result<(FileDigest, Option<CacheEntry>)> {
        let hash_err = |source| StoreError::Hash {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(hash_err)?;
        if !meta.is_file() {
            return Err(hash_err(std::io::Error::other("not a regular file")));
        }
        let key = path.to_string_lossy().into_owned();
        let size = meta.len() as i64;
        let mtime = hash::mtime_ns(&meta);
        let cached: Option<(String, Option<String>)> = {
            let mut st = self.sql(self.conn.prepare_cached(
                "SELECT hash, sha256 FROM hash_cache WHERE path = ?1 AND size = ?2 AND mtime_ns = ?3",
            ))?;
            let r = st
                .query_row(params![key, size, mtime], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional();
            self.sql(r)?
        };
        if let Some((h, s)) = cached {
            if !sha256 || s.is_some() {
                let d = FileDigest {
                    hash: h,
                    size: size as u64,
                    sha256: s,
                };
                return Ok((d, None));
            }
        }
        digest_fresh(path, &meta, sha256).map_err(hash_err)
    }

    fn write_cache(&mut self, entries: &[CacheEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO hash_cache (path, size, mtime_ns, hash, sha256) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for e in entries {
                st.execute(params![e.path, e.size, e.mtime, e.hash, e.sha256])?;
            }
            Ok(())
        })
    }

    /// A job by uid (or a unique uid prefix).
    pub fn job(&self, uid: &str) -> Result<Job> {
        query::job_by_uid(self, uid)
    }
}

fn insert_job(tx: &rusqlite::Transaction<'_>, job: &Job) -> rusqlite::Result<()> {
    let (repo, commit, branch, dirty, remote) = match &job.git {
        Some(g) => (
            Some(g.repo.as_str()),
            Some(g.commit.as_str()),
            g.branch.as_deref(),
            Some(g.dirty),
            g.remote.as_deref(),
        ),
        None => (None, None, None, None, None),
    };
    tx.execute(
        "INSERT OR IGNORE INTO sessions (uid, name, kind, created_at, git) VALUES (?1, NULL, ?2, ?3, NULL)",
        params![job.session, job.kind.as_str(), job.started_at],
    )?;
    if let Some(old) = tx
        .query_row("SELECT id FROM jobs WHERE uid = ?1", [&job.uid], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
    {
        delete_job(tx, old)?;
    }
    let inputs_set = file_set(tx, &job.inputs, &job.started_at)?;
    let outputs_set = file_set(tx, &job.outputs, &job.started_at)?;
    tx.execute(
        "INSERT INTO jobs (uid, session_uid, kind, command, argv, cwd, git_repo, git_commit, git_branch, git_dirty, git_remote,
                           started_at, duration_sec, exit_code, step_hash, env, metadata, host, inputs_set, outputs_set)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
        params![
            job.uid,
            job.session,
            job.kind.as_str(),
            job.command,
            serde_json::to_string(&job.argv).expect("argv"),
            job.cwd,
            repo,
            commit,
            branch,
            dirty,
            remote,
            job.started_at,
            job.duration_sec,
            job.exit_code,
            job.step_hash(),
            serde_json::to_string(&job.env).expect("env"),
            serde_json::to_string(&job.metadata).expect("metadata"),
            job.host,
            inputs_set,
            outputs_set,
        ],
    )?;
    Ok(())
}

/// Delete a job row, and the file sets only it used.
pub(crate) fn delete_job(tx: &rusqlite::Connection, id: i64) -> rusqlite::Result<()> {
    let sets: (Option<i64>, Option<i64>) = tx.query_row(
        "SELECT inputs_set, outputs_set FROM jobs WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    tx.execute("DELETE FROM jobs WHERE id = ?1", [id])?;
    for set in [sets.0, sets.1].into_iter().flatten() {
        tx.execute(
            "DELETE FROM file_sets WHERE id = ?1
               AND NOT EXISTS (SELECT 1 FROM jobs WHERE inputs_set = ?1)
               AND NOT EXISTS (SELECT 1 FROM jobs WHERE outputs_set = ?1)",
            [set],
        )?;
    }
    Ok(())
}

/// The digest that names a set of (path, artifact) pairs: BLAKE3 over the pairs in path order.
fn file_set_digest(refs: &[&FileRef]) -> String {
    let mut h = hash::ChunkedHasher::new();
    h.push(b"rollout-file-set-v1\0");
    for f in refs {
        h.push(&(f.path.len() as u64).to_le_bytes());
        h.push(f.path.as_bytes());
        h.push(&(f.hash.len() as u64).to_le_bytes());
        h.push(f.hash.as_bytes());
    }
    h.finalize_hex()
}

/// The id of the file set holding `refs` (none when empty), created with its artifacts and
/// paths unless a set with the same members is already stored. A path listed twice keeps its
/// last entry.
fn file_set(
    tx: &rusqlite::Transaction<'_>,
    refs: &[FileRef],
    first_seen: &str,
) -> rusqlite::Result<Option<i64>> {
    if refs.is_empty() {
        return Ok(None);
    }
    let mut sorted: Vec<&FileRef> = refs.iter().collect();
    if !sorted.is_sorted_by(|a, b| a.path <= b.path) {
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
    }
    // Stable sort: of the entries of one path, the last given is the last of its run.
    let mut members: Vec<&FileRef> = Vec::with_capacity(sorted.len());
    for f in sorted {
        match members.last_mut() {
            Some(last) if last.path == f.path => *last = f,
            _ => members.push(f),
        }
    }
    let digest = file_set_digest(&members);
    let mut sha = tx.prepare_cached(
        "INSERT OR IGNORE INTO artifact_hashes (hash, algorithm, digest) VALUES (?1, 'sha256', ?2)",
    )?;
    let existing: Option<i64> = tx
        .prepare_cached("SELECT id FROM file_sets WHERE digest = ?1")?
        .query_row([&digest], |r| r.get(0))
        .optional()?;
    if let Some(id) = existing {
        // Its artifacts are stored; digests computed this time are added.
        for f in &members {
            if let Some(s) = &f.sha256 {
                sha.execute(params![f.hash, s])?;
            }
        }
        return Ok(Some(id));
    }
    tx.prepare_cached("INSERT INTO file_sets (digest) VALUES (?1)")?
        .execute([&digest])?;
    let set = tx.last_insert_rowid();
    let mut art = tx.prepare_cached(
        "INSERT INTO artifacts (hash, size, kind, first_seen) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(hash) DO NOTHING",
    )?;
    let mut find_path = tx.prepare_cached("SELECT id FROM paths WHERE path = ?1")?;
    let mut add_path = tx.prepare_cached("INSERT INTO paths (path) VALUES (?1)")?;
    let mut member = tx.prepare_cached(
        "INSERT INTO file_set_members (set_id, path_id, artifact_hash) VALUES (?1, ?2, ?3)",
    )?;
    for f in members {
        art.execute(params![f.hash, f.size as i64, f.kind.as_str(), first_seen])?;
        if let Some(s) = &f.sha256 {
            sha.execute(params![f.hash, s])?;
        }
        let path_id = match find_path
            .query_row([&f.path], |r| r.get::<_, i64>(0))
            .optional()?
        {
            Some(id) => id,
            None => {
                add_path.execute([&f.path])?;
                tx.last_insert_rowid()
            }
        };
        member.execute(params![set, path_id, f.hash])?;
    }
    Ok(Some(set))
}

/// The current time in the store's sortable format.
pub fn now() -> String {
    format_time(chrono::Utc::now())
}

/// A time in the store's format (RFC 3339, UTC, microseconds: sorts as text).
pub fn format_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The project directory of `dir`: the nearest ancestor holding a `.rollout/` directory, else the
/// top of its git work tree, else `dir` itself.
pub fn project_dir(dir: &Path) -> PathBuf {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    for a in abs.ancestors() {
        if a.join(".rollout").is_dir() {
            return a.to_path_buf();
        }
    }
    for a in abs.ancestors() {
        if a.join(".git").exists() {
            return a.to_path_buf();
        }
    }
    abs
}

#[cfg(test)]
mod tests;
