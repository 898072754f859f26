//! The AgentLab seed's test plan (PF-01 … PF-04, SM-01 … SM-04) with `lab` replaced by
//! `rollout`, against the real Docker engine. Fixtures: tests/fixtures/agentlab/.

mod common;
use common::*;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

fn agentlab(name: &str) -> PathBuf {
    repo().join("tests/fixtures/agentlab").join(name)
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `rollout ARGS` run from `cwd` (where `.lab/runs` is created).
fn rollout_in(cwd: &Path, args: &[&str]) -> Output {
    require_docker();
    rollout_cmd().current_dir(cwd).args(args).output().unwrap()
}

fn preflight_json(file: &str) -> (Output, Value) {
    let tmp = tempfile::tempdir().unwrap();
    let out = rollout_in(
        tmp.path(),
        &["preflight", agentlab(file).to_str().unwrap(), "--json"],
    );
    let json =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    (out, json)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

/// The only run directory under `<cwd>/.lab/runs`.
fn run_dir(cwd: &Path) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(cwd.join(".lab/runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.file_name().unwrap().to_string_lossy().starts_with("run_"))
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

fn trial_dirs(run: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(run.join("trials"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn pf01_happy_path_preflight_passes_with_the_five_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = agentlab("experiment.yaml");
    let out = rollout_in(tmp.path(), &["preflight", exp.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (out, json) = preflight_json("experiment.yaml");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(json["ok"], true, "{json}");
    for name in [
        "probe_trial_input",
        "dataset_task_ids",
        "benchmark_grader_reachable",
        "container_ready",
        "dependency_files_exist",
    ] {
        assert_eq!(check(&json, name)["passed"], true, "{name}: {json}");
    }
    // A preflight leaves no run directory behind.
    assert!(!tmp.path().join(".lab").exists());
}

#[test]
fn pf02_per_task_images_in_local_sandbox_mode_are_rejected() {
    let (out, json) = preflight_json("local_mode_invalid.yaml");
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(json["ok"], false);
    let config = check(&json, "config_valid");
    assert_eq!(config["passed"], false);
    assert!(
        config["message"].as_str().unwrap().contains(
            "/runtime/agent/image_source (value 'per_task' requires /runtime/policy/sandbox/mode='container')"
        ),
        "{json}"
    );
}

#[test]
fn pf03_per_task_images_without_an_artifact_are_rejected() {
    let (out, json) = preflight_json("missing_artifact.yaml");
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let config = check(&json, "config_valid");
    assert_eq!(config["passed"], false);
    assert!(
        config["message"]
            .as_str()
            .unwrap()
            .contains("/runtime/agent/artifact"),
        "{json}"
    );
}

#[test]
fn pf04_an_unpullable_per_task_image_fails_container_ready_after_a_pull() {
    let (out, json) = preflight_json("missing_image.yaml");
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let container = check(&json, "container_ready");
    assert_eq!(container["passed"], false, "{json}");
    assert_eq!(container["severity"], "error", "{json}");
    let m = container["message"].as_str().unwrap();
    assert!(
        m.contains("does/not/exist:latest")
            && m.contains("docker pull failed")
            && m.contains("ghost"),
        "{m}"
    );
    // The other row and the rest of the experiment are fine.
    for name in [
        "config_valid",
        "dataset_task_ids",
        "benchmark_grader_reachable",
    ] {
        assert_eq!(check(&json, name)["passed"], true, "{name}: {json}");
    }
}

#[test]
fn pf04_preflight_scans_every_row_for_a_missing_task_image() {
    let (out, json) = preflight_json("missing_task_image.yaml");
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let ids = check(&json, "dataset_task_ids");
    assert_eq!(ids["passed"], false, "{json}");
    assert!(
        ids["message"].as_str().unwrap().contains(
            "task.image is required for task 'no-image' when runtime.agent.image_source='per_task'"
        ),
        "{json}"
    );
}

#[test]
fn sm01_sm02_sm04_a_run_reaches_a_terminal_state_with_the_seed_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = agentlab("experiment.yaml");
    let out = rollout_in(tmp.path(), &["run", exp.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = run_dir(tmp.path());

    // SM-01: terminal state, trial directories.
    let control = read_json(&run.join("runtime/run_control.json"));
    assert_eq!(control["status"], "completed", "{control}");
    for key in ["schema_version", "run_id", "active_trials", "updated_at"] {
        assert!(control.get(key).is_some(), "{key} missing: {control}");
    }
    assert_eq!(control["active_trials"].as_array().unwrap().len(), 0);
    let trials = trial_dirs(&run);
    assert_eq!(trials.len(), 2, "{trials:?}");

    let mut tasks = Vec::new();
    for trial in &trials {
        // SM-02: benchmark_preflight.json per trial.
        let pre = read_json(&trial.join("benchmark_preflight.json"));
        assert_eq!(pre["schema_version"], "benchmark_trial_preflight_v1");
        assert!(pre["task_id"].is_string(), "{pre}");
        assert_eq!(pre["task_image"], "debian:bookworm-slim");
        assert_eq!(pre["grading"]["enabled"], true);
        tasks.push(pre["task_id"].as_str().unwrap().to_string());

        // SM-04: the score is valid JSON, and it is the adapter's verdict.
        let score = read_json(&trial.join("out/benchmark_score.json"));
        assert_eq!(score["resolved"], true, "{score}");
        assert_eq!(score["task_id"], pre["task_id"]);
        let result = read_json(&trial.join("trial_result.json"));
        assert_eq!(result["classification"], "graded", "{result}");
        assert_eq!(result["reward"], 1.0, "{result}");

        // The full rollout trial directory is reachable from the seed's.
        let harbor = read_json(&trial.join("harbor/result.json"));
        assert_eq!(harbor["task_name"], pre["task_id"]);
        assert_eq!(harbor["reward"], 1.0);
    }
    tasks.sort();
    assert_eq!(tasks, ["greet-1", "greet-2"]);
    let job = read_json(&run.join("result.json"));
    assert_no_containers(job["id"].as_str().unwrap());
}

/// A run interrupted before one trial finished, resumed with `rollout jobs resume`: the resumed
/// trial writes into its own `trials/trial_<n>/` (the numbering survives the resume) and the
/// seed's `runtime/run_control.json` follows the resumed job.
#[test]
fn resuming_an_experiment_run_keeps_writing_the_seed_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = agentlab("experiment.yaml");
    let out = rollout_in(tmp.path(), &["run", exp.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = run_dir(tmp.path());
    let trials = trial_dirs(&run);
    assert_eq!(trials.len(), 2, "{trials:?}");
    let index = read_json(&run.join("trials/index.json"));
    assert_eq!(index.as_object().unwrap().len(), 2, "{index}");

    // Make the second trial look unfinished: no rollout result, no seed result.
    let second = &trials[1];
    let name = read_json(&second.join("benchmark_preflight.json"))["trial_name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(index[&name], 2, "{index}");
    std::fs::remove_file(run.join(&name).join("result.json")).unwrap();
    std::fs::remove_file(second.join("trial_result.json")).unwrap();
    std::fs::remove_dir_all(second.join("out")).unwrap();
    let before = read_json(&run.join("runtime/run_control.json"));

    let out = rollout_in(tmp.path(), &["jobs", "resume", run.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(trial_dirs(&run), trials, "no new trial directory");
    let result = read_json(&second.join("trial_result.json"));
    assert_eq!(result["classification"], "graded", "{result}");
    assert_eq!(result["trial_name"], name.as_str());
    assert_eq!(
        read_json(&second.join("out/benchmark_score.json"))["resolved"],
        true
    );
    let after = read_json(&run.join("runtime/run_control.json"));
    assert_eq!(after["status"], "completed", "{after}");
    assert_ne!(after["updated_at"], before["updated_at"], "{after}");
    assert_no_containers(read_json(&run.join("result.json"))["id"].as_str().unwrap());
}

#[test]
fn sm03_a_missing_task_image_fails_the_run_at_the_boundary() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = agentlab("missing_task_image.yaml");
    let out = rollout_in(tmp.path(), &["run", exp.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "task.image is required for task 'no-image' when runtime.agent.image_source='per_task'"
        ),
        "{stderr}"
    );
    // Nothing started: no half-made run directory.
    let runs = tmp.path().join(".lab/runs");
    assert!(
        !runs.exists() || std::fs::read_dir(&runs).unwrap().next().is_none(),
        "a run directory was left in {}",
        runs.display()
    );
}

#[test]
fn sm04_an_adapter_that_writes_no_json_classifies_the_trial_grade_error() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = agentlab("broken_grader.yaml");
    let out = rollout_in(tmp.path(), &["run", exp.to_str().unwrap(), "-l", "1"]);
    // The run ends (a grading failure is the trial's, not the run's) with errored trials.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let run = run_dir(tmp.path());
    // A terminal state: `failed`, since the trial has no reward.
    assert_eq!(
        read_json(&run.join("runtime/run_control.json"))["status"],
        "failed"
    );
    let trials = trial_dirs(&run);
    assert_eq!(trials.len(), 1, "{trials:?}");
    let result = read_json(&trials[0].join("trial_result.json"));
    assert_eq!(result["classification"], "grade_error", "{result}");
    assert!(
        result["reason"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{result}"
    );
    assert!(!trials[0].join("out/benchmark_score.json").exists());
}
