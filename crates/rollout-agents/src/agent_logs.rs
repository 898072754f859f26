//! What the OpenAI-protocol installed agents report about themselves, read after the run:
//! codex's `exec --json` events, opencode's `run --format json` events, qwen-code's
//! `stream-json` (claude-code's format), mini-swe-agent's trajectory file and aider's analytics
//! log and chat history, and the events rollout's OpenHands SDK runner prints. Each gives model usage, a provider failure (typed) and the run as an
//! ATIF trajectory, like [`crate::streams::claude_code`] does for claude-code.

use crate::streams::{kind_of_status, kind_of_text, provider_failure, StreamReport};
use rollout_core::result::ModelUsage;
use rollout_core::ErrorKind;
use serde_json::{json, Map, Value};

/// Files under `/logs/agent` (besides the stream log) that `name`'s report is read from.
pub fn native_files(name: &str) -> &'static [&'static str] {
    match name {
        "aider" => &["aider.analytics.jsonl", ".aider.chat.history.md"],
        "mini-swe-agent" => &["mini-swe-agent.traj.json"],
        _ => &[],
    }
}

/// Usage, failure and trajectory of `name`'s run from its stream log (`stream`, its stdout)
/// and its [`native_files`] (same order; empty when missing).
pub fn report(
    name: &str,
    stream: &str,
    native: &[String],
    instruction: &str,
    version: Option<&str>,
    model: Option<&str>,
) -> StreamReport {
    let file = |i: usize| native.get(i).map(String::as_str).unwrap_or_default();
    match name {
        "codex" => codex(stream, instruction, version, model),
        "opencode" => opencode(stream, instruction, version, model),
        "qwen-code" => {
            crate::streams::claude_stream("qwen-code", stream, instruction, version, model)
        }
        "mini-swe-agent" => mini_swe_agent(file(0), stream, version, model),
        "openhands-sdk" => openhands_sdk(stream, version, model),
        "aider" => aider(file(0), file(1), stream, instruction, version, model),
        _ => crate::streams::parse(name, stream, instruction, version, model),
    }
}

fn u64_at(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// JSON lines of `text` (other lines skipped).
fn events(text: &str) -> impl Iterator<Item = Value> + '_ {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(Value::is_object)
}

/// An ATIF trajectory being built.
struct Atif {
    agent: &'static str,
    steps: Vec<Value>,
}

impl Atif {
    fn new(agent: &'static str) -> Self {
        Self {
            agent,
            steps: Vec::new(),
        }
    }

    fn push(&mut self, source: &str, message: &str) -> &mut Value {
        let step = json!({
            "step_id": self.steps.len() + 1,
            "source": source,
            "message": message,
        });
        self.steps.push(step);
        self.steps.last_mut().expect("just pushed")
    }

    /// How many steps are the agent's (one per model response).
    fn agent_steps(&self) -> u64 {
        self.steps.iter().filter(|s| s["source"] == "agent").count() as u64
    }

    /// The last agent step, a new one when the last step is not the agent's.
    fn agent_step(&mut self) -> &mut Value {
        if self
            .steps
            .last()
            .map(|s| s["source"] != "agent")
            .unwrap_or(true)
        {
            self.push("agent", "");
        }
        self.steps.last_mut().expect("an agent step")
    }

    /// Give the result of tool call `id` to the latest step that made the call (none: dropped).
    fn add_result_to_caller(&mut self, id: &Value, content: String) {
        let owner = self.steps.iter_mut().rev().find(|s| {
            s["tool_calls"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| &c["tool_call_id"] == id))
        });
        if let Some(step) = owner {
            add_result(step, id, content);
        }
    }

    fn finish(
        self,
        session_id: Option<String>,
        version: Option<&str>,
        model: Option<&str>,
        usage: Option<&ModelUsage>,
        cached: u64,
    ) -> Value {
        let mut agent = Map::new();
        agent.insert("name".into(), json!(self.agent));
        agent.insert("version".into(), json!(version.unwrap_or("unknown")));
        if let Some(m) = model {
            agent.insert("model_name".into(), json!(m));
        }
        let mut t = json!({
            "schema_version": "ATIF-v1.6",
            "session_id": session_id,
            "agent": agent,
            "steps": self.steps,
        });
        if let Some(u) = usage {
            let mut fm = json!({
                "total_prompt_tokens": u.input_tokens,
                "total_completion_tokens": u.output_tokens,
                "total_cached_tokens": cached,
                "total_steps": t["steps"].as_array().map_or(0, Vec::len),
            });
            if let Some(c) = u.cost_usd {
                fm["total_cost_usd"] = json!(c);
            }
            t["final_metrics"] = fm;
        }
        t
    }
}

fn append_message(step: &mut Value, text: &str) {
    if text.is_empty() {
        return;
    }
    let old = step["message"].as_str().unwrap_or_default();
    step["message"] = json!(if old.is_empty() {
        text.to_string()
    } else {
        format!("{old}\n{text}")
    });
}

fn add_call(step: &mut Value, id: &Value, name: &str, arguments: Value, result: Option<String>) {
    let call = json!({"tool_call_id": id, "function_name": name, "arguments": arguments});
    match step["tool_calls"].as_array_mut() {
        Some(calls) => calls.push(call),
        None => step["tool_calls"] = json!([call]),
    }
    if let Some(content) = result {
        add_result(step, id, content);
    }
}

fn add_result(step: &mut Value, id: &Value, content: String) {
    let obs = json!({"source_call_id": id, "content": content});
    match step["observation"]["results"].as_array_mut() {
        Some(results) => results.push(obs),
        None => step["observation"] = json!({"results": [obs]}),
    }
}

/// The HTTP status an error message names ("unexpected status 401", "API Error: 401",
/// "statusCode":401), if any.
fn status_in(message: &str) -> u64 {
    for marker in [
        "unexpected status ",
        "API Error: ",
        "status code ",
        "Error code: ",
    ] {
        if let Some(i) = message.find(marker) {
            let digits: String = message[i + marker.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(s) = digits.parse::<u64>() {
                if (400..600).contains(&s) {
                    return s;
                }
            }
        }
    }
    0
}

/// The error kind of a failure message: the status it names, else its words.
fn kind_of_message(message: &str) -> ErrorKind {
    let status = status_in(message);
    kind_of_text(message)
        .filter(|_| status == 0 || kind_of_status(status) == ErrorKind::ApiError)
        .unwrap_or_else(|| {
            if status > 0 {
                kind_of_status(status)
            } else {
                ErrorKind::ApiError
            }
        })
}

/// The error kind of a litellm exception class (`litellm.AuthenticationError`, as aider and
/// mini-swe-agent report them).
fn kind_of_litellm(class: &str) -> Option<ErrorKind> {
    Some(match class {
        "AuthenticationError" | "PermissionDeniedError" => ErrorKind::ApiAuth,
        "RateLimitError" => ErrorKind::ApiRateLimit,
        "NotFoundError" => ErrorKind::ModelNotFound,
        "ContextWindowExceededError" => ErrorKind::ContextWindowExceeded,
        "APIError"
        | "APIConnectionError"
        | "ServiceUnavailableError"
        | "InternalServerError"
        | "BadRequestError"
        | "Timeout"
        | "BadGatewayError" => ErrorKind::ApiError,
        _ => return None,
    })
}

/// The first `litellm.<Class>` in `text` with its line, when the class is a provider failure.
fn litellm_failure(text: &str) -> Option<(ErrorKind, String)> {
    for line in text.lines() {
        let Some(i) = line.find("litellm.") else {
            continue;
        };
        let class: String = line[i + 8..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        if let Some(kind) = kind_of_litellm(&class) {
            return Some((kind, line.trim().to_string()));
        }
    }
    None
}

/// codex `exec --json`: `thread.started`, `item.completed` (agent_message, reasoning,
/// command_execution, file_change, mcp_tool_call), `turn.completed` with usage, and
/// `turn.failed` / `error` for failures.
pub fn codex(
    text: &str,
    instruction: &str,
    version: Option<&str>,
    model: Option<&str>,
) -> StreamReport {
    let mut report = StreamReport::default();
    let mut atif = Atif::new("codex");
    atif.push("user", instruction);
    let mut session = None;
    let (mut input, mut output, mut cached, mut turns) = (0, 0, 0, 0);
    let mut failed: Option<String> = None;
    let mut last_error: Option<String> = None;
    let mut n = 0;
    for e in events(text) {
        n += 1;
        match str_at(&e, "type") {
            "thread.started" => {
                session = e.get("thread_id").and_then(Value::as_str).map(String::from)
            }
            "item.completed" => {
                let item = &e["item"];
                let id = item.get("id").cloned().unwrap_or(Value::Null);
                match str_at(item, "type") {
                    "agent_message" => {
                        let step = atif.push("agent", str_at(item, "text"));
                        if let Some(m) = model {
                            step["model_name"] = json!(m);
                        }
                    }
                    "reasoning" => {
                        atif.agent_step()["reasoning_content"] = json!(str_at(item, "text"));
                    }
                    "command_execution" => {
                        let mut out = str_at(item, "aggregated_output").to_string();
                        if let Some(code) = item.get("exit_code").and_then(Value::as_i64) {
                            if code != 0 {
                                out.push_str(&format!("\n(exit code {code})"));
                            }
                        }
                        add_call(
                            atif.agent_step(),
                            &id,
                            "shell",
                            json!({"command": str_at(item, "command")}),
                            Some(out),
                        );
                    }
                    "file_change" => add_call(
                        atif.agent_step(),
                        &id,
                        "apply_patch",
                        json!({"changes": item["changes"]}),
                        Some(str_at(item, "status").to_string()),
                    ),
                    "mcp_tool_call" => add_call(
                        atif.agent_step(),
                        &id,
                        &format!("{}.{}", str_at(item, "server"), str_at(item, "tool")),
                        item.get("arguments").cloned().unwrap_or(json!({})),
                        Some(item["result"].to_string()),
                    ),
                    _ => {}
                }
            }
            "turn.completed" => {
                let u = &e["usage"];
                input += u64_at(u, "input_tokens");
                cached += u64_at(u, "cached_input_tokens");
                output += u64_at(u, "output_tokens");
                turns += 1;
                last_error = None;
            }
            "turn.failed" => failed = Some(str_at(&e["error"], "message").to_string()),
            "error" => last_error = Some(str_at(&e, "message").to_string()),
            _ => {}
        }
    }
    if n == 0 {
        return report;
    }
    let requests = atif.agent_steps();
    if turns > 0 {
        report.usage = Some(ModelUsage {
            estimated_turns: 0,
            requests,
            turns,
            input_tokens: input,
            output_tokens: output,
            cost_usd: None,
            stop_reason: if failed.is_some() {
                "failed"
            } else {
                "completed"
            }
            .into(),
        });
    }
    // A turn that failed, or a run stopped while codex was still retrying a refused request.
    let failure = failed.or(last_error.filter(|m| status_in(m) > 0));
    if let Some(message) = failure {
        report.failure = Some(provider_failure(
            "codex",
            kind_of_message(&message),
            0,
            &message,
        ));
    }
    report.trajectory = Some(atif.finish(session, version, model, report.usage.as_ref(), cached));
    report
}

/// opencode `run --format json`: `step_start`, `text`, `tool_use` (with the tool's input and
/// output), `step_finish` with tokens and cost, `error`.
pub fn opencode(
    text: &str,
    instruction: &str,
    version: Option<&str>,
    model: Option<&str>,
) -> StreamReport {
    let mut report = StreamReport::default();
    let mut atif = Atif::new("opencode");
    atif.push("user", instruction);
    let mut session = None;
    let (mut input, mut output, mut cached, mut steps) = (0, 0, 0, 0);
    let mut cost = 0.0;
    let mut stop = String::new();
    let mut n = 0;
    for e in events(text) {
        n += 1;
        if session.is_none() {
            session = e.get("sessionID").and_then(Value::as_str).map(String::from);
        }
        let part = &e["part"];
        match str_at(&e, "type") {
            "step_start" => {
                let step = atif.push("agent", "");
                if let Some(m) = model {
                    step["model_name"] = json!(m);
                }
            }
            "text" => append_message(atif.agent_step(), str_at(part, "text")),
            "reasoning" => atif.agent_step()["reasoning_content"] = json!(str_at(part, "text")),
            "tool_use" => {
                let state = &part["state"];
                let result = state.get("output").or_else(|| state.get("error")).map(|o| {
                    o.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| o.to_string())
                });
                add_call(
                    atif.agent_step(),
                    &part["callID"],
                    str_at(part, "tool"),
                    state.get("input").cloned().unwrap_or(json!({})),
                    result,
                );
            }
            "step_finish" => {
                let t = &part["tokens"];
                let read = u64_at(&t["cache"], "read");
                let prompt = u64_at(t, "input") + read + u64_at(&t["cache"], "write");
                let completion = u64_at(t, "output") + u64_at(t, "reasoning");
                input += prompt;
                output += completion;
                cached += read;
                steps += 1;
                cost += part.get("cost").and_then(Value::as_f64).unwrap_or(0.0);
                stop = str_at(part, "reason").to_string();
                atif.agent_step()["metrics"] = json!({
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "cached_tokens": read,
                });
            }
            "error" => {
                let err = &e["error"];
                let data = &err["data"];
                let message = data
                    .get("message")
                    .and_then(Value::as_str)
                    .map(String::from)
                    .unwrap_or_else(|| err.to_string());
                let status = u64_at(data, "statusCode");
                let kind = if status > 0 {
                    kind_of_status(status)
                } else if str_at(err, "name") == "ProviderAuthError" {
                    ErrorKind::ApiAuth
                } else {
                    kind_of_message(&message)
                };
                report.failure = Some(provider_failure("opencode", kind, status, &message));
            }
            _ => {}
        }
    }
    if n == 0 {
        return report;
    }
    if steps > 0 {
        report.usage = Some(ModelUsage {
            estimated_turns: 0,
            requests: steps,
            turns: steps,
            input_tokens: input,
            output_tokens: output,
            cost_usd: Some(cost),
            stop_reason: stop,
        });
    }
    report.trajectory = Some(atif.finish(session, version, model, report.usage.as_ref(), cached));
    report
}

/// mini-swe-agent's trajectory file (`--output`): its chat messages (OpenAI format, each
/// assistant message with the provider's `response` and its usage under `extra`), and `info`
/// with `model_stats` (cost, API calls) and `exit_status` (an exception class name when the
/// run failed). `stdout` is its console output, read for a failure when the file is missing.
pub fn mini_swe_agent(
    traj: &str,
    stdout: &str,
    version: Option<&str>,
    model: Option<&str>,
) -> StreamReport {
    let mut report = StreamReport::default();
    let Ok(t) = serde_json::from_str::<Value>(traj) else {
        report.failure = litellm_failure(stdout).map(|(k, line)| {
            (
                k,
                format!("mini-swe-agent: the model provider failed: {line}"),
            )
        });
        return report;
    };
    let mut atif = Atif::new("mini-swe-agent");
    let (mut input, mut output, mut cached) = (0, 0, 0);
    let mut model_name = model.map(String::from);
    for m in t["messages"].as_array().into_iter().flatten() {
        let content = match &m["content"] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        match str_at(m, "role") {
            "system" => {
                atif.push("system", &content);
            }
            "user" => {
                atif.push("user", &content);
            }
            "assistant" => {
                let response = &m["extra"]["response"];
                let usage = &response["usage"];
                let read = u64_at(&usage["prompt_tokens_details"], "cached_tokens");
                input += u64_at(usage, "prompt_tokens");
                output += u64_at(usage, "completion_tokens");
                cached += read;
                if let Some(name) = response.get("model").and_then(Value::as_str) {
                    model_name = Some(name.to_string());
                }
                let step = atif.push("agent", &content);
                step["metrics"] = json!({
                    "prompt_tokens": u64_at(usage, "prompt_tokens"),
                    "completion_tokens": u64_at(usage, "completion_tokens"),
                    "cached_tokens": read,
                });
                for call in m["tool_calls"].as_array().into_iter().flatten() {
                    let f = &call["function"];
                    let args = f["arguments"]
                        .as_str()
                        .and_then(|a| serde_json::from_str(a).ok())
                        .unwrap_or_else(|| f["arguments"].clone());
                    add_call(step, &call["id"], str_at(f, "name"), args, None);
                }
            }
            "tool" => {
                let id = m["tool_call_id"].clone();
                atif.add_result_to_caller(&id, content);
            }
            _ => {}
        }
    }
    let info = &t["info"];
    let stats = &info["model_stats"];
    let exit = str_at(info, "exit_status");
    let requests = u64_at(stats, "api_calls");
    if requests > 0 || input > 0 {
        report.usage = Some(ModelUsage {
            estimated_turns: 0,
            requests,
            turns: atif.agent_steps(),
            input_tokens: input,
            output_tokens: output,
            cost_usd: stats.get("instance_cost").and_then(Value::as_f64),
            stop_reason: exit.to_string(),
        });
    }
    if let Some(kind) = kind_of_litellm(exit) {
        let last = t["messages"]
            .as_array()
            .and_then(|m| m.last())
            .map(|m| str_at(m, "content").to_string())
            .unwrap_or_default();
        report.failure = Some((
            kind,
            format!("mini-swe-agent: the model provider failed ({exit}): {last}"),
        ));
    }
    report.trajectory = Some(atif.finish(
        None,
        version,
        model_name.as_deref(),
        report.usage.as_ref(),
        cached,
    ));
    report
}

/// The text parts of an OpenHands SDK content list (`[{"type": "text", "text": ...}]`).
fn oh_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The error kind of an OpenHands SDK exception class (`openhands.sdk.llm.exceptions`).
fn kind_of_openhands(class: &str) -> Option<ErrorKind> {
    Some(match class {
        "LLMAuthenticationError" => ErrorKind::ApiAuth,
        "LLMRateLimitError" => ErrorKind::ApiRateLimit,
        "LLMContextWindowExceedError" | "LLMContextWindowTooSmallError" => {
            ErrorKind::ContextWindowExceeded
        }
        "LLMTimeoutError"
        | "LLMServiceUnavailableError"
        | "LLMBadRequestError"
        | "LLMContentPolicyViolationError"
        | "LLMNoResponseError"
        | "LLMResponseError" => ErrorKind::ApiError,
        _ => return None,
    })
}

/// rollout's OpenHands SDK runner: one JSON line per conversation event (`SystemPromptEvent`,
/// `MessageEvent` from the user or the agent, `ActionEvent` with its tool call,
/// `ObservationEvent` / `AgentErrorEvent` answering it, `ConversationErrorEvent`), then
/// `rollout.result` with the final status, the error (`type` is the SDK's exception class) and
/// the accumulated metrics (tokens, cost, one entry per model response).
pub fn openhands_sdk(stream: &str, version: Option<&str>, model: Option<&str>) -> StreamReport {
    let mut report = StreamReport::default();
    let mut atif = Atif::new("openhands-sdk");
    let mut any = false;
    let mut result = Value::Null;
    let mut conversation_error: Option<(ErrorKind, String)> = None;
    for e in events(stream) {
        any = true;
        match str_at(&e, "kind") {
            "SystemPromptEvent" => {
                atif.push("system", str_at(&e["system_prompt"], "text"));
            }
            "MessageEvent" => {
                let text = oh_text(&e["llm_message"]["content"]);
                if str_at(&e, "source") == "user" {
                    atif.push("user", &text);
                } else {
                    append_message(atif.agent_step(), &text);
                }
            }
            "ActionEvent" => {
                let step = atif.agent_step();
                let thought = oh_text(&e["thought"]);
                append_message(step, &thought);
                if let Some(r) = e["reasoning_content"].as_str().filter(|r| !r.is_empty()) {
                    step["reasoning_content"] = json!(r);
                }
                let call = &e["tool_call"];
                let arguments = call["arguments"]
                    .as_str()
                    .and_then(|a| serde_json::from_str(a).ok())
                    .unwrap_or_else(|| e["action"].clone());
                add_call(
                    step,
                    &e["tool_call_id"],
                    str_at(&e, "tool_name"),
                    arguments,
                    None,
                );
            }
            "ObservationEvent" | "AgentErrorEvent" | "UserRejectObservation" => {
                let id = e["tool_call_id"].clone();
                let content = if str_at(&e, "kind") == "ObservationEvent" {
                    oh_text(&e["observation"]["content"])
                } else {
                    e["error"]
                        .as_str()
                        .or_else(|| e["rejection_reason"].as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                atif.add_result_to_caller(&id, content);
            }
            "ConversationErrorEvent" => {
                let code = str_at(&e, "code");
                let kind = kind_of_openhands(code).or_else(|| {
                    (e["classification"]["kind"] == "auth").then_some(ErrorKind::ApiAuth)
                });
                if let Some(kind) = kind {
                    conversation_error = Some((
                        kind,
                        format!(
                            "openhands-sdk: the model provider failed ({code}): {}",
                            str_at(&e, "detail")
                        ),
                    ));
                }
            }
            "rollout.result" => result = e,
            _ => {}
        }
    }
    if !any {
        return report;
    }
    let metrics = &result["metrics"];
    let total = &metrics["accumulated_token_usage"];
    let requests = metrics["token_usages"].as_array().map_or(0, Vec::len) as u64;
    let (input, output) = (
        u64_at(total, "prompt_tokens"),
        u64_at(total, "completion_tokens"),
    );
    if requests > 0 || input > 0 {
        report.usage = Some(ModelUsage {
            estimated_turns: 0,
            requests,
            turns: atif.agent_steps(),
            input_tokens: input,
            output_tokens: output,
            // litellm prices only the models it knows: 0 means "not priced", not "free".
            cost_usd: metrics["accumulated_cost"].as_f64().filter(|c| *c > 0.0),
            stop_reason: str_at(&result, "execution_status").to_string(),
        });
    }
    let error = &result["error"];
    if error.is_object() {
        let class = str_at(error, "type");
        let message = str_at(error, "message");
        report.failure = litellm_failure(message)
            .map(|(kind, _)| kind)
            .or_else(|| kind_of_openhands(class))
            .map(|kind| {
                (
                    kind,
                    format!("openhands-sdk: the model provider failed ({class}): {message}"),
                )
            });
    }
    if report.failure.is_none() {
        report.failure = conversation_error;
    }
    let model_name = result["model"]
        .as_str()
        .map(String::from)
        .or_else(|| model.map(String::from));
    report.trajectory = Some(atif.finish(
        None,
        version,
        model_name.as_deref(),
        report.usage.as_ref(),
        u64_at(total, "cache_read_tokens"),
    ));
    report
}

/// aider: usage from its analytics log (`--analytics-log`, one `message_send` event per model
/// response with `prompt_tokens`, `completion_tokens` and `cost`), the trajectory from its chat
/// history (`#### ` lines are the user's, `> ` lines aider's own notes, the rest the model's),
/// a failure from the `litellm.<Error>` its console output names.
pub fn aider(
    analytics: &str,
    history: &str,
    stdout: &str,
    instruction: &str,
    version: Option<&str>,
    model: Option<&str>,
) -> StreamReport {
    let mut report = StreamReport::default();
    let (mut input, mut output, mut sends) = (0, 0, 0);
    let mut cost = None;
    for e in events(analytics) {
        if str_at(&e, "event") == "message_send" {
            let p = &e["properties"];
            input += u64_at(p, "prompt_tokens");
            output += u64_at(p, "completion_tokens");
            sends += 1;
            if let Some(c) = p.get("total_cost").and_then(Value::as_f64) {
                cost = Some(c);
            }
        }
    }
    if sends > 0 {
        report.usage = Some(ModelUsage {
            estimated_turns: 0,
            requests: sends,
            turns: sends,
            input_tokens: input,
            output_tokens: output,
            cost_usd: cost,
            stop_reason: String::new(),
        });
    } else {
        report.failure = litellm_failure(stdout)
            .or_else(|| litellm_failure(history))
            .map(|(k, line)| (k, format!("aider: the model provider failed: {line}")));
    }
    if history.trim().is_empty() && analytics.trim().is_empty() {
        return report;
    }
    let mut atif = Atif::new("aider");
    let mut saw_user = false;
    for line in history.lines() {
        if let Some(text) = line.strip_prefix("#### ") {
            let last_user = atif.steps.last().is_some_and(|s| s["source"] == "user");
            if last_user {
                append_message(atif.steps.last_mut().expect("a step"), text.trim_end());
            } else {
                atif.push("user", text.trim_end());
            }
            saw_user = true;
        } else if let Some(note) = line.strip_prefix("> ").or(line.strip_prefix(">")) {
            if !saw_user {
                continue; // the session header (command line, versions)
            }
            let last_system = atif.steps.last().is_some_and(|s| s["source"] == "system");
            if !last_system {
                atif.push("system", "");
            }
            append_message(atif.steps.last_mut().expect("a step"), note.trim_end());
        } else if saw_user
            && !(line.trim().is_empty()
                && atif.steps.last().is_some_and(|s| s["source"] != "agent"))
        {
            let step = atif.agent_step();
            let old = step["message"].as_str().unwrap_or_default();
            step["message"] = json!(if old.is_empty() {
                line.to_string()
            } else {
                format!("{old}\n{line}")
            });
        }
    }
    if atif.steps.is_empty() {
        atif.push("user", instruction);
    }
    for step in &mut atif.steps {
        if let Some(m) = step["message"].as_str() {
            step["message"] = json!(m.trim_end());
        }
    }
    report.trajectory = Some(atif.finish(None, version, model, report.usage.as_ref(), 0));
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODEX: &str = include_str!("../tests/samples/codex.jsonl");
    const CODEX_401: &str = include_str!("../tests/samples/codex-401.jsonl");
    const OPENCODE: &str = include_str!("../tests/samples/opencode.jsonl");
    const OPENCODE_401: &str = include_str!("../tests/samples/opencode-401.jsonl");
    const QWEN: &str = include_str!("../tests/samples/qwen-code.jsonl");
    const QWEN_401: &str = include_str!("../tests/samples/qwen-code-401.jsonl");
    const MINI: &str = include_str!("../tests/samples/mini-swe-agent.traj.json");
    const OPENHANDS: &str = include_str!("../tests/samples/openhands-sdk.jsonl");
    const OPENHANDS_401: &str = include_str!("../tests/samples/openhands-sdk-401.jsonl");
    const MINI_401: &str = include_str!("../tests/samples/mini-swe-agent-401.traj.json");
    const AIDER_ANALYTICS: &str = include_str!("../tests/samples/aider.analytics.jsonl");
    const AIDER_HISTORY: &str = include_str!("../tests/samples/aider.chat.history.md");
    const AIDER_401: &str = include_str!("../tests/samples/aider-401.txt");

    fn first_call(t: &Value) -> &Value {
        t["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|s| s["tool_calls"].as_array().and_then(|c| c.first()))
            .unwrap_or_else(|| panic!("a tool call in {t:#}"))
    }

    #[test]
    fn codex_json_events_give_usage_and_a_trajectory() {
        let r = report(
            "codex",
            CODEX,
            &[],
            "Write hello",
            Some("0.171.0"),
            Some("gpt-scripted"),
        );
        assert_eq!(r.failure, None);
        let u = r.usage.unwrap();
        assert_eq!((u.input_tokens, u.output_tokens, u.turns), (200, 40, 1));
        assert_eq!(u.stop_reason, "completed");
        let t = r.trajectory.unwrap();
        assert_eq!(t["agent"]["name"], "codex");
        assert_eq!(t["session_id"], "01a23d0b-7cb3-7f93-8598-2ff791a32321");
        let steps = t["steps"].as_array().unwrap();
        assert_eq!(steps[0]["message"], "Write hello");
        assert_eq!(steps[1]["message"], "I will write the file.");
        let call = first_call(&t);
        assert_eq!(call["function_name"], "shell");
        assert!(call["arguments"]["command"]
            .as_str()
            .unwrap()
            .contains("/app/hello.txt"));
        assert_eq!(
            steps[1]["observation"]["results"][0]["source_call_id"],
            "item_2"
        );
        assert_eq!(
            steps.last().unwrap()["message"],
            "Done: /app/hello.txt holds the greeting."
        );
        assert_eq!(t["final_metrics"]["total_prompt_tokens"], 200);
    }

    #[test]
    fn codex_refused_key_is_api_auth_even_when_stopped_while_retrying() {
        let r = report("codex", CODEX_401, &[], "i", None, None);
        let (kind, message) = r.failure.unwrap();
        assert_eq!(kind, ErrorKind::ApiAuth);
        assert!(message.contains("401"), "{message}");
        // Stopped by rollout at the first retry: no turn.failed yet.
        let cut: String = CODEX_401.lines().take(4).collect::<Vec<_>>().join("\n");
        assert_eq!(
            report("codex", &cut, &[], "i", None, None)
                .failure
                .unwrap()
                .0,
            ErrorKind::ApiAuth
        );
        // A transient error followed by a completed turn is no failure.
        let recovered = format!(
            "{}\n{CODEX}",
            r#"{"type":"error","message":"Reconnecting... 1/5 (unexpected status 429 Too Many Requests)"}"#
        );
        assert_eq!(
            report("codex", &recovered, &[], "i", None, None).failure,
            None
        );
    }

    #[test]
    fn opencode_json_events_give_usage_cost_and_a_trajectory() {
        let r = report(
            "opencode",
            OPENCODE,
            &[],
            "Write hello",
            None,
            Some("rollout/gpt-scripted"),
        );
        assert_eq!(r.failure, None);
        let u = r.usage.unwrap();
        assert_eq!((u.input_tokens, u.output_tokens, u.requests), (200, 40, 2));
        assert_eq!(u.cost_usd, Some(0.0));
        assert_eq!(u.stop_reason, "stop");
        let t = r.trajectory.unwrap();
        assert_eq!(t["session_id"], "ses_dc2ef347cffeGRRaGBar0h2thx");
        let call = first_call(&t);
        assert_eq!(call["function_name"], "bash");
        assert_eq!(
            call["arguments"]["command"],
            "printf 'Hello, world!\\n' > /app/hello.txt"
        );
        let steps = t["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 3, "{t:#}");
        assert_eq!(
            steps[1]["observation"]["results"][0]["content"],
            "(no output)"
        );
        assert_eq!(steps[1]["metrics"]["prompt_tokens"], 100);
        let r = report("opencode", OPENCODE_401, &[], "i", None, None);
        let (kind, message) = r.failure.unwrap();
        assert_eq!(kind, ErrorKind::ApiAuth);
        assert!(
            message.contains("HTTP 401") && message.contains("Incorrect API key"),
            "{message}"
        );
    }

    #[test]
    fn qwen_code_stream_json_is_read_like_claude_code() {
        let r = report("qwen-code", QWEN, &[], "Write hello", Some("0.24.4"), None);
        assert_eq!(r.failure, None);
        let u = r.usage.unwrap();
        assert_eq!((u.input_tokens, u.output_tokens, u.turns), (200, 40, 2));
        let t = r.trajectory.unwrap();
        assert_eq!(t["agent"]["name"], "qwen-code");
        assert_eq!(t["agent"]["model_name"], "gpt-scripted");
        assert_eq!(first_call(&t)["function_name"], "run_shell_command");
        let r = report("qwen-code", QWEN_401, &[], "i", None, None);
        let (kind, message) = r.failure.unwrap();
        assert_eq!(kind, ErrorKind::ApiAuth);
        assert!(
            message.starts_with("qwen-code:") && message.contains("401"),
            "{message}"
        );
    }

    /// Samples: rollout's runner with openhands-sdk 1.58.2 against the scripted OpenAI server
    /// (system prompt and tool descriptions shortened).
    #[test]
    fn openhands_sdk_events_give_usage_steps_and_typed_failures() {
        let r = report("openhands-sdk", OPENHANDS, &[], "i", Some("1.58.2"), None);
        assert_eq!(r.failure, None);
        let u = r.usage.unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.requests, u.turns),
            (200, 40, 2, 1)
        );
        assert_eq!(u.cost_usd, None, "an unpriced model is not free");
        assert_eq!(u.stop_reason, "finished");
        let t = r.trajectory.unwrap();
        assert_eq!(t["agent"]["name"], "openhands-sdk");
        assert_eq!(t["agent"]["version"], "1.58.2");
        assert_eq!(t["agent"]["model_name"], "openai/gpt-scripted");
        let sources: Vec<&str> = t["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["source"].as_str().unwrap())
            .collect();
        assert_eq!(sources, ["system", "user", "agent"]);
        let agent = &t["steps"][2];
        assert_eq!(
            agent["message"],
            "I will write the file.\nDone: /app/hello.txt holds the greeting."
        );
        let call = first_call(&t);
        assert_eq!(call["function_name"], "terminal");
        assert_eq!(
            call["arguments"]["command"],
            "printf 'Hello, world!\\n' > /app/hello.txt"
        );
        let results = agent["observation"]["results"].as_array().unwrap();
        assert_eq!(results[0]["source_call_id"], call["tool_call_id"]);
        assert_eq!(t["final_metrics"]["total_prompt_tokens"], 200);

        let r = report("openhands-sdk", OPENHANDS_401, &[], "i", None, None);
        let (kind, message) = r.failure.unwrap();
        assert_eq!(kind, ErrorKind::ApiAuth);
        assert!(
            message.starts_with("openhands-sdk:") && message.contains("Incorrect API key"),
            "{message}"
        );
        assert_eq!(r.usage, None, "no model response, no usage");
        // Without the runner's last line (killed), the conversation's error event still types it.
        let cut: String = OPENHANDS_401
            .lines()
            .filter(|l| !l.contains("rollout.result"))
            .map(|l| format!("{l}\n"))
            .collect();
        let r = report("openhands-sdk", &cut, &[], "i", None, None);
        assert_eq!(r.failure.unwrap().0, ErrorKind::ApiAuth);
        assert!(report("openhands-sdk", "", &[], "i", None, None)
            .trajectory
            .is_none());
    }

    #[test]
    fn mini_swe_agent_trajectory_gives_usage_and_steps() {
        let r = report(
            "mini-swe-agent",
            "",
            &[MINI.to_string()],
            "i",
            Some("2.4.6"),
            None,
        );
        assert_eq!(r.failure, None);
        let u = r.usage.unwrap();
        assert_eq!((u.input_tokens, u.output_tokens, u.requests), (200, 40, 2));
        assert_eq!(u.cost_usd, Some(0.0));
        let t = r.trajectory.unwrap();
        assert_eq!(t["agent"]["model_name"], "gpt-scripted");
        let steps = t["steps"].as_array().unwrap();
        assert_eq!(steps[0]["source"], "system");
        assert_eq!(steps[1]["source"], "user");
        let call = first_call(&t);
        assert_eq!(call["function_name"], "bash");
        assert_eq!(
            call["arguments"]["command"],
            "printf 'Hello, world!\\n' > /app/hello.txt"
        );
        assert!(steps[2]["observation"]["results"][0]["content"]
            .as_str()
            .unwrap()
            .contains("\"returncode\": 0"));
        let r = report(
            "mini-swe-agent",
            "",
            &[MINI_401.to_string()],
            "i",
            None,
            None,
        );
        assert_eq!(r.failure.unwrap().0, ErrorKind::ApiAuth);
        // No trajectory file (killed early): the console output tells.
        let r = report(
            "mini-swe-agent",
            "litellm.AuthenticationError: AuthenticationError: OpenAIException - Incorrect API key",
            &[String::new()],
            "i",
            None,
            None,
        );
        assert_eq!(r.failure.unwrap().0, ErrorKind::ApiAuth);
    }

    #[test]
    fn aider_analytics_and_history_give_usage_and_steps() {
        let native = [AIDER_ANALYTICS.to_string(), AIDER_HISTORY.to_string()];
        let r = report("aider", "", &native, "i", Some("0.86.2"), None);
        assert_eq!(r.failure, None);
        let u = r.usage.unwrap();
        assert_eq!(u.requests, 1);
        assert!(u.input_tokens > 0 && u.output_tokens > 0, "{u:?}");
        assert_eq!(u.cost_usd, Some(0.0));
        let t = r.trajectory.unwrap();
        let steps = t["steps"].as_array().unwrap();
        assert_eq!(steps[0]["source"], "user", "{t:#}");
        assert!(steps[0]["message"].as_str().unwrap().contains("hello.txt"));
        assert_eq!(steps[1]["source"], "agent");
        assert!(
            steps[1]["message"]
                .as_str()
                .unwrap()
                .contains("Hello, world!"),
            "{t:#}"
        );
        assert!(
            steps[2]["message"]
                .as_str()
                .unwrap()
                .contains("Applied edit to hello.txt"),
            "{t:#}"
        );
        let r = report(
            "aider",
            AIDER_401,
            &[String::new(), String::new()],
            "i",
            None,
            None,
        );
        let (kind, message) = r.failure.unwrap();
        assert_eq!(kind, ErrorKind::ApiAuth);
        assert!(message.contains("Incorrect"), "{message}");
    }

    #[test]
    fn failure_messages_are_classified_by_status_then_words() {
        assert_eq!(status_in("unexpected status 401 Unauthorized: x"), 401);
        assert_eq!(status_in("[API Error: 429 slow down]"), 429);
        assert_eq!(status_in("nothing here 401"), 0);
        assert_eq!(
            kind_of_message("unexpected status 404 Not Found"),
            ErrorKind::ModelNotFound
        );
        assert_eq!(
            kind_of_message("unexpected status 400 Bad Request: context_length_exceeded"),
            ErrorKind::ContextWindowExceeded
        );
        assert_eq!(kind_of_message("something broke"), ErrorKind::ApiError);
        assert_eq!(
            kind_of_litellm("RateLimitError"),
            Some(ErrorKind::ApiRateLimit)
        );
        assert_eq!(kind_of_litellm("Submitted"), None);
    }

    #[test]
    fn empty_logs_give_nothing() {
        for name in ["codex", "opencode", "qwen-code"] {
            assert_eq!(
                report(name, "", &[], "i", None, None),
                StreamReport::default()
            );
        }
        let r = report("mini-swe-agent", "", &[String::new()], "i", None, None);
        assert_eq!(r, StreamReport::default());
        let r = report(
            "aider",
            "",
            &[String::new(), String::new()],
            "i",
            None,
            None,
        );
        assert_eq!(r, StreamReport::default());
    }
}
