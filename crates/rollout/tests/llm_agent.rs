//! The built-in LLM agent against a scripted OpenAI-compatible server on loopback (real HTTP),
//! through the real Docker environment.

mod common;

use common::fake_llm::{final_answer, serve, tool_call, Script};
use common::*;
use serde_json::json;

fn run_agent(base_url: &str, extra: &[&str]) -> Run {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let output = rollout_cmd()
        .env("OPENAI_BASE_URL", base_url)
        .env("OPENAI_API_KEY", "test-key")
        .args([
            "run",
            "-p",
            example("hello-world").to_str().unwrap(),
            "-a",
            "rollout-agent",
            "-m",
            "fake-model",
        ])
        .args(extra)
        .args(["-o", tmp.path().to_str().unwrap(), "--job-name", "job"])
        .output()
        .unwrap();
    Run {
        output,
        job_dir: tmp.path().join("job"),
        _tmp: tmp,
    }
}

#[test]
fn the_agent_solves_hello_world_through_tool_calls() {
    let script = Script::default();
    *script.replies.lock().unwrap() = vec![
        (
            200,
            tool_call(
                "call-1",
                "printf 'Hello, world!' > /app/hello.txt && cat /app/hello.txt",
            ),
        ),
        (200, final_answer("Created /app/hello.txt.")),
    ];
    let url = serve(script.clone());
    let r = run_agent(&url, &[]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    let t = r.trial();
    assert_eq!(t["reward"], 1.0, "{t}");
    assert_eq!(t["agent"]["model_name"], "fake-model");
    let usage = &t["agent_run"]["usage"];
    assert_eq!(usage["input_tokens"], 250);
    assert_eq!(usage["output_tokens"], 25);
    assert_eq!(usage["turns"], 2);
    assert_eq!(usage["stop_reason"], "final_answer");

    // The trajectory matches what the server saw.
    let seen = script.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let traj = read_json(
        &r.trial_dir("hello-world__rollout-agent__1")
            .join("agent/trajectory.json"),
    );
    // ATIF: the system prompt, the instruction, then one agent step per model turn.
    assert_eq!(traj["schema_version"], "ATIF-v1.6");
    let steps = traj["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4);
    assert_eq!(steps[0]["source"], "system");
    assert_eq!(steps[1]["source"], "user");
    // Each step records what its request added: the turn's system prompt and the new
    // messages; together they are the exact request.
    let mut conversation = Vec::new();
    for (step, sent) in steps[2..].iter().zip(&seen) {
        assert_eq!(step["source"], "agent");
        let req = &step["extra"]["request"];
        conversation.extend(req["new_messages"].as_array().unwrap().iter().cloned());
        let mut full = vec![json!({"role": "system", "content": req["system"]})];
        full.extend(conversation.iter().cloned());
        assert_eq!(
            sent["messages"],
            serde_json::Value::Array(full),
            "the trajectory records the exact request"
        );
    }
    assert_eq!(steps[2]["metrics"]["prompt_tokens"], 100);
    assert_eq!(traj["final_metrics"]["total_prompt_tokens"], 250);
    assert_eq!(
        traj["final_metrics"]["extra"]["stop_reason"],
        "final_answer"
    );
    let tool = &steps[2]["tool_calls"][0];
    assert_eq!(tool["function_name"], "bash");
    let observation = &steps[2]["observation"]["results"][0];
    assert_eq!(observation["source_call_id"], tool["tool_call_id"]);
    let output = observation["content"].as_str().unwrap();
    assert!(
        output.contains("exit code: 0")
            && output.contains("Hello, world!")
            && output.contains("time left"),
        "{output}"
    );
    // The second request carries the tool result back to the model.
    let last = seen[1]["messages"].as_array().unwrap().last().unwrap();
    assert_eq!(last["role"], "tool");
    assert_eq!(last["tool_call_id"], "call-1");
    assert_eq!(last["content"], observation["content"]);
    assert!(seen[0]["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("Time left"));
    assert_eq!(seen[0]["model"], "fake-model");
}

#[test]
fn rate_limits_are_retried() {
    let script = Script::default();
    *script.replies.lock().unwrap() = vec![
        (429, json!({"error": {"message": "slow down"}})),
        (
            200,
            tool_call("c1", "printf 'Hello, world!' > /app/hello.txt"),
        ),
        (200, final_answer("done")),
    ];
    let url = serve(script.clone());
    let r = run_agent(&url, &[]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    let t = r.trial();
    assert_eq!(t["reward"], 1.0);
    assert_eq!(t["agent_run"]["usage"]["requests"], 3);
    let traj = read_json(
        &r.trial_dir("hello-world__rollout-agent__1")
            .join("agent/trajectory.json"),
    );
    assert_eq!(traj["steps"][2]["extra"]["attempts"][0]["status"], 429);
    assert_eq!(traj["steps"][2]["extra"]["attempts"][1]["status"], 200);
}

#[test]
fn a_context_window_error_is_classified() {
    let script = Script::default();
    *script.replies.lock().unwrap() = vec![(
        400,
        json!({"error": {"code": "context_length_exceeded", "message": "This model's maximum context length is 8192 tokens"}}),
    )];
    let url = serve(script);
    let r = run_agent(&url, &[]);
    assert_eq!(r.code(), 1);
    let t = r.trial();
    assert_eq!(t["error"]["type"], "context_window_exceeded", "{t}");
    // The verifier still judged the (untouched) environment.
    assert_eq!(t["reward"], 0.0);
    let job = r.job_result();
    assert_eq!(job["stats"]["error_counts"]["context_window_exceeded"], 1);
    // The agent's run is kept: one request, and why it stopped.
    let usage = &t["agent_run"]["usage"];
    assert_eq!(usage["requests"], 1, "{t}");
    assert_eq!(usage["stop_reason"], "context_window_exceeded");
}

#[test]
fn a_llama_cpp_context_overflow_is_not_retried_by_the_job() {
    let script = Script::default();
    *script.replies.lock().unwrap() = vec![(
        400,
        json!({"error": {"code": 400, "type": "exceed_context_size_error",
            "message": "the request exceeds the available context size, try increasing it"}}),
    )];
    let url = serve(script.clone());
    let r = run_agent(&url, &["--max-retries", "2"]);
    let t = r.trial();
    assert_eq!(t["error"]["type"], "context_window_exceeded", "{t}");
    assert_eq!(script.seen().len(), 1, "no API retry, no trial retry");
}
