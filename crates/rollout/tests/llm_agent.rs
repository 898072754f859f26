//! The built-in LLM agent against a scripted OpenAI-compatible server on loopback (real HTTP),
//! through the real Docker environment.

mod common;

use common::fake_llm::{final_answer, serve, tool_call, Script};
use common::*;
use serde_json::json;

fn run_agent(base_url: &str, extra: &[&str]) -> Run {
    let mut cmd = rollout_cmd();
    cmd.env("OPENAI_BASE_URL", base_url)
        .env("OPENAI_API_KEY", "test-key");
    let hello = example("hello-world");
    let mut args = vec![
        "-p",
        hello.to_str().unwrap(),
        "-a",
        "rollout-agent",
        "-m",
        "fake-model",
    ];
    args.extend_from_slice(extra);
    run_with(cmd, &args)
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

#[test]
fn models_sweep_with_agent_env_and_a_model_column() {
    require_docker();
    let script = Script::ok(vec![final_answer("done"), final_answer("done")]);
    let url = serve(script.clone());
    let mut cmd = rollout_cmd();
    cmd.env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY");
    let hello = example("hello-world");
    let base = format!("OPENAI_BASE_URL={url}");
    let r = run_with(
        cmd,
        &[
            "-p",
            hello.to_str().unwrap(),
            "-a",
            "rollout-agent",
            "-m",
            "model-a",
            "-m",
            "model-b",
            "--ae",
            &base,
            "--ae",
            "OPENAI_API_KEY=test-key",
            "--ak",
            "max_turns=2",
            "-n",
            "1",
        ],
    );
    // The agent finished with a final answer; the verifier gave 0: exit 1 is "not all solved".
    let trials = r.trials();
    assert_eq!(
        trials.len(),
        2,
        "2 models × 1 agent × 1 task; stderr:\n{}",
        r.stderr()
    );
    let models: Vec<&str> = trials
        .iter()
        .map(|t| t["agent"]["model_name"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["model-a", "model-b"]);
    for (t, m) in trials.iter().zip(["model-a", "model-b"]) {
        assert_eq!(
            t["trial_name"],
            format!("hello-world__rollout-agent-{m}__1")
        );
        assert!(t["error"].is_null(), "{t}");
        assert_eq!(t["agent_run"]["usage"]["stop_reason"], "final_answer");
    }
    let mut sent: Vec<String> = script
        .seen()
        .iter()
        .map(|b| b["model"].as_str().unwrap().to_string())
        .collect();
    sent.sort();
    assert_eq!(sent, ["model-a", "model-b"], "--ae reached each agent");
    let out = r.stdout();
    let header = out
        .lines()
        .find(|l| l.starts_with("agent / dataset"))
        .unwrap();
    assert!(header.contains("model"), "{out}");
    for m in ["model-a", "model-b"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("rollout-agent / -") && l.contains(m)),
            "{out}"
        );
    }
    let groups = r.job_result()["by_agent_model_dataset"].clone();
    assert_eq!(groups.as_array().unwrap().len(), 2, "{groups}");
    let show = rollout_cmd()
        .args(["jobs", "show", r.job_dir.to_str().unwrap()])
        .output()
        .unwrap();
    let show = String::from_utf8_lossy(&show.stdout);
    for m in ["model-a", "model-b"] {
        assert!(
            show.lines().any(
                |l| l.starts_with(&format!("hello-world__rollout-agent-{m}__1"))
                    && l.contains(&format!(" {m} "))
            ),
            "{show}"
        );
    }
}

#[test]
fn auth_errors_are_not_retried() {
    let script = Script::default();
    *script.replies.lock().unwrap() = vec![(401, json!({"error": {"message": "bad key"}}))];
    let url = serve(script.clone());
    let r = run_agent(&url, &["--max-retries", "2"]);
    let t = r.trial();
    assert_eq!(t["error"]["type"], "api_auth", "{t}");
    assert_eq!(
        script.seen.lock().unwrap().len(),
        1,
        "a 401 is final: no API retry, no trial retry"
    );
}
