//! `rollout preflight` against the real Docker engine (AgentLab's PF-01 … PF-04, adapted).

mod common;
use common::*;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every check, in output order.
const CHECKS: [&str; 8] = [
    "config_valid",
    "dataset_task_ids",
    "probe_trial_input",
    "dependency_files_exist",
    "benchmark_grader_reachable",
    "agent_ready",
    "container_ready",
    "disk_headroom",
];

/// A preflight run with `--json`: exit code and report.
struct Report {
    code: i32,
    json: Value,
    stderr: String,
}

impl Report {
    fn check(&self, name: &str) -> &Value {
        self.json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name} in {}", self.json))
    }

    fn passed(&self, name: &str) -> bool {
        self.check(name)["passed"].as_bool().unwrap()
    }

    fn message(&self, name: &str) -> String {
        self.check(name)["message"].as_str().unwrap().to_string()
    }

    /// Failed with severity error.
    fn failed(&self, name: &str) -> bool {
        !self.passed(name) && self.check(name)["severity"] == "error"
    }

    /// Failed with severity warning.
    fn warned(&self, name: &str) -> bool {
        !self.passed(name) && self.check(name)["severity"] == "warning"
    }
}

/// The job id of the probe container named in container_ready's message, if one ran.
fn probe_job_id(message: &str) -> Option<String> {
    let rest = message.split("io.rollout.job=").nth(1)?;
    Some(
        rest.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect(),
    )
}

/// `rollout preflight ARGS --json`, checked for shape, and for no probe container left behind.
fn preflight(args: &[&str]) -> Report {
    preflight_env(args, &[])
}

fn preflight_env(args: &[&str], env: &[(&str, &str)]) -> Report {
    require_docker();
    let out = rollout_cmd()
        .arg("preflight")
        .args(args)
        .arg("--json")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("stdout is not one JSON document ({e}):\n{stdout}\nstderr:\n{stderr}")
    });
    let obj = json.as_object().unwrap();
    assert_eq!(
        obj.keys().collect::<Vec<_>>(),
        ["checks", "ok"],
        "exactly ok and checks: {json}"
    );
    let checks = json["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, CHECKS, "every check, in order, always");
    for c in checks {
        let mut keys: Vec<&String> = c.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["message", "name", "passed", "severity"], "{c}");
        assert!(
            c["severity"] == "error" || c["severity"] == "warning",
            "{c}"
        );
        assert!(!c["message"].as_str().unwrap().contains('\n'), "{c}");
    }
    let any_error = checks
        .iter()
        .any(|c| c["passed"] == false && c["severity"] == "error");
    assert_eq!(json["ok"], !any_error, "ok means no error-severity failure");
    let code = out.status.code().unwrap_or(-1);
    assert_eq!(code, if any_error { 1 } else { 0 }, "stderr:\n{stderr}");
    let report = Report { code, json, stderr };
    if let Some(id) = probe_job_id(&report.message("container_ready")) {
        assert!(id.starts_with("preflight-"), "{id}");
        assert_no_containers(&id);
    }
    report
}

/// A task directory `root/name` with the given pieces.
fn make_task(
    root: &Path,
    name: &str,
    dockerfile: Option<&str>,
    test_sh: bool,
    solve_sh: bool,
) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(d.join("environment")).unwrap();
    std::fs::write(d.join("instruction.md"), "Create /tmp/done.\n").unwrap();
    std::fs::write(d.join("task.toml"), "version = \"1.0\"\n").unwrap();
    if let Some(df) = dockerfile {
        std::fs::write(d.join("environment/Dockerfile"), df).unwrap();
    }
    if test_sh {
        std::fs::create_dir_all(d.join("tests")).unwrap();
        let p = d.join("tests/test.sh");
        std::fs::write(
            &p,
            "#!/bin/bash\nif [ -f /tmp/done ]; then echo 1; else echo 0; fi > /logs/verifier/reward.txt\n",
        )
        .unwrap();
        set_executable(&p);
    }
    if solve_sh {
        std::fs::create_dir_all(d.join("solution")).unwrap();
        std::fs::write(
            d.join("solution/solve.sh"),
            "#!/bin/bash\ntouch /tmp/done\n",
        )
        .unwrap();
    }
    d
}

fn set_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

const BASE_DOCKERFILE: &str = "FROM debian:bookworm-slim\n";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn pf01_happy_path_on_hello_world_and_the_smoke_dataset() {
    let hello = example("hello-world");
    let smoke = example("datasets/smoke");
    let r = preflight(&["-p", s(&hello), "-p", s(&smoke), "-a", "oracle"]);
    assert_eq!(r.code, 0, "{}\n{}", r.json, r.stderr);
    assert_eq!(r.json["ok"], true);
    for name in CHECKS {
        assert!(r.passed(name), "{name}: {}", r.check(name));
    }
    assert!(r.message("dataset_task_ids").starts_with("7 task(s)"));
    let container = r.message("container_ready");
    assert!(
        container.contains("probe container") && probe_job_id(&container).is_some(),
        "{container}"
    );

    // The text form: one line per check, then the summary.
    let out = rollout_cmd()
        .args([
            "preflight",
            "-p",
            s(&hello),
            "-p",
            s(&smoke),
            "-a",
            "oracle",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), CHECKS.len() + 1, "{text}");
    for (line, name) in lines.iter().zip(CHECKS) {
        assert!(line.starts_with(&format!("[PASS] {name}: ")), "{text}");
    }
    assert!(lines[8].starts_with("preflight ok: 8 passed"), "{text}");
    if let Some(id) = probe_job_id(lines[6]) {
        assert_no_containers(&id);
    }
}

#[test]
fn pf01_happy_path_with_the_example_job_file() {
    let r = preflight(&[s(&example("job.yaml"))]);
    assert_eq!(r.json["ok"], true, "{}", r.json);
    assert!(
        r.message("config_valid").contains("agents: oracle, nop"),
        "{}",
        r.json
    );
}

#[test]
fn pf04_an_image_that_is_neither_local_nor_pullable_fails_container_ready() {
    let r = preflight(&["-p", s(&fixture("missing-image")), "-a", "oracle"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.json["ok"], false);
    assert!(r.failed("container_ready"), "{}", r.json);
    let m = r.message("container_ready");
    assert!(
        m.contains("does/not/exist:latest") && m.contains("missing-image"),
        "{m}"
    );
    // Everything else about the task is fine.
    for name in [
        "config_valid",
        "dataset_task_ids",
        "probe_trial_input",
        "dependency_files_exist",
        "benchmark_grader_reachable",
        "agent_ready",
    ] {
        assert!(r.passed(name), "{name}: {}", r.json);
    }
}

#[test]
fn a_task_without_tests_fails_the_file_and_grader_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let task = make_task(tmp.path(), "no-tests", Some(BASE_DOCKERFILE), false, true);
    let r = preflight(&["-p", s(&task), "-a", "oracle"]);
    assert_eq!(r.code, 1);
    for name in [
        "dataset_task_ids",
        "probe_trial_input",
        "dependency_files_exist",
        "benchmark_grader_reachable",
    ] {
        assert!(r.failed(name), "{name}: {}", r.json);
    }
    assert!(r
        .message("dependency_files_exist")
        .contains("no-tests: missing tests/test.sh"));
    assert!(r.message("benchmark_grader_reachable").contains("no-tests"));
    // The rest still ran.
    assert!(r.passed("agent_ready"), "{}", r.json);
    assert!(r.passed("container_ready"), "{}", r.json);
}

#[test]
fn a_bad_task_in_a_dataset_is_named_and_the_others_still_checked() {
    let tmp = tempfile::tempdir().unwrap();
    make_task(tmp.path(), "good", Some(BASE_DOCKERFILE), true, true);
    make_task(tmp.path(), "no-env", None, true, true);
    let r = preflight(&["-p", s(tmp.path()), "-a", "oracle"]);
    assert!(r.failed("dependency_files_exist"), "{}", r.json);
    let m = r.message("dependency_files_exist");
    assert!(
        m.contains("no-env: missing environment/Dockerfile") && !m.contains("good"),
        "{m}"
    );
    assert!(r.failed("dataset_task_ids"));
    assert!(r.passed("agent_ready"), "{}", r.json);
}

#[test]
fn the_oracle_on_a_task_without_a_solution_fails_agent_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let task = make_task(
        tmp.path(),
        "no-solution",
        Some(BASE_DOCKERFILE),
        true,
        false,
    );
    let r = preflight(&["-p", s(&task), "-a", "oracle"]);
    assert_eq!(r.code, 1);
    assert!(r.failed("agent_ready"), "{}", r.json);
    let m = r.message("agent_ready");
    assert!(
        m.contains("oracle") && m.contains("no-solution") && m.contains("solve.sh"),
        "{m}"
    );
    assert!(r.passed("dependency_files_exist"), "{}", r.json);

    // Another agent does not need it: only a warning.
    let r = preflight(&["-p", s(&task), "-a", "nop"]);
    assert_eq!(r.code, 0, "{}", r.json);
    assert!(r.passed("agent_ready"));
    assert!(r.warned("dependency_files_exist"), "{}", r.json);
    assert!(r
        .message("dependency_files_exist")
        .contains("solution/solve.sh"));
}

#[test]
fn unknown_and_unconfigured_agents_are_reported() {
    let hello = example("hello-world");
    let r = preflight_env(
        &[
            "-p",
            s(&hello),
            "-a",
            "no-such-agent",
            "-a",
            "rollout-agent",
        ],
        &[],
    );
    assert!(r.failed("agent_ready"));
    let m = r.message("agent_ready");
    assert!(m.contains("no-such-agent") && m.contains("-m MODEL"), "{m}");

    // An installed agent without any of its keys: a warning only.
    let mut cmd_env: Vec<(&str, &str)> = Vec::new();
    for k in [
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_AUTH_TOKEN",
        "CLAUDE_CODE_OAUTH_TOKEN",
    ] {
        cmd_env.push((k, ""));
    }
    let r = preflight_env(&["-p", s(&hello), "-a", "claude-code"], &cmd_env);
    assert_eq!(r.code, 0, "{}", r.json);
    assert!(r.warned("agent_ready"), "{}", r.json);
    assert!(r.message("agent_ready").contains("ANTHROPIC_API_KEY"));
}

#[test]
fn an_invalid_job_file_fails_config_valid_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job.yaml");
    std::fs::write(
        &job,
        "agents:\n  - name: oracle\nn_attempts: \"many\"\ntasks:\n  - path: x\n",
    )
    .unwrap();
    let r = preflight(&[s(&job)]);
    assert_eq!(r.code, 1);
    assert!(r.failed("config_valid"));
    let m = r.message("config_valid");
    assert!(m.contains("job.yaml:3") && m.contains("n_attempts"), "{m}");
    for name in &CHECKS[1..] {
        assert!(r.warned(name), "{name}: {}", r.json);
        assert!(r.message(name).contains("config_valid"), "{}", r.json);
    }

    // A job file that cannot be read, and a job without any task source.
    let r = preflight(&[s(&tmp.path().join("missing.yaml"))]);
    assert!(r.failed("config_valid") && r.message("config_valid").contains("missing.yaml"));
    let r = preflight(&[]);
    assert!(r.failed("config_valid") && r.message("config_valid").contains("no tasks"));
}

#[test]
fn build_builds_a_fresh_environment_image() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let task = make_task(
        tmp.path(),
        "fresh",
        Some(&format!(
            "{BASE_DOCKERFILE}RUN echo {marker} > /preflight-marker\n"
        )),
        true,
        true,
    );
    // Images built from this environment carry its context digest as a label.
    let digest = rollout_env::buildctx::context_digest(&task.join("environment"))
        .unwrap()
        .to_hex()
        .to_string();
    let built_tags = || {
        let out = Command::new("docker")
            .args([
                "images",
                "--filter",
                &format!("label=io.rollout.env-hash={digest}"),
                "--format",
                "{{.Repository}}:{{.Tag}}",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert!(built_tags().is_empty(), "{digest} should not be built yet");

    // Without --build: noted, not built.
    let r = preflight(&["-p", s(&task), "-a", "oracle"]);
    assert!(r.passed("container_ready"), "{}", r.json);
    assert!(r
        .message("container_ready")
        .contains("1 to build at run time"));
    assert!(built_tags().is_empty());
    assert!(
        r.message("disk_headroom").contains("1 image build(s)"),
        "{}",
        r.json
    );

    let r = preflight(&["-p", s(&task), "-a", "oracle", "--build"]);
    let built = built_tags();
    for tag in &built {
        let _ = Command::new("docker").args(["rmi", "-f", tag]).output();
    }
    assert_eq!(r.code, 0, "{}", r.json);
    assert_eq!(built.len(), 1, "--build did not build {digest}: {}", r.json);
    let m = r.message("container_ready");
    assert!(m.contains("1 built now") && m.contains(&built[0]), "{m}");
}

#[test]
fn a_failing_build_fails_container_ready_with_build() {
    let tmp = tempfile::tempdir().unwrap();
    let task = make_task(
        tmp.path(),
        "broken-build",
        Some(&format!("{BASE_DOCKERFILE}RUN exit 3\n")),
        true,
        true,
    );
    let r = preflight(&["-p", s(&task), "--build"]);
    assert_eq!(r.code, 1);
    assert!(r.failed("container_ready"));
    assert!(
        r.message("container_ready").contains("broken-build"),
        "{}",
        r.json
    );
}

#[test]
fn the_same_task_twice_runs_once_and_two_tasks_with_one_name_are_a_warning() {
    let hello = example("hello-world");
    let r = preflight(&["-p", s(&hello), "-p", s(&hello), "-a", "nop"]);
    assert_eq!(r.code, 0, "{}", r.json);
    assert!(r.warned("dataset_task_ids"), "{}", r.json);
    assert!(r.message("dataset_task_ids").contains("runs once"));

    let tmp = tempfile::tempdir().unwrap();
    let other = make_task(tmp.path(), "hello-world", Some(BASE_DOCKERFILE), true, true);
    let r = preflight(&["-p", s(&hello), "-p", s(&other), "-a", "nop"]);
    assert_eq!(r.code, 0, "{}", r.json);
    assert!(r.warned("dataset_task_ids"), "{}", r.json);
    assert!(r.message("dataset_task_ids").contains("checksum suffix"));
}

#[test]
fn jsonl_rows_without_a_grader_and_with_duplicate_ids_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = tmp.path().join("rows.jsonl");
    std::fs::write(
        &rows,
        concat!(
            r#"{"schema_version": "task_boundary_v2", "task": {"id": "graded", "image": "debian:bookworm-slim", "instruction": "x", "grader": "true"}}"#,
            "\n",
            r#"{"schema_version": "task_boundary_v2", "task": {"id": "ungraded", "image": "debian:bookworm-slim", "instruction": "y"}}"#,
            "\n"
        ),
    )
    .unwrap();
    let r = preflight(&["-p", s(&rows), "-a", "nop"]);
    assert!(r.failed("benchmark_grader_reachable"), "{}", r.json);
    let m = r.message("benchmark_grader_reachable");
    assert!(m.contains("'ungraded'") && !m.contains("'graded'"), "{m}");
    assert!(r.passed("container_ready"), "{}", r.json);

    let dup = tmp.path().join("dup.jsonl");
    std::fs::write(
        &dup,
        concat!(
            r#"{"schema_version": "task_boundary_v2", "task": {"id": "a", "image": "debian:bookworm-slim", "instruction": "x", "grader": "true"}}"#,
            "\n",
            r#"{"schema_version": "task_boundary_v2", "task": {"id": "a", "image": "debian:bookworm-slim", "instruction": "x", "grader": "true"}}"#,
            "\n"
        ),
    )
    .unwrap();
    let r = preflight(&["-p", s(&dup), "-a", "nop"]);
    assert!(r.failed("dataset_task_ids"), "{}", r.json);
    assert!(r
        .message("dataset_task_ids")
        .contains("duplicate task id 'a'"));
}

#[test]
fn an_unreachable_engine_fails_container_ready_only() {
    let r = preflight_env(
        &["-p", s(&example("hello-world")), "-a", "oracle"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    assert_eq!(r.code, 1);
    assert!(r.failed("container_ready"));
    assert!(
        r.message("container_ready").contains("not reachable"),
        "{}",
        r.json
    );
    assert!(r.passed("disk_headroom"), "{}", r.json);
    assert!(r.passed("agent_ready"));
}

#[test]
fn an_unset_task_variable_is_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let task = make_task(tmp.path(), "env-vars", Some(BASE_DOCKERFILE), true, true);
    std::fs::write(
        task.join("task.toml"),
        "[environment]\nenv = { A = \"${ROLLOUT_PREFLIGHT_SURELY_UNSET}\", B = \"${ROLLOUT_PREFLIGHT_ALSO_UNSET:-fallback}\" }\n",
    )
    .unwrap();
    let r = preflight(&["-p", s(&task), "-a", "oracle"]);
    assert_eq!(r.code, 0, "{}", r.json);
    assert!(r.warned("probe_trial_input"), "{}", r.json);
    let m = r.message("probe_trial_input");
    assert!(
        m.contains("ROLLOUT_PREFLIGHT_SURELY_UNSET") && !m.contains("ALSO_UNSET"),
        "{m}"
    );
}

#[test]
fn run_refuses_to_start_when_a_cheap_check_fails_unless_no_preflight() {
    let tmp = tempfile::tempdir().unwrap();
    // The oracle on a task without solution/solve.sh: the loader accepts the task, the run
    // would start containers and fail in the agent phase.
    let task = make_task(
        tmp.path(),
        "no-solution",
        Some(BASE_DOCKERFILE),
        true,
        false,
    );
    let refused = run_task(&task, "oracle", &[]);
    assert_eq!(refused.code(), 2, "{}", refused.stderr());
    let stderr = refused.stderr();
    assert!(
        stderr.contains("[FAIL] agent_ready")
            && stderr.contains("solve.sh")
            && stderr.contains("--no-preflight"),
        "{stderr}"
    );
    assert!(
        !refused.job_dir.exists(),
        "a refused run must not create its job directory"
    );

    // Skipping the checks, the run starts and the trial fails where preflight said it would.
    let ran = run_task(&task, "oracle", &["--no-preflight"]);
    assert_eq!(ran.code(), 1, "{}", ran.stderr());
    let result = read_json(&ran.job_dir.join("result.json"));
    assert_eq!(result["stats"]["n_errored"], 1, "{result}");
}
