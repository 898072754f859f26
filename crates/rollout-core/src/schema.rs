//! JSON Schemas of the files users write and the files rollout writes (`rollout schema …`),
//! generated from the Rust types they are parsed into or serialized from, so they cannot drift
//! from the code. Committed copies live in docs/schemas/.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema};

/// The documents `rollout schema` describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Document {
    /// A job file (`job.yaml`, YAML or JSON).
    Job,
    /// A task's `task.toml` (read as TOML, validated as the equivalent JSON).
    Task,
    /// A trial's `result.json`.
    Result,
    /// A job directory's `result.json`.
    JobResult,
}

impl Document {
    pub const ALL: [Document; 4] = [Self::Job, Self::Task, Self::Result, Self::JobResult];

    /// The name given on the command line (`rollout schema NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Job => "job",
            Self::Task => "task",
            Self::Result => "result",
            Self::JobResult => "job-result",
        }
    }

    /// The committed copy under docs/schemas/.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Job => "job.schema.json",
            Self::Task => "task.schema.json",
            Self::Result => "result.schema.json",
            Self::JobResult => "job-result.schema.json",
        }
    }

    /// The schema.
    pub fn schema(self) -> Schema {
        let mut s = self.generated();
        for (doc, def, canonical, alias) in ALIASES {
            if *doc == self {
                add_alias(&mut s, def, canonical, alias);
            }
        }
        s
    }

    fn generated(self) -> Schema {
        match self {
            Self::Job => titled::<crate::JobConfig>(
                "rollout job file",
                "A job file (YAML or JSON): tasks, agents, attempts, concurrency.",
            ),
            Self::Task => crate::task_config::task_toml_schema(),
            Self::Result => titled::<crate::TrialResult>(
                "rollout trial result.json",
                "A trial directory's result.json. rollout also writes Harbor's TrialResult \
                 fields next to these (docs/results.md); they are allowed, not listed.",
            ),
            Self::JobResult => titled::<crate::JobResult>(
                "rollout job result.json",
                "A job directory's result.json. rollout also writes Harbor's JobResult \
                 fields next to these (docs/results.md); they are allowed, not listed.",
            ),
        }
    }

    /// The schema as pretty JSON with a final newline (what `rollout schema` prints).
    pub fn to_pretty_json(self) -> String {
        let mut s = serde_json::to_string_pretty(&self.schema()).expect("a schema serializes");
        s.push('\n');
        s
    }
}

/// The `#[serde(alias)]` spellings the parser accepts, which schemars does not list:
/// (document, `$defs` entry or "" for the root, canonical name, alias). A test checks that
/// every alias in this crate's source is here.
const ALIASES: &[(Document, &str, &str, &str)] = &[
    (
        Document::Job,
        "",
        "agent_install_timeout_multiplier",
        "agent_setup_timeout_multiplier",
    ),
    (
        Document::Job,
        "",
        "build_timeout_multiplier",
        "environment_build_timeout_multiplier",
    ),
    (Document::Job, "LogLevel", "warn", "warning"),
    (Document::Job, "MetricKind", "uv-script", "uv_script"),
    (Document::Job, "AgentSpec", "model_name", "model"),
    (
        Document::Job,
        "AgentSpec",
        "override_install_timeout_sec",
        "override_setup_timeout_sec",
    ),
    (Document::Task, "McpTransport", "streamable-http", "http"),
    (
        Document::Task,
        "Agent",
        "install_timeout_sec",
        "setup_timeout_sec",
    ),
    (Document::Task, "Healthcheck", "command", "cmd"),
    (Document::Task, "Healthcheck", "command", "test"),
];

/// Accept `alias` wherever `canonical` is accepted in `def`: a property, or an enum value.
fn add_alias(schema: &mut Schema, def: &str, canonical: &str, alias: &str) {
    let root = schema.as_object_mut().expect("a schema object");
    let target = if def.is_empty() {
        Some(root)
    } else {
        root.get_mut("$defs")
            .and_then(|d| d.get_mut(def))
            .and_then(serde_json::Value::as_object_mut)
    };
    let Some(t) = target else {
        panic!("schema alias: no definition {def:?} (rename it in ALIASES)");
    };
    if let Some(props) = t.get_mut("properties").and_then(|p| p.as_object_mut()) {
        if let Some(p) = props.get(canonical).cloned() {
            props.insert(alias.to_string(), p);
            require_one_of(t, canonical, alias);
            return;
        }
    }
    if let Some(values) = t.get_mut("enum").and_then(|e| e.as_array_mut()) {
        if values.iter().any(|v| v == canonical) {
            values.push(alias.into());
            return;
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(list) = t.get_mut(key).and_then(|e| e.as_array_mut()) {
            let hit = list.iter().find_map(|v| {
                let is = v.get("const").is_some_and(|c| c == canonical)
                    || v.get("enum")
                        .and_then(|e| e.as_array())
                        .is_some_and(|e| e.iter().any(|x| x == canonical));
                is.then(|| v.clone())
            });
            if let Some(mut v) = hit {
                let o = v.as_object_mut().expect("object");
                o.remove("enum");
                o.insert("const".into(), alias.into());
                list.push(v);
                return;
            }
        }
    }
    panic!("schema alias: {canonical:?} not found in {def:?}");
}

/// A required property with an alias: one of the spellings is required.
fn require_one_of(
    t: &mut serde_json::Map<String, serde_json::Value>,
    canonical: &str,
    alias: &str,
) {
    let mut removed = false;
    if let Some(req) = t.get_mut("required").and_then(|r| r.as_array_mut()) {
        let was = req.len();
        req.retain(|r| r != canonical);
        removed = req.len() != was;
        if req.is_empty() {
            t.remove("required");
        }
    }
    let list = t
        .entry("anyOf")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()))
        .as_array_mut()
        .expect("anyOf is a list");
    if removed {
        list.push(serde_json::json!({ "required": [canonical] }));
    }
    if removed || list.iter().any(|v| v["required"][0] == canonical) {
        list.push(serde_json::json!({ "required": [alias] }));
    }
    if list.is_empty() {
        t.remove("anyOf");
    }
}

pub(crate) fn generator() -> schemars::SchemaGenerator {
    SchemaSettings::draft2020_12().into_generator()
}

fn titled<T: JsonSchema>(title: &str, description: &str) -> Schema {
    let mut s = generator().into_root_schema_for::<T>();
    s.insert("title".into(), title.into());
    s.insert("description".into(), description.into());
    s
}
