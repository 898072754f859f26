//! The schema and its migrations. Each migration runs once, in order, inside one immediate
//! transaction, so two processes opening a new store at once do not race.

use crate::{Store, StoreError};
use rusqlite::TransactionBehavior;

/// Migrations, in order; `schema_version` holds how many have run.
pub(crate) const MIGRATIONS: &[&str] = &[
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
    // 3: a job's inputs and outputs as content-addressed file sets over interned paths. A
    // command traced again over unchanged files records one row for its thousands of inputs
    // (the set is found by its digest), and a new set's rows have integer keys. `job_inputs`
    // and `job_outputs` stay, as views, for queries. Sets carried over have no digest (never
    // shared). The hash cache loses its rowid.
    "
    CREATE TABLE paths (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE
    );
    CREATE TABLE file_sets (
        id INTEGER PRIMARY KEY,
        digest TEXT UNIQUE
    );
    CREATE TABLE file_set_members (
        set_id INTEGER NOT NULL REFERENCES file_sets(id) ON DELETE CASCADE,
        path_id INTEGER NOT NULL REFERENCES paths(id),
        artifact_hash TEXT NOT NULL REFERENCES artifacts(hash),
        PRIMARY KEY (set_id, path_id)
    ) WITHOUT ROWID;
    CREATE INDEX file_set_members_hash ON file_set_members(artifact_hash);
    CREATE INDEX file_set_members_path ON file_set_members(path_id);
    ALTER TABLE jobs ADD COLUMN inputs_set INTEGER REFERENCES file_sets(id);
    ALTER TABLE jobs ADD COLUMN outputs_set INTEGER REFERENCES file_sets(id);
    CREATE INDEX jobs_inputs_set ON jobs(inputs_set);
    CREATE INDEX jobs_outputs_set ON jobs(outputs_set);

    INSERT INTO paths (path) SELECT path FROM job_inputs UNION SELECT path FROM job_outputs;
    INSERT INTO file_sets (id, digest) SELECT DISTINCT job_id * 2, NULL FROM job_inputs;
    INSERT INTO file_sets (id, digest) SELECT DISTINCT job_id * 2 + 1, NULL FROM job_outputs;
    INSERT INTO file_set_members (set_id, path_id, artifact_hash)
        SELECT t.job_id * 2, p.id, t.artifact_hash FROM job_inputs t JOIN paths p ON p.path = t.path;
    INSERT INTO file_set_members (set_id, path_id, artifact_hash)
        SELECT t.job_id * 2 + 1, p.id, t.artifact_hash FROM job_outputs t JOIN paths p ON p.path = t.path;
    UPDATE jobs SET inputs_set = id * 2 WHERE id IN (SELECT job_id FROM job_inputs);
    UPDATE jobs SET outputs_set = id * 2 + 1 WHERE id IN (SELECT job_id FROM job_outputs);
    DROP TABLE job_inputs;
    DROP TABLE job_outputs;

    CREATE VIEW job_inputs AS
        SELECT j.id AS job_id, p.path AS path, m.artifact_hash AS artifact_hash
        FROM jobs j JOIN file_set_members m ON m.set_id = j.inputs_set JOIN paths p ON p.id = m.path_id;
    CREATE VIEW job_outputs AS
        SELECT j.id AS job_id, p.path AS path, m.artifact_hash AS artifact_hash
        FROM jobs j JOIN file_set_members m ON m.set_id = j.outputs_set JOIN paths p ON p.id = m.path_id;

    -- The hash cache keyed by path alone (one b-tree lookup per file, no rowid).
    CREATE TABLE hash_cache_v3 (
        path TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        hash TEXT NOT NULL,
        sha256 TEXT
    ) WITHOUT ROWID;
    INSERT INTO hash_cache_v3 SELECT path, size, mtime_ns, hash, sha256 FROM hash_cache;
    DROP TABLE hash_cache;
    ALTER TABLE hash_cache_v3 RENAME TO hash_cache;
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
    // An up-to-date store is only read: no write lock on every open.
    let up_to_date = store
        .conn
        .query_row("SELECT MAX(version) FROM schema_version", [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .is_ok_and(|v| v == Some(SCHEMA_VERSION));
    if up_to_date {
        return Ok(());
    }
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
