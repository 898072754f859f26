//! Multi-step tasks (`[[steps]]`) against the real Docker engine: one environment for all
//! steps, per-step workdir/setup.sh, healthcheck, instruction, timeouts, verifier env, merged
//! tests, artifacts, `min_reward` early stop, reward strategies, `step_results`; and Harbor's
//! cookbook recipe `multi-step`, taken from the cookbook at test time.

mod common;

use common::fake_llm::{final_answer, serve, tool_call, Script};
use common::steps_task::{fixed_reward_task, three_step_task};
use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn step_names(trial: &Value) -> Vec<String> {
    trial["step_results"]
        .as_array()
        .unwrap_or_else(|| panic!("no step_results in {trial:#}"))
        .iter()
        .map(|s| s["step_name"].as_str().unwrap().to_string())
        .collect()
}

fn trial_dir(run: &Run, trial: &Value) -> std::path::PathBuf {
    run.trial_dir(trial["trial_name"].as_str().unwrap())
}

#[test]
fn oracle_solves_every_step_of_a_three_step_task() {
    let tmp = tempfile::tempdir().unwrap();
    let task = three_step_task(tmp.path(), "three-step", "");
    let run = run_task(&task, "oracle", &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let t = run.trial();
    assert_eq!(t["reward"], 1.0, "{t:#}");
    assert!(t["error"].is_null(), "{t:#}");
    assert_eq!(step_names(&t), ["one", "two", "three"]);
    for s in t["step_results"].as_array().unwrap() {
        assert_eq!(s["reward"], 1.0, "{s:#}");
        assert_eq!(s["rewards"]["reward"], 1.0);
        assert!(s["error"].is_null(), "{s:#}");
        assert!(s["stopped"].is_null(), "{s:#}");
        assert_eq!(s["agent_run"]["exit_code"], 0);
        assert_eq!(s["verifier"]["exit_code"], 0);
        for phase in ["step_setup", "agent_run", "verify", "collect"] {
            assert!(s["phases"][phase]["seconds"].is_number(), "{phase}: {s:#}");
        }
    }
    // setup.sh ran (step two only) and its outcome is recorded.
    assert_eq!(t["step_results"][1]["setup"]["exit_code"], 0);
    assert!(t["step_results"][0]["setup"].is_null());

    let dir = trial_dir(&run, &t);
    // Per-step logs and artifacts.
    assert_eq!(
        std::fs::read_to_string(dir.join("steps/one/artifacts/app/one.txt")).unwrap(),
        "one\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("steps/three/artifacts/three-log.txt")).unwrap(),
        "verified-three\n"
    );
    assert!(!dir.join("steps/two/artifacts/three-log.txt").exists());
    for step in ["one", "two", "three"] {
        assert_eq!(
            std::fs::read_to_string(dir.join(format!("steps/{step}/verifier/reward.txt")))
                .unwrap()
                .trim(),
            "1",
            "step {step}"
        );
        assert!(
            dir.join(format!("steps/{step}/agent/command-0/return-code.txt"))
                .is_file(),
            "step {step}"
        );
    }
    assert!(dir.join("steps/two/setup/stdout.txt").is_file());
    // The trial-level directories are left empty: everything is in its step.
    assert!(!dir.join("verifier/reward.txt").exists());
    run.assert_no_containers();
}

#[test]
fn nop_fails_step_one_and_min_reward_stops_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let task = three_step_task(tmp.path(), "three-step", "");
    let run = run_task(&task, "nop", &[]);
    let t = run.trial();
    assert_eq!(t["reward"], 0.0, "{t:#}");
    assert!(t["error"].is_null(), "{t:#}");
    assert_eq!(step_names(&t), ["one"], "steps two and three must not run");
    let one = &t["step_results"][0];
    assert_eq!(one["reward"], 0.0);
    assert!(
        one["stopped"].as_str().unwrap().contains("min_reward 1"),
        "{one:#}"
    );
    let dir = trial_dir(&run, &t);
    assert!(dir.join("steps/one").is_dir());
    assert!(!dir.join("steps/two").exists());
    assert!(!dir.join("steps/three").exists());
    let log = std::fs::read_to_string(dir.join("trial.log")).unwrap();
    assert!(log.contains("step 1/3 one started"), "{log}");
    assert!(!log.contains("step 2/3"), "{log}");
    run.assert_no_containers();
}

/// Every agent kind gets each step's instruction, in the same environment: a command agent
/// that runs its instruction as a script solves all three steps only if so.
#[test]
fn a_command_agent_gets_each_steps_instruction_in_turn() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let task = three_step_task(tmp.path(), "three-step", "");
    let job = tmp.path().join("job.yaml");
    std::fs::write(
        &job,
        format!(
            "name: cmd\njobs_dir: {jobs}\ntasks:\n  - path: {task}\nagents:\n  - name: runner\n    execute: \"bash \\\"$ROLLOUT_TASK_INSTRUCTION\\\"\"\n",
            jobs = tmp.path().join("jobs").display(),
            task = task.display()
        ),
    )
    .unwrap();
    let out = rollout_cmd()
        .args(["run", job.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tmp.path().join("jobs/cmd/three-step__runner__1");
    let t = read_json(&dir.join("result.json"));
    assert_eq!(t["reward"], 1.0, "{t:#}");
    assert_eq!(step_names(&t), ["one", "two", "three"]);
}

#[test]
fn reward_strategies_mean_and_final() {
    let tmp = tempfile::tempdir().unwrap();
    let mean = fixed_reward_task(tmp.path(), "mean-default", None);
    let run = run_task(&mean, "nop", &[]);
    let t = run.trial();
    assert_eq!(t["rewards"]["reward"], 0.625, "{t:#}");
    assert_eq!(
        t["rewards"]["style"], 0.5,
        "a key a step did not write counts 0"
    );
    assert_eq!(t["reward"], 0.625);
    assert_eq!(step_names(&t), ["a", "b"]);

    let fin = fixed_reward_task(tmp.path(), "final", Some("final"));
    let run = run_task(&fin, "nop", &[]);
    let t = run.trial();
    assert_eq!(t["reward"], 0.25, "{t:#}");
    assert_eq!(
        t["rewards"].as_object().unwrap().len(),
        1,
        "final takes the last step's rewards only: {t:#}"
    );
    assert_eq!(t["step_results"][0]["rewards"]["style"], 1.0);
}

#[test]
fn a_failing_setup_script_stops_the_trial_with_a_typed_error() {
    let tmp = tempfile::tempdir().unwrap();
    let task = three_step_task(tmp.path(), "bad-setup", "");
    std::fs::write(
        task.join("steps/two/workdir/setup.sh"),
        "#!/bin/bash\necho broken setup >&2\nexit 7\n",
    )
    .unwrap();
    let run = run_task(&task, "oracle", &[]);
    let t = run.trial();
    assert_eq!(step_names(&t), ["one", "two"], "{t:#}");
    let two = &t["step_results"][1];
    assert_eq!(two["error"]["type"], "environment_start_failed", "{two:#}");
    let msg = two["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("setup.sh exited with 7") && msg.contains("broken setup"),
        "{msg}"
    );
    assert!(
        two["agent_run"].is_null(),
        "the agent must not run after a failed setup"
    );
    assert_eq!(t["error"]["type"], "environment_start_failed");
    // Mean over the verified step one only.
    assert_eq!(t["reward"], 1.0);
    run.assert_no_containers();
}

#[test]
fn tasks_check_reports_a_missing_step_instruction_precisely() {
    let tmp = tempfile::tempdir().unwrap();
    let task = three_step_task(tmp.path(), "no-instr", "");
    std::fs::remove_file(task.join("steps/two/instruction.md")).unwrap();
    let out = rollout_cmd()
        .args(["tasks", "check", task.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("steps/two/instruction.md") && text.contains("\"two\""),
        "{text}"
    );

    let ok = three_step_task(tmp.path(), "fine", "");
    let out = rollout_cmd()
        .args(["tasks", "check", ok.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Harbor's cookbook recipe `multi-step`, unchanged except its base image: `ubuntu:24.04`
/// cannot be pulled here, so the Dockerfile starts from the local debian:bookworm-slim (which
/// has the bash and coreutils the recipe installs) with the recipe's WORKDIR.
#[test]
fn harbor_cookbook_multi_step_recipe_scores_one_with_the_oracle() {
    // A git directory or work tree of github.com/harbor-framework/harbor-cookbook (see
    // docs/testing.md): the recipes are read from it, never copied into this repository.
    let repo = std::env::var_os("ROLLOUT_HARBOR_COOKBOOK")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/work/.mirror/harbor-framework+harbor-cookbook/repo".into());
    assert!(
        repo.is_dir(),
        "this test reads Harbor's cookbook recipes from a clone of github.com/harbor-framework/harbor-cookbook at {} (set ROLLOUT_HARBOR_COOKBOOK to a clone's path)",
        repo.display()
    );
    let repo = repo.as_path();
    let prefix = "harbor_cookbook/recipes/multi-step/";
    let list = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["ls-tree", "-r", "HEAD", "--name-only", prefix])
        .output()
        .unwrap();
    assert!(list.status.success());
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("multi-step");
    let files: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(files.len() >= 10, "{files:?}");
    for f in &files {
        let out = Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["show", &format!("HEAD:{f}")])
            .output()
            .unwrap();
        assert!(out.status.success());
        let rel = f.strip_prefix(prefix).unwrap();
        let dest = task.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(&dest, &out.stdout).unwrap();
    }
    let dockerfile = std::fs::read_to_string(task.join("environment/Dockerfile")).unwrap();
    assert!(dockerfile.contains("WORKDIR /app"), "{dockerfile}");
    std::fs::write(
        task.join("environment/Dockerfile"),
        "FROM debian:bookworm-slim\nWORKDIR /app\n",
    )
    .unwrap();

    let run = run_task(&task, "oracle", &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let t = run.trial();
    assert_eq!(t["reward"], 1.0, "{t:#}");
    assert_eq!(step_names(&t), ["scaffold", "implement", "document"]);
    let dir = trial_dir(&run, &t);
    // setup.sh's marker and the verifier's snapshot land in the step's artifacts; the
    // task-level artifact /app/greet.sh is collected after every step.
    assert!(dir
        .join("steps/implement/artifacts/setup-marker.txt")
        .is_file());
    assert!(dir.join("steps/implement/artifacts/greet.sh").is_file());
    assert!(dir.join("steps/scaffold/artifacts/app/greet.sh").is_file());
    assert!(dir.join("steps/document/artifacts/app/README.md").is_file());

    let run = run_task(&task, "nop", &[]);
    let t = run.trial();
    assert_eq!(t["reward"], 0.0, "{t:#}");
    assert_eq!(step_names(&t), ["scaffold"]);
}

/// Ctrl-C while step two's agent runs: the trial is cancelled (step two records it, step
/// three never starts), the exit status is 130 and the container is removed.
#[test]
fn sigint_during_a_step_cancels_the_trial_and_removes_its_container() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let task = three_step_task(tmp.path(), "hangs-in-two", "");
    std::fs::write(
        task.join("steps/two/solution/solve.sh"),
        "#!/bin/bash\nsleep 600\n",
    )
    .unwrap();
    let child = rollout_cmd()
        .args(["run", "-p", task.to_str().unwrap(), "-a", "oracle"])
        .args(["-o", tmp.path().to_str().unwrap(), "--job-name", "job"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = tmp.path().join("job/hangs-in-two__oracle__1/trial.log");
    wait_for("step two's agent to start", 120, || {
        std::fs::read_to_string(&log).is_ok_and(|l| {
            l.split_once("step 2/3 two started")
                .is_some_and(|(_, after)| after.contains("agent_run started"))
        })
    });
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = read_json(&tmp.path().join("job/hangs-in-two__oracle__1/result.json"));
    assert_eq!(t["error"]["type"], "cancelled", "{t:#}");
    assert_eq!(step_names(&t), ["one", "two"]);
    assert_eq!(t["step_results"][1]["error"]["type"], "cancelled");
    let job = read_json(&tmp.path().join("job/result.json"));
    assert_no_containers(job["id"].as_str().unwrap());
}

/// The built-in LLM agent gets each step's instruction as the prompt of a conversation of its
/// own, in the same environment (scripted OpenAI-compatible server on loopback).
#[test]
fn rollout_agent_gets_each_steps_instruction_as_its_prompt() {
    require_docker();
    let script = Script::ok(vec![
        tool_call("c1", "echo one > /app/one.txt"),
        final_answer("done one"),
        tool_call("c2", "cp /app/config.txt /app/two.txt"),
        final_answer("done two"),
        tool_call("c3", "echo three > /app/three.txt"),
        final_answer("done three"),
    ]);
    let url = serve(script.clone());
    let tmp = tempfile::tempdir().unwrap();
    let task = three_step_task(tmp.path(), "three-step", "");
    let out = rollout_cmd()
        .env("OPENAI_BASE_URL", &url)
        .env("OPENAI_API_KEY", "test-key")
        .args(["run", "-p", task.to_str().unwrap()])
        .args(["-a", "rollout-agent", "-m", "fake-model"])
        .args(["-o", tmp.path().to_str().unwrap(), "--job-name", "job"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = read_json(
        &tmp.path()
            .join("job/three-step__rollout-agent__1/result.json"),
    );
    assert_eq!(t["reward"], 1.0, "{t:#}");
    let seen = script.seen();
    assert_eq!(seen.len(), 6);
    let prompt = |i: usize| -> String {
        seen[i]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "user")
            .map(|m| m["content"].to_string())
            .collect()
    };
    assert!(prompt(0).contains("Write the word one"), "{}", prompt(0));
    assert!(prompt(2).contains("Copy /app/config.txt"), "{}", prompt(2));
    assert!(
        !prompt(2).contains("Write the word one"),
        "a fresh conversation per step"
    );
    assert!(prompt(4).contains("Write the word three"), "{}", prompt(4));
    let dir = tmp.path().join("job/three-step__rollout-agent__1");
    for step in ["one", "two", "three"] {
        assert!(
            dir.join(format!("steps/{step}/agent/trajectory.json"))
                .is_file(),
            "step {step}"
        );
    }
}
