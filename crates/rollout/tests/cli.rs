//! CLI behaviour that needs no container: usage and config errors, `tasks check`, `--version`.

mod common;

use common::*;

#[test]
fn version_is_printed() {
    let out = rollout_cmd().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("rollout "));
}

#[test]
fn invalid_task_toml_names_file_line_and_field_and_fails_its_trials() {
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("bad");
    std::fs::create_dir_all(task.join("tests")).unwrap();
    std::fs::write(task.join("instruction.md"), "x").unwrap();
    std::fs::write(task.join("tests/test.sh"), "true").unwrap();
    std::fs::write(
        task.join("task.toml"),
        "version = \"1.0\"\n[agent]\ntimeout_sec = \"ten\"\n",
    )
    .unwrap();
    let out = rollout_cmd()
        .args([
            "run",
            "-p",
            task.to_str().unwrap(),
            "-o",
            tmp.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    // The task fails its own trials (task_invalid); the job runs and exits 1.
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("task.toml:3:"), "{err}");
    assert!(err.contains("agent.timeout_sec"), "{err}");
}

#[test]
fn invalid_job_file_is_a_usage_error_naming_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job.yaml");
    std::fs::write(&job, "tasks:\n  - path: x\nn_concurent_trials: 2\n").unwrap();
    let out = rollout_cmd()
        .args(["run", job.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("job.yaml:3"), "{err}");
    assert!(
        err.contains("n_concurrent_trials"),
        "should suggest the right key: {err}"
    );
}

#[test]
fn unknown_agent_is_a_usage_error() {
    let out = rollout_cmd()
        .args([
            "run",
            "-p",
            example("hello-world").to_str().unwrap(),
            "-a",
            "claude-cod",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown agent"));
}

#[test]
fn no_task_source_is_a_usage_error() {
    let out = rollout_cmd()
        .args(["run", "-a", "oracle"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-p"));
}

#[test]
fn filters_that_match_nothing_are_reported() {
    let out = rollout_cmd()
        .args([
            "run",
            "-p",
            example("datasets/smoke").to_str().unwrap(),
            "-t",
            "no-such-*",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("filtered out"));
}

#[test]
fn tasks_check_accepts_the_examples_and_rejects_a_broken_task() {
    let out = rollout_cmd()
        .args([
            "tasks",
            "check",
            example("hello-world").to_str().unwrap(),
            example("datasets/smoke").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("broken");
    std::fs::create_dir_all(&task).unwrap();
    std::fs::write(task.join("instruction.md"), "x").unwrap();
    std::fs::write(task.join("task.toml"), "[verifier]\ntimeout = 3\n").unwrap();
    let out = rollout_cmd()
        .args(["tasks", "check", task.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tests/test.sh"), "{text}");
}
