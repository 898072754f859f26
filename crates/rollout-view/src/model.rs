//! Tolerant reading of job directories: rollout's own `result.json` shape, the Harbor fields
//! rollout adds to it, and Harbor's own job and trial directories. Nothing here fails on an
//! unknown or missing field: what cannot be read is shown as absent.

use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Largest JSON file read (a `result.json` or `trajectory.json` larger than this is refused).
pub const MAX_JSON_BYTES: u64 = 64 * 1024 * 1024;

/// One row of the trial table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrialRow {
    /// Directory name of the trial inside the job directory.
    pub name: String,
    pub task: String,
    pub agent: String,
    pub model: Option<String>,
    pub dataset: String,
    pub attempt: Option<u64>,
    /// `ok`, `error`, `cancelled` or `running`.
    pub status: &'static str,
    pub reward: Option<f64>,
    pub rewards: BTreeMap<String, f64>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub seconds: Option<f64>,
    /// Seconds per phase, rollout's phase names.
    pub phases: BTreeMap<String, f64>,
}

impl TrialRow {
    /// The reward counted in aggregates: a missing reward counts 0.
    pub fn score(&self) -> f64 {
        self.reward.unwrap_or(0.0)
    }

    pub fn counted(&self) -> bool {
        self.status == "ok" || self.status == "error"
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|| {
            // Harbor writes naive ISO times without an offset.
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        })
}

/// Seconds between two timestamps written as strings.
pub fn span(start: Option<&str>, end: Option<&str>) -> Option<f64> {
    let (a, b) = (parse_time(start?)?, parse_time(end?)?);
    Some((b - a).num_milliseconds() as f64 / 1000.0)
}

/// Read a JSON file of bounded size; `None` when absent, unreadable or not JSON.
pub fn read_json(path: &Path) -> Option<Value> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_JSON_BYTES {
        return None;
    }
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The top-level keys of a trial's `result.json` that [`trial_row`] reads; the rest of the file
/// (command outputs, environment, Harbor's copies) is skipped while parsing, never built.
#[derive(serde::Deserialize)]
struct RowFields {
    #[serde(default)]
    task_name: Value,
    #[serde(default)]
    task_id: Value,
    #[serde(default)]
    agent: Value,
    #[serde(default)]
    agent_info: Value,
    #[serde(default)]
    config: Value,
    #[serde(default)]
    dataset: Value,
    #[serde(default)]
    source: Value,
    #[serde(default)]
    attempt: Value,
    #[serde(default)]
    reward: Value,
    #[serde(default)]
    rewards: Value,
    #[serde(default)]
    verifier_result: Value,
    #[serde(default)]
    error: Value,
    #[serde(default)]
    exception_info: Value,
    #[serde(default)]
    phases: Value,
    #[serde(default)]
    environment_setup: Value,
    #[serde(default)]
    agent_setup: Value,
    #[serde(default)]
    agent_execution: Value,
    #[serde(default)]
    verifier: Value,
    #[serde(default)]
    started_at: Value,
    #[serde(default)]
    finished_at: Value,
    #[serde(default)]
    seconds: Value,
}

/// The trial row of the `result.json` at `path` (bounded as [`read_json`]); `None` when it
/// cannot be read. Parses only the keys the row needs; a file that does not fit that shape
/// (duplicate keys …) is read whole, so the row is the same as `trial_row(read_json(path))`.
pub fn read_trial_row(dir_name: &str, path: &Path) -> Option<TrialRow> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_JSON_BYTES {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    let v = match serde_json::from_slice::<RowFields>(&bytes) {
        Ok(f) => {
            let pairs = [
                ("task_name", f.task_name),
                ("task_id", f.task_id),
                ("agent", f.agent),
                ("agent_info", f.agent_info),
                ("config", f.config),
                ("dataset", f.dataset),
                ("source", f.source),
                ("attempt", f.attempt),
                ("reward", f.reward),
                ("rewards", f.rewards),
                ("verifier_result", f.verifier_result),
                ("error", f.error),
                ("exception_info", f.exception_info),
                ("phases", f.phases),
                ("environment_setup", f.environment_setup),
                ("agent_setup", f.agent_setup),
                ("agent_execution", f.agent_execution),
                ("verifier", f.verifier),
                ("started_at", f.started_at),
                ("finished_at", f.finished_at),
                ("seconds", f.seconds),
            ];
            Value::Object(
                pairs
                    .into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            )
        }
        Err(_) => serde_json::from_slice(&bytes).ok()?,
    };
    // A file that is JSON but not an object gives the row of an empty object, as before.
    Some(trial_row(dir_name, &v))
}

/// The numeric rewards of a trial: rollout's `rewards`, else Harbor's `verifier_result.rewards`.
fn rewards_of(v: &Value) -> BTreeMap<String, f64> {
    let map = v.get("rewards").and_then(Value::as_object).or_else(|| {
        v.pointer("/verifier_result/rewards")
            .and_then(Value::as_object)
    });
    map.map(|m| {
        m.iter()
            .filter_map(|(k, x)| num(x).map(|x| (k.clone(), x)))
            .collect()
    })
    .unwrap_or_default()
}

/// Build a trial row from a trial's `result.json` (any supported shape) and its directory name.
pub fn trial_row(dir_name: &str, v: &Value) -> TrialRow {
    let rewards = rewards_of(v);
    let reward = v
        .get("reward")
        .and_then(num)
        .or_else(|| rollout_core::result::main_reward(&rewards));
    let (error_kind, error_message) = if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        (
            e.get("type").and_then(Value::as_str).map(str::to_string),
            e.get("message").and_then(Value::as_str).map(str::to_string),
        )
    } else if let Some(e) = v.get("exception_info").filter(|e| !e.is_null()) {
        (
            Some(
                e.get("exception_type")
                    .and_then(Value::as_str)
                    .unwrap_or("exception")
                    .to_string(),
            ),
            e.get("exception_message")
                .and_then(Value::as_str)
                .map(str::to_string),
        )
    } else {
        (None, None)
    };
    let status = match error_kind.as_deref() {
        Some("cancelled") | Some("CancelledError") => "cancelled",
        Some(_) => "error",
        None => "ok",
    };
    let mut phases = BTreeMap::new();
    if let Some(p) = v.get("phases").and_then(Value::as_object) {
        for (k, t) in p {
            if let Some(s) = t.get("seconds").and_then(num).or_else(|| {
                span(
                    t.get("started_at").and_then(Value::as_str),
                    t.get("finished_at").and_then(Value::as_str),
                )
            }) {
                phases.insert(k.clone(), s);
            }
        }
    } else {
        for (harbor, ours) in [
            ("environment_setup", "environment_setup"),
            ("agent_setup", "agent_install"),
            ("agent_execution", "agent_run"),
            ("verifier", "verify"),
        ] {
            if let Some(t) = v.get(harbor) {
                if let Some(s) = span(
                    t.get("started_at").and_then(Value::as_str),
                    t.get("finished_at").and_then(Value::as_str),
                ) {
                    phases.insert(ours.to_string(), s);
                }
            }
        }
    }
    let started_at = v
        .get("started_at")
        .and_then(Value::as_str)
        .map(str::to_string);
    let finished_at = v
        .get("finished_at")
        .and_then(Value::as_str)
        .map(str::to_string);
    let seconds = v
        .get("seconds")
        .and_then(num)
        .or_else(|| span(started_at.as_deref(), finished_at.as_deref()));
    TrialRow {
        name: dir_name.to_string(),
        task: str_at(v, &["task_name"])
            .or_else(|| str_at(v, &["task_id", "path"]))
            .unwrap_or("?")
            .to_string(),
        agent: str_at(v, &["agent", "name"])
            .or_else(|| str_at(v, &["agent_info", "name"]))
            .or_else(|| str_at(v, &["config", "agent", "name"]))
            .unwrap_or("?")
            .to_string(),
        model: str_at(v, &["agent", "model_name"])
            .or_else(|| str_at(v, &["agent_info", "model_info", "name"]))
            .or_else(|| str_at(v, &["config", "agent", "model_name"]))
            .map(str::to_string),
        dataset: str_at(v, &["dataset"])
            .or_else(|| str_at(v, &["source"]))
            .unwrap_or("-")
            .to_string(),
        attempt: v.get("attempt").and_then(Value::as_u64),
        status,
        reward,
        rewards,
        error_kind,
        error_message,
        started_at,
        finished_at,
        seconds,
        phases,
    }
}

/// A trial that has started (its `config.json` exists) but has no `result.json` yet.
pub fn running_row(dir_name: &str, config: Option<&Value>) -> TrialRow {
    let empty = Value::Null;
    let c = config.unwrap_or(&empty);
    let mut row = trial_row(dir_name, c);
    row.status = "running";
    row.reward = None;
    row.rewards.clear();
    row.error_kind = None;
    row.error_message = None;
    row
}

/// One step of an agent's trajectory, normalised from rollout's format or ATIF.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Step {
    pub index: u64,
    /// `agent`, `user`, `system`, or `error`.
    pub source: String,
    pub text: String,
    pub reasoning: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    /// Observations not tied to a tool call.
    pub observations: Vec<String>,
    pub timestamp: Option<String>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub latency_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ToolCall {
    pub id: Option<String>,
    pub name: String,
    pub arguments: Value,
    pub output: Option<String>,
    pub seconds: Option<f64>,
}

/// A normalised trajectory.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Trajectory {
    /// `atif` or `rollout`.
    pub format: String,
    pub agent: Option<String>,
    pub model: Option<String>,
    pub instruction: Option<String>,
    pub steps: Vec<Step>,
    pub stop_reason: Option<String>,
    /// The file it was read from, relative to the trial directory.
    pub file: String,
}

fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("text").and_then(Value::as_str) {
                Some(t) => t.to_string(),
                None => format!(
                    "[{}]",
                    p.get("type").and_then(Value::as_str).unwrap_or("part")
                ),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Normalise a trajectory document; `None` when it is neither ATIF nor rollout's format.
pub fn trajectory(v: &Value, file: &str) -> Option<Trajectory> {
    let steps = v.get("steps")?.as_array()?;
    let atif = str_at(v, &["schema_version"]).is_some_and(|s| s.starts_with("ATIF"))
        || steps.first().is_some_and(|s| s.get("step_id").is_some());
    let mut t = Trajectory {
        file: file.to_string(),
        ..Default::default()
    };
    if atif {
        t.format = "atif".into();
        t.agent = str_at(v, &["agent", "name"]).map(str::to_string);
        t.model = str_at(v, &["agent", "model_name"]).map(str::to_string);
        t.stop_reason = v
            .pointer("/extra/stop_reason")
            .and_then(Value::as_str)
            .map(str::to_string);
        for (i, s) in steps.iter().enumerate() {
            let mut outputs: BTreeMap<String, String> = BTreeMap::new();
            let mut observations = Vec::new();
            for r in s
                .pointer("/observation/results")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let text = content_text(r.get("content").unwrap_or(&Value::Null));
                match r.get("source_call_id").and_then(Value::as_str) {
                    Some(id) => {
                        outputs.insert(id.to_string(), text);
                    }
                    None => observations.push(text),
                }
            }
            let tool_calls = s
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| {
                    let id = c
                        .get("tool_call_id")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    ToolCall {
                        output: id.as_ref().and_then(|id| outputs.remove(id)),
                        id,
                        name: c
                            .get("function_name")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_string(),
                        arguments: c.get("arguments").cloned().unwrap_or(Value::Null),
                        seconds: None,
                    }
                })
                .collect();
            // Results whose call id matched no call still show.
            observations.extend(outputs.into_values());
            let source = s
                .get("source")
                .and_then(Value::as_str)
                .unwrap_or("agent")
                .to_string();
            let text = content_text(s.get("message").unwrap_or(&Value::Null));
            if t.instruction.is_none() && source == "user" {
                t.instruction = Some(text.clone());
            }
            t.steps.push(Step {
                index: s
                    .get("step_id")
                    .and_then(Value::as_u64)
                    .unwrap_or(i as u64 + 1),
                source,
                text,
                reasoning: s
                    .get("reasoning_content")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                tool_calls,
                observations,
                timestamp: s
                    .get("timestamp")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                input_tokens: s.pointer("/metrics/prompt_tokens").and_then(Value::as_u64),
                output_tokens: s
                    .pointer("/metrics/completion_tokens")
                    .and_then(Value::as_u64),
                latency_ms: None,
            });
        }
    } else {
        t.format = "rollout".into();
        t.agent = v.get("agent").and_then(Value::as_str).map(str::to_string);
        t.model = v.get("model").and_then(Value::as_str).map(str::to_string);
        t.instruction = v
            .get("instruction")
            .and_then(Value::as_str)
            .map(str::to_string);
        t.stop_reason = v
            .get("stop_reason")
            .and_then(Value::as_str)
            .map(str::to_string);
        for (i, s) in steps.iter().enumerate() {
            let error = s.get("error").filter(|e| !e.is_null());
            let text = match error {
                Some(e) => match e {
                    Value::String(m) => m.clone(),
                    e => format!(
                        "{}: {}",
                        e.get("type").and_then(Value::as_str).unwrap_or("error"),
                        e.get("message").and_then(Value::as_str).unwrap_or("")
                    ),
                },
                None => s
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            };
            t.steps.push(Step {
                index: s
                    .get("turn")
                    .and_then(Value::as_u64)
                    .unwrap_or(i as u64 + 1),
                source: if error.is_some() { "error" } else { "agent" }.into(),
                text,
                reasoning: None,
                tool_calls: s
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|c| ToolCall {
                        id: c.get("id").and_then(Value::as_str).map(str::to_string),
                        name: c
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_string(),
                        arguments: c.get("input").cloned().unwrap_or(Value::Null),
                        output: c.get("output").map(content_text),
                        seconds: c.get("seconds").and_then(num),
                    })
                    .collect(),
                observations: Vec::new(),
                timestamp: None,
                input_tokens: s.get("input_tokens").and_then(Value::as_u64),
                output_tokens: s.get("output_tokens").and_then(Value::as_u64),
                latency_ms: s.get("latency_ms").and_then(Value::as_u64),
            });
        }
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reading_only_the_row_keys_gives_the_row_of_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let full = json!({"trial_name": "t__1", "task_name": "hello",
            "agent": {"name": "oracle", "model_name": "m"}, "dataset": "d", "attempt": 2,
            "rewards": {"reward": 0.5, "style": true}, "reward": 0.5,
            "error": {"type": "verifier_timeout", "message": "slow"}, "seconds": 2.5,
            "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:02.5Z",
            "phases": {"verify": {"seconds": 1.5}},
            "agent_run": {"stdout": "x".repeat(10_000)}, "environment": {"type": "docker"},
            "agent_info": {"name": "oracle", "model_info": {"name": "m"}},
            "verifier_result": {"rewards": {"reward": 0.5}}, "exception_info": null,
            "agent_execution": {"started_at": "2026-01-01T00:00:00", "finished_at": "2026-01-01T00:00:01"}});
        let dup = r#"{"task_name": "a", "task_name": "b", "reward": 1}"#;
        for (i, text) in [
            full.to_string(),
            dup.to_string(),
            "[1, 2]".into(),
            "{\"task_name\": 3, \"reward\": \"x\"}".into(),
        ]
        .iter()
        .enumerate()
        {
            let p = dir.path().join(format!("{i}.json"));
            std::fs::write(&p, text).unwrap();
            let whole = read_json(&p).map(|v| trial_row("t", &v));
            assert_eq!(read_trial_row("t", &p), whole, "{text}");
        }
        std::fs::write(dir.path().join("bad.json"), "{").unwrap();
        assert_eq!(read_trial_row("t", &dir.path().join("bad.json")), None);
    }

    #[test]
    fn rollout_and_harbor_trials_read_alike() {
        let ours = json!({"trial_name": "t__1", "task_name": "hello", "agent": {"name": "oracle"},
            "rewards": {"reward": 1.0}, "reward": 1.0, "error": null, "seconds": 2.5, "attempt": 1,
            "phases": {"agent_run": {"seconds": 1.5, "started_at": "x", "finished_at": "y"}}});
        let harbor = json!({"trial_name": "t__1", "task_name": "hello",
            "agent_info": {"name": "oracle", "version": "1", "model_info": {"name": "m"}},
            "verifier_result": {"rewards": {"reward": 1}},
            "exception_info": null,
            "started_at": "2026-01-01T00:00:00", "finished_at": "2026-01-01T00:00:02.500000",
            "agent_execution": {"started_at": "2026-01-01T00:00:00", "finished_at": "2026-01-01T00:00:01.5"}});
        let a = trial_row("t__1", &ours);
        let b = trial_row("t__1", &harbor);
        assert_eq!((a.reward, b.reward), (Some(1.0), Some(1.0)));
        assert_eq!((a.status, b.status), ("ok", "ok"));
        assert_eq!(a.seconds, b.seconds);
        assert_eq!(a.phases, b.phases);
        assert_eq!(b.model.as_deref(), Some("m"));
        let failed = json!({"exception_info": {"exception_type": "AgentTimeoutError", "exception_message": "slow"}});
        let f = trial_row("x", &failed);
        assert_eq!(
            (f.status, f.error_kind.as_deref(), f.task.as_str()),
            ("error", Some("AgentTimeoutError"), "?")
        );
    }

    #[test]
    fn both_trajectory_formats_give_steps_with_tool_outputs() {
        let ours = json!({"schema_version": "1.0", "agent": "llm", "model": "m", "instruction": "do it",
            "steps": [{"turn": 1, "text": "", "tool_calls": [{"id": "c1", "name": "bash", "input": {"command": "ls"}, "output": "a\nb", "seconds": 0.1}]},
                      {"turn": 2, "text": "done"}], "stop_reason": "final_answer"});
        let atif = json!({"schema_version": "ATIF-v1.6", "agent": {"name": "llm", "version": "1", "model_name": "m"},
            "steps": [{"step_id": 1, "source": "user", "message": "do it"},
                      {"step_id": 2, "source": "agent", "message": "", "tool_calls": [{"tool_call_id": "c1", "function_name": "bash", "arguments": {"command": "ls"}}],
                       "observation": {"results": [{"source_call_id": "c1", "content": "a\nb"}]}},
                      {"step_id": 3, "source": "agent", "message": "done"}]});
        let a = trajectory(&ours, "agent/trajectory.json").unwrap();
        let b = trajectory(&atif, "agent/trajectory.json").unwrap();
        assert_eq!(a.instruction, b.instruction);
        let call = |t: &Trajectory| {
            t.steps
                .iter()
                .flat_map(|s| &s.tool_calls)
                .map(|c| (c.name.clone(), c.output.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            call(&a),
            vec![("bash".to_string(), Some("a\nb".to_string()))]
        );
        assert_eq!(call(&a), call(&b));
        assert_eq!(a.steps.last().unwrap().text, "done");
        assert_eq!(b.steps.last().unwrap().text, "done");
        assert!(trajectory(&json!({"x": 1}), "f").is_none());
    }
}
