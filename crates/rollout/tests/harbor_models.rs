//! rollout's job directories read by Harbor's own models (harbor==0.26.0, pydantic): every
//! trial `result.json` validates as Harbor's `TrialResult`, the job's as `JobResult` (and its
//! Harbor stats equal what Harbor computes from the trials), every `trajectory.json` as the
//! ATIF `Trajectory`.
//!
//! Harbor needs Python ≥ 3.12; the validator runs in an image built FROM the local
//! `debian:bookworm-slim` switched to Debian trixie (Python 3.13) with `pip install
//! harbor==0.26.0` in a venv (tests/harbor/Dockerfile). The image is tagged by a hash of its
//! build context (Dockerfile, validate.py, the proxy CA certificates), so it is built once and
//! reused; it is labelled `io.rollout.test=harbor-models`. Needs the Docker engine and the
//! package registries (Debian, PyPI) for the first build: without them the test fails loudly.

mod common;

use common::fake_llm::{final_answer, serve, tool_call, Script};
use common::steps_task::three_step_task;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

const LABEL: &str = "io.rollout.test=harbor-models";

/// The validator image, built when no image of this content's tag exists.
fn validator_image() -> String {
    require_docker();
    let src = repo().join("tests/harbor");
    let ctx = tempfile::tempdir().unwrap();
    let mut hasher = blake3::Hasher::new();
    for f in ["Dockerfile", "validate.py"] {
        let bytes = std::fs::read(src.join(f)).unwrap();
        hasher.update(f.as_bytes());
        hasher.update(&bytes);
        std::fs::write(ctx.path().join(f), bytes).unwrap();
    }
    let ca = ctx.path().join("ca");
    std::fs::create_dir(&ca).unwrap();
    let mut certs: Vec<PathBuf> = std::fs::read_dir("/usr/local/share/ca-certificates")
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    certs.sort();
    for c in certs
        .iter()
        .filter(|c| c.extension().is_some_and(|e| e == "crt"))
    {
        let bytes = std::fs::read(c).unwrap();
        hasher.update(&bytes);
        std::fs::write(ca.join(c.file_name().unwrap()), bytes).unwrap();
    }
    let tag = format!(
        "rollout-test-harbor:{}",
        &hasher.finalize().to_hex().as_str()[..16]
    );
    let present = Command::new("docker")
        .args(["image", "inspect", &tag])
        .output()
        .unwrap()
        .status
        .success();
    if !present {
        let out = Command::new("timeout")
            .args(["1800", "docker", "build", "--label", LABEL, "-t", &tag])
            .arg(ctx.path())
            .output()
            .expect("running docker build");
        assert!(
            out.status.success(),
            "building the Harbor validator image {tag} failed (it needs deb.debian.org and PyPI):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    tag
}

/// Validate `job_dir` with Harbor's models; the validator's report (fails the test on any error).
fn validate(image: &str, job_dir: &Path) -> Value {
    let out = Command::new("timeout")
        .args([
            "300",
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--label",
            LABEL,
        ])
        .arg("-v")
        .arg(format!(
            "{}:/job:ro",
            job_dir.canonicalize().unwrap().display()
        ))
        .args([image, "/job"])
        .output()
        .expect("running the validator");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "the validator printed no report ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && report["errors"].as_array().is_some_and(|e| e.is_empty()),
        "Harbor's models rejected {}:\n{report:#}",
        job_dir.display()
    );
    assert!(report["job"].is_string(), "{report:#}");
    report
}

fn trial<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["trials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["trial_name"] == name)
        .unwrap_or_else(|| panic!("no trial {name} in {report:#}"))
}

#[test]
fn harbor_models_accept_every_result_and_trajectory() {
    let image = validator_image();

    // oracle, nop and the built-in agent on one task, the agent against a scripted model.
    let script = Script::default();
    *script.replies.lock().unwrap() = vec![
        (
            200,
            tool_call("call-1", "printf 'Hello, world!' > /app/hello.txt"),
        ),
        (200, final_answer("Created /app/hello.txt.")),
    ];
    let url = serve(script);
    let tmp = tempfile::tempdir().unwrap();
    let out = rollout_cmd()
        .env("OPENAI_BASE_URL", &url)
        .env("OPENAI_API_KEY", "test-key")
        .args(["run", "-p", example("hello-world").to_str().unwrap()])
        .args([
            "-a",
            "oracle",
            "-a",
            "nop",
            "-a",
            "rollout-agent",
            "-m",
            "fake-model",
        ])
        .args(["-o", tmp.path().to_str().unwrap(), "--job-name", "job"])
        .output()
        .unwrap();
    let job = tmp.path().join("job");
    let rollout_job = read_json(&job.join("result.json"));
    assert_eq!(rollout_job["rollout_schema_version"], "2.0");
    let report = validate(&image, &job);
    assert_eq!(
        report["trials"].as_array().unwrap().len(),
        3,
        "stderr:\n{}\n{report:#}",
        String::from_utf8_lossy(&out.stderr)
    );
    let oracle = trial(&report, "hello-world__oracle__1");
    assert_eq!(oracle["reward_valid"], true);
    assert_eq!(oracle["rewards"], json!({"reward": 1.0}));
    let nop = trial(&report, "hello-world__nop__1");
    assert_eq!(nop["rewards"], json!({"reward": 0.0}));
    let agent = trial(&report, "hello-world__rollout-agent__1");
    assert_eq!(agent["rewards"], json!({"reward": 1.0}));
    assert_eq!(agent["n_input_tokens"], 250);
    let trajectories = report["trajectories"].as_array().unwrap();
    assert_eq!(trajectories.len(), 1, "{report:#}");
    assert_eq!(
        trajectories[0]["file"],
        "hello-world__rollout-agent__1/agent/trajectory.json"
    );
    // system prompt, instruction, then the two model turns
    assert_eq!(trajectories[0]["steps"], 4);

    // A multi-step task (step_results), and an agent whose provider refuses the key (on both
    // tasks).
    let script = Script::default();
    *script.replies.lock().unwrap() = (0..10)
        .map(|_| (401, json!({"error": {"message": "bad key"}})))
        .collect();
    let url = serve(script);
    let tmp2 = tempfile::tempdir().unwrap();
    let task = three_step_task(tmp2.path(), "three-step", "");
    let out = rollout_cmd()
        .env("OPENAI_BASE_URL", &url)
        .env("OPENAI_API_KEY", "test-key")
        .args(["run", "-p", task.to_str().unwrap(), "-a", "oracle"])
        .args(["-p", example("hello-world").to_str().unwrap()])
        .args(["-a", "rollout-agent", "-m", "fake-model"])
        .args(["-o", tmp2.path().to_str().unwrap(), "--job-name", "job"])
        .output()
        .unwrap();
    let job = tmp2.path().join("job");
    let report = validate(&image, &job);
    assert_eq!(
        report["trials"].as_array().unwrap().len(),
        4,
        "stderr:\n{}\n{report:#}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps = read_json(&job.join("three-step__oracle__1/result.json"));
    let step_results = steps["step_results"].as_array().unwrap();
    assert_eq!(step_results.len(), 3);
    assert!(step_results[0]["verifier_result"]["rewards"].is_object());
    let refused = trial(&report, "hello-world__rollout-agent__1");
    assert_eq!(refused["exception_type"], "AgentAuthenticationError");
    assert_eq!(refused["reward_valid"], false);
}
