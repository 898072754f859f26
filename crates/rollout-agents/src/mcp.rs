//! The task's MCP servers (`[[environment.mcp_servers]]`) as tools of the built-in agent.
//!
//! The agent's loop runs on this machine, the servers live in the trial's environment, so every
//! connection goes through the environment:
//!
//! - `stdio`: the server's command is started INSIDE the environment (as the agent's user, with
//!   the agent's variables) through an exec with stdin and stdout attached
//!   ([`Environment::exec_stream`]); MCP messages travel over that exec.
//! - `streamable-http`: the URL's host (a compose service name such as `mcp-server`, or
//!   `localhost` for a server in the main container) is resolved inside the environment
//!   (`getent`), and this machine connects to that address directly, keeping the URL, its port
//!   and its `Host` header unchanged. This needs a provider whose network this machine can
//!   reach ([`Environment::host_reaches_network`]: Docker on Linux).
//! - `sse` (the legacy HTTP+SSE transport, deprecated by the MCP specification) has no client in
//!   the official Rust SDK: the task is refused for this agent.
//!
//! Where a server cannot be reached the trial fails with a typed error before the model is
//! asked anything; it never runs without the tools the task declared.
//!
//! Client: the official Rust SDK (`rmcp`).

use crate::AgentError;
use rmcp::model::{CallToolRequestParams, Tool};
use rmcp::service::RunningService;
use rmcp::{RoleClient, ServiceExt};
use rollout_core::task_config::{McpServerConfig, McpTransport};
use rollout_core::ErrorKind;
use rollout_env::{Environment, ExecRequest};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Prefix of every MCP tool offered to the model: `mcp__<server>__<tool>`.
pub const TOOL_PREFIX: &str = "mcp__";

/// Longest tool name the model APIs accept.
const MAX_TOOL_NAME: usize = 64;

/// Why the built-in agent cannot use a server at all (checked before the trial starts).
pub fn unsupported(server: &McpServerConfig) -> Option<String> {
    (server.transport == McpTransport::Sse).then(|| {
        format!(
            "MCP server {:?} uses the legacy `sse` transport (Harbor's default when `transport` is \
             omitted), which rollout-agent does not speak (the official Rust MCP SDK has no SSE \
             client); set transport = \"streamable-http\" in task.toml if the server offers it, \
             or use an agent that speaks sse (claude-code, gemini-cli, opencode)",
            server.name
        )
    })
}

/// The name the model sees for `tool` of `server`: `mcp__<server>__<tool>`, with characters
/// outside `[A-Za-z0-9_-]` replaced by `_` and cut to 64 characters.
pub fn exposed_name(server: &str, tool: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut name = format!("{TOOL_PREFIX}{}__{}", clean(server), clean(tool));
    name.truncate(MAX_TOOL_NAME);
    name
}

/// One tool of a connected server.
#[derive(Debug, Clone)]
pub struct McpTool {
    /// Name offered to the model.
    pub exposed: String,
    /// Index of the server in [`McpSession::servers`].
    server: usize,
    /// The server's own name for it.
    pub name: String,
    pub description: String,
    pub input_schema: Value,
}

/// Connections to the task's MCP servers, and their tools.
pub struct McpSession {
    servers: Vec<(String, RunningService<RoleClient, ()>)>,
    pub tools: Vec<McpTool>,
}

fn failed(message: String) -> AgentError {
    AgentError::Provider {
        kind: ErrorKind::AgentExecutionFailed,
        message,
        outcome: None,
    }
}

impl McpSession {
    /// No servers.
    pub fn empty() -> Self {
        Self {
            servers: Vec::new(),
            tools: Vec::new(),
        }
    }

    /// Connect to every server of the task through `env` and list their tools, within
    /// `timeout` per server.
    pub async fn connect(
        servers: &[McpServerConfig],
        env: &dyn Environment,
        user: Option<String>,
        env_vars: &[(String, String)],
        timeout: Duration,
    ) -> Result<Self, AgentError> {
        let mut session = Self::empty();
        for server in servers {
            if let Some(why) = unsupported(server) {
                return Err(AgentError::Config(why));
            }
            let client = match server.transport {
                McpTransport::Stdio => {
                    connect_stdio(server, env, user.clone(), env_vars, timeout).await?
                }
                _ => connect_http(server, env, timeout).await?,
            };
            session.add(server.name.clone(), client, timeout).await?;
        }
        Ok(session)
    }

    /// Add a connected client and list its tools.
    pub async fn add(
        &mut self,
        name: String,
        client: RunningService<RoleClient, ()>,
        timeout: Duration,
    ) -> Result<(), AgentError> {
        let tools: Vec<Tool> = tokio::time::timeout(timeout, client.list_all_tools())
            .await
            .map_err(|_| {
                failed(format!(
                    "MCP server {name:?} did not list its tools within {} s",
                    timeout.as_secs()
                ))
            })?
            .map_err(|e| {
                failed(format!(
                    "MCP server {name:?}: listing its tools failed: {e}"
                ))
            })?;
        let index = self.servers.len();
        for tool in tools {
            let exposed = exposed_name(&name, &tool.name);
            if self.tools.iter().any(|t| t.exposed == exposed) {
                return Err(AgentError::Config(format!(
                    "MCP server {name:?}: tool {:?} would be offered as {exposed}, a name already \
                     taken by another MCP tool; rename the server in task.toml",
                    tool.name
                )));
            }
            self.tools.push(McpTool {
                exposed,
                server: index,
                name: tool.name.to_string(),
                description: tool.description.as_deref().unwrap_or_default().to_string(),
                input_schema: Value::Object((*tool.input_schema).clone()),
            });
        }
        self.servers.push((name, client));
        Ok(())
    }

    /// Tools in the model-neutral form `(name, description, JSON schema)`.
    pub fn schemas(&self) -> Vec<(String, String, Value)> {
        self.tools
            .iter()
            .map(|t| {
                let server = &self.servers[t.server].0;
                let mut schema = t.input_schema.clone();
                if schema.get("type").is_none() {
                    schema["type"] = json!("object");
                }
                (
                    t.exposed.clone(),
                    format!("[MCP server {server}] {}", t.description),
                    schema,
                )
            })
            .collect()
    }

    /// Run the tool the model calls `exposed`; `None` when it is not an MCP tool. Failures are
    /// text starting with `error:` for the model.
    pub async fn call(&self, exposed: &str, input: &Value, timeout: Duration) -> Option<String> {
        let tool = self.tools.iter().find(|t| t.exposed == exposed)?;
        let (server, client) = &self.servers[tool.server];
        let mut params = CallToolRequestParams::new(tool.name.clone());
        match input {
            Value::Object(map) => params = params.with_arguments(map.clone()),
            Value::Null => {}
            _ => {
                return Some(format!(
                    "error: the arguments of {exposed} must be a JSON object"
                ))
            }
        }
        let result = match tokio::time::timeout(timeout, client.call_tool(params)).await {
            Err(_) => {
                return Some(format!(
                    "error: MCP tool {} of server {server} did not answer within {} s",
                    tool.name,
                    timeout.as_secs()
                ))
            }
            Ok(Err(e)) => {
                return Some(format!(
                    "error: MCP tool {} of server {server} failed: {e}",
                    tool.name
                ))
            }
            Ok(Ok(r)) => r,
        };
        let mut text = String::new();
        if result.is_error == Some(true) {
            text.push_str("error: the tool reported a failure\n");
        }
        for block in &result.content {
            match block.as_text() {
                Some(t) => text.push_str(&t.text),
                None => text.push_str(&serde_json::to_string(block).unwrap_or_default()),
            }
            text.push('\n');
        }
        if let Some(s) = &result.structured_content {
            if result.content.is_empty() {
                text.push_str(&s.to_string());
            }
        }
        Some(text)
    }

    /// Close every connection (a stdio server sees its stdin close and ends).
    pub async fn close(self) {
        for (_, client) in self.servers {
            let _ = tokio::time::timeout(Duration::from_secs(5), client.cancel()).await;
        }
    }
}

/// Start a stdio server inside the environment and speak MCP over its stdin and stdout.
async fn connect_stdio(
    server: &McpServerConfig,
    env: &dyn Environment,
    user: Option<String>,
    env_vars: &[(String, String)],
    timeout: Duration,
) -> Result<RunningService<RoleClient, ()>, AgentError> {
    let command = server.command.clone().unwrap_or_default();
    let mut argv = vec![command.clone()];
    argv.extend(server.args.iter().cloned());
    let req = ExecRequest::argv(argv, timeout)
        .user(user)
        .env(env_vars.iter().cloned());
    let Some(stream) = env.exec_stream(req).await? else {
        return Err(AgentError::Config(format!(
            "MCP server {:?} (stdio): this environment provider cannot attach to a command's \
             stdin and stdout, so rollout-agent cannot start the server; run the task on Docker",
            server.name
        )));
    };
    let started = tokio::time::timeout(timeout, ().serve((stream.stdout, stream.stdin))).await;
    match started {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(failed(format!(
            "MCP server {:?}: `{command}` did not complete the MCP handshake over stdio: {e} \
             (does the command exist in the image and speak MCP on stdout?)",
            server.name
        ))),
        Err(_) => Err(failed(format!(
            "MCP server {:?}: `{command}` did not complete the MCP handshake within {} s",
            server.name,
            timeout.as_secs()
        ))),
    }
}

/// Resolve `host` the way the environment's main container does: a service name through the
/// trial network's DNS, `localhost` as the container's own address.
async fn resolve_in_env(
    env: &dyn Environment,
    server: &str,
    host: &str,
) -> Result<IpAddr, AgentError> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        if !ip.is_loopback() {
            return Ok(ip);
        }
    }
    let script = "h=\"$1\"; case \"$h\" in localhost|127.*|::1|\\[::1\\]) h=$(hostname);; esac; \
                  getent ahostsv4 \"$h\" 2>/dev/null | awk 'NR==1{print $1}' | grep . \
                  || getent hosts \"$h\" | awk 'NR==1{print $1}'";
    let req = ExecRequest::argv(
        vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            "rollout-resolve".into(),
            host.into(),
        ],
        Duration::from_secs(30),
    );
    let out = env.exec(req).await?;
    let text = String::from_utf8_lossy(&out.stdout.bytes)
        .trim()
        .to_string();
    text.parse::<IpAddr>().map_err(|_| {
        failed(format!(
            "MCP server {server:?}: host {host:?} does not resolve inside the environment \
             (getent answered {text:?}); is the service running and named so in \
             docker-compose.yaml?"
        ))
    })
}

/// Connect to a streamable-http server of the environment.
async fn connect_http(
    server: &McpServerConfig,
    env: &dyn Environment,
    timeout: Duration,
) -> Result<RunningService<RoleClient, ()>, AgentError> {
    let raw = server.url.clone().unwrap_or_default();
    let url = reqwest::Url::parse(&raw).map_err(|e| {
        AgentError::Config(format!("MCP server {:?}: url {raw:?}: {e}", server.name))
    })?;
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    if !env.host_reaches_network() {
        return Err(AgentError::Config(format!(
            "MCP server {:?} ({raw}): rollout-agent runs on this machine and reaches HTTP MCP \
             servers at their address on the environment's network, which this provider does \
             not expose here (supported: Docker on Linux); use a stdio server or an installed \
             agent (claude-code, codex …), which runs inside the environment",
            server.name
        )));
    }
    let ip = resolve_in_env(env, &server.name, &host).await?;
    http_client(
        server,
        &url,
        Some((host, SocketAddr::new(ip, port))),
        timeout,
    )
    .await
}

/// A streamable-http client for `url`, optionally with `host` pinned to an address.
pub async fn http_client(
    server: &McpServerConfig,
    url: &reqwest::Url,
    pin: Option<(String, SocketAddr)>,
    timeout: Duration,
) -> Result<RunningService<RoleClient, ()>, AgentError> {
    use rmcp::transport::streamable_http_client::{
        StreamableHttpClientTransport, StreamableHttpClientTransportConfig,
    };
    let (headers, missing) = rollout_core::envvars::expand_map(&server.headers);
    if !missing.is_empty() {
        return Err(AgentError::Config(format!(
            "MCP server {:?}: headers refer to unset host variable(s) {}; export them",
            server.name,
            missing.join(", ")
        )));
    }
    let mut custom = std::collections::HashMap::new();
    for (k, v) in headers {
        let name = reqwest::header::HeaderName::try_from(k.as_str()).map_err(|e| {
            AgentError::Config(format!("MCP server {:?}: header {k:?}: {e}", server.name))
        })?;
        let value = reqwest::header::HeaderValue::try_from(v.as_str()).map_err(|e| {
            AgentError::Config(format!("MCP server {:?}: header {k:?}: {e}", server.name))
        })?;
        custom.insert(name, value);
    }
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .no_proxy();
    if let Some((host, addr)) = &pin {
        builder = builder.resolve(host, *addr);
    }
    let client = builder
        .build()
        .map_err(|e| AgentError::Host(format!("building the MCP HTTP client: {e}")))?;
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
    config.custom_headers = custom;
    // A sidecar may still be starting: retry the handshake until `timeout`.
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        let transport = StreamableHttpClientTransport::with_client(client.clone(), config.clone());
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ().serve(transport)).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no answer".into(),
        }
        tokio::time::sleep(Duration::from_millis(500).min(left)).await;
    }
    let via = pin.map_or(String::new(), |(_, a)| format!(" (reached at {a})"));
    Err(failed(format!(
        "MCP server {:?} at {url}{via} did not complete the MCP handshake within {} s: {last}",
        server.name,
        timeout.as_secs()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_names_are_namespaced_and_valid() {
        assert_eq!(exposed_name("kv", "get"), "mcp__kv__get");
        assert_eq!(exposed_name("my server", "a.b/c"), "mcp__my_server__a_b_c");
        let long = exposed_name(&"s".repeat(50), &"t".repeat(50));
        assert_eq!(long.len(), 64);
    }

    #[test]
    fn sse_is_refused_with_the_way_out() {
        let s = McpServerConfig {
            name: "m".into(),
            transport: McpTransport::Sse,
            url: Some("http://m:8000/sse".into()),
            command: None,
            args: vec![],
            headers: Default::default(),
        };
        let why = unsupported(&s).unwrap();
        assert!(
            why.contains("streamable-http") && why.contains("\"m\""),
            "{why}"
        );
        let s = McpServerConfig {
            transport: McpTransport::StreamableHttp,
            ..s
        };
        assert!(unsupported(&s).is_none());
    }

    /// A real MCP server (the official SDK's server side) with one tool, `lookup`.
    mod server {
        use rmcp::model::*;
        use rmcp::service::RequestContext;
        use rmcp::{ErrorData, RoleServer, ServerHandler};
        use std::sync::Arc;

        pub struct Kv;

        impl ServerHandler for Kv {
            fn get_info(&self) -> ServerConfig {
                let mut info = ServerConfig::default();
                info.capabilities = ServerCapabilities::builder().enable_tools().build();
                info
            }

            async fn list_tools(
                &self,
                _request: Option<PaginatedRequestParams>,
                _context: RequestContext<RoleServer>,
            ) -> Result<ListToolsResult, ErrorData> {
                let schema = serde_json::json!({
                    "type": "object",
                    "properties": {"key": {"type": "string"}},
                    "required": ["key"]
                });
                let serde_json::Value::Object(schema) = schema else {
                    unreachable!()
                };
                Ok(ListToolsResult::with_all_items(vec![Tool::new(
                    "lookup",
                    "Look a key up",
                    Arc::new(schema),
                )]))
            }

            async fn call_tool(
                &self,
                request: CallToolRequestParams,
                _context: RequestContext<RoleServer>,
            ) -> Result<CallToolResponse, ErrorData> {
                let key = request
                    .arguments
                    .as_ref()
                    .and_then(|a| a.get("key"))
                    .and_then(|k| k.as_str())
                    .unwrap_or("?")
                    .to_string();
                if key == "boom" {
                    return Ok(
                        CallToolResult::error(vec![ContentBlock::text("no such key")]).into(),
                    );
                }
                Ok(
                    CallToolResult::success(vec![ContentBlock::text(format!("value-of-{key}"))])
                        .into(),
                )
            }
        }
    }

    fn http_server_config(url: String) -> McpServerConfig {
        McpServerConfig {
            name: "kv".into(),
            transport: McpTransport::StreamableHttp,
            url: Some(url),
            command: None,
            args: vec![],
            headers: Default::default(),
        }
    }

    #[tokio::test]
    async fn tools_of_a_server_over_a_byte_stream_are_listed_and_called() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let running = server::Kv.serve(server_io).await.expect("server handshake");
            let _ = running.waiting().await;
        });
        let client = ().serve(client_io).await.expect("client handshake");
        let mut session = McpSession::empty();
        session
            .add("kv".into(), client, Duration::from_secs(10))
            .await
            .unwrap();
        let schemas = session.schemas();
        assert_eq!(schemas.len(), 1);
        assert_eq!(schemas[0].0, "mcp__kv__lookup");
        assert!(schemas[0].1.contains("Look a key up"), "{}", schemas[0].1);
        assert_eq!(schemas[0].2["required"], json!(["key"]));
        let out = session
            .call(
                "mcp__kv__lookup",
                &json!({"key": "alpha"}),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(out.trim(), "value-of-alpha");
        let out = session
            .call(
                "mcp__kv__lookup",
                &json!({"key": "boom"}),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert!(
            out.starts_with("error:") && out.contains("no such key"),
            "{out}"
        );
        let out = session
            .call("mcp__kv__lookup", &json!("x"), Duration::from_secs(10))
            .await
            .unwrap();
        assert!(out.starts_with("error:"), "{out}");
        assert!(session
            .call("bash", &json!({}), Duration::from_secs(1))
            .await
            .is_none());
        session.close().await;
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_streamable_http_server_is_reached_under_its_service_name() {
        use rmcp::transport::streamable_http_server::{
            session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
        };
        // The server accepts only the Host of its service name, as a sidecar would see it: the
        // client must keep the URL's host while connecting to the pinned address.
        let service = StreamableHttpService::new(
            || Ok(server::Kv),
            std::sync::Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default().with_allowed_hosts(["kv-server"]),
        );
        let app = axum::Router::new().nest_service("/mcp", service);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serve = tokio::spawn(async move { axum::serve(listener, app).await });
        let cfg = http_server_config(format!("http://kv-server:{}/mcp", addr.port()));
        let url = reqwest::Url::parse(cfg.url.as_deref().unwrap()).unwrap();
        let client = http_client(
            &cfg,
            &url,
            Some(("kv-server".into(), addr)),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let mut session = McpSession::empty();
        session
            .add("kv".into(), client, Duration::from_secs(10))
            .await
            .unwrap();
        let out = session
            .call(
                "mcp__kv__lookup",
                &json!({"key": "beta"}),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(out.trim(), "value-of-beta");
        session.close().await;
        serve.abort();
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_with_a_message_naming_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let cfg = http_server_config(format!("http://kv-server:{}/mcp", addr.port()));
        let url = reqwest::Url::parse(cfg.url.as_deref().unwrap()).unwrap();
        let err = http_client(
            &cfg,
            &url,
            Some(("kv-server".into(), addr)),
            Duration::from_secs(1),
        )
        .await
        .err()
        .unwrap();
        let text = err.to_string();
        assert!(
            text.contains("\"kv\"") && text.contains(&addr.to_string()),
            "{text}"
        );
        assert!(matches!(
            err,
            AgentError::Provider {
                kind: ErrorKind::AgentExecutionFailed,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn header_variables_must_be_set() {
        let mut cfg = http_server_config("http://kv:1/mcp".into());
        cfg.headers.insert(
            "Authorization".into(),
            "Bearer ${ROLLOUT_TEST_SURELY_UNSET_MCP_TOKEN}".into(),
        );
        let url = reqwest::Url::parse("http://kv:1/mcp").unwrap();
        let err = http_client(&cfg, &url, None, Duration::from_secs(1))
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("ROLLOUT_TEST_SURELY_UNSET_MCP_TOKEN"),
            "{err}"
        );
    }
}
