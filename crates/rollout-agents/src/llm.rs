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
//! Rate limits (429), 5xx and connection errors are retried with backoff, honouring
//! `Retry-After`; what remains is classified (`api_rate_limit`, `api_auth`,
//! `context_window_exceeded`, `model_not_found`, `api_error`).

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
}

/// One model reply, provider-neutral.
#[derive(Debug, Clone)]
struct Reply {
    text: String,
    calls: Vec<ToolCall>,
    input_tokens: u64,
    output_tokens: u64,
    /// The provider's raw message, appended to the conversation as is.
    raw_message: Value,
}

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

    fn parse_reply(&self, v: &Value) -> Result<Reply, String> {
        match &self.api {
            Api::OpenAi { .. } => {
                let msg = v
                    .pointer("/choices/0/message")
                    .ok_or("the reply has no choices[0].message")?;
                let calls = msg
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|c| ToolCall {
                                id: c["id"].as_str().unwrap_or_default().to_string(),
                                name: c
                                    .pointer("/function/name")
                                    .and_then(Value::as_str)
                                    .unwrap_or_default()
                                    .to_string(),
                                input: c
                                    .pointer("/function/arguments")
                                    .and_then(Value::as_str)
                                    .and_then(|s| serde_json::from_str(s).ok())
                                    .unwrap_or(Value::Null),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let mut raw = msg.clone();
                if raw.get("content").is_none_or(Value::is_null) {
                    raw["content"] = json!("");
                }
                Ok(Reply {
                    text: msg["content"].as_str().unwrap_or_default().to_string(),
                    calls,
                    input_tokens: v
                        .pointer("/usage/prompt_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                    output_tokens: v
                        .pointer("/usage/completion_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
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
                        Some("tool_use") => calls.push(ToolCall {
                            id: block["id"].as_str().unwrap_or_default().to_string(),
                            name: block["name"].as_str().unwrap_or_default().to_string(),
                            input: block["input"].clone(),
                        }),
                        _ => {}
                    }
                }
                Ok(Reply {
                    text,
                    calls,
                    input_tokens: v
                        .pointer("/usage/input_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                    output_tokens: v
                        .pointer("/usage/output_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
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

    /// POST one request, retrying transient failures; returns the JSON reply and the attempts.
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
            let req = builder
                .try_clone()
                .expect("a JSON body can be cloned")
                .timeout(self.settings.request_timeout.min(left))
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
                    let text = resp.text().await.unwrap_or_default();
                    (status, text, retry_after, None)
                }
                Err(e) => (0, String::new(), None, Some(e.to_string())),
            };
            log.push(json!({
                "attempt": attempt, "url": url, "status": status,
                "latency_ms": started.elapsed().as_millis() as u64,
                "error": transport.clone().or_else(|| (status >= 400).then(|| cap_text(&text, 2000))),
            }));
            if transport.is_none() && (200..300).contains(&status) {
                return serde_json::from_str(&text).map_err(|e| ApiFailure {
                    kind: ErrorKind::ApiError,
                    message: format!("{url} answered with invalid JSON: {e}"),
                });
            }
            let retry = transport.is_some() || transient(status);
            if !retry || attempt > self.settings.api_retries {
                let kind = if transport.is_some() {
                    ErrorKind::ApiError
                } else {
                    classify(status, &text)
                };
                let what = transport
                    .unwrap_or_else(|| format!("HTTP {status}: {}", cap_text(text.trim(), 500)));
                return Err(ApiFailure {
                    kind,
                    message: format!("{url} after {attempt} attempt(s): {what}"),
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
    /// The conversation loop: send `instruction`, run the tool calls the model asks for on
    /// `host`, until a final answer, `max_turns`, a budget or `deadline`. The trajectory is
    /// rewritten at `trajectory_path` after every turn.
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
        // one agent step per model turn (its exact request, response and HTTP attempts in the
        // step's `extra`).
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
        let mut timed_out = false;
        let mut final_text = String::new();
        let stop_reason = loop {
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
            let mut attempts = Vec::new();
            let t0 = Instant::now();
            let reply = tokio::select! {
                r = self.call(&body, deadline, &mut attempts) => r,
                _ = tokio::time::sleep_until(deadline.into()) => Err(ApiFailure { kind: ErrorKind::AgentExecutionTimeout, message: "timeout".into() }),
            };
            usage.requests += attempts.len() as u64;
            let value = match reply {
                Ok(v) => v,
                Err(f) if f.kind == ErrorKind::AgentExecutionTimeout => {
                    steps.push(json!({
                        "step_id": steps.len() + 1, "timestamp": now(), "source": "agent",
                        "model_name": self.model, "message": "",
                        "extra": {"turn": usage.turns, "attempts": attempts, "error": "agent timeout during the model request"},
                    }));
                    timed_out = true;
                    break "timeout";
                }
                Err(f) => {
                    steps.push(json!({
                        "step_id": steps.len() + 1, "timestamp": now(), "source": "agent",
                        "model_name": self.model, "message": "",
                        "extra": {"turn": usage.turns, "request": body, "attempts": attempts, "error": {"type": f.kind, "message": f.message}},
                    }));
                    finish_trajectory(&mut trajectory, steps, &usage, None);
                    write_trajectory(trajectory_path, &trajectory);
                    return Err(AgentError::Provider {
                        kind: f.kind,
                        message: f.message,
                    });
                }
            };
            let latency_ms = t0.elapsed().as_millis() as u64;
            let reply = self.parse_reply(&value).map_err(|m| AgentError::Provider {
                kind: ErrorKind::ApiError,
                message: m,
            })?;
            usage.input_tokens += reply.input_tokens;
            usage.output_tokens += reply.output_tokens;
            usage.cost_usd = self.cost(&usage);
            messages.push(reply.raw_message.clone());
            let mut metrics = json!({
                "prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
                "extra": {"latency_ms": latency_ms},
            });
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
                "extra": {"turn": usage.turns, "request": body, "response": value, "attempts": attempts},
            });
            if reply.calls.is_empty() {
                final_text = reply.text.clone();
                steps.push(step);
                break "final_answer";
            }
            let mut results = Vec::new();
            let mut tool_calls = Vec::new();
            let mut observations = Vec::new();
            let mut tool_seconds = Vec::new();
            for call in &reply.calls {
                let t = Instant::now();
                let left = deadline.saturating_duration_since(Instant::now());
                let timeout = self
                    .settings
                    .command_timeout
                    .min(left)
                    .max(Duration::from_secs(1));
                let mut out = cap_text(
                    &host.call(&call.name, &call.input, timeout).await,
                    self.settings.tool_output_cap,
                );
                let left = deadline.saturating_duration_since(Instant::now()).as_secs();
                out.push_str(&format!("\n[time left: {left} s]"));
                // ATIF tool arguments are an object: any other input is kept under `input`.
                let arguments = match &call.input {
                    Value::Object(_) => call.input.clone(),
                    other => json!({ "input": other }),
                };
                tool_calls.push(json!({"tool_call_id": call.id, "function_name": call.name, "arguments": arguments}));
                observations.push(json!({"source_call_id": call.id, "content": out}));
                tool_seconds.push(json!(t.elapsed().as_secs_f64()));
                results.push((call.id.clone(), out));
            }
            step["tool_calls"] = Value::Array(tool_calls);
            step["observation"] = json!({ "results": observations });
            step["extra"]["tool_seconds"] = Value::Array(tool_seconds);
            steps.push(step);
            messages.extend(self.tool_messages(&results));
            finish_trajectory(&mut trajectory, steps.clone(), &usage, None);
            write_trajectory(trajectory_path, &trajectory);
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
        finish_trajectory(&mut trajectory, steps, &usage, Some(stop_reason));
        write_trajectory(trajectory_path, &trajectory);
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
    steps: Vec<Value>,
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
    if let Some(r) = stop_reason {
        fm["extra"]["stop_reason"] = json!(r);
    }
    trajectory["steps"] = Value::Array(steps);
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
        let c = result?;
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
