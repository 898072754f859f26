//! Per-task-image rows (AgentLab's `task_boundary_v2`, FORMATS.md §5) as Harbor task directories.
//!
//! ```text
//! {"schema_version": "task_boundary_v2",
//!  "task": {"id": "…", "image": "…", "workspace": "…", "instruction": "…", "grader": "…", …},
//!  "workspace_files": {"rel/path": "content"}, "mount_references": [{source, target, read_only}],
//!  "limits": …}
//! ```
//!
//! [`parse_rows`] checks every row and reports every problem with its line number;
//! [`materialize`] writes one row as a task directory (instruction.md, task.toml, environment/,
//! tests/test.sh) that the rest of rollout runs like any other.
//!
//! Not here: pulling images or running anything.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The only `schema_version` accepted.
pub const SCHEMA_VERSION: &str = "task_boundary_v2";

/// Top-level keys a row may have.
const ALLOWED_KEYS: [&str; 5] = [
    "schema_version",
    "task",
    "workspace_files",
    "mount_references",
    "limits",
];

/// Base image of a row that has workspace files but names no image.
const DEFAULT_IMAGE: &str = "debian:bookworm-slim";

/// One valid row.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    /// 1-based line in the file.
    pub line: usize,
    /// `task.id`: also the task directory's name.
    pub id: String,
    /// `task.image`: the prebuilt image the task runs in.
    pub image: Option<String>,
    /// `task.workspace`: the working directory under `/workspace`.
    pub workspace: Option<String>,
    /// The whole `task` object, as written.
    pub task: Map<String, Value>,
    /// Relative path (under the workspace) -> file content.
    pub workspace_files: BTreeMap<String, String>,
    pub mount_references: Vec<MountReference>,
    pub limits: Option<Value>,
}

/// A host path the task may read (mounts are always read-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountReference {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// One problem with one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line in the file.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Why a row file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("reading {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// Every problem of every row, in line order.
    #[error("{}", invalid_message(origin, errors))]
    Invalid {
        origin: PathBuf,
        errors: Vec<LineError>,
    },
}

fn invalid_message(origin: &Path, errors: &[LineError]) -> String {
    let lines: Vec<String> = errors
        .iter()
        .map(|e| format!("{}:{}: {}", origin.display(), e.line, e.message))
        .collect();
    lines.join("\n")
}

/// Parse and check every row of `text`; `origin` names the file in errors. Blank lines are
/// skipped. Either every row is valid, or the error lists every problem with its line number.
pub fn parse_rows(text: &str, origin: &Path) -> Result<Vec<TaskRow>, RowError> {
    let mut rows: Vec<TaskRow> = Vec::new();
    let mut errors = Vec::new();
    let mut first_line_of: BTreeMap<String, usize> = BTreeMap::new();
    // A byte-order mark (some editors write one) is not part of the first row.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let mut messages = Vec::new();
        if let Some(row) = parse_row(raw, line, &mut messages) {
            if let Some(first) = first_line_of.get(&row.id) {
                messages.push(format!(
                    "duplicate task id '{}' (first on line {first})",
                    row.id
                ));
            } else {
                first_line_of.insert(row.id.clone(), line);
                if messages.is_empty() {
                    rows.push(row);
                }
            }
        }
        errors.extend(
            messages
                .into_iter()
                .map(|message| LineError { line, message }),
        );
    }
    if errors.is_empty() {
        Ok(rows)
    } else {
        Err(RowError::Invalid {
            origin: origin.to_path_buf(),
            errors,
        })
    }
}

/// [`parse_rows`] of the file at `path`.
pub fn load_rows(path: &Path) -> Result<Vec<TaskRow>, RowError> {
    let text = std::fs::read_to_string(path).map_err(|source| RowError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_rows(&text, path)
}

/// Per-task image mode (`runtime.agent.image_source='per_task'`): every row must name its image.
/// The message is the one FORMATS.md §5 fixes, one line per task without an image.
pub fn require_images(rows: &[TaskRow]) -> Result<(), String> {
    let missing: Vec<String> = rows
        .iter()
        .filter(|r| r.image.is_none())
        .map(|r| {
            format!(
                "task.image is required for task '{}' when runtime.agent.image_source='per_task'",
                r.id
            )
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("\n"))
    }
}

/// Check one line; push every problem onto `errors`. Returns the row when its id is known (so
/// that duplicates are found even on rows with other problems).
fn parse_row(raw: &str, line: usize, errors: &mut Vec<String>) -> Option<TaskRow> {
    let value: Value = match serde_json::from_str(raw) {
        Ok(v) => v,
        Err(e) => {
            errors.push(format!("not valid JSON: {e}"));
            return None;
        }
    };
    let Value::Object(mut obj) = value else {
        errors.push(format!(
            "a row must be a JSON object, found {}",
            kind(&value)
        ));
        return None;
    };
    match obj.get("schema_version") {
        Some(Value::String(s)) if s == SCHEMA_VERSION => {}
        Some(other) => errors.push(format!(
            "schema_version must be \"{SCHEMA_VERSION}\", found {other}"
        )),
        None => errors.push(format!(
            "schema_version must be \"{SCHEMA_VERSION}\", found none"
        )),
    }
    for key in obj.keys() {
        if !ALLOWED_KEYS.contains(&key.as_str()) {
            errors.push(format!(
                "unknown top-level key '{key}' (allowed: {})",
                ALLOWED_KEYS.join(", ")
            ));
        }
    }

    let task = match obj.remove("task") {
        Some(Value::Object(t)) => Some(t),
        Some(other) => {
            errors.push(format!("task must be an object, found {}", kind(&other)));
            None
        }
        None => {
            errors.push("task is required (an object with at least an id)".into());
            None
        }
    };
    let id = task.as_ref().and_then(|t| match t.get("id") {
        Some(Value::String(s)) if !s.is_empty() => {
            if is_safe_name(s) {
                Some(s.clone())
            } else {
                errors.push(format!("task.id '{s}' must be usable as a directory name (no '/', '\\' or control characters; not '.' or '..')"));
                None
            }
        }
        _ => {
            errors.push("task.id must be a non-empty string".into());
            None
        }
    });
    let image = task.as_ref().and_then(|t| match t.get("image") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => {
            errors.push("task.image must be a non-empty string".into());
            None
        }
        Some(Value::String(s)) if s.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            errors.push(format!("task.image '{s}' must not contain whitespace"));
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            errors.push(format!(
                "task.image must be a non-empty string, found {}",
                kind(other)
            ));
            None
        }
    });
    let workspace = task.as_ref().and_then(|t| match t.get("workspace") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if is_relative_path(s) => Some(s.clone()),
        Some(Value::String(s)) => {
            errors.push(format!(
                "task.workspace '{s}' must be a relative path without '..'"
            ));
            None
        }
        Some(other) => {
            errors.push(format!(
                "task.workspace must be a string, found {}",
                kind(other)
            ));
            None
        }
    });

    let mut workspace_files = BTreeMap::new();
    match obj.remove("workspace_files") {
        None | Some(Value::Null) => {}
        Some(Value::Object(files)) => {
            for (path, content) in files {
                if !is_relative_path(&path) {
                    errors.push(format!(
                        "workspace_files key '{path}' must be a relative path without '..'"
                    ));
                }
                match content {
                    Value::String(c) => {
                        workspace_files.insert(path, c);
                    }
                    other => errors.push(format!(
                        "workspace_files['{path}'] must be a string (the file's content), found {}",
                        kind(&other)
                    )),
                }
            }
        }
        Some(other) => errors.push(format!(
            "workspace_files must be an object of relative path -> content, found {}",
            kind(&other)
        )),
    }

    let mut mount_references = Vec::new();
    match obj.remove("mount_references") {
        None | Some(Value::Null) => {}
        Some(Value::Array(refs)) => {
            for (i, r) in refs.iter().enumerate() {
                if let Some(m) = parse_mount(i, r, errors) {
                    mount_references.push(m);
                }
            }
        }
        Some(other) => errors.push(format!(
            "mount_references must be an array, found {}",
            kind(&other)
        )),
    }

    let limits = obj.remove("limits").filter(|v| !v.is_null());
    Some(TaskRow {
        line,
        id: id?,
        image,
        workspace,
        task: task?,
        workspace_files,
        mount_references,
        limits,
    })
}

fn parse_mount(i: usize, r: &Value, errors: &mut Vec<String>) -> Option<MountReference> {
    let Value::Object(m) = r else {
        errors.push(format!(
            "mount_references[{i}] must be an object with source and target, found {}",
            kind(r)
        ));
        return None;
    };
    let mut field = |name: &str| match m.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => {
            errors.push(format!(
                "mount_references[{i}].{name} is required (a non-empty string)"
            ));
            None
        }
    };
    let source = field("source");
    let target = field("target");
    match m.get("read_only") {
        None | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            errors.push(format!(
                "mount_references[{i}] must be read-only (read_only: false is not allowed)"
            ));
            return None;
        }
        Some(other) => {
            errors.push(format!(
                "mount_references[{i}].read_only must be true, found {other}"
            ));
            return None;
        }
    }
    Some(MountReference {
        source: source?,
        target: target?,
        read_only: true,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Relative, non-empty, no `..` component, no control characters (they end up in a Dockerfile).
fn is_relative_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.starts_with('\\')
        && !p.chars().any(char::is_control)
        && p.split(['/', '\\']).all(|c| c != "..")
        && p.split(['/', '\\']).any(|c| !c.is_empty() && c != ".")
}

fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains(['/', '\\'])
        && !s.chars().any(char::is_control)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Write the Harbor task directory of `row` as `dest/<id>/` (replacing an earlier one) and return
/// its path:
///
/// - `instruction.md`: the first of `task.instruction`, `task.prompt`, `task.problem_statement`;
/// - `task.toml`: `[environment] workdir = "/workspace/<workspace>"`, and `docker_image = <image>`
///   when the row has no workspace files;
/// - `environment/Dockerfile` when the row has workspace files (`FROM <image>`, the files copied
///   into the workdir from `environment/workspace/`) or no image at all;
/// - `tests/test.sh`: runs `task.grader` or `task.test_command` from the workdir and writes reward 1
///   when it exits 0, else 0. Without either there is no `tests/test.sh`, so that, like any task
///   without tests, its trials end `task_invalid` before anything runs (never a run to no reward);
/// - `row.json`: the row's task object and limits, for reference.
pub fn materialize(row: &TaskRow, dest: &Path) -> io::Result<PathBuf> {
    materialize_with(row, dest, &Materialize::default())
}

/// How an experiment (docs/experiments.md) changes the task directory of a row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Materialize {
    /// The image every trial runs in (`image_source: global`), instead of the row's `task.image`.
    pub image: Option<String>,
    /// A directory or tarball unpacked at `/opt/agent` in the task's image (an image is then
    /// always built, `FROM` the task's image).
    pub artifact: Option<PathBuf>,
    /// A grader command run per trial instead of the row's `task.grader` (the benchmark adapter):
    /// it writes `$OUT_DIR/benchmark_score.json` and the reward is read from it.
    pub adapter: Option<String>,
    /// Extra container-wide environment variables.
    pub env: BTreeMap<String, String>,
    /// Overrides of the task's `[environment]`: cpus, memory_mb, network_mode (with
    /// allowed_hosts when it is `allowlist`).
    pub cpus: Option<f64>,
    pub memory_mb: Option<u64>,
    pub network_mode: Option<rollout_core::task_config::NetworkMode>,
    pub allowed_hosts: Vec<String>,
}

/// Directory, inside the trial container, where the benchmark adapter writes its files.
pub const ADAPTER_OUT_DIR: &str = "/logs/verifier/out";
/// The score file the adapter writes in [`ADAPTER_OUT_DIR`].
pub const SCORE_FILE: &str = "benchmark_score.json";
/// The adapter's exit status, written by the generated test script in [`ADAPTER_OUT_DIR`].
pub const GRADE_EXIT_FILE: &str = "grade_exit_code";

/// [`materialize`], changed by an experiment's options.
pub fn materialize_with(row: &TaskRow, dest: &Path, opts: &Materialize) -> io::Result<PathBuf> {
    if !is_safe_name(&row.id) {
        return Err(invalid(format!(
            "task id '{}' cannot be a directory name",
            row.id
        )));
    }
    if let Some(p) = row
        .workspace
        .iter()
        .chain(row.workspace_files.keys())
        .find(|p| !is_relative_path(p))
    {
        return Err(invalid(format!(
            "'{p}' must be a relative path without '..'"
        )));
    }
    let instruction = ["instruction", "prompt", "problem_statement"]
        .iter()
        .find_map(|k| row.task.get(*k).and_then(Value::as_str).filter(|s| !s.trim().is_empty()))
        .ok_or_else(|| invalid(format!("task '{}' has no instruction: set task.instruction, task.prompt or task.problem_statement", row.id)))?;
    let grader = match &opts.adapter {
        Some(a) => Some(a.clone()),
        None => grader_command(row)?,
    };
    let workdir = workdir(row);

    std::fs::create_dir_all(dest)?;
    let dir = dest.join(&row.id);
    // Written beside and renamed into place, so a reader never sees half a task.
    let staging = dest.join(format!(".{}.tmp-{}", row.id, std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    let written = write_task(
        row,
        &staging,
        instruction,
        grader.as_deref(),
        &workdir,
        opts,
    );
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&staging, &dir)?;
    Ok(dir)
}

/// The working directory of a row's task inside its container: `/workspace/<task.workspace>`.
pub fn workdir(row: &TaskRow) -> String {
    match &row.workspace {
        Some(w) => format!(
            "/workspace/{}",
            w.trim_start_matches("./").trim_end_matches('/')
        ),
        None => "/workspace".to_string(),
    }
}

/// `task.grader` or `task.test_command`: a shell command, or a list of them run in order.
fn grader_command(row: &TaskRow) -> io::Result<Option<String>> {
    for key in ["grader", "test_command"] {
        match row.task.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if !s.trim().is_empty() => return Ok(Some(s.clone())),
            Some(Value::Array(items))
                if !items.is_empty() && items.iter().all(Value::is_string) =>
            {
                let cmds: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                return Ok(Some(cmds.join("\n")));
            }
            Some(_) => {
                return Err(invalid(format!(
                    "task '{}': task.{key} must be a shell command (a string or a list of strings)",
                    row.id
                )))
            }
        }
    }
    Ok(None)
}

fn write_task(
    row: &TaskRow,
    dir: &Path,
    instruction: &str,
    grader: Option<&str>,
    workdir: &str,
    opts: &Materialize,
) -> io::Result<()> {
    let env_dir = dir.join("environment");
    let tests_dir = dir.join("tests");
    std::fs::create_dir_all(&env_dir)?;
    std::fs::create_dir_all(&tests_dir)?;
    std::fs::write(dir.join("instruction.md"), instruction)?;

    let base_image = opts.image.as_ref().or(row.image.as_ref());
    let build = !row.workspace_files.is_empty() || base_image.is_none() || opts.artifact.is_some();
    let mut environment = toml::Table::new();
    if !build {
        if let Some(image) = base_image {
            environment.insert("docker_image".into(), image.clone().into());
        }
    }
    environment.insert("workdir".into(), workdir.into());
    if let Some(cpus) = opts.cpus {
        environment.insert("cpus".into(), cpus.into());
    }
    if let Some(mb) = opts.memory_mb {
        environment.insert("memory_mb".into(), (mb as i64).into());
    }
    if let Some(mode) = opts.network_mode {
        environment.insert(
            "network_mode".into(),
            rollout_core::task_config::network_name(mode).into(),
        );
        if !opts.allowed_hosts.is_empty() {
            let hosts: Vec<toml::Value> = opts
                .allowed_hosts
                .iter()
                .map(|h| toml::Value::from(h.clone()))
                .collect();
            environment.insert("allowed_hosts".into(), hosts.into());
        }
    }
    if !opts.env.is_empty() {
        let env: toml::Table = opts
            .env
            .iter()
            .map(|(k, v)| (k.clone(), toml::Value::from(v.clone())))
            .collect();
        environment.insert("env".into(), env.into());
    }
    let mut metadata = toml::Table::new();
    metadata.insert("task_id".into(), row.id.clone().into());
    metadata.insert("row_line".into(), (row.line as i64).into());
    if let Some(image) = &row.image {
        metadata.insert("task_image".into(), image.clone().into());
    }
    let mut config = toml::Table::new();
    config.insert("source".into(), SCHEMA_VERSION.into());
    config.insert("metadata".into(), metadata.into());
    config.insert("environment".into(), environment.into());
    let toml = toml::to_string(&config).map_err(|e| invalid(format!("writing task.toml: {e}")))?;
    std::fs::write(
        dir.join("task.toml"),
        format!("# Generated by rollout from a {SCHEMA_VERSION} row.\n{toml}"),
    )?;

    if build {
        let image = base_image.map(String::as_str).unwrap_or(DEFAULT_IMAGE);
        let mut dockerfile = format!("FROM {image}\n");
        if let Some(artifact) = &opts.artifact {
            dockerfile.push_str(&stage_artifact(artifact, &env_dir)?);
        }
        if !row.workspace_files.is_empty() {
            for (path, content) in &row.workspace_files {
                let file = env_dir.join("workspace").join(path);
                if let Some(parent) = file.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&file, content)?;
            }
            let copy = serde_json::to_string(&["workspace/", &format!("{workdir}/")])
                .map_err(io::Error::other)?;
            dockerfile.push_str(&format!("COPY {copy}\n"));
        }
        dockerfile.push_str(&format!("WORKDIR {workdir}\n"));
        std::fs::write(env_dir.join("Dockerfile"), dockerfile)?;
    }

    let test_sh = match grader {
        Some(cmd) if opts.adapter.is_some() => {
            std::fs::write(tests_dir.join("grader.sh"), format!("{cmd}\n"))?;
            Some(adapter_script(workdir, &row.id))
        }
        Some(cmd) => {
            std::fs::write(tests_dir.join("grader.sh"), format!("{cmd}\n"))?;
            Some(format!(
                "#!/usr/bin/env bash\n\
                 # Generated by rollout: reward 1 when the row's grader (tests/grader.sh) exits 0, else 0.\n\
                 mkdir -p /logs/verifier\n\
                 cd {workdir} 2>/dev/null || true\n\
                 if bash /tests/grader.sh; then\n  echo 1 > /logs/verifier/reward.txt\nelse\n  echo 0 > /logs/verifier/reward.txt\nfi\n",
                workdir = shell_quote(workdir)
            ))
        }
        // Nothing can score the row: like a task directory without tests/test.sh, its trials
        // end task_invalid before anything starts, rather than running to no reward.
        None => None,
    };
    if let Some(test_sh) = test_sh {
        let test_path = tests_dir.join("test.sh");
        std::fs::write(&test_path, test_sh)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&test_path, std::fs::Permissions::from_mode(0o755))?;
        }
    }

    let mut reference = Map::new();
    reference.insert("schema_version".into(), SCHEMA_VERSION.into());
    reference.insert("line".into(), row.line.into());
    reference.insert("task".into(), Value::Object(row.task.clone()));
    if let Some(limits) = &row.limits {
        reference.insert("limits".into(), limits.clone());
    }
    if !row.mount_references.is_empty() {
        let mounts = row
            .mount_references
            .iter()
            .map(|m| serde_json::json!({"source": m.source, "target": m.target, "read_only": m.read_only}))
            .collect();
        reference.insert("mount_references".into(), Value::Array(mounts));
    }
    let json = serde_json::to_string_pretty(&Value::Object(reference)).map_err(io::Error::other)?;
    std::fs::write(dir.join("row.json"), json + "\n")?;
    Ok(())
}

fn shell_quote(s: &str) -> String {
    rollout_core::task_config::shell_quote(s)
}

/// The test script of an experiment's benchmark adapter: run it from the workdir with `OUT_DIR`
/// set, keep its exit status, and turn `benchmark_score.json` into the reward: the first of a
/// numeric `reward` or `score`, or a boolean `resolved` or `passed` (true = 1). Without a score
/// file, or without any of these fields, no reward is written: the trial is then a grading error.
fn adapter_script(workdir: &str, task_id: &str) -> String {
    format!(
        r#"#!/usr/bin/env bash
# Generated by rollout: the experiment's benchmark adapter (tests/grader.sh), run per trial.
out={out}
mkdir -p "$out" /logs/verifier
cd {workdir} 2>/dev/null || true
export OUT_DIR="$out" TASK_ID={task_id}
bash /tests/grader.sh
rc=$?
echo "$rc" > "$out/{exit_file}"
score="$out/{score_file}"
if [ "$rc" -ne 0 ]; then
  echo "benchmark adapter exited with status $rc" >&2
  exit 0
fi
if [ ! -s "$score" ]; then
  echo "benchmark adapter wrote no $score" >&2
  exit 0
fi
flat=$(tr -d '\n\r' < "$score")
value=$(printf '%s' "$flat" | sed -n 's/.*"\(reward\|score\)"[[:space:]]*:[[:space:]]*\(-\{{0,1\}}[0-9][0-9.eE+-]*\).*/\2/p' | head -n 1)
if [ -z "$value" ]; then
  if printf '%s' "$flat" | grep -Eq '"(resolved|passed)"[[:space:]]*:[[:space:]]*true'; then
    value=1
  elif printf '%s' "$flat" | grep -Eq '"(resolved|passed)"[[:space:]]*:[[:space:]]*false'; then
    value=0
  fi
fi
if [ -n "$value" ]; then
  echo "$value" > /logs/verifier/reward.txt
else
  echo "$score has no numeric reward/score nor boolean resolved/passed" >&2
fi
"#,
        out = ADAPTER_OUT_DIR,
        workdir = shell_quote(workdir),
        task_id = shell_quote(task_id),
        exit_file = GRADE_EXIT_FILE,
        score_file = SCORE_FILE,
    )
}

/// Copy the agent artifact into the build context and return the Dockerfile lines that unpack it
/// at `/opt/agent`: a directory is copied, a tarball (`.tar`, `.tar.gz`, `.tgz`, …) is unpacked by
/// `ADD`. The copy is a hard link when the filesystem allows, so large artifacts cost nothing.
fn stage_artifact(artifact: &Path, env_dir: &Path) -> io::Result<String> {
    let meta = std::fs::metadata(artifact).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "agent artifact {}: {e} (set /runtime/agent/artifact to an existing directory or tarball)",
                artifact.display()
            ),
        )
    })?;
    let agent_dir = rollout_core::experiment::AGENT_DIR;
    if meta.is_dir() {
        let dest = env_dir.join("agent-artifact");
        rollout_env::archive::copy_tree(artifact, &dest)?;
        return Ok(format!("COPY agent-artifact/ {agent_dir}/\n"));
    }
    let name = artifact
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let is_tar = [".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar.zst"]
        .iter()
        .any(|ext| name.ends_with(ext));
    if !is_tar {
        return Err(invalid(format!(
            "agent artifact {}: expected a directory or a tarball (.tar, .tar.gz, .tgz, .tar.xz, .tar.bz2)",
            artifact.display()
        )));
    }
    let staged = format!("agent-artifact-{name}");
    let dest = env_dir.join(&staged);
    if std::fs::hard_link(artifact, &dest).is_err() {
        std::fs::copy(artifact, &dest)?;
    }
    let src = serde_json::to_string(&[staged.as_str(), &format!("{agent_dir}/")])
        .map_err(io::Error::other)?;
    Ok(format!("ADD {src}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages of parsing `text`, as `line: message`.
    fn errors(text: &str) -> Vec<String> {
        match parse_rows(text, Path::new("rows.jsonl")) {
            Ok(rows) => panic!("accepted: {rows:?}"),
            Err(RowError::Invalid { errors, .. }) => errors
                .iter()
                .map(|e| format!("{}: {}", e.line, e.message))
                .collect(),
            Err(e) => panic!("{e}"),
        }
    }

    fn one_error(text: &str) -> String {
        let e = errors(text);
        assert_eq!(e.len(), 1, "{e:?}");
        e[0].clone()
    }

    const GOOD: &str = r#"{"schema_version":"task_boundary_v2","task":{"id":"t1","image":"python:3.12","workspace":"repo","instruction":"fix it","grader":"pytest -q"}}"#;

    fn row(task: &str, rest: &str) -> String {
        format!(r#"{{"schema_version":"task_boundary_v2","task":{task}{rest}}}"#)
    }

    #[test]
    fn a_good_row_is_parsed_whole() {
        let text = format!(
            "{GOOD}\n\n{}\n",
            row(
                r#"{"id":"t2","prompt":"p"}"#,
                r#","workspace_files":{"src/a.py":"x = 1\n"},"mount_references":[{"source":"/data","target":"/mnt/data"}],"limits":{"max_steps":5}"#
            )
        );
        let rows = parse_rows(&text, Path::new("rows.jsonl")).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[0].line,
                rows[0].id.as_str(),
                rows[0].image.as_deref(),
                rows[0].workspace.as_deref()
            ),
            (1, "t1", Some("python:3.12"), Some("repo"))
        );
        assert_eq!(rows[0].task["grader"], "pytest -q");
        assert_eq!(rows[1].line, 3, "blank lines are skipped but counted");
        assert_eq!(rows[1].workspace_files["src/a.py"], "x = 1\n");
        assert_eq!(
            rows[1].mount_references,
            vec![MountReference {
                source: "/data".into(),
                target: "/mnt/data".into(),
                read_only: true
            }]
        );
        assert_eq!(rows[1].limits, Some(serde_json::json!({"max_steps": 5})));
    }

    #[test]
    fn a_line_that_is_not_json_is_an_error() {
        assert_eq!(
            one_error("{nope"),
            "1: not valid JSON: key must be a string at line 1 column 2"
        );
    }

    #[test]
    fn a_row_must_be_an_object() {
        assert_eq!(
            one_error("[1, 2]"),
            "1: a row must be a JSON object, found an array"
        );
        assert_eq!(
            one_error("\"t\""),
            "1: a row must be a JSON object, found a string"
        );
    }

    #[test]
    fn schema_version_must_be_task_boundary_v2() {
        assert_eq!(
            one_error(r#"{"schema_version":"task_boundary_v1","task":{"id":"a"}}"#),
            r#"1: schema_version must be "task_boundary_v2", found "task_boundary_v1""#
        );
        assert_eq!(
            one_error(r#"{"task":{"id":"a"}}"#),
            r#"1: schema_version must be "task_boundary_v2", found none"#
        );
        assert_eq!(
            one_error(r#"{"schema_version":2,"task":{"id":"a"}}"#),
            r#"1: schema_version must be "task_boundary_v2", found 2"#
        );
    }

    #[test]
    fn an_unknown_top_level_key_is_named() {
        assert_eq!(
            one_error(&row(r#"{"id":"a"}"#, r#","image":"x""#)),
            "1: unknown top-level key 'image' (allowed: schema_version, task, workspace_files, mount_references, limits)"
        );
    }

    #[test]
    fn task_must_be_an_object_with_a_non_empty_string_id() {
        assert_eq!(
            one_error(r#"{"schema_version":"task_boundary_v2"}"#),
            "1: task is required (an object with at least an id)"
        );
        assert_eq!(
            one_error(r#"{"schema_version":"task_boundary_v2","task":"a"}"#),
            "1: task must be an object, found a string"
        );
        assert_eq!(
            one_error(&row(r#"{"image":"x"}"#, "")),
            "1: task.id must be a non-empty string"
        );
        assert_eq!(
            one_error(&row(r#"{"id":""}"#, "")),
            "1: task.id must be a non-empty string"
        );
        assert_eq!(
            one_error(&row(r#"{"id":7}"#, "")),
            "1: task.id must be a non-empty string"
        );
        assert_eq!(
            one_error(&row(r#"{"id":"a/b"}"#, "")),
            r"1: task.id 'a/b' must be usable as a directory name (no '/', '\' or control characters; not '.' or '..')"
        );
    }

    #[test]
    fn task_image_if_present_must_be_a_non_empty_string() {
        assert_eq!(
            one_error(&row(r#"{"id":"a","image":""}"#, "")),
            "1: task.image must be a non-empty string"
        );
        assert_eq!(
            one_error(&row(r#"{"id":"a","image":3}"#, "")),
            "1: task.image must be a non-empty string, found a number"
        );
        assert_eq!(
            one_error(&row(r#"{"id":"a","image":"x y"}"#, "")),
            "1: task.image 'x y' must not contain whitespace"
        );
        let rows = parse_rows(&row(r#"{"id":"a","image":null}"#, ""), Path::new("r")).unwrap();
        assert_eq!(rows[0].image, None);
    }

    #[test]
    fn workspace_paths_must_be_relative_without_parent_components() {
        assert_eq!(
            one_error(&row(r#"{"id":"a","workspace":"/abs"}"#, "")),
            "1: task.workspace '/abs' must be a relative path without '..'"
        );
        assert_eq!(
            one_error(&row(r#"{"id":"a","workspace":"a/../b"}"#, "")),
            "1: task.workspace 'a/../b' must be a relative path without '..'"
        );
        assert_eq!(
            one_error(&row(r#"{"id":"a","workspace":5}"#, "")),
            "1: task.workspace must be a string, found a number"
        );
        assert_eq!(
            one_error(&row(
                r#"{"id":"a"}"#,
                r#","workspace_files":{"../etc/passwd":"x"}"#
            )),
            "1: workspace_files key '../etc/passwd' must be a relative path without '..'"
        );
        assert_eq!(
            one_error(&row(r#"{"id":"a"}"#, r#","workspace_files":{"/abs":"x"}"#)),
            "1: workspace_files key '/abs' must be a relative path without '..'"
        );
        assert_eq!(
            one_error(&row(r#"{"id":"a"}"#, r#","workspace_files":{"f":1}"#)),
            "1: workspace_files['f'] must be a string (the file's content), found a number"
        );
        assert_eq!(
            one_error(&row(r#"{"id":"a"}"#, r#","workspace_files":["f"]"#)),
            "1: workspace_files must be an object of relative path -> content, found an array"
        );
    }

    #[test]
    fn mount_references_need_source_and_target_and_are_read_only() {
        assert_eq!(
            one_error(&row(
                r#"{"id":"a"}"#,
                r#","mount_references":[{"source":"/d","target":"/m","read_only":false}]"#
            )),
            "1: mount_references[0] must be read-only (read_only: false is not allowed)"
        );
        assert_eq!(
            errors(&row(
                r#"{"id":"a"}"#,
                r#","mount_references":[{"source":"/d","target":"/m","read_only":true},{}]"#
            )),
            [
                "1: mount_references[1].source is required (a non-empty string)",
                "1: mount_references[1].target is required (a non-empty string)"
            ]
        );
        assert_eq!(
            one_error(&row(r#"{"id":"a"}"#, r#","mount_references":["/d"]"#)),
            "1: mount_references[0] must be an object with source and target, found a string"
        );
        assert_eq!(
            one_error(&row(r#"{"id":"a"}"#, r#","mount_references":{}"#)),
            "1: mount_references must be an array, found an object"
        );
        assert_eq!(
            one_error(&row(
                r#"{"id":"a"}"#,
                r#","mount_references":[{"source":"/d","target":"/m","read_only":"yes"}]"#
            )),
            r#"1: mount_references[0].read_only must be true, found "yes""#
        );
    }

    #[test]
    fn duplicate_ids_are_an_error_naming_the_first_line() {
        let text = format!("{GOOD}\n{}\n{GOOD}\n", row(r#"{"id":"t2"}"#, ""));
        assert_eq!(
            one_error(&text),
            "3: duplicate task id 't1' (first on line 1)"
        );
    }

    #[test]
    fn every_error_of_every_row_is_reported_with_its_line() {
        let text = format!(
            "{GOOD}\nnot json\n\n{}\n",
            r#"{"schema_version":"v1","task":{"id":"b","image":""},"extra":1}"#
        );
        let err = parse_rows(&text, Path::new("data/rows.jsonl")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "data/rows.jsonl:2: not valid JSON: expected ident at line 1 column 2\n\
             data/rows.jsonl:4: schema_version must be \"task_boundary_v2\", found \"v1\"\n\
             data/rows.jsonl:4: unknown top-level key 'extra' (allowed: schema_version, task, workspace_files, mount_references, limits)\n\
             data/rows.jsonl:4: task.image must be a non-empty string"
        );
    }

    #[test]
    fn an_empty_file_has_no_rows() {
        assert_eq!(parse_rows("\n  \n", Path::new("r")).unwrap(), vec![]);
    }

    #[test]
    fn a_byte_order_mark_is_ignored() {
        let rows = parse_rows(&format!("\u{feff}{GOOD}\n"), Path::new("r")).unwrap();
        assert_eq!(rows[0].id, "t1");
    }

    #[test]
    fn require_images_gives_the_exact_boundary_message() {
        let rows = parse_rows(
            &format!(
                "{GOOD}\n{}\n{}\n",
                row(r#"{"id":"no-image"}"#, ""),
                row(r#"{"id":"also"}"#, "")
            ),
            Path::new("r"),
        )
        .unwrap();
        assert_eq!(
            require_images(&rows).unwrap_err(),
            "task.image is required for task 'no-image' when runtime.agent.image_source='per_task'\n\
             task.image is required for task 'also' when runtime.agent.image_source='per_task'"
        );
        assert_eq!(require_images(&rows[..1]), Ok(()));
    }

    fn parse_one(line: &str) -> TaskRow {
        parse_rows(line, Path::new("r")).unwrap().remove(0)
    }

    #[test]
    fn materialize_with_an_image_uses_it_directly() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = materialize(&parse_one(GOOD), tmp.path()).unwrap();
        assert_eq!(dir, tmp.path().join("t1"));
        assert_eq!(
            std::fs::read_to_string(dir.join("instruction.md")).unwrap(),
            "fix it"
        );
        let toml = std::fs::read_to_string(dir.join("task.toml")).unwrap();
        assert!(toml.contains("docker_image = \"python:3.12\""), "{toml}");
        assert!(toml.contains("workdir = \"/workspace/repo\""), "{toml}");
        assert!(!dir.join("environment/Dockerfile").exists());
        assert_eq!(
            std::fs::read_to_string(dir.join("tests/grader.sh")).unwrap(),
            "pytest -q\n"
        );
        let test_sh = std::fs::read_to_string(dir.join("tests/test.sh")).unwrap();
        assert!(
            test_sh.contains("cd /workspace/repo ")
                && test_sh.contains("echo 1 > /logs/verifier/reward.txt"),
            "{test_sh}"
        );
        let task = rollout_core::Task::load(&dir).unwrap();
        assert_eq!(task.name, "t1");
        assert_eq!(
            task.config.environment.docker_image.as_deref(),
            Some("python:3.12")
        );
        assert_eq!(
            task.config.environment.workdir.as_deref(),
            Some("/workspace/repo")
        );
        // Again: the directory is replaced, not merged.
        std::fs::write(dir.join("stale"), "x").unwrap();
        let again = materialize(&parse_one(GOOD), tmp.path()).unwrap();
        assert!(!again.join("stale").exists());
    }

    #[test]
    fn materialize_with_workspace_files_builds_a_dockerfile() {
        let tmp = tempfile::tempdir().unwrap();
        let r = parse_one(&row(
            r#"{"id":"t","image":"python:3.12","problem_statement":"solve","test_command":["make","make test"]}"#,
            r#","workspace_files":{"src/a.py":"x = 1\n","Makefile":"all:\n"}"#,
        ));
        let dir = materialize(&r, tmp.path()).unwrap();
        let toml = std::fs::read_to_string(dir.join("task.toml")).unwrap();
        assert!(!toml.contains("docker_image"), "{toml}");
        assert_eq!(
            std::fs::read_to_string(dir.join("environment/Dockerfile")).unwrap(),
            "FROM python:3.12\nCOPY [\"workspace/\",\"/workspace/\"]\nWORKDIR /workspace\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("environment/workspace/src/a.py")).unwrap(),
            "x = 1\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("instruction.md")).unwrap(),
            "solve"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("tests/grader.sh")).unwrap(),
            "make\nmake test\n"
        );
        let task = rollout_core::Task::load(&dir).unwrap();
        assert_eq!(task.config.environment.docker_image, None);
    }

    #[test]
    fn materialize_without_a_grader_is_a_task_without_tests() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = materialize(
            &parse_one(&row(r#"{"id":"t","prompt":"p"}"#, "")),
            tmp.path(),
        )
        .unwrap();
        assert!(!dir.join("tests/test.sh").exists());
        // No image at all: a buildable default environment.
        assert!(std::fs::read_to_string(dir.join("environment/Dockerfile"))
            .unwrap()
            .starts_with(&format!("FROM {DEFAULT_IMAGE}\n")));
        // Its trials end task_invalid, as any task without tests.
        let task = rollout_core::Task::load_or_invalid(&dir).unwrap();
        let why = task.invalid.expect("a task without tests is invalid");
        assert!(why.contains("tests/test.sh"), "{why}");
    }

    #[test]
    fn materialize_needs_an_instruction() {
        let tmp = tempfile::tempdir().unwrap();
        let err = materialize(
            &parse_one(&row(r#"{"id":"t","image":"x"}"#, "")),
            tmp.path(),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "task 't' has no instruction: set task.instruction, task.prompt or task.problem_statement");
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "nothing half-written is left"
        );
    }

    #[test]
    fn materialize_refuses_unsafe_rows_built_by_hand() {
        let tmp = tempfile::tempdir().unwrap();
        let mut r = parse_one(GOOD);
        r.workspace_files.insert("../../escape".into(), "x".into());
        assert_eq!(
            materialize(&r, tmp.path()).unwrap_err().to_string(),
            "'../../escape' must be a relative path without '..'"
        );
        let mut r = parse_one(GOOD);
        r.id = "..".into();
        assert_eq!(
            materialize(&r, tmp.path()).unwrap_err().to_string(),
            "task id '..' cannot be a directory name"
        );
    }
}
