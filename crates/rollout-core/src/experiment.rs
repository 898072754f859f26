//! Experiment files in the AgentLab shape (FORMATS.md §5, docs/experiments.md).
//!
//! ```yaml
//! experiment: {id: swe_smoke, name: "…"}
//! dataset: {path: tasks.jsonl, limit: 10}          # task_boundary_v2 rows
//! design: {replications: 1, max_concurrency: 2, random_seed: 7, shuffle_tasks: true}
//! runtime:
//!   agent:
//!     command: [/opt/agent/bin/run, --task, "$TASK_ID"]   # or one shell string
//!     image_source: per_task                      # global (default) | per_task
//!     image: agent-image:latest                   # the image every trial runs in (global)
//!     artifact: agent-bundle.tar.gz               # dir or tarball, unpacked at /opt/agent
//!     env: {KEY: value}
//!   policy:
//!     timeout_ms: 600000
//!     sandbox: {mode: container}                  # container (default) | local
//!     network: {mode: none}                       # none | full | allowlist (+ allowed_hosts)
//!     resources: {cpus: 2, memory_mb: 4096}
//! benchmark:
//!   adapter: {command: [python3, grade.py]}       # run per trial after the agent
//! ```
//!
//! Errors name the offending field by its JSON pointer, as AgentLab does; the boundary messages
//! are the exact strings FORMATS.md §5 fixes. Keys AgentLab files carry that rollout has no use for
//! (`metrics`, `baseline`, `variant_plan`, …) are accepted and ignored; unknown keys inside the
//! sections rollout reads are errors, so that a typo never silently changes a run.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the agent's container image comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageSource {
    /// Every trial runs in `runtime.agent.image`.
    Global,
    /// Every trial runs in its row's `task.image`, with the agent artifact injected.
    PerTask,
}

/// `runtime.policy.sandbox.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxMode {
    Container,
    Local,
}

/// `runtime.policy.network.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExperimentNetwork {
    /// No network inside the trial container.
    None,
    /// The container's default network.
    Full,
    /// Only [`Experiment::allowed_hosts`]: the tasks' `network_mode = "allowlist"`, enforced (or
    /// refused per trial) by the provider exactly as for any task.
    Allowlist,
}

/// Exact boundary message of FORMATS.md §5: per-task images need a container sandbox.
pub const PER_TASK_NEEDS_CONTAINER: &str =
    "/runtime/agent/image_source (value 'per_task' requires /runtime/policy/sandbox/mode='container')";

/// Where the agent artifact is unpacked inside the trial container.
pub const AGENT_DIR: &str = "/opt/agent";

/// A parsed, checked experiment (written to the run directory as `experiment.json`, read back
/// by `rollout jobs resume`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Experiment {
    /// The file it was read from (absolute when it could be made so).
    pub file: PathBuf,
    /// `experiment.id`, else the file stem.
    pub id: String,
    pub name: Option<String>,
    /// `dataset.path`, resolved against the experiment file's directory.
    pub dataset: PathBuf,
    pub limit: Option<usize>,
    pub replications: u32,
    pub max_concurrency: usize,
    pub random_seed: Option<u64>,
    pub shuffle_tasks: bool,
    /// The agent command as one shell command line.
    pub command: String,
    pub image: Option<String>,
    pub image_source: ImageSource,
    /// `runtime.agent.artifact`, resolved against the experiment file's directory.
    pub artifact: Option<PathBuf>,
    pub agent_env: BTreeMap<String, String>,
    pub timeout_ms: Option<u64>,
    pub sandbox: SandboxMode,
    pub network: ExperimentNetwork,
    /// `runtime.policy.network.allowed_hosts` (with `mode: allowlist`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    pub cpus: Option<f64>,
    pub memory_mb: Option<u64>,
    /// `benchmark.adapter.command` as one shell command line: the grader run per trial.
    pub grader: Option<String>,
}

/// Why an experiment file cannot be used: every problem, each naming its field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {}", file.display(), errors.join("; "))]
pub struct ExperimentError {
    pub file: PathBuf,
    pub errors: Vec<String>,
}

/// Top-level keys that mark a YAML/JSON document as an experiment rather than a job file.
const MARKERS: [&str; 3] = ["runtime", "design", "experiment"];

/// Top-level keys accepted (AgentLab's; rollout reads the first six).
const TOP_LEVEL: [&str; 12] = [
    "version",
    "experiment",
    "dataset",
    "design",
    "runtime",
    "benchmark",
    "metrics",
    "baseline",
    "variant_plan",
    "analysis",
    "validity",
    "policy",
];

/// Whether `doc` (a parsed YAML or JSON document) is an experiment file.
pub fn is_experiment(doc: &Value) -> bool {
    doc.as_object()
        .is_some_and(|o| MARKERS.iter().any(|k| o.contains_key(*k)))
}

/// Read a YAML or JSON file into a generic document.
pub fn read_document(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_norway::from_str(&text).map_err(|e| format!("{}: not valid YAML: {e}", path.display()))
}

/// Whether the file at `path` is an experiment file (false when it cannot be read).
pub fn is_experiment_file(path: &Path) -> bool {
    read_document(path).is_ok_and(|d| is_experiment(&d))
}

/// Load and check the experiment file at `path`.
pub fn load(path: &Path) -> Result<Experiment, ExperimentError> {
    let file = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let doc = read_document(path).map_err(|e| ExperimentError {
        file: file.clone(),
        errors: vec![e],
    })?;
    parse(&doc, &file)
}

/// Check `doc`, read from `file` (relative paths are resolved against its directory).
pub fn parse(doc: &Value, file: &Path) -> Result<Experiment, ExperimentError> {
    let mut r = Reader::default();
    let base = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let empty = Map::new();
    let root = match doc.as_object() {
        Some(o) => o,
        None => {
            r.err("/: an experiment file must be a mapping");
            &empty
        }
    };
    r.keys("", root, &TOP_LEVEL);

    let exp = r.object(root, "/experiment");
    r.keys(
        "/experiment",
        exp,
        &[
            "id",
            "name",
            "description",
            "workload_type",
            "owner",
            "tags",
        ],
    );
    let id = r.string(exp, "/experiment/id").unwrap_or_else(|| {
        file.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "experiment".into())
    });
    let name = r.string(exp, "/experiment/name");

    let dataset = r.object(root, "/dataset");
    r.keys(
        "/dataset",
        dataset,
        &[
            "path",
            "limit",
            "suite_id",
            "provider",
            "split_id",
            "schema_version",
        ],
    );
    let dataset_path = match r.string(dataset, "/dataset/path") {
        Some(p) => base.join(p),
        None => {
            r.err("/dataset/path is required (a task_boundary_v2 JSONL file)");
            PathBuf::new()
        }
    };
    let limit = r.uint(dataset, "/dataset/limit").map(|n| n as usize);
    if limit == Some(0) {
        r.err("/dataset/limit must be at least 1");
    }

    let design = r.object(root, "/design");
    r.keys(
        "/design",
        design,
        &[
            "replications",
            "max_concurrency",
            "random_seed",
            "shuffle_tasks",
            "sanitization_profile",
            "comparison",
        ],
    );
    let replications = r.uint(design, "/design/replications").unwrap_or(1);
    let max_concurrency = r.uint(design, "/design/max_concurrency").unwrap_or(1);
    if replications == 0 {
        r.err("/design/replications must be at least 1");
    }
    if max_concurrency == 0 {
        r.err("/design/max_concurrency must be at least 1");
    }
    let random_seed = r.uint(design, "/design/random_seed");
    let shuffle_tasks = r.boolean(design, "/design/shuffle_tasks").unwrap_or(false);

    let runtime = r.object(root, "/runtime");
    r.keys("/runtime", runtime, &["agent", "policy", "dependencies"]);
    let agent = r.object(runtime, "/runtime/agent");
    r.keys(
        "/runtime/agent",
        agent,
        &["command", "image", "image_source", "artifact", "env", "io"],
    );
    let command = match agent.get("command") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_string) => {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(command_word)
                .collect::<Vec<_>>()
                .join(" ")
        }
        Some(_) => {
            r.err("/runtime/agent/command must be a non-empty string or a list of strings");
            String::new()
        }
        None => {
            r.err("/runtime/agent/command is required (the agent's command line)");
            String::new()
        }
    };
    let image = r.string(agent, "/runtime/agent/image");
    let image_source = match r.string(agent, "/runtime/agent/image_source").as_deref() {
        None | Some("global") => ImageSource::Global,
        Some("per_task") => ImageSource::PerTask,
        Some(other) => {
            r.err(format!(
                "/runtime/agent/image_source must be 'global' or 'per_task', found '{other}'"
            ));
            ImageSource::Global
        }
    };
    let artifact = r
        .string(agent, "/runtime/agent/artifact")
        .map(|p| base.join(p));
    let agent_env = r.string_map(agent, "/runtime/agent/env");

    let policy = r.object(runtime, "/runtime/policy");
    r.keys(
        "/runtime/policy",
        policy,
        &["timeout_ms", "sandbox", "network", "resources"],
    );
    let timeout_ms = r.uint(policy, "/runtime/policy/timeout_ms");
    if timeout_ms == Some(0) {
        r.err("/runtime/policy/timeout_ms must be at least 1");
    }
    let sandbox_obj = r.object(policy, "/runtime/policy/sandbox");
    r.keys("/runtime/policy/sandbox", sandbox_obj, &["mode"]);
    let sandbox = match r
        .string(sandbox_obj, "/runtime/policy/sandbox/mode")
        .as_deref()
    {
        None | Some("container") => SandboxMode::Container,
        Some("local") => SandboxMode::Local,
        Some(other) => {
            r.err(format!(
                "/runtime/policy/sandbox/mode must be 'container' or 'local', found '{other}'"
            ));
            SandboxMode::Container
        }
    };
    let network_obj = r.object(policy, "/runtime/policy/network");
    r.keys(
        "/runtime/policy/network",
        network_obj,
        &["mode", "allowed_hosts"],
    );
    let network = match r
        .string(network_obj, "/runtime/policy/network/mode")
        .as_deref()
    {
        None | Some("none") => ExperimentNetwork::None,
        Some("full") => ExperimentNetwork::Full,
        Some("allowlist") | Some("allowlist_enforced") => ExperimentNetwork::Allowlist,
        Some(other) => {
            r.err(format!(
                "/runtime/policy/network/mode must be 'none', 'full' or 'allowlist', found '{other}'"
            ));
            ExperimentNetwork::None
        }
    };
    let allowed_hosts = match network_obj.get("allowed_hosts") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(_) => {
            r.err("/runtime/policy/network/allowed_hosts must be a list of host names, addresses or CIDR ranges");
            Vec::new()
        }
    };
    match network {
        ExperimentNetwork::Allowlist if allowed_hosts.is_empty() => r.err(
            "/runtime/policy/network/allowed_hosts is required (a non-empty list) when /runtime/policy/network/mode is 'allowlist'",
        ),
        ExperimentNetwork::Allowlist => {
            if let Err(e) = crate::allowlist::parse(&allowed_hosts) {
                r.err(format!("/runtime/policy/network/allowed_hosts: {e}"));
            }
        }
        _ if !allowed_hosts.is_empty() => r.err(
            "/runtime/policy/network/allowed_hosts is only read with /runtime/policy/network/mode 'allowlist'",
        ),
        _ => {}
    }
    let resources = r.object(policy, "/runtime/policy/resources");
    r.keys(
        "/runtime/policy/resources",
        resources,
        &["cpus", "memory_mb"],
    );
    let cpus = r.number(resources, "/runtime/policy/resources/cpus");
    if cpus.is_some_and(|c| c <= 0.0) {
        r.err("/runtime/policy/resources/cpus must be positive");
    }
    let memory_mb = r.uint(resources, "/runtime/policy/resources/memory_mb");

    let benchmark = r.object(root, "/benchmark");
    r.keys("/benchmark", benchmark, &["adapter", "policy"]);
    let adapter = r.object(benchmark, "/benchmark/adapter");
    r.keys(
        "/benchmark/adapter",
        adapter,
        &["command", "adapter_id", "adapter_version"],
    );
    let grader = match adapter.get("command") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_string) => {
            Some(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(command_word)
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        }
        Some(_) => {
            r.err("/benchmark/adapter/command must be a non-empty string or a list of strings");
            None
        }
    };

    // The boundaries.
    if image_source == ImageSource::PerTask {
        if sandbox != SandboxMode::Container {
            r.err(PER_TASK_NEEDS_CONTAINER);
        }
        if artifact.is_none() {
            r.err(format!(
                "/runtime/agent/artifact is required when /runtime/agent/image_source='per_task' \
                 (a directory or tarball with the agent, unpacked at {AGENT_DIR} in each task's image)"
            ));
        }
    }
    if sandbox == SandboxMode::Local && image_source == ImageSource::Global {
        r.err(
            "/runtime/policy/sandbox/mode 'local' would run the agent on the host: rollout runs every \
             trial in a container; use mode 'container' (with /runtime/agent/image)",
        );
    }
    if image_source == ImageSource::Global && sandbox == SandboxMode::Container && image.is_none() {
        r.err("/runtime/agent/image is required when /runtime/agent/image_source='global' (the image every trial runs in)");
    }

    if !r.errors.is_empty() {
        return Err(ExperimentError {
            file: file.to_path_buf(),
            errors: r.errors,
        });
    }
    Ok(Experiment {
        file: file.to_path_buf(),
        id,
        name,
        dataset: dataset_path,
        limit,
        replications: replications as u32,
        max_concurrency: max_concurrency as usize,
        random_seed,
        shuffle_tasks,
        command,
        image,
        image_source,
        artifact,
        agent_env,
        timeout_ms,
        sandbox,
        network,
        allowed_hosts,
        cpus,
        memory_mb,
        grader,
    })
}

/// One word of a command list: kept as written when it is a `$VAR` reference (so that the shell
/// expands it, as AgentLab's `$model` bindings expect), shell-quoted otherwise.
fn command_word(w: &str) -> String {
    let is_var = w.len() > 1
        && w.starts_with('$')
        && w[1..]
            .trim_start_matches('{')
            .trim_end_matches('}')
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if is_var {
        format!("\"{w}\"")
    } else {
        crate::task_config::shell_quote(w)
    }
}

/// Collects problems while reading a document, each prefixed by its JSON pointer.
#[derive(Default)]
struct Reader {
    errors: Vec<String>,
}

static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

fn last(pointer: &str) -> &str {
    pointer.rsplit('/').next().unwrap_or(pointer)
}

impl Reader {
    fn err(&mut self, m: impl Into<String>) {
        self.errors.push(m.into());
    }

    fn keys(&mut self, at: &str, obj: &Map<String, Value>, allowed: &[&str]) {
        for k in obj.keys() {
            if !allowed.contains(&k.as_str()) {
                self.err(format!(
                    "{at}/{k}: unknown key (allowed here: {})",
                    allowed.join(", ")
                ));
            }
        }
    }

    fn object<'a>(
        &mut self,
        parent: &'a Map<String, Value>,
        pointer: &str,
    ) -> &'a Map<String, Value> {
        match parent.get(last(pointer)) {
            None | Some(Value::Null) => &EMPTY,
            Some(Value::Object(o)) => o,
            Some(_) => {
                self.err(format!("{pointer} must be a mapping"));
                &EMPTY
            }
        }
    }

    fn string(&mut self, parent: &Map<String, Value>, pointer: &str) -> Option<String> {
        match parent.get(last(pointer)) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(_) => {
                self.err(format!("{pointer} must be a non-empty string"));
                None
            }
        }
    }

    fn uint(&mut self, parent: &Map<String, Value>, pointer: &str) -> Option<u64> {
        match parent.get(last(pointer)) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) => Some(n),
                None => {
                    self.err(format!(
                        "{pointer} must be a non-negative integer, found {v}"
                    ));
                    None
                }
            },
        }
    }

    fn number(&mut self, parent: &Map<String, Value>, pointer: &str) -> Option<f64> {
        match parent.get(last(pointer)) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_f64() {
                Some(n) => Some(n),
                None => {
                    self.err(format!("{pointer} must be a number, found {v}"));
                    None
                }
            },
        }
    }

    fn boolean(&mut self, parent: &Map<String, Value>, pointer: &str) -> Option<bool> {
        match parent.get(last(pointer)) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => {
                self.err(format!("{pointer} must be true or false, found {v}"));
                None
            }
        }
    }

    fn string_map(
        &mut self,
        parent: &Map<String, Value>,
        pointer: &str,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v) in self.object(parent, pointer) {
            match v {
                Value::String(s) => {
                    out.insert(k.clone(), s.clone());
                }
                Value::Number(n) => {
                    out.insert(k.clone(), n.to_string());
                }
                Value::Bool(b) => {
                    out.insert(k.clone(), b.to_string());
                }
                _ => self.err(format!("{pointer}/{k} must be a string")),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_json(v: Value) -> Result<Experiment, ExperimentError> {
        parse(&v, Path::new("/exp/experiment.yaml"))
    }

    fn minimal() -> Value {
        json!({
            "experiment": {"id": "smoke"},
            "dataset": {"path": "tasks.jsonl", "limit": 2},
            "design": {"replications": 2, "max_concurrency": 3, "random_seed": 7, "shuffle_tasks": true},
            "runtime": {
                "agent": {"command": ["/opt/agent/run.sh", "--model", "$MODEL", "a b"], "image_source": "per_task", "artifact": "agent"},
                "policy": {"timeout_ms": 90000, "sandbox": {"mode": "container"}, "network": {"mode": "full"}, "resources": {"cpus": 2, "memory_mb": 1024}}
            },
            "benchmark": {"adapter": {"command": "python3 grade.py"}}
        })
    }

    #[test]
    fn a_full_experiment_is_read_with_paths_resolved() {
        let e = parse_json(minimal()).unwrap();
        assert_eq!(e.id, "smoke");
        assert_eq!(e.dataset, Path::new("/exp/tasks.jsonl"));
        assert_eq!(e.artifact.as_deref(), Some(Path::new("/exp/agent")));
        assert_eq!(e.limit, Some(2));
        assert_eq!((e.replications, e.max_concurrency), (2, 3));
        assert_eq!((e.random_seed, e.shuffle_tasks), (Some(7), true));
        assert_eq!(e.command, "/opt/agent/run.sh --model \"$MODEL\" 'a b'");
        assert_eq!(e.image_source, ImageSource::PerTask);
        assert_eq!(e.network, ExperimentNetwork::Full);
        assert_eq!(
            (e.cpus, e.memory_mb, e.timeout_ms),
            (Some(2.0), Some(1024), Some(90000))
        );
        assert_eq!(e.grader.as_deref(), Some("python3 grade.py"));
    }

    #[test]
    fn an_allowlist_policy_needs_valid_hosts_and_keeps_them() {
        let mut v = minimal();
        v["runtime"]["policy"]["network"] =
            json!({"mode": "allowlist", "allowed_hosts": ["example.com", "10.0.0.0/8"]});
        let e = parse_json(v.clone()).unwrap();
        assert_eq!(e.network, ExperimentNetwork::Allowlist);
        assert_eq!(e.allowed_hosts, ["example.com", "10.0.0.0/8"]);
        v["runtime"]["policy"]["network"] = json!({"mode": "allowlist"});
        let e = parse_json(v.clone()).unwrap_err();
        assert!(
            e.errors[0].starts_with("/runtime/policy/network/allowed_hosts is required"),
            "{e}"
        );
        v["runtime"]["policy"]["network"] = json!({"mode": "full", "allowed_hosts": ["a.com"]});
        let e = parse_json(v).unwrap_err();
        assert!(e.errors[0].contains("only read with"), "{e}");
    }

    #[test]
    fn per_task_in_local_mode_is_refused_with_the_boundary_message() {
        let mut v = minimal();
        v["runtime"]["policy"]["sandbox"]["mode"] = json!("local");
        let e = parse_json(v).unwrap_err();
        assert!(
            e.errors.iter().any(|m| m == PER_TASK_NEEDS_CONTAINER),
            "{e}"
        );
    }

    #[test]
    fn per_task_without_artifact_names_the_field() {
        let mut v = minimal();
        v["runtime"]["agent"]
            .as_object_mut()
            .unwrap()
            .remove("artifact");
        let e = parse_json(v).unwrap_err();
        assert!(e.to_string().contains("/runtime/agent/artifact"), "{e}");
    }

    #[test]
    fn typos_and_wrong_types_are_errors_with_pointers() {
        let mut v = minimal();
        v["design"]["replication"] = json!(3);
        v["runtime"]["policy"]["timeout_ms"] = json!("soon");
        let e = parse_json(v).unwrap_err().to_string();
        assert!(e.contains("/design/replication: unknown key"), "{e}");
        assert!(
            e.contains("/runtime/policy/timeout_ms must be a non-negative integer"),
            "{e}"
        );
    }

    #[test]
    fn global_mode_needs_an_image_and_agentlab_extras_are_ignored() {
        let mut v = minimal();
        v["runtime"]["agent"]["image_source"] = json!("global");
        v["metrics"] = json!([{"id": "resolved"}]);
        let e = parse_json(v.clone()).unwrap_err().to_string();
        assert!(e.contains("/runtime/agent/image is required"), "{e}");
        v["runtime"]["agent"]["image"] = json!("agent:1");
        assert_eq!(parse_json(v).unwrap().image.as_deref(), Some("agent:1"));
    }

    #[test]
    fn job_files_are_not_experiments() {
        assert!(!is_experiment(
            &json!({"agents": [{"name": "oracle"}], "datasets": []})
        ));
        assert!(is_experiment(&minimal()));
    }
}
