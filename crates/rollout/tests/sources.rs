//! Task sources end to end through the CLI: registries over local git repositories, executor
//! archives, JSONL rows, filters and sampling, `tasks init`.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A git repository holding `tasks` copied from the examples, committed; returns (repo, commit).
fn repo_with(root: &Path, name: &str, tasks: &[(&str, PathBuf)]) -> (PathBuf, String) {
    let repo = root.join(name);
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    for (dest, src) in tasks {
        let status = Command::new("cp")
            .args([
                "-r",
                src.to_str().unwrap(),
                repo.join(dest).to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "tasks"]);
    let commit = git(&repo, &["rev-parse", "HEAD"]);
    (repo, commit)
}

fn rollout_in(cache: &Path) -> Command {
    let mut c = rollout_cmd();
    c.env("ROLLOUT_CACHE_DIR", cache);
    c
}

#[test]
fn registry_datasets_clone_once_and_run_offline_the_second_time() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let smoke = example("datasets/smoke");
    let (repo_a, commit_a) = repo_with(
        tmp.path(),
        "repo-a",
        &[
            ("hello", example("hello-world")),
            ("checksum", smoke.join("checksum")),
        ],
    );
    let (repo_b, commit_b) = repo_with(
        tmp.path(),
        "repo-b",
        &[("sort-names", smoke.join("sort-names"))],
    );
    let registry = tmp.path().join("registry.json");
    let url = |p: &Path| format!("file://{}", p.display());
    std::fs::write(
        &registry,
        serde_json::json!([
            {"name": "alpha", "version": "1.0", "description": "two tasks", "tasks": [
                {"name": "hello", "git_url": url(&repo_a), "git_commit_id": commit_a, "path": "hello"},
                {"name": "checksum", "git_url": url(&repo_a), "git_commit_id": commit_a, "path": "checksum"}]},
            {"name": "beta", "version": "2.0", "description": "one task", "tasks": [
                {"name": "sort-names", "git_url": url(&repo_b), "git_commit_id": commit_b, "path": "sort-names"}]}
        ])
        .to_string(),
    )
    .unwrap();
    let list = rollout_in(&cache)
        .args(["datasets", "list", "--registry", registry.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("alpha") && text.contains("beta") && text.contains("2.0"),
        "{text}"
    );

    let run = |name: &str| {
        rollout_in(&cache)
            .args([
                "run",
                "-d",
                "alpha@1.0",
                "-d",
                "beta",
                "--registry",
                registry.to_str().unwrap(),
                "-a",
                "oracle",
            ])
            .args([
                "-o",
                tmp.path().join("jobs").to_str().unwrap(),
                "--job-name",
                name,
            ])
            .output()
            .unwrap()
    };
    let first = run("first");
    assert_eq!(
        first.status.code(),
        Some(0),
        "stderr:\n{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // Offline second run: the source repositories are gone, the cache must serve everything.
    std::fs::rename(&repo_a, tmp.path().join("gone-a")).unwrap();
    std::fs::rename(&repo_b, tmp.path().join("gone-b")).unwrap();
    let second = run("second");
    assert_eq!(
        second.status.code(),
        Some(0),
        "stderr:\n{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let result = read_json(&tmp.path().join("jobs/second/result.json"));
    assert_eq!(result["stats"]["n_trials"], 3);
    assert_eq!(result["stats"]["mean_reward"], 1.0);
    assert_eq!(result["by_dataset"]["alpha"]["n_trials"], 2);
    assert_eq!(result["by_dataset"]["beta"]["n_trials"], 1);
    let ls = rollout_in(&cache).args(["cache", "ls"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains("git: 2 checkout(s)"),
        "{}",
        String::from_utf8_lossy(&ls.stdout)
    );
}

/// Write an executor archive with two tasks over one repository: `solvable` (the agent's file
/// makes its checks pass) and `unsolvable` (a check that cannot pass).
fn executor_archive(root: &Path) -> PathBuf {
    let src = root.join("archive-src");
    let repo = root.join("proj");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("README.md"), "project\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "init"]);
    let commit = git(&repo, &["rev-parse", "HEAD"]);
    for (id, checks) in [("solvable", true), ("unsolvable", false)] {
        let t = src.join("tasks").join(id);
        std::fs::create_dir_all(t.join("tests/data")).unwrap();
        std::fs::write(t.join("workspace.yaml"), format!("repo: file://{}\nversion: \"1\"\nbase_commit: {commit}\ninstall:\n  - echo installed > /repo/.installed\nlanguage: bash\n", repo.display())).unwrap();
        std::fs::write(
            t.join("prompt.md"),
            "Create solved.txt in the repository.\n",
        )
        .unwrap();
        std::fs::write(t.join("tests/data/expected.txt"), "solved\n").unwrap();
        std::fs::write(
            t.join("tests/test_installed.sh"),
            "test -f /repo/.installed\n",
        )
        .unwrap();
        if checks {
            std::fs::write(
                t.join("tests/test_solved.sh"),
                "diff solved.txt data/expected.txt\n",
            )
            .unwrap();
        } else {
            std::fs::write(
                t.join("tests/test_impossible.sh"),
                "grep -q impossible README.md\n",
            )
            .unwrap();
        }
    }
    std::fs::create_dir_all(src.join("agent_code")).unwrap();
    std::fs::write(
        src.join("agent_code/agent.sh"),
        "test -f \"$TASK_PROMPT\" && cd \"$REPO_DIR\" && git rev-parse HEAD >/dev/null && echo solved > solved.txt\n",
    )
    .unwrap();
    let archive = root.join("batch.tar.gz");
    let status = Command::new("tar")
        .args([
            "czf",
            archive.to_str().unwrap(),
            "-C",
            src.to_str().unwrap(),
            "tasks",
            "agent_code",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    archive
}

#[test]
fn executor_archive_runs_each_task_with_its_agent_code() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let archive = executor_archive(tmp.path());
    let out = rollout_in(&cache)
        .args([
            "run",
            "--archive",
            archive.to_str().unwrap(),
            "-o",
            tmp.path().join("jobs").to_str().unwrap(),
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
    let job = tmp.path().join("jobs/j");
    let agent = std::fs::read_dir(&job)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("solvable__"))
        .unwrap()
        .path();
    let solved = read_json(&agent.join("result.json"));
    assert_eq!(solved["reward"], 1.0, "{solved}");
    assert_eq!(solved["rewards"]["checks_total"], 2.0);
    let other = std::fs::read_dir(&job)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("unsolvable__"))
        .unwrap()
        .path();
    let failed = read_json(&other.join("result.json"));
    assert_eq!(failed["reward"], 0.0, "{failed}");
    assert_eq!(failed["rewards"]["checks_passed"], 1.0);
    assert!(failed["error"].is_null());
    assert!(solved["agent"]["name"]
        .as_str()
        .unwrap()
        .starts_with("code:"));
}

#[test]
fn hostile_archive_is_rejected_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("evil.tar.gz");
    let script = format!(
        "import tarfile, io\nt = tarfile.open('{}', 'w:gz')\ndata = b'x'\ni = tarfile.TarInfo('../../escaped.txt'); i.size = len(data); t.addfile(i, io.BytesIO(data))\nt.close()\n",
        archive.display()
    );
    assert!(Command::new("python3")
        .args(["-c", &script])
        .status()
        .unwrap()
        .success());
    let out = rollout_in(&tmp.path().join("cache"))
        .args([
            "run",
            "--archive",
            archive.to_str().unwrap(),
            "-o",
            tmp.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("escaped.txt"), "{err}");
    assert!(!tmp.path().parent().unwrap().join("escaped.txt").exists());
}

#[test]
fn jsonl_rows_run_and_a_bad_row_is_reported_exactly() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let rows = tmp.path().join("rows.jsonl");
    std::fs::write(
        &rows,
        [
            r#"{"schema_version": "task_boundary_v2", "task": {"id": "make-file", "image": "debian:bookworm-slim", "instruction": "Create /tmp/done.", "grader": "test -f /tmp/done"}}"#,
            r#"{"schema_version": "task_boundary_v2", "task": {"id": "other", "image": "debian:bookworm-slim", "instruction": "Nothing to do.", "grader": "false"}}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let job = tmp.path().join("job.yaml");
    std::fs::write(
        &job,
        format!(
            "datasets: [{{path: {}}}]\nagents:\n  - name: toucher\n    execute: touch /tmp/done\n",
            rows.display()
        ),
    )
    .unwrap();
    let out = rollout_in(&tmp.path().join("cache"))
        .args([
            "run",
            job.to_str().unwrap(),
            "-o",
            tmp.path().to_str().unwrap(),
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
    let result = read_json(&tmp.path().join("j/result.json"));
    assert_eq!(result["trials"]["make-file__toucher__1"], 1.0);
    assert_eq!(result["trials"]["other__toucher__1"], 0.0);

    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"schema_version\": \"task_boundary_v2\", \"task\": {\"id\": \"a\", \"image\": \"\"}}\n",
    )
    .unwrap();
    let out = rollout_in(&tmp.path().join("cache"))
        .args(["run", "-p", bad.to_str().unwrap(), "-a", "nop"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.jsonl:1") && err.contains("task.image"),
        "{err}"
    );
}

#[test]
fn tasks_init_scaffolds_a_task_that_checks_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let out = rollout_cmd()
        .args([
            "tasks",
            "init",
            "my-task",
            "--dir",
            tmp.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let check = rollout_cmd()
        .args([
            "tasks",
            "check",
            tmp.path().join("my-task").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let again = rollout_cmd()
        .args([
            "tasks",
            "init",
            "my-task",
            "--dir",
            tmp.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(2),
        "an existing task is never overwritten"
    );
}

#[test]
fn shuffle_with_a_seed_samples_reproducibly() {
    require_docker();
    let smoke = example("datasets/smoke");
    let pick = |seed: &str| {
        let r = run(&[
            "-p",
            smoke.to_str().unwrap(),
            "-a",
            "nop",
            "--shuffle",
            "--seed",
            seed,
            "-l",
            "2",
            "-n",
            "2",
        ]);
        assert_eq!(r.code(), 0, "{}", r.stderr());
        let cfg = read_json(&r.job_dir.join("config.json"));
        assert_eq!(cfg["shuffle_seed"].as_u64(), Some(seed.parse().unwrap()));
        r.trials()
            .iter()
            .map(|t| t["task_name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let a = pick("11");
    assert_eq!(a.len(), 2);
    assert_eq!(a, pick("11"), "the same seed picks the same tasks");
}
