//! From a job configuration and its tasks to the list of trials to run.

use rollout_agents::Agent;
use rollout_core::job_config::AgentSpec;
use rollout_core::timeouts::{Multipliers, Timeouts};
use rollout_core::{JobConfig, Task};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
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
    pub trials: Vec<Arc<TrialPlan>>,
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
}

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
                if dir.exists()
                    && dir
                        .read_dir()
                        .map(|mut d| d.next().is_some())
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
        let multipliers = Multipliers::from_job(&config);
        let agents = config.effective_agents();
        let built: Vec<Arc<dyn Agent>> = agents
            .iter()
            .map(rollout_agents::from_spec)
            .collect::<Result<_, _>>()
            .map_err(PlanError::Agent)?;
        let agent_labels = unique_labels(agents.iter().map(|a| sanitize(&a.name)));
        let tasks: Vec<Arc<Task>> = tasks.into_iter().map(Arc::new).collect();
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
            job_id: uuid::Uuid::new_v4().to_string(),
            job_name,
            job_dir,
            config,
            trials,
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

    #[test]
    fn repeated_labels_get_suffixes() {
        let l = unique_labels(["a", "b", "a", "a"].into_iter().map(String::from));
        assert_eq!(l, ["a", "b", "a-2", "a-3"]);
    }

    #[test]
    fn sanitize_keeps_names_path_safe() {
        assert_eq!(
            sanitize("anthropic/claude sonnet"),
            "anthropic-claude-sonnet"
        );
    }
}
