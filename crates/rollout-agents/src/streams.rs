//! What installed agents report about themselves: their machine-readable event streams
//! (claude-code's and gemini-cli's `--output-format stream-json`) read for model usage,
//! provider failures and the trajectory, which is written in Harbor's ATIF format
//! (`agent/trajectory.json`).

use rollout_core::result::ModelUsage;
use rollout_core::ErrorKind;
use serde_json::{json, Map, Value};

/// What an agent's event stream says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamReport {
    /// Tokens and cost, from the final `result` event.
    pub usage: Option<ModelUsage>,
    /// A provider failure the agent ended with (or was stopped for).
    pub failure: Option<(ErrorKind, String)>,
    /// The run as an ATIF trajectory; `None` when the stream held no event at all.
    pub trajectory: Option<Value>,
}

/// The error kind of an HTTP status from a model provider (as the built-in agent classifies).
pub fn kind_of_status(status: u64) -> ErrorKind {
    match status {
        401 | 403 => ErrorKind::ApiAuth,
        429 => ErrorKind::ApiRateLimit,
        404 => ErrorKind::ModelNotFound,
        413 => ErrorKind::ContextWindowExceeded,
        _ => ErrorKind::ApiError,
    }
}

/// The error kind a provider's error type or message names, if any.
pub fn kind_of_text(text: &str) -> Option<ErrorKind> {
    let t = text.to_ascii_lowercase();
    if t.contains("api key not valid")
        || t.contains("api_key_invalid")
        || t.contains("permission_denied")
        || t.contains("unauthenticated")
    {
        return Some(ErrorKind::ApiAuth);
    }
    if t.contains("prompt is too long")
        || t.contains("prompt_too_long")
        || t.contains("context window")
        || t.contains("context_length_exceeded")
        || t.contains("maximum context length")
    {
        Some(ErrorKind::ContextWindowExceeded)
    } else if t.contains("authentication")
        || t.contains("invalid api key")
        || t.contains("invalid x-api-key")
        || t.contains("incorrect api key")
        || t.contains("invalid_api_key")
        || t.contains("permission_error")
        || t.contains("unauthorized")
    {
        Some(ErrorKind::ApiAuth)
    } else if t.contains("rate_limit") || t.contains("rate limit") || t.contains("(429)") {
        Some(ErrorKind::ApiRateLimit)
    } else if t.contains("not_found_error") || t.contains("model_not_found") {
        Some(ErrorKind::ModelNotFound)
    } else {
        None
    }
}

/// The failure a stream reports when the model provider failed: `kind` and
/// `AGENT: the model provider failed (HTTP STATUS): MESSAGE` (no status when it is 0).
pub fn provider_failure(
    agent: &str,
    kind: ErrorKind,
    status: u64,
    message: &str,
) -> (ErrorKind, String) {
    let status = if status > 0 {
        format!(" (HTTP {status})")
    } else {
        String::new()
    };
    (
        kind,
        format!("{agent}: the model provider failed{status}: {message}"),
    )
}

fn u64_at(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Text of a content value (a string, or blocks with `text`).
fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Read claude-code's `stream-json` output. `instruction` becomes the first (user) step;
/// `version` and `model` describe the agent when the stream does not.
pub fn claude_code(
    text: &str,
    instruction: &str,
    version: Option<&str>,
    model: Option<&str>,
) -> StreamReport {
    claude_stream("claude-code", text, instruction, version, model)
}

/// Read a claude-code-format `stream-json` output of agent `agent` (claude-code, qwen-code).
pub fn claude_stream(
    agent: &str,
    text: &str,
    instruction: &str,
    version: Option<&str>,
    model: Option<&str>,
) -> StreamReport {
    let mut report = StreamReport::default();
    let mut session_id: Option<String> = None;
    let mut model_name = model.map(str::to_string);
    let mut tools: Vec<Value> = Vec::new();
    let mut steps: Vec<Value> = vec![json!({
        "step_id": 1,
        "source": "user",
        "message": instruction,
    })];
    // Assistant messages stream as one event per content block, all with the message's id.
    let mut last_message_id: Option<String> = None;
    let mut last_retry: Option<(u64, String)> = None;
    let mut result: Option<Value> = None;
    let mut events = 0usize;
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line.trim()) else {
            continue;
        };
        events += 1;
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let subtype = event
            .get("subtype")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if session_id.is_none() {
            session_id = event
                .get("session_id")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        match (kind, subtype) {
            ("system", "init") => {
                if let Some(m) = event.get("model").and_then(Value::as_str) {
                    model_name = Some(m.to_string());
                }
                if let Some(t) = event.get("tools").and_then(Value::as_array) {
                    tools = t.iter().map(|n| json!({"name": n})).collect();
                }
            }
            ("system", "api_retry") => {
                last_retry = Some((
                    u64_at(&event, "error_status"),
                    event
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                ));
            }
            ("assistant", _) => {
                let message = &event["message"];
                let id = message
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let same = id.is_some() && id == last_message_id;
                if !same {
                    let usage = &message["usage"];
                    let cached = u64_at(usage, "cache_read_input_tokens");
                    let prompt = u64_at(usage, "input_tokens")
                        + cached
                        + u64_at(usage, "cache_creation_input_tokens");
                    let mut step = json!({
                        "step_id": steps.len() + 1,
                        "source": "agent",
                        "message": "",
                        "metrics": {
                            "prompt_tokens": prompt,
                            "completion_tokens": u64_at(usage, "output_tokens"),
                            "cached_tokens": cached,
                        },
                    });
                    if let Some(ts) = event.get("timestamp") {
                        step["timestamp"] = ts.clone();
                    }
                    if let Some(m) = message.get("model").and_then(Value::as_str) {
                        step["model_name"] = json!(m);
                    }
                    steps.push(step);
                    last_message_id = id;
                }
                let step = steps.last_mut().expect("an agent step was just pushed");
                for block in message["content"].as_array().into_iter().flatten() {
                    match block.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            let text = block["text"].as_str().unwrap_or_default();
                            let old = step["message"].as_str().unwrap_or_default();
                            step["message"] = json!(if old.is_empty() {
                                text.to_string()
                            } else {
                                format!("{old}\n{text}")
                            });
                        }
                        Some("thinking") => {
                            step["reasoning_content"] = block["thinking"].clone();
                        }
                        Some("tool_use") => {
                            let call = json!({
                                "tool_call_id": block["id"],
                                "function_name": block["name"],
                                "arguments": if block["input"].is_object() { block["input"].clone() } else { json!({}) },
                            });
                            match step["tool_calls"].as_array_mut() {
                                Some(calls) => calls.push(call),
                                None => step["tool_calls"] = json!([call]),
                            }
                        }
                        _ => {}
                    }
                }
            }
            ("user", _) => {
                for block in event["message"]["content"].as_array().into_iter().flatten() {
                    if block.get("type").and_then(Value::as_str) != Some("tool_result") {
                        continue;
                    }
                    let call_id = block["tool_use_id"].clone();
                    let mut obs = json!({
                        "source_call_id": call_id,
                        "content": content_text(&block["content"]),
                    });
                    if block.get("is_error").and_then(Value::as_bool) == Some(true) {
                        obs["extra"] = json!({"is_error": true});
                    }
                    // The step that made the call gets the observation.
                    let owner = steps.iter_mut().rev().find(|s| {
                        s["tool_calls"]
                            .as_array()
                            .is_some_and(|c| c.iter().any(|c| c["tool_call_id"] == call_id))
                    });
                    if let Some(step) = owner {
                        match step["observation"]["results"].as_array_mut() {
                            Some(results) => results.push(obs),
                            None => step["observation"] = json!({"results": [obs]}),
                        }
                    }
                }
            }
            ("result", _) => result = Some(event),
            _ => {}
        }
    }
    if let Some(r) = &result {
        let usage = &r["usage"];
        let cached = u64_at(usage, "cache_read_input_tokens");
        let input =
            u64_at(usage, "input_tokens") + cached + u64_at(usage, "cache_creation_input_tokens");
        let output = u64_at(usage, "output_tokens");
        let cost = r.get("total_cost_usd").and_then(Value::as_f64);
        let turns = u64_at(r, "num_turns");
        let requests = steps.iter().filter(|s| s["source"] == "agent").count() as u64;
        report.usage = Some(ModelUsage {
            requests,
            turns,
            input_tokens: input,
            output_tokens: output,
            cost_usd: cost,
            stop_reason: r
                .get("terminal_reason")
                .or_else(|| r.get("stop_reason"))
                .or_else(|| r.get("subtype"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            estimated_turns: 0,
        });
        if r.get("is_error").and_then(Value::as_bool) == Some(true) {
            let message = r["result"]
                .as_str()
                .or_else(|| r["error"]["message"].as_str())
                .unwrap_or("the agent ended with an error");
            let mut status = u64_at(r, "api_error_status");
            if status == 0 {
                // qwen-code: "[API Error: 401 Incorrect API key …]"
                if let Some(rest) = message.split("API Error: ").nth(1) {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    status = digits
                        .parse()
                        .ok()
                        .filter(|s| (400..600).contains(s))
                        .unwrap_or(0);
                }
            }
            let typed = [
                r.get("terminal_reason").and_then(Value::as_str),
                r.get("api_error_type").and_then(Value::as_str),
            ]
            .into_iter()
            .flatten()
            .find_map(kind_of_text);
            let kind = match (typed, status) {
                (Some(k), _) => Some(k),
                (None, s) if s > 0 => Some(kind_of_status(s)),
                (None, _) => kind_of_text(message).or_else(|| {
                    r.get("terminal_reason")
                        .and_then(Value::as_str)
                        .filter(|t| *t == "api_error")
                        .map(|_| ErrorKind::ApiError)
                }),
            };
            if let Some(kind) = kind {
                report.failure = Some(provider_failure(agent, kind, status, message));
            }
        }
        let mut final_metrics = json!({
            "total_prompt_tokens": input,
            "total_completion_tokens": output,
            "total_cached_tokens": cached,
            "total_steps": steps.len(),
        });
        if let Some(c) = cost {
            final_metrics["total_cost_usd"] = json!(c);
        }
        report.trajectory = Some(json!({ "final_metrics": final_metrics }));
    } else if let Some((status, error)) = last_retry {
        // No result: the run was stopped (or died) while retrying a failing request.
        report.failure = Some((
            if status > 0 { kind_of_status(status) } else { kind_of_text(&error).unwrap_or(ErrorKind::ApiError) },
            format!("{agent}: the model provider kept failing (HTTP {status}, {error}); the agent was stopped while retrying"),
        ));
    }
    if events == 0 {
        report.trajectory = None;
        return report;
    }
    let agent_name = agent;
    let mut agent = Map::new();
    agent.insert("name".into(), json!(agent_name));
    agent.insert("version".into(), json!(version.unwrap_or("unknown")));
    if let Some(m) = &model_name {
        agent.insert("model_name".into(), json!(m));
    }
    if !tools.is_empty() {
        agent.insert("tool_definitions".into(), Value::Array(tools));
    }
    let mut trajectory = json!({
        "schema_version": "ATIF-v1.6",
        "session_id": session_id,
        "agent": agent,
        "steps": steps,
    });
    if let Some(fm) = report
        .trajectory
        .take()
        .and_then(|t| t.get("final_metrics").cloned())
    {
        trajectory["final_metrics"] = fm;
    }
    report.trajectory = Some(trajectory);
    report
}

/// Read an installed agent's event stream in the format its recipe names (`stream_log`).
pub fn parse(
    agent: &str,
    text: &str,
    instruction: &str,
    version: Option<&str>,
    model: Option<&str>,
) -> StreamReport {
    match agent {
        "gemini-cli" => gemini_cli(text, instruction, version, model),
        _ => claude_code(text, instruction, version, model),
    }
}

/// The HTTP status inside a provider error text (`"code":401`, `status: 403`), if any.
fn status_in(text: &str) -> u64 {
    for key in ["\"code\":", "\"status\":", "status: "] {
        if let Some(i) = text.find(key) {
            let digits: String = text[i + key.len()..]
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = digits.parse::<u64>() {
                if (400..600).contains(&n) {
                    return n;
                }
            }
        }
    }
    0
}

/// Read gemini-cli's `--output-format stream-json` output (events `init`, `message`,
/// `tool_use`, `tool_result`, `error`, `result`). Assistant text arrives as deltas; a step
/// ends with its tool results. Usage is the final `result`'s `stats` (gemini-cli reports no
/// cost).
pub fn gemini_cli(
    text: &str,
    instruction: &str,
    version: Option<&str>,
    model: Option<&str>,
) -> StreamReport {
    let mut report = StreamReport::default();
    let mut session_id: Option<String> = None;
    let mut model_name = model.map(str::to_string);
    let mut steps: Vec<Value> = vec![json!({
        "step_id": 1,
        "source": "user",
        "message": instruction,
    })];
    // Whether the last step is an agent step still receiving text and calls.
    let mut open = false;
    let mut result: Option<Value> = None;
    let mut events = 0usize;
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line.trim()) else {
            continue;
        };
        events += 1;
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let agent_step = |steps: &mut Vec<Value>, open: &mut bool| {
            if !*open {
                let mut step = json!({
                    "step_id": steps.len() + 1,
                    "source": "agent",
                    "message": "",
                });
                if let Some(ts) = event.get("timestamp") {
                    step["timestamp"] = ts.clone();
                }
                if let Some(m) = &model_name {
                    step["model_name"] = json!(m);
                }
                steps.push(step);
                *open = true;
            }
        };
        match kind {
            "init" => {
                session_id = event
                    .get("session_id")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if let Some(m) = event.get("model").and_then(Value::as_str) {
                    model_name = Some(m.to_string());
                }
            }
            "message" if event["role"] == "assistant" => {
                agent_step(&mut steps, &mut open);
                let step = steps.last_mut().expect("an agent step is open");
                let text = event["content"].as_str().unwrap_or_default();
                let old = step["message"].as_str().unwrap_or_default();
                step["message"] = json!(format!("{old}{text}"));
            }
            "tool_use" => {
                agent_step(&mut steps, &mut open);
                let step = steps.last_mut().expect("an agent step is open");
                let call = json!({
                    "tool_call_id": event["tool_id"],
                    "function_name": event["tool_name"],
                    "arguments": if event["parameters"].is_object() { event["parameters"].clone() } else { json!({}) },
                });
                match step["tool_calls"].as_array_mut() {
                    Some(calls) => calls.push(call),
                    None => step["tool_calls"] = json!([call]),
                }
            }
            "tool_result" => {
                let call_id = event["tool_id"].clone();
                let mut content = event["output"].as_str().unwrap_or_default().to_string();
                let mut obs = json!({"source_call_id": call_id});
                if event["status"] == "error" {
                    if let Some(m) = event["error"]["message"].as_str() {
                        content = if content.is_empty() {
                            m.to_string()
                        } else {
                            format!("{content}\n{m}")
                        };
                    }
                    obs["extra"] = json!({"is_error": true});
                }
                obs["content"] = json!(content);
                let owner = steps.iter_mut().rev().find(|s| {
                    s["tool_calls"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["tool_call_id"] == call_id))
                });
                if let Some(step) = owner {
                    match step["observation"]["results"].as_array_mut() {
                        Some(results) => results.push(obs),
                        None => step["observation"] = json!({"results": [obs]}),
                    }
                }
                open = false;
            }
            "result" => result = Some(event),
            _ => {}
        }
    }
    if events == 0 {
        return report;
    }
    let mut final_metrics = json!({"total_steps": steps.len()});
    if let Some(r) = &result {
        let stats = &r["stats"];
        let input = u64_at(stats, "input_tokens");
        let output = u64_at(stats, "output_tokens");
        let cached = u64_at(stats, "cached");
        let requests = steps.iter().filter(|s| s["source"] == "agent").count() as u64;
        report.usage = Some(ModelUsage {
            estimated_turns: 0,
            requests,
            turns: requests,
            input_tokens: input,
            output_tokens: output,
            cost_usd: None,
            stop_reason: r["status"].as_str().unwrap_or_default().to_string(),
        });
        final_metrics = json!({
            "total_prompt_tokens": input,
            "total_completion_tokens": output,
            "total_cached_tokens": cached,
            "total_steps": steps.len(),
        });
        if r["status"] == "error" {
            let message = r["error"]["message"]
                .as_str()
                .unwrap_or("gemini-cli ended with an error");
            let status = status_in(message);
            let kind = kind_of_text(message).or_else(|| {
                (status > 0 || message.contains("API Error")).then(|| kind_of_status(status))
            });
            if let Some(kind) = kind {
                report.failure = Some(provider_failure("gemini-cli", kind, status, message));
            }
        }
    }
    let mut agent = Map::new();
    agent.insert("name".into(), json!("gemini-cli"));
    agent.insert("version".into(), json!(version.unwrap_or("unknown")));
    if let Some(m) = &model_name {
        agent.insert("model_name".into(), json!(m));
    }
    report.trajectory = Some(json!({
        "schema_version": "ATIF-v1.6",
        "session_id": session_id,
        "agent": agent,
        "steps": steps,
        "final_metrics": final_metrics,
    }));
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOLVED: &str = r#"{"type":"system","subtype":"init","cwd":"/app","session_id":"s1","tools":["Bash","Write"],"model":"claude-x"}
{"type":"assistant","message":{"id":"m1","model":"claude-x","content":[{"type":"text","text":"I will write the file."}],"usage":{"input_tokens":120,"output_tokens":1,"cache_read_input_tokens":0}},"timestamp":"2026-12-03T14:59:50.789Z","session_id":"s1"}
{"type":"assistant","message":{"id":"m1","model":"claude-x","content":[{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"echo hi > /app/hello.txt"}}],"usage":{"input_tokens":120,"output_tokens":1}},"session_id":"s1"}
{"type":"user","message":{"role":"user","content":[{"tool_use_id":"t1","type":"tool_result","content":"(Bash completed with no output)","is_error":false}]},"session_id":"s1"}
{"type":"assistant","message":{"id":"m2","model":"claude-x","content":[{"type":"text","text":"Done."}],"usage":{"input_tokens":150,"output_tokens":1}},"session_id":"s1"}
{"type":"result","subtype":"success","is_error":false,"num_turns":2,"total_cost_usd":0.00216,"usage":{"input_tokens":240,"cache_read_input_tokens":10,"cache_creation_input_tokens":0,"output_tokens":60},"terminal_reason":"completed","result":"Done.","session_id":"s1"}
"#;

    #[test]
    fn a_solved_run_gives_usage_cost_and_an_atif_trajectory() {
        let r = claude_code(SOLVED, "Write hello.txt", Some("2.1.0"), None);
        assert_eq!(r.failure, None);
        let u = r.usage.unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.turns, u.requests),
            (250, 60, 2, 2)
        );
        assert_eq!(u.cost_usd, Some(0.00216));
        assert_eq!(u.stop_reason, "completed");
        let t = r.trajectory.unwrap();
        assert_eq!(t["schema_version"], "ATIF-v1.6");
        assert_eq!(t["session_id"], "s1");
        assert_eq!(t["agent"]["name"], "claude-code");
        assert_eq!(t["agent"]["version"], "2.1.0");
        assert_eq!(t["agent"]["model_name"], "claude-x");
        let steps = t["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 3, "{t:#}");
        assert_eq!(steps[0]["source"], "user");
        assert_eq!(steps[0]["message"], "Write hello.txt");
        assert_eq!(steps[1]["step_id"], 2);
        assert_eq!(steps[1]["message"], "I will write the file.");
        assert_eq!(steps[1]["tool_calls"][0]["function_name"], "Bash");
        assert_eq!(
            steps[1]["tool_calls"][0]["arguments"]["command"],
            "echo hi > /app/hello.txt"
        );
        assert_eq!(
            steps[1]["observation"]["results"][0]["source_call_id"],
            "t1"
        );
        assert_eq!(
            steps[1]["observation"]["results"][0]["content"],
            "(Bash completed with no output)"
        );
        assert_eq!(steps[2]["message"], "Done.");
        assert_eq!(t["final_metrics"]["total_prompt_tokens"], 250);
        assert_eq!(t["final_metrics"]["total_cost_usd"], 0.00216);
    }

    #[test]
    fn provider_failures_are_classified() {
        let retrying = r#"{"type":"system","subtype":"init","session_id":"s"}
{"type":"system","subtype":"api_retry","attempt":1,"error_status":401,"error":"authentication_failed","session_id":"s"}
"#;
        let r = claude_code(retrying, "i", None, None);
        assert_eq!(r.failure.as_ref().unwrap().0, ErrorKind::ApiAuth);
        assert!(r.failure.unwrap().1.contains("401"));
        let ended = |status: u64, ty: &str, reason: &str, text: &str| {
            let line = json!({"type": "result", "subtype": "success", "is_error": true, "api_error_status": status, "api_error_type": ty, "terminal_reason": reason, "result": text, "usage": {}});
            claude_code(&line.to_string(), "i", None, None)
                .failure
                .map(|f| f.0)
        };
        assert_eq!(
            ended(
                429,
                "rate_limit_error",
                "api_error",
                "API Error: Request rejected (429)"
            ),
            Some(ErrorKind::ApiRateLimit)
        );
        assert_eq!(
            ended(
                404,
                "not_found_error",
                "api_error",
                "There's an issue with the selected model"
            ),
            Some(ErrorKind::ModelNotFound)
        );
        assert_eq!(
            ended(0, "", "prompt_too_long", "Prompt is too long"),
            Some(ErrorKind::ContextWindowExceeded)
        );
        assert_eq!(
            ended(401, "authentication_error", "api_error", "Invalid API key"),
            Some(ErrorKind::ApiAuth)
        );
        assert_eq!(
            ended(529, "overloaded_error", "api_error", "Overloaded"),
            Some(ErrorKind::ApiError)
        );
        // A run that failed for another reason is not blamed on the provider.
        let other = json!({"type": "result", "subtype": "error_max_turns", "is_error": true, "result": "max turns", "usage": {}});
        assert_eq!(
            claude_code(&other.to_string(), "i", None, None).failure,
            None
        );
        // Transient retries that were followed by success are no failure.
        let recovered = format!(
            "{}\n{SOLVED}",
            r#"{"type":"system","subtype":"api_retry","error_status":529,"error":"overloaded"}"#
        );
        assert_eq!(claude_code(&recovered, "i", None, None).failure, None);
    }

    #[test]
    fn garbage_and_empty_streams_give_nothing() {
        let r = claude_code("not json\n\n{broken", "i", None, None);
        assert_eq!(r, StreamReport::default());
    }

    const GEMINI_SOLVED: &str = include_str!("../testdata/gemini-cli-solved.jsonl");
    const GEMINI_BAD_KEY: &str = include_str!("../testdata/gemini-cli-bad-key.jsonl");

    #[test]
    fn a_solved_gemini_cli_run_gives_usage_and_an_atif_trajectory() {
        let r = gemini_cli(GEMINI_SOLVED, "Write hello.txt", Some("0.61.0"), None);
        assert_eq!(r.failure, None);
        let u = r.usage.unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.requests, u.cost_usd),
            (240, 60, 2, None)
        );
        assert_eq!(u.stop_reason, "success");
        let t = r.trajectory.unwrap();
        assert_eq!(t["schema_version"], "ATIF-v1.6");
        assert_eq!(t["agent"]["name"], "gemini-cli");
        assert_eq!(t["agent"]["version"], "0.61.0");
        assert_eq!(t["agent"]["model_name"], "gemini-scripted-1");
        assert!(t["session_id"].as_str().unwrap().len() > 10);
        let steps = t["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 3, "{t:#}");
        assert_eq!(steps[0]["message"], "Write hello.txt");
        assert_eq!(steps[1]["source"], "agent");
        assert_eq!(steps[1]["message"], "I will write the file.");
        let call = &steps[1]["tool_calls"][0];
        assert_eq!(call["function_name"], "run_shell_command");
        assert_eq!(
            call["arguments"]["command"],
            "printf 'Hello, world!\\n' > /app/hello.txt"
        );
        let obs = &steps[1]["observation"]["results"][0];
        assert_eq!(obs["source_call_id"], call["tool_call_id"]);
        assert_eq!(obs["content"], "");
        assert_eq!(
            steps[2]["message"],
            "Done: /app/hello.txt holds the greeting."
        );
        assert_eq!(steps[2]["step_id"], 3);
        assert_eq!(t["final_metrics"]["total_prompt_tokens"], 240);
        assert_eq!(t["final_metrics"]["total_completion_tokens"], 60);
        assert_eq!(
            parse(
                "gemini-cli",
                GEMINI_SOLVED,
                "Write hello.txt",
                Some("0.61.0"),
                None
            ),
            gemini_cli(GEMINI_SOLVED, "Write hello.txt", Some("0.61.0"), None)
        );
    }

    #[test]
    fn gemini_cli_provider_failures_are_classified() {
        let r = gemini_cli(GEMINI_BAD_KEY, "i", None, None);
        let (kind, message) = r.failure.unwrap();
        assert_eq!(kind, ErrorKind::ApiAuth, "{message}");
        assert!(
            message.contains("API key not valid") && message.contains("HTTP 400"),
            "{message}"
        );
        assert_eq!(r.usage.unwrap().input_tokens, 0);
        let ended = |message: &str| {
            let line = json!({"type": "result", "status": "error", "error": {"type": "unknown", "message": message}, "stats": {}});
            gemini_cli(&line.to_string(), "i", None, None)
                .failure
                .map(|f| f.0)
        };
        assert_eq!(
            ended(
                r#"[API Error: {"error":{"code":403,"message":"denied","status":"PERMISSION_DENIED"}}]"#
            ),
            Some(ErrorKind::ApiAuth)
        );
        assert_eq!(
            ended(
                r#"[API Error: {"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}]"#
            ),
            Some(ErrorKind::ApiRateLimit)
        );
        assert_eq!(
            ended(
                r#"[API Error: {"error":{"code":404,"message":"models/x is not found","status":"NOT_FOUND"}}]"#
            ),
            Some(ErrorKind::ModelNotFound)
        );
        assert_eq!(
            ended(
                r#"[API Error: {"error":{"code":500,"message":"internal","status":"INTERNAL"}}]"#
            ),
            Some(ErrorKind::ApiError)
        );
        // An error that is not the provider's is not blamed on it.
        assert_eq!(
            ended("Tool execution failed: permission to write outside the workspace"),
            None
        );
        assert_eq!(gemini_cli("", "i", None, None), StreamReport::default());
    }
}
