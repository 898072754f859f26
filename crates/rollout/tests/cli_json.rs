//! The `--json` shapes of docs/cli-json.md (`tasks check`, `datasets list`, `cache ls`, `gc`)
//! and `rollout schema` (the committed docs/schemas/ copies are what it prints). Each output is
//! exactly one JSON document on stdout, with the same exit status as the text output.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Output;

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

#[test]
fn tasks_check_json_lists_every_task_with_its_findings() {
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("instruction.md"), "do it\n").unwrap();
    std::fs::write(broken.join("task.toml"), "[agent]\ntimeout_sec = 10\n").unwrap();
    let good = example("hello-world");
    let out = rollout_cmd()
        .args(["tasks", "check", "--json"])
        .arg(&good)
        .arg(&broken)
        .arg(tmp.path().join("missing"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "an error anywhere exits 1");
    let v = json_of(&out);
    assert_eq!(
        keys(&v),
        [
            "load_errors",
            "n_errors",
            "n_ok",
            "n_warnings",
            "ok",
            "tasks"
        ]
    );
    assert_eq!(v["ok"], false);
    assert_eq!(v["n_ok"], 1);
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2, "{v:#}");
    assert_eq!(keys(&tasks[0]), ["dir", "findings", "name", "ok"]);
    assert_eq!(tasks[0]["name"], "hello-world");
    assert_eq!(tasks[0]["ok"], true);
    assert_eq!(tasks[1]["name"], "broken");
    assert_eq!(tasks[1]["ok"], false);
    let f = &tasks[1]["findings"][0];
    assert_eq!(keys(f), ["message", "path", "severity"]);
    assert_eq!(f["severity"], "error");
    // The missing path is a load error, counted once.
    let load = v["load_errors"].as_array().unwrap();
    assert_eq!(load.len(), 1);
    assert!(load[0].as_str().unwrap().contains("missing"), "{load:?}");
    let errors_in_findings: usize = tasks
        .iter()
        .flat_map(|t| t["findings"].as_array().unwrap())
        .filter(|f| f["severity"] == "error")
        .count();
    assert_eq!(v["n_errors"], json!(errors_in_findings + 1));

    let ok = rollout_cmd()
        .args(["tasks", "check", "--json"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0));
    assert_eq!(json_of(&ok)["ok"], true);
}

#[test]
fn datasets_list_json_gives_each_dataset_and_its_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = tmp.path().join("registry.json");
    let reg = json!([
        {"name": "alpha", "version": "1.0", "description": "two tasks", "tasks": [
            {"name": "a", "git_url": "https://example.com/r.git", "git_commit_id": "abc", "path": "a"},
            {"name": "b", "git_url": "https://example.com/r.git", "git_commit_id": "abc", "path": "b"}]},
        {"name": "beta", "version": "2.0", "tasks": []}
    ]);
    std::fs::write(&registry, reg.to_string()).unwrap();
    let out = rollout_cmd()
        .args(["datasets", "list", "--json", "--registry"])
        .arg(&registry)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v = json_of(&out);
    assert_eq!(keys(&v), ["datasets", "registry"]);
    let d = v["datasets"].as_array().unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(
        keys(&d[0]),
        [
            "description",
            "metrics",
            "n_tasks",
            "name",
            "tasks",
            "version"
        ]
    );
    assert_eq!(d[0]["name"], "alpha");
    assert_eq!(d[0]["n_tasks"], 2);
    assert_eq!(d[0]["tasks"][1]["path"], "b");
    assert_eq!(d[1]["n_tasks"], 0);
    assert_eq!(d[1]["description"], "");
}

#[test]
fn cache_ls_json_gives_the_root_the_git_trees_and_the_other_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    std::fs::create_dir_all(cache.join("archives/one")).unwrap();
    std::fs::write(cache.join("archives/one/f"), vec![0u8; 1000]).unwrap();
    let out = rollout_cmd()
        .args(["cache", "ls", "--json"])
        .env("ROLLOUT_CACHE_DIR", &cache)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v = json_of(&out);
    assert_eq!(keys(&v), ["dirs", "git", "root"]);
    assert_eq!(v["root"], json!(cache));
    assert_eq!(v["git"], json!([]));
    let dirs = v["dirs"].as_array().unwrap();
    let names: Vec<&str> = dirs.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["archives", "jsonl", "code-agents"]);
    assert_eq!(keys(&dirs[0]), ["bytes", "dir", "entries", "name"]);
    assert_eq!(dirs[0]["entries"], 1);
    assert_eq!(dirs[0]["bytes"], 1000);
    assert_eq!(dirs[1]["entries"], 0);
}

#[test]
fn gc_dry_run_json_lists_items_without_removing_them() {
    require_docker();
    let out = rollout_cmd()
        .args(["gc", "--dry-run", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v = json_of(&out);
    assert_eq!(
        keys(&v),
        ["dry_run", "env", "items", "n_failed", "namespace"]
    );
    assert_eq!(v["env"], "docker");
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["namespace"], Value::Null);
    assert_eq!(v["n_failed"], 0);
    for i in v["items"].as_array().unwrap() {
        assert_eq!(
            keys(i),
            ["error", "id", "job", "kind", "name", "reason", "removed"]
        );
        assert_eq!(i["removed"], false, "a dry run removed {i}");
    }
}

#[test]
fn schema_prints_the_committed_schemas() {
    for (name, file) in [
        ("job", "job.schema.json"),
        ("task", "task.schema.json"),
        ("result", "result.schema.json"),
        ("job-result", "job-result.schema.json"),
    ] {
        let out = rollout_cmd().args(["schema", name]).output().unwrap();
        assert!(out.status.success());
        let committed = std::fs::read(repo().join("docs/schemas").join(file)).unwrap();
        assert!(
            out.stdout == committed,
            "docs/schemas/{file} differs from `rollout schema {name}`: regenerate with\n  \
             for s in job task result job-result; do cargo run -q -p rollout -- schema $s > docs/schemas/$s.schema.json; done"
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["$schema"], "https://json-schema.org/draft/2020-12/schema");
    }
    let bad = rollout_cmd().args(["schema", "nope"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(Path::new(&repo().join("docs/cli-json.md")).is_file());
}
