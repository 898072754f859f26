//! The trial page: everything about one trial, read through [`crate::fsguard`] so nothing
//! outside the job directory (and no symbolic link) is ever read.

use crate::fsguard::{self, FileEntry};
use crate::model::{self, Trajectory, TrialRow};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// How much of each file the detail carries.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Bytes of each log shown (its tail).
    pub log_bytes: u64,
    /// Logs shown at most.
    pub logs: usize,
    /// Files listed at most.
    pub files: usize,
    /// Characters of each tool output / step text kept.
    pub text_chars: usize,
    /// Trajectory steps kept.
    pub steps: usize,
}

impl Caps {
    /// What the web UI shows.
    pub const VIEW: Caps = Caps {
        log_bytes: 256 * 1024,
        logs: 40,
        files: 2000,
        text_chars: 64 * 1024,
        steps: 2000,
    };
    /// What a report embeds per trial.
    pub const REPORT: Caps = Caps {
        log_bytes: 8 * 1024,
        logs: 8,
        files: 200,
        text_chars: 4 * 1024,
        steps: 200,
    };
}

#[derive(Debug, Clone, Serialize)]
pub struct LogFile {
    /// Path relative to the job directory.
    pub path: String,
    pub bytes: u64,
    /// The last `log_bytes` of the file.
    pub text: String,
    pub truncated: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorView {
    pub kind: String,
    pub message: String,
    /// The log to read first for this error, relative to the job directory.
    pub log: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrialDetail {
    pub row: TrialRow,
    pub instruction: Option<String>,
    pub trajectory: Option<Trajectory>,
    pub logs: Vec<LogFile>,
    pub artifacts: Vec<FileEntry>,
    pub files: Vec<FileEntry>,
    pub error: Option<ErrorView>,
    /// `phases` with their start and end times, as written.
    pub timings: Value,
    /// Multi-step tasks: per step name, reward, rewards and error.
    pub steps: Value,
    pub previous_tries: Value,
}

fn cap_text(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("\n[… cut]");
    }
}

/// Whether `name` is a plain directory name of the job directory.
pub fn valid_trial_name(job: &Path, name: &str) -> bool {
    !name.is_empty()
        && !name.contains('/')
        && name != "."
        && name != ".."
        && std::fs::symlink_metadata(job.join(name)).is_ok_and(|m| m.is_dir())
}

fn trajectory(job: &Path, trial: &str) -> Option<Trajectory> {
    for rel in ["agent/trajectory.json", "trajectory.json"] {
        let p = format!("{trial}/{rel}");
        let Ok(path) = fsguard::resolve(job, &p) else {
            continue;
        };
        if let Some(t) = model::read_json(&path).and_then(|v| model::trajectory(&v, rel)) {
            return Some(t);
        }
    }
    None
}

fn is_text_name(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    [
        ".txt", ".log", ".out", ".err", ".md", ".json", ".jsonl", ".sh", ".py", ".yaml", ".yml",
        ".toml", ".csv",
    ]
    .iter()
    .any(|e| lower.ends_with(e))
        || !lower.rsplit('/').next().unwrap_or("").contains('.')
}

/// Read one trial's detail; `None` when `name` is not a trial directory of `job`.
pub fn trial_detail(job: &Path, name: &str, caps: Caps) -> Option<TrialDetail> {
    if !valid_trial_name(job, name) {
        return None;
    }
    let result = fsguard::resolve(job, &format!("{name}/result.json"))
        .ok()
        .and_then(|p| model::read_json(&p));
    let row = match &result {
        Some(v) => model::trial_row(name, v),
        None => {
            let config = fsguard::resolve(job, &format!("{name}/config.json"))
                .ok()
                .and_then(|p| model::read_json(&p));
            model::running_row(name, config.as_ref())
        }
    };
    let empty = Value::Null;
    let r = result.as_ref().unwrap_or(&empty);
    let mut traj = trajectory(job, name);
    if let Some(t) = traj.as_mut() {
        t.steps.truncate(caps.steps);
        for s in &mut t.steps {
            cap_text(&mut s.text, caps.text_chars);
            for c in &mut s.tool_calls {
                if let Some(o) = c.output.as_mut() {
                    cap_text(o, caps.text_chars);
                }
            }
            for o in &mut s.observations {
                cap_text(o, caps.text_chars);
            }
        }
    }
    let mut instruction = traj.as_ref().and_then(|t| t.instruction.clone());
    if instruction.is_none() {
        // The task's own instruction, when its directory is still there.
        if let Some(tp) = r.get("task_path").and_then(Value::as_str) {
            let p = Path::new(tp).join("instruction.md");
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file() && m.len() < 1 << 20) {
                instruction = std::fs::read_to_string(p).ok();
            }
        }
    }
    if let Some(i) = instruction.as_mut() {
        cap_text(i, caps.text_chars.max(16 * 1024));
    }
    let files = fsguard::list_files(job, name, caps.files);
    let artifacts: Vec<FileEntry> = files
        .iter()
        .filter(|f| f.path.starts_with(&format!("{name}/artifacts/")))
        .cloned()
        .collect();
    let mut log_paths: Vec<&FileEntry> = files
        .iter()
        .filter(|f| {
            let rest = &f.path[name.len() + 1..];
            (rest.starts_with("agent/") || rest.starts_with("verifier/"))
                && !rest.ends_with("trajectory.json")
                && is_text_name(rest)
                || rest == "trial.log"
                || rest == "exception.txt"
        })
        .collect();
    // trial.log first, then the agent's, then the verifier's.
    log_paths.sort_by_key(|f| {
        let rest = &f.path[name.len() + 1..];
        (
            match rest {
                "exception.txt" => 0,
                "trial.log" => 1,
                r if r.starts_with("agent/") => 2,
                _ => 3,
            },
            f.path.clone(),
        )
    });
    let logs: Vec<LogFile> = log_paths
        .into_iter()
        .take(caps.logs)
        .filter_map(|f| {
            let (text, bytes, truncated) = fsguard::read_tail(job, &f.path, caps.log_bytes).ok()?;
            Some(LogFile {
                path: f.path.clone(),
                bytes,
                text,
                truncated,
            })
        })
        .collect();
    let error = row.error_kind.as_ref().map(|kind| {
        let area = if kind.starts_with("agent") || kind.contains("Agent") {
            "agent/"
        } else if kind.starts_with("verifier")
            || kind.contains("Verifier")
            || kind.contains("Reward")
        {
            "verifier/"
        } else {
            ""
        };
        let in_area = (!area.is_empty())
            .then(|| {
                files
                    .iter()
                    .find(|f| f.path[name.len() + 1..].starts_with(area) && is_text_name(&f.path))
            })
            .flatten();
        let log = in_area.map(|f| f.path.clone()).or_else(|| {
            ["exception.txt", "trial.log"]
                .iter()
                .map(|l| format!("{name}/{l}"))
                .find(|p| files.iter().any(|f| &f.path == p))
        });
        ErrorView {
            kind: kind.clone(),
            message: row.error_message.clone().unwrap_or_default(),
            log,
        }
    });
    let timings = r.get("phases").cloned().unwrap_or_else(|| {
        let mut m = serde_json::Map::new();
        for k in [
            "environment_setup",
            "agent_setup",
            "agent_execution",
            "verifier",
        ] {
            if let Some(v) = r.get(k).filter(|v| !v.is_null()) {
                m.insert(k.into(), v.clone());
            }
        }
        Value::Object(m)
    });
    let steps = r
        .get("step_results")
        .and_then(Value::as_array)
        .map(|a| {
            Value::Array(
                a.iter()
                    .map(|s| {
                        let mut rw = s.get("rewards").cloned().unwrap_or(Value::Null);
                        if rw.is_null() {
                            rw = s
                                .pointer("/verifier_result/rewards")
                                .cloned()
                                .unwrap_or(Value::Null);
                        }
                        serde_json::json!({
                            "step_name": s.get("step_name"),
                            "reward": s.get("reward"),
                            "rewards": rw,
                            "error": s.get("error").or_else(|| s.get("exception_info")),
                            "seconds": s.get("seconds"),
                        })
                    })
                    .collect(),
            )
        })
        .unwrap_or(Value::Array(vec![]));
    Some(TrialDetail {
        row,
        instruction,
        trajectory: traj,
        logs,
        artifacts,
        files,
        error,
        timings,
        steps,
        previous_tries: r
            .get("previous_tries")
            .cloned()
            .unwrap_or(Value::Array(vec![])),
    })
}
