//! Tolerant reading of job directories: rollout's own `result.json` shape, the Harbor fields
//! rollout adds to it, and Harbor's own job and trial directories. Nothing here fails on an
//! unknown or missing field: what cannot be read is shown as absent.

use serde::Serialize;
use serde_json::Value;
use std::borrow::Cow;
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

/// The texts of a result that [`trial_row`] reads.
#[derive(Clone, Copy)]
enum Text {
    TaskName,
    TaskIdPath,
    AgentName,
    AgentModel,
    AgentInfoName,
    AgentInfoModel,
    ConfigAgentName,
    ConfigAgentModel,
    Dataset,
    Source,
    StartedAt,
    FinishedAt,
}

impl Text {
    fn path(self) -> &'static [&'static str] {
        match self {
            Text::TaskName => &["task_name"],
            Text::TaskIdPath => &["task_id", "path"],
            Text::AgentName => &["agent", "name"],
            Text::AgentModel => &["agent", "model_name"],
            Text::AgentInfoName => &["agent_info", "name"],
            Text::AgentInfoModel => &["agent_info", "model_info", "name"],
            Text::ConfigAgentName => &["config", "agent", "name"],
            Text::ConfigAgentModel => &["config", "agent", "model_name"],
            Text::Dataset => &["dataset"],
            Text::Source => &["source"],
            Text::StartedAt => &["started_at"],
            Text::FinishedAt => &["finished_at"],
        }
    }
}

/// A phase's timing as read: (seconds, started_at, finished_at).
type Timing<'a> = (Option<f64>, Option<&'a str>, Option<&'a str>);

/// What [`trial_row`] reads of a result: implemented over a parsed JSON value of any shape, and
/// over [`RowFields`], the typed fields of the shapes rollout and Harbor write (parsed without
/// building the rest of the file). One row logic over both, so they cannot drift apart.
trait RowSource {
    fn text(&self, t: Text) -> Option<&str>;
    fn reward(&self) -> Option<f64>;
    fn seconds(&self) -> Option<f64>;
    fn attempt(&self) -> Option<u64>;
    /// rollout's `rewards` when it is an object, else Harbor's `verifier_result.rewards`.
    fn rewards(&self) -> BTreeMap<String, f64>;
    /// rollout's `error` when present and not null: (type, message).
    fn error(&self) -> Option<(Option<&str>, Option<&str>)>;
    /// Harbor's `exception_info` when present and not null: (type, message).
    fn exception(&self) -> Option<(Option<&str>, Option<&str>)>;
    /// rollout's `phases` when it is an object: (name, timing) of each.
    fn phases(&self) -> Option<Vec<(&str, Timing<'_>)>>;
    /// One of Harbor's timing blocks (`environment_setup`, `agent_setup`, `agent_execution`,
    /// `verifier`).
    fn timing(&self, key: &str) -> Timing<'_>;
}

fn timing_of(t: &Value) -> Timing<'_> {
    (
        t.get("seconds").and_then(num),
        t.get("started_at").and_then(Value::as_str),
        t.get("finished_at").and_then(Value::as_str),
    )
}

impl RowSource for Value {
    fn text(&self, t: Text) -> Option<&str> {
        str_at(self, t.path())
    }
    fn reward(&self) -> Option<f64> {
        self.get("reward").and_then(num)
    }
    fn seconds(&self) -> Option<f64> {
        self.get("seconds").and_then(num)
    }
    fn attempt(&self) -> Option<u64> {
        self.get("attempt").and_then(Value::as_u64)
    }
    fn rewards(&self) -> BTreeMap<String, f64> {
        let map = self.get("rewards").and_then(Value::as_object).or_else(|| {
            self.pointer("/verifier_result/rewards")
                .and_then(Value::as_object)
        });
        map.map(|m| {
            m.iter()
                .filter_map(|(k, x)| num(x).map(|x| (k.clone(), x)))
                .collect()
        })
        .unwrap_or_default()
    }
    fn error(&self) -> Option<(Option<&str>, Option<&str>)> {
        let e = self.get("error").filter(|e| !e.is_null())?;
        Some((
            e.get("type").and_then(Value::as_str),
            e.get("message").and_then(Value::as_str),
        ))
    }
    fn exception(&self) -> Option<(Option<&str>, Option<&str>)> {
        let e = self.get("exception_info").filter(|e| !e.is_null())?;
        Some((
            e.get("exception_type").and_then(Value::as_str),
            e.get("exception_message").and_then(Value::as_str),
        ))
    }
    fn phases(&self) -> Option<Vec<(&str, Timing<'_>)>> {
        let p = self.get("phases").and_then(Value::as_object)?;
        Some(p.iter().map(|(k, t)| (k.as_str(), timing_of(t))).collect())
    }
    fn timing(&self, key: &str) -> Timing<'_> {
        self.get(key).map_or((None, None, None), timing_of)
    }
}

/// The keys of a trial's `result.json` that [`trial_row`] reads, typed as rollout and Harbor
/// write them; every other key is skipped while parsing, never built. A file with another
/// shape (a number where a text is expected, duplicate keys …) fails this parse and is read
/// whole as a JSON value instead, so a row never depends on which of the two read it.
#[derive(serde::Deserialize)]
struct RowFields<'a> {
    #[serde(default, borrow)]
    task_name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    task_id: Option<PathPart<'a>>,
    #[serde(default, borrow)]
    agent: Option<AgentPart<'a>>,
    #[serde(default, borrow)]
    agent_info: Option<AgentInfoPart<'a>>,
    #[serde(default, borrow)]
    config: Option<ConfigPart<'a>>,
    #[serde(default, borrow)]
    dataset: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(default)]
    attempt: Option<u64>,
    #[serde(default)]
    reward: Option<f64>,
    #[serde(default)]
    rewards: Option<BTreeMap<String, f64>>,
    #[serde(default)]
    verifier_result: Option<VerifierPart>,
    #[serde(default, borrow)]
    error: Option<ErrorPart<'a>>,
    #[serde(default, borrow)]
    exception_info: Option<ExceptionPart<'a>>,
    #[serde(default, borrow)]
    phases: Option<BTreeMap<Cow<'a, str>, TimingPart<'a>>>,
    #[serde(default, borrow)]
    environment_setup: Option<TimingPart<'a>>,
    #[serde(default, borrow)]
    agent_setup: Option<TimingPart<'a>>,
    #[serde(default, borrow)]
    agent_execution: Option<TimingPart<'a>>,
    #[serde(default, borrow)]
    verifier: Option<TimingPart<'a>>,
    #[serde(default, borrow)]
    started_at: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    finished_at: Option<Cow<'a, str>>,
    #[serde(default)]
    seconds: Option<f64>,
}

/// `task_id`.
#[derive(serde::Deserialize)]
struct PathPart<'a> {
    #[serde(default, borrow)]
    path: Option<Cow<'a, str>>,
}

/// rollout's `agent` and Harbor's `config.agent`.
#[derive(serde::Deserialize)]
struct AgentPart<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    model_name: Option<Cow<'a, str>>,
}

/// Harbor's `agent_info`.
#[derive(serde::Deserialize)]
struct AgentInfoPart<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    model_info: Option<NamePart<'a>>,
}

#[derive(serde::Deserialize)]
struct NamePart<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
}

/// Harbor's trial `config`.
#[derive(serde::Deserialize)]
struct ConfigPart<'a> {
    #[serde(default, borrow)]
    agent: Option<AgentPart<'a>>,
}

/// Harbor's `verifier_result`.
#[derive(serde::Deserialize)]
struct VerifierPart {
    #[serde(default)]
    rewards: Option<BTreeMap<String, f64>>,
}

/// rollout's `error`.
#[derive(serde::Deserialize)]
struct ErrorPart<'a> {
    #[serde(default, borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

/// Harbor's `exception_info`.
#[derive(serde::Deserialize)]
struct ExceptionPart<'a> {
    #[serde(default, borrow)]
    exception_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    exception_message: Option<Cow<'a, str>>,
}

/// A phase's timing: rollout's `phases.*`, Harbor's timing blocks, rollout's `verifier`
/// outcome (whose command output is skipped).
#[derive(serde::Deserialize)]
struct TimingPart<'a> {
    #[serde(default)]
    seconds: Option<f64>,
    #[serde(default, borrow)]
    started_at: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    finished_at: Option<Cow<'a, str>>,
}

impl TimingPart<'_> {
    fn timing(&self) -> Timing<'_> {
        (
            self.seconds,
            self.started_at.as_deref(),
            self.finished_at.as_deref(),
        )
    }
}

impl RowSource for RowFields<'_> {
    fn text(&self, t: Text) -> Option<&str> {
        let agent = self.agent.as_ref();
        let info = self.agent_info.as_ref();
        let config = self.config.as_ref().and_then(|c| c.agent.as_ref());
        match t {
            Text::TaskName => self.task_name.as_deref(),
            Text::TaskIdPath => self.task_id.as_ref()?.path.as_deref(),
            Text::AgentName => agent?.name.as_deref(),
            Text::AgentModel => agent?.model_name.as_deref(),
            Text::AgentInfoName => info?.name.as_deref(),
            Text::AgentInfoModel => info?.model_info.as_ref()?.name.as_deref(),
            Text::ConfigAgentName => config?.name.as_deref(),
            Text::ConfigAgentModel => config?.model_name.as_deref(),
            Text::Dataset => self.dataset.as_deref(),
            Text::Source => self.source.as_deref(),
            Text::StartedAt => self.started_at.as_deref(),
            Text::FinishedAt => self.finished_at.as_deref(),
        }
    }
    fn reward(&self) -> Option<f64> {
        self.reward
    }
    fn seconds(&self) -> Option<f64> {
        self.seconds
    }
    fn attempt(&self) -> Option<u64> {
        self.attempt
    }
    fn rewards(&self) -> BTreeMap<String, f64> {
        self.rewards
            .clone()
            .or_else(|| self.verifier_result.as_ref()?.rewards.clone())
            .unwrap_or_default()
    }
    fn error(&self) -> Option<(Option<&str>, Option<&str>)> {
        let e = self.error.as_ref()?;
        Some((e.kind.as_deref(), e.message.as_deref()))
    }
    fn exception(&self) -> Option<(Option<&str>, Option<&str>)> {
        let e = self.exception_info.as_ref()?;
        Some((e.exception_type.as_deref(), e.exception_message.as_deref()))
    }
    fn phases(&self) -> Option<Vec<(&str, Timing<'_>)>> {
        let p = self.phases.as_ref()?;
        Some(p.iter().map(|(k, t)| (k.as_ref(), t.timing())).collect())
    }
    fn timing(&self, key: &str) -> Timing<'_> {
        let t = match key {
            "environment_setup" => &self.environment_setup,
            "agent_setup" => &self.agent_setup,
            "agent_execution" => &self.agent_execution,
            "verifier" => &self.verifier,
            _ => &None,
        };
        t.as_ref().map_or((None, None, None), TimingPart::timing)
    }
}

/// The trial row of the `result.json` at `path` (bounded as [`read_json`]); `None` when it
/// cannot be read.
pub fn read_trial_row(dir_name: &str, path: &Path) -> Option<TrialRow> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_JSON_BYTES {
        return None;
    }
    trial_row_of_bytes(dir_name, &std::fs::read(path).ok()?)
}

/// The trial row of a `result.json`'s bytes; `None` when they are not JSON. The typed fields
/// are tried first; a file of another shape is read whole, with the same row logic.
pub fn trial_row_of_bytes(dir_name: &str, bytes: &[u8]) -> Option<TrialRow> {
    match serde_json::from_slice::<RowFields>(bytes) {
        Ok(f) => Some(row_of(dir_name, &f)),
        // A file that is JSON but not an object gives the row of an empty object, as before.
        Err(_) => Some(trial_row(
            dir_name,
            &serde_json::from_slice::<Value>(bytes).ok()?,
        )),
    }
}

/// Build a trial row from a trial's `result.json` (any supported shape) and its directory name.
pub fn trial_row(dir_name: &str, v: &Value) -> TrialRow {
    row_of(dir_name, v)
}

fn row_of(dir_name: &str, v: &impl RowSource) -> TrialRow {
    let rewards = v.rewards();
    let reward = v
        .reward()
        .or_else(|| rollout_core::result::main_reward(&rewards));
    let (error_kind, error_message) = if let Some((kind, message)) = v.error() {
        (kind.map(str::to_string), message.map(str::to_string))
    } else if let Some((kind, message)) = v.exception() {
        (
            Some(kind.unwrap_or("exception").to_string()),
            message.map(str::to_string),
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
    if let Some(p) = v.phases() {
        for (k, (seconds, started, finished)) in p {
            if let Some(s) = seconds.or_else(|| span(started, finished)) {
                phases.insert(k.to_string(), s);
            }
        }
    } else {
        for (harbor, ours) in [
            ("environment_setup", "environment_setup"),
            ("agent_setup", "agent_install"),
            ("agent_execution", "agent_run"),
            ("verifier", "verify"),
        ] {
            let (_, started, finished) = v.timing(harbor);
            if let Some(s) = span(started, finished) {
                phases.insert(ours.to_string(), s);
            }
        }
    }
    let started_at = v.text(Text::StartedAt).map(str::to_string);
    let finished_at = v.text(Text::FinishedAt).map(str::to_string);
    let seconds = v
        .seconds()
        .or_else(|| span(started_at.as_deref(), finished_at.as_deref()));
    TrialRow {
        name: dir_name.to_string(),
        task: v
            .text(Text::TaskName)
            .or_else(|| v.text(Text::TaskIdPath))
            .unwrap_or("?")
            .to_string(),
        agent: v
            .text(Text::AgentName)
            .or_else(|| v.text(Text::AgentInfoName))
            .or_else(|| v.text(Text::ConfigAgentName))
            .unwrap_or("?")
            .to_string(),
        model: v
            .text(Text::AgentModel)
            .or_else(|| v.text(Text::AgentInfoModel))
            .or_else(|| v.text(Text::ConfigAgentModel))
            .map(str::to_string),
        dataset: v
            .text(Text::Dataset)
            .or_else(|| v.text(Text::Source))
            .unwrap_or("-")
            .to_string(),
        attempt: v.attempt(),
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

    /// Random results mixing every shape each key the row reads can take (texts with escapes,
    /// numbers, booleans, nulls, objects, arrays, duplicate keys): the typed read and the whole
    /// read give the same row, whichever path a file takes.
    #[test]
    fn typed_and_whole_reads_agree_on_random_results() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        /// A scalar for `key`: mostly of its real type, sometimes any.
        fn scalar(key: &str, next: &mut dyn FnMut(u64) -> u64) -> String {
            const TEXTS: [&str; 4] = [
                "\"a\"",
                "\"with \\\"escape\\\"\\n\"",
                "\"cancelled\"",
                "\"CancelledError\"",
            ];
            const TIMES: [&str; 3] = [
                "\"2026-01-01T00:00:00Z\"",
                "\"2026-01-01T00:00:03.5\"",
                "\"not a time\"",
            ];
            const NUMBERS: [&str; 4] = ["3", "0.5", "-1.5", "1e400"];
            let pick = |set: &[&str], next: &mut dyn FnMut(u64) -> u64| {
                set[next(set.len() as u64) as usize].to_string()
            };
            if next(4) > 0 {
                match key {
                    "started_at" | "finished_at" => return pick(&TIMES, next),
                    "seconds" | "reward" | "attempt" | "tests" => return pick(&NUMBERS, next),
                    _ => return pick(&TEXTS, next),
                }
            }
            match next(6) {
                0 => "null".into(),
                1 => "true".into(),
                2 => "3".into(),
                3 => "[1]".into(),
                4 => pick(&TIMES, next),
                _ => pick(&TEXTS, next),
            }
        }
        /// The keys a value under `key` may hold (its real ones and a stranger).
        fn keys_under(key: &str) -> &'static [&'static str] {
            match key {
                "task_id" => &["path", "x"],
                "agent" => &["name", "model_name", "x"],
                "agent_info" => &["name", "model_info", "x"],
                "model_info" => &["name", "x"],
                "config" => &["agent", "x"],
                "verifier_result" => &["rewards", "x"],
                "rewards" => &["reward", "tests"],
                "error" => &["type", "message", "x"],
                "exception_info" => &["exception_type", "exception_message", "x"],
                "phases" => &["verify", "agent_run"],
                _ => &["started_at", "finished_at", "seconds", "x"],
            }
        }
        /// A value for `key`: mostly of the shape rollout and Harbor write, sometimes any
        /// scalar; objects of up to 4 keys (repeats make duplicate keys).
        fn value_for(key: &str, depth: u32, next: &mut dyn FnMut(u64) -> u64) -> String {
            let leaf = matches!(
                key,
                "task_name"
                    | "dataset"
                    | "source"
                    | "attempt"
                    | "reward"
                    | "started_at"
                    | "finished_at"
                    | "seconds"
                    | "name"
                    | "model_name"
                    | "path"
                    | "type"
                    | "message"
                    | "exception_type"
                    | "exception_message"
                    | "tests"
                    | "x"
            );
            if leaf || depth > 3 || next(8) == 0 {
                return scalar(key, next);
            }
            let keys = keys_under(key);
            let mut parts = Vec::new();
            for _ in 0..next(4) + 1 {
                let k = keys[next(keys.len() as u64) as usize];
                parts.push(format!("\"{k}\": {}", value_for(k, depth + 1, next)));
            }
            format!("{{{}}}", parts.join(", "))
        }
        let top_keys = [
            "task_name",
            "task_id",
            "agent",
            "agent_info",
            "config",
            "dataset",
            "source",
            "attempt",
            "reward",
            "rewards",
            "verifier_result",
            "error",
            "exception_info",
            "phases",
            "environment_setup",
            "agent_setup",
            "agent_execution",
            "verifier",
            "started_at",
            "finished_at",
            "seconds",
            "other",
        ];
        let mut typed = 0;
        for _ in 0..4000 {
            let mut parts = Vec::new();
            for _ in 0..next(8) {
                let k = top_keys[next(top_keys.len() as u64) as usize];
                parts.push(format!("\"{k}\": {}", value_for(k, 0, &mut next)));
            }
            let text = format!("{{{}}}", parts.join(", "));
            // A number out of range cannot be built as a value; where the row does not read
            // it, the typed read skips it and still gives the row, which is all it promises.
            let Ok(whole) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            typed += usize::from(serde_json::from_str::<RowFields>(&text).is_ok());
            assert_eq!(
                trial_row_of_bytes("t", text.as_bytes()),
                Some(trial_row("t", &whole)),
                "{text}"
            );
        }
        // Both paths were exercised.
        assert!(typed > 400 && typed < 3600, "{typed} of 4000 read typed");
    }

    /// What rollout writes today reads through the typed fields (the fast path).
    #[test]
    fn rollout_results_read_typed() {
        let dir = tempfile::tempdir().unwrap();
        crate::synth::write_job(&dir.path().join("j"), "j", 40, 4, 7).unwrap();
        let mut n = 0;
        for e in std::fs::read_dir(dir.path().join("j")).unwrap().flatten() {
            let p = e.path().join("result.json");
            if e.path().is_dir() && p.is_file() {
                let bytes = std::fs::read(&p).unwrap();
                serde_json::from_slice::<RowFields>(&bytes)
                    .unwrap_or_else(|err| panic!("{}: {err}", p.display()));
                n += 1;
            }
        }
        assert_eq!(n, 40);
    }

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
        // Harbor's shape: the agent and model only in `config`, rewards only in
        // `verifier_result`, each next to large blocks the row does not read.
        let harbor = json!({"task_name": "hello", "trial_name": "t__2",
            "config": {"agent": {"name": "claude-code", "model_name": "anthropic/m", "kwargs": {"k": "v".repeat(5_000)}},
                       "environment": {"type": "docker"}, "verifier": {"disable": false}},
            "verifier_result": {"rewards": {"reward": 1, "tests": 0.5}, "extra": [1, 2, 3]},
            "agent_result": {"n_input_tokens": 10, "metadata": {"log": "y".repeat(5_000)}}});
        for (i, text) in [
            full.to_string(),
            dup.to_string(),
            harbor.to_string(),
            // Blocks of other shapes than Harbor's: the whole file is read, the row the same.
            r#"{"config": "a string", "verifier_result": [1], "reward": 1}"#.into(),
            r#"{"config": {"agent": "x"}, "verifier_result": {"rewards": null}}"#.into(),
            r#"{"config": null, "verifier_result": null, "agent": {"name": "a"}}"#.into(),
            r#"{"agent": "a", "error": "boom", "phases": [1], "task_id": "t"}"#.into(),
            r#"{"error": {}, "exception_info": {"exception_type": 3}, "phases": {}}"#.into(),
            r#"{"error": null, "exception_info": {"exception_message": "m"}, "phases": null,
                "agent_execution": {"started_at": "2026-01-01T00:00:00", "finished_at": "2026-01-01T00:00:03", "stdout": "x"}}"#.into(),
            r#"{"agent_info": {"name": "n", "model_info": "m"}, "verifier": "v"}"#.into(),
            r#"{"agent_info": {"model_info": {"name": "m2"}}, "task_id": {"path": "p"}, "phases": {"x": 5}}"#.into(),
            r#"{"phases": {"verify": {"started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:02Z", "seconds": null}}}"#.into(),
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
        let h = read_trial_row("t", &dir.path().join("2.json")).unwrap();
        assert_eq!(
            (h.agent.as_str(), h.model.as_deref()),
            ("claude-code", Some("anthropic/m"))
        );
        assert_eq!((h.reward, h.rewards.get("tests")), (Some(1.0), Some(&0.5)));
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
