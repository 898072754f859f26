//! An experiment (AgentLab shape, [`rollout_core::experiment`]) as a rollout job: its JSONL rows
//! become task directories shaped by the experiment (image, agent artifact, benchmark adapter,
//! policy), its agent command a command agent, its design the job's attempts, concurrency and
//! sampling. The job then runs like any other (docs/experiments.md).

use crate::jsonl::{self, Materialize, TaskRow};
use rollout_core::experiment::{Experiment, ExperimentNetwork, ImageSource, AGENT_DIR};
use rollout_core::job_config::{AgentSpec, DatasetSpec};
use rollout_core::task_config::NetworkMode;
use rollout_core::JobConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Name of the command agent an experiment runs.
pub const AGENT_NAME: &str = "experiment-agent";

/// An experiment turned into a job.
#[derive(Debug)]
pub struct Prepared {
    pub config: JobConfig,
    /// Every row of the dataset (before `dataset.limit`).
    pub rows: Vec<TaskRow>,
    /// Where the task directories were written.
    pub tasks_dir: PathBuf,
}

/// The rows of the experiment's dataset, checked against its boundaries: every row valid, and in
/// per-task mode every row naming its image (the FORMATS.md §5 message, one line per row).
pub fn rows(exp: &Experiment) -> Result<Vec<TaskRow>, Vec<String>> {
    let rows = jsonl::load_rows(&exp.dataset).map_err(|e| vec![e.to_string()])?;
    if rows.is_empty() {
        return Err(vec![format!(
            "{}: the dataset has no rows (/dataset/path)",
            exp.dataset.display()
        )]);
    }
    if exp.image_source == ImageSource::PerTask {
        jsonl::require_images(&rows)
            .map_err(|m| m.lines().map(str::to_string).collect::<Vec<_>>())?;
    }
    Ok(rows)
}

/// The materialisation options of one row.
pub fn options(exp: &Experiment, row: &TaskRow) -> Materialize {
    let mut env = BTreeMap::new();
    env.insert("TASK_ID".to_string(), row.id.clone());
    env.insert("WORKSPACE".to_string(), jsonl::workdir(row));
    env.insert("AGENT_DIR".to_string(), AGENT_DIR.to_string());
    Materialize {
        image: match exp.image_source {
            ImageSource::Global => exp.image.clone(),
            ImageSource::PerTask => None,
        },
        artifact: exp.artifact.clone(),
        adapter: exp.grader.clone(),
        env,
        cpus: exp.cpus,
        memory_mb: exp.memory_mb,
        network_mode: Some(match exp.network {
            ExperimentNetwork::None => NetworkMode::NoNetwork,
            ExperimentNetwork::Full => NetworkMode::Public,
            ExperimentNetwork::Allowlist => NetworkMode::Allowlist,
        }),
        allowed_hosts: exp.allowed_hosts.clone(),
    }
}

/// Check the rows, write every task directory under `tasks_dir`, and build the job.
pub fn prepare(exp: &Experiment, tasks_dir: &Path) -> Result<Prepared, Vec<String>> {
    let rows = rows(exp)?;
    let mut errors = Vec::new();
    for row in &rows {
        if let Err(e) = jsonl::materialize_with(row, tasks_dir, &options(exp, row)) {
            errors.push(format!("task '{}' (line {}): {e}", row.id, row.line));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let tasks_dir = tasks_dir
        .canonicalize()
        .unwrap_or_else(|_| tasks_dir.to_path_buf());
    Ok(Prepared {
        config: job_config(exp, &tasks_dir),
        rows,
        tasks_dir,
    })
}

/// The job of `exp` over the task directories in `tasks_dir`.
pub fn job_config(exp: &Experiment, tasks_dir: &Path) -> JobConfig {
    JobConfig {
        n_attempts: Some(exp.replications),
        n_concurrent_trials: Some(exp.max_concurrency),
        shuffle_seed: exp.shuffle_tasks.then(|| exp.random_seed.unwrap_or(0)),
        agents: vec![AgentSpec {
            name: AGENT_NAME.to_string(),
            execute: Some(exp.command.clone()),
            env: exp.agent_env.clone(),
            override_timeout_sec: exp.timeout_ms.map(|ms| ms as f64 / 1000.0),
            ..Default::default()
        }],
        datasets: vec![DatasetSpec {
            path: Some(tasks_dir.to_path_buf()),
            n_tasks: exp.limit,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_core::experiment;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const ROWS: &str = concat!(
        r#"{"schema_version":"task_boundary_v2","task":{"id":"a","image":"img-a:1","workspace":"repo","instruction":"do a"}}"#,
        "\n",
        r#"{"schema_version":"task_boundary_v2","task":{"id":"b","image":"img-b:1","instruction":"do b"}}"#,
        "\n"
    );

    fn experiment(dir: &Path, extra_agent: &str) -> Experiment {
        write(dir, "rows.jsonl", ROWS);
        std::fs::create_dir_all(dir.join("agent/bin")).unwrap();
        write(dir, "agent/bin/run", "#!/bin/sh\n");
        let yaml = format!(
            "dataset: {{path: rows.jsonl, limit: 1}}\n\
             design: {{replications: 3, max_concurrency: 2}}\n\
             runtime:\n  agent:\n    command: [/opt/agent/bin/run]\n    image_source: per_task\n{extra_agent}\
             \n  policy: {{timeout_ms: 1500, network: {{mode: full}}, resources: {{cpus: 1.5}}}}\n\
             benchmark: {{adapter: {{command: python3 grade.py}}}}\n"
        );
        experiment::load(&write(dir, "exp.yaml", &yaml)).unwrap()
    }

    #[test]
    fn per_task_rows_build_from_their_image_with_the_agent_and_the_adapter() {
        let tmp = tempfile::tempdir().unwrap();
        let exp = experiment(tmp.path(), "    artifact: agent\n");
        let p = prepare(&exp, &tmp.path().join("tasks")).unwrap();
        assert_eq!(p.rows.len(), 2);
        let a = p.tasks_dir.join("a");
        let dockerfile = std::fs::read_to_string(a.join("environment/Dockerfile")).unwrap();
        assert!(
            dockerfile.starts_with("FROM img-a:1\nCOPY agent-artifact/ /opt/agent/\n"),
            "{dockerfile}"
        );
        assert!(a.join("environment/agent-artifact/bin/run").is_file());
        let toml = std::fs::read_to_string(a.join("task.toml")).unwrap();
        assert!(toml.contains("TASK_ID = \"a\""), "{toml}");
        assert!(toml.contains("WORKSPACE = \"/workspace/repo\""), "{toml}");
        assert!(
            toml.contains("cpus = 1.5") && toml.contains("network_mode = \"public\""),
            "{toml}"
        );
        let test = std::fs::read_to_string(a.join("tests/test.sh")).unwrap();
        assert!(test.contains("benchmark_score.json"), "{test}");
        assert_eq!(
            std::fs::read_to_string(a.join("tests/grader.sh")).unwrap(),
            "python3 grade.py\n"
        );
        let c = &p.config;
        assert_eq!((c.n_attempts, c.n_concurrent_trials), (Some(3), Some(2)));
        assert_eq!(c.datasets[0].n_tasks, Some(1));
        assert_eq!(c.agents[0].execute.as_deref(), Some("/opt/agent/bin/run"));
        assert_eq!(c.agents[0].override_timeout_sec, Some(1.5));
    }

    #[test]
    fn a_row_without_image_in_per_task_mode_is_refused_with_the_boundary_message() {
        let tmp = tempfile::tempdir().unwrap();
        let exp = experiment(tmp.path(), "    artifact: agent\n");
        write(
            tmp.path(),
            "rows.jsonl",
            &format!(
                "{ROWS}{}\n",
                r#"{"schema_version":"task_boundary_v2","task":{"id":"c","instruction":"do c"}}"#
            ),
        );
        let errors = prepare(&exp, &tmp.path().join("tasks")).unwrap_err();
        assert_eq!(
            errors,
            ["task.image is required for task 'c' when runtime.agent.image_source='per_task'"]
        );
    }
}
