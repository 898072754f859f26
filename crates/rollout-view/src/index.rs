//! The job catalog and its cache. Job directories are found under the given roots; each job's
//! trial rows are kept in memory keyed by their `result.json` modification time and size, so a
//! refresh is one `stat` per trial and only changed trials are parsed again. Refreshes are
//! throttled: a job page served twice within [`REFRESH_EVERY`] costs no file system access, and
//! its JSON is kept serialized.

use crate::model::{self, TrialRow};
use crate::stats::{self, Group, Histogram};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Longest a cached view is served before the job directory is looked at again.
pub const REFRESH_EVERY: Duration = Duration::from_millis(1000);

/// A job as listed on the job list.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobSummary {
    pub id: String,
    pub name: String,
    pub dir: String,
    /// `running`, `paused`, `completed`, `failed`, `interrupted`, `killed` or `incomplete`.
    pub status: String,
    /// `rollout` or `harbor`.
    pub format: &'static str,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub seconds: Option<f64>,
    /// Trials planned (when the job says), else trials found.
    pub n_total: usize,
    pub n_finished: usize,
    pub n_running: usize,
    pub n_errors: usize,
    pub overall: Group,
    pub groups: Vec<Group>,
}

/// Everything the job page shows.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub summary: JobSummary,
    pub trials: Vec<TrialRow>,
    pub histogram: Histogram,
    pub phase_means: BTreeMap<String, f64>,
    pub error_counts: BTreeMap<String, usize>,
    /// Reward keys other than `reward` that some trial has.
    pub reward_keys: Vec<String>,
}

type Stamp = (SystemTime, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

struct CachedTrial {
    stamp: Option<Stamp>,
    row: TrialRow,
}

#[derive(Default)]
struct JobState {
    trials: BTreeMap<String, CachedTrial>,
    files: HashMap<&'static str, (Option<Stamp>, Option<Value>)>,
    refreshed: Option<Instant>,
    view: Option<Arc<JobView>>,
    json: Option<Arc<Vec<u8>>>,
}

/// One job directory and its cache.
pub struct Job {
    pub id: String,
    pub dir: PathBuf,
    state: Mutex<JobState>,
}

impl Job {
    pub fn new(id: String, dir: PathBuf) -> Self {
        Self {
            id,
            dir,
            state: Mutex::new(JobState::default()),
        }
    }

    /// The current view, refreshed when older than [`REFRESH_EVERY`].
    pub fn view(&self) -> Arc<JobView> {
        self.refreshed(false).0
    }

    /// The job page JSON, serialized once per change.
    pub fn view_json(&self) -> Arc<Vec<u8>> {
        self.refreshed(true).1.expect("asked for json")
    }

    fn refreshed(&self, want_json: bool) -> (Arc<JobView>, Option<Arc<Vec<u8>>>) {
        let mut st = self.state.lock().expect("job cache poisoned");
        let fresh = st.refreshed.is_some_and(|t| t.elapsed() < REFRESH_EVERY);
        if !fresh || st.view.is_none() {
            let changed = self.refresh(&mut st);
            st.refreshed = Some(Instant::now());
            if changed || st.view.is_none() {
                st.view = Some(Arc::new(self.build(&st)));
                st.json = None;
            }
        }
        let view = st.view.clone().expect("built above");
        if want_json && st.json.is_none() {
            st.json = Some(Arc::new(serde_json::to_vec(&*view).unwrap_or_default()));
        }
        (view, st.json.clone())
    }

    fn file(&self, st: &mut JobState, name: &'static str) -> bool {
        let path = self.dir.join(name);
        let s = stamp(&path);
        match st.files.get(name) {
            Some((old, _)) if *old == s => false,
            _ => {
                let v = s.and_then(|_| model::read_json(&path));
                st.files.insert(name, (s, v));
                true
            }
        }
    }

    /// Look at the directory again; whether anything changed.
    fn refresh(&self, st: &mut JobState) -> bool {
        let mut changed = false;
        for f in ["result.json", "run_control.json", "config.json"] {
            changed |= self.file(st, f);
        }
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            let had = !st.trials.is_empty();
            st.trials.clear();
            return changed || had;
        };
        let mut seen = std::collections::HashSet::new();
        // Known trials are stat'ed and read again only when their result changed; a new one is
        // opened once, its stamp taken from the open file (the first look at a large job).
        let mut todo: Vec<(String, PathBuf, Look)> = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let dir = e.path();
            let Some(c) = st.trials.get(&name) else {
                todo.push((name, dir, Look::New));
                continue;
            };
            let s = stamp(&dir.join("result.json"));
            if s.is_none() && !dir.join("config.json").is_file() {
                continue;
            }
            seen.insert(name.clone());
            if (c.stamp == s && s.is_some()) || (s.is_none() && c.row.status == "running") {
                continue;
            }
            todo.push((name, dir, Look::Stamped(s)));
        }
        for (name, stamp, row) in read_rows(todo) {
            changed = true;
            seen.insert(name.clone());
            st.trials.insert(name, CachedTrial { stamp, row });
        }
        let before = st.trials.len();
        st.trials.retain(|k, _| seen.contains(k));
        changed || before != st.trials.len()
    }

    fn json<'a>(st: &'a JobState, name: &str) -> Option<&'a Value> {
        st.files.get(name).and_then(|(_, v)| v.as_ref())
    }

    fn build(&self, st: &JobState) -> JobView {
        let result = Self::json(st, "result.json");
        let control = Self::json(st, "run_control.json");
        let config = Self::json(st, "config.json");
        let harbor = result.is_some_and(|r| {
            r.get("trial_results").is_some() || r.pointer("/stats/evals").is_some()
        });
        let status = job_status(result, control, harbor);
        let live = status == "running" || status == "paused";
        let mut trials: Vec<TrialRow> = st
            .trials
            .values()
            .map(|c| {
                let mut r = c.row.clone();
                if r.status == "running" && !live {
                    r.status = "unfinished";
                }
                r
            })
            .collect();
        trials.sort_by(|a, b| a.name.cmp(&b.name));
        let s = |v: Option<&Value>, k: &str| {
            v.and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let name = s(result, "name")
            .or_else(|| s(control, "job_name"))
            .or_else(|| s(config, "job_name"))
            .unwrap_or_else(|| {
                self.dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
        let started_at = s(result, "started_at").or_else(|| s(control, "started_at"));
        let finished_at = s(result, "finished_at");
        let seconds = result
            .and_then(|r| r.get("seconds"))
            .and_then(Value::as_f64)
            .or_else(|| model::span(started_at.as_deref(), finished_at.as_deref()))
            .or_else(|| {
                let now = chrono::Utc::now().to_rfc3339();
                live.then(|| model::span(started_at.as_deref(), Some(&now)))
                    .flatten()
            });
        let n_total = result
            .and_then(|r| r.get("n_total_trials"))
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .unwrap_or(trials.len())
            .max(trials.len());
        let overall = stats::group("all", "all", &trials);
        let mut keys: Vec<String> = trials
            .iter()
            .flat_map(|t| t.rewards.keys())
            .filter(|k| *k != "reward")
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        keys.truncate(50);
        JobView {
            summary: JobSummary {
                id: self.id.clone(),
                name,
                dir: self.dir.display().to_string(),
                status,
                format: if harbor { "harbor" } else { "rollout" },
                started_at,
                finished_at,
                seconds,
                n_total,
                n_finished: overall.n + overall.n_cancelled,
                n_running: trials.iter().filter(|t| t.status == "running").count(),
                n_errors: overall.n_errors,
                groups: stats::by_agent_dataset(&trials),
                overall,
            },
            histogram: stats::histogram(&trials),
            phase_means: stats::phase_means(&trials),
            error_counts: stats::error_counts(&trials),
            reward_keys: keys,
            trials,
        }
    }
}

fn job_status(result: Option<&Value>, control: Option<&Value>, harbor: bool) -> String {
    if let Some(c) = control {
        let st = c
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("incomplete");
        if st == "running" || st == "paused" {
            let pid = c.get("pid").and_then(Value::as_u64).unwrap_or(0) as u32;
            let host = c.get("host").and_then(Value::as_str).unwrap_or("");
            if !rollout_core::owner_alive(pid, host, &host_name()) {
                return "interrupted".into();
            }
        }
        return st.to_string();
    }
    match result {
        Some(r) if harbor => {
            if r.get("finished_at").is_some_and(|f| !f.is_null()) {
                "completed".into()
            } else {
                "running".into()
            }
        }
        Some(r) => {
            if r.get("cancelled").and_then(Value::as_bool) == Some(true) {
                "interrupted".into()
            } else if r
                .pointer("/stats/n_errored")
                .and_then(Value::as_u64)
                .is_some_and(|n| n > 0)
            {
                "failed".into()
            } else {
                "completed".into()
            }
        }
        None => "incomplete".into(),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// How a trial directory is looked at: new (its `result.json` is opened and stamped from the
/// open file) or already stamped (changed since last read, or gone).
enum Look {
    New,
    Stamped(Option<Stamp>),
}

/// A trial's `result.json`, opened once: its stamp and its row (`None` when it is not a file
/// or too large to read; the row of unreadable JSON is `None` too).
fn open_result(name: &str, path: &Path) -> Option<(Stamp, Option<TrialRow>)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let m = f.metadata().ok()?;
    let s = (m.modified().ok()?, m.len());
    if !m.is_file() || m.len() > model::MAX_JSON_BYTES {
        return Some((s, None));
    }
    let mut bytes = Vec::with_capacity(m.len() as usize + 1);
    if f.read_to_end(&mut bytes).is_err() {
        return Some((s, None));
    }
    Some((s, model::trial_row_of_bytes(name, &bytes)))
}

/// Parse the rows of these trial directories, on a few threads when there are many (the first
/// look at a large job reads every `result.json`). A new directory with neither a result nor a
/// `config.json` is not a trial and gives no row.
fn read_rows(todo: Vec<(String, PathBuf, Look)>) -> Vec<(String, Option<Stamp>, TrialRow)> {
    fn one(
        (name, dir, look): (String, PathBuf, Look),
    ) -> Option<(String, Option<Stamp>, TrialRow)> {
        let result = dir.join("result.json");
        let (s, row) = match look {
            Look::New => match open_result(&name, &result) {
                Some((s, row)) => (Some(s), row),
                None if dir.join("config.json").is_file() => (None, None),
                None => return None,
            },
            Look::Stamped(s) => (s, s.and_then(|_| model::read_trial_row(&name, &result))),
        };
        let row = row.unwrap_or_else(|| {
            model::running_row(&name, model::read_json(&dir.join("config.json")).as_ref())
        });
        Some((name, s, row))
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if threads < 2 || todo.len() < 256 {
        return todo.into_iter().filter_map(one).collect();
    }
    let per = todo.len().div_ceil(threads);
    let mut chunks: Vec<Vec<_>> = Vec::new();
    let mut it = todo.into_iter().peekable();
    while it.peek().is_some() {
        chunks.push(it.by_ref().take(per).collect());
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| scope.spawn(move || c.into_iter().filter_map(one).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a trial reader panicked"))
            .collect()
    })
}

/// Whether `dir` is a job directory (rollout's or Harbor's), not a trial directory.
pub fn is_job_dir(dir: &Path) -> bool {
    if dir.join("run_control.json").is_file() || dir.join("job.log").is_file() {
        return true;
    }
    match model::read_json(&dir.join("result.json")) {
        Some(v) => v.get("trial_name").is_none() && v.get("n_total_trials").is_some(),
        None => false,
    }
}

/// The jobs under the roots given on the command line.
pub struct Catalog {
    roots: Vec<PathBuf>,
    state: Mutex<CatalogState>,
}

#[derive(Default)]
struct CatalogState {
    scanned: Option<Instant>,
    jobs: Vec<Arc<Job>>,
}

fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("job{s}")
    } else {
        s
    }
}

impl Catalog {
    /// A root is either a job directory or a directory of job directories.
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Self {
            roots,
            state: Mutex::new(CatalogState::default()),
        }
    }

    /// The jobs, found again when the last scan is older than [`REFRESH_EVERY`].
    pub fn jobs(&self) -> Vec<Arc<Job>> {
        let mut st = self.state.lock().expect("catalog poisoned");
        if st.scanned.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
            return st.jobs.clone();
        }
        let mut dirs = Vec::new();
        for root in &self.roots {
            if is_job_dir(root) {
                dirs.push(root.clone());
                continue;
            }
            let Ok(rd) = std::fs::read_dir(root) else {
                continue;
            };
            let mut children: Vec<PathBuf> = rd
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .filter(|p| is_job_dir(p))
                .collect();
            children.sort();
            dirs.extend(children);
        }
        let mut jobs = Vec::new();
        let mut used = std::collections::HashSet::new();
        for dir in dirs {
            if let Some(j) = st.jobs.iter().find(|j| j.dir == dir) {
                used.insert(j.id.clone());
                jobs.push(j.clone());
                continue;
            }
            let base = slug(
                &dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            let mut id = base.clone();
            let mut n = 2;
            while used.contains(&id) || st.jobs.iter().any(|j| j.id == id && j.dir != dir) {
                id = format!("{base}-{n}");
                n += 1;
            }
            used.insert(id.clone());
            jobs.push(Arc::new(Job::new(id, dir)));
        }
        st.jobs = jobs;
        st.scanned = Some(Instant::now());
        st.jobs.clone()
    }

    pub fn job(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs().into_iter().find(|j| j.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(job: &Job) -> Vec<(String, &'static str)> {
        let mut st = job.state.lock().unwrap();
        job.refresh(&mut st);
        job.build(&st)
            .trials
            .into_iter()
            .map(|t| (t.name, t.status))
            .collect()
    }

    /// Each refresh sees trials appear (started, then finished), change and go, and never
    /// takes a directory without a result or a config for a trial.
    #[test]
    fn a_refresh_follows_trials_appearing_finishing_and_going() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("j");
        crate::synth::write_job(&dir, "j", 2, 2, 3).unwrap();
        std::fs::create_dir_all(dir.join("not-a-trial/sub")).unwrap();
        let job = Job::new("j".into(), dir.clone());
        let names: Vec<String> = rows(&job).into_iter().map(|r| r.0).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let (a, b) = (names[0].clone(), names[1].clone());
        // A trial that started: its config.json only; it is running (the job has a result, so
        // it shows as unfinished), then finished.
        let c = dir.join("task-9__nop__1");
        std::fs::create_dir(&c).unwrap();
        std::fs::write(c.join("config.json"), r#"{"task_name": "task-9"}"#).unwrap();
        assert!(rows(&job).contains(&("task-9__nop__1".into(), "unfinished")));
        let done = std::fs::read(dir.join(&a).join("result.json")).unwrap();
        std::fs::write(c.join("result.json"), &done).unwrap();
        assert!(rows(&job).contains(&("task-9__nop__1".into(), "ok")));
        // A changed result is read again; a removed trial goes.
        let text = String::from_utf8(done).unwrap();
        let failed = text.replacen(
            "\"error\": null",
            "\"error\": {\"type\": \"agent_execution_failed\", \"message\": \"x\"}",
            1,
        );
        assert_ne!(failed, text, "the synthetic result has an error key");
        std::fs::write(c.join("result.json"), failed).unwrap();
        assert!(rows(&job).contains(&("task-9__nop__1".into(), "error")));
        std::fs::remove_dir_all(dir.join(&b)).unwrap();
        let now: Vec<String> = rows(&job).into_iter().map(|r| r.0).collect();
        assert_eq!(now, vec![a, "task-9__nop__1".to_string()]);
    }
}
