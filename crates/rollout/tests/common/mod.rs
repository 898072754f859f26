//! Shared helpers for the CLI tests that run against the real Docker engine.
//!
//! They need a running engine and the local `debian:bookworm-slim` image (`scripts/setup`
//! provides both). Without them the tests fail loudly: they never skip.

#![allow(dead_code)]

pub mod agent_task;
pub mod compose_task;
pub mod fake_llm;
pub mod serve;
pub mod steps_task;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/tasks").join(name)
}

pub fn example(rel: &str) -> PathBuf {
    repo().join("examples").join(rel)
}

/// Panics with a clear message when the engine or the base image is missing.
pub fn require_docker() {
    let ok = Command::new("docker")
        .args(["image", "inspect", "debian:bookworm-slim"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "these tests need a running Docker engine and the local image debian:bookworm-slim: run scripts/setup"
    );
}

/// A job run by the CLI.
pub struct Run {
    pub output: Output,
    pub job_dir: PathBuf,
    pub _tmp: tempfile::TempDir,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn job_result(&self) -> Value {
        read_json(&self.job_dir.join("result.json"))
    }

    /// Every trial's result.json, sorted by trial name.
    pub fn trials(&self) -> Vec<Value> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&self.job_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("result.json").is_file())
            .collect();
        dirs.sort();
        dirs.iter()
            .map(|d| read_json(&d.join("result.json")))
            .collect()
    }

    /// The only trial's result.
    pub fn trial(&self) -> Value {
        let t = self.trials();
        assert_eq!(t.len(), 1, "expected one trial; stderr:\n{}", self.stderr());
        t.into_iter().next().unwrap()
    }

    pub fn trial_dir(&self, name: &str) -> PathBuf {
        self.job_dir.join(name)
    }

    /// Fail if any container of this job is still there.
    pub fn assert_no_containers(&self) {
        let id = self.job_result()["id"].as_str().unwrap().to_string();
        assert_no_containers(&id);
    }
}

pub fn assert_no_containers(job_id: &str) {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.rollout.job={job_id}"),
        ])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        left.is_empty(),
        "containers of job {job_id} left behind: {left}"
    );
}

/// Wait (bounded) until `cond` holds; fails the test naming `what` at the deadline.
pub fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The rollout binary. Its provenance store is a shared file under the temporary directory, so
/// that tests record trials (as users' runs do) without writing into the repository; tests of
/// the store itself set `ROLLOUT_STORE` to their own file.
pub fn rollout_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rollout"));
    c.env(
        "ROLLOUT_STORE",
        std::env::temp_dir()
            .join("rollout-tests")
            .join("rollout.db"),
    );
    c
}

/// `rollout run ARGS -o <tmp> --job-name job`; the job directory is `<tmp>/job`.
pub fn run(args: &[&str]) -> Run {
    run_with(rollout_cmd(), args)
}

/// As [`run`], with `cmd` (a [`rollout_cmd`] whose environment the caller set).
pub fn run_with(mut cmd: Command, args: &[&str]) -> Run {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let output = cmd
        .arg("run")
        .args(args)
        .args(["-o", tmp.path().to_str().unwrap(), "--job-name", "job"])
        .output()
        .unwrap();
    Run {
        output,
        job_dir: tmp.path().join("job"),
        _tmp: tmp,
    }
}

/// `rollout run -p PATH -a AGENT` plus extra args.
pub fn run_task(path: &Path, agent: &str, extra: &[&str]) -> Run {
    let mut args = vec!["-p", path.to_str().unwrap(), "-a", agent];
    args.extend_from_slice(extra);
    run(&args)
}

/// `git ARGS` in `dir` as a fixed test identity and date (so that commits are reproducible);
/// its trimmed stdout (fails the test on an error).
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A git repository at `dir` with one commit (a README), for executor archives and registries
/// to check out: (its path, the commit id).
pub fn git_repo(dir: &Path) -> (PathBuf, String) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q"]);
    std::fs::write(dir.join("README.md"), "project\n").unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "init"]);
    (dir.to_path_buf(), git(dir, &["rev-parse", "HEAD"]))
}
