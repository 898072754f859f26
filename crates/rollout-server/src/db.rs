//! The durable record: runs (seed batches and native jobs) and their trials, in one SQLite file.
//!
//! The job directory on disk stays the full record of each trial (result.json, logs); this
//! database indexes what the API answers with, so it survives a restart and is queried without
//! walking directories. Every write is one short statement under a mutex: the server's writes
//! are a few per trial phase, far below what SQLite in WAL mode absorbs.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {path}: {source}: check that --data-dir is writable and not used by another server")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database query failed: {0}")]
    Query(#[from] rusqlite::Error),
}

/// What a run came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// `POST /submit`: a term-executor archive.
    Batch,
    /// `POST /api/v1/jobs`: a job configuration.
    Job,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Batch => "batch",
            RunKind::Job => "job",
        }
    }
    fn parse(s: &str) -> Self {
        if s == "job" {
            RunKind::Job
        } else {
            RunKind::Batch
        }
    }
}

/// Status of a run: the seed's batch statuses plus `cancelled` and `interrupted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Pending,
    Extracting,
    Running,
    Completed,
    Failed,
    Cancelled,
    /// The server stopped while the run was pending or running.
    Interrupted,
}

impl RunStatus {
    pub const ALL: [RunStatus; 7] = [
        RunStatus::Pending,
        RunStatus::Extracting,
        RunStatus::Running,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Interrupted,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Extracting => "extracting",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
        }
    }
    fn parse(s: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .unwrap_or(RunStatus::Failed)
    }
    /// No further change will happen (unless an interrupted run is resumed).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Completed
                | RunStatus::Failed
                | RunStatus::Cancelled
                | RunStatus::Interrupted
        )
    }
}

/// Status of a task (a trial): the seed's task statuses plus `cancelled` and `interrupted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    CloningRepo,
    InstallingDeps,
    RunningAgent,
    RunningTests,
    Completed,
    Failed,
    Cancelled,
    Interrupted,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 9] = [
        TaskStatus::Queued,
        TaskStatus::CloningRepo,
        TaskStatus::InstallingDeps,
        TaskStatus::RunningAgent,
        TaskStatus::RunningTests,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::Interrupted,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::CloningRepo => "cloning_repo",
            TaskStatus::InstallingDeps => "installing_deps",
            TaskStatus::RunningAgent => "running_agent",
            TaskStatus::RunningTests => "running_tests",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Interrupted => "interrupted",
        }
    }
    fn parse(s: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .unwrap_or(TaskStatus::Failed)
    }
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed
                | TaskStatus::Failed
                | TaskStatus::Cancelled
                | TaskStatus::Interrupted
        )
    }
}

/// One run.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub id: String,
    pub kind: RunKind,
    pub status: RunStatus,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The per-run trial concurrency.
    pub concurrent_tasks: u32,
    pub total_tasks: u32,
    pub error: Option<String>,
    /// The resolved job configuration.
    pub config: serde_json::Value,
    /// Where the runner writes the job directory.
    pub job_dir: PathBuf,
    /// The run's own files (the upload, extracted tasks).
    pub work_dir: PathBuf,
    /// The runner's job result, once finished.
    pub result: Option<serde_json::Value>,
}

/// One trial of a run (a "task" in the seed's vocabulary).
#[derive(Debug, Clone, Default)]
pub struct TrialRow {
    pub run_id: String,
    pub trial_name: String,
    pub task_id: String,
    pub status: Option<TaskStatus>,
    pub reward: Option<f64>,
    pub passed: Option<bool>,
    pub error: Option<String>,
    pub duration_ms: Option<u64>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub test_output: Option<String>,
    pub test_results: Option<serde_json::Value>,
    pub result: Option<serde_json::Value>,
}

impl TrialRow {
    pub fn status(&self) -> TaskStatus {
        self.status.unwrap_or(TaskStatus::Queued)
    }
}

/// What a trial ended with.
#[derive(Debug, Clone)]
pub struct TrialEnd {
    pub status: TaskStatus,
    pub reward: Option<f64>,
    pub passed: bool,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub test_output: String,
    pub test_results: serde_json::Value,
    pub result: serde_json::Value,
}

/// The database.
pub struct Db {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    concurrent_tasks INTEGER NOT NULL,
    total_tasks INTEGER NOT NULL,
    error TEXT,
    config TEXT NOT NULL,
    job_dir TEXT NOT NULL,
    work_dir TEXT NOT NULL,
    result TEXT
);
CREATE TABLE IF NOT EXISTS trials (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    trial_name TEXT NOT NULL,
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    reward REAL,
    passed INTEGER,
    error TEXT,
    duration_ms INTEGER,
    started_at TEXT,
    finished_at TEXT,
    test_output TEXT,
    test_results TEXT,
    result TEXT,
    PRIMARY KEY (run_id, trial_name)
);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at);
"#;

fn ts(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339())
}

fn parse_ts(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn parse_json(s: Option<String>) -> Option<serde_json::Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

const RUN_COLUMNS: &str = "id, kind, status, created_at, started_at, finished_at, concurrent_tasks, total_tasks, error, config, job_dir, work_dir, result";
const TRIAL_COLUMNS: &str = "run_id, trial_name, task_id, status, reward, passed, error, duration_ms, started_at, finished_at, test_output, test_results, result";

fn run_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: row.get(0)?,
        kind: RunKind::parse(&row.get::<_, String>(1)?),
        status: RunStatus::parse(&row.get::<_, String>(2)?),
        created_at: parse_ts(row.get(3)?).unwrap_or_else(Utc::now),
        started_at: parse_ts(row.get(4)?),
        finished_at: parse_ts(row.get(5)?),
        concurrent_tasks: row.get(6)?,
        total_tasks: row.get(7)?,
        error: row.get(8)?,
        config: parse_json(row.get(9)?).unwrap_or_default(),
        job_dir: PathBuf::from(row.get::<_, String>(10)?),
        work_dir: PathBuf::from(row.get::<_, String>(11)?),
        result: parse_json(row.get(12)?),
    })
}

fn trial_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<TrialRow> {
    Ok(TrialRow {
        run_id: row.get(0)?,
        trial_name: row.get(1)?,
        task_id: row.get(2)?,
        status: Some(TaskStatus::parse(&row.get::<_, String>(3)?)),
        reward: row.get(4)?,
        passed: row.get::<_, Option<i64>>(5)?.map(|p| p != 0),
        error: row.get(6)?,
        duration_ms: row.get::<_, Option<i64>>(7)?.map(|d| d.max(0) as u64),
        started_at: parse_ts(row.get(8)?),
        finished_at: parse_ts(row.get(9)?),
        test_output: row.get(10)?,
        test_results: parse_json(row.get(11)?),
        result: parse_json(row.get(12)?),
    })
}

impl Db {
    /// Open (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let open = |p: &Path| -> rusqlite::Result<Connection> {
            let conn = Connection::open(p)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            conn.execute_batch(SCHEMA)?;
            Ok(conn)
        };
        let conn = open(path).map_err(|source| DbError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, DbError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&conn)?)
    }

    /// Record a new run and its planned trials (all `queued`).
    pub fn insert_run(&self, run: &RunRow, trials: &[(String, String)]) -> Result<(), DbError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        tx.execute(
            &format!("INSERT INTO runs ({RUN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
            params![
                run.id,
                run.kind.as_str(),
                run.status.as_str(),
                run.created_at.to_rfc3339(),
                ts(run.started_at),
                ts(run.finished_at),
                run.concurrent_tasks,
                run.total_tasks,
                run.error,
                run.config.to_string(),
                run.job_dir.to_string_lossy(),
                run.work_dir.to_string_lossy(),
                run.result.as_ref().map(|r| r.to_string()),
            ],
        )?;
        for (seq, (trial, task)) in trials.iter().enumerate() {
            tx.execute(
                "INSERT INTO trials (run_id, trial_name, task_id, seq, status) VALUES (?1, ?2, ?3, ?4, 'queued')",
                params![run.id, trial, task, seq as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn get_run(&self, id: &str) -> Result<Option<RunRow>, DbError> {
        self.with(|c| {
            c.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"))?
                .query_row([id], run_from)
                .optional()
        })
    }

    /// Runs, newest first; `kind` filters.
    pub fn list_runs(&self, kind: Option<RunKind>) -> Result<Vec<RunRow>, DbError> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE ?1 IS NULL OR kind = ?1 ORDER BY created_at DESC"
            ))?;
            let rows = stmt.query_map([kind.map(|k| k.as_str())], run_from)?;
            rows.collect()
        })
    }

    /// Runs whose status is one of `statuses`, oldest first.
    pub fn runs_with_status(&self, statuses: &[RunStatus]) -> Result<Vec<RunRow>, DbError> {
        let all = self.with(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs ORDER BY created_at ASC"
            ))?;
            let rows = stmt.query_map([], run_from)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(all
            .into_iter()
            .filter(|r| statuses.contains(&r.status))
            .collect())
    }

    pub fn set_run_status(
        &self,
        id: &str,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<(), DbError> {
        let now = Utc::now().to_rfc3339();
        self.with(|c| {
            c.execute(
                "UPDATE runs SET status = ?2,
                    started_at = CASE WHEN ?2 = 'running' AND started_at IS NULL THEN ?3 ELSE started_at END,
                    finished_at = CASE WHEN ?2 IN ('completed','failed','cancelled','interrupted') THEN ?3 ELSE NULL END,
                    error = COALESCE(?4, error)
                 WHERE id = ?1",
                params![id, status.as_str(), now, error],
            )
        })?;
        Ok(())
    }

    /// The trials of a run become `trials` (trial name, task id), all in `status`: a batch's
    /// per-task rows, known at submission, become the planned trials once its tasks are cloned.
    pub fn replace_trials(
        &self,
        run: &str,
        trials: &[(String, String)],
        status: TaskStatus,
    ) -> Result<(), DbError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM trials WHERE run_id = ?1", [run])?;
        for (seq, (trial, task)) in trials.iter().enumerate() {
            tx.execute(
                "INSERT INTO trials (run_id, trial_name, task_id, seq, status) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![run, trial, task, seq as i64, status.as_str()],
            )?;
        }
        tx.execute(
            "UPDATE runs SET total_tasks = ?2 WHERE id = ?1",
            params![run, trials.len() as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The configuration a run was planned with.
    pub fn set_run_config(&self, id: &str, config: &serde_json::Value) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET config = ?2 WHERE id = ?1",
                params![id, config.to_string()],
            )
        })?;
        Ok(())
    }

    pub fn set_run_result(&self, id: &str, result: &serde_json::Value) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET result = ?2 WHERE id = ?1",
                params![id, result.to_string()],
            )
        })?;
        Ok(())
    }

    pub fn delete_run(&self, id: &str) -> Result<(), DbError> {
        self.with(|c| {
            c.execute("DELETE FROM trials WHERE run_id = ?1", [id])?;
            c.execute("DELETE FROM runs WHERE id = ?1", [id])
        })?;
        Ok(())
    }

    /// A trial moved to `status` (not final); its start time is set on the first move.
    pub fn set_trial_status(
        &self,
        run: &str,
        trial: &str,
        status: TaskStatus,
    ) -> Result<(), DbError> {
        let now = Utc::now().to_rfc3339();
        self.with(|c| {
            c.execute(
                "UPDATE trials SET status = ?3, started_at = COALESCE(started_at, ?4),
                    finished_at = NULL, reward = NULL, passed = NULL, error = NULL, result = NULL
                 WHERE run_id = ?1 AND trial_name = ?2",
                params![run, trial, status.as_str(), now],
            )
        })?;
        Ok(())
    }

    pub fn finish_trial(&self, run: &str, trial: &str, end: &TrialEnd) -> Result<(), DbError> {
        let now = Utc::now().to_rfc3339();
        self.with(|c| {
            c.execute(
                "UPDATE trials SET status = ?3, reward = ?4, passed = ?5, error = ?6, duration_ms = ?7,
                    finished_at = ?8, started_at = COALESCE(started_at, ?8), test_output = ?9,
                    test_results = ?10, result = ?11
                 WHERE run_id = ?1 AND trial_name = ?2",
                params![
                    run,
                    trial,
                    end.status.as_str(),
                    end.reward,
                    end.passed as i64,
                    end.error,
                    end.duration_ms as i64,
                    now,
                    end.test_output,
                    end.test_results.to_string(),
                    end.result.to_string(),
                ],
            )
        })?;
        Ok(())
    }

    /// Trials that never finished become `status` (after a cancel or a restart).
    pub fn close_open_trials(&self, run: &str, status: TaskStatus) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "UPDATE trials SET status = ?2 WHERE run_id = ?1
                   AND status NOT IN ('completed','failed','cancelled','interrupted')",
                params![run, status.as_str()],
            )
        })?;
        Ok(())
    }

    pub fn list_trials(&self, run: &str) -> Result<Vec<TrialRow>, DbError> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {TRIAL_COLUMNS} FROM trials WHERE run_id = ?1 ORDER BY seq"
            ))?;
            let rows = stmt.query_map([run], trial_from)?;
            rows.collect()
        })
    }

    /// A trial by its trial name or, failing that, its task id (the seed's `task_id`).
    pub fn get_trial(&self, run: &str, name: &str) -> Result<Option<TrialRow>, DbError> {
        self.with(|c| {
            c.prepare_cached(&format!("SELECT {TRIAL_COLUMNS} FROM trials WHERE run_id = ?1 AND (trial_name = ?2 OR task_id = ?2) ORDER BY trial_name = ?2 DESC, seq LIMIT 1"))?
                .query_row(params![run, name], trial_from)
                .optional()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str) -> RunRow {
        RunRow {
            id: id.into(),
            kind: RunKind::Batch,
            status: RunStatus::Pending,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            concurrent_tasks: 2,
            total_tasks: 2,
            error: None,
            config: serde_json::json!({"name": id}),
            job_dir: "/j".into(),
            work_dir: "/w".into(),
            result: None,
        }
    }

    #[test]
    fn runs_and_trials_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.db");
        {
            let db = Db::open(&path).unwrap();
            db.insert_run(
                &run("b1"),
                &[
                    ("a__x__1".into(), "a".into()),
                    ("b__x__1".into(), "b".into()),
                ],
            )
            .unwrap();
            db.set_run_status("b1", RunStatus::Running, None).unwrap();
            db.set_trial_status("b1", "a__x__1", TaskStatus::RunningAgent)
                .unwrap();
            db.finish_trial(
                "b1",
                "b__x__1",
                &TrialEnd {
                    status: TaskStatus::Completed,
                    reward: Some(1.0),
                    passed: true,
                    error: None,
                    duration_ms: 5,
                    test_output: "PASS t.sh".into(),
                    test_results: serde_json::json!([]),
                    result: serde_json::json!({"reward": 1.0}),
                },
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let r = db.get_run("b1").unwrap().unwrap();
        assert_eq!(r.status, RunStatus::Running);
        assert!(r.started_at.is_some() && r.finished_at.is_none());
        let open = db.runs_with_status(&[RunStatus::Running]).unwrap();
        assert_eq!(open.len(), 1);
        db.close_open_trials("b1", TaskStatus::Interrupted).unwrap();
        let trials = db.list_trials("b1").unwrap();
        assert_eq!(trials[0].status(), TaskStatus::Interrupted);
        assert_eq!(trials[1].status(), TaskStatus::Completed);
        assert_eq!(trials[1].passed, Some(true));
        // The seed addresses tasks by task id.
        assert_eq!(
            db.get_trial("b1", "b").unwrap().unwrap().trial_name,
            "b__x__1"
        );
        db.delete_run("b1").unwrap();
        assert!(db.get_run("b1").unwrap().is_none());
    }
}
