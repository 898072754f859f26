//! The built-in LLM agent (`-a rollout-agent -m MODEL`): a terminal agent that talks to any
//! OpenAI-compatible Chat Completions endpoint, or to Anthropic's Messages API for
//! `-m anthropic/...`, and works through three tools run inside the environment: `bash`,
//! `read_file` and `write_file`.
//!
//! It stops at a final answer (a reply without tool calls), after `max_turns`, when a token or
//! cost budget is spent, or at the agent timeout; every tool result tells the model how much
//! time is left. Every request, reply, tool call and result, with token counts and latency, is
//! written to `agent/trajectory.json` (Harbor's ATIF trajectory format) after each turn (so a
//! killed run keeps its trajectory).
//! Rate limits (429), 5xx, connection errors, timeouts and 200 replies that are not replies are
//! retried with backoff, honouring `Retry-After`; what remains is classified (`api_rate_limit`,
//! `api_auth`, `context_window_exceeded`, `model_not_found`, `api_error`) and ends the run with
//! the usage so far. What a weak model sends is answered, not mistaken for an answer: tool
//! arguments that are not a JSON object, empty replies, replies cut at the output limit and
//! the same call repeated are each told to the model and marked in the step's `outcome`.

use crate::mcp::McpSession;
use crate::{Agent, AgentContext, AgentError};
use async_trait::async_trait;
use chrono::Utc;
use rollout_core::job_config::AgentSpec;
use rollout_core::result::{AgentInfo, CommandOutcome, ModelUsage};
use rollout_core::{ErrorKind, Task};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// Names under which the agent is known (`-a rollout-agent`).
pub const NAMES: [&str; 2] = ["rollout-agent", "terminus"];

const SYSTEM_PROMPT: &str = "You are an autonomous agent solving a task inside a Linux container. \
You act only through the tools: `bash` runs a shell command (non-interactive; each call is a new shell \
in the task's working directory), `read_file` reads a file, `write_file` writes one. Work step by \
step, check your work, and when the task is done reply with a short summary and no tool call. \
Do not ask the user questions: nobody will answer.";

/// Which API the model is reached through.
#[derive(Debug, Clone, PartialEq)]
pub enum Api {
    /// OpenAI-compatible Chat Completions (`{base}/chat/completions`).
    OpenAi {
        base_url: String,
        api_key: Option<String>,
    },
    /// Anthropic Messages (`{base}/v1/messages`).
    Anthropic {
        base_url: String,
        api_key: Option<String>,
    },
}

/// Settings of the agent (job-file `kwargs`).
#[derive(Debug, Clone, PartialEq)]
pub struct LlmSettings {
    pub max_turns: u64,
    pub max_total_tokens: Option<u64>,
    pub max_cost_usd: Option<f64>,
    pub input_cost_per_mtok: Option<f64>,
    pub output_cost_per_mtok: Option<f64>,
    pub max_output_tokens: u64,
    pub temperature: Option<f64>,
    /// Bytes of each tool result shown to the model (the tail is kept).
    pub tool_output_cap: usize,
    /// Longest a single `bash` call may run.
    pub command_timeout: Duration,
    /// API retries (on 429, 5xx, connection errors) and the first backoff.
    pub api_retries: u32,
    pub api_backoff: Duration,
    /// Longest a single model request may take.
    pub request_timeout: Duration,
}

impl Default for LlmSettings {
    fn default() -> Self {
        Self {
            max_turns: 50,
            max_total_tokens: None,
            max_cost_usd: None,
            input_cost_per_mtok: None,
            output_cost_per_mtok: None,
            max_output_tokens: 4096,
            temperature: None,
            tool_output_cap: 16 * 1024,
            command_timeout: Duration::from_secs(180),
            api_retries: 5,
            api_backoff: Duration::from_secs(1),
            request_timeout: Duration::from_secs(300),
        }
    }
}

/// The built-in LLM agent.
pub struct LlmAgent {
    name: String,
    model: String,
    api: Api,
    settings: LlmSettings,
    client: reqwest::Client,
}

fn kw_f64(spec: &AgentSpec, key: &str) -> Result<Option<f64>, String> {
    match spec.kwargs.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("agent {}: kwargs.{key} must be a number", spec.name)),
    }
}

impl LlmAgent {
    /// Build from a job-file entry: the model comes from `model_name` (`-m`), the endpoint from
    /// `OPENAI_BASE_URL`/`OPENAI_API_KEY` (or `ANTHROPIC_BASE_URL`/`ANTHROPIC_API_KEY` for
    /// `anthropic/...` models), the rest from `kwargs`.
    pub fn from_spec(spec: &AgentSpec) -> Result<Self, String> {
        let model = spec.model_name.clone().ok_or_else(|| {
            format!(
                "agent {}: give the model with -m MODEL (or model_name in the job file)",
                spec.name
            )
        })?;
        let env = |k: &str| {
            spec.env
                .get(k)
                .cloned()
                .or_else(|| std::env::var(k).ok())
                .filter(|v| !v.is_empty())
        };
        let (api, model) = match model.strip_prefix("anthropic/") {
            Some(m) => (
                Api::Anthropic {
                    base_url: env("ANTHROPIC_BASE_URL")
                        .unwrap_or_else(|| "https://api.anthropic.com".into()),
                    api_key: env("ANTHROPIC_API_KEY"),
                },
                m.to_string(),
            ),
            None => (
                Api::OpenAi {
                    base_url: env("OPENAI_BASE_URL")
                        .unwrap_or_else(|| "https://api.openai.com/v1".into()),
                    api_key: env("OPENAI_API_KEY"),
                },
                model.strip_prefix("openai/").unwrap_or(&model).to_string(),
            ),
        };
        let d = LlmSettings::default();
        let secs = |key: &str, default: Duration| -> Result<Duration, String> {
            Ok(kw_f64(spec, key)?.map_or(default, |s| Duration::from_secs_f64(s.max(0.0))))
        };
        let settings = LlmSettings {
            max_turns: kw_f64(spec, "max_turns")?.map_or(d.max_turns, |v| v.max(1.0) as u64),
            max_total_tokens: kw_f64(spec, "max_total_tokens")?.map(|v| v as u64),
            max_cost_usd: kw_f64(spec, "max_cost_usd")?,
            input_cost_per_mtok: kw_f64(spec, "input_cost_per_mtok")?,
            output_cost_per_mtok: kw_f64(spec, "output_cost_per_mtok")?,
            max_output_tokens: kw_f64(spec, "max_output_tokens")?
                .map_or(d.max_output_tokens, |v| v as u64),
            temperature: kw_f64(spec, "temperature")?,
            tool_output_cap: kw_f64(spec, "tool_output_cap")?
                .map_or(d.tool_output_cap, |v| v as usize),
            command_timeout: secs("command_timeout_sec", d.command_timeout)?,
            api_retries: kw_f64(spec, "api_retries")?.map_or(d.api_retries, |v| v as u32),
            api_backoff: secs("api_backoff_sec", d.api_backoff)?,
            request_timeout: secs("request_timeout_sec", d.request_timeout)?,
        };
        if settings.max_cost_usd.is_some()
            && (settings.input_cost_per_mtok.is_none() || settings.output_cost_per_mtok.is_none())
        {
            return Err(format!(
                "agent {}: max_cost_usd needs input_cost_per_mtok and output_cost_per_mtok in kwargs",
                spec.name
            ));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("agent {}: cannot build an HTTP client: {e}", spec.name))?;
        Ok(Self {
            name: spec.name.clone(),
            model,
            api,
            settings,
            client,
        })
    }
}

/// One tool call the model asked for.
#[derive(Debug, Clone)]
struct ToolCall {
    id: String,
    name: String,
    input: Value,
    /// Why the call's arguments cannot be used (not JSON, not an object): the tool is not run
    /// and the model is told so.
    bad_arguments: Option<String>,
}

/// One model reply, provider-neutral.
#[derive(Debug, Clone)]
struct Reply {
    text: String,
    calls: Vec<ToolCall>,
    input_tokens: u64,
    output_tokens: u64,
    /// Whether the provider reported token usage (otherwise the counts are estimated).
    usage_reported: bool,
    /// Why the model stopped, in OpenAI's words (`stop`, `tool_calls`, `length`,
    /// `content_filter`; Anthropic's are mapped), when the provider said.
    finish: Option<String>,
    /// The provider's message, appended to the conversation (tool-call arguments that are not
    /// a JSON object replaced by `{}`, missing call ids filled in: servers refuse their own
    /// malformed calls when they are sent back).
    raw_message: Value,
}

/// The input of a tool call from its `arguments` (OpenAI sends a JSON text): a JSON object,
/// or why it is not one.
fn parse_arguments(raw: Option<&Value>) -> Result<Value, String> {
    match raw {
        None | Some(Value::Null) => Ok(json!({})),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(json!({})),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(other) => Err(format!(
                "its arguments are JSON but not an object: {}",
                cap_text(&other.to_string(), 300)
            )),
            Err(e) => Err(format!(
                "its arguments are not valid JSON ({e}): {}",
                cap_text(s, 300)
            )),
        },
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(other) => Err(format!(
            "its arguments are not a JSON object: {}",
            cap_text(&other.to_string(), 300)
        )),
    }
}

/// Tokens of `bytes` of text, estimated (about 4 bytes a token) for providers that report no
/// usage.
fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4).max(1)
}

/// A transport failure in words that tell a timeout from a refused connection (reqwest's own
/// text is the same for both), with the underlying causes.
fn transport_error(e: &reqwest::Error, timeout: Duration) -> String {
    use std::error::Error as _;
    let mut chain = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !chain.contains(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        source = s.source();
    }
    if e.is_timeout() {
        format!(
            "timed out: no reply within {timeout:?} (kwargs.request_timeout_sec; a slow model needs more) [{chain}]"
        )
    } else if e.is_connect() {
        format!("cannot connect: is the model server running and reachable from here? [{chain}]")
    } else {
        chain
    }
}

/// Consecutive empty replies (no text, no tool call) after which the agent gives up.
const MAX_EMPTY_REPLIES: u32 = 3;
/// Consecutive turns with the same tool calls after which the model is warned, and after which
/// the agent stops.
const REPEAT_WARN: u32 = 3;
const MAX_REPEATS: u32 = 5;

/// A provider error after retries.
#[derive(Debug)]
struct ApiFailure {
    kind: ErrorKind,
    message: String,
}

fn tools_schema() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "bash",
            "Run a shell command in the task environment and return its exit code, stdout and stderr.",
            json!({"type": "object", "properties": {"command": {"type": "string", "description": "the command"}}, "required": ["command"]}),
        ),
        (
            "read_file",
            "Read a text file from the task environment.",
            json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
        ),
        (
            "write_file",
            "Write a text file in the task environment (parent directories are created).",
            json!({"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}, "required": ["path", "content"]}),
        ),
    ]
}

/// Classify a provider's HTTP error answer.
fn classify(status: u16, body: &str) -> ErrorKind {
    let b = body.to_ascii_lowercase();
    if b.contains("context_length_exceeded")
        || b.contains("maximum context length")
        || b.contains("prompt is too long")
        || b.contains("context window")
        // llama.cpp's server
        || b.contains("exceed_context_size_error")
        || b.contains("exceeds the available context size")
    {
        return ErrorKind::ContextWindowExceeded;
    }
    match status {
        401 | 403 => ErrorKind::ApiAuth,
        404 => ErrorKind::ModelNotFound,
        429 => ErrorKind::ApiRateLimit,
        _ if b.contains("model_not_found")
            || (b.contains("model") && b.contains("does not exist")) =>
        {
            ErrorKind::ModelNotFound
        }
        _ => ErrorKind::ApiError,
    }
}

fn transient(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504 | 529)
}

/// Keep the tail of `s` within `cap` bytes (on a char boundary), noting the cut.
fn cap_text(s: &str, cap: usize) -> String {
    if s.len() <= cap {
        return s.to_string();
    }
    let mut start = s.len() - cap;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!(
        "[output truncated: showing the last {cap} of {} bytes]\n{}",
        s.len(),
        &s[start..]
    )
}

impl LlmAgent {
    fn request_body(
        &self,
        system: &str,
        messages: &[Value],
        extra: &[(String, String, Value)],
    ) -> Value {
        let s = &self.settings;
        let all_tools = || {
            tools_schema()
                .into_iter()
                .map(|(n, d, p)| (n.to_string(), d.to_string(), p))
                .chain(extra.iter().cloned())
        };
        match &self.api {
            Api::OpenAi { .. } => {
                let mut all = vec![json!({"role": "system", "content": system})];
                all.extend(messages.iter().cloned());
                let tools: Vec<Value> = all_tools()
                    .map(|(n, d, p)| json!({"type": "function", "function": {"name": n, "description": d, "parameters": p}}))
                    .collect();
                let mut body = json!({"model": self.model, "messages": all, "tools": tools, "max_tokens": s.max_output_tokens});
                if let Some(t) = s.temperature {
                    body["temperature"] = json!(t);
                }
                body
            }
            Api::Anthropic { .. } => {
                let tools: Vec<Value> = all_tools()
                    .map(|(n, d, p)| json!({"name": n, "description": d, "input_schema": p}))
                    .collect();
                let mut body = json!({"model": self.model, "system": system, "messages": messages, "tools": tools, "max_tokens": s.max_output_tokens});
                if let Some(t) = s.temperature {
                    body["temperature"] = json!(t);
                }
                body
            }
        }
    }

    /// Whether `v` has the shape of a reply (a 200 without it is retried, its body kept).
    fn shape_error(&self, v: &Value) -> Option<&'static str> {
        match &self.api {
            Api::OpenAi { .. } => (!v
                .pointer("/choices/0/message")
                .is_some_and(Value::is_object))
            .then_some("a reply without choices[0].message"),
            Api::Anthropic { .. } => (!v.get("content").is_some_and(Value::is_array))
                .then_some("a reply without a content list"),
        }
    }

    fn parse_reply(&self, v: &Value, turn: u64) -> Result<Reply, String> {
        match &self.api {
            Api::OpenAi { .. } => {
                let msg = v
                    .pointer("/choices/0/message")
                    .filter(|m| m.is_object())
                    .ok_or("the reply has no choices[0].message")?;
                let mut raw = msg.clone();
                let mut calls = Vec::new();
                if let Some(list) = raw.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    for (i, c) in list.iter_mut().enumerate() {
                        if !c.is_object() {
                            *c = json!({"type": "function", "function": {"name": "", "arguments": "{}"}});
                        }
                        let id = match c["id"].as_str().filter(|s| !s.is_empty()) {
                            Some(id) => id.to_string(),
                            None => {
                                let id = format!("call_{turn}_{i}");
                                c["id"] = json!(id);
                                id
                            }
                        };
                        let name = c
                            .pointer("/function/name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        let (input, bad_arguments) =
                            match parse_arguments(c.pointer("/function/arguments")) {
                                Ok(input) => (input, None),
                                Err(why) => {
                                    if let Some(f) = c.get_mut("function").filter(|f| f.is_object())
                                    {
                                        f["arguments"] = json!("{}");
                                    }
                                    (Value::Null, Some(why))
                                }
                            };
                        calls.push(ToolCall {
                            id,
                            name,
                            input,
                            bad_arguments,
                        });
                    }
                }
                if calls.is_empty() {
                    if let Some(o) = raw.as_object_mut() {
                        o.remove("tool_calls");
                    }
                }
                if raw.get("content").is_none_or(Value::is_null) {
                    raw["content"] = json!("");
                }
                let input = v.pointer("/usage/prompt_tokens").and_then(Value::as_u64);
                let output = v
                    .pointer("/usage/completion_tokens")
                    .and_then(Value::as_u64);
                Ok(Reply {
                    text: msg["content"].as_str().unwrap_or_default().to_string(),
                    calls,
                    input_tokens: input.unwrap_or(0),
                    output_tokens: output.unwrap_or(0),
                    usage_reported: input.is_some() || output.is_some(),
                    finish: v
                        .pointer("/choices/0/finish_reason")
                        .and_then(Value::as_str)
                        .map(String::from),
                    raw_message: raw,
                })
            }
            Api::Anthropic { .. } => {
                let content = v
                    .get("content")
                    .and_then(Value::as_array)
                    .ok_or("the reply has no content")?;
                let mut text = String::new();
                let mut calls = Vec::new();
                for block in content {
                    match block["type"].as_str() {
                        Some("text") => text.push_str(block["text"].as_str().unwrap_or_default()),
                        Some("tool_use") => {
                            let (input, bad_arguments) = match parse_arguments(block.get("input")) {
                                Ok(input) => (input, None),
                                Err(why) => (Value::Null, Some(why)),
                            };
                            calls.push(ToolCall {
                                id: block["id"].as_str().unwrap_or_default().to_string(),
                                name: block["name"].as_str().unwrap_or_default().to_string(),
                                input,
                                bad_arguments,
                            })
                        }
                        _ => {}
                    }
                }
                let input = v.pointer("/usage/input_tokens").and_then(Value::as_u64);
                let output = v.pointer("/usage/output_tokens").and_then(Value::as_u64);
                let finish = v.get("stop_reason").and_then(Value::as_str).map(|r| {
                    match r {
                        "end_turn" | "stop_sequence" => "stop",
                        "max_tokens" | "model_context_window_exceeded" => "length",
                        "tool_use" => "tool_calls",
                        "refusal" => "content_filter",
                        other => other,
                    }
                    .to_string()
                });
                Ok(Reply {
                    text,
                    calls,
                    input_tokens: input.unwrap_or(0),
                    output_tokens: output.unwrap_or(0),
                    usage_reported: input.is_some() || output.is_some(),
                    finish,
                    raw_message: json!({"role": "assistant", "content": content}),
                })
            }
        }
    }

    /// Tool results as conversation messages.
    fn tool_messages(&self, results: &[(String, String)]) -> Vec<Value> {
        match &self.api {
            Api::OpenAi { .. } => results
                .iter()
                .map(|(id, out)| json!({"role": "tool", "tool_call_id": id, "content": out}))
                .collect(),
            Api::Anthropic { .. } => vec![json!({
                "role": "user",
                "content": results.iter().map(|(id, out)| json!({"type": "tool_result", "tool_use_id": id, "content": out})).collect::<Vec<_>>()
            })],
        }
    }

    /// POST one request, retrying transient failures (429, 5xx, connection errors, timeouts, a
    /// 200 whose body is not a reply); returns the JSON reply. Every attempt is logged, with
    /// the provider's body when it was not a reply.
    async fn call(
        &self,
        body: &Value,
        deadline: Instant,
        log: &mut Vec<Value>,
    ) -> Result<Value, ApiFailure> {
        let (url, builder) = match &self.api {
            Api::OpenAi { base_url, api_key } => {
                let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
                let mut b = self.client.post(&url);
                if let Some(k) = api_key {
                    b = b.bearer_auth(k);
                }
                (url, b)
            }
            Api::Anthropic { base_url, api_key } => {
                let url = format!("{}/v1/messages", base_url.trim_end_matches('/'));
                let mut b = self
                    .client
                    .post(&url)
                    .header("anthropic-version", "2023-06-01");
                if let Some(k) = api_key {
                    b = b.header("x-api-key", k);
                }
                (url, b)
            }
        };
        let mut backoff = self.settings.api_backoff;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ApiFailure {
                    kind: ErrorKind::ApiError,
                    message: "no time left for another model request".into(),
                });
            }
            let timeout = self.settings.request_timeout.min(left);
            let req = builder
                .try_clone()
                .expect("a JSON body can be cloned")
                .timeout(timeout)
                .json(body);
            let started = Instant::now();
            let (status, text, retry_after, transport) = match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 600.0)));
                    match resp.text().await {
                        Ok(text) => (status, text, retry_after, None),
                        Err(e) => (
                            status,
                            String::new(),
                            None,
                            Some(transport_error(&e, timeout)),
                        ),
                    }
                }
                Err(e) => (0, String::new(), None, Some(transport_error(&e, timeout))),
            };
            let latency_ms = started.elapsed().as_millis() as u64;
            let mut malformed = None;
            if transport.is_none() && (200..300).contains(&status) {
                match serde_json::from_str::<Value>(&text) {
                    Ok(v) => match self.shape_error(&v) {
                        None => {
                            log.push(json!({
                                "attempt": attempt, "url": url, "status": status,
                                "latency_ms": latency_ms, "error": null,
                            }));
                            return Ok(v);
                        }
                        Some(why) => malformed = Some(why.to_string()),
                    },
                    Err(e) => malformed = Some(format!("a body that is not JSON ({e})")),
                }
            }
            let excerpt = if text.trim().is_empty() {
                "(empty body)".to_string()
            } else {
                cap_text(text.trim(), 1000)
            };
            let error = match (&transport, &malformed) {
                (Some(t), _) => t.clone(),
                (None, Some(m)) => format!("HTTP {status} with {m}: {excerpt}"),
                (None, None) => format!("HTTP {status}: {excerpt}"),
            };
            log.push(json!({
                "attempt": attempt, "url": url, "status": status,
                "latency_ms": latency_ms, "error": error,
            }));
            let kind = if transport.is_some() || malformed.is_some() {
                ErrorKind::ApiError
            } else {
                classify(status, &text)
            };
            // A context overflow is final: the same conversation overflows again.
            let retry = kind != ErrorKind::ContextWindowExceeded
                && (transport.is_some() || malformed.is_some() || transient(status));
            if !retry || attempt > self.settings.api_retries {
                return Err(ApiFailure {
                    kind,
                    message: format!("{url} after {attempt} attempt(s): {error}"),
                });
            }
            let wait = retry_after
                .unwrap_or(backoff)
                .min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    }

    fn cost(&self, usage: &ModelUsage) -> Option<f64> {
        let (i, o) = (
            self.settings.input_cost_per_mtok?,
            self.settings.output_cost_per_mtok?,
        );
        Some(usage.input_tokens as f64 / 1e6 * i + usage.output_tokens as f64 / 1e6 * o)
    }
}

/// Where the agent's tools (`bash`, `read_file`, `write_file`) run: the task environment for
/// trials, or another host (the pipeline runs them in a repository on this machine).
#[async_trait]
pub trait ToolHost: Send + Sync {
    /// Run one tool call within `timeout`; returns the text shown to the model (a refusal or
    /// failure is text starting with `error:`, never a panic).
    async fn call(&self, name: &str, input: &Value, timeout: Duration) -> String;

    /// Tools offered next to `bash`, `read_file` and `write_file` (the task's MCP tools):
    /// `(name, description, JSON schema of the input)`.
    fn extra_tools(&self) -> Vec<(String, String, Value)> {
        Vec::new()
    }
}

/// The tools of a trial: commands run in the task environment.
struct EnvTools<'a, 'b> {
    ctx: &'a AgentContext<'b>,
    mcp: &'a McpSession,
}

#[async_trait]
impl ToolHost for EnvTools<'_, '_> {
    fn extra_tools(&self) -> Vec<(String, String, Value)> {
        self.mcp.schemas()
    }

    async fn call(&self, name: &str, input: &Value, timeout: Duration) -> String {
        if let Some(out) = self.mcp.call(name, input, timeout).await {
            return out;
        }
        let ctx = self.ctx;
        let arg = |k: &str| input.get(k).and_then(Value::as_str).map(str::to_string);
        let (argv_script, stdin) = match name {
            "bash" => match arg("command") {
                Some(c) => (c, None),
                None => return "error: bash needs a `command` string".into(),
            },
            "read_file" => match arg("path") {
                Some(p) => (
                    format!("cat -- {}", rollout_core::task_config::shell_quote(&p)),
                    None,
                ),
                None => return "error: read_file needs a `path` string".into(),
            },
            "write_file" => match (arg("path"), arg("content")) {
                (Some(p), Some(content)) => {
                    let q = rollout_core::task_config::shell_quote(&p);
                    (
                        format!("mkdir -p -- \"$(dirname -- {q})\" && cat > {q} && echo wrote {q}"),
                        Some(content.into_bytes()),
                    )
                }
                _ => return "error: write_file needs `path` and `content` strings".into(),
            },
            other => {
                return format!(
                    "error: unknown tool {other:?}; the tools are bash, read_file, write_file"
                )
            }
        };
        let mut req = crate::request(ctx, argv_script, timeout, ctx.user.clone());
        req.stdin = stdin;
        let out = match ctx.env.exec(req).await {
            Ok(o) => o,
            Err(e) => return format!("error: the environment failed to run the command: {e}"),
        };
        let mut text = String::new();
        if out.timed_out {
            text.push_str(&format!(
                "[the command was killed after {} s]\n",
                timeout.as_secs()
            ));
        }
        text.push_str(&format!(
            "exit code: {}\n",
            out.exit_code.map_or("none".into(), |c| c.to_string())
        ));
        let stdout = String::from_utf8_lossy(&out.stdout.bytes);
        let stderr = String::from_utf8_lossy(&out.stderr.bytes);
        if !stdout.is_empty() {
            text.push_str(&format!("stdout:\n{stdout}\n"));
        }
        if !stderr.is_empty() {
            text.push_str(&format!("stderr:\n{stderr}\n"));
        }
        text
    }
}

/// How a conversation ended.
#[derive(Debug, Clone)]
pub struct Conversation {
    /// Tokens, turns, requests, cost and `stop_reason`.
    pub usage: ModelUsage,
    pub timed_out: bool,
    /// The model's last reply without tool calls (empty when it never gave one).
    pub final_text: String,
}

impl LlmAgent {
    /// What a step keeps of its request: the parameters, the turn's system prompt and only the
    /// messages added since the previous request (`messages_from` is their index in the
    /// conversation), so that the trajectory grows linearly with the turns. The tools are in
    /// the trajectory's `agent.tool_definitions`; the full request of a turn is its system
    /// prompt and the `new_messages` of every agent step up to it.
    fn request_record(&self, body: &Value, system: &str, from: usize, new: &[Value]) -> Value {
        let mut r = body.clone();
        if let Some(o) = r.as_object_mut() {
            o.remove("messages");
            o.remove("tools");
            o.remove("system");
        }
        r["system"] = json!(system);
        r["messages_from"] = json!(from);
        r["new_messages"] = json!(new);
        r
    }

    /// The conversation loop: send `instruction`, run the tool calls the model asks for on
    /// `host`, until a final answer, `max_turns`, a budget, a failing provider or `deadline`.
    /// The trajectory is written at `trajectory_path` before the first request and after every
    /// turn. A provider failure ends the run with [`AgentError::Provider`], carrying the usage
    /// of the turns that succeeded (`stop_reason` is the error kind).
    pub async fn converse(
        &self,
        system_prompt: &str,
        instruction: &str,
        host: &dyn ToolHost,
        deadline: Instant,
        trajectory_path: &Path,
    ) -> Result<Conversation, AgentError> {
        let mut usage = ModelUsage::default();
        let extra_tools = host.extra_tools();
        let mut messages: Vec<Value> = vec![json!({"role": "user", "content": instruction})];
        // The trajectory is Harbor's ATIF (docs/agents.md): a system step, a user step, then
        // one agent step per model turn (what its request added, the response and the HTTP
        // attempts in the step's `extra`).
        let now = || Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut steps: Vec<Value> = vec![
            json!({"step_id": 1, "timestamp": now(), "source": "system", "message": system_prompt}),
            json!({"step_id": 2, "timestamp": now(), "source": "user", "message": instruction}),
        ];
        let tool_definitions: Vec<Value> = tools_schema()
            .into_iter()
            .map(|(n, d, p)| (n.to_string(), d.to_string(), p))
            .chain(extra_tools.iter().cloned())
            .map(|(n, d, p)| json!({"type": "function", "function": {"name": n, "description": d, "parameters": p}}))
            .collect();
        let api = match self.api {
            Api::OpenAi { .. } => "openai-chat-completions",
            Api::Anthropic { .. } => "anthropic-messages",
        };
        let mut trajectory = json!({
            "schema_version": ATIF_VERSION,
            "agent": {
                "name": self.name, "version": env!("CARGO_PKG_VERSION"), "model_name": self.model,
                "tool_definitions": tool_definitions, "extra": {"api": api},
            },
            "steps": [],
        });
        // Written before the first request: a run stopped during it keeps what it was asked.
        finish_trajectory(&mut trajectory, &steps, &usage, None);
        write_trajectory(trajectory_path, &trajectory);
        let mut timed_out = false;
        let mut final_text = String::new();
        let mut recorded = 0usize;
        let mut empty_replies = 0u32;
        let mut last_calls = String::new();
        let mut repeats = 0u32;
        let mut failure: Option<ApiFailure> = None;
        let stop_reason: &'static str = loop {
            if usage.turns >= self.settings.max_turns {
                break "max_turns";
            }
            if Instant::now() >= deadline {
                timed_out = true;
                break "timeout";
            }
            usage.turns += 1;
            let left = deadline.saturating_duration_since(Instant::now()).as_secs();
            let system = format!(
                "{system_prompt}\nTime left for the whole task: {left} s. Turn {} of at most {}.",
                usage.turns, self.settings.max_turns
            );
            let body = self.request_body(&system, &messages, &extra_tools);
            let request = self.request_record(&body, &system, recorded, &messages[recorded..]);
            recorded = messages.len();
            let mut attempts = Vec::new();
            let t0 = Instant::now();
            let reply = tokio::select! {
                r = self.call(&body, deadline, &mut attempts) => r,
                _ = tokio::time::sleep_until(deadline.into()) => Err(ApiFailure { kind: ErrorKind::AgentExecutionTimeout, message: "timeout".into() }),
            };
            usage.requests += attempts.len() as u64;
            let error_step = |error: Value| {
                json!({
                    "step_id": steps.len() + 1, "timestamp": now(), "source": "agent",
                    "model_name": self.model, "message": "",
                    "extra": {"turn": usage.turns, "request": request, "attempts": attempts, "error": error, "outcome": "error"},
                })
            };
            let value = match reply {
                Ok(v) => v,
                Err(f) if f.kind == ErrorKind::AgentExecutionTimeout => {
                    let step = error_step(json!("agent timeout during the model request"));
                    steps.push(step);
                    timed_out = true;
                    break "timeout";
                }
                Err(f) => {
                    let step = error_step(json!({"type": f.kind, "message": f.message}));
                    steps.push(step);
                    let reason = f.kind.as_str();
                    failure = Some(f);
                    break reason;
                }
            };
            let latency_ms = t0.elapsed().as_millis() as u64;
            let mut reply = match self.parse_reply(&value, usage.turns) {
                Ok(r) => r,
                Err(m) => {
                    let mut step = error_step(json!({"type": ErrorKind::ApiError, "message": m}));
                    step["extra"]["response"] = value;
                    steps.push(step);
                    failure = Some(ApiFailure {
                        kind: ErrorKind::ApiError,
                        message: m,
                    });
                    break ErrorKind::ApiError.as_str();
                }
            };
            if !reply.usage_reported {
                // No usage from the provider: estimated, so that token budgets still apply,
                // and marked as estimated.
                reply.input_tokens = estimate_tokens(body.to_string().len());
                reply.output_tokens = estimate_tokens(reply.raw_message.to_string().len());
                usage.estimated_turns += 1;
            }
            usage.input_tokens += reply.input_tokens;
            usage.output_tokens += reply.output_tokens;
            usage.cost_usd = self.cost(&usage);
            let mut metrics = json!({
                "prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
                "extra": {"latency_ms": latency_ms},
            });
            if !reply.usage_reported {
                metrics["extra"]["usage_estimated"] = json!(true);
            }
            if let Some(c) = self.cost(&ModelUsage {
                input_tokens: reply.input_tokens,
                output_tokens: reply.output_tokens,
                ..Default::default()
            }) {
                metrics["cost_usd"] = json!(c);
            }
            let mut step = json!({
                "step_id": steps.len() + 1, "timestamp": now(), "source": "agent",
                "model_name": self.model, "message": reply.text, "metrics": metrics,
                "extra": {"turn": usage.turns, "request": request, "response": value, "attempts": attempts, "finish_reason": reply.finish},
            });
            let cut = reply.finish.as_deref() == Some("length");
            if reply.calls.is_empty() {
                let empty = reply.text.trim().is_empty();
                if empty {
                    empty_replies += 1;
                } else {
                    empty_replies = 0;
                }
                let nudge = if reply.finish.as_deref() == Some("content_filter") {
                    step["extra"]["outcome"] = json!("content_filter");
                    steps.push(step);
                    break "content_filter";
                } else if cut {
                    format!(
                        "Your reply was cut off at the output limit ({} tokens) before it was complete. \
                         Continue more briefly; call a tool to act.",
                        self.settings.max_output_tokens
                    )
                } else if empty && empty_replies >= MAX_EMPTY_REPLIES {
                    step["extra"]["outcome"] = json!("empty_reply");
                    steps.push(step);
                    break "empty_replies";
                } else if empty {
                    "Your reply was empty. Call a tool to work on the task or, if it is done, \
                     reply with a short summary."
                        .to_string()
                } else {
                    final_text = reply.text.clone();
                    step["extra"]["outcome"] = json!("final_answer");
                    steps.push(step);
                    break "final_answer";
                };
                // Not an answer: the model is told why and the conversation goes on.
                step["extra"]["outcome"] = json!(if cut { "truncated" } else { "empty_reply" });
                step["extra"]["agent_note"] = json!(nudge);
                if !empty {
                    messages.push(reply.raw_message.clone());
                }
                messages.push(json!({"role": "user", "content": nudge}));
                steps.push(step);
            } else {
                empty_replies = 0;
                let signature = reply
                    .calls
                    .iter()
                    .map(|c| format!("{}\u{0}{}", c.name, c.input))
                    .collect::<Vec<_>>()
                    .join("\u{1}");
                if signature == last_calls {
                    repeats += 1;
                } else {
                    repeats = 1;
                    last_calls = signature;
                }
                messages.push(reply.raw_message.clone());
                let mut results = Vec::new();
                let mut tool_calls = Vec::new();
                let mut observations = Vec::new();
                let mut tool_seconds = Vec::new();
                for call in &reply.calls {
                    let t = Instant::now();
                    let mut out = match &call.bad_arguments {
                        Some(why) => format!(
                            "error: the call was not run: {why}. Call the tool again with its \
                             arguments as one JSON object that matches its parameters."
                        ),
                        None => {
                            let left = deadline.saturating_duration_since(Instant::now());
                            let timeout = self
                                .settings
                                .command_timeout
                                .min(left)
                                .max(Duration::from_secs(1));
                            cap_text(
                                &host.call(&call.name, &call.input, timeout).await,
                                self.settings.tool_output_cap,
                            )
                        }
                    };
                    if repeats >= REPEAT_WARN {
                        out.push_str(&format!(
                            "\n[note: the same call {repeats} turns in a row gives the same result; \
                             try something different, or reply with a summary if the task is done]"
                        ));
                    }
                    let left = deadline.saturating_duration_since(Instant::now()).as_secs();
                    out.push_str(&format!("\n[time left: {left} s]"));
                    // ATIF tool arguments are an object: anything else is kept under `input`.
                    let arguments = match (&call.input, &call.bad_arguments) {
                        (Value::Object(_), None) => call.input.clone(),
                        (_, Some(why)) => json!({ "invalid": why }),
                        (other, None) => json!({ "input": other }),
                    };
                    tool_calls.push(json!({"tool_call_id": call.id, "function_name": call.name, "arguments": arguments}));
                    observations.push(json!({"source_call_id": call.id, "content": out}));
                    tool_seconds.push(json!(t.elapsed().as_secs_f64()));
                    results.push((call.id.clone(), out));
                }
                step["tool_calls"] = Value::Array(tool_calls);
                step["observation"] = json!({ "results": observations });
                step["extra"]["tool_seconds"] = Value::Array(tool_seconds);
                step["extra"]["outcome"] = json!(if cut {
                    "truncated_tool_calls"
                } else {
                    "tool_calls"
                });
                steps.push(step);
                messages.extend(self.tool_messages(&results));
            }
            finish_trajectory(&mut trajectory, &steps, &usage, None);
            write_trajectory(trajectory_path, &trajectory);
            if repeats >= MAX_REPEATS {
                break "repeated_tool_calls";
            }
            if self
                .settings
                .max_total_tokens
                .is_some_and(|m| usage.input_tokens + usage.output_tokens >= m)
            {
                break "token_budget";
            }
            if let (Some(max), Some(spent)) = (self.settings.max_cost_usd, usage.cost_usd) {
                if spent >= max {
                    break "cost_budget";
                }
            }
        };
        usage.stop_reason = stop_reason.into();
        finish_trajectory(&mut trajectory, &steps, &usage, Some(stop_reason));
        write_trajectory(trajectory_path, &trajectory);
        if let Some(f) = failure {
            return Err(AgentError::Provider {
                kind: f.kind,
                message: f.message,
                outcome: Some(Box::new(CommandOutcome {
                    usage: Some(usage),
                    ..Default::default()
                })),
            });
        }
        Ok(Conversation {
            usage,
            timed_out,
            final_text,
        })
    }
}

/// Longest the agent waits for each MCP server to answer the handshake.
const MCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The skills in `dir` (subdirectories holding a `SKILL.md`, Agent Skills layout), listed for
/// the system prompt with their name, description and location; empty when there are none.
async fn skills_section(ctx: &AgentContext<'_>, dir: &str) -> String {
    let script = "for f in $(find \"$1\" -mindepth 2 -maxdepth 2 -name SKILL.md -type f 2>/dev/null | sort | head -n 100); do \
                  printf '\\n@@SKILL %s\\n' \"$f\"; head -c 2048 \"$f\"; done";
    let req = rollout_env::ExecRequest::argv(
        vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            "rollout-skills".into(),
            dir.into(),
        ],
        Duration::from_secs(30),
    )
    .user(ctx.user.clone());
    let Ok(out) = ctx.env.exec(req).await else {
        return String::new();
    };
    let listing = parse_skills(&String::from_utf8_lossy(&out.stdout.bytes));
    if listing.is_empty() {
        return String::new();
    }
    let mut text = format!(
        "\nSkills (instructions for specialised work) are available in {dir}; read a skill's \
         SKILL.md before doing what it describes:\n<available_skills>\n"
    );
    for (name, description, location) in listing {
        text.push_str(&format!(
            "  <skill><name>{name}</name><description>{description}</description><location>{location}</location></skill>\n"
        ));
    }
    text.push_str("</available_skills>");
    text
}

/// `(name, description, path)` of each skill in the `@@SKILL <path>` listing; the name and
/// description come from the SKILL.md front matter (the directory name when absent).
fn parse_skills(listing: &str) -> Vec<(String, String, String)> {
    let mut skills = Vec::new();
    for chunk in listing.split("\n@@SKILL ").skip(1) {
        let (path, body) = chunk.split_once('\n').unwrap_or((chunk, ""));
        let mut name = None;
        let mut description = String::new();
        if let Some(front) = body
            .strip_prefix("---")
            .and_then(|rest| rest.split("\n---").next())
        {
            for line in front.lines() {
                if let Some(v) = line.strip_prefix("name:") {
                    name = Some(v.trim().trim_matches(['"', '\'']).to_string());
                } else if let Some(v) = line.strip_prefix("description:") {
                    description = v.trim().trim_matches(['"', '\'']).to_string();
                }
            }
        }
        let dir_name = path
            .trim()
            .trim_end_matches("/SKILL.md")
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        skills.push((
            name.unwrap_or(dir_name),
            description,
            path.trim().to_string(),
        ));
    }
    skills
}

/// ATIF version of the trajectories the agent writes (Harbor's `Trajectory.schema_version`).
pub const ATIF_VERSION: &str = "ATIF-v1.6";

/// Put the steps and the totals so far into the trajectory: ATIF `final_metrics`, with
/// requests, turns and the stop reason in its `extra`.
fn finish_trajectory(
    trajectory: &mut Value,
    steps: &[Value],
    usage: &ModelUsage,
    stop_reason: Option<&str>,
) {
    let mut fm = json!({
        "total_prompt_tokens": usage.input_tokens,
        "total_completion_tokens": usage.output_tokens,
        "total_steps": steps.len(),
        "extra": {"requests": usage.requests, "turns": usage.turns},
    });
    if let Some(c) = usage.cost_usd {
        fm["total_cost_usd"] = json!(c);
    }
    if usage.estimated_turns > 0 {
        fm["extra"]["estimated_usage_turns"] = json!(usage.estimated_turns);
    }
    if let Some(r) = stop_reason {
        fm["extra"]["stop_reason"] = json!(r);
    }
    trajectory["steps"] = json!(steps);
    trajectory["final_metrics"] = fm;
}

fn write_trajectory(path: &Path, trajectory: &Value) {
    if let Ok(bytes) = serde_json::to_vec_pretty(trajectory) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let tmp = path.with_file_name(format!(".{}.tmp", name.unwrap_or_default()));
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

#[async_trait]
impl Agent for LlmAgent {
    fn info(&self) -> AgentInfo {
        AgentInfo {
            name: self.name.clone(),
            version: Some(env!("CARGO_PKG_VERSION").into()),
            model_name: Some(self.model.clone()),
        }
    }

    async fn install(&self, _ctx: &AgentContext<'_>) -> Result<Option<CommandOutcome>, AgentError> {
        Ok(None)
    }

    fn check(&self, task: &Task) -> Result<(), String> {
        match task
            .config
            .environment
            .mcp_servers
            .iter()
            .find_map(crate::mcp::unsupported)
        {
            Some(why) => Err(format!("agent {}: {why}", self.name)),
            None => Ok(()),
        }
    }

    async fn run(&self, ctx: &AgentContext<'_>) -> Result<CommandOutcome, AgentError> {
        let started = Instant::now();
        let environment = &ctx.task.config.environment;
        let mcp = McpSession::connect(
            &environment.mcp_servers,
            ctx.env,
            ctx.user.clone(),
            &ctx.env_vars,
            MCP_CONNECT_TIMEOUT.min(ctx.run_timeout),
        )
        .await?;
        let mut system = SYSTEM_PROMPT.to_string();
        if !mcp.tools.is_empty() {
            system.push_str(
                "\nThe task's MCP servers offer more tools, named `mcp__<server>__<tool>`; \
                 use them where they help.",
            );
        }
        if let Some(dir) = &environment.skills_dir {
            system.push_str(&skills_section(ctx, dir).await);
        }
        let result = self
            .converse(
                &system,
                &ctx.task.instruction,
                &EnvTools { ctx, mcp: &mcp },
                started + ctx.run_timeout,
                &ctx.logs_dir.join("trajectory.json"),
            )
            .await;
        mcp.close().await;
        let c = result.map_err(|e| match e {
            AgentError::Provider {
                kind,
                message,
                outcome: Some(mut o),
            } => {
                o.seconds = started.elapsed().as_secs_f64();
                AgentError::Provider {
                    kind,
                    message,
                    outcome: Some(o),
                }
            }
            e => e,
        })?;
        Ok(CommandOutcome {
            exit_code: (!c.timed_out).then_some(0),
            timed_out: c.timed_out,
            seconds: started.elapsed().as_secs_f64(),
            usage: Some(c.usage),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        assert_eq!(classify(429, ""), ErrorKind::ApiRateLimit);
        assert_eq!(classify(401, ""), ErrorKind::ApiAuth);
        assert_eq!(classify(404, "{}"), ErrorKind::ModelNotFound);
        assert_eq!(
            classify(400, r#"{"error": {"code": "model_not_found"}}"#),
            ErrorKind::ModelNotFound
        );
        assert_eq!(
            classify(400, r#"{"error": {"code": "context_length_exceeded"}}"#),
            ErrorKind::ContextWindowExceeded
        );
        assert_eq!(
            classify(400, "prompt is too long: 250000 tokens"),
            ErrorKind::ContextWindowExceeded
        );
        assert_eq!(classify(500, ""), ErrorKind::ApiError);
        assert!(transient(429) && transient(503) && !transient(400));
    }

    #[test]
    fn skills_are_listed_from_their_front_matter() {
        let listing = "\n@@SKILL /skills/greet/SKILL.md\n---\nname: generate-greeting\ndescription: \"Write a greeting\"\n---\nbody\n\n@@SKILL /skills/bare/SKILL.md\nno front matter";
        assert_eq!(
            parse_skills(listing),
            vec![
                (
                    "generate-greeting".to_string(),
                    "Write a greeting".to_string(),
                    "/skills/greet/SKILL.md".to_string()
                ),
                (
                    "bare".to_string(),
                    String::new(),
                    "/skills/bare/SKILL.md".to_string()
                )
            ]
        );
        assert!(parse_skills("").is_empty());
    }

    #[test]
    fn tool_output_keeps_its_tail() {
        let s = "a".repeat(100) + "END";
        let c = cap_text(&s, 10);
        assert!(c.ends_with("aaaaaaaEND") && c.starts_with("[output truncated"));
        assert_eq!(cap_text("short", 10), "short");
    }

    fn spec(model: Option<&str>) -> AgentSpec {
        AgentSpec {
            name: "rollout-agent".into(),
            model_name: model.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn model_and_api_come_from_the_spec() {
        assert!(LlmAgent::from_spec(&spec(None))
            .err()
            .unwrap()
            .contains("-m MODEL"));
        let a = LlmAgent::from_spec(&spec(Some("anthropic/claude-x"))).unwrap();
        assert!(matches!(a.api, Api::Anthropic { .. }));
        assert_eq!(a.model, "claude-x");
        let mut s = spec(Some("gpt-x"));
        s.env
            .insert("OPENAI_BASE_URL".into(), "http://127.0.0.1:9/v1".into());
        s.kwargs.insert("max_turns".into(), json!(3));
        let a = LlmAgent::from_spec(&s).unwrap();
        assert_eq!(
            a.api,
            Api::OpenAi {
                base_url: "http://127.0.0.1:9/v1".into(),
                api_key: std::env::var("OPENAI_API_KEY")
                    .ok()
                    .filter(|v| !v.is_empty())
            }
        );
        assert_eq!(a.settings.max_turns, 3);
        let mut s = spec(Some("gpt-x"));
        s.kwargs.insert("max_cost_usd".into(), json!(1.0));
        assert!(LlmAgent::from_spec(&s)
            .err()
            .unwrap()
            .contains("input_cost_per_mtok"));
    }
}

/// The conversation loop against a scripted OpenAI-compatible server on loopback (real HTTP)
/// and a recording tool host: what a weak model sends, each mapped to an outcome.
#[cfg(test)]
mod conversation_tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    enum Answer {
        Json(u16, Value),
        Raw(u16, &'static str),
        /// Answer after this long.
        Slow(Duration, Value),
        /// Signal that the request arrived, then never answer.
        Hold,
    }

    #[derive(Clone, Default)]
    struct Server {
        answers: Arc<Mutex<VecDeque<Answer>>>,
        seen: Arc<Mutex<Vec<Value>>>,
        arrived: Arc<tokio::sync::Notify>,
    }

    impl Server {
        fn seen(&self) -> Vec<Value> {
            self.seen.lock().unwrap().clone()
        }
    }

    async fn chat(
        axum::extract::State(s): axum::extract::State<Server>,
        axum::Json(body): axum::Json<Value>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        s.seen.lock().unwrap().push(body);
        let next = s.answers.lock().unwrap().pop_front();
        let status = |c: u16| axum::http::StatusCode::from_u16(c).unwrap();
        match next {
            None => (status(500), "script exhausted").into_response(),
            Some(Answer::Json(c, v)) => (status(c), axum::Json(v)).into_response(),
            Some(Answer::Raw(c, t)) => (status(c), t).into_response(),
            Some(Answer::Slow(d, v)) => {
                tokio::time::sleep(d).await;
                axum::Json(v).into_response()
            }
            Some(Answer::Hold) => {
                s.arrived.notify_one();
                std::future::pending::<()>().await;
                unreachable!()
            }
        }
    }

    async fn serve(answers: Vec<Answer>) -> (String, Server) {
        let server = Server::default();
        *server.answers.lock().unwrap() = answers.into();
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(chat))
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/v1"), server)
    }

    fn agent(url: &str, kwargs: &[(&str, Value)]) -> LlmAgent {
        let mut spec = AgentSpec {
            name: "rollout-agent".into(),
            model_name: Some("small".into()),
            ..Default::default()
        };
        spec.env.insert("OPENAI_BASE_URL".into(), url.into());
        spec.kwargs.insert("api_backoff_sec".into(), json!(0));
        spec.kwargs.insert("api_retries".into(), json!(0));
        for (k, v) in kwargs {
            spec.kwargs.insert(k.to_string(), v.clone());
        }
        LlmAgent::from_spec(&spec).unwrap()
    }

    /// Records the calls it runs; every call succeeds.
    #[derive(Default)]
    struct Host(Mutex<Vec<(String, Value)>>);

    #[async_trait]
    impl ToolHost for Host {
        async fn call(&self, name: &str, input: &Value, _timeout: Duration) -> String {
            self.0.lock().unwrap().push((name.into(), input.clone()));
            "exit code: 0\nstdout:\nok\n".into()
        }
    }

    struct Ran {
        result: Result<Conversation, AgentError>,
        trajectory: Value,
        calls: Vec<(String, Value)>,
    }

    async fn run(a: &LlmAgent) -> Ran {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trajectory.json");
        let host = Host::default();
        let result = a
            .converse(
                "sys",
                "do it",
                &host,
                Instant::now() + Duration::from_secs(60),
                &path,
            )
            .await;
        Ran {
            result,
            trajectory: serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap(),
            calls: host.0.into_inner().unwrap(),
        }
    }

    fn reply(message: Value, finish: &str) -> Value {
        json!({"choices": [{"message": message, "finish_reason": finish}],
               "usage": {"prompt_tokens": 100, "completion_tokens": 20}})
    }

    fn call_with(args: &str) -> Value {
        reply(
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "bash", "arguments": args}}]}),
            "tool_calls",
        )
    }

    fn answer(text: &str) -> Value {
        reply(json!({"role": "assistant", "content": text}), "stop")
    }

    fn stop_reason(t: &Value) -> &str {
        t["final_metrics"]["extra"]["stop_reason"].as_str().unwrap()
    }

    fn agent_steps(t: &Value) -> Vec<Value> {
        t["steps"].as_array().unwrap()[2..].to_vec()
    }

    fn provider_error(r: &Ran) -> (ErrorKind, String, ModelUsage) {
        match &r.result {
            Err(AgentError::Provider {
                kind,
                message,
                outcome: Some(o),
            }) => (*kind, message.clone(), o.usage.clone().unwrap()),
            other => panic!("expected a provider error with the usage so far, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_llama_cpp_context_overflow_is_final_and_classified() {
        let body = json!({"error": {"code": 400, "type": "exceed_context_size_error",
            "message": "the request exceeds the available context size (2100 > 2048 tokens), try increasing it"}});
        for status in [400, 500] {
            let (url, server) = serve(vec![Answer::Json(status, body.clone())]).await;
            let r = run(&agent(&url, &[("api_retries", json!(3))])).await;
            let (kind, message, usage) = provider_error(&r);
            assert_eq!(kind, ErrorKind::ContextWindowExceeded, "{message}");
            assert_eq!(server.seen().len(), 1, "an overflow is not retried");
            assert!(!kind.retryable(), "nor is the trial");
            assert_eq!(usage.stop_reason, "context_window_exceeded");
            assert_eq!(stop_reason(&r.trajectory), "context_window_exceeded");
            let last = agent_steps(&r.trajectory).pop().unwrap();
            assert_eq!(last["extra"]["outcome"], "error");
            assert_eq!(last["extra"]["error"]["type"], "context_window_exceeded");
        }
    }

    #[tokio::test]
    async fn tool_arguments_that_are_not_json_are_refused_and_not_echoed() {
        let (url, server) = serve(vec![
            Answer::Json(200, call_with(r#"{"command": "ls -"#)),
            Answer::Json(200, call_with("[1, 2]")),
            Answer::Json(200, answer("done")),
        ])
        .await;
        let r = run(&agent(&url, &[])).await;
        assert!(r.result.is_ok());
        assert!(r.calls.is_empty(), "no tool ran: {:?}", r.calls);
        let seen = server.seen();
        let msgs = seen[1]["messages"].as_array().unwrap();
        let sent_back = &msgs[msgs.len() - 2];
        assert_eq!(
            sent_back["tool_calls"][0]["function"]["arguments"], "{}",
            "the server is not sent its own malformed call"
        );
        let told = msgs.last().unwrap()["content"].as_str().unwrap();
        assert!(
            told.starts_with("error: the call was not run: its arguments are not valid JSON"),
            "{told}"
        );
        let msgs = seen[2]["messages"].as_array().unwrap();
        let told = msgs.last().unwrap()["content"].as_str().unwrap();
        assert!(told.contains("JSON but not an object"), "{told}");
        let steps = agent_steps(&r.trajectory);
        assert!(steps[0]["tool_calls"][0]["arguments"]["invalid"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"));
        assert_eq!(stop_reason(&r.trajectory), "final_answer");
    }

    #[tokio::test]
    async fn empty_replies_are_not_answers() {
        let empty = || Answer::Json(200, answer(""));
        let (url, server) = serve(vec![empty(), Answer::Json(200, answer("done"))]).await;
        let r = run(&agent(&url, &[])).await;
        assert_eq!(r.result.unwrap().final_text, "done");
        let nudge = server.seen()[1]["messages"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(nudge["role"], "user");
        assert!(nudge["content"].as_str().unwrap().contains("empty"));
        assert_eq!(
            agent_steps(&r.trajectory)[0]["extra"]["outcome"],
            "empty_reply"
        );

        let (url, server) = serve(vec![empty(), empty(), empty(), empty()]).await;
        let r = run(&agent(&url, &[])).await;
        let c = r.result.unwrap();
        assert_eq!(c.usage.stop_reason, "empty_replies");
        assert_eq!(c.final_text, "");
        assert_eq!(server.seen().len(), MAX_EMPTY_REPLIES as usize);
        assert_eq!(stop_reason(&r.trajectory), "empty_replies");
    }

    #[tokio::test]
    async fn a_reply_cut_at_the_output_limit_is_not_an_answer() {
        let cut = reply(
            json!({"role": "assistant", "content": "First I will"}),
            "length",
        );
        let (url, server) = serve(vec![
            Answer::Json(200, cut),
            Answer::Json(200, answer("done")),
        ])
        .await;
        let r = run(&agent(&url, &[("max_output_tokens", json!(64))])).await;
        let c = r.result.unwrap();
        assert_eq!((c.final_text.as_str(), c.usage.turns), ("done", 2));
        let steps = agent_steps(&r.trajectory);
        assert_eq!(steps[0]["extra"]["outcome"], "truncated");
        assert_eq!(steps[0]["extra"]["finish_reason"], "length");
        let msgs = server.seen()[1]["messages"].as_array().unwrap().clone();
        assert_eq!(msgs[msgs.len() - 2]["content"], "First I will");
        assert!(msgs[msgs.len() - 1]["content"]
            .as_str()
            .unwrap()
            .contains("cut off at the output limit (64 tokens)"));
    }

    #[tokio::test]
    async fn a_200_that_is_not_a_reply_is_retried_and_its_body_kept() {
        let (url, server) = serve(vec![
            Answer::Json(200, json!({"object": "error", "detail": "slot busy"})),
            Answer::Json(200, answer("done")),
        ])
        .await;
        let r = run(&agent(&url, &[("api_retries", json!(1))])).await;
        assert_eq!(r.result.unwrap().final_text, "done");
        assert_eq!(server.seen().len(), 2);
        let attempts = &agent_steps(&r.trajectory)[0]["extra"]["attempts"];
        let first = attempts[0]["error"].as_str().unwrap();
        assert!(
            first.contains("without choices[0].message") && first.contains("slot busy"),
            "{first}"
        );

        let (url, _) = serve(vec![Answer::Raw(200, "<html>bad gateway</html>")]).await;
        let r = run(&agent(&url, &[])).await;
        let (kind, message, usage) = provider_error(&r);
        assert_eq!(kind, ErrorKind::ApiError);
        assert!(
            message.contains("not JSON") && message.contains("<html>bad gateway</html>"),
            "{message}"
        );
        assert_eq!(usage.requests, 1);
        let step = agent_steps(&r.trajectory).pop().unwrap();
        assert!(step["extra"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad gateway"));
    }

    #[tokio::test]
    async fn a_provider_error_keeps_the_usage_so_far_and_a_stop_reason() {
        let (url, _) = serve(vec![
            Answer::Json(200, call_with(r#"{"command": "ls"}"#)),
            Answer::Json(401, json!({"error": {"message": "bad key"}})),
        ])
        .await;
        let r = run(&agent(&url, &[])).await;
        let (kind, _, usage) = provider_error(&r);
        assert_eq!(kind, ErrorKind::ApiAuth);
        assert_eq!(
            (
                usage.input_tokens,
                usage.output_tokens,
                usage.turns,
                usage.requests
            ),
            (100, 20, 2, 2)
        );
        assert_eq!(usage.stop_reason, "api_auth");
        assert_eq!(stop_reason(&r.trajectory), "api_auth");
        assert_eq!(r.trajectory["final_metrics"]["total_prompt_tokens"], 100);
    }

    #[tokio::test]
    async fn missing_usage_is_estimated_and_budgets_still_apply() {
        let no_usage = json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "bash", "arguments": "{\"command\": \"ls\"}"}}]}}]});
        let (url, _) = serve(vec![
            Answer::Json(200, no_usage.clone()),
            Answer::Json(200, no_usage),
        ])
        .await;
        let r = run(&agent(&url, &[("max_total_tokens", json!(10))])).await;
        let c = r.result.unwrap();
        assert_eq!(c.usage.stop_reason, "token_budget");
        assert_eq!(c.usage.turns, 1, "the budget fired on estimated tokens");
        assert!(c.usage.input_tokens > 0 && c.usage.output_tokens > 0);
        assert_eq!(c.usage.estimated_turns, 1);
        let step = &agent_steps(&r.trajectory)[0];
        assert_eq!(step["metrics"]["extra"]["usage_estimated"], true);
        assert_eq!(
            r.trajectory["final_metrics"]["extra"]["estimated_usage_turns"],
            1
        );
    }

    #[tokio::test]
    async fn a_timeout_reads_differently_from_a_refused_connection() {
        let (url, _) = serve(vec![Answer::Slow(Duration::from_secs(30), answer("late"))]).await;
        let r = run(&agent(&url, &[("request_timeout_sec", json!(0.3))])).await;
        let (kind, message, _) = provider_error(&r);
        assert_eq!(kind, ErrorKind::ApiError);
        assert!(
            message.contains("timed out: no reply within 300ms"),
            "{message}"
        );
        assert!(!message.contains("cannot connect"), "{message}");

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let r = run(&agent(&format!("http://127.0.0.1:{port}/v1"), &[])).await;
        let (kind, message, _) = provider_error(&r);
        assert_eq!(kind, ErrorKind::ApiError);
        assert!(message.contains("cannot connect"), "{message}");
        assert!(!message.contains("timed out"), "{message}");
    }

    #[tokio::test]
    async fn a_run_stopped_during_the_first_request_keeps_its_trajectory() {
        let (url, server) = serve(vec![Answer::Hold]).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trajectory.json");
        let arrived = server.arrived.notified();
        let a = agent(&url, &[]);
        let p = path.clone();
        let task = tokio::spawn(async move {
            let host = Host::default();
            a.converse(
                "sys",
                "do it",
                &host,
                Instant::now() + Duration::from_secs(60),
                &p,
            )
            .await
        });
        arrived.await;
        // Ctrl-C drops the run where it stands.
        task.abort();
        let _ = task.await;
        let t: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let sources: Vec<&str> = t["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["source"].as_str().unwrap())
            .collect();
        assert_eq!(sources, ["system", "user"]);
        assert_eq!(t["schema_version"], ATIF_VERSION);
    }

    #[tokio::test]
    async fn steps_keep_only_what_each_request_added() {
        let calls: Vec<Answer> = (0..6)
            .map(|i| Answer::Json(200, call_with(&format!(r#"{{"command": "echo {i}"}}"#))))
            .chain([Answer::Json(200, answer("done"))])
            .collect();
        let (url, server) = serve(calls).await;
        let r = run(&agent(&url, &[])).await;
        assert_eq!(r.result.unwrap().usage.stop_reason, "final_answer");
        let seen = server.seen();
        let steps = agent_steps(&r.trajectory);
        assert_eq!(steps.len(), seen.len());
        // The full request of each turn is its system prompt and the messages the steps up
        // to it added.
        let mut conversation: Vec<Value> = Vec::new();
        for (step, sent) in steps.iter().zip(&seen) {
            let req = &step["extra"]["request"];
            assert_eq!(req["messages_from"], conversation.len());
            let added = req["new_messages"].as_array().unwrap();
            assert!(added.len() <= 3, "{added:?}");
            conversation.extend(added.iter().cloned());
            let mut full = vec![json!({"role": "system", "content": req["system"]})];
            full.extend(conversation.iter().cloned());
            assert_eq!(sent["messages"], Value::Array(full));
            assert_eq!(req["model"], sent["model"]);
            assert!(req.get("tools").is_none());
        }
    }

    #[tokio::test]
    async fn the_same_call_repeated_is_flagged_then_stopped() {
        let calls: Vec<Answer> = (0..8)
            .map(|_| Answer::Json(200, call_with(r#"{"command": "ls"}"#)))
            .collect();
        let (url, server) = serve(calls).await;
        let r = run(&agent(&url, &[])).await;
        let c = r.result.unwrap();
        assert_eq!(c.usage.stop_reason, "repeated_tool_calls");
        assert_eq!(server.seen().len(), MAX_REPEATS as usize);
        let steps = agent_steps(&r.trajectory);
        let out = |i: usize| {
            steps[i]["observation"]["results"][0]["content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert!(!out(1).contains("same call"));
        assert!(
            out(2).contains("the same call 3 turns in a row"),
            "{}",
            out(2)
        );
    }
}
