//! Reading a finished (or running) job directory back for people and tools: the failures list
//! printed at the end of `rollout run`, `rollout jobs show`'s per-trial table, `rollout jobs
//! diff`, and `rollout jobs export` (CSV, JSON Lines, JUnit XML).
//!
//! Reads both rollout 2.0 result files and older ones (see `rollout_core::harbor_result`).

use rollout_core::result::{JobResult, TrialResult};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// A job directory's results: the job's `result.json` (absent while it runs) and every
/// trial's, sorted by trial name. Unreadable trial results are listed in `unreadable`.
#[derive(Debug, Clone)]
pub struct JobReport {
    pub dir: PathBuf,
    pub result: Option<JobResult>,
    pub trials: Vec<TrialResult>,
    pub unreadable: Vec<PathBuf>,
}

/// Largest `result.json` read (a trial's is a few kB; bigger is not one of ours).
const MAX_RESULT_BYTES: u64 = 64 << 20;

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.len() > MAX_RESULT_BYTES {
        return None;
    }
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

impl JobReport {
    /// Read the job directory `dir`. Errors when it is not a job directory.
    pub fn load(dir: &Path) -> Result<Self, String> {
        if !dir.join("config.json").is_file() && !dir.join("result.json").is_file() {
            return Err(format!(
                "{} is not a job directory (no config.json or result.json)",
                dir.display()
            ));
        }
        let result = read_json::<JobResult>(&dir.join("result.json"));
        let mut trials = Vec::new();
        let mut unreadable = Vec::new();
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path().join("result.json"))
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        for p in paths {
            match read_json::<TrialResult>(&p) {
                Some(t) => trials.push(t),
                None => unreadable.push(p),
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            result,
            trials,
            unreadable,
        })
    }
}

/// One trial that did not end cleanly.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub trial_name: String,
    /// `errored` or `cancelled`.
    pub status: &'static str,
    /// The error kind.
    pub kind: String,
    pub message: String,
    pub reward: Option<f64>,
    /// The trial's log (`<job>/<trial>/trial.log`).
    pub log: PathBuf,
}

/// The trials that ended with an error or were cancelled, in trial-name order.
pub fn failures(job_dir: &Path, trials: &[TrialResult]) -> Vec<Failure> {
    let mut out: Vec<Failure> = trials
        .iter()
        .filter_map(|t| {
            let e = t.error.as_ref()?;
            Some(Failure {
                trial_name: t.trial_name.clone(),
                status: if t.is_cancelled() {
                    "cancelled"
                } else {
                    "errored"
                },
                kind: e.kind.to_string(),
                message: e.message.clone(),
                reward: t.reward,
                log: job_dir.join(&t.trial_name).join("trial.log"),
            })
        })
        .collect();
    out.sort_by(|a, b| a.trial_name.cmp(&b.trial_name));
    out
}

/// First line of a message, at most `max` characters.
fn short(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > max {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        line.to_string()
    }
}

/// The failures block printed at the end of `rollout run` (empty when none failed).
pub fn render_failures(failures: &[Failure]) -> String {
    let mut out = String::new();
    if failures.is_empty() {
        return out;
    }
    let _ = writeln!(out, "{} trial(s) failed:", failures.len());
    for f in failures {
        let _ = writeln!(
            out,
            "  {:<9} {}  {}: {}",
            f.status.to_uppercase(),
            f.trial_name,
            f.kind,
            short(&f.message, 120)
        );
        let _ = writeln!(out, "            log: {}", f.log.display());
    }
    out
}

fn num(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.3}"))
}

/// One row per trial: name, agent, model, reward, error kind, seconds.
pub fn render_trials(trials: &[TrialResult]) -> String {
    let mut out = String::new();
    let w = trials
        .iter()
        .map(|t| t.trial_name.len())
        .max()
        .unwrap_or(0)
        .max("trial".len());
    let mw = trials
        .iter()
        .map(|t| t.agent.model_name.as_deref().unwrap_or("-").chars().count())
        .max()
        .unwrap_or(0)
        .max("model".len());
    let _ = writeln!(
        out,
        "{:<w$}  {:<16}  {:<mw$}  {:>7}  {:<26}  {:>8}",
        "trial", "agent", "model", "reward", "error", "seconds"
    );
    for t in trials {
        let _ = writeln!(
            out,
            "{:<w$}  {:<16}  {:<mw$}  {:>7}  {:<26}  {:>8.1}",
            t.trial_name,
            t.agent.name,
            t.agent.model_name.as_deref().unwrap_or("-"),
            num(t.reward),
            t.error
                .as_ref()
                .map_or("-".to_string(), |e| e.kind.to_string()),
            t.seconds
        );
    }
    out
}

/// One task's change between two jobs (per agent).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskDiff {
    pub agent: String,
    pub task: String,
    /// Mean reward over the task's trials (errors count 0), in A and in B.
    pub reward_a: Option<f64>,
    pub reward_b: Option<f64>,
    /// `reward_b - reward_a` when both ran.
    pub change: Option<f64>,
}

/// Two jobs compared: per (agent, task) mean reward change and the pass rates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobDiff {
    pub a: PathBuf,
    pub b: PathBuf,
    pub tasks: Vec<TaskDiff>,
    /// Share of trials with reward ≥ 1 in each job (errors count 0).
    pub pass_rate_a: Option<f64>,
    pub pass_rate_b: Option<f64>,
    pub pass_rate_change: Option<f64>,
}

fn by_task(trials: &[TrialResult]) -> BTreeMap<(String, String), f64> {
    let mut sums: BTreeMap<(String, String), (f64, usize)> = BTreeMap::new();
    for t in trials.iter().filter(|t| !t.is_cancelled()) {
        let e = sums
            .entry((t.agent.name.clone(), t.task_name.clone()))
            .or_default();
        e.0 += t.score();
        e.1 += 1;
    }
    sums.into_iter()
        .map(|(k, (s, n))| (k, s / n as f64))
        .collect()
}

fn pass_rate(trials: &[TrialResult]) -> Option<f64> {
    let counted: Vec<&TrialResult> = trials.iter().filter(|t| !t.is_cancelled()).collect();
    (!counted.is_empty())
        .then(|| counted.iter().filter(|t| t.score() >= 1.0).count() as f64 / counted.len() as f64)
}

/// Compare job A with job B.
pub fn diff(a: &JobReport, b: &JobReport) -> JobDiff {
    let (ra, rb) = (by_task(&a.trials), by_task(&b.trials));
    let keys: std::collections::BTreeSet<&(String, String)> = ra.keys().chain(rb.keys()).collect();
    let tasks = keys
        .into_iter()
        .map(|k| {
            let (x, y) = (ra.get(k).copied(), rb.get(k).copied());
            TaskDiff {
                agent: k.0.clone(),
                task: k.1.clone(),
                reward_a: x,
                reward_b: y,
                change: x.zip(y).map(|(x, y)| y - x),
            }
        })
        .collect();
    let (pa, pb) = (pass_rate(&a.trials), pass_rate(&b.trials));
    JobDiff {
        a: a.dir.clone(),
        b: b.dir.clone(),
        tasks,
        pass_rate_a: pa,
        pass_rate_b: pb,
        pass_rate_change: pa.zip(pb).map(|(x, y)| y - x),
    }
}

/// The diff as a table: changed tasks first marked, then the pass rates.
pub fn render_diff(d: &JobDiff) -> String {
    let mut out = String::new();
    let w = d
        .tasks
        .iter()
        .map(|t| t.agent.len() + t.task.len() + 3)
        .max()
        .unwrap_or(0)
        .max("agent / task".len());
    let _ = writeln!(out, "A: {}\nB: {}", d.a.display(), d.b.display());
    let _ = writeln!(
        out,
        "{:<w$}  {:>7}  {:>7}  {:>7}",
        "agent / task", "A", "B", "change"
    );
    for t in &d.tasks {
        let change = match t.change {
            Some(c) if c.abs() < 1e-12 => "=".to_string(),
            Some(c) => format!("{c:+.3}"),
            None if t.reward_a.is_none() => "new".into(),
            None => "gone".into(),
        };
        let _ = writeln!(
            out,
            "{:<w$}  {:>7}  {:>7}  {:>7}",
            format!("{} / {}", t.agent, t.task),
            num(t.reward_a),
            num(t.reward_b),
            change
        );
    }
    let pct = |x: Option<f64>| x.map_or("-".into(), |v| format!("{:.1}%", v * 100.0));
    let _ = writeln!(
        out,
        "pass rate: A {}  B {}  change {}",
        pct(d.pass_rate_a),
        pct(d.pass_rate_b),
        d.pass_rate_change
            .map_or("-".into(), |c| format!("{:+.1} pts", c * 100.0))
    );
    out
}

/// Export formats of `rollout jobs export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Jsonl,
    Junit,
}

impl std::str::FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "csv" => Ok(Self::Csv),
            "jsonl" => Ok(Self::Jsonl),
            "junit" => Ok(Self::Junit),
            other => Err(format!(
                "unknown export format {other:?}: csv, jsonl or junit"
            )),
        }
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 has no encoding for most control characters: drop them.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

/// The job's trials in `format`: CSV (one row per trial), JSON Lines (each trial's full
/// result), or JUnit XML (one test case per trial: a failure when the reward is below 1, an
/// error when the trial errored, skipped when cancelled).
pub fn export(report: &JobReport, format: ExportFormat) -> String {
    let mut out = String::new();
    match format {
        ExportFormat::Csv => {
            out.push_str(
                "trial_name,task_name,agent,model,dataset,attempt,reward,error_kind,error_message,seconds,started_at\n",
            );
            for t in &report.trials {
                let fields = [
                    t.trial_name.clone(),
                    t.task_name.clone(),
                    t.agent.name.clone(),
                    t.agent.model_name.clone().unwrap_or_default(),
                    t.dataset.clone().unwrap_or_default(),
                    t.attempt.to_string(),
                    t.reward.map_or(String::new(), |r| r.to_string()),
                    t.error
                        .as_ref()
                        .map_or(String::new(), |e| e.kind.to_string()),
                    t.error
                        .as_ref()
                        .map_or(String::new(), |e| e.message.clone()),
                    format!("{:.3}", t.seconds),
                    t.started_at.to_rfc3339(),
                ];
                let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                let _ = writeln!(out, "{}", row.join(","));
            }
        }
        ExportFormat::Jsonl => {
            for t in &report.trials {
                if let Ok(line) = serde_json::to_string(t) {
                    let _ = writeln!(out, "{line}");
                }
            }
        }
        ExportFormat::Junit => {
            let name = report
                .dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let failed = report
                .trials
                .iter()
                .filter(|t| t.error.is_none() && t.score() < 1.0)
                .count();
            let errored = report.trials.iter().filter(|t| t.is_errored()).count();
            let skipped = report.trials.iter().filter(|t| t.is_cancelled()).count();
            let time: f64 = report.trials.iter().map(|t| t.seconds).sum();
            let _ = writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
            let _ = writeln!(
                out,
                r#"<testsuites><testsuite name="{}" tests="{}" failures="{failed}" errors="{errored}" skipped="{skipped}" time="{time:.3}">"#,
                xml(&name),
                report.trials.len()
            );
            for t in &report.trials {
                let _ = write!(
                    out,
                    r#"  <testcase classname="{}" name="{}" time="{:.3}">"#,
                    xml(&t.agent.name),
                    xml(&t.trial_name),
                    t.seconds
                );
                match &t.error {
                    Some(e) if t.is_cancelled() => {
                        let _ = write!(out, r#"<skipped message="{}"/>"#, xml(&e.message));
                    }
                    Some(e) => {
                        let _ = write!(
                            out,
                            r#"<error type="{}" message="{}"/>"#,
                            xml(e.kind.as_str()),
                            xml(&e.message)
                        );
                    }
                    None if t.score() < 1.0 => {
                        let _ = write!(
                            out,
                            r#"<failure type="reward" message="reward {}"/>"#,
                            num(t.reward)
                        );
                    }
                    None => {}
                }
                let _ = writeln!(out, "</testcase>");
            }
            let _ = writeln!(out, "</testsuite></testsuites>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_core::result::{AgentInfo, EnvironmentInfo, ErrorInfo};
    use rollout_core::ErrorKind;

    fn trial(
        agent: &str,
        task: &str,
        reward: Option<f64>,
        error: Option<ErrorKind>,
    ) -> TrialResult {
        let now = chrono::Utc::now();
        TrialResult {
            schema_version: rollout_core::RESULT_SCHEMA_VERSION.into(),
            id: "x".into(),
            trial_name: format!("{task}__{agent}__1"),
            trial_uri: String::new(),
            job_id: "j".into(),
            job_name: "j".into(),
            task_name: task.into(),
            task_path: "/t".into(),
            task_checksum: task.into(),
            dataset: None,
            agent: AgentInfo {
                name: agent.into(),
                ..Default::default()
            },
            attempt: 1,
            rewards: reward.map(|r| BTreeMap::from([("reward".to_string(), r)])),
            reward,
            error: error.map(|k| ErrorInfo::new(k, "it broke, \"badly\" <here>")),
            environment: EnvironmentInfo::default(),
            agent_install: None,
            agent_run: None,
            verifier: None,
            started_at: now,
            finished_at: now,
            seconds: 1.0,
            phases: BTreeMap::new(),
            previous_tries: Vec::new(),
            step_results: Vec::new(),
        }
    }

    fn report(dir: &str, trials: Vec<TrialResult>) -> JobReport {
        JobReport {
            dir: dir.into(),
            result: None,
            trials,
            unreadable: Vec::new(),
        }
    }

    #[test]
    fn failures_name_kind_and_log() {
        let trials = [
            trial("oracle", "a", Some(1.0), None),
            trial("oracle", "b", None, Some(ErrorKind::VerifierRewardMissing)),
            trial("oracle", "c", None, Some(ErrorKind::Cancelled)),
        ];
        let f = failures(Path::new("/jobs/j"), &trials);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].trial_name, "b__oracle__1");
        assert_eq!(f[0].status, "errored");
        assert_eq!(f[0].kind, "verifier_reward_missing");
        assert_eq!(f[0].log, Path::new("/jobs/j/b__oracle__1/trial.log"));
        assert_eq!(f[1].status, "cancelled");
        let text = render_failures(&f);
        assert!(text.starts_with("2 trial(s) failed:"), "{text}");
        assert!(text.contains("/jobs/j/b__oracle__1/trial.log"), "{text}");
        assert!(render_failures(&[]).is_empty());
    }

    #[test]
    fn diff_reports_per_task_change_and_pass_rate() {
        let a = report(
            "A",
            vec![
                trial("x", "t1", Some(1.0), None),
                trial("x", "t2", Some(0.0), None),
            ],
        );
        let b = report(
            "B",
            vec![
                trial("x", "t1", Some(0.0), None),
                trial("x", "t2", Some(1.0), None),
                trial("x", "t3", None, Some(ErrorKind::AgentExecutionTimeout)),
            ],
        );
        let d = diff(&a, &b);
        assert_eq!(d.tasks.len(), 3);
        assert_eq!(d.tasks[0].change, Some(-1.0));
        assert_eq!(d.tasks[1].change, Some(1.0));
        assert_eq!(d.tasks[2].reward_a, None);
        assert_eq!(d.tasks[2].reward_b, Some(0.0));
        assert_eq!(d.pass_rate_a, Some(0.5));
        assert_eq!(d.pass_rate_b, Some(1.0 / 3.0));
        let text = render_diff(&d);
        assert!(text.contains("x / t3") && text.contains("new"), "{text}");
    }

    #[test]
    fn exports_escape_their_fields() {
        let r = report(
            "jobs/j",
            vec![
                trial("oracle", "a", Some(1.0), None),
                trial("nop", "a", Some(0.0), None),
                trial("oracle", "b", None, Some(ErrorKind::VerifierFailed)),
            ],
        );
        let csv = export(&r, ExportFormat::Csv);
        assert_eq!(csv.lines().count(), 4);
        assert!(csv.contains(r#""it broke, ""badly"" <here>""#), "{csv}");
        let jsonl = export(&r, ExportFormat::Jsonl);
        for line in jsonl.lines() {
            let t: TrialResult = serde_json::from_str(line).unwrap();
            assert!(!t.trial_name.is_empty());
        }
        let junit = export(&r, ExportFormat::Junit);
        assert!(
            junit.contains(r#"tests="3" failures="1" errors="1" skipped="0""#),
            "{junit}"
        );
        assert!(junit.contains("&quot;badly&quot; &lt;here&gt;"), "{junit}");
    }
}
