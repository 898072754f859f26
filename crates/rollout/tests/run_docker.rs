//! `rollout run` end to end against the real Docker engine: rewards, error kinds, limits, files
//! on disk, and cleanup (no container of the job survives any path).

mod common;

use common::*;
use serde_json::Value;

fn error_type(t: &Value) -> Option<&str> {
    t["error"]["type"].as_str()
}

#[test]
fn oracle_scores_one_and_writes_the_job_directory() {
    let r = run_task(&example("hello-world"), "oracle", &[]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    let t = r.trial();
    assert_eq!(t["reward"], 1.0);
    assert_eq!(t["rewards"]["reward"], 1.0);
    assert!(t["error"].is_null());
    assert_eq!(t["rollout_schema_version"], "2.0");
    assert_eq!(t["schema_version"], 1, "Harbor's document version");
    assert_eq!(t["task_name"], "hello-world");
    assert_eq!(t["agent"]["name"], "oracle");
    assert_eq!(t["attempt"], 1);
    assert_eq!(t["task_checksum"].as_str().unwrap().len(), 64);
    assert!(t["environment"]["image_id"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    for phase in [
        "environment_setup",
        "agent_install",
        "agent_run",
        "verify",
        "collect",
        "teardown",
    ] {
        let p = &t["phases"][phase];
        assert!(
            p["seconds"].as_f64().unwrap() >= 0.0,
            "phase {phase} missing: {t}"
        );
        assert!(p["started_at"].is_string() && p["finished_at"].is_string());
    }
    let dir = r.trial_dir("hello-world__oracle__1");
    for f in [
        "config.json",
        "result.json",
        "trial.log",
        "verifier/reward.txt",
        "verifier/test-stdout.txt",
        "verifier/test-stderr.txt",
        "agent/command-0/stdout.txt",
        "agent/command-0/return-code.txt",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing in {}", dir.display());
    }
    assert!(dir.join("artifacts").is_dir());
    assert!(
        !dir.join(".staging").exists(),
        "staging copies must be removed after teardown"
    );
    for f in ["config.json", "result.json", "job.log"] {
        assert!(r.job_dir.join(f).is_file(), "job {f} missing");
    }
    let job = r.job_result();
    assert_eq!(job["n_total_trials"], 1);
    assert_eq!(job["stats"]["mean_reward"], 1.0);
    assert_eq!(job["stats"]["pass_rate"], 1.0);
    assert_eq!(job["stats"]["pass_at_k"]["1"], 1.0);
    assert!(
        r.stdout().contains("oracle / -"),
        "summary table missing:\n{}",
        r.stdout()
    );
    r.assert_no_containers();
}

#[test]
fn the_default_relative_jobs_dir_works() {
    // The README's quick start: no -o, jobs/ under the working directory.
    require_docker();
    let cwd = tempfile::tempdir().unwrap();
    let out = rollout_cmd()
        .current_dir(cwd.path())
        .args([
            "run",
            "-p",
            example("hello-world").to_str().unwrap(),
            "-a",
            "oracle",
            "--job-name",
            "j",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        read_json(&cwd.path().join("jobs/j/hello-world__oracle__1/result.json"))["reward"],
        1.0
    );
    // Resuming through a relative path works too.
    let again = rollout_cmd()
        .current_dir(cwd.path())
        .args(["jobs", "resume", "jobs/j"])
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(0),
        "stderr:\n{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn nop_scores_zero_without_error() {
    let r = run_task(&example("hello-world"), "nop", &[]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    let t = r.trial();
    assert_eq!(t["reward"], 0.0);
    assert!(t["error"].is_null());
    r.assert_no_containers();
}

#[test]
fn failing_build_is_environment_build_failed_with_its_log() {
    let r = run_task(&fixture("build-fails"), "oracle", &[]);
    assert_eq!(r.code(), 1, "stderr:\n{}", r.stderr());
    let t = r.trial();
    assert_eq!(error_type(&t), Some("environment_build_failed"), "{t}");
    assert!(t["reward"].is_null());
    let log = std::fs::read_to_string(
        r.trial_dir("build-fails__oracle__1")
            .join("environment/build.log"),
    )
    .unwrap();
    assert!(
        log.contains("about to fail"),
        "build log lacks the build output:\n{log}"
    );
    r.assert_no_containers();
}

#[test]
fn hanging_agent_times_out_and_the_verifier_still_runs() {
    let r = run_task(&fixture("agent-hangs"), "oracle", &[]);
    assert_eq!(r.code(), 1);
    let t = r.trial();
    assert_eq!(error_type(&t), Some("agent_execution_timeout"), "{t}");
    assert_eq!(t["agent_run"]["timed_out"], true);
    // The fixture's verifier rewards the work the agent did before it hung.
    assert_eq!(t["reward"], 1.0);
    let agent_seconds = t["phases"]["agent_run"]["seconds"].as_f64().unwrap();
    assert!(
        agent_seconds < 30.0,
        "the 2 s agent timeout did not stop the agent ({agent_seconds} s)"
    );
    r.assert_no_containers();
}

#[test]
fn timeout_multiplier_scales_the_agent_timeout() {
    let r = run_task(
        &fixture("agent-hangs"),
        "oracle",
        &["--timeout-multiplier", "0.5"],
    );
    let cfg = read_json(&r.trial_dir("agent-hangs__oracle__1").join("config.json"));
    assert_eq!(cfg["timeouts_sec"]["agent"], 1.0);
    assert_eq!(error_type(&r.trial()), Some("agent_execution_timeout"));
}

#[test]
fn verifier_without_reward_is_reported() {
    let r = run_task(&fixture("no-reward"), "oracle", &[]);
    assert_eq!(r.code(), 1);
    let t = r.trial();
    assert_eq!(error_type(&t), Some("verifier_reward_missing"), "{t}");
    assert!(t["error"]["message"]
        .as_str()
        .unwrap()
        .contains("reward.txt"));
    r.assert_no_containers();
}

#[test]
fn unparsable_reward_is_invalid() {
    let r = run_task(&fixture("invalid-reward"), "oracle", &[]);
    assert_eq!(error_type(&r.trial()), Some("verifier_reward_invalid"));
}

#[test]
fn reward_json_with_several_keys() {
    let r = run_task(&fixture("reward-json"), "oracle", &[]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    let t = r.trial();
    assert_eq!(t["reward"], 0.5);
    assert_eq!(t["rewards"]["tests_passed"], 3.0);
    assert_eq!(t["rewards"]["tests_total"], 6.0);
    // 0.5 is not a 0/1 reward: no pass@k.
    assert!(r.job_result()["stats"]["pass_at_k"].is_null());
    r.assert_no_containers();
}

#[test]
fn smoke_dataset_at_concurrency_four() {
    let smoke = example("datasets/smoke");
    let r = run(&[
        "-p",
        smoke.to_str().unwrap(),
        "-a",
        "oracle",
        "-a",
        "nop",
        "-n",
        "4",
    ]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    let trials = r.trials();
    let n_tasks = std::fs::read_dir(&smoke)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("task.toml").is_file())
        .count();
    assert!(n_tasks >= 5);
    assert_eq!(trials.len(), 2 * n_tasks);
    for t in &trials {
        let expected = if t["agent"]["name"] == "oracle" {
            1.0
        } else {
            0.0
        };
        assert_eq!(t["reward"], expected, "{}", t["trial_name"]);
        assert!(t["error"].is_null(), "{t}");
        assert_eq!(t["dataset"], "smoke");
    }
    let job = r.job_result();
    assert_eq!(job["by_agent"]["oracle"]["mean_reward"], 1.0);
    assert_eq!(job["by_agent"]["nop"]["mean_reward"], 0.0);
    assert_eq!(job["by_dataset"]["smoke"]["n_trials"], 2 * n_tasks);
    assert_eq!(job["stats"]["mean_reward"], 0.5);
    r.assert_no_containers();
}

#[test]
fn attempts_give_pass_at_k_and_distinct_trials() {
    let r = run_task(&example("hello-world"), "oracle", &["-k", "3", "-n", "3"]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    let names: Vec<String> = r
        .trials()
        .iter()
        .map(|t| t["trial_name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "hello-world__oracle__1",
            "hello-world__oracle__2",
            "hello-world__oracle__3"
        ]
    );
    let p = &r.job_result()["stats"]["pass_at_k"];
    assert_eq!(p["1"], 1.0);
    assert_eq!(p["3"], 1.0);
    r.assert_no_containers();
}

#[test]
fn agent_and_verifier_users_workdir_and_env() {
    let r = run_task(&fixture("user-workdir-env"), "oracle", &[]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    let t = r.trial();
    assert_eq!(t["reward"], 1.0, "{t}");
    let who = std::fs::read_to_string(
        r.trial_dir("user-workdir-env__oracle__1")
            .join("artifacts/who.txt"),
    )
    .unwrap();
    assert!(
        who.contains("nobody") && who.contains("/work") && who.contains("hi"),
        "{who}"
    );
}

#[test]
fn healthcheck_waits_for_the_service_the_entrypoint_starts() {
    let r = run_task(&fixture("healthcheck"), "oracle", &[]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    assert_eq!(r.trial()["reward"], 1.0);
    r.assert_no_containers();
}

#[test]
fn healthcheck_that_never_passes_fails_the_trial() {
    let r = run_task(&fixture("healthcheck-never"), "oracle", &[]);
    assert_eq!(r.code(), 1);
    let t = r.trial();
    assert_eq!(
        error_type(&t),
        Some("environment_healthcheck_failed"),
        "{t}"
    );
    assert!(
        t["agent_run"].is_null(),
        "the agent must not start in an unhealthy environment"
    );
    r.assert_no_containers();
}

#[test]
fn big_output_is_capped_to_its_tail() {
    let r = run_task(&fixture("big-output"), "oracle", &[]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    let t = r.trial();
    assert_eq!(t["agent_run"]["output_truncated"], true);
    assert!(t["agent_run"]["stdout_bytes"].as_u64().unwrap() > 4_000_000);
    let kept = std::fs::read(
        r.trial_dir("big-output__oracle__1")
            .join("agent/command-0/stdout.txt"),
    )
    .unwrap();
    assert!(kept.len() <= (1 << 20) + 200, "kept {} bytes", kept.len());
    assert!(kept.starts_with(b"[rollout: output capped"));
}

#[test]
fn artifacts_are_collected() {
    let r = run_task(&fixture("artifacts"), "oracle", &[]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    let dir = r.trial_dir("artifacts__oracle__1").join("artifacts");
    assert!(dir.join("report.txt").is_file());
    assert!(dir.join("sub/data.json").is_file());
}

#[test]
fn prebuilt_image_is_used_without_a_build() {
    let r = run_task(&fixture("hello-prebuilt"), "oracle", &[]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    let t = r.trial();
    assert_eq!(t["reward"], 1.0);
    assert_eq!(t["environment"]["image"], "debian:bookworm-slim");
    assert_eq!(t["environment"]["built"], false);
}

#[test]
fn unpullable_image_is_environment_image_pull_failed() {
    let r = run_task(&fixture("missing-image"), "oracle", &[]);
    assert_eq!(r.code(), 1);
    let t = r.trial();
    assert_eq!(error_type(&t), Some("environment_image_pull_failed"), "{t}");
    assert!(t["error"]["message"]
        .as_str()
        .unwrap()
        .contains("does/not/exist"));
}

#[test]
fn identical_environments_are_built_once() {
    // Same environment content → same image; the second run reuses it.
    let first = run_task(&example("hello-world"), "nop", &[]);
    let second = run_task(&example("hello-world"), "nop", &[]);
    let (a, b) = (first.trial(), second.trial());
    assert_eq!(a["environment"]["image"], b["environment"]["image"]);
    assert_eq!(b["environment"]["built"], false);
}

#[test]
fn job_file_with_a_command_agent() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job.yaml");
    std::fs::write(
        &job,
        format!(
            "name: cmd\njobs_dir: {jobs}\ntasks:\n  - path: {task}\nagents:\n  - name: printer\n    install: \"echo installing > /tmp/installed\"\n    execute: \"test -f /tmp/installed && test -f \\\"$ROLLOUT_TASK_INSTRUCTION\\\" && printf 'Hello, world!' > /app/hello.txt\"\n    env: {{GREETING: \"${{ROLLOUT_TEST_UNSET:-x}}\"}}\n",
            jobs = tmp.path().join("jobs").display(),
            task = example("hello-world").display()
        ),
    )
    .unwrap();
    let out = rollout_cmd()
        .args(["run", job.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job_result: Value =
        serde_json::from_slice(&out.stdout).expect("--json prints the job result");
    assert_eq!(job_result["stats"]["mean_reward"], 1.0);
    let trial = read_json(
        &tmp.path()
            .join("jobs/cmd/hello-world__printer__1/result.json"),
    );
    assert_eq!(trial["agent_install"]["exit_code"], 0);
    assert!(tmp
        .path()
        .join("jobs/cmd/hello-world__printer__1/agent/setup/stdout.txt")
        .is_file());
}

#[test]
fn sigint_cancels_removes_containers_and_exits_130() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let child = rollout_cmd()
        .args([
            "run",
            "-p",
            fixture("agent-hangs").to_str().unwrap(),
            "-a",
            "oracle",
            "-k",
            "4",
            "-n",
            "4",
            "--timeout-multiplier",
            "100",
        ])
        .args(["-o", tmp.path().to_str().unwrap(), "--job-name", "job"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (bounded) until every agent is running: each trial's log says so.
    let job_dir = tmp.path().join("job");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let running = (1..=4)
            .filter(|i| {
                std::fs::read_to_string(job_dir.join(format!("agent-hangs__oracle__{i}/trial.log")))
                    .is_ok_and(|l| l.contains("agent_run started"))
            })
            .count();
        if running == 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agents did not start within 120 s"
        );
        std::thread::yield_now();
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = read_json(&job_dir.join("result.json"));
    assert_eq!(result["cancelled"], true);
    assert_eq!(result["stats"]["n_cancelled"], 4);
    for i in 1..=4 {
        let t = read_json(&job_dir.join(format!("agent-hangs__oracle__{i}/result.json")));
        assert_eq!(t["error"]["type"], "cancelled");
    }
    assert_no_containers(result["id"].as_str().unwrap());
}
