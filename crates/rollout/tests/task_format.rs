//! Harbor 0.26 task.toml against the real engine: invalid tasks fail alone, version and
//! schema_version together, every Harbor key known, keyed rewards per key, artifacts, GPUs.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A task in `dir`: a debian image with /app, the given task.toml, and an oracle that writes
/// `/app/out.txt`; `test` is the verifier's script body.
fn write_task(dir: &Path, toml: &str, test: &str) {
    std::fs::create_dir_all(dir.join("environment")).unwrap();
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    std::fs::create_dir_all(dir.join("solution")).unwrap();
    std::fs::write(dir.join("task.toml"), toml).unwrap();
    std::fs::write(dir.join("instruction.md"), "Write hello to /app/out.txt.\n").unwrap();
    std::fs::write(
        dir.join("environment/Dockerfile"),
        "FROM debian:bookworm-slim\nWORKDIR /app\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("solution/solve.sh"),
        "#!/bin/bash\necho \"hello${HINT:-}\" > /app/out.txt\n",
    )
    .unwrap();
    let test_sh = dir.join("tests/test.sh");
    std::fs::write(&test_sh, format!("#!/bin/bash\n{test}\n")).unwrap();
    std::fs::set_permissions(&test_sh, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// reward 1 when the oracle's file says `want`, else 0.
fn binary_test(want: &str) -> String {
    format!(
        "if [ \"$(cat /app/out.txt 2>/dev/null)\" = {want:?} ]; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi"
    )
}

fn trial_named<'a>(trials: &'a [serde_json::Value], task: &str) -> &'a serde_json::Value {
    trials
        .iter()
        .find(|t| t["task_name"] == task)
        .unwrap_or_else(|| panic!("no trial of task {task}"))
}

#[test]
fn an_invalid_task_fails_its_own_trials_and_the_others_run() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    write_task(
        &ds.join("good"),
        "[verifier]\ntimeout_sec = 60\n",
        &binary_test("hello"),
    );
    write_task(
        &ds.join("bad"),
        "version = \"1.0\"\n\n[environment]\ncpus = \"many\"\n",
        &binary_test("hello"),
    );
    // With the default preflight: the bad task is a warning there, not a stop.
    let r = run_task(&ds, "oracle", &[]);
    assert_eq!(r.code(), 1, "stderr:\n{}", r.stderr());
    let trials = r.trials();
    assert_eq!(trials.len(), 2, "stderr:\n{}", r.stderr());
    assert_eq!(trial_named(&trials, "good")["reward"], 1.0);
    let bad = trial_named(&trials, "bad");
    assert_eq!(bad["error"]["type"], "task_invalid", "{bad}");
    let msg = bad["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("bad/task.toml:4") && msg.contains("environment.cpus"),
        "{msg}"
    );
    assert!(bad["environment"]["container_id"].is_null(), "{bad}");
    assert_eq!(r.job_result()["stats"]["error_counts"]["task_invalid"], 1);
    r.assert_no_containers();

    // `rollout tasks check` still reports it as an error.
    let check = rollout_cmd()
        .args(["tasks", "check", ds.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ne!(check.status.code(), Some(0));
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(out.contains("environment.cpus"), "{out}");

    // Only invalid tasks: the job still writes its result and exits 1.
    let only_bad = tmp.path().join("only-bad");
    std::fs::create_dir_all(&only_bad).unwrap();
    std::fs::rename(ds.join("bad"), only_bad.join("bad")).unwrap();
    let r = run_task(&only_bad, "oracle", &["--no-preflight"]);
    assert_eq!(r.code(), 1, "stderr:\n{}", r.stderr());
    assert_eq!(r.trial()["error"]["type"], "task_invalid");
    assert_eq!(r.job_result()["stats"]["n_errored"], 1);
}

#[test]
fn version_and_schema_version_together_run_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("both");
    write_task(
        &task,
        "version = \"1.0\"\nschema_version = \"1.1\"\n\n[solution]\nenv = { HINT = \"-from-solution-env\" }\n",
        &binary_test("hello-from-solution-env"),
    );
    let r = run_task(&task, "oracle", &[]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    assert_eq!(r.trial()["reward"], 1.0, "solution env reaches solve.sh");
    assert!(
        r.stderr().contains("disagree") && r.stderr().contains("schema_version"),
        "{}",
        r.stderr()
    );
    let r = run_task(&task, "nop", &[]);
    assert_eq!(r.trial()["reward"], 0.0);
}

#[test]
fn every_harbor_026_key_is_known_to_tasks_check() {
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("every-key");
    let toml = r#"
schema_version = "1.4"
source = "https://example.com/tasks"
multi_step_reward_strategy = "mean"
artifacts = ["/app/out.txt", { source = "/app/logs", destination = "logs", exclude = ["*.tmp"], service = "main" }]

[task]
name = "acme/every-key"
version = "0.1.0"
description = "uses every key"
authors = [{ name = "Ada", email = "ada@example.com" }]
keywords = ["demo"]

[metadata]
difficulty = "easy"

[verifier]
timeout_sec = 120.0
env = { MODE = "x" }
user = "root"
network_mode = "public"
environment_mode = "shared"

[agent]
timeout_sec = 300.0
user = "root"
network_mode = "public"

[environment]
build_timeout_sec = 600.0
os = "linux"
cpus = 1
memory_mb = 1024
storage_mb = 2048
gpus = 0
gpu_types = []
network_mode = "public"
env = { A = "b" }
skills_dir = "/skills"
workdir = "/app"
allow_internet = true

[environment.healthcheck]
command = "true"
interval_sec = 5.0
timeout_sec = 30.0
start_period_sec = 0.0
start_interval_sec = 1.0
retries = 3

[[environment.mcp_servers]]
name = "calc"
transport = "streamable-http"
url = "http://mcp:8000/mcp"

[solution]
env = { HINT = "" }
"#;
    write_task(&task, toml, &binary_test("hello"));
    let out = rollout_cmd()
        .args(["tasks", "check", task.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("unknown key"), "{stdout}");
    assert!(
        stdout.contains("1 task(s) ok, 0 error(s), 0 warning(s)"),
        "{stdout}"
    );
    // A real typo is still reported.
    std::fs::write(
        task.join("task.toml"),
        format!("{toml}\n[agent.extra]\n").replace("[agent]\n", "[agent]\ntimeout = 3\n"),
    )
    .unwrap();
    let out = rollout_cmd()
        .args(["tasks", "check", task.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("unknown key `agent.timeout`"), "{stdout}");
}

#[test]
fn keyed_rewards_are_reported_per_key_and_artifacts_are_collected() {
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("keyed");
    write_task(
        &task,
        "artifacts = [\"/app/out.txt\", \"/app/missing.txt\"]\n",
        r#"if [ -f /app/out.txt ]; then echo '{"correctness": 1, "performance": 0.5}' > /logs/verifier/reward.json; else echo '{"correctness": 0, "performance": 0}' > /logs/verifier/reward.json; fi"#,
    );
    let r = run_task(&task, "oracle", &[]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    let stdout = r.stdout();
    assert!(
        stdout.contains("  correctness") && stdout.contains("1.000") && stdout.contains("100.0%"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  performance") && stdout.contains("0.500"),
        "{stdout}"
    );
    let stats = &r.job_result()["stats"];
    assert_eq!(stats["reward_keys"]["correctness"]["mean"], 1.0, "{stats}");
    assert_eq!(stats["reward_keys"]["performance"]["mean"], 0.5, "{stats}");
    assert!(
        stats["mean_reward"].is_null(),
        "no `reward` key: per key only"
    );
    // Artifacts: Harbor's layout, a missing one is a note and listed in the manifest.
    let trial = r.trial();
    let dir = r.trial_dir(trial["trial_name"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(dir.join("artifacts/app/out.txt")).unwrap(),
        "hello\n"
    );
    let manifest = read_json(&dir.join("artifacts/manifest.json"));
    assert_eq!(manifest[0]["status"], "ok", "{manifest}");
    assert!(
        manifest[1]["status"]
            .as_str()
            .unwrap()
            .starts_with("missing"),
        "{manifest}"
    );
    assert!(trial["error"].is_null(), "{trial}");
    r.assert_no_containers();

    // --json carries the per-key stats too; nop scores 0 on every key.
    let r = run_task(&task, "nop", &["--json"]);
    let json: serde_json::Value = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(json["stats"]["reward_keys"]["correctness"]["mean"], 0.0);
    assert_eq!(
        json["stats"]["reward_keys"]["performance"]["pass_rate"],
        0.0
    );
}

#[test]
fn a_gpu_task_on_a_host_without_gpus_is_refused_not_run_on_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("gpu");
    write_task(&task, "[environment]\ngpus = 1\n", &binary_test("hello"));
    let host_has_gpus = Path::new("/dev/nvidiactl").exists();
    assert!(!host_has_gpus, "this test expects a host without GPUs");
    let r = run_task(&task, "oracle", &[]);
    assert_eq!(r.code(), 1, "stderr:\n{}", r.stderr());
    let trial = r.trial();
    assert_eq!(trial["error"]["type"], "environment_unsupported", "{trial}");
    assert!(
        trial["error"]["message"].as_str().unwrap().contains("GPU"),
        "{trial}"
    );
    assert!(trial["environment"]["container_id"].is_null(), "{trial}");
    assert!(trial["reward"].is_null());
    // `rollout preflight` says so.
    let out = rollout_cmd()
        .args(["preflight", "-p", task.to_str().unwrap(), "-a", "oracle"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("GPU"), "{stdout}");
}

#[test]
fn unsupported_harbor_keys_refuse_the_trials() {
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("windows");
    write_task(
        &task,
        "[environment]\nos = \"windows\"\n",
        &binary_test("hello"),
    );
    let r = run_task(&task, "oracle", &["--no-preflight"]);
    assert_eq!(r.code(), 1, "stderr:\n{}", r.stderr());
    let trial = r.trial();
    assert_eq!(trial["error"]["type"], "environment_unsupported", "{trial}");
    let msg = trial["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("task.toml:2") && msg.contains("environment.os"),
        "{msg}"
    );
}

#[test]
fn a_script_metric_of_the_job_file_lands_in_the_job_result() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("keyed");
    write_task(
        &task,
        "",
        r#"if [ -f /app/out.txt ]; then echo '{"correctness": 1, "performance": 0.5}' > /logs/verifier/reward.json; else echo '{"correctness": 0, "performance": 0}' > /logs/verifier/reward.json; fi"#,
    );
    // The job file of Harbor's multi-reward recipe, with a script path relative to where the
    // job runs.
    std::fs::create_dir_all(tmp.path().join("metrics")).unwrap();
    std::fs::write(
        tmp.path().join("metrics/per_key.py"),
        "import argparse, json\np = argparse.ArgumentParser()\np.add_argument('-i')\np.add_argument('-o')\na = p.parse_args()\nrows = [json.loads(l) for l in open(a.i)]\nkeys = sorted({k for r in rows if r for k in r})\njson.dump({'mean_' + k: sum((r or {}).get(k, 0) for r in rows) / len(rows) for k in keys}, open(a.o, 'w'))\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("config.yaml"),
        "metrics:\n  - type: uv-script\n    kwargs:\n      script_path: metrics/per_key.py\n",
    )
    .unwrap();
    let out = rollout_cmd()
        .current_dir(tmp.path())
        .args(["run", "config.yaml", "-p", "keyed", "-a", "oracle"])
        .args(["-o", "jobs", "--job-name", "job"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("metrics: mean_correctness 1.000  mean_performance 0.500"),
        "{stdout}"
    );
    let result = read_json(&tmp.path().join("jobs/job/result.json"));
    assert_eq!(
        result["stats"]["metrics"]["mean_correctness"], 1.0,
        "{result}"
    );
    assert_eq!(
        result["stats"]["metrics"]["mean_performance"], 0.5,
        "{result}"
    );
}
