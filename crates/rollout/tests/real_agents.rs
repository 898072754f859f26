//! Installed CLI agents for real: the real package from its registry (npm, PyPI) installed in
//! the task's container by rollout's recipe, talking to a scripted model provider that runs
//! inside the task's environment (a compose service built from debian:bookworm-slim plus
//! python3, tests/fixtures/scripted-providers/), so no model traffic leaves the trial.
//!
//! They need the package registries (through `--ca-certs auto`, as every rollout run) and take
//! a minute or two each: the install is real.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    if rel.ends_with(".sh") {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// hello-world with a scripted provider service `llm` (port 8080) next to the main
/// container; `provider` names the script under tests/fixtures/scripted-providers/.
fn task_with_provider(root: &Path, provider: &str, api_key: &str) -> PathBuf {
    let t = root.join("hello-scripted");
    let hello = example("hello-world");
    for rel in ["instruction.md", "tests/test.sh", "environment/Dockerfile"] {
        write(&t, rel, &std::fs::read_to_string(hello.join(rel)).unwrap());
    }
    write(
        &t,
        "task.toml",
        "version = \"1.0\"\n[agent]\ntimeout_sec = 300.0\ninstall_timeout_sec = 600.0\n\
         [verifier]\ntimeout_sec = 60.0\n\
         [environment]\nworkdir = \"/app\"\nmemory_mb = 4096\nbuild_timeout_sec = 600.0\n",
    );
    write(
        &t,
        "environment/docker-compose.yaml",
        &format!(
            r#"services:
  main:
    depends_on:
      llm:
        condition: service_healthy
  llm:
    build:
      context: ./llm
    expose:
      - "8080"
    environment:
      - API_KEY={api_key}
    healthcheck:
      test: ["CMD", "python3", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:8080/health')"]
      interval: 1s
      timeout: 5s
      retries: 60
"#
        ),
    );
    write(
        &t,
        "environment/llm/Dockerfile",
        &format!(
            "FROM debian:bookworm-slim\n\
             RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*\n\
             COPY {provider}.py /srv/provider.py\n\
             CMD [\"python3\", \"-u\", \"/srv/provider.py\"]\n"
        ),
    );
    write(
        &t,
        &format!("environment/llm/{provider}.py"),
        &std::fs::read_to_string(
            repo().join(format!("tests/fixtures/scripted-providers/{provider}.py")),
        )
        .unwrap(),
    );
    t
}

const KEY: &str = "sk-ant-scripted-4711";

/// Run claude-code on the scripted-provider task with `key` as its API key.
fn run_claude(key: &str) -> (Run, PathBuf, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let task = task_with_provider(tmp.path(), "anthropic", KEY);
    require_docker();
    let out = tempfile::tempdir().unwrap();
    let output = rollout_cmd()
        .env("ANTHROPIC_BASE_URL", "http://llm:8080")
        .env("ANTHROPIC_API_KEY", key)
        .env_remove("ANTHROPIC_AUTH_TOKEN")
        .env_remove("CLAUDE_CODE_OAUTH_TOKEN")
        .args(["run", "-p", task.to_str().unwrap(), "-a", "claude-code"])
        .args(["-m", "claude-scripted-1"])
        .args(["-o", out.path().to_str().unwrap(), "--job-name", "job"])
        .output()
        .unwrap();
    let run = Run {
        output,
        job_dir: out.path().join("job"),
        _tmp: out,
    };
    let trial = run.job_dir.join("hello-scripted__claude-code__1");
    (run, trial, tmp)
}

#[test]
fn claude_code_installs_for_real_and_solves_hello_world_through_its_own_tools() {
    let (run, trial, _task) = run_claude(KEY);
    let r = read_json(&trial.join("result.json"));
    assert_eq!(
        r["reward"],
        1.0,
        "{r:#}\nstdout:\n{}\nstderr:\n{}",
        run.stdout(),
        run.stderr()
    );
    assert_eq!(r["error"], serde_json::Value::Null, "{r:#}");
    let install = std::fs::read_to_string(trial.join("agent/setup/stdout.txt")).unwrap();
    assert!(
        install.contains("declares engines.node '>=") && install.contains("with Node v2"),
        "Node is what the package declares: {install}"
    );
    let usage = &r["agent_run"]["usage"];
    assert_eq!(usage["input_tokens"], 240, "scripted usage, summed: {r:#}");
    assert_eq!(usage["output_tokens"], 60, "{r:#}");
    assert!(usage["cost_usd"].as_f64().unwrap() > 0.0, "{r:#}");
    // The stream log is kept, and converted to an ATIF trajectory.
    assert!(std::fs::read_to_string(trial.join("agent/claude-code.txt"))
        .unwrap()
        .contains("\"type\":\"result\""));
    let t = read_json(&trial.join("agent/trajectory.json"));
    assert_eq!(t["agent"]["name"], "claude-code");
    let steps = t["steps"].as_array().unwrap();
    let call = steps
        .iter()
        .find_map(|s| s["tool_calls"].as_array().and_then(|c| c.first()))
        .unwrap_or_else(|| panic!("a tool call in {t:#}"));
    assert_eq!(call["function_name"], "Bash");
    assert!(call["arguments"]["command"]
        .as_str()
        .unwrap()
        .contains("/app/hello.txt"));
    assert_eq!(t["final_metrics"]["total_prompt_tokens"], 240);
}

#[test]
fn claude_code_with_a_wrong_key_ends_quickly_as_api_auth() {
    let (run, trial, _task) = run_claude("sk-ant-wrong");
    let r = read_json(&trial.join("result.json"));
    assert_eq!(
        r["error"]["type"],
        "api_auth",
        "{r:#}\nstderr:\n{}",
        run.stderr()
    );
    let seconds = r["phases"]["agent_run"]["seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("agent_run timing in {r:#}"));
    assert!(
        seconds < 30.0,
        "a refused key stops the agent instead of retrying for its whole budget: {seconds} s"
    );
    assert_eq!(r["reward"], 0.0, "the verifier still ran: {r:#}");
}
