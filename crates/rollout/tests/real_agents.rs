//! Installed CLI agents for real: the real package from its registry (npm, PyPI) installed in
//! the task's container by rollout's recipe, talking to a scripted model provider that runs
//! inside the task's environment (a compose service built from debian:bookworm-slim plus
//! python3, tests/fixtures/scripted-providers/), so no model traffic leaves the trial.
//!
//! They need the package registries (through `--ca-certs auto`, as every rollout run) and take
//! a minute or two each: the install is real.

mod common;

use common::agent_task::*;
use common::*;

const KEY: &str = "sk-ant-scripted-4711";

/// Run claude-code on the scripted-provider task with `key` as its API key.
fn run_claude(key: &str) -> AgentRun {
    run_agent(
        "claude-code",
        "claude-scripted-1",
        "anthropic",
        KEY,
        &[
            ("ANTHROPIC_BASE_URL", "http://llm:8080"),
            ("ANTHROPIC_API_KEY", key),
        ],
        &["ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"],
    )
}

#[test]
fn claude_code_installs_for_real_and_solves_hello_world_through_its_own_tools() {
    let a = run_claude(KEY);
    let (r, trial) = (a.result(), &a.trial);
    assert_eq!(r["reward"], 1.0, "{r:#}\n{}", a.outputs());
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
    let a = run_claude("sk-ant-wrong");
    let r = a.result();
    assert_eq!(r["error"]["type"], "api_auth", "{r:#}\n{}", a.outputs());
    let seconds = r["phases"]["agent_run"]["seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("agent_run timing in {r:#}"));
    assert!(
        seconds < 30.0,
        "a refused key stops the agent instead of retrying for its whole budget: {seconds} s"
    );
    assert_eq!(r["reward"], 0.0, "the verifier still ran: {r:#}");
}

const GEMINI_KEY: &str = "gemini-scripted-4711";

/// Run gemini-cli on the scripted Gemini API task with `key` as its API key.
fn run_gemini(key: &str) -> AgentRun {
    run_agent(
        "gemini-cli",
        "gemini-scripted-1",
        "gemini",
        GEMINI_KEY,
        &[
            ("GOOGLE_GEMINI_BASE_URL", "http://llm:8080"),
            ("GEMINI_API_KEY", key),
        ],
        &[
            "GOOGLE_API_KEY",
            "GOOGLE_GENAI_USE_VERTEXAI",
            "GOOGLE_CLOUD_PROJECT",
            "GOOGLE_CLOUD_LOCATION",
        ],
    )
}

#[test]
fn gemini_cli_installs_for_real_and_solves_hello_world_through_its_own_tools() {
    let a = run_gemini(GEMINI_KEY);
    let (r, trial) = (a.result(), &a.trial);
    assert_eq!(r["reward"], 1.0, "{r:#}\n{}", a.outputs());
    assert_eq!(r["error"], serde_json::Value::Null, "{r:#}");
    let install = std::fs::read_to_string(trial.join("agent/setup/stdout.txt")).unwrap();
    assert!(
        install.contains("gemini-cli declares engines.node '>=") && install.contains("with Node v"),
        "Node is what the package declares: {install}"
    );
    // Two model calls of the scripted 120 + 30 tokens: the function call, then the answer.
    let usage = &r["agent_run"]["usage"];
    assert_eq!(usage["input_tokens"], 240, "{r:#}");
    assert_eq!(usage["output_tokens"], 60, "{r:#}");
    assert!(std::fs::read_to_string(trial.join("agent/gemini-cli.txt"))
        .unwrap()
        .contains("\"type\":\"result\""));
    let t = read_json(&trial.join("agent/trajectory.json"));
    assert_eq!(t["agent"]["name"], "gemini-cli");
    assert_eq!(t["agent"]["model_name"], "gemini-scripted-1");
    let steps = t["steps"].as_array().unwrap();
    let step = steps
        .iter()
        .find(|s| s["tool_calls"].is_array())
        .unwrap_or_else(|| panic!("a tool call in {t:#}"));
    let call = &step["tool_calls"][0];
    assert_eq!(call["function_name"], "run_shell_command");
    assert!(call["arguments"]["command"]
        .as_str()
        .unwrap()
        .contains("/app/hello.txt"));
    assert_eq!(
        step["observation"]["results"][0]["source_call_id"],
        call["tool_call_id"]
    );
    assert_eq!(t["final_metrics"]["total_prompt_tokens"], 240);
}

#[test]
fn gemini_cli_with_a_wrong_key_ends_quickly_as_api_auth() {
    let a = run_gemini("gemini-wrong");
    let r = a.result();
    assert_eq!(r["error"]["type"], "api_auth", "{r:#}\n{}", a.outputs());
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("API key not valid"),
        "{r:#}"
    );
    let seconds = r["phases"]["agent_run"]["seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("agent_run timing in {r:#}"));
    assert!(seconds < 30.0, "a refused key ends the agent: {seconds} s");
    assert_eq!(r["reward"], 0.0, "the verifier still ran: {r:#}");
}

/// Agents distributed only outside the package registries are refused by name before anything
/// runs (no environment is built), with the reason and the way out.
#[test]
fn agents_only_distributed_outside_registries_are_refused_before_the_run() {
    let task = example("hello-world");
    for (agent, reason) in [
        ("cursor-cli", "cursor.com"),
        ("goose", "GitHub release binaries"),
    ] {
        let out = tempfile::tempdir().unwrap();
        let o = rollout_cmd()
            .args(["run", "-p", task.to_str().unwrap(), "-a", agent])
            .args(["-o", out.path().to_str().unwrap(), "--job-name", "job"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{agent}: {stderr}");
        assert!(
            stderr.contains(&format!("agent {agent}: rollout cannot install it"))
                && stderr.contains(reason)
                && stderr.contains("command agent"),
            "{agent}: {stderr}"
        );
        assert!(
            !out.path().join("job").join("result.json").exists(),
            "{agent}: nothing ran"
        );
    }
}
