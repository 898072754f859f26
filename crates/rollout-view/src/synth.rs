//! Synthetic job directories in rollout's layout, for tests and the benchmark: deterministic
//! (a fixed-seed generator), with rewards, errors, phase timings, logs, artifacts and, for the
//! `llm` agent, an ATIF trajectory.

use serde_json::json;
use std::path::Path;

/// A small deterministic generator (64-bit LCG).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Write a finished job of `n_trials` trials into `dir` (created): agents `llm` and `nop` over
/// `n_tasks` tasks of dataset `synthetic`, attempts to fill `n_trials`.
pub fn write_job(
    dir: &Path,
    name: &str,
    n_trials: usize,
    n_tasks: usize,
    seed: u64,
) -> std::io::Result<()> {
    let mut rng = Lcg(seed);
    std::fs::create_dir_all(dir)?;
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .expect("fixed")
        .with_timezone(&chrono::Utc);
    let at = |s: f64| (t0 + chrono::Duration::milliseconds((s * 1000.0) as i64)).to_rfc3339();
    let agents = ["llm", "nop"];
    let mut trials = serde_json::Map::new();
    let mut n_errored = 0;
    for i in 0..n_trials {
        let agent = agents[i % 2];
        let task = format!("task-{:04}", (i / 2) % n_tasks.max(1));
        let attempt = i / (2 * n_tasks.max(1)) + 1;
        let trial = format!("{task}__{agent}__{attempt}");
        let tdir = dir.join(&trial);
        std::fs::create_dir_all(tdir.join("agent"))?;
        std::fs::create_dir_all(tdir.join("verifier"))?;
        let start = i as f64 * 0.5;
        let setup = 1.0 + 3.0 * rng.next();
        let run = 2.0 + 20.0 * rng.next();
        let verify = 0.5 + 2.0 * rng.next();
        let roll = rng.next();
        let (reward, error) = if agent == "nop" {
            (Some(0.0), None)
        } else if roll < 0.08 {
            (
                None,
                Some(
                    json!({"type": "agent_execution_timeout", "message": "the agent ran longer than its 600 s timeout; raise [agent].timeout_sec or fix the agent"}),
                ),
            )
        } else if roll < 0.12 {
            (
                None,
                Some(
                    json!({"type": "verifier_reward_missing", "message": "the verifier wrote no /logs/verifier/reward.txt or reward.json"}),
                ),
            )
        } else {
            (Some(if roll < 0.7 { 1.0 } else { 0.0 }), None)
        };
        if error.is_some() {
            n_errored += 1;
        }
        let mut phases = serde_json::Map::new();
        let mut t = start;
        for (p, s) in [
            ("environment_setup", setup),
            ("agent_run", run),
            ("verify", verify),
        ] {
            if p == "verify" && error.is_some() && reward.is_none() && roll < 0.08 {
                break;
            }
            phases.insert(
                p.into(),
                json!({"started_at": at(t), "finished_at": at(t + s), "seconds": s}),
            );
            t += s;
        }
        let rewards = reward.map(|r| json!({"reward": r}));
        let result = json!({
            "rollout_schema_version": rollout_core::RESULT_SCHEMA_VERSION, "id": format!("00000000-0000-0000-0000-{i:012}"),
            "trial_name": trial, "job_id": "synthetic", "job_name": name,
            "task_name": task, "task_path": format!("/nonexistent/{task}"), "task_checksum": task,
            "dataset": "synthetic", "agent": {"name": agent, "version": null, "model_name": if agent == "llm" { json!("scripted-model") } else { json!(null) }},
            "attempt": attempt, "rewards": rewards, "reward": reward, "error": error,
            "environment": {"type": "docker", "image": "debian:bookworm-slim", "image_id": null, "built": false, "container_id": null, "preserved": false},
            "agent_install": null, "agent_run": null, "verifier": null,
            "started_at": at(start), "finished_at": at(t), "seconds": t - start,
            "phases": phases, "previous_tries": [],
        });
        // Through rollout's own result type, so the file has exactly the keys rollout writes
        // today (Harbor's fields included), as a reader meets them.
        let result: rollout_core::result::TrialResult = serde_json::from_value(result)?;
        std::fs::write(
            tdir.join("result.json"),
            serde_json::to_vec_pretty(&result)?,
        )?;
        std::fs::write(
            tdir.join("trial.log"),
            format!("{} trial {trial} started\n{} finished\n", at(start), at(t)),
        )?;
        std::fs::write(
            tdir.join("agent/stdout.txt"),
            format!("working on {task}\n"),
        )?;
        std::fs::write(
            tdir.join("verifier/test-stdout.txt"),
            format!(
                "checking {task}: {}\n",
                if reward == Some(1.0) { "PASS" } else { "FAIL" }
            ),
        )?;
        if let Some(r) = reward {
            std::fs::write(tdir.join("verifier/reward.txt"), format!("{r}\n"))?;
        }
        if agent == "llm" {
            std::fs::create_dir_all(tdir.join("artifacts"))?;
            std::fs::write(
                tdir.join("artifacts/answer.txt"),
                format!("answer for {task}\n"),
            )?;
            let traj = json!({
                "schema_version": "ATIF-v1.6", "session_id": trial,
                "agent": {"name": "llm", "version": "1", "model_name": "scripted-model"},
                "steps": [
                    {"step_id": 1, "source": "user", "message": format!("Solve {task}: write the answer to /app/answer.txt.")},
                    {"step_id": 2, "source": "agent", "message": "I will write the answer.",
                     "tool_calls": [{"tool_call_id": "call_1", "function_name": "bash", "arguments": {"command": "echo 42 > /app/answer.txt"}}],
                     "observation": {"results": [{"source_call_id": "call_1", "content": "exit 0"}]},
                     "metrics": {"prompt_tokens": 120, "completion_tokens": 30}},
                    {"step_id": 3, "source": "agent", "message": "Done: the answer is in /app/answer.txt."}
                ],
                "final_metrics": {"total_prompt_tokens": 120, "total_completion_tokens": 30}
            });
            std::fs::write(
                tdir.join("agent/trajectory.json"),
                serde_json::to_vec_pretty(&traj)?,
            )?;
        }
        trials.insert(trial, json!(reward));
    }
    let end = n_trials as f64 * 0.5 + 30.0;
    let job = json!({
        "rollout_schema_version": rollout_core::RESULT_SCHEMA_VERSION, "id": "synthetic", "name": name,
        "started_at": at(0.0), "finished_at": at(end), "seconds": end,
        "n_total_trials": n_trials, "n_not_started": 0, "cancelled": false,
        "stats": {"n_trials": n_trials, "n_errored": n_errored},
        "by_agent": {}, "by_dataset": {}, "by_agent_dataset": {}, "trials": trials,
    });
    std::fs::write(dir.join("result.json"), serde_json::to_vec_pretty(&job)?)?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&json!({"job_name": name}))?,
    )?;
    std::fs::write(dir.join("job.log"), "synthetic job\n")?;
    Ok(())
}
