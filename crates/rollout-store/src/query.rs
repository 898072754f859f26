//! Reading the store: jobs, artifacts, lineage, bundles, status.

use crate::model::*;
use crate::{Result, Store, StoreError};
use rusqlite::{params, OptionalExtension, Row};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

const JOB_COLS: &str = "j.id, j.uid, j.session_uid, j.kind, j.command, j.argv, j.cwd, j.git_repo, j.git_commit, \
     j.git_branch, j.git_dirty, j.git_remote, j.started_at, j.duration_sec, j.exit_code, j.env, j.metadata, j.host";

pub(crate) fn session_row(r: &Row<'_>) -> rusqlite::Result<Session> {
    let git: Option<String> = r.get(4)?;
    Ok(Session {
        uid: r.get(0)?,
        name: r.get(1)?,
        kind: r.get(2)?,
        created_at: r.get(3)?,
        git: git.and_then(|g| serde_json::from_str(&g).ok()),
    })
}

/// A job row without inputs/outputs, plus its row id.
fn job_row(r: &Row<'_>) -> rusqlite::Result<(i64, Job)> {
    let json = |i: usize, r: &Row<'_>| -> rusqlite::Result<String> { r.get(i) };
    let repo: Option<String> = r.get(7)?;
    let git = match repo {
        Some(repo) => Some(crate::git::GitInfo {
            repo,
            commit: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
            branch: r.get(9)?,
            dirty: r.get::<_, Option<bool>>(10)?.unwrap_or(false),
            remote: r.get(11)?,
        }),
        None => None,
    };
    let kind: String = r.get(3)?;
    Ok((
        r.get(0)?,
        Job {
            uid: r.get(1)?,
            session: r.get(2)?,
            kind: JobKind::parse(&kind).unwrap_or(JobKind::Trace),
            command: r.get(4)?,
            argv: serde_json::from_str(&json(5, r)?).unwrap_or_default(),
            cwd: r.get(6)?,
            git,
            started_at: r.get(12)?,
            duration_sec: r.get(13)?,
            exit_code: r.get(14)?,
            env: serde_json::from_str(&json(15, r)?).unwrap_or_default(),
            metadata: serde_json::from_str(&json(16, r)?).unwrap_or_default(),
            host: r.get(17)?,
            inputs: Vec::new(),
            outputs: Vec::new(),
        },
    ))
}

/// The summary of a job.
pub fn summary(job: &Job) -> JobSummary {
    JobSummary {
        uid: job.uid.clone(),
        session: job.session.clone(),
        kind: job.kind,
        command: job.command.clone(),
        cwd: job.cwd.clone(),
        started_at: job.started_at.clone(),
        duration_sec: job.duration_sec,
        exit_code: job.exit_code,
        git_commit: job.git.as_ref().map(|g| g.commit.clone()),
        path: None,
    }
}

impl Store {
    fn refs(&self, table: &str, job_id: i64) -> Result<Vec<FileRef>> {
        let mut st = self.sql(self.conn.prepare_cached(&format!(
            "SELECT t.path, t.artifact_hash, a.size, a.kind,
                    (SELECT digest FROM artifact_hashes h WHERE h.hash = a.hash AND h.algorithm = 'sha256')
             FROM {table} t JOIN artifacts a ON a.hash = t.artifact_hash WHERE t.job_id = ?1 ORDER BY t.path"
        )))?;
        let rows = st.query_map([job_id], |r| {
            Ok(FileRef {
                path: r.get(0)?,
                hash: r.get(1)?,
                size: r.get::<_, i64>(2)? as u64,
                kind: ArtifactKind::parse(&r.get::<_, String>(3)?),
                sha256: r.get(4)?,
            })
        });
        let rows = self.sql(rows)?;
        self.sql(rows.collect())
    }

    fn full_job(&self, id: i64, mut job: Job) -> Result<Job> {
        job.inputs = self.refs("job_inputs", id)?;
        job.outputs = self.refs("job_outputs", id)?;
        Ok(job)
    }

    fn jobs_where(&self, clause: &str, p: impl rusqlite::Params) -> Result<Vec<(i64, Job)>> {
        let mut st = self.sql(
            self.conn
                .prepare(&format!("SELECT {JOB_COLS} FROM jobs j {clause}")),
        )?;
        let rows = self.sql(st.query_map(p, job_row))?;
        self.sql(rows.collect())
    }

    /// Recent jobs, newest first; `search` is an FTS5 query over commands.
    pub fn recent_jobs(&self, limit: usize, search: Option<&str>) -> Result<Vec<Job>> {
        let rows = match search {
            Some(q) => self.jobs_where(
                "JOIN jobs_fts f ON f.rowid = j.id WHERE jobs_fts MATCH ?1 ORDER BY j.started_at DESC, j.id DESC LIMIT ?2",
                params![q, limit as i64],
            )?,
            None => self.jobs_where(
                "ORDER BY j.started_at DESC, j.id DESC LIMIT ?1",
                params![limit as i64],
            )?,
        };
        rows.into_iter()
            .map(|(id, j)| self.full_job(id, j))
            .collect()
    }

    /// Jobs of a session, oldest first.
    pub fn session_jobs(&self, session: &str) -> Result<Vec<Job>> {
        let rows = self.jobs_where(
            "WHERE j.session_uid = ?1 ORDER BY j.started_at, j.id",
            [session],
        )?;
        rows.into_iter()
            .map(|(id, j)| self.full_job(id, j))
            .collect()
    }

    /// A session by uid.
    pub fn session(&self, uid: &str) -> Result<Option<Session>> {
        let r = self
            .conn
            .query_row(
                "SELECT uid, name, kind, created_at, git FROM sessions WHERE uid = ?1",
                [uid],
                session_row,
            )
            .optional();
        self.sql(r)
    }

    /// The full hash of an artifact given its hash, a unique prefix (≥ 6 hex digits), or a
    /// sha256 digest.
    pub fn resolve_hash(&self, prefix: &str) -> Result<String> {
        let p = prefix.to_ascii_lowercase();
        if p.len() < 6 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::UnknownArtifact(prefix.into()));
        }
        let like = format!("{p}%");
        let mut st = self.sql(self.conn.prepare(
            "SELECT hash FROM artifacts WHERE hash LIKE ?1
             UNION SELECT hash FROM artifact_hashes WHERE digest LIKE ?1 LIMIT 3",
        ))?;
        let rows = self.sql(st.query_map([&like], |r| r.get::<_, String>(0)))?;
        let found: Vec<String> = self.sql(rows.collect())?;
        match found.len() {
            0 => Err(StoreError::UnknownArtifact(prefix.into())),
            1 => Ok(found.into_iter().next().expect("one")),
            n => Err(StoreError::AmbiguousHash {
                prefix: prefix.into(),
                n,
            }),
        }
    }

    /// The last recorded hash of a path (as an output, else as an input).
    pub fn hash_of_path(&self, path: &Path) -> Result<Option<String>> {
        let p = path.to_string_lossy();
        let r = self
            .conn
            .query_row(
                "SELECT x.artifact_hash FROM (
                    SELECT o.artifact_hash, j.started_at, j.id, 1 AS o FROM job_outputs o JOIN jobs j ON j.id = o.job_id WHERE o.path = ?1
                    UNION ALL
                    SELECT i.artifact_hash, j.started_at, j.id, 0 FROM job_inputs i JOIN jobs j ON j.id = i.job_id WHERE i.path = ?1
                 ) x ORDER BY x.o DESC, x.started_at DESC, x.id DESC LIMIT 1",
                [p.as_ref()],
                |r| r.get::<_, String>(0),
            )
            .optional();
        self.sql(r)
    }

    /// The latest job that wrote `hash`, optionally only among jobs started before `before`.
    pub fn producer(&self, hash: &str, before: Option<&str>) -> Result<Option<(Job, String)>> {
        let rows = self.jobs_where_with_path(
            "JOIN job_outputs o ON o.job_id = j.id WHERE o.artifact_hash = ?1 AND (?2 IS NULL OR j.started_at < ?2)
             ORDER BY j.started_at DESC, j.id DESC LIMIT 1",
            params![hash, before],
            "o.path",
        )?;
        match rows.into_iter().next() {
            Some((id, j, path)) => Ok(Some((self.full_job(id, j)?, path))),
            None => Ok(None),
        }
    }

    fn jobs_where_with_path(
        &self,
        clause: &str,
        p: impl rusqlite::Params,
        path_col: &str,
    ) -> Result<Vec<(i64, Job, String)>> {
        let mut st = self.sql(self.conn.prepare(&format!(
            "SELECT {JOB_COLS}, {path_col} FROM jobs j {clause}"
        )))?;
        let rows = self.sql(st.query_map(p, |r| {
            let (id, j) = job_row(r)?;
            Ok((id, j, r.get::<_, String>(18)?))
        }))?;
        self.sql(rows.collect())
    }

    /// Everything known about an artifact.
    pub fn artifact_info(&self, hash: &str) -> Result<ArtifactInfo> {
        let hash = self.resolve_hash(hash)?;
        let (size, kind, first_seen) = self.sql(self.conn.query_row(
            "SELECT size, kind, first_seen FROM artifacts WHERE hash = ?1",
            [&hash],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        ))?;
        let mut digests = BTreeMap::new();
        {
            let mut st = self.sql(
                self.conn
                    .prepare("SELECT algorithm, digest FROM artifact_hashes WHERE hash = ?1"),
            )?;
            let rows = self.sql(st.query_map([&hash], |r| Ok((r.get(0)?, r.get(1)?))))?;
            for row in rows {
                let (a, d): (String, String) = self.sql(row)?;
                digests.insert(a, d);
            }
        }
        let with_path = |table: &str| -> Result<Vec<JobSummary>> {
            let rows = self.jobs_where_with_path(
                &format!(
                    "JOIN {table} t ON t.job_id = j.id WHERE t.artifact_hash = ?1 ORDER BY j.started_at DESC, j.id DESC"
                ),
                [&hash],
                "t.path",
            )?;
            Ok(rows
                .into_iter()
                .map(|(_, j, p)| JobSummary {
                    path: Some(p),
                    ..summary(&j)
                })
                .collect())
        };
        let produced_by = with_path("job_outputs")?;
        let consumed_by = with_path("job_inputs")?;
        let paths: BTreeSet<String> = produced_by
            .iter()
            .chain(&consumed_by)
            .filter_map(|j| j.path.clone())
            .collect();
        Ok(ArtifactInfo {
            hash,
            size,
            kind: ArtifactKind::parse(&kind),
            first_seen,
            digests,
            paths: paths.into_iter().collect(),
            produced_by,
            consumed_by,
        })
    }

    /// The lineage of an artifact: its producer, that job's inputs and their producers, and so
    /// on for `depth` jobs. An input's producer is the latest job that wrote it before the
    /// consumer started.
    pub fn lineage(&self, hash: &str, depth: usize) -> Result<LineageNode> {
        let hash = self.resolve_hash(hash)?;
        let info = self.artifact_row(&hash)?;
        let path = self.producer(&hash, None)?.map(|(_, p)| p);
        let mut seen = HashSet::new();
        self.lineage_node(&hash, path, info, None, depth, &mut seen)
    }

    fn artifact_row(&self, hash: &str) -> Result<(u64, ArtifactKind)> {
        self.sql(self.conn.query_row(
            "SELECT size, kind FROM artifacts WHERE hash = ?1",
            [hash],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    ArtifactKind::parse(&r.get::<_, String>(1)?),
                ))
            },
        ))
    }

    fn lineage_node(
        &self,
        hash: &str,
        path: Option<String>,
        (size, kind): (u64, ArtifactKind),
        before: Option<&str>,
        depth: usize,
        seen: &mut HashSet<String>,
    ) -> Result<LineageNode> {
        let mut node = LineageNode {
            hash: hash.into(),
            path,
            size,
            kind,
            produced_by: None,
            truncated: false,
        };
        let Some((job, _)) = self.producer(hash, before)? else {
            return Ok(node);
        };
        if depth == 0 || !seen.insert(job.uid.clone()) {
            node.truncated = depth == 0;
            return Ok(node);
        }
        let mut inputs = Vec::new();
        for i in &job.inputs {
            inputs.push(self.lineage_node(
                &i.hash,
                Some(i.path.clone()),
                (i.size, i.kind),
                Some(&job.started_at),
                depth - 1,
                seen,
            )?);
        }
        node.produced_by = Some(Box::new(LineageJob {
            job: summary(&job),
            inputs,
        }));
        Ok(node)
    }

    /// The jobs of an artifact's lineage (unbounded depth), oldest first.
    pub fn lineage_jobs(&self, hash: &str) -> Result<Vec<Job>> {
        let root = self.lineage(hash, usize::MAX)?;
        let mut uids = Vec::new();
        collect_jobs(&root, &mut uids);
        let mut jobs = Vec::new();
        let mut seen = HashSet::new();
        for uid in uids {
            if seen.insert(uid.clone()) {
                jobs.push(self.job(&uid)?);
            }
        }
        jobs.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        Ok(jobs)
    }

    /// The lineage of an artifact as a bundle to register elsewhere.
    pub fn export_bundle(&self, hash: &str) -> Result<Bundle> {
        let root = self.resolve_hash(hash)?;
        let jobs = self.lineage_jobs(&root)?;
        let mut sessions = Vec::new();
        let mut seen = HashSet::new();
        let mut hashes = BTreeSet::new();
        hashes.insert(root.clone());
        for j in &jobs {
            if seen.insert(j.session.clone()) {
                if let Some(s) = self.session(&j.session)? {
                    sessions.push(s);
                }
            }
            hashes.extend(j.inputs.iter().chain(&j.outputs).map(|f| f.hash.clone()));
        }
        let mut artifacts = Vec::new();
        for h in hashes {
            let info = self.artifact_info(&h)?;
            artifacts.push(ArtifactRecord {
                hash: info.hash,
                size: info.size,
                kind: info.kind,
                first_seen: info.first_seen,
                digests: info.digests,
            });
        }
        Ok(Bundle {
            schema_version: "1.0".into(),
            root,
            sessions,
            jobs,
            artifacts,
        })
    }

    /// Store a bundle (from `export_bundle`, here or on another machine). Idempotent: sessions,
    /// jobs and artifacts already present are kept.
    pub fn import_bundle(&mut self, b: &Bundle) -> Result<ImportStats> {
        self.write(|tx| {
            let mut stats = ImportStats::default();
            for s in &b.sessions {
                let git = s
                    .git
                    .as_ref()
                    .map(|g| serde_json::to_string(g).expect("git"));
                stats.sessions += tx.execute(
                    "INSERT OR IGNORE INTO sessions (uid, name, kind, created_at, git) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![s.uid, s.name, s.kind, s.created_at, git],
                )?;
            }
            for a in &b.artifacts {
                stats.artifacts += tx.execute(
                    "INSERT OR IGNORE INTO artifacts (hash, size, kind, first_seen) VALUES (?1, ?2, ?3, ?4)",
                    params![a.hash, a.size as i64, a.kind.as_str(), a.first_seen],
                )?;
                for (alg, d) in &a.digests {
                    tx.execute(
                        "INSERT OR IGNORE INTO artifact_hashes (hash, algorithm, digest) VALUES (?1, ?2, ?3)",
                        params![a.hash, alg, d],
                    )?;
                }
            }
            for j in &b.jobs {
                let exists: bool = tx
                    .query_row("SELECT 1 FROM jobs WHERE uid = ?1", [&j.uid], |_| Ok(true))
                    .optional()?
                    .unwrap_or(false);
                if !exists {
                    crate::insert_job(tx, j)?;
                    stats.jobs += 1;
                }
            }
            Ok(stats)
        })
    }

    /// Recorded files changed on disk, and stale consumers (FORMATS §7: a consumer is stale
    /// when it read a version of a path that its producer has since replaced; consumers of a
    /// stale job's outputs are stale too). Only the latest job of each step (same kind,
    /// command and directory) counts. `scope` limits the changed-file check to paths under it.
    pub fn status(&mut self, scope: Option<&Path>) -> Result<Status> {
        let all = self.jobs_where("ORDER BY j.started_at, j.id", [])?;
        let mut current: Vec<Job> = Vec::new();
        {
            let mut latest: HashMap<(String, String, String), usize> = HashMap::new();
            let mut full = Vec::new();
            for (id, j) in all {
                if j.kind == JobKind::Trial {
                    continue;
                }
                full.push(self.full_job(id, j)?);
            }
            for (i, j) in full.iter().enumerate() {
                latest.insert(
                    (j.kind.as_str().into(), j.command.clone(), j.cwd.clone()),
                    i,
                );
            }
            let keep: HashSet<usize> = latest.into_values().collect();
            for (i, j) in full.into_iter().enumerate() {
                if keep.contains(&i) {
                    current.push(j);
                }
            }
        }
        // The latest write of each path, over current jobs.
        let mut last_write: HashMap<&str, (&str, &str, &str)> = HashMap::new(); // path → (started, hash, uid)
        for j in &current {
            for o in &j.outputs {
                last_write.insert(&o.path, (&j.started_at, &o.hash, &j.uid));
            }
        }
        let mut stale: Vec<StaleJob> = Vec::new();
        let mut stale_uids: HashSet<String> = HashSet::new();
        for j in &current {
            for i in &j.inputs {
                if let Some((started, hash, uid)) = last_write.get(i.path.as_str()) {
                    if *uid != j.uid && *started > j.started_at.as_str() && *hash != i.hash {
                        stale_uids.insert(j.uid.clone());
                        stale.push(StaleJob {
                            job: summary(j),
                            path: i.path.clone(),
                            read_hash: i.hash.clone(),
                            current_hash: Some(hash.to_string()),
                            replaced_by: Some(uid.to_string()),
                            upstream: false,
                        });
                        break;
                    }
                }
            }
        }
        // Downstream of stale jobs, to a fixpoint.
        loop {
            let stale_outputs: HashSet<(&str, &str)> = current
                .iter()
                .filter(|j| stale_uids.contains(&j.uid))
                .flat_map(|j| j.outputs.iter().map(|o| (o.path.as_str(), o.hash.as_str())))
                .collect();
            let mut added = false;
            for j in &current {
                if stale_uids.contains(&j.uid) {
                    continue;
                }
                if let Some(i) = j
                    .inputs
                    .iter()
                    .find(|i| stale_outputs.contains(&(i.path.as_str(), i.hash.as_str())))
                {
                    stale.push(StaleJob {
                        job: summary(j),
                        path: i.path.clone(),
                        read_hash: i.hash.clone(),
                        current_hash: None,
                        replaced_by: None,
                        upstream: true,
                    });
                    stale_uids.insert(j.uid.clone());
                    added = true;
                }
            }
            if !added {
                break;
            }
        }
        // Changed files: the last recorded version of every file path vs. the disk.
        let mut recorded: BTreeMap<String, String> = BTreeMap::new();
        for j in &current {
            for f in j.inputs.iter().chain(&j.outputs) {
                if f.kind == ArtifactKind::File {
                    recorded.insert(f.path.clone(), f.hash.clone());
                }
            }
            for o in &j.outputs {
                recorded.insert(o.path.clone(), o.hash.clone());
            }
        }
        let mut changed = Vec::new();
        for (path, hash) in recorded {
            let p = Path::new(&path);
            if scope.is_some_and(|s| !p.starts_with(s)) {
                continue;
            }
            let now = match self.hash_file(p, false) {
                Ok(d) => Some(d.hash),
                Err(StoreError::Hash { .. }) => None,
                Err(e) => return Err(e),
            };
            if now.as_deref() != Some(hash.as_str()) {
                changed.push(ChangedFile {
                    path,
                    recorded: hash,
                    current: now,
                });
            }
        }
        Ok(Status { changed, stale })
    }
}

fn collect_jobs(n: &LineageNode, out: &mut Vec<String>) {
    if let Some(j) = &n.produced_by {
        out.push(j.job.uid.clone());
        for i in &j.inputs {
            collect_jobs(i, out);
        }
    }
}

pub(crate) fn job_by_uid(store: &Store, uid: &str) -> Result<Job> {
    let rows = store.jobs_where(
        "WHERE j.uid = ?1 OR j.uid LIKE ?2 ORDER BY (j.uid = ?1) DESC LIMIT 2",
        params![uid, format!("{uid}%")],
    )?;
    let mut it = rows.into_iter();
    match (it.next(), it.next()) {
        (Some((id, j)), None) => store.full_job(id, j),
        (Some((id, j)), Some(_)) if j.uid == uid => store.full_job(id, j),
        _ => Err(StoreError::UnknownJob(uid.into())),
    }
}
