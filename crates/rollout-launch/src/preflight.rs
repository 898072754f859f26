//! `rollout preflight`: check everything that can fail before a run spends agent time, without
//! running an agent (docs/preflight.md).
//!
//! Eight checks, always all of them, always in this order: [`CHECKS`]. Each yields
//! `{name, passed, severity, message}`; the run is `ok` when no check failed with severity
//! `error`. A check that cannot run because an earlier one failed is reported as a failed
//! `warning` whose message starts with `skipped:` and names the check it depends on.
//!
//! Tasks are loaded source by source with the same loader as `rollout run`; a directory source
//! that fails to load is still walked task by task, so that the file checks can say what is
//! missing in each task rather than only that the source failed.

/// What `rollout preflight` checks: a job file (or experiment file) and the flags it shares with
/// `rollout run`.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// A job file (YAML or JSON), or an experiment file.
    pub config: Option<PathBuf>,
    /// Task directories, dataset directories or JSONL row files.
    pub paths: Vec<PathBuf>,
    /// Agents to check.
    pub agents: Vec<String>,
    /// Build (or pull) every image needed instead of only checking they can be.
    pub build: bool,
}
use rollout_agents::Agent;
use rollout_core::experiment;
use rollout_core::job_config::{AgentSpec, PullPolicy};
use rollout_core::task_config::{NetworkMode, TaskConfig};
use rollout_core::timeouts::{Multipliers, Timeouts};
use rollout_core::{labels, JobConfig, Task, TaskFilter};
use rollout_env::buildctx::context_digest;
use rollout_env::docker::{DockerProvider, EngineLimits};
use rollout_env::{EnvSpec, ExecRequest, ImageSource, PreparedImage, Provider};
use rollout_sources::executor::ExecutorOptions;
use rollout_sources::git::GitCache;
use rollout_sources::job::{load_job_tasks, SourceOptions};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const CONFIG_VALID: &str = "config_valid";
pub const DATASET_TASK_IDS: &str = "dataset_task_ids";
pub const PROBE_TRIAL_INPUT: &str = "probe_trial_input";
pub const DEPENDENCY_FILES_EXIST: &str = "dependency_files_exist";
pub const BENCHMARK_GRADER_REACHABLE: &str = "benchmark_grader_reachable";
pub const AGENT_READY: &str = "agent_ready";
pub const CONTAINER_READY: &str = "container_ready";
pub const DISK_HEADROOM: &str = "disk_headroom";

/// Every check, in the order they run and are printed.
pub const CHECKS: [&str; 8] = [
    CONFIG_VALID,
    DATASET_TASK_IDS,
    PROBE_TRIAL_INPUT,
    DEPENDENCY_FILES_EXIST,
    BENCHMARK_GRADER_REACHABLE,
    AGENT_READY,
    CONTAINER_READY,
    DISK_HEADROOM,
];

/// Connecting to the engine (the provider itself gives up after 20 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(25);
/// Any single quick engine call (inspect, version, remove …).
const ENGINE_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Pulling one image.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// Creating and starting the probe container.
const CREATE_TIMEOUT: Duration = Duration::from_secs(120);
/// The probe command inside the container.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time granted to a build beyond its own build timeout (the provider enforces that one).
const BUILD_GRACE: Duration = Duration::from_secs(60);

/// Disk estimate per trial (logs, agent output, artifacts).
const TRIAL_BYTES: u64 = 50 << 20;
/// Disk estimate per environment image still to build.
const IMAGE_BYTES: u64 = 500 << 20;
/// Problems listed in one message before "… and N more".
const MAX_LISTED: usize = 8;

/// How serious a failed check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    /// `error` for a passed check or one that failed with at least one error; `warning` for a
    /// check that failed with warnings only (or was skipped).
    pub severity: Severity,
    pub message: String,
}

impl Check {
    /// An error-severity failure (the run would fail).
    pub fn is_error(&self) -> bool {
        !self.passed && self.severity == Severity::Error
    }

    fn skipped(name: &'static str, why: impl std::fmt::Display) -> Self {
        Self {
            name,
            passed: false,
            severity: Severity::Warning,
            message: format!("skipped: {why}"),
        }
    }
}

/// The JSON printed by `--json`.
#[derive(Debug, Serialize)]
struct Report<'a> {
    ok: bool,
    checks: &'a [Check],
}

/// What one check found.
#[derive(Debug, Default)]
struct Problems {
    errors: Vec<String>,
    warnings: Vec<String>,
}

impl Problems {
    fn error(&mut self, m: impl Into<String>) {
        self.errors.push(m.into());
    }

    fn warn(&mut self, m: impl Into<String>) {
        self.warnings.push(m.into());
    }

    /// The check: failed with errors, else failed with warnings, else passed with `passed`.
    fn into_check(self, name: &'static str, passed: impl Into<String>) -> Check {
        if !self.errors.is_empty() {
            let mut message = list(&self.errors);
            if !self.warnings.is_empty() {
                message.push_str(&format!(" (warnings: {})", list(&self.warnings)));
            }
            Check {
                name,
                passed: false,
                severity: Severity::Error,
                message,
            }
        } else if !self.warnings.is_empty() {
            Check {
                name,
                passed: false,
                severity: Severity::Warning,
                message: list(&self.warnings),
            }
        } else {
            Check {
                name,
                passed: true,
                severity: Severity::Error,
                message: one_line(&passed.into()),
            }
        }
    }
}

/// At most [`MAX_LISTED`] items on one line.
fn list(items: &[String]) -> String {
    let mut shown: Vec<String> = items.iter().take(MAX_LISTED).map(|s| one_line(s)).collect();
    if items.len() > MAX_LISTED {
        shown.push(format!("… and {} more", items.len() - MAX_LISTED));
    }
    shown.join("; ")
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Names, comma-separated, at most [`MAX_LISTED`].
fn names<S: AsRef<str>>(items: &[S]) -> String {
    let mut shown: Vec<&str> = items.iter().take(MAX_LISTED).map(AsRef::as_ref).collect();
    let more;
    if items.len() > MAX_LISTED {
        more = format!("… and {} more", items.len() - MAX_LISTED);
        shown.push(&more);
    }
    shown.join(", ")
}

/// The JSON report: `{"ok", "checks": [...]}`.
pub fn json_report(checks: &[Check]) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&Report {
        ok: passed(checks),
        checks,
    })
}

/// Whether no check failed with severity `error`.
pub fn passed(checks: &[Check]) -> bool {
    !checks.iter().any(Check::is_error)
}

/// The text report: one line per check, then a summary line.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let tag = match (c.passed, c.severity) {
            (true, _) => "PASS",
            (false, Severity::Error) => "FAIL",
            (false, Severity::Warning) => "WARN",
        };
        out.push_str(&format!("[{tag}] {}: {}\n", c.name, c.message));
    }
    let passed = checks.iter().filter(|c| c.passed).count();
    let failed = checks.iter().filter(|c| c.is_error()).count();
    let warned = checks.len() - passed - failed;
    let verdict = if failed == 0 {
        "preflight ok"
    } else {
        "preflight FAILED"
    };
    out.push_str(&format!(
        "{verdict}: {passed} passed, {warned} warning(s), {failed} failed ({} checks)\n",
        checks.len()
    ));
    out
}

/// Run every check; the result always holds all of [`CHECKS`], in order.
pub fn run_checks(args: &Request) -> Vec<Check> {
    let (config_check, loaded) = check_config(args);
    let Some(loaded) = loaded else {
        let mut checks = vec![config_check];
        checks.extend(
            CHECKS[1..].iter().map(|name| {
                Check::skipped(name, format!("depends on {CONFIG_VALID}, which failed"))
            }),
        );
        return checks;
    };
    checks_for(config_check, &loaded, Depth::Full { build: args.build })
}

/// How much of the engine a run of the checks touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Everything, building images with `build`.
    Full { build: bool },
    /// What `rollout run` checks before it starts: no engine call (the run connects and builds
    /// right after), so `container_ready` is skipped.
    Cheap,
}

/// A job configuration ready for the checks.
pub struct Loaded {
    pub config: JobConfig,
    /// Problems of the dataset found while preparing the configuration (an experiment's rows).
    pub dataset_errors: Vec<String>,
    /// Holds an experiment's task directories while the checks read them.
    _tasks_dir: Option<tempfile::TempDir>,
}

impl Loaded {
    pub fn job(config: JobConfig) -> Self {
        Self {
            config,
            dataset_errors: Vec::new(),
            _tasks_dir: None,
        }
    }
}

/// The checks after `config_valid`, on a configuration that passed it.
pub fn checks_for(config_check: Check, loaded: &Loaded, depth: Depth) -> Vec<Check> {
    let mut checks = vec![config_check];
    let mut config = loaded.config.clone();
    let sources = load_sources(&config);
    if config.agents.is_empty() && !sources.archive_agents.is_empty() {
        // As `rollout run`: an archive's agent code is the default agent.
        config.agents = sources
            .archive_agents
            .iter()
            .map(|p| AgentSpec {
                name: format!("code:{}", p.display()),
                ..Default::default()
            })
            .collect();
    }
    let agents: Vec<ResolvedAgent> = config
        .effective_agents()
        .into_iter()
        .map(|spec| ResolvedAgent {
            agent: rollout_agents::from_spec(&spec),
            spec,
        })
        .collect();
    checks.push(check_dataset(&sources, &loaded.dataset_errors, depth));
    // A task that cannot run (invalid files, keys rollout refuses) is reported above. Before a
    // run the other checks look only at the tasks that will run (the others fail their own
    // trials); `rollout preflight` checks every task in full.
    let cheap = depth == Depth::Cheap;
    let runnable: Vec<Candidate> = sources
        .tasks
        .iter()
        .filter(|c| !cheap || (c.task.invalid.is_none() && c.task.config.unsupported.is_empty()))
        .map(|c| Candidate {
            task: c.task.clone(),
            toml_error: c.toml_error.clone(),
        })
        .collect();
    let tasks = &runnable;

    let no_tasks = format!("no task could be loaded (see {DATASET_TASK_IDS})");
    if tasks.is_empty() {
        checks.push(Check::skipped(PROBE_TRIAL_INPUT, &no_tasks));
        checks.push(Check::skipped(DEPENDENCY_FILES_EXIST, &no_tasks));
        checks.push(Check::skipped(BENCHMARK_GRADER_REACHABLE, &no_tasks));
    } else {
        checks.push(check_trial_input(tasks, &agents));
        checks.push(check_dependency_files(tasks, &agents));
        checks.push(check_grader(tasks, &config));
    }
    checks.push(check_agents(&agents, tasks));

    let build = match depth {
        Depth::Full { build } => build,
        Depth::Cheap => {
            checks.push(Check::skipped(
                CONTAINER_READY,
                "not checked before a run (the run connects to the engine next); `rollout preflight` checks it",
            ));
            let facts = ContainerFacts {
                images_to_build: count_builds(tasks),
                docker_root: None,
            };
            let trials = tasks.len() * agents.len() * config.attempts() as usize;
            checks.push(check_disk(&config, trials, &facts));
            return checks;
        }
    };
    let facts = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => {
            let (check, facts) = rt.block_on(check_container(&config, tasks, build));
            checks.push(check);
            facts
        }
        Err(e) => {
            let mut p = Problems::default();
            p.error(format!("cannot start the async runtime: {e}"));
            checks.push(p.into_check(CONTAINER_READY, ""));
            ContainerFacts {
                images_to_build: count_builds(tasks),
                docker_root: None,
            }
        }
    };
    let trials = tasks.len() * agents.len() * config.attempts() as usize;
    checks.push(check_disk(&config, trials, &facts));
    checks
}

/// `rollout run`'s own preflight: the cheap checks on the job it is about to run. Prints every
/// failed check and returns false when one failed with an error (the run must not start).
pub fn gate(config: &JobConfig, dataset_errors: Vec<String>) -> bool {
    let loaded = Loaded {
        config: config.clone(),
        dataset_errors,
        _tasks_dir: None,
    };
    let passed = Check {
        name: CONFIG_VALID,
        passed: true,
        severity: Severity::Error,
        message: "checked by rollout run".into(),
    };
    let checks = checks_for(passed, &loaded, Depth::Cheap);
    let mut ok = true;
    for c in checks
        .iter()
        .filter(|c| !c.passed && !c.message.starts_with("skipped:"))
    {
        let tag = if c.is_error() { "FAIL" } else { "WARN" };
        eprintln!("[{tag}] {}: {}", c.name, c.message);
        ok &= !c.is_error();
    }
    if !ok {
        eprintln!(
            "error: preflight failed: nothing was run. Fix the problems above (`rollout preflight` \
             checks everything, including images), or skip these checks with --no-preflight"
        );
    }
    ok
}

// ---------------------------------------------------------------------------------------------
// config_valid

/// The job configuration exactly as `rollout run` would build it from the same file and flags.
fn check_config(args: &Request) -> (Check, Option<Loaded>) {
    if let Some(file) = args
        .config
        .as_deref()
        .filter(|c| experiment::is_experiment_file(c))
    {
        return check_experiment(file);
    }
    let (check, config) = check_job_config(args);
    (check, config.map(Loaded::job))
}

/// config_valid of an experiment file: its fields and boundaries; its rows are written as task
/// directories into a temporary directory for the other checks, and problems of the rows (a
/// missing `task.image` in per-task mode) go to `dataset_task_ids`.
fn check_experiment(file: &Path) -> (Check, Option<Loaded>) {
    let mut p = Problems::default();
    let exp = match experiment::load(file) {
        Ok(e) => e,
        Err(e) => {
            for m in e.errors {
                p.error(m);
            }
            return (p.into_check(CONFIG_VALID, ""), None);
        }
    };
    let tmp = match tempfile::Builder::new()
        .prefix("rollout-preflight-")
        .tempdir()
    {
        Ok(t) => t,
        Err(e) => {
            p.error(format!(
                "cannot create a temporary directory for the experiment's tasks: {e}"
            ));
            return (p.into_check(CONFIG_VALID, ""), None);
        }
    };
    let mut dataset_errors = Vec::new();
    let rows = match rollout_sources::experiment::rows(&exp) {
        Ok(rows) => rows,
        Err(errors) => {
            dataset_errors = errors;
            // Check what can be checked of the rows that name their image.
            rollout_sources::jsonl::load_rows(&exp.dataset)
                .map(|rows| rows.into_iter().filter(|r| r.image.is_some()).collect())
                .unwrap_or_default()
        }
    };
    let tasks_dir = tmp.path().join("tasks");
    for row in &rows {
        let opts = rollout_sources::experiment::options(&exp, row);
        if let Err(e) = rollout_sources::jsonl::materialize_with(row, &tasks_dir, &opts) {
            dataset_errors.push(format!("task '{}' (line {}): {e}", row.id, row.line));
        }
    }
    let mut config = rollout_sources::experiment::job_config(&exp, &tasks_dir);
    config.jobs_dir = Some(crate::experiment::RUNS_DIR.into());
    if rows.is_empty() {
        config.datasets.clear();
    }
    let check = p.into_check(
        CONFIG_VALID,
        format!(
            "experiment {} ({}) is valid: image_source {}, {} row(s), {} replication(s){}",
            exp.id,
            file.display(),
            match exp.image_source {
                experiment::ImageSource::Global => "global",
                experiment::ImageSource::PerTask => "per_task",
            },
            rows.len(),
            exp.replications,
            if exp.grader.is_some() {
                ", benchmark adapter set"
            } else {
                ""
            }
        ),
    );
    let loaded = Loaded {
        config,
        dataset_errors,
        _tasks_dir: Some(tmp),
    };
    (check, Some(loaded))
}

/// config_valid of a job file and flags.
fn check_job_config(args: &Request) -> (Check, Option<JobConfig>) {
    let mut p = Problems::default();
    // The same configuration `rollout run` builds from the same file and flags.
    let overrides = crate::Overrides {
        paths: args.paths.clone(),
        agents: args.agents.clone(),
        ..Default::default()
    };
    let config = match crate::job_config(args.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            let hint = match &args.config {
                Some(c) if c.is_dir() => {
                    " (the positional argument is a job file; give a task or dataset directory with -p)"
                }
                _ => "",
            };
            p.error(format!("{e}{hint}"));
            return (p.into_check(CONFIG_VALID, ""), None);
        }
    };
    // The provider the run would pick: one it does not have is refused here as there.
    if let Err(e) = crate::provider::check(&config, &[]) {
        p.error(e.to_string());
    }
    if let Some(name) = &config.name {
        let dir = config
            .jobs_dir
            .clone()
            .unwrap_or_else(|| "jobs".into())
            .join(name);
        if dir.join("config.json").is_file() {
            p.warn(format!(
                "job directory {} exists: `rollout run` resumes it, and refuses if the configuration differs",
                dir.display()
            ));
        }
    }
    let origin = match &args.config {
        Some(c) => format!("job file {}", c.display()),
        None => "command line".to_string(),
    };
    let n_sources = config.datasets.len() + config.tasks.len() + config.archives.len();
    let agent_names: Vec<String> = config
        .effective_agents()
        .iter()
        .map(|a| a.name.clone())
        .collect();
    let agents = if config.agents.is_empty() && !config.archives.is_empty() {
        "the archives' agent code".to_string()
    } else {
        names(&agent_names)
    };
    let check = p.into_check(
        CONFIG_VALID,
        format!("{origin} is valid: {n_sources} task source(s); agents: {agents}"),
    );
    (check, Some(config))
}

// ---------------------------------------------------------------------------------------------
// Loading tasks

/// A task to check: loaded by the sources loader, or read file by file when it could not be.
struct Candidate {
    task: Task,
    /// Parse error of `task.toml` (then `task.config` holds the defaults).
    toml_error: Option<String>,
}

impl Candidate {
    fn loaded(task: Task) -> Self {
        if let Some(why) = &task.invalid {
            // Loaded leniently (its trials would end task_invalid): read what can be read, so
            // the file checks name what is wrong.
            let mut c = Self::unloaded(&task.dir, task.dataset.clone());
            c.task.invalid = Some(why.clone());
            return c;
        }
        Self {
            task,
            toml_error: None,
        }
    }

    /// A task directory the loader refused: what can be read of it, without validation.
    fn unloaded(dir: &Path, dataset: Option<String>) -> Self {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let toml = dir.join("task.toml");
        let (config, toml_error) = if toml.is_file() {
            match TaskConfig::load(&toml) {
                Ok(c) => (c, None),
                Err(e) => (TaskConfig::default(), Some(e.to_string())),
            }
        } else {
            (TaskConfig::default(), None)
        };
        let task = Task {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            instruction: std::fs::read_to_string(dir.join("instruction.md")).unwrap_or_default(),
            step_instructions: Vec::new(),
            checksum: rollout_core::digest::dir_digest(&dir)
                .map(|h| h.to_hex().to_string())
                .unwrap_or_default(),
            config,
            dir,
            dataset,
            invalid: None,
        };
        Self { task, toml_error }
    }

    fn name(&self) -> &str {
        &self.task.name
    }

    /// A task generated from a `task_boundary_v2` JSONL row.
    fn is_jsonl_row(&self) -> bool {
        self.task.config.source.as_deref() == Some(rollout_sources::jsonl::SCHEMA_VERSION)
    }

    fn dockerfile(&self) -> PathBuf {
        self.task.environment_dir().join("Dockerfile")
    }
}

/// Every task the job names, source by source.
#[derive(Default)]
struct Sources {
    tasks: Vec<Candidate>,
    /// What the loader reported, source by source.
    errors: Vec<String>,
    count: usize,
    archive_agents: Vec<PathBuf>,
}

/// Load each source on its own with the loader of `rollout run`, so that one bad source does not
/// hide the tasks of the others.
fn load_sources(config: &JobConfig) -> Sources {
    let ca = crate::ca::bundle(&crate::ca::CaCerts::Auto).ok().flatten();
    let options = |archives: Vec<PathBuf>| SourceOptions {
        git: GitCache::new(GitCache::default_root()),
        parallel_clones: 4,
        archives,
        executor: ExecutorOptions {
            base_image: config.executor_image.clone(),
            ca_bundle: ca.clone(),
            ..Default::default()
        },
        policy: None,
    };
    let mut out = Sources::default();
    for d in &config.datasets {
        out.count += 1;
        let one = JobConfig {
            datasets: vec![d.clone()],
            shuffle_seed: config.shuffle_seed,
            ..Default::default()
        };
        match load_job_tasks(&one, &options(Vec::new())) {
            Ok(loaded) => out
                .tasks
                .extend(loaded.tasks.into_iter().map(Candidate::loaded)),
            Err(errors) => {
                out.errors.extend(errors);
                if let Some(path) = &d.path {
                    out.tasks.extend(walk_tasks(
                        path,
                        &d.task_names,
                        &d.exclude_task_names,
                        d.n_tasks,
                    ));
                }
            }
        }
    }
    for t in &config.tasks {
        out.count += 1;
        let one = JobConfig {
            tasks: vec![t.clone()],
            ..Default::default()
        };
        match load_job_tasks(&one, &options(Vec::new())) {
            Ok(loaded) => out
                .tasks
                .extend(loaded.tasks.into_iter().map(Candidate::loaded)),
            Err(errors) => {
                out.errors.extend(errors);
                out.tasks.extend(walk_tasks(&t.path, &[], &[], None));
            }
        }
    }
    for a in &config.archives {
        out.count += 1;
        match load_job_tasks(&JobConfig::default(), &options(vec![a.clone()])) {
            Ok(loaded) => {
                out.tasks
                    .extend(loaded.tasks.into_iter().map(Candidate::loaded));
                out.archive_agents.extend(loaded.archive_agents);
            }
            Err(errors) => out.errors.extend(errors),
        }
    }
    out
}

/// The task directories of a directory source that failed to load, each loaded on its own when
/// it can be, else read as is.
fn walk_tasks(
    path: &Path,
    include: &[String],
    exclude: &[String],
    limit: Option<usize>,
) -> Vec<Candidate> {
    if !path.is_dir() {
        return Vec::new();
    }
    let (dirs, dataset) = if Task::is_task_dir(path) {
        (vec![path.to_path_buf()], None)
    } else {
        let filter = TaskFilter::new(include, exclude, None).unwrap_or_default();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_dir() && Task::is_task_dir(p))
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| filter.matches(&n.to_string_lossy()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        dirs.sort();
        if let Some(n) = limit {
            dirs.truncate(n);
        }
        let dataset = path
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        (dirs, dataset)
    };
    dirs.iter()
        .map(|d| match Task::load(d) {
            Ok(mut t) => {
                t.dataset = dataset.clone();
                Candidate::loaded(t)
            }
            Err(_) => Candidate::unloaded(d, dataset.clone()),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// dataset_task_ids

/// Path-safe label, as the planner makes them.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The task part of trial directory names, as the planner makes it: the name, plus a checksum
/// prefix where two different tasks share a name.
fn task_labels(tasks: &[Candidate]) -> Vec<String> {
    let mut by_name: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for c in tasks {
        by_name
            .entry(c.name())
            .or_default()
            .insert(&c.task.checksum);
    }
    tasks
        .iter()
        .map(|c| {
            if by_name[c.name()].len() > 1 {
                let prefix: String = c.task.checksum.chars().take(8).collect();
                format!("{}-{prefix}", sanitize(c.name()))
            } else {
                sanitize(c.name())
            }
        })
        .collect()
}

fn check_dataset(sources: &Sources, extra_errors: &[String], depth: Depth) -> Check {
    let mut p = Problems::default();
    for e in sources.errors.iter().chain(extra_errors) {
        p.error(e.clone());
    }
    // `rollout preflight` reports a task that cannot run as an error; before `rollout run` it is
    // a warning, since the job runs the other tasks and fails that one's trials alone.
    let mut cannot_run = |m: String| match depth {
        Depth::Full { .. } => p.error(m),
        Depth::Cheap => p.warn(m),
    };
    for c in &sources.tasks {
        if let Some(why) = &c.task.invalid {
            cannot_run(format!(
                "task {} is invalid ({why}): its trials end task_invalid",
                c.name()
            ));
        }
        for why in c.task.unsupported() {
            cannot_run(format!(
                "task {} cannot run here ({why}): its trials end environment_unsupported",
                c.name()
            ));
        }
    }
    let tasks = &sources.tasks;
    if tasks.is_empty() && sources.errors.is_empty() && extra_errors.is_empty() {
        p.error("no tasks: every task was filtered out (check -t/-x/-l or the job's task_names)");
    }
    let mut by_name: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
    for c in tasks {
        by_name.entry(c.name()).or_default().push(c);
    }
    for (name, group) in &by_name {
        let sums: BTreeSet<&str> = group.iter().map(|c| c.task.checksum.as_str()).collect();
        if sums.len() > 1 {
            let dirs: Vec<String> = group
                .iter()
                .map(|c| c.task.dir.display().to_string())
                .collect();
            p.warn(format!(
                "{} different tasks are named {name} ({}): their trial directories get a checksum suffix",
                sums.len(),
                names(&dirs)
            ));
        }
    }
    let labels = task_labels(tasks);
    let mut by_label: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
    for (c, l) in tasks.iter().zip(&labels) {
        by_label.entry(l).or_default().push(c);
    }
    for (label, group) in &by_label {
        if group.len() > 1 {
            let dirs: BTreeSet<String> = group
                .iter()
                .map(|c| c.task.dir.display().to_string())
                .collect();
            let dirs: Vec<String> = dirs.into_iter().collect();
            let why = if dirs.len() == 1 {
                format!("task {} is listed {} times", dirs[0], group.len())
            } else {
                format!("{} identical tasks ({})", group.len(), names(&dirs))
            };
            p.warn(format!(
                "{why}: it runs once (trial directories {label}__<agent>__<attempt>)"
            ));
        }
    }
    p.into_check(
        DATASET_TASK_IDS,
        format!(
            "{} task(s) from {} source(s); task ids and trial directory names are unique",
            tasks.len(),
            sources.count,
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// probe_trial_input

struct ResolvedAgent {
    spec: AgentSpec,
    agent: Result<Arc<dyn Agent>, String>,
}

/// Every file under `path` can be opened (at most 10 000 entries are looked at).
fn readable(path: &Path) -> Result<(), String> {
    let mut stack = vec![path.to_path_buf()];
    let mut seen = 0usize;
    while let Some(p) = stack.pop() {
        seen += 1;
        if seen > 10_000 {
            break;
        }
        let meta = std::fs::metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.is_dir() {
            let rd = std::fs::read_dir(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            for e in rd {
                let e = e.map_err(|e| format!("{}: {e}", p.display()))?;
                stack.push(e.path());
            }
        } else if meta.is_file() {
            std::fs::File::open(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    Ok(())
}

fn check_trial_input(tasks: &[Candidate], agents: &[ResolvedAgent]) -> Check {
    let mut p = Problems::default();
    for c in tasks {
        let t = &c.task;
        let name = c.name();
        if let Some(e) = &c.toml_error {
            p.error(format!("{name}: {e}"));
        }
        let instruction = t.dir.join("instruction.md");
        if t.is_multi_step() {
            for f in rollout_core::task::step_findings(&t.dir, &t.config) {
                let rel = f
                    .path
                    .strip_prefix(&t.dir)
                    .unwrap_or(&f.path)
                    .display()
                    .to_string();
                match f.severity {
                    rollout_core::task::Severity::Error => {
                        p.error(format!("{name}: {rel}: {}", f.message))
                    }
                    rollout_core::task::Severity::Warning => {
                        p.warn(format!("{name}: {rel}: {}", f.message))
                    }
                }
            }
        } else if !instruction.is_file() {
            p.error(format!("{name}: no instruction: instruction.md is missing"));
        } else if std::fs::read_to_string(&instruction).is_err() {
            p.error(format!("{name}: instruction.md is not readable UTF-8 text"));
        } else if t.instruction.trim().is_empty() {
            p.error(format!("{name}: instruction.md is empty"));
        }
        match &t.config.environment.docker_image {
            Some(image) if image.trim().is_empty() => {
                p.error(format!("{name}: [environment] docker_image is empty"));
            }
            Some(_) => {}
            None if c.dockerfile().is_file() => {
                if let Err(e) = readable(&t.environment_dir()) {
                    p.error(format!("{name}: environment/ cannot be sent to the build: {e}"));
                }
            }
            None => p.error(format!(
                "{name}: no environment: neither environment/Dockerfile nor [environment] docker_image"
            )),
        }
        let test_sh = t.tests_dir().join("test.sh");
        if t.is_multi_step() {
            let dirs = std::iter::once(t.tests_dir()).chain(
                t.config
                    .steps
                    .iter()
                    .map(|s| t.step_dir(&s.name).join("tests")),
            );
            for dir in dirs {
                {
                    if dir.is_dir() {
                        if let Err(e) = readable(&dir) {
                            p.error(format!(
                                "{name}: {} cannot be copied in: {e}",
                                dir.strip_prefix(&t.dir).unwrap_or(&dir).display()
                            ));
                        }
                    }
                }
            }
        } else if !test_sh.is_file() {
            p.error(format!("{name}: tests/test.sh is missing"));
        } else if let Err(e) = readable(&t.tests_dir()) {
            p.error(format!("{name}: tests/ cannot be copied in: {e}"));
        }
        if t.checksum.is_empty() {
            p.error(format!("{name}: the task's files cannot all be read"));
        }
        for (table, env) in [
            ("[environment] env", &t.config.environment.env),
            ("[verifier] env", &t.config.verifier.env),
        ] {
            let (_, missing) = rollout_core::envvars::expand_map(env);
            let missing: BTreeSet<String> = missing.into_iter().collect();
            if !missing.is_empty() {
                let vars: Vec<String> = missing.iter().map(|v| format!("${{{v}}}")).collect();
                p.warn(format!(
                    "{name}: {table} uses {} without a default, unset on this host (it will be empty)",
                    vars.join(", ")
                ));
            }
        }
        for a in agents {
            let Ok(agent) = &a.agent else { continue };
            if agent.check(t).is_err() {
                continue; // agent_ready reports it
            }
            for f in agent.files(t) {
                if let Err(e) = readable(&f.source) {
                    p.error(format!(
                        "{name}: agent {} needs {} at {}, which cannot be read: {e}",
                        a.spec.name,
                        f.source.display(),
                        f.target
                    ));
                }
            }
        }
    }
    let first = tasks.first().map(|c| c.name()).unwrap_or("-");
    p.into_check(
        PROBE_TRIAL_INPUT,
        format!(
            "the trial input of all {} task(s) can be materialised (first: {first}): instruction, environment, tests, env variables, agent files",
            tasks.len()
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// dependency_files_exist

fn check_dependency_files(tasks: &[Candidate], agents: &[ResolvedAgent]) -> Check {
    let mut p = Problems::default();
    let oracle = agents.iter().any(|a| a.spec.name == "oracle");
    let mut no_solution = Vec::new();
    for c in tasks {
        let t = &c.task;
        let name = c.name();
        let mut missing = Vec::new();
        // A multi-step task's files (each step's instruction.md and test.sh) are checked by
        // check_trial_input (rollout_core::task::step_findings).
        if !t.is_multi_step() {
            if !t.dir.join("instruction.md").is_file() {
                missing.push("instruction.md");
            }
            if !t.tests_dir().join("test.sh").is_file() {
                missing.push("tests/test.sh");
            }
        }
        if t.config.environment.docker_image.is_none() && !c.dockerfile().is_file() {
            let env = t.environment_dir();
            if env.join("docker-compose.yaml").is_file() || env.join("docker-compose.yml").is_file()
            {
                p.error(format!(
                    "{name}: environment/docker-compose.yaml has no image for its main service: add environment/Dockerfile or set [environment] docker_image"
                ));
            } else {
                missing.push("environment/Dockerfile (or [environment] docker_image)");
            }
        }
        if !missing.is_empty() {
            p.error(format!("{name}: missing {}", missing.join(", ")));
        }
        // A compose file rollout cannot run fails that task's trials (environment_unsupported);
        // the rest of the job runs, so this is a warning here.
        let (mut env_vars, _) = rollout_core::envvars::expand_map(&t.config.environment.env);
        env_vars.insert(
            "MAIN_IMAGE_NAME".into(),
            rollout_core::compose::MAIN_IMAGE_PLACEHOLDER.into(),
        );
        if let Err(e) = rollout_core::compose::load(&t.environment_dir(), &env_vars) {
            p.warn(format!(
                "{name}: its trials will fail with environment_unsupported: {e}"
            ));
        }
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(t.tests_dir().join("test.sh")) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o111 == 0 {
                p.warn(format!(
                    "{name}: tests/test.sh is not executable (rollout runs it with bash; other harnesses may not)"
                ));
            }
        }
        // JSONL rows carry no solution by design: only the oracle would need one.
        if !oracle
            && !c.is_jsonl_row()
            && !t.is_multi_step()
            && !t.solution_dir().join("solve.sh").is_file()
        {
            no_solution.push(name.to_string());
        }
    }
    if !no_solution.is_empty() {
        p.warn(format!(
            "{} task(s) have no solution/solve.sh (optional; only the oracle needs it): {}",
            no_solution.len(),
            names(&no_solution)
        ));
    }
    p.into_check(
        DEPENDENCY_FILES_EXIST,
        format!(
            "all {} task(s) have instruction.md, tests/test.sh and an environment (Dockerfile or docker_image)",
            tasks.len()
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// benchmark_grader_reachable

/// Whether some file under `tests/` mentions a reward file (at most 200 files of 1 MiB read).
fn mentions_reward(tests_dir: &Path) -> bool {
    let Ok(files) = rollout_core::digest::list_files(tests_dir) else {
        return true; // unreadable: reported by probe_trial_input
    };
    files.iter().take(200).any(|f| {
        let path = if f.is_absolute() {
            f.clone()
        } else {
            tests_dir.join(f)
        };
        std::fs::metadata(&path).is_ok_and(|m| m.len() <= 1 << 20)
            && std::fs::read(&path).is_ok_and(|b| String::from_utf8_lossy(&b).contains("reward"))
    })
}

fn check_grader(tasks: &[Candidate], config: &JobConfig) -> Check {
    let mut p = Problems::default();
    if config.verifier.disable {
        p.warn("verifier.disable is set in the job: no trial will get a reward");
    }
    for c in tasks {
        let t = &c.task;
        let name = c.name();
        if t.is_multi_step() {
            for step in &t.config.steps {
                let Some(test_sh) = t.step_test_sh(&step.name) else {
                    p.error(format!(
                        "{name}: step {:?} has no verifier: neither steps/{}/tests/test.sh nor tests/test.sh exists",
                        step.name, step.name
                    ));
                    continue;
                };
                if std::fs::read_to_string(&test_sh).is_ok_and(|t| t.trim().is_empty()) {
                    p.error(format!(
                        "{name}: {} is empty: it writes no reward",
                        test_sh.display()
                    ));
                } else if !mentions_reward(&t.tests_dir())
                    && !mentions_reward(&t.step_dir(&step.name).join("tests"))
                {
                    p.warn(format!(
                        "{name}: nothing in the tests of step {:?} mentions a reward file: test.sh must write /logs/verifier/reward.txt or reward.json",
                        step.name
                    ));
                }
            }
            continue;
        }
        let test_sh = t.tests_dir().join("test.sh");
        if !test_sh.is_file() {
            if c.is_jsonl_row() {
                p.error(format!(
                    "task '{name}' (a task_boundary_v2 row) has no grader: give the row task.grader or task.test_command"
                ));
            } else {
                p.error(format!("{name}: no verifier: tests/test.sh is missing"));
            }
            continue;
        }
        let text = std::fs::read(&test_sh)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if text.trim().is_empty() {
            p.error(format!(
                "{name}: tests/test.sh is empty: it writes no reward"
            ));
            continue;
        }
        if c.is_jsonl_row() {
            if !t.tests_dir().join("grader.sh").is_file() {
                let id = t
                    .config
                    .metadata
                    .get("task_id")
                    .and_then(|v| v.as_str())
                    .unwrap_or(name);
                let line = t
                    .config
                    .metadata
                    .get("row_line")
                    .and_then(|v| v.as_i64())
                    .map(|l| {
                        format!(
                            " (row on line {l} of {})",
                            t.dataset.as_deref().unwrap_or("its JSONL file")
                        )
                    })
                    .unwrap_or_default();
                p.error(format!(
                    "task '{id}'{line} has no grader (task.grader or task.test_command): its generated tests/test.sh writes no reward"
                ));
            }
        } else if !mentions_reward(&t.tests_dir()) {
            p.warn(format!(
                "{name}: nothing in tests/ mentions a reward file: test.sh must write /logs/verifier/reward.txt or reward.json"
            ));
        }
    }
    p.into_check(
        BENCHMARK_GRADER_REACHABLE,
        format!(
            "all {} task(s) have a verifier (tests/test.sh) that writes a reward",
            tasks.len()
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// agent_ready

/// A variable is set for an agent: in its `env` (expanded) or on the host, non-empty.
fn var_set(spec: &AgentSpec, key: &str) -> bool {
    let (env, _) = rollout_core::envvars::expand_map(&spec.env);
    env.get(key).is_some_and(|v| !v.is_empty()) || std::env::var(key).is_ok_and(|v| !v.is_empty())
}

fn check_agents(agents: &[ResolvedAgent], tasks: &[Candidate]) -> Check {
    let mut p = Problems::default();
    for a in agents {
        let name = &a.spec.name;
        let agent = match &a.agent {
            Ok(agent) => agent,
            Err(e) => {
                p.error(one_line(e));
                continue;
            }
        };
        let refused: Vec<String> = tasks
            .iter()
            .filter_map(|c| {
                agent
                    .check(&c.task)
                    .err()
                    .map(|e| format!("{}: {e}", c.name()))
            })
            .collect();
        if !refused.is_empty() {
            p.error(format!(
                "agent {name} cannot run {} task(s): {}",
                refused.len(),
                list(&refused)
            ));
        }
        if rollout_agents::llm::NAMES.contains(&name.as_str()) {
            let model = a.spec.model_name.as_deref().unwrap_or_default();
            let key = if model.starts_with("anthropic/") {
                "ANTHROPIC_API_KEY"
            } else {
                "OPENAI_API_KEY"
            };
            if !var_set(&a.spec, key) {
                p.warn(format!(
                    "agent {name} (model {model}): {key} is not set; the model API will likely refuse requests"
                ));
            }
        } else if let Some(recipe) = rollout_agents::installed::recipe(name) {
            if !recipe.env_keys.iter().any(|k| var_set(&a.spec, k)) {
                p.warn(format!(
                    "agent {name}: none of {} is set; it will likely fail to reach its model",
                    recipe.env_keys.join(", ")
                ));
            }
        }
    }
    let list: Vec<String> = agents.iter().map(|a| a.spec.name.clone()).collect();
    let message = if tasks.is_empty() {
        format!("{} resolved (no task to check them against)", names(&list))
    } else {
        format!(
            "{} resolved and can run all {} task(s)",
            names(&list),
            tasks.len()
        )
    };
    p.into_check(AGENT_READY, message)
}

// ---------------------------------------------------------------------------------------------
// container_ready

/// What container_ready learnt that disk_headroom needs.
struct ContainerFacts {
    /// Environment images that will be built by the run.
    images_to_build: usize,
    /// The engine's data directory, when it is on this machine.
    docker_root: Option<PathBuf>,
}

/// Environment images (by content tag) the tasks need built, with the tasks using each.
struct BuildPlan {
    context: PathBuf,
    dockerfile: PathBuf,
    timeout: Duration,
    tasks: Vec<String>,
}

fn count_builds(tasks: &[Candidate]) -> usize {
    tasks
        .iter()
        .filter(|c| c.task.config.environment.docker_image.is_none() && c.dockerfile().is_file())
        .filter_map(|c| context_digest(&c.task.environment_dir()).ok())
        .map(|d| d.to_hex().to_string())
        .collect::<BTreeSet<_>>()
        .len()
}

/// `fut` within `limit`, the timeout becoming an error message.
async fn bounded<T, E: std::fmt::Display>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("{what}: no answer within {} s", limit.as_secs())),
    }
}

/// The base images a Dockerfile builds from (not stages, not `scratch`; global `ARG`s
/// substituted with their defaults); none when the Dockerfile cannot be read that way.
fn base_images(dockerfile: &str) -> Vec<String> {
    rollout_env::buildctx::base_images(dockerfile, &BTreeMap::new()).unwrap_or_default()
}

/// Local image id of `reference`, `None` when the engine does not have it.
async fn local_image(provider: &DockerProvider, reference: &str) -> Result<Option<String>, String> {
    match tokio::time::timeout(
        ENGINE_CALL_TIMEOUT,
        provider.client().inspect_image(reference),
    )
    .await
    {
        Ok(Ok(info)) => Ok(Some(info.id.unwrap_or_default())),
        // bollard's own error type is not ours to name: a 404 is "no such image".
        Ok(Err(e)) if e.to_string().contains("status code 404") => Ok(None),
        Ok(Err(e)) => Err(format!("inspecting image {reference}: {e}")),
        Err(_) => Err(format!(
            "inspecting image {reference}: no answer within {} s",
            ENGINE_CALL_TIMEOUT.as_secs()
        )),
    }
}

async fn check_container(
    config: &JobConfig,
    tasks: &[Candidate],
    build: bool,
) -> (Check, ContainerFacts) {
    let mut p = Problems::default();
    let mut facts = ContainerFacts {
        images_to_build: count_builds(tasks),
        docker_root: None,
    };
    if config.environment.kind == rollout_core::job_config::EnvironmentType::Kubernetes {
        let loaded: Vec<Task> = tasks.iter().map(|c| c.task.clone()).collect();
        if let Err(e) = crate::provider::check(config, &loaded) {
            p.error(e.to_string());
            return (p.into_check(CONTAINER_READY, ""), facts);
        }
        match crate::provider::kube_reachable(config).await {
            Ok(note) => return (p.into_check(CONTAINER_READY, note), facts),
            Err(e) => p.error(e),
        }
        return (p.into_check(CONTAINER_READY, ""), facts);
    }
    let provider = match bounded(
        CONNECT_TIMEOUT,
        "connecting to the Docker engine",
        DockerProvider::connect(EngineLimits::default()),
    )
    .await
    {
        Ok(p) => p,
        Err(e) => {
            p.error(e);
            return (p.into_check(CONTAINER_READY, ""), facts);
        }
    };
    let version = bounded(
        ENGINE_CALL_TIMEOUT,
        "engine version",
        provider.client().version(),
    )
    .await
    .ok()
    .and_then(|v| v.version)
    .unwrap_or_else(|| "?".into());
    if provider.host_mounts() {
        facts.docker_root = bounded(ENGINE_CALL_TIMEOUT, "engine info", provider.client().info())
            .await
            .ok()
            .and_then(|i| i.docker_root_dir)
            .map(PathBuf::from)
            .filter(|d| d.is_dir());
    }
    let mut notes = vec![format!("Docker {version} reachable")];
    // What the provider cannot enforce: the runner's own check, so preflight says what the
    // trials would.
    let caps = rollout_env::Provider::capabilities(&provider);
    for c in tasks.iter() {
        if let Err(refusal) = rollout_core::capabilities::check_enforceable(&c.task, &caps) {
            p.error(format!("{refusal}: its trials end environment_unsupported"));
        }
    }
    if tasks.is_empty() {
        p.warn(format!(
            "Docker {version} reachable; images not checked: no task could be loaded (see {DATASET_TASK_IDS})"
        ));
        return (p.into_check(CONTAINER_READY, ""), facts);
    }

    // The images the tasks need.
    let multipliers = Multipliers::from_job(config);
    let mut prebuilt: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut builds: BTreeMap<String, BuildPlan> = BTreeMap::new();
    for c in tasks {
        let t = &c.task;
        if let Some(image) = &t.config.environment.docker_image {
            prebuilt
                .entry(image.clone())
                .or_default()
                .push(c.name().to_string());
            continue;
        }
        if !c.dockerfile().is_file() {
            continue; // reported by dependency_files_exist
        }
        match context_digest(&t.environment_dir()) {
            Ok(digest) => {
                let timeout =
                    Timeouts::resolve(&t.config, &AgentSpec::default(), config, multipliers).build;
                builds
                    .entry(format!("environment {}", &digest.to_hex()[..12]))
                    .or_insert_with(|| BuildPlan {
                        context: t.environment_dir(),
                        dockerfile: c.dockerfile(),
                        timeout,
                        tasks: Vec::new(),
                    })
                    .tasks
                    .push(c.name().to_string());
            }
            Err(e) => p.error(format!("{}: cannot read environment/: {e}", c.name())),
        }
    }
    facts.images_to_build = builds.len();

    // Prebuilt images: local, else pulled.
    let image_labels = BTreeMap::from([(labels::MANAGED.to_string(), "true".to_string())]);
    let mut available: Vec<PreparedImage> = Vec::new();
    let (mut local, mut pulled) = (0, 0);
    for (reference, users) in &prebuilt {
        let source = ImageSource::Prebuilt {
            reference: reference.clone(),
        };
        match bounded(
            PULL_TIMEOUT,
            &format!("pulling {reference}"),
            provider.prepare_image(&source, &image_labels),
        )
        .await
        {
            Ok(img) => {
                if img.fresh {
                    pulled += 1;
                } else {
                    local += 1;
                }
                available.push(img);
            }
            Err(e) => p.error(format!("{e} (needed by {})", names(users))),
        }
    }
    if !prebuilt.is_empty() {
        notes.push(format!(
            "{} prebuilt image(s): {local} local, {pulled} pulled",
            prebuilt.len()
        ));
    }

    // Environment images: built now with --build, else checked and counted.
    let (mut present, mut built_now, mut to_build) = (0, 0, 0);
    let mut bases: Vec<PreparedImage> = Vec::new();
    let mut bases_seen = BTreeSet::new();
    let mut bases_pulled = 0;
    for (tag, b) in &builds {
        if build {
            let source = ImageSource::Build {
                context: b.context.clone(),
                timeout: b.timeout,
                force: config.environment.force_build,
                pull: config.environment.pull,
            };
            match bounded(
                b.timeout + BUILD_GRACE,
                &format!("building {tag}"),
                provider.prepare_image(&source, &image_labels),
            )
            .await
            {
                Ok(img) => {
                    if img.fresh {
                        built_now += 1;
                    } else {
                        present += 1;
                    }
                    available.push(img);
                }
                Err(e) => {
                    to_build += 1; // the run will try again
                    p.error(format!(
                        "environment of {} ({tag}) does not build: {e}",
                        names(&b.tasks)
                    ));
                }
            }
            continue;
        }
        // The image that would be used: its identity needs every base locally (no pulls here).
        let built = match provider
            .resolve_environment(&b.context, &BTreeMap::new(), PullPolicy::Never)
            .await
        {
            Ok(r) => {
                let tag = r.identity.tag();
                local_image(&provider, &tag)
                    .await
                    .map(|found| found.map(|id| (tag, id, r.identity.bases)))
            }
            // A base is missing or the context unreadable: the checks below say which.
            Err(_) => Ok(None),
        };
        match built {
            Ok(Some((reference, id, bases))) => {
                present += 1;
                available.push(PreparedImage {
                    reference,
                    id,
                    bases,
                    ..Default::default()
                });
            }
            Ok(None) => {
                to_build += 1;
                let text = std::fs::read_to_string(&b.dockerfile).unwrap_or_default();
                for base in base_images(&text) {
                    if !bases_seen.insert(base.clone()) {
                        continue;
                    }
                    match local_image(&provider, &base).await {
                        Ok(Some(id)) => bases.push(PreparedImage {
                            reference: base,
                            id,
                            fresh: false,
                            build_log: None,
                            ..Default::default()
                        }),
                        // Not local: try the pull the build would do (AgentLab's PF-04).
                        Ok(None) => {
                            let source = ImageSource::Prebuilt {
                                reference: base.clone(),
                            };
                            match bounded(
                                PULL_TIMEOUT,
                                &format!("pulling {base}"),
                                provider.prepare_image(&source, &image_labels),
                            )
                            .await
                            {
                                Ok(img) => {
                                    bases_pulled += 1;
                                    bases.push(img);
                                }
                                Err(e) => p.error(format!(
                                    "base image {base} of {} is neither local nor pullable (docker pull failed: {}); \
                                     the build of {tag} cannot start",
                                    names(&b.tasks),
                                    one_line(&e.to_string())
                                )),
                            }
                        }
                        Err(e) => p.error(e),
                    }
                }
            }
            Err(e) => p.error(e),
        }
    }
    facts.images_to_build = to_build;
    if !builds.is_empty() {
        notes.push(if build {
            format!(
                "{} environment image(s): {built_now} built now, {present} already built",
                builds.len()
            )
        } else {
            format!(
                "{} environment image(s): {present} already built, {to_build} to build at run time{}",
                builds.len(),
                if to_build > 0 { " (--build builds them now)" } else { "" }
            )
        });
    }

    if bases_pulled > 0 {
        notes.push(format!("{bases_pulled} base image(s) pulled"));
    }
    // One container from one available image.
    match available.first().or(bases.first()) {
        Some(image) => match probe(&provider, image).await {
            Ok(job_id) => notes.push(format!(
                "probe container from {} ran `sh -c 'exit 0'` and was removed (label {}={job_id})",
                image.reference,
                labels::JOB
            )),
            Err(e) => p.error(e),
        },
        None if p.errors.is_empty() => p.warn(
            "no image the tasks need is available yet, so no probe container was started (--build builds them now)",
        ),
        None => {}
    }
    (p.into_check(CONTAINER_READY, notes.join("; ")), facts)
}

/// Start a container from `image`, run `sh -c 'exit 0'` in it, remove it. The container carries
/// the labels of a trial's (job id `preflight-…`), and whatever happens every container with
/// that job id is removed before returning. Returns the job id.
async fn probe(provider: &DockerProvider, image: &PreparedImage) -> Result<String, String> {
    let seed = format!(
        "{}-{:?}-{}",
        std::process::id(),
        std::time::SystemTime::now(),
        image.reference
    );
    let job_id = format!(
        "preflight-{}",
        &rollout_core::digest::bytes_digest(seed.as_bytes())[..16]
    );
    let spec = EnvSpec {
        name: "preflight".into(),
        labels: BTreeMap::from([
            (labels::JOB.to_string(), job_id.clone()),
            (labels::TRIAL.to_string(), format!("{job_id}-probe")),
            (labels::MANAGED.to_string(), "true".to_string()),
            (labels::PID.to_string(), std::process::id().to_string()),
            (labels::HOST.to_string(), rollout_runner::host_name()),
        ]),
        cpus: 1.0,
        memory_mb: 512,
        storage_mb: 1024,
        pids_limit: 256,
        network: NetworkMode::NoNetwork,
        allowed_hosts: Vec::new(),
        env: BTreeMap::new(),
        workdir: None,
        mounts: Vec::new(),
        gpus: 0,
    };
    let reference = &image.reference;
    let outcome = async {
        let env = bounded(
            CREATE_TIMEOUT,
            &format!("starting a container from {reference}"),
            provider.create(image, &spec),
        )
        .await
        .map_err(|e| format!("cannot start a container from {reference}: {e}"))?;
        let ran = bounded(
            EXEC_TIMEOUT + Duration::from_secs(10),
            "running `sh -c 'exit 0'`",
            env.exec(ExecRequest::sh("exit 0", EXEC_TIMEOUT)),
        )
        .await;
        let removed = bounded(
            ENGINE_CALL_TIMEOUT,
            "removing the probe container",
            env.destroy(),
        )
        .await;
        match ran {
            Ok(out) if out.success() => {}
            Ok(out) => {
                return Err(format!(
                    "`sh -c 'exit 0'` in a container from {reference} ended with {}: {}",
                    match (out.timed_out, out.exit_code) {
                        (true, _) => "a timeout".to_string(),
                        (false, Some(c)) => format!("exit code {c}"),
                        (false, None) => "no exit code".to_string(),
                    },
                    one_line(&out.stderr.to_text())
                ))
            }
            Err(e) => {
                return Err(format!(
                    "cannot run a command in a container from {reference}: {e}"
                ))
            }
        }
        removed.map_err(|e| format!("cannot remove the probe container: {e}"))
    }
    .await;
    // Whatever happened (a create that timed out may still have made a container).
    let swept = bounded(
        ENGINE_CALL_TIMEOUT,
        "removing probe containers",
        provider.remove_labelled(labels::JOB, &job_id),
    )
    .await;
    outcome?;
    swept.map_err(|e| {
        format!(
            "cannot remove probe containers ({}={job_id}): {e}",
            labels::JOB
        )
    })?;
    Ok(job_id)
}

// ---------------------------------------------------------------------------------------------
// disk_headroom

/// Free bytes for an unprivileged user and the device id of the filesystem holding `path`.
fn free_space(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path and `stat` a properly sized out-parameter.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    let free = (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64);
    Ok((free, std::fs::metadata(path)?.dev()))
}

/// `path` if it exists, else its nearest existing ancestor (the jobs dir is created by the run).
fn existing_ancestor(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    abs.ancestors()
        .find(|p| p.exists())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

fn check_disk(config: &JobConfig, trials: usize, facts: &ContainerFacts) -> Check {
    let mut p = Problems::default();
    let jobs_dir = config.jobs_dir.clone().unwrap_or_else(|| "jobs".into());
    let at = existing_ancestor(&jobs_dir);
    let trial_need = TRIAL_BYTES * trials as u64;
    let image_need = IMAGE_BYTES * facts.images_to_build as u64;
    let estimate = format!(
        "{trials} trial(s) × {} MiB + {} image build(s) × {} MiB",
        TRIAL_BYTES >> 20,
        facts.images_to_build,
        IMAGE_BYTES >> 20
    );
    let (jobs_free, jobs_dev) = match free_space(&at) {
        Ok(v) => v,
        Err(e) => {
            p.error(format!(
                "cannot measure free space at {}: {e}",
                at.display()
            ));
            return p.into_check(DISK_HEADROOM, "");
        }
    };
    // (where, free, needed)
    let mut budgets: Vec<(String, u64, u64)> = Vec::new();
    let docker = facts
        .docker_root
        .as_ref()
        .and_then(|d| free_space(d).ok().map(|v| (d.clone(), v)));
    match docker {
        Some((root, (free, dev))) if dev != jobs_dev => {
            budgets.push((
                format!("jobs dir {}", jobs_dir.display()),
                jobs_free,
                trial_need,
            ));
            budgets.push((format!("Docker data {}", root.display()), free, image_need));
        }
        _ => budgets.push((
            format!("jobs dir {}", jobs_dir.display()),
            jobs_free,
            trial_need + image_need,
        )),
    }
    let mut summary = Vec::new();
    for (place, free, need) in &budgets {
        let line = format!("{place}: {} free, ~{} needed", human(*free), human(*need));
        if free < need {
            p.error(format!("{line} ({estimate}): free some space"));
        } else if *free < need.saturating_mul(2) {
            p.warn(format!("{line} ({estimate}): less than twice the estimate"));
        }
        summary.push(line);
    }
    p.into_check(
        DISK_HEADROOM,
        format!("{} ({estimate})", summary.join("; ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_images_skip_stages_and_scratch_and_substitute_args() {
        let df = "ARG BASE=x\nFROM --platform=linux/amd64 debian:bookworm-slim AS build\nRUN make \\\n  all\nFROM build\nFROM ${BASE}\nfrom python:3.12 as py\nFROM scratch\nFROM debian:bookworm-slim\n";
        assert_eq!(
            base_images(df),
            ["debian:bookworm-slim", "x", "python:3.12"]
        );
    }

    #[test]
    fn problems_become_checks() {
        let ok = Problems::default().into_check(CONFIG_VALID, "fine");
        assert!(ok.passed && ok.severity == Severity::Error && ok.message == "fine");
        let mut p = Problems::default();
        p.warn("w");
        let w = p.into_check(CONFIG_VALID, "fine");
        assert!(!w.passed && w.severity == Severity::Warning && !w.is_error());
        let mut p = Problems::default();
        p.warn("w");
        p.error("e\nsecond line");
        let e = p.into_check(CONFIG_VALID, "fine");
        assert!(e.is_error());
        assert_eq!(e.message, "e; second line (warnings: w)");
    }

    #[test]
    fn long_lists_are_cut() {
        let items: Vec<String> = (0..12).map(|i| i.to_string()).collect();
        assert_eq!(list(&items), "0; 1; 2; 3; 4; 5; 6; 7; … and 4 more");
        assert_eq!(names(&items[..2]), "0, 1");
    }

    #[test]
    fn render_tags_and_summary() {
        let checks = vec![
            Problems::default().into_check(CONFIG_VALID, "ok"),
            Check::skipped(DATASET_TASK_IDS, "why"),
            {
                let mut p = Problems::default();
                p.error("bad");
                p.into_check(CONTAINER_READY, "")
            },
        ];
        assert_eq!(
            render(&checks),
            "[PASS] config_valid: ok\n[WARN] dataset_task_ids: skipped: why\n[FAIL] container_ready: bad\n\
             preflight FAILED: 1 passed, 1 warning(s), 1 failed (3 checks)\n"
        );
    }

    #[test]
    fn free_space_of_the_root() {
        let (free, _) = free_space(Path::new("/")).unwrap();
        assert!(free > 0);
        assert_eq!(
            existing_ancestor(Path::new("/surely/not/here")),
            Path::new("/")
        );
    }
}
