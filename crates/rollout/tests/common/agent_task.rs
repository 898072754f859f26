//! Installed agents for real (tests/real_agents*.rs): the hello-world task with a scripted
//! model provider (tests/fixtures/scripted-providers/NAME.py) as a compose service `llm`
//! (port 8080, healthy once it answers) next to the main container, and a run of one
//! installed agent on it.

use super::*;
use std::path::{Path, PathBuf};

/// Write `text` at `root/rel` (scripts ending in `.sh` executable).
pub fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    if rel.ends_with(".sh") {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// The scripted provider of a [`task_with`] task and the task's time limits.
pub struct Provider<'a> {
    /// The script under tests/fixtures/scripted-providers/ (without `.py`).
    pub script: &'a str,
    /// The only API key it accepts.
    pub api_key: &'a str,
    /// More environment of the provider service (such as the `PLAY` it performs).
    pub env: &'a [(&'a str, &'a str)],
    pub agent_timeout_sec: f64,
    pub install_timeout_sec: f64,
}

/// hello-world with a scripted provider service `llm` (port 8080) next to the main
/// container; `provider` names the script under tests/fixtures/scripted-providers/, which
/// accepts only `api_key`.
pub fn task_with_provider(root: &Path, provider: &str, api_key: &str) -> PathBuf {
    task_with(
        root,
        &Provider {
            script: provider,
            api_key,
            env: &[],
            agent_timeout_sec: 300.0,
            install_timeout_sec: 600.0,
        },
    )
}

/// hello-world with `provider` as compose service `llm` (port 8080, healthy once it answers).
pub fn task_with(root: &Path, provider: &Provider) -> PathBuf {
    let t = root.join("hello-scripted");
    let hello = example("hello-world");
    for rel in ["instruction.md", "tests/test.sh", "environment/Dockerfile"] {
        write(&t, rel, &std::fs::read_to_string(hello.join(rel)).unwrap());
    }
    write(
        &t,
        "task.toml",
        &format!(
            "version = \"1.0\"\n[agent]\ntimeout_sec = {:.1}\ninstall_timeout_sec = {:.1}\n\
             [verifier]\ntimeout_sec = 60.0\n\
             [environment]\nworkdir = \"/app\"\nmemory_mb = 4096\nbuild_timeout_sec = 600.0\n",
            provider.agent_timeout_sec, provider.install_timeout_sec
        ),
    );
    let env: String = std::iter::once(("API_KEY", provider.api_key))
        .chain(provider.env.iter().copied())
        .map(|(k, v)| format!("      - {k}={v}\n"))
        .collect();
    write(
        &t,
        "environment/docker-compose.yaml",
        &format!(
            r#"services:
  main:
    depends_on:
      llm:
        condition: service_healthy
  llm:
    build:
      context: ./llm
    expose:
      - "8080"
    environment:
{env}    healthcheck:
      test: ["CMD", "python3", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:8080/health')"]
      interval: 1s
      timeout: 5s
      retries: 60
"#
        ),
    );
    let script = provider.script;
    write(
        &t,
        "environment/llm/Dockerfile",
        &format!(
            "FROM debian:bookworm-slim\n\
             RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*\n\
             COPY {script}.py /srv/provider.py\n\
             CMD [\"python3\", \"-u\", \"/srv/provider.py\"]\n"
        ),
    );
    write(
        &t,
        &format!("environment/llm/{script}.py"),
        &std::fs::read_to_string(
            repo().join(format!("tests/fixtures/scripted-providers/{script}.py")),
        )
        .unwrap(),
    );
    t
}

/// One installed agent's run on the scripted-provider task.
pub struct AgentRun {
    pub run: Run,
    /// The trial directory.
    pub trial: PathBuf,
    pub _task: tempfile::TempDir,
}

impl AgentRun {
    /// The trial's result.json.
    pub fn result(&self) -> serde_json::Value {
        read_json(&self.trial.join("result.json"))
    }

    /// What the run printed, for assertion messages.
    pub fn outputs(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.run.stdout(),
            self.run.stderr()
        )
    }
}

/// Run installed agent `agent` with model `model` on hello-world served by scripted provider
/// `provider` (which accepts only `provider_key`); `env` is what the agent gets from the host
/// (its API key and base URL variables); `unset` are host variables removed first.
pub fn run_agent(
    agent: &str,
    model: &str,
    provider: &str,
    provider_key: &str,
    env: &[(&str, &str)],
    unset: &[&str],
) -> AgentRun {
    let tmp = tempfile::tempdir().unwrap();
    let task = task_with_provider(tmp.path(), provider, provider_key);
    run_agent_on(tmp, &task, agent, model, env, unset)
}

/// As [`run_agent`], on `task` (inside `dir`, kept as long as the run).
pub fn run_agent_on(
    dir: tempfile::TempDir,
    task: &Path,
    agent: &str,
    model: &str,
    env: &[(&str, &str)],
    unset: &[&str],
) -> AgentRun {
    let mut cmd = rollout_cmd();
    for k in unset {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let run = run_with(
        cmd,
        &["-p", task.to_str().unwrap(), "-a", agent, "-m", model],
    );
    let trial = run.job_dir.join(format!("hello-scripted__{agent}__1"));
    AgentRun {
        run,
        trial,
        _task: dir,
    }
}
