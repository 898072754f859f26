//! Reading job directories back: `rollout jobs show|diff|export` on a job written by rollout
//! before result schema 2.0 (tests/fixtures/results/v1-job), and the generated completions and
//! man page. No Docker needed.

mod common;

use common::*;
use serde_json::Value;

fn v1_job() -> std::path::PathBuf {
    repo().join("tests/fixtures/results/v1-job")
}

fn rollout(args: &[&str]) -> std::process::Output {
    rollout_cmd().args(args).output().unwrap()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn jobs_show_reads_a_job_written_before_schema_2() {
    let job = v1_job();
    let o = rollout(&["jobs", "show", job.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let text = stdout(&o);
    assert!(text.contains("hello-world__oracle__1"), "{text}");
    assert!(
        text.contains("1 trial(s) failed:") && text.contains("verifier_reward_missing"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{}/hello-world__nop__1/trial.log", job.display())),
        "the failure names its log: {text}"
    );

    let o = rollout(&["jobs", "show", job.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["trials"].as_array().unwrap().len(), 2);
    assert_eq!(v["result"]["stats"]["n_errored"], 1);
    assert!(v["unreadable"].as_array().unwrap().is_empty());
}

#[test]
fn jobs_diff_compares_rewards_per_task() {
    let tmp = tempfile::tempdir().unwrap();
    // B: the same job where the nop trial now scores 1.
    let b = tmp.path().join("b");
    std::fs::create_dir_all(b.join("hello-world__nop__1")).unwrap();
    std::fs::copy(v1_job().join("config.json"), b.join("config.json")).unwrap();
    let mut nop = read_json(&v1_job().join("hello-world__nop__1/result.json"));
    nop["error"] = Value::Null;
    nop["reward"] = 1.0.into();
    nop["rewards"] = serde_json::json!({"reward": 1.0});
    std::fs::write(
        b.join("hello-world__nop__1/result.json"),
        serde_json::to_vec(&nop).unwrap(),
    )
    .unwrap();
    let o = rollout(&[
        "jobs",
        "diff",
        v1_job().to_str().unwrap(),
        b.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{o:?}");
    let d: Value = serde_json::from_slice(&o.stdout).unwrap();
    let tasks = d["tasks"].as_array().unwrap();
    let nop = tasks.iter().find(|t| t["agent"] == "nop").unwrap();
    assert_eq!(nop["reward_a"], 0.0);
    assert_eq!(nop["reward_b"], 1.0);
    assert_eq!(nop["change"], 1.0);
    let oracle = tasks.iter().find(|t| t["agent"] == "oracle").unwrap();
    assert!(oracle["reward_b"].is_null(), "B has no oracle trial");
    assert_eq!(d["pass_rate_a"], 0.5);
    assert_eq!(d["pass_rate_b"], 1.0);
    let o = rollout(&[
        "jobs",
        "diff",
        v1_job().to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert!(stdout(&o).contains("+50.0 pts"), "{}", stdout(&o));
}

#[test]
fn jobs_export_writes_csv_jsonl_and_junit() {
    let job = v1_job();
    let job = job.to_str().unwrap();
    let csv = stdout(&rollout(&["jobs", "export", job, "--format", "csv"]));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].starts_with("trial_name,task_name,agent"));
    let jsonl = stdout(&rollout(&["jobs", "export", job, "--format", "jsonl"]));
    for line in jsonl.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["task_name"], "hello-world");
        assert_eq!(v["schema_version"], 1, "exported with Harbor's fields");
    }
    let junit = stdout(&rollout(&["jobs", "export", job, "--format", "junit"]));
    assert!(
        junit.contains(r#"tests="2" failures="0" errors="1""#),
        "{junit}"
    );
    let bad = rollout(&["jobs", "export", job, "--format", "xml"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn completions_and_man_page_come_from_the_cli_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let o = rollout(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {o:?}");
        let text = stdout(&o);
        assert!(
            text.contains("rollout") && text.contains("export"),
            "{shell} completions name the subcommands"
        );
    }
    let o = rollout(&["man"]);
    assert!(o.status.success());
    let man = stdout(&o);
    assert!(
        man.starts_with(".ie") || man.contains(".TH rollout"),
        "{man}"
    );
}
