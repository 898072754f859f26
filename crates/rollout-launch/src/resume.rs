//! The resume rules: the rest of an existing job runs only if its configuration is the same (up
//! to the keys that do not change results) and no live process still runs it.

use crate::LaunchError;
use rollout_core::{JobConfig, Task};
use rollout_runner::writer::{RunControl, RunStatus};
use rollout_runner::JobPlan;
use std::path::Path;

/// Keys of a job configuration that do not change results, so may differ on resume.
const RESUMABLE_DIFFERENCES: [&str; 5] = [
    "name",
    "jobs_dir",
    "n_concurrent_trials",
    "retry",
    "orchestrator",
];

/// Top-level fields whose values differ between the stored and the new configuration.
pub fn differing_fields(stored: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let normalise = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(env) = v.get_mut("environment").and_then(|e| e.as_object_mut()) {
            env.remove("force_build");
            env.remove("pull");
        }
        v
    };
    let (stored, new) = (normalise(stored), normalise(new));
    let empty = serde_json::Map::new();
    let a = stored.as_object().unwrap_or(&empty);
    let b = new.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !RESUMABLE_DIFFERENCES.contains(&k.as_str()))
        .filter(|k| {
            a.get(*k).unwrap_or(&serde_json::Value::Null)
                != b.get(*k).unwrap_or(&serde_json::Value::Null)
        })
        .cloned()
        .collect()
}

/// The stored configuration of the job in `dir`, made to run there again (`rollout jobs
/// resume`): its name and jobs directory are the directory's.
pub fn stored_config(dir: &Path) -> Result<JobConfig, LaunchError> {
    let mut config = JobConfig::load(&dir.join("config.json"))
        .map_err(|e| LaunchError::Invalid(format!("{e}: is {} a job directory?", dir.display())))?;
    config.name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    config.jobs_dir = Some(dir.parent().map(Path::to_path_buf).unwrap_or_default());
    Ok(config)
}

/// Plan the rest of the job in `dir`: refuse if it still runs or its configuration changed.
pub fn plan(
    dir: &Path,
    config: JobConfig,
    tasks: Vec<Task>,
    retry_errors: bool,
) -> Result<JobPlan, LaunchError> {
    let stored: serde_json::Value = std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            LaunchError::Invalid(format!("cannot read {}", dir.join("config.json").display()))
        })?;
    let new = serde_json::to_value(&config).map_err(|e| LaunchError::Invalid(e.to_string()))?;
    let diff = differing_fields(&stored, &new);
    if !diff.is_empty() {
        return Err(LaunchError::Invalid(format!(
            "job {} exists with a different configuration ({} differ): resuming would mix results; \
             use the same configuration, or another --job-name",
            dir.display(),
            diff.join(", ")
        )));
    }
    let control = RunControl::load(dir);
    if let Some(c) = &control {
        if c.status == RunStatus::Running && c.owner_alive(&rollout_runner::host_name()) {
            return Err(LaunchError::Invalid(format!(
                "job {} is still running (pid {} on {}): stop it before resuming",
                dir.display(),
                c.pid,
                c.host
            )));
        }
    }
    // The job id labels its containers; a job that never recorded one gets a stable stand-in.
    let job_id = control
        .map(|c| c.run_id)
        .unwrap_or_else(|| rollout_core::digest::bytes_digest(dir.to_string_lossy().as_bytes()));
    JobPlan::resume(config, tasks, job_id, dir.to_path_buf(), retry_errors)
        .map_err(|e| LaunchError::Plan(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resume_ignores_concurrency_but_not_agents() {
        let a = json!({"name": "j", "n_concurrent_trials": 4, "agents": [{"name": "oracle"}], "environment": {"force_build": true}});
        let b = json!({"name": "j", "n_concurrent_trials": 8, "agents": [{"name": "oracle"}], "environment": {"force_build": false}});
        assert!(differing_fields(&a, &b).is_empty());
        let c = json!({"name": "j", "agents": [{"name": "nop"}], "n_attempts": 2});
        assert_eq!(
            differing_fields(&a, &c),
            ["agents", "environment", "n_attempts"]
        );
    }
}
