//! MCP servers and skills of a task, given to agents: `rollout-agent` (scripted model server on
//! loopback) calls a stdio MCP server that runs inside the task's container, through the real
//! Docker environment; the verifier checks the tool's answer and that the server was called.

mod common;

use common::fake_llm::{final_answer, serve, tool, tool_call, Script};
use common::*;
use serde_json::json;
use std::path::Path;

/// A minimal MCP server over stdio (newline-delimited JSON-RPC) written in bash, so the image
/// needs nothing beyond the base image: one tool, `get_secret`, which logs every call.
const VAULT_SERVER: &str = r#"#!/bin/bash
while IFS= read -r line; do
  id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9][0-9]*\).*/\1/p')
  case "$line" in
    *'"method":"initialize"'*)
      printf '{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"vault","version":"1.0"}}}\n' "$id" ;;
    *'"method":"tools/list"'*)
      printf '{"jsonrpc":"2.0","id":%s,"result":{"tools":[{"name":"get_secret","description":"The vault secret stored under a name","inputSchema":{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}}]}}\n' "$id" ;;
    *'"method":"tools/call"'*)
      printf '%s\n' "$line" >> /tmp/vault-calls.log
      case "$line" in *'"name":"door"'*) answer="swordfish-4217" ;; *) answer="no such secret" ;; esac
      printf '{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"%s"}],"isError":false}}\n' "$id" "$answer" ;;
    *'"id":'*)
      [ -n "$id" ] && printf '{"jsonrpc":"2.0","id":%s,"error":{"code":-32601,"message":"method not found"}}\n' "$id" ;;
  esac
done
"#;

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// A task whose answer only the `vault` MCP server knows.
fn mcp_task(root: &Path) -> std::path::PathBuf {
    let task = root.join("mcp-vault");
    write(
        &task.join("task.toml"),
        r#"version = "1.0"

[verifier]
timeout_sec = 60.0

[agent]
timeout_sec = 120.0

[environment]
build_timeout_sec = 300.0
workdir = "/app"
skills_dir = "/skills"

[[environment.mcp_servers]]
name = "vault"
transport = "stdio"
command = "/usr/local/bin/vault-mcp"
"#,
    );
    write(
        &task.join("instruction.md"),
        "Ask the vault MCP server for the secret named `door` and write it to /app/answer.txt.\n",
    );
    write(
        &task.join("environment/Dockerfile"),
        "FROM debian:bookworm-slim\nCOPY vault-mcp /usr/local/bin/vault-mcp\nCOPY skills /skills\n\
         RUN chmod 755 /usr/local/bin/vault-mcp && mkdir -p /app\nWORKDIR /app\n",
    );
    write(&task.join("environment/vault-mcp"), VAULT_SERVER);
    write(
        &task.join("environment/skills/vault-usage/SKILL.md"),
        "---\nname: vault-usage\ndescription: How to read secrets from the vault\n---\nCall get_secret.\n",
    );
    write(
        &task.join("tests/test.sh"),
        "#!/bin/bash\n\
         if [ \"$(cat /app/answer.txt 2>/dev/null)\" = swordfish-4217 ] && grep -q '\"door\"' /tmp/vault-calls.log 2>/dev/null; then\n\
           echo 1 > /logs/verifier/reward.txt\n\
         else\n\
           echo 0 > /logs/verifier/reward.txt\n\
         fi\n",
    );
    write(
        &task.join("solution/solve.sh"),
        "#!/bin/bash\nprintf '%s\\n' '{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"get_secret\",\"arguments\":{\"name\":\"door\"}}}' | /usr/local/bin/vault-mcp >/dev/null\nprintf swordfish-4217 > /app/answer.txt\n",
    );
    task
}

#[test]
fn rollout_agent_calls_a_stdio_mcp_server_inside_the_environment() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let task = mcp_task(tmp.path());
    let script = Script::ok(vec![
        tool("call-1", "mcp__vault__get_secret", json!({"name": "door"})),
        tool_call("call-2", "printf swordfish-4217 > /app/answer.txt"),
        final_answer("The secret is in /app/answer.txt."),
    ]);
    let url = serve(script.clone());
    let out = tempfile::tempdir().unwrap();
    let output = rollout_cmd()
        .env("OPENAI_BASE_URL", &url)
        .env("OPENAI_API_KEY", "test-key")
        .args([
            "run",
            "-p",
            task.to_str().unwrap(),
            "-a",
            "rollout-agent",
            "-m",
            "fake-model",
        ])
        .args(["-o", out.path().to_str().unwrap(), "--job-name", "job"])
        .output()
        .unwrap();
    let r = Run {
        output,
        job_dir: out.path().join("job"),
        _tmp: out,
    };
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    let t = r.trial();
    assert_eq!(t["reward"], 1.0, "{t}");

    let seen = script.seen();
    assert_eq!(seen.len(), 3);
    // The MCP tool is offered next to the shell tools, with the server's schema.
    let tools = seen[0]["tools"].as_array().unwrap();
    let names: Vec<&str> = tools
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["bash", "read_file", "write_file", "mcp__vault__get_secret"]
    );
    assert_eq!(
        tools[3]["function"]["parameters"]["required"],
        json!(["name"])
    );
    // The skills of skills_dir are listed in the system prompt.
    let system = seen[0]["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.contains("<name>vault-usage</name>")
            && system.contains("/skills/vault-usage/SKILL.md"),
        "{system}"
    );
    // The server's answer went back to the model as the tool result.
    let result = seen[1]["messages"].as_array().unwrap().last().unwrap();
    assert_eq!(result["role"], "tool");
    assert_eq!(result["tool_call_id"], "call-1");
    assert!(
        result["content"]
            .as_str()
            .unwrap()
            .starts_with("swordfish-4217"),
        "{result}"
    );
    r.assert_no_containers();
}

#[test]
fn nop_scores_zero_and_an_agent_without_mcp_is_refused() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let task = mcp_task(tmp.path());
    let r = run_task(&task, "nop", &[]);
    assert_eq!(r.trial()["reward"], 0.0, "{}", r.trial());

    // aider has no MCP support: it is refused before anything runs (preflight names the
    // server), never scored.
    let r = run_task(&task, "aider", &[]);
    assert_ne!(r.code(), 0, "{}", r.stdout());
    let stderr = r.stderr();
    assert!(
        stderr.contains("MCP") && stderr.contains("vault"),
        "{stderr}"
    );
}

/// A streamable-http MCP server (JSON responses, one request per connection) in the base
/// image's perl: one tool, `get_secret`; every call is logged to the shared `/vault` volume.
const VAULT_HTTP_SERVER: &str = r#"use IO::Socket::INET;
$| = 1;
my $s = IO::Socket::INET->new(LocalPort => 8000, Listen => 16, ReuseAddr => 1) or die "listen: $!";
while (my $c = $s->accept) {
    my $req = <$c>;
    next unless defined $req;
    my $len = 0;
    while (my $h = <$c>) {
        last if $h =~ /^\r?\n$/;
        $len = $1 if $h =~ /^content-length:\s*(\d+)/i;
    }
    my $body = '';
    read($c, $body, $len) if $len > 0;
    my ($id) = $body =~ /"id"\s*:\s*(\d+)/;
    my ($code, $out, $extra) = (200, '', '');
    if ($req !~ /^POST /) {
        ($code, $out) = ($req =~ /^DELETE / ? 200 : 405, '');
    } elsif ($body =~ /"method"\s*:\s*"initialize"/) {
        $out = qq({"jsonrpc":"2.0","id":$id,"result":{"protocolVersion":"2025-03-26","capabilities":{"tools":{}},"serverInfo":{"name":"vault","version":"1.0"}}});
        $extra = "Mcp-Session-Id: vault-1\r\n";
    } elsif (!defined $id) {
        $code = 202;
    } elsif ($body =~ /"method"\s*:\s*"tools\/list"/) {
        $out = qq({"jsonrpc":"2.0","id":$id,"result":{"tools":[{"name":"get_secret","description":"The vault secret stored under a name","inputSchema":{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}}]}});
    } elsif ($body =~ /"method"\s*:\s*"tools\/call"/) {
        open(my $log, '>>', '/vault/calls.log'); print $log "$body\n"; close $log;
        my $answer = $body =~ /"name"\s*:\s*"door"/ ? 'swordfish-4217' : 'no such secret';
        $out = qq({"jsonrpc":"2.0","id":$id,"result":{"content":[{"type":"text","text":"$answer"}],"isError":false}});
    } else {
        $out = qq({"jsonrpc":"2.0","id":$id,"error":{"code":-32601,"message":"method not found"}});
    }
    my $type = length($out) ? "Content-Type: application/json\r\n" : '';
    print $c "HTTP/1.1 $code OK\r\n${type}${extra}Content-Length: " . length($out) . "\r\nConnection: close\r\n\r\n$out";
    close $c;
}
"#;

/// A compose task whose MCP server is the `vault` sidecar (streamable-http), built from its own
/// Dockerfile and healthchecked; the verifier checks the answer and the sidecar's call log.
fn mcp_sidecar_task(root: &Path) -> std::path::PathBuf {
    let task = root.join("mcp-sidecar");
    write(
        &task.join("task.toml"),
        r#"version = "1.0"

[verifier]
timeout_sec = 60.0

[agent]
timeout_sec = 120.0

[environment]
build_timeout_sec = 300.0
workdir = "/app"

[[environment.mcp_servers]]
name = "vault"
transport = "streamable-http"
url = "http://vault:8000/mcp"
"#,
    );
    write(
        &task.join("instruction.md"),
        "Ask the vault MCP server for the secret named `door` and write it to /app/answer.txt.\n",
    );
    write(
        &task.join("environment/Dockerfile"),
        "FROM debian:bookworm-slim\nRUN mkdir -p /app\nWORKDIR /app\n",
    );
    write(
        &task.join("environment/docker-compose.yaml"),
        r#"services:
  main:
    volumes:
      - vault-log:/vault
    depends_on:
      vault:
        condition: service_healthy
  vault:
    build:
      context: ./vault
    expose:
      - "8000"
    volumes:
      - vault-log:/vault
    healthcheck:
      test: ["CMD", "perl", "-MIO::Socket::INET", "-e", "IO::Socket::INET->new(PeerAddr => 'localhost:8000') or exit 1"]
      interval: 1s
      timeout: 5s
      retries: 30
volumes:
  vault-log:
"#,
    );
    write(
        &task.join("environment/vault/Dockerfile"),
        "FROM debian:bookworm-slim\nCOPY server.pl /server.pl\nRUN mkdir -p /vault\nCMD [\"perl\", \"/server.pl\"]\n",
    );
    write(&task.join("environment/vault/server.pl"), VAULT_HTTP_SERVER);
    write(
        &task.join("tests/test.sh"),
        "#!/bin/bash\n\
         if [ \"$(cat /app/answer.txt 2>/dev/null)\" = swordfish-4217 ] && grep -q '\"door\"' /vault/calls.log 2>/dev/null; then\n\
           echo 1 > /logs/verifier/reward.txt\n\
         else\n\
           echo 0 > /logs/verifier/reward.txt\n\
         fi\n",
    );
    write(
        &task.join("solution/solve.sh"),
        r#"#!/bin/bash
# Reference solution: call the vault's tool over HTTP, write its answer.
set -euo pipefail
perl -MIO::Socket::INET -e '
  my $b = q({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_secret","arguments":{"name":"door"}}});
  my $c = IO::Socket::INET->new(PeerAddr => "vault:8000", Timeout => 5) or die "connect: $!";
  print $c "POST /mcp HTTP/1.1\r\nHost: vault\r\nContent-Type: application/json\r\nContent-Length: " . length($b) . "\r\n\r\n$b";
  local $/; my $r = <$c>; $r =~ /"text":"([^"]*)"/ or die "no answer: $r"; print $1;
' > /app/answer.txt
"#,
    );
    task
}

/// The MCP server runs in a compose sidecar: `rollout-agent` reaches it under its service
/// name, the tool's answer goes back to the model, and the verifier sees the call in the
/// sidecar's log. Oracle scores 1 and nop 0 on the same task.
#[test]
fn rollout_agent_calls_an_mcp_server_in_a_compose_sidecar() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let task = mcp_sidecar_task(tmp.path());
    let oracle = run_task(&task, "oracle", &[]);
    assert_eq!(oracle.code(), 0, "stderr:\n{}", oracle.stderr());
    assert_eq!(oracle.trial()["reward"], 1.0, "{}", oracle.trial());
    let nop = run_task(&task, "nop", &[]);
    assert_eq!(nop.trial()["reward"], 0.0, "{}", nop.trial());

    let script = Script::ok(vec![
        tool("call-1", "mcp__vault__get_secret", json!({"name": "door"})),
        tool_call("call-2", "printf swordfish-4217 > /app/answer.txt"),
        final_answer("The secret is in /app/answer.txt."),
    ]);
    let url = serve(script.clone());
    let out = tempfile::tempdir().unwrap();
    let output = rollout_cmd()
        .env("OPENAI_BASE_URL", &url)
        .env("OPENAI_API_KEY", "test-key")
        .args(["run", "-p", task.to_str().unwrap(), "-a", "rollout-agent"])
        .args(["-m", "fake-model", "-o", out.path().to_str().unwrap()])
        .args(["--job-name", "job"])
        .output()
        .unwrap();
    let r = Run {
        output,
        job_dir: out.path().join("job"),
        _tmp: out,
    };
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    let t = r.trial();
    assert_eq!(t["reward"], 1.0, "{t}");
    let seen = script.seen();
    let result = seen[1]["messages"].as_array().unwrap().last().unwrap();
    assert_eq!(result["tool_call_id"], "call-1");
    assert!(
        result["content"]
            .as_str()
            .unwrap()
            .starts_with("swordfish-4217"),
        "{result}"
    );
    for run in [&oracle, &nop, &r] {
        run.assert_no_containers();
    }
}
