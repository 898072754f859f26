//! From a job configuration and its tasks to the list of trials to run.

use rollout_agents::Agent;
use rollout_core::job_config::AgentSpec;
use rollout_core::timeouts::{Multipliers, Timeouts};
use rollout_core::{JobConfig, Task};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One trial to run: a task, an agent, an attempt number.
pub struct TrialPlan {
    /// Directory name inside the job directory: `<task>__<agent>__<attempt>`.
    pub name: String,
    /// Unique id of this run of the trial.
    pub id: String,
    pub task: Arc<Task>,
    pub agent_spec: AgentSpec,
    pub agent: Arc<dyn Agent>,
    pub attempt: u32,
    pub timeouts: Timeouts,
}

/// A job ready to run.
pub struct JobPlan {
    pub job_id: String,
    pub job_name: String,
    pub job_dir: PathBuf,
    pub config: JobConfig,
    /// Trials to run.
    pub trials: Vec<Arc<TrialPlan>>,
    /// Results kept from an earlier run of this job (resume); their trials are not in `trials`.
    pub kept: Vec<rollout_core::TrialResult>,
}

/// Why a job cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Agent(String),
    #[error(
        "no tasks to run: every task was filtered out (check -t/-x/-l or the job's task_names)"
    )]
    NoTasks,
    #[error("job directory {0} already exists: choose another --job-name or -o")]
    JobDirExists(PathBuf),
    #[error("cannot resume {job}: {reason}")]
    Resume { job: PathBuf, reason: String },
}

/// The one entry a job directory may hold before its job starts: the job's own task inputs.
pub const INPUTS_DIR: &str = "tasks";

/// Default job name: the local start time, `YYYY-MM-DD__HH-MM-SS`.
pub fn default_job_name() -> String {
    chrono::Local::now()
        .format("%Y-%m-%d__%H-%M-%S")
        .to_string()
}

impl JobPlan {
    /// Plan every (agent, task, attempt) trial of `config` over `tasks`.
    pub fn new(config: JobConfig, tasks: Vec<Task>) -> Result<Self, PlanError> {
        if tasks.is_empty() {
            return Err(PlanError::NoTasks);
        }
        let jobs_dir = config
            .jobs_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("jobs"));
        let (job_name, job_dir) = match &config.name {
            Some(name) => {
                let dir = jobs_dir.join(name);
                // A job may carry its own inputs in `<job>/tasks/` (an experiment's rows, written
                // before planning); anything else means another job lives there.
                if dir.exists()
                    && dir
                        .read_dir()
                        .map(|mut d| d.any(|e| e.map_or(true, |e| e.file_name() != INPUTS_DIR)))
                        .unwrap_or(true)
                {
                    return Err(PlanError::JobDirExists(dir));
                }
                (name.clone(), dir)
            }
            None => {
                let base = default_job_name();
                let mut name = base.clone();
                let mut n = 1;
                while jobs_dir.join(&name).exists() {
                    n += 1;
                    name = format!("{base}-{n}");
                }
                (name.clone(), jobs_dir.join(name))
            }
        };
        Self::build(
            config,
            tasks,
            uuid::Uuid::new_v4().to_string(),
            job_name,
            job_dir,
        )
    }

    /// Plan the rest of an existing job: trials whose `result.json` is complete are kept (not
    /// re-run); every other trial runs from scratch. With `retry_errors`, trials that ended in
    /// an error are re-run too. Cancelled or unreadable results always count as incomplete.
    pub fn resume(
        config: JobConfig,
        tasks: Vec<Task>,
        job_id: String,
        job_dir: PathBuf,
        retry_errors: bool,
    ) -> Result<Self, PlanError> {
        let job_name = job_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut plan = Self::build(config, tasks, job_id, job_name, job_dir)?;
        let mut changed = Vec::new();
        let mut to_run = Vec::new();
        for trial in std::mem::take(&mut plan.trials) {
            let path = plan.job_dir.join(&trial.name).join("result.json");
            let previous = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<rollout_core::TrialResult>(&b).ok());
            match previous {
                Some(r) if r.task_checksum != trial.task.checksum => {
                    changed.push(trial.task.name.clone());
                    to_run.push(trial);
                }
                Some(r) if !(r.is_cancelled() || retry_errors && r.is_errored()) => {
                    plan.kept.push(r)
                }
                _ => to_run.push(trial),
            }
        }
        if !changed.is_empty() {
            changed.sort();
            changed.dedup();
            return Err(PlanError::Resume {
                job: plan.job_dir.clone(),
                reason: format!(
                    "task(s) changed since their trials ran: {}; results would mix two versions (start a new job)",
                    changed.join(", ")
                ),
            });
        }
        plan.trials = to_run;
        Ok(plan)
    }

    fn build(
        config: JobConfig,
        tasks: Vec<Task>,
        job_id: String,
        job_name: String,
        job_dir: PathBuf,
    ) -> Result<Self, PlanError> {
        if tasks.is_empty() {
            return Err(PlanError::NoTasks);
        }
        // Absolute, so that trial directories can be bound into containers and the job can be
        // resumed from any working directory.
        let job_dir = if job_dir.is_absolute() {
            job_dir
        } else {
            std::env::current_dir()
                .map(|cwd| cwd.join(&job_dir))
                .unwrap_or(job_dir)
        };
        let multipliers = Multipliers::from_job(&config);
        let agents = config.effective_agents();
        let built: Vec<Arc<dyn Agent>> = agents
            .iter()
            .map(rollout_agents::from_spec)
            .collect::<Result<_, _>>()
            .map_err(PlanError::Agent)?;
        let agent_labels = unique_labels(agent_model_labels(&agents).into_iter());
        // A task named twice (`-p X -p X`, a dataset and one of its tasks, two identical copies)
        // runs once: same name and content would write the same trial directories.
        let mut seen = std::collections::HashSet::new();
        let tasks: Vec<Arc<Task>> = tasks
            .into_iter()
            .filter(|t| seen.insert((t.name.clone(), t.checksum.clone())))
            .map(Arc::new)
            .collect();
        let task_labels = task_labels(&tasks);
        let mut trials = Vec::new();
        for (ai, spec) in agents.iter().enumerate() {
            for (ti, task) in tasks.iter().enumerate() {
                for attempt in 1..=config.attempts() {
                    trials.push(Arc::new(TrialPlan {
                        name: format!("{}__{}__{attempt}", task_labels[ti], agent_labels[ai]),
                        id: uuid::Uuid::new_v4().to_string(),
                        task: task.clone(),
                        agent_spec: spec.clone(),
                        agent: built[ai].clone(),
                        attempt,
                        timeouts: Timeouts::resolve(&task.config, spec, &config, multipliers),
                    }));
                }
            }
        }
        Ok(Self {
            job_id,
            job_name,
            job_dir,
            config,
            trials,
            kept: Vec::new(),
        })
    }
}

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

/// An agent's label in trial names: its name, but `code-<directory name>` for a `code:PATH`
/// agent, so that no host path (a server's cache, a user's home) ends up in a trial name.
fn agent_label(name: &str) -> String {
    match name.strip_prefix("code:") {
        Some(path) => {
            let p = Path::new(path.trim_end_matches('/'));
            let last = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "agent".into());
            format!("code-{}", sanitize(&last))
        }
        None => sanitize(name),
    }
}

/// Agent labels; an agent whose name several entries share (`-a X -m M1 -m M2`) is labelled
/// with its model too (`X-M1`), so trial names say which model ran.
fn agent_model_labels(agents: &[AgentSpec]) -> Vec<String> {
    let names: Vec<String> = agents.iter().map(|a| agent_label(&a.name)).collect();
    agents
        .iter()
        .zip(&names)
        .map(|(a, name)| {
            let shared = names.iter().filter(|n| *n == name).count() > 1;
            match (&a.model_name, shared) {
                (Some(m), true) => format!("{name}-{}", sanitize(m)),
                _ => name.clone(),
            }
        })
        .collect()
}

/// Labels made unique by suffixing `-2`, `-3` … to repeats.
fn unique_labels(labels: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    labels
        .map(|l| {
            let n = seen.entry(l.clone()).or_default();
            *n += 1;
            if *n == 1 {
                l
            } else {
                format!("{l}-{n}")
            }
        })
        .collect()
}

/// Task labels: the name, plus a checksum prefix where two different tasks share a name.
fn task_labels(tasks: &[Arc<Task>]) -> Vec<String> {
    let mut by_name: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for t in tasks {
        by_name.entry(&t.name).or_default().push(&t.checksum);
    }
    tasks
        .iter()
        .map(|t| {
            let mut sums = by_name[t.name.as_str()].clone();
            sums.sort();
            sums.dedup();
            if sums.len() > 1 {
                format!("{}-{}", sanitize(&t.name), &t.checksum[..8])
            } else {
                sanitize(&t.name)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(root: &std::path::Path, name: &str) -> Task {
        let d = root.join(name);
        std::fs::create_dir_all(d.join("tests")).unwrap();
        std::fs::create_dir_all(d.join("environment")).unwrap();
        std::fs::write(d.join("instruction.md"), "x").unwrap();
        std::fs::write(d.join("tests/test.sh"), "true").unwrap();
        std::fs::write(d.join("environment/Dockerfile"), "FROM x").unwrap();
        Task::load(&d).unwrap()
    }

    #[test]
    fn the_same_task_twice_is_planned_once() {
        let root = tempfile::tempdir().unwrap();
        let t = task(root.path(), "a");
        let config = JobConfig {
            jobs_dir: Some(root.path().join("jobs")),
            agents: vec![AgentSpec {
                name: "nop".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let plan = JobPlan::new(config, vec![t.clone(), t]).unwrap();
        assert_eq!(plan.trials.len(), 1);
    }

    #[test]
    fn repeated_labels_get_suffixes() {
        let l = unique_labels(["a", "b", "a", "a"].into_iter().map(String::from));
        assert_eq!(l, ["a", "b", "a-2", "a-3"]);
    }

    #[test]
    fn code_agents_are_labelled_by_their_directory_name() {
        assert_eq!(
            agent_label("code:/root/.cache/rollout/archives/ab12/extracted/agent_code"),
            "code-agent_code"
        );
        assert_eq!(agent_label("code:./my agent/"), "code-my-agent");
        assert_eq!(agent_label("oracle"), "oracle");
    }

    #[test]
    fn agents_sharing_a_name_are_labelled_with_their_model() {
        let spec = |name: &str, model: Option<&str>| AgentSpec {
            name: name.into(),
            model_name: model.map(String::from),
            ..Default::default()
        };
        assert_eq!(
            agent_model_labels(&[
                spec("rollout-agent", Some("openai/gpt-x")),
                spec("rollout-agent", Some("small")),
                spec("oracle", Some("small")),
            ]),
            [
                "rollout-agent-openai-gpt-x",
                "rollout-agent-small",
                "oracle"
            ]
        );
    }

    #[test]
    fn sanitize_keeps_names_path_safe() {
        assert_eq!(
            sanitize("anthropic/claude sonnet"),
            "anthropic-claude-sonnet"
        );
    }
}
