//! Snapshots of what the CLI prints where no container is needed: the help of the main
//! commands, the errors for a missing task directory, an invalid task.toml, a bad job file and
//! an unreachable engine, and `rollout jobs show`/`list` of a finished job (made in-process by
//! the runner over the fake provider). Every command runs with `DOCKER_HOST` pointing nowhere,
//! so none of this depends on Docker. Volatile parts (temp paths, ids, times, durations) are
//! redacted before the snapshot.

mod common;

use common::rollout_cmd;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

/// The CLI, with no engine reachable and the store off.
fn cli(dir: &Path) -> Command {
    let mut c = rollout_cmd();
    c.current_dir(dir)
        .env("DOCKER_HOST", "unix:///nonexistent")
        .env("ROLLOUT_STORE", "off")
        .env("NO_COLOR", "1")
        .env("COLUMNS", "100")
        .env_remove("KUBECONFIG");
    c
}

/// `rollout ARGS` in `dir`: exit code, stdout and stderr as one redacted text.
fn run_in(dir: &Path, args: &[&str]) -> String {
    let out = cli(dir).args(args).output().unwrap();
    let text = format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        out.status.code().map_or("signal".into(), |c| c.to_string()),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    redact(&text, dir)
}

/// Temp paths, uuids, timestamps, durations and versions out of `text`.
fn redact(text: &str, dir: &Path) -> String {
    let mut t = text.to_string();
    if let Ok(c) = dir.canonicalize() {
        t = t.replace(&c.display().to_string(), "[TMP]");
    }
    t = t.replace(&dir.display().to_string(), "[TMP]");
    let rules = [
        (
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "[ID]",
        ),
        (
            r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})?( UTC)?",
            "[TIME]",
        ),
        (r"\b\d+(\.\d+)?\s?(ms|s|m|h)\b", "[DURATION]"),
        (r"\bpid \d+ on \S+", "pid [PID] on [HOST]"),
    ];
    for (re, with) in rules {
        t = regex::Regex::new(re)
            .unwrap()
            .replace_all(&t, with)
            .into_owned();
    }
    t
}

#[test]
fn help_of_the_main_commands() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, args) in [
        ("help_main", vec!["--help"]),
        ("help_run", vec!["run", "--help"]),
        ("help_jobs", vec!["jobs", "--help"]),
        ("help_tasks", vec!["tasks", "--help"]),
        ("help_gc", vec!["gc", "--help"]),
        ("help_prov", vec!["prov", "--help"]),
    ] {
        let text = run_in(tmp.path(), &args);
        assert!(text.starts_with("exit: 0\n"), "{text}");
        insta::assert_snapshot!(name, text);
    }
}

#[test]
fn a_missing_task_directory_is_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let text = run_in(tmp.path(), &["run", "-p", "./nope"]);
    assert!(text.starts_with("exit: 2\n"), "{text}");
    insta::assert_snapshot!(text);
}

#[test]
fn an_invalid_task_toml_is_named_with_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(bad.join("tests")).unwrap();
    std::fs::write(bad.join("instruction.md"), "x").unwrap();
    std::fs::write(bad.join("tests/test.sh"), "true").unwrap();
    std::fs::write(
        bad.join("task.toml"),
        "version = \"1.0\"\n[agent]\ntimeout_sec = \"ten\"\n",
    )
    .unwrap();
    let text = run_in(tmp.path(), &["run", "-p", "bad", "-o", "jobs"]);
    assert!(text.contains("task.toml:3:"), "{text}");
    insta::assert_snapshot!(text);
}

#[test]
fn a_bad_job_file_is_a_usage_error_naming_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("job.yaml"),
        "tasks:\n  - path: x\nn_concurent_trials: 2\n",
    )
    .unwrap();
    let text = run_in(tmp.path(), &["run", "job.yaml"]);
    assert!(text.starts_with("exit: 2\n"), "{text}");
    insta::assert_snapshot!(text);
}

#[test]
fn gc_without_an_engine_says_how_to_reach_one() {
    let tmp = tempfile::tempdir().unwrap();
    let text = run_in(tmp.path(), &["gc", "--dry-run"]);
    assert!(!text.starts_with("exit: 0\n"), "{text}");
    insta::assert_snapshot!(text);
}

/// A finished job in `<dir>/jobs/done`: two tasks run by a command agent over the fake
/// provider, one solved, one whose verifier wrote no reward.
fn finished_job(dir: &Path) -> std::path::PathBuf {
    use rollout_env::testing::{Act, FakeProvider};
    for name in ["solved", "unsolved"] {
        let d = dir.join("tasks").join(name);
        std::fs::create_dir_all(d.join("tests")).unwrap();
        std::fs::create_dir_all(d.join("environment")).unwrap();
        std::fs::write(d.join("instruction.md"), "Do it.\n").unwrap();
        std::fs::write(d.join("tests/test.sh"), "true\n").unwrap();
        std::fs::write(d.join("environment/Dockerfile"), "FROM x\n").unwrap();
    }
    let tasks = ["solved", "unsolved"]
        .iter()
        .map(|n| rollout_core::Task::load(&dir.join("tasks").join(n)).unwrap())
        .collect();
    let mut config = rollout_core::JobConfig::parse(
        // One trial at a time: the fake's verifier acts are consumed in order, so the
        // first task (solved) must verify first for the snapshot to be stable.
        "n_concurrent_trials: 1\nagents:\n  - name: worker\n    execute: work\n",
        Path::new("job.yaml"),
    )
    .unwrap();
    config.jobs_dir = Some(dir.join("jobs"));
    config.name = Some("done".into());
    let plan = rollout_runner::JobPlan::new(config, tasks).unwrap();
    let fake = FakeProvider::new();
    fake.verifier([Act::reward_txt("1"), Act::exit(1)]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = rollout_runner::Runner::new(
        Arc::new(fake.clone()),
        tokio_util::sync::CancellationToken::new(),
        rollout_runner::RunOptions::default(),
    );
    let writer = Arc::new(rollout_runner::writer::ResultsWriter::new());
    runner.subscribe(writer.clone());
    let job = rt.block_on(runner.run(plan));
    assert_eq!(job.trials.len(), 2);
    assert_eq!(writer.error(), None);
    assert!(fake.ledger().leaked().is_empty());
    dir.join("jobs/done")
}

#[test]
fn jobs_show_and_list_summarise_a_finished_job() {
    let tmp = tempfile::tempdir().unwrap();
    let job = finished_job(tmp.path());
    let show = run_in(tmp.path(), &["jobs", "show", job.to_str().unwrap()]);
    assert!(show.starts_with("exit: 0\n"), "{show}");
    insta::assert_snapshot!("jobs_show", show);
    let list = run_in(tmp.path(), &["jobs", "list", "-o", "jobs"]);
    assert!(list.starts_with("exit: 0\n"), "{list}");
    insta::assert_snapshot!("jobs_list", list);
}
