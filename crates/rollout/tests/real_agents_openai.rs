//! The installed CLI agents that speak OpenAI protocols, for real: codex (Responses API),
//! aider, mini-swe-agent, opencode, qwen-code and openhands-sdk (Chat Completions), each
//! installed from its registry (npm, PyPI) in the task's container by rollout's recipe, talking
//! to a scripted provider (tests/fixtures/scripted-providers/openai.py) that runs as a compose
//! service of the task, so no model traffic leaves the trial.
//!
//! Each agent has two tests: it solves hello-world through its own tools (reward 1, usage and
//! an ATIF trajectory recorded from its native log), and a wrong key (the provider answers 401
//! `invalid_api_key`) ends its run quickly as `api_auth`. They need the package registries
//! (through `--ca-certs auto`, as every rollout run) and take minutes each: the install is real.

mod common;

use common::agent_task::*;
use common::*;
use serde_json::Value;
use std::path::PathBuf;

const KEY: &str = "sk-scripted-4711";

/// One agent's way to the scripted provider.
struct Agent {
    name: &'static str,
    play: &'static str,
    /// The variable naming the provider's base URL.
    base_var: &'static str,
    model: &'static str,
    /// The main container's base image (empty: hello-world's own Dockerfile).
    image: &'static str,
}

const CODEX: Agent = Agent {
    name: "codex",
    play: "tools",
    base_var: "OPENAI_BASE_URL",
    model: "gpt-scripted",
    image: "",
};
const AIDER: Agent = Agent {
    name: "aider",
    play: "aider",
    base_var: "OPENAI_API_BASE",
    model: "openai/gpt-scripted",
    image: "",
};
const MINI: Agent = Agent {
    name: "mini-swe-agent",
    play: "mini",
    base_var: "OPENAI_API_BASE",
    model: "openai/gpt-scripted",
    image: "",
};
const OPENCODE: Agent = Agent {
    name: "opencode",
    play: "tools",
    base_var: "OPENAI_BASE_URL",
    model: "gpt-scripted",
    image: "",
};
/// The OpenHands SDK needs Python 3.12 or later: the task's image is Debian 13 (Python 3.13;
/// scripts/setup builds `debian:trixie-slim` as it builds bookworm).
const OPENHANDS_SDK: Agent = Agent {
    name: "openhands-sdk",
    play: "tools",
    base_var: "LLM_BASE_URL",
    model: "openai/gpt-scripted",
    image: "debian:trixie-slim",
};
const QWEN: Agent = Agent {
    name: "qwen-code",
    play: "tools",
    base_var: "OPENAI_BASE_URL",
    model: "gpt-scripted",
    image: "",
};

/// Run `agent` on hello-world with the scripted OpenAI provider (tests/fixtures/
/// scripted-providers/openai.py, accepting only `KEY`, playing `agent.play`) and `key`;
/// returns the run, the trial directory and its result.
fn run(agent: &Agent, key: &str) -> (Run, PathBuf, Value, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let task = task_with(
        tmp.path(),
        &Provider {
            script: "openai",
            api_key: KEY,
            env: &[("PLAY", agent.play)],
            agent_timeout_sec: 600.0,
            install_timeout_sec: 1200.0,
        },
    );
    if !agent.image.is_empty() {
        write(
            &task,
            "environment/Dockerfile",
            &format!("FROM {}\nWORKDIR /app\n", agent.image),
        );
    }
    let a = run_agent_on(
        tmp,
        &task,
        agent.name,
        agent.model,
        &[
            (agent.base_var, "http://llm:8080/v1"),
            ("OPENAI_API_KEY", key),
        ],
        &[
            "OPENAI_BASE_URL",
            "OPENAI_API_BASE",
            "OPENAI_MODEL",
            "ANTHROPIC_API_KEY",
            "GEMINI_API_KEY",
            "OPENROUTER_API_KEY",
            "DEEPSEEK_API_KEY",
            "MSWEA_MODEL_NAME",
            "LLM_API_KEY",
            "LLM_BASE_URL",
            "LLM_MODEL",
        ],
    );
    let result = a.trial.join("result.json");
    assert!(result.is_file(), "no trial result\n{}", a.outputs());
    let r = read_json(&result);
    (a.run, a.trial, r, a._task)
}

/// The agent solved the task through its own tools; usage and the trajectory are recorded.
/// Returns the trajectory.
fn assert_solved(agent: &Agent) -> Value {
    let (run, trial, r, _task) = run(agent, KEY);
    let setup = std::fs::read_to_string(trial.join("agent/setup/stdout.txt")).unwrap_or_default();
    assert_eq!(
        r["reward"],
        1.0,
        "{r:#}\nstderr:\n{}\nsetup:\n{setup}",
        run.stderr()
    );
    assert_eq!(r["error"], Value::Null, "{r:#}");
    let usage = &r["agent_run"]["usage"];
    assert!(
        usage["input_tokens"].as_u64().unwrap_or(0) > 0
            && usage["output_tokens"].as_u64().unwrap_or(0) > 0,
        "usage recorded: {r:#}"
    );
    let t = read_json(&trial.join("agent/trajectory.json"));
    assert_eq!(t["schema_version"], "ATIF-v1.6");
    assert_eq!(t["agent"]["name"], agent.name);
    assert!(
        t["steps"].as_array().map_or(0, Vec::len) >= 2,
        "steps: {t:#}"
    );
    assert_eq!(
        t["final_metrics"]["total_prompt_tokens"], usage["input_tokens"],
        "{t:#}"
    );
    t
}

/// The first tool call of a trajectory.
fn first_call(t: &Value) -> &Value {
    t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|s| s["tool_calls"].as_array().and_then(|c| c.first()))
        .unwrap_or_else(|| panic!("a tool call in {t:#}"))
}

/// The scripted usage is 100 prompt and 20 completion tokens per model response.
fn assert_scripted_usage(t: &Value, responses: u64) {
    assert_eq!(
        t["final_metrics"]["total_prompt_tokens"],
        100 * responses,
        "{t:#}"
    );
    assert_eq!(
        t["final_metrics"]["total_completion_tokens"],
        20 * responses,
        "{t:#}"
    );
}

/// A refused key ends the agent phase quickly with `api_auth`; the verifier still runs.
fn assert_refused_key_is_api_auth(agent: &Agent) {
    let (run, _trial, r, _task) = run(agent, "sk-wrong");
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

#[test]
fn codex_installs_for_real_and_solves_hello_world_over_the_responses_api() {
    let t = assert_solved(&CODEX);
    let call = first_call(&t);
    assert_eq!(call["function_name"], "shell");
    assert!(call["arguments"]["command"]
        .as_str()
        .unwrap()
        .contains("/app/hello.txt"));
    assert_scripted_usage(&t, 2);
}

#[test]
fn codex_with_a_wrong_key_ends_quickly_as_api_auth() {
    assert_refused_key_is_api_auth(&CODEX);
}

#[test]
fn qwen_code_installs_for_real_and_solves_hello_world_over_chat_completions() {
    let t = assert_solved(&QWEN);
    assert_eq!(first_call(&t)["function_name"], "run_shell_command");
    assert_scripted_usage(&t, 2);
}

#[test]
fn qwen_code_with_a_wrong_key_ends_quickly_as_api_auth() {
    assert_refused_key_is_api_auth(&QWEN);
}

#[test]
fn opencode_installs_for_real_and_solves_hello_world_over_chat_completions() {
    let t = assert_solved(&OPENCODE);
    assert_eq!(first_call(&t)["function_name"], "bash");
    assert_scripted_usage(&t, 2);
}

#[test]
fn opencode_with_a_wrong_key_ends_quickly_as_api_auth() {
    assert_refused_key_is_api_auth(&OPENCODE);
}

#[test]
fn mini_swe_agent_installs_for_real_and_solves_hello_world_through_litellm() {
    let t = assert_solved(&MINI);
    assert_eq!(first_call(&t)["function_name"], "bash");
    assert_scripted_usage(&t, 2);
}

#[test]
fn mini_swe_agent_with_a_wrong_key_ends_quickly_as_api_auth() {
    assert_refused_key_is_api_auth(&MINI);
}

#[test]
fn aider_installs_for_real_and_solves_hello_world_with_its_whole_file_edits() {
    let t = assert_solved(&AIDER);
    // aider edits through text, not tool calls: its own note says the edit was applied.
    let notes: Vec<&str> = t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["message"].as_str())
        .collect();
    assert!(
        notes
            .iter()
            .any(|m| m.contains("Applied edit to hello.txt")),
        "{t:#}"
    );
}

#[test]
fn aider_with_a_wrong_key_ends_quickly_as_api_auth() {
    assert_refused_key_is_api_auth(&AIDER);
}

#[test]
fn openhands_sdk_installs_for_real_and_solves_hello_world_over_chat_completions() {
    let t = assert_solved(&OPENHANDS_SDK);
    let call = first_call(&t);
    assert_eq!(call["function_name"], "terminal");
    assert!(call["arguments"]["command"]
        .as_str()
        .unwrap()
        .contains("/app/hello.txt"));
    assert_scripted_usage(&t, 2);
    assert_eq!(t["steps"][0]["source"], "system", "{t:#}");
}

#[test]
fn openhands_sdk_with_a_wrong_key_ends_quickly_as_api_auth() {
    assert_refused_key_is_api_auth(&OPENHANDS_SDK);
}
