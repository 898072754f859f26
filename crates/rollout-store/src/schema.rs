//! The schema and its migrations. Each migration runs once, in order, inside one immediate
//! transaction, so two processes opening a new store at once do not race.

use crate::{Store, StoreError};
use rusqlite::TransactionBehavior;

/// Migrations, in order; `schema_version` holds how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: the provenance model.
    "
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        uid TEXT NOT NULL UNIQUE,
        name TEXT,
        kind TEXT NOT NULL,
        created_at TEXT NOT NULL,
        git TEXT
    );
    CREATE TABLE artifacts (
        hash TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        kind TEXT NOT NULL DEFAULT 'file',
        first_seen TEXT NOT NULL
    );
    CREATE TABLE artifact_hashes (
        hash TEXT NOT NULL REFERENCES artifacts(hash),
        algorithm TEXT NOT NULL,
        digest TEXT NOT NULL,
        PRIMARY KEY (hash, algorithm)
    );
    CREATE INDEX artifact_hashes_digest ON artifact_hashes(digest);
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        uid TEXT NOT NULL UNIQUE,
        session_uid TEXT NOT NULL REFERENCES sessions(uid),
        kind TEXT NOT NULL,
        command TEXT NOT NULL,
        argv TEXT NOT NULL,
        cwd TEXT NOT NULL,
        git_repo TEXT,
        git_commit TEXT,
        git_branch TEXT,
        git_dirty INTEGER,
        git_remote TEXT,
        started_at TEXT NOT NULL,
        duration_sec REAL NOT NULL,
        exit_code INTEGER,
        step_hash TEXT NOT NULL,
        env TEXT NOT NULL,
        metadata TEXT NOT NULL,
        host TEXT NOT NULL
    );
    CREATE INDEX jobs_started ON jobs(started_at);
    CREATE INDEX jobs_session ON jobs(session_uid);
    CREATE TABLE job_inputs (
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        artifact_hash TEXT NOT NULL REFERENCES artifacts(hash),
        PRIMARY KEY (job_id, path)
    );
    CREATE INDEX job_inputs_hash ON job_inputs(artifact_hash);
    CREATE INDEX job_inputs_path ON job_inputs(path);
    CREATE TABLE job_outputs (
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        artifact_hash TEXT NOT NULL REFERENCES artifacts(hash),
        PRIMARY KEY (job_id, path)
    );
    CREATE INDEX job_outputs_hash ON job_outputs(artifact_hash);
    CREATE INDEX job_outputs_path ON job_outputs(path);
    CREATE TABLE hash_cache (
        path TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        hash TEXT NOT NULL,
        sha256 TEXT
    );
    CREATE VIRTUAL TABLE jobs_fts USING fts5(command, content='jobs', content_rowid='id');
    CREATE TRIGGER jobs_fts_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO jobs_fts(rowid, command) VALUES (new.id, new.command);
    END;
    CREATE TRIGGER jobs_fts_delete AFTER DELETE ON jobs BEGIN
        INSERT INTO jobs_fts(jobs_fts, rowid, command) VALUES ('delete', old.id, old.command);
    END;
    ",
    // 2: collections, named groups of artifacts and jobs.
    "
    CREATE TABLE collections (
        name TEXT PRIMARY KEY,
        description TEXT,
        created_at TEXT NOT NULL
    );
    CREATE TABLE collection_members (
        collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        ref TEXT NOT NULL,
        added_at TEXT NOT NULL,
        PRIMARY KEY (collection, kind, ref)
    );
    ",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(crate) fn migrate(store: &mut Store) -> Result<(), StoreError> {
    let path = store.path.clone();
    let err = |source| StoreError::Sqlite {
        path: path.clone(),
        source,
    };
    let tx = store
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(err)?;
    let current: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path,
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql).map_err(err)?;
        tx.execute("DELETE FROM schema_version", []).map_err(err)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [i as i64 + 1],
        )
        .map_err(err)?;
    }
    tx.commit().map_err(err)
}
