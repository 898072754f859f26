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

/// hello-world with a scripted provider service `llm` (port 8080) next to the main
/// container; `provider` names the script under tests/fixtures/scripted-providers/, which
/// accepts only `api_key`.
pub fn task_with_provider(root: &Path, provider: &str, api_key: &str) -> PathBuf {
    let t = root.join("hello-scripted");
    let hello = example("hello-world");
    for rel in ["instruction.md", "tests/test.sh", "environment/Dockerfile"] {
        write(&t, rel, &std::fs::read_to_string(hello.join(rel)).unwrap());
    }
    write(
        &t,
        "task.toml",
        "version = \"1.0\"\n[agent]\ntimeout_sec = 300.0\ninstall_timeout_sec = 600.0\n\
         [verifier]\ntimeout_sec = 60.0\n\
         [environment]\nworkdir = \"/app\"\nmemory_mb = 4096\nbuild_timeout_sec = 600.0\n",
    );
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
      - API_KEY={api_key}
    healthcheck:
      test: ["CMD", "python3", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:8080/health')"]
      interval: 1s
      timeout: 5s
      retries: 60
"#
        ),
    );
    write(
        &t,
        "environment/llm/Dockerfile",
        &format!(
            "FROM debian:bookworm-slim\n\
             RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*\n\
             COPY {provider}.py /srv/provider.py\n\
             CMD [\"python3\", \"-u\", \"/srv/provider.py\"]\n"
        ),
    );
    write(
        &t,
        &format!("environment/llm/{provider}.py"),
        &std::fs::read_to_string(
            repo().join(format!("tests/fixtures/scripted-providers/{provider}.py")),
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
    require_docker();
    let out = tempfile::tempdir().unwrap();
    let mut cmd = rollout_cmd();
    for k in unset {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let output = cmd
        .args([
            "run",
            "-p",
            task.to_str().unwrap(),
            "-a",
            agent,
            "-m",
            model,
        ])
        .args(["-o", out.path().to_str().unwrap(), "--job-name", "job"])
        .output()
        .unwrap();
    let run = Run {
        output,
        job_dir: out.path().join("job"),
        _tmp: out,
    };
    let trial = run.job_dir.join(format!("hello-scripted__{agent}__1"));
    AgentRun {
        run,
        trial,
        _task: tmp,
    }
}
