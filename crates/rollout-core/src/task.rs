//! A task on disk (FORMATS.md §1): loading, validation, discovery of datasets, filtering.

use crate::digest;
use crate::error::ConfigError;
use crate::task_config::TaskConfig;
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A task ready to run: its configuration, instruction and content checksum.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Task {
    /// The task's name: its directory name.
    pub name: String,
    /// Absolute path of the task directory.
    pub dir: PathBuf,
    /// Parsed `task.toml` (defaults when the file is absent).
    pub config: TaskConfig,
    /// Contents of `instruction.md`; empty for a multi-step task (Harbor's convention), whose
    /// instructions are in [`Task::step_instructions`].
    pub instruction: String,
    /// Contents of `steps/<name>/instruction.md`, one per `[[steps]]` entry, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_instructions: Vec<String>,
    /// BLAKE3 of the whole task directory (hex).
    pub checksum: String,
    /// Name of the dataset the task came from, if any.
    pub dataset: Option<String>,
    /// Why the task cannot run (`task.toml:4: environment.cpus: …`): set by
    /// [`Task::load_or_invalid`] for a task whose files are invalid. Its trials end
    /// `task_invalid` without starting an environment; the other tasks of the job run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

/// The host variables a task's `[environment] env` and `[verifier] env` would expand
/// (`${VAR}`), as `(field, variable)`. `rollout serve` refuses submitted tasks that have any:
/// a submitter must not read the server's environment.
pub fn host_env_references(task: &Task) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (section, map) in [
        ("environment.env", &task.config.environment.env),
        ("verifier.env", &task.config.verifier.env),
    ] {
        for (k, v) in map {
            for var in crate::envvars::references(v) {
                out.push((format!("{section}.{k}"), var));
            }
        }
    }
    out
}

/// Something `rollout tasks check` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `error` prevents running; `warning` does not.
    pub severity: Severity,
    /// The file or directory concerned.
    pub path: PathBuf,
    /// What is wrong and what to do.
    pub message: String,
}

/// How bad a [`Finding`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl Task {
    /// Whether `dir` looks like a task directory (has `task.toml` or `instruction.md`).
    pub fn is_task_dir(dir: &Path) -> bool {
        dir.join("task.toml").is_file() || dir.join("instruction.md").is_file()
    }

    /// Load the task in `dir`, failing on anything that would stop it from running.
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        let task = Self::load_files(dir)?;
        if let Some(f) = task
            .findings()
            .into_iter()
            .find(|f| f.severity == Severity::Error)
        {
            return Err(ConfigError::file(f.path, f.message));
        }
        Ok(task)
    }

    /// Read the task's files without judging them: errors only when a file cannot be read
    /// or parsed, so that [`check_paths`] can report every finding of the task at once.
    fn load_files(dir: &Path) -> Result<Self, ConfigError> {
        let dir = dir
            .canonicalize()
            .map_err(|e| ConfigError::file(dir, format!("cannot open task directory: {e}")))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| ConfigError::file(&dir, "a task directory needs a name"))?;
        let toml_path = dir.join("task.toml");
        let config = if toml_path.is_file() {
            TaskConfig::load(&toml_path)?
        } else {
            TaskConfig::default()
        };
        let mut step_instructions = Vec::with_capacity(config.steps.len());
        for step in &config.steps {
            let step_dir = dir.join("steps").join(&step.name);
            if !step_dir.is_dir() {
                return Err(ConfigError::file(
                    &step_dir,
                    format!(
                        "missing: task.toml declares step {:?}, whose directory steps/{}/ holds its instruction.md and tests",
                        step.name, step.name
                    ),
                ));
            }
            let path = step_dir.join("instruction.md");
            step_instructions.push(std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::file(
                    &path,
                    format!("cannot read the instruction of step {:?}: {e}", step.name),
                )
            })?);
        }
        let instruction = if config.steps.is_empty() {
            let instruction_path = dir.join("instruction.md");
            std::fs::read_to_string(&instruction_path).map_err(|e| {
                ConfigError::file(
                    &instruction_path,
                    format!("cannot read the task's instruction: {e}"),
                )
            })?
        } else {
            String::new()
        };
        let task = Self {
            name,
            checksum: digest::dir_digest(&dir)
                .map_err(|e| ConfigError::file(&dir, format!("cannot read task files: {e}")))?
                .to_hex()
                .to_string(),
            dir,
            config,
            instruction,
            step_instructions,
            dataset: None,
            invalid: None,
        };
        Ok(task)
    }

    /// Load the task in `dir`; a task whose own files are invalid is still returned, marked
    /// [`Task::invalid`] with the error, so that a job can fail its trials alone. Errors only
    /// when `dir` cannot be opened at all.
    pub fn load_or_invalid(dir: &Path) -> Result<Self, ConfigError> {
        Self::load_marked(dir, Self::load)
    }

    /// As [`Task::load_or_invalid`], with `load` reading the directory.
    fn load_marked(
        dir: &Path,
        load: fn(&Path) -> Result<Self, ConfigError>,
    ) -> Result<Self, ConfigError> {
        let canonical = dir
            .canonicalize()
            .map_err(|e| ConfigError::file(dir, format!("cannot open task directory: {e}")))?;
        match load(&canonical) {
            Ok(task) => Ok(task),
            Err(e) => {
                let name = canonical
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| {
                        ConfigError::file(&canonical, "a task directory needs a name")
                    })?;
                Ok(Self {
                    name,
                    checksum: digest::dir_digest(&canonical)
                        .map(|h| h.to_hex().to_string())
                        .unwrap_or_default(),
                    config: TaskConfig::default(),
                    instruction: std::fs::read_to_string(canonical.join("instruction.md"))
                        .unwrap_or_default(),
                    step_instructions: Vec::new(),
                    dir: canonical,
                    dataset: None,
                    invalid: Some(e.to_string()),
                })
            }
        }
    }

    /// Keys of `task.toml` rollout refuses to run, as `task.toml:LINE: field: reason`.
    pub fn unsupported(&self) -> Vec<String> {
        let file = self.dir.join("task.toml");
        self.config
            .unsupported
            .iter()
            .map(|u| match u.line {
                Some(line) => format!("{}:{line}: {}: {}", file.display(), u.field, u.reason),
                None => format!("{}: {}: {}", file.display(), u.field, u.reason),
            })
            .collect()
    }

    /// `environment/`.
    pub fn environment_dir(&self) -> PathBuf {
        self.dir.join("environment")
    }

    /// `tests/`.
    pub fn tests_dir(&self) -> PathBuf {
        self.dir.join("tests")
    }

    /// `solution/`.
    pub fn solution_dir(&self) -> PathBuf {
        self.dir.join("solution")
    }

    /// Whether the task declares `[[steps]]` (a multi-step task).
    pub fn is_multi_step(&self) -> bool {
        !self.config.steps.is_empty()
    }

    /// `steps/<name>/`.
    pub fn step_dir(&self, name: &str) -> PathBuf {
        self.dir.join("steps").join(name)
    }

    /// The `solution/` the oracle runs for step `name`: the step's own, else the task's.
    pub fn step_solution_dir(&self, name: &str) -> PathBuf {
        let own = self.step_dir(name).join("solution");
        if own.is_dir() {
            own
        } else {
            self.solution_dir()
        }
    }

    /// The `test.sh` step `name` runs: the step's own, else the task's `tests/test.sh`.
    pub fn step_test_sh(&self, name: &str) -> Option<PathBuf> {
        [
            self.step_dir(name).join("tests/test.sh"),
            self.tests_dir().join("test.sh"),
        ]
        .into_iter()
        .find(|p| p.is_file())
    }

    /// Problems with this task's files, errors first.
    pub fn findings(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        let mut error = |path: PathBuf, message: String| {
            out.push(Finding {
                severity: Severity::Error,
                path,
                message,
            })
        };
        if self.is_multi_step() {
            for f in step_findings(&self.dir, &self.config) {
                if f.severity == Severity::Error {
                    error(f.path, f.message);
                }
            }
        } else {
            if self.instruction.trim().is_empty() {
                error(
                    self.dir.join("instruction.md"),
                    "the instruction is empty: write the prompt for the agent".into(),
                );
            }
            let test_sh = self.tests_dir().join("test.sh");
            if !test_sh.is_file() {
                error(test_sh, "missing: every task needs tests/test.sh, which writes /logs/verifier/reward.txt or reward.json".into());
            }
        }
        let env_dir = self.environment_dir();
        if self.config.environment.docker_image.is_none() {
            if env_dir.join("Dockerfile").is_file() {
                // buildable
            } else if env_dir.join("docker-compose.yaml").is_file()
                || env_dir.join("docker-compose.yml").is_file()
            {
                error(
                    env_dir.join("docker-compose.yaml"),
                    "the compose file's main service needs the task's image: \
                     add environment/Dockerfile or set [environment] docker_image"
                        .into(),
                );
            } else {
                error(
                    env_dir.join("Dockerfile"),
                    "missing: add environment/Dockerfile or set [environment] docker_image in task.toml".into(),
                );
            }
        }
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(self.tests_dir().join("test.sh")) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o111 == 0 {
                out.push(Finding {
                    severity: Severity::Warning,
                    path: self.tests_dir().join("test.sh"),
                    message: "not executable: rollout runs it with bash, but other harnesses may execute it directly (chmod +x)".into(),
                });
            }
        }
        if self.is_multi_step() {
            out.extend(
                step_findings(&self.dir, &self.config)
                    .into_iter()
                    .filter(|f| f.severity == Severity::Warning),
            );
        } else if !self.solution_dir().join("solve.sh").is_file() {
            out.push(Finding {
                severity: Severity::Warning,
                path: self.solution_dir().join("solve.sh"),
                message: "missing: the oracle agent cannot run this task".into(),
            });
        }
        for message in self.config.warnings.iter().cloned().chain(
            self.config.unsupported.iter().map(|u| {
                format!(
                    "`{}` cannot be honoured, so this task's trials are refused (environment_unsupported): {}",
                    u.field, u.reason
                )
            }),
        ) {
            out.push(Finding {
                severity: Severity::Warning,
                path: self.dir.join("task.toml"),
                message,
            });
        }
        for key in self.config.unknown_keys() {
            out.push(Finding {
                severity: Severity::Warning,
                path: self.dir.join("task.toml"),
                message: format!("unknown key `{key}` is kept but not interpreted (a typo?)"),
            });
        }
        out.sort_by_key(|f| f.severity == Severity::Warning);
        out
    }
}

/// What is wrong with the `steps/` of a multi-step task (`config.steps` non-empty): each step
/// needs `steps/<name>/` with a non-empty `instruction.md`, and a `test.sh` of its own or the
/// task's `tests/test.sh` (Harbor merges `tests/` under each step's tests). Shared by the loader,
/// `rollout tasks check` and preflight.
pub fn step_findings(dir: &Path, config: &TaskConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut push = |severity, path: PathBuf, message: String| {
        out.push(Finding {
            severity,
            path,
            message,
        })
    };
    let shared_test = dir.join("tests/test.sh").is_file();
    let shared_solve = dir.join("solution/solve.sh").is_file();
    for step in &config.steps {
        let step_dir = dir.join("steps").join(&step.name);
        if !step_dir.is_dir() {
            push(
                Severity::Error,
                step_dir,
                format!(
                    "missing: task.toml declares step {:?}; create steps/{}/ with instruction.md and tests/test.sh",
                    step.name, step.name
                ),
            );
            continue;
        }
        let instruction = step_dir.join("instruction.md");
        match std::fs::read_to_string(&instruction) {
            Err(e) => push(
                Severity::Error,
                instruction,
                format!("cannot read the instruction of step {:?}: {e}", step.name),
            ),
            Ok(text) if text.trim().is_empty() => push(
                Severity::Error,
                instruction,
                format!(
                    "the instruction of step {:?} is empty: write the prompt for the agent",
                    step.name
                ),
            ),
            Ok(_) => {}
        }
        if !shared_test && !step_dir.join("tests/test.sh").is_file() {
            push(
                Severity::Error,
                step_dir.join("tests/test.sh"),
                format!(
                    "missing: step {:?} has no test script; add steps/{}/tests/test.sh or a shared tests/test.sh",
                    step.name, step.name
                ),
            );
        }
        let own_solution = step_dir.join("solution");
        // The step's own solution/, else the task's (what the oracle falls back to).
        let solvable = if own_solution.is_dir() {
            own_solution.join("solve.sh").is_file()
        } else {
            shared_solve
        };
        if !solvable {
            push(
                Severity::Warning,
                own_solution.join("solve.sh"),
                format!("missing: the oracle agent cannot run step {:?}", step.name),
            );
        }
        let setup = step_dir.join("workdir/setup.sh");
        if setup.exists() && !setup.is_file() {
            push(
                Severity::Error,
                setup,
                "workdir/setup.sh is reserved for the step's setup script and must be a file"
                    .into(),
            );
        }
    }
    if dir.join("instruction.md").is_file() {
        push(
            Severity::Warning,
            dir.join("instruction.md"),
            "ignored: a multi-step task gives each step its own steps/<name>/instruction.md".into(),
        );
    }
    out.sort_by_key(|f| f.severity == Severity::Warning);
    out
}

/// What `rollout tasks check` found over some paths (its `--json` shape, docs/cli-json.md).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    /// Whether no task has an error (the exit status is 1 otherwise).
    pub ok: bool,
    /// Tasks without an error.
    pub n_ok: usize,
    /// Errors in all (task findings and paths that could not be read).
    pub n_errors: usize,
    pub n_warnings: usize,
    /// Every task found, in the order of the paths, then by name.
    pub tasks: Vec<TaskCheck>,
    /// Paths (or tasks in them) that could not be loaded at all, one message each.
    pub load_errors: Vec<String>,
}

/// One task of a [`CheckReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskCheck {
    pub name: String,
    pub dir: PathBuf,
    /// Whether it has no error finding (warnings allowed).
    pub ok: bool,
    pub findings: Vec<Finding>,
}

/// Check the tasks at each path (as `rollout tasks check`).
pub fn check_paths(paths: &[PathBuf]) -> CheckReport {
    let mut r = CheckReport {
        ok: true,
        n_ok: 0,
        n_errors: 0,
        n_warnings: 0,
        tasks: Vec::new(),
        load_errors: Vec::new(),
    };
    for path in paths {
        // Every task of the path is reported with all its findings; one whose files cannot
        // be read or parsed is reported with that error, and the others still are.
        match discover_with(path, |dir| Task::load_marked(dir, Task::load_files)) {
            Ok(tasks) => {
                for t in tasks {
                    let findings = match &t.invalid {
                        Some(reason) => vec![Finding {
                            severity: Severity::Error,
                            path: t.dir.clone(),
                            message: reason.clone(),
                        }],
                        None => t.findings(),
                    };
                    let errors = findings
                        .iter()
                        .filter(|f| f.severity == Severity::Error)
                        .count();
                    r.n_errors += errors;
                    r.n_warnings += findings.len() - errors;
                    r.n_ok += usize::from(errors == 0);
                    r.tasks.push(TaskCheck {
                        name: t.name.clone(),
                        dir: t.dir.clone(),
                        ok: errors == 0,
                        findings,
                    });
                }
            }
            Err(errs) => {
                r.n_errors += errs.len();
                r.load_errors.extend(errs.iter().map(|e| e.to_string()));
            }
        }
    }
    r.ok = r.n_errors == 0;
    r
}

/// The tasks at `path`: the task itself if `path` is a task directory, otherwise every task
/// directory directly inside it (a dataset), sorted by name. Errors list every bad task.
pub fn discover(path: &Path) -> Result<Vec<Task>, Vec<ConfigError>> {
    discover_with(path, Task::load)
}

/// As [`discover`], but a task whose own files are invalid is returned marked
/// [`Task::invalid`] instead of failing the whole source (what `rollout run` uses: one bad
/// task fails its own trials only).
pub fn discover_lenient(path: &Path) -> Result<Vec<Task>, Vec<ConfigError>> {
    discover_with(path, Task::load_or_invalid)
}

fn discover_with(
    path: &Path,
    load: fn(&Path) -> Result<Task, ConfigError>,
) -> Result<Vec<Task>, Vec<ConfigError>> {
    if !path.is_dir() {
        return Err(vec![ConfigError::file(
            path,
            "not a directory: give a task directory (with task.toml) or a dataset directory of tasks",
        )]);
    }
    if Task::is_task_dir(path) {
        return load(path).map(|t| vec![t]).map_err(|e| vec![e]);
    }
    let dataset = path
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| {
            vec![ConfigError::file(
                path,
                format!("cannot list directory: {e}"),
            )]
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && Task::is_task_dir(p))
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(vec![ConfigError::file(
            path,
            "no tasks here: a task directory has task.toml and instruction.md; a dataset directory holds task directories",
        )]);
    }
    let mut tasks = Vec::new();
    let mut errors = Vec::new();
    for d in dirs {
        match load(&d) {
            Ok(mut t) => {
                t.dataset = dataset.clone();
                tasks.push(t);
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(tasks)
    } else {
        Err(errors)
    }
}

/// Include/exclude globs (fnmatch style) on task names, and a count limit.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    limit: Option<usize>,
}

impl TaskFilter {
    /// Build a filter; an invalid glob is an error naming it.
    pub fn new(
        include: &[String],
        exclude: &[String],
        limit: Option<usize>,
    ) -> Result<Self, String> {
        let build = |globs: &[String]| -> Result<Option<GlobSet>, String> {
            if globs.is_empty() {
                return Ok(None);
            }
            let mut b = GlobSetBuilder::new();
            for g in globs {
                b.add(Glob::new(g).map_err(|e| format!("invalid task glob {g:?}: {e}"))?);
            }
            b.build().map(Some).map_err(|e| e.to_string())
        };
        Ok(Self {
            include: build(include)?,
            exclude: build(exclude)?,
            limit,
        })
    }

    /// Whether a task name passes the include/exclude globs.
    pub fn matches(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|g| g.is_match(name))
            && !self.exclude.as_ref().is_some_and(|g| g.is_match(name))
    }

    /// Keep the matching tasks, in name order, at most `limit` of them.
    pub fn apply(&self, mut tasks: Vec<Task>) -> Vec<Task> {
        tasks.retain(|t| self.matches(&t.name));
        tasks.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.dir.cmp(&b.dir)));
        if let Some(n) = self.limit {
            tasks.truncate(n);
        }
        tasks
    }
}

/// Shuffle tasks with a seeded generator (splitmix64 + Fisher–Yates): the same seed gives the
/// same order on every machine, so a sample (`--shuffle --seed N -l K`) can be reproduced.
pub fn shuffle(tasks: &mut [Task], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..tasks.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        tasks.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn make_task(root: &Path, name: &str) -> PathBuf {
        let d = root.join(name);
        fs::create_dir_all(d.join("environment")).unwrap();
        fs::create_dir_all(d.join("tests")).unwrap();
        fs::write(d.join("instruction.md"), "do it").unwrap();
        fs::write(d.join("task.toml"), "version = \"1.0\"\n").unwrap();
        fs::write(
            d.join("environment/Dockerfile"),
            "FROM debian:bookworm-slim\n",
        )
        .unwrap();
        fs::write(
            d.join("tests/test.sh"),
            "echo 1 > /logs/verifier/reward.txt\n",
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(d.join("tests/test.sh"), fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        d
    }

    #[test]
    fn loads_a_task() {
        let root = tempfile::tempdir().unwrap();
        let d = make_task(root.path(), "t1");
        let t = Task::load(&d).unwrap();
        assert_eq!(t.name, "t1");
        assert_eq!(t.instruction, "do it");
        assert_eq!(t.checksum.len(), 64);
        // no solution: a warning only
        assert_eq!(t.findings().len(), 1);
    }

    #[test]
    fn missing_test_sh_is_an_error_naming_the_file() {
        let root = tempfile::tempdir().unwrap();
        let d = make_task(root.path(), "t1");
        fs::remove_file(d.join("tests/test.sh")).unwrap();
        let e = Task::load(&d).unwrap_err();
        assert!(e.file.ends_with("tests/test.sh"), "{e}");
    }

    #[test]
    fn docker_image_makes_dockerfile_optional() {
        let root = tempfile::tempdir().unwrap();
        let d = make_task(root.path(), "t1");
        fs::remove_file(d.join("environment/Dockerfile")).unwrap();
        assert!(Task::load(&d).is_err());
        fs::write(
            d.join("task.toml"),
            "[environment]\ndocker_image = \"alpine\"\n",
        )
        .unwrap();
        assert!(Task::load(&d).is_ok());
    }

    #[test]
    fn discovers_a_dataset_sorted_and_filters() {
        let root = tempfile::tempdir().unwrap();
        for n in ["b-2", "a-1", "c-3"] {
            make_task(root.path(), n);
        }
        fs::create_dir_all(root.path().join("not-a-task")).unwrap();
        let tasks = discover(root.path()).unwrap();
        let names: Vec<_> = tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a-1", "b-2", "c-3"]);
        assert!(tasks[0].dataset.is_some());

        let f = TaskFilter::new(&["*-[12]".into()], &["a-*".into()], None).unwrap();
        let kept: Vec<_> = f.apply(tasks.clone()).into_iter().map(|t| t.name).collect();
        assert_eq!(kept, ["b-2"]);
        let f = TaskFilter::new(&[], &[], Some(2)).unwrap();
        assert_eq!(f.apply(tasks).len(), 2);
    }

    #[test]
    fn a_single_task_dir_is_one_task() {
        let root = tempfile::tempdir().unwrap();
        let d = make_task(root.path(), "solo");
        let tasks = discover(&d).unwrap();
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].dataset, None);
    }

    #[test]
    fn bad_tasks_are_all_reported() {
        let root = tempfile::tempdir().unwrap();
        make_task(root.path(), "good");
        let b1 = make_task(root.path(), "bad1");
        fs::write(b1.join("task.toml"), "[agent]\ntimeout_sec = \"x\"\n").unwrap();
        let b2 = make_task(root.path(), "bad2");
        fs::remove_file(b2.join("tests/test.sh")).unwrap();
        let errs = discover(root.path()).unwrap_err();
        assert_eq!(errs.len(), 2);
    }

    #[test]
    fn shuffle_is_seeded_and_a_permutation() {
        let root = tempfile::tempdir().unwrap();
        for n in ["a", "b", "c", "d", "e", "f"] {
            make_task(root.path(), n);
        }
        let tasks = discover(root.path()).unwrap();
        let order = |seed| {
            let mut t = tasks.clone();
            shuffle(&mut t, seed);
            t.into_iter().map(|t| t.name).collect::<Vec<_>>()
        };
        assert_eq!(order(7), order(7));
        assert_ne!(order(7), order(8));
        let mut sorted = order(7);
        sorted.sort();
        assert_eq!(sorted, ["a", "b", "c", "d", "e", "f"]);
    }

    fn make_steps_task(root: &Path) -> PathBuf {
        let d = make_task(root, "ms");
        fs::remove_file(d.join("instruction.md")).unwrap();
        fs::remove_file(d.join("tests/test.sh")).unwrap();
        fs::write(
            d.join("task.toml"),
            "[[steps]]\nname = \"a\"\n[[steps]]\nname = \"b\"\n",
        )
        .unwrap();
        for step in ["a", "b"] {
            fs::create_dir_all(d.join(format!("steps/{step}/tests"))).unwrap();
            fs::write(
                d.join(format!("steps/{step}/instruction.md")),
                format!("do {step}"),
            )
            .unwrap();
            fs::write(d.join(format!("steps/{step}/tests/test.sh")), "exit 0").unwrap();
        }
        d
    }

    #[test]
    fn a_multi_step_task_loads_without_a_top_level_instruction() {
        let root = tempfile::tempdir().unwrap();
        let d = make_steps_task(root.path());
        let t = Task::load(&d).unwrap();
        assert!(t.is_multi_step());
        assert_eq!(t.instruction, "");
        assert_eq!(t.step_instructions, ["do a", "do b"]);
        // No solution for the oracle: a warning per step, nothing else.
        let f = t.findings();
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f.iter().all(|f| f.severity == Severity::Warning));
    }

    #[test]
    fn a_step_without_instruction_or_tests_is_an_error_naming_the_file() {
        let root = tempfile::tempdir().unwrap();
        let d = make_steps_task(root.path());
        fs::remove_file(d.join("steps/b/instruction.md")).unwrap();
        let e = Task::load(&d).unwrap_err();
        assert!(e.file.ends_with("steps/b/instruction.md"), "{e}");
        assert!(e.to_string().contains("\"b\""), "{e}");

        let d = make_steps_task(&root.path().join("2"));
        fs::remove_file(d.join("steps/a/tests/test.sh")).unwrap();
        let e = Task::load(&d).unwrap_err();
        assert!(e.file.ends_with("steps/a/tests/test.sh"), "{e}");
        // A shared tests/test.sh serves every step.
        fs::write(d.join("tests/test.sh"), "exit 0").unwrap();
        assert!(Task::load(&d).is_ok());

        fs::remove_dir_all(d.join("steps/b")).unwrap();
        let e = Task::load(&d).unwrap_err();
        assert!(e.file.ends_with("steps/b"), "{e}");
    }

    #[test]
    fn invalid_glob_is_reported() {
        assert!(TaskFilter::new(&["[".into()], &[], None).is_err());
    }
}
