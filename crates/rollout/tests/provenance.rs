//! Provenance: the tracer on real processes, lineage and staleness across traced steps,
//! reproduction in a fresh clone, trial recording for a real `rollout run`, concurrent writers,
//! and registration (dry run and against a real HTTP server).

mod common;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// A project directory and its own store (outside the project, so clones do not see it).
struct Project {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    store: PathBuf,
}

impl Project {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap().join("proj");
        std::fs::create_dir_all(&dir).unwrap();
        let store = tmp.path().join("store/rollout.db");
        Project {
            _tmp: tmp,
            dir,
            store,
        }
    }

    fn write(&self, rel: &str, body: &str) {
        let p = self.dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn cmd(&self) -> Command {
        let mut c = rollout_cmd();
        c.current_dir(&self.dir).env("ROLLOUT_STORE", &self.store);
        c
    }

    fn rollout(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// `rollout trace -- sh -c SCRIPT`, which must succeed.
    fn trace_sh(&self, script: &str) -> Output {
        let out = self.rollout(&["trace", "--", "sh", "-c", script]);
        assert!(
            out.status.success(),
            "trace `{script}` failed: {}",
            text(&out.stderr)
        );
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.rollout(args);
        assert!(
            out.status.success(),
            "rollout {args:?}: {}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("rollout {args:?}: {e}: {}", text(&out.stdout)))
    }

    /// The latest recorded job, in full.
    fn last_job(&self) -> Value {
        let log = self.json(&["log", "--json", "-n", "1"]);
        let uid = log[0]["uid"].as_str().unwrap().to_string();
        self.json(&["show", &uid, "--json"])
    }

    fn git(&self, args: &[&str]) {
        let out = Command::new("git")
            .current_dir(&self.dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn paths(refs: &Value) -> Vec<String> {
    refs.as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect()
}

fn has(list: &[String], p: &Path) -> bool {
    list.iter().any(|x| Path::new(x) == p)
}

#[test]
fn trace_records_reads_writes_renames_execs_and_children() {
    let p = Project::new();
    p.write("in.txt", "hello provenance\n");
    p.write(
        "script.py",
        "import os\ndata = open('in.txt').read()\nos.makedirs('py', exist_ok=True)\nopen('py/out.txt', 'w').write(data.upper())\n",
    );
    p.write("sub/keep", "");
    p.write("consumed.txt", "read, then removed\n");
    let out = p.rollout(&[
        "trace",
        "--",
        "sh",
        "-c",
        "cat in.txt | (cd sub && tr a-z A-Z > up.txt) && python3 script.py && cp in.txt tmp.txt && mv tmp.txt moved.txt && (echo scratch > scratch.txt; rm scratch.txt) && cat consumed.txt > /dev/null && rm consumed.txt; exit 7",
    ]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "exit status is the command's: {}",
        text(&out.stderr)
    );
    let job = p.last_job();
    assert_eq!(job["kind"], "trace");
    assert_eq!(job["exit_code"], 7);
    let inputs = paths(&job["inputs"]);
    let outputs = paths(&job["outputs"]);
    assert!(has(&inputs, &p.path("in.txt")), "inputs {inputs:?}");
    assert!(
        has(&inputs, &p.path("script.py")),
        "the python script is an input: {inputs:?}"
    );
    assert!(
        has(&outputs, &p.path("sub/up.txt")),
        "a subshell's output: {outputs:?}"
    );
    assert!(
        has(&outputs, &p.path("py/out.txt")),
        "python's output: {outputs:?}"
    );
    assert!(
        has(&outputs, &p.path("moved.txt")),
        "rename target: {outputs:?}"
    );
    assert!(
        !has(&outputs, &p.path("tmp.txt")),
        "renamed away: {outputs:?}"
    );
    assert!(
        !has(&outputs, &p.path("scratch.txt")),
        "deleted: {outputs:?}"
    );
    assert!(
        !has(&inputs, &p.path("consumed.txt")),
        "read, then removed by the command: no file to record: {inputs:?}"
    );
    assert!(
        inputs
            .iter()
            .chain(&outputs)
            .all(|x| !x.starts_with("/proc") && !x.starts_with("/dev") && !x.starts_with("/usr")),
        "system paths are filtered: {inputs:?}"
    );
    let execs: Vec<String> = job["metadata"]["execs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    for prog in ["cat", "tr", "cp", "mv", "rm"] {
        assert!(
            execs.iter().any(|e| e.ends_with(&format!("/{prog}"))),
            "{prog} exec'd: {execs:?}"
        );
    }
    assert!(execs.iter().any(|e| e.contains("python3")), "{execs:?}");
    assert!(job["metadata"]["processes"].as_u64().unwrap() >= 6);
    // The recorded hashes are the files' BLAKE3.
    let moved = job["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["path"].as_str().unwrap().ends_with("moved.txt"))
        .unwrap();
    assert_eq!(
        moved["hash"].as_str().unwrap(),
        blake3::hash(b"hello provenance\n").to_hex().as_str()
    );
}

#[test]
fn lineage_across_three_steps_and_staleness_after_rerunning_the_first() {
    let p = Project::new();
    p.write("raw.txt", "3\n1\n2\n");
    let step1 = "sort raw.txt > sorted.txt";
    p.trace_sh(step1);
    p.trace_sh("head -n 2 sorted.txt > top.txt");
    p.trace_sh("wc -l < top.txt > count.txt");

    let tree = p.json(&["lineage", p.path("count.txt").to_str().unwrap(), "--json"]);
    let j3 = &tree["produced_by"];
    assert!(
        j3["job"]["command"].as_str().unwrap().contains("wc -l"),
        "{tree:#}"
    );
    let top = &j3["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["path"].as_str().unwrap().ends_with("top.txt"))
        .unwrap();
    let j2 = &top["produced_by"];
    assert!(
        j2["job"]["command"].as_str().unwrap().contains("head"),
        "{tree:#}"
    );
    let sorted = j2["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["path"].as_str().unwrap().ends_with("sorted.txt"))
        .unwrap();
    let j1 = &sorted["produced_by"];
    assert!(
        j1["job"]["command"]
            .as_str()
            .unwrap()
            .contains("sort raw.txt"),
        "{tree:#}"
    );
    let raw = &j1["inputs"][0];
    assert!(raw["path"].as_str().unwrap().ends_with("raw.txt"));
    assert!(raw["produced_by"].is_null(), "raw.txt is a source");
    // The text tree shows the chain too; --depth 1 stops after one job.
    let out = p.rollout(&["lineage", p.path("count.txt").to_str().unwrap()]);
    let t = text(&out.stdout);
    assert!(
        t.contains("wc -l")
            && t.contains("head -n 2")
            && t.contains("sort raw.txt")
            && t.contains("[source]"),
        "{t}"
    );
    let short = p.json(&[
        "lineage",
        p.path("count.txt").to_str().unwrap(),
        "--json",
        "--depth",
        "1",
    ]);
    assert!(
        short["produced_by"]["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["truncated"] == true),
        "{short:#}"
    );

    let st = p.json(&["status", "--json"]);
    assert!(st["stale"].as_array().unwrap().is_empty(), "{st:#}");
    assert!(st["changed"].as_array().unwrap().is_empty(), "{st:#}");

    // Change the source and re-run step 1 only: step 2 read a replaced version of
    // sorted.txt, step 3 is downstream of it.
    p.write("raw.txt", "9\n8\n7\n");
    p.trace_sh(step1);
    let st = p.json(&["status", "--json"]);
    let stale: Vec<(String, bool)> = st["stale"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["job"]["command"].as_str().unwrap().to_string(),
                s["upstream"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(stale.len(), 2, "{st:#}");
    assert!(stale[0].0.contains("head") && !stale[0].1, "{stale:?}");
    assert!(stale[1].0.contains("wc -l") && stale[1].1, "{stale:?}");
    assert!(st["stale"][0]["path"]
        .as_str()
        .unwrap()
        .ends_with("sorted.txt"));
    let human = text(&p.rollout(&["status"]).stdout);
    assert!(
        human.contains("stale") && human.contains("sorted.txt"),
        "{human}"
    );
    // Editing an output by hand shows as a changed file.
    p.write("count.txt", "edited\n");
    let st = p.json(&["status", "--json"]);
    assert!(
        st["changed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["path"].as_str().unwrap().ends_with("count.txt")),
        "{st:#}"
    );
}

#[test]
fn reproduce_a_traced_pipeline_in_a_fresh_clone() {
    let p = Project::new();
    p.write("data.txt", "b\na\nc\n");
    p.write(
        "make_report.sh",
        "mkdir -p out\nsort build/data.txt | tr a-z A-Z > out/report.txt\n",
    );
    p.git(&["init", "-q"]);
    p.git(&["add", "data.txt", "make_report.sh"]);
    p.git(&["commit", "-q", "-m", "pipeline"]);
    let out = p.rollout(&[
        "trace",
        "--build",
        "--",
        "sh",
        "-c",
        "mkdir -p build && cp data.txt build/data.txt",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = p.rollout(&["trace", "--", "sh", "make_report.sh"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = p.path("out/report.txt");
    let hash = blake3::hash(&std::fs::read(&report).unwrap())
        .to_hex()
        .to_string();

    let plan = p.json(&["reproduce", report.to_str().unwrap(), "--json"]);
    assert_eq!(plan["git_repo"].as_str().unwrap(), p.dir.to_str().unwrap());
    assert_eq!(plan["build_steps"].as_array().unwrap().len(), 1, "{plan:#}");
    assert!(plan["run_steps"][0]["command"]
        .as_str()
        .unwrap()
        .contains("make_report.sh"));

    // The original output goes away: reproduction must not need it, nor write it.
    std::fs::remove_dir_all(p.path("out")).unwrap();
    std::fs::remove_dir_all(p.path("build")).unwrap();
    let res = p.json(&["reproduce", &hash[..12], "--run", "--json"]);
    assert_eq!(res["outcome"]["matches"], true, "{res:#}");
    assert_eq!(res["outcome"]["steps"].as_array().unwrap().len(), 2);
    assert!(
        !report.exists(),
        "reproduction ran in the clone, not in the project"
    );

    // A later commit changes the script; the recorded report's plan still names the commit
    // that produced it, and reproducing it still works from that commit.
    let first_commit = plan["git_commit"].as_str().unwrap().to_string();
    p.write(
        "make_report.sh",
        "mkdir -p out\necho other > out/report.txt\n",
    );
    p.git(&["commit", "-q", "-am", "change"]);
    let out = p.rollout(&["trace", "--", "sh", "make_report.sh"]);
    assert!(out.status.success());
    let plan = p.json(&["reproduce", &hash[..12], "--json"]);
    assert_eq!(plan["git_commit"].as_str().unwrap(), first_commit);
    let res = p.json(&["reproduce", &hash[..12], "--run", "--json"]);
    assert_eq!(res["outcome"]["matches"], true, "{res:#}");
    // The new report (a different artifact) comes from the new commit.
    let new_plan = p.json(&["reproduce", report.to_str().unwrap(), "--json"]);
    assert_ne!(new_plan["git_commit"].as_str().unwrap(), first_commit);
}

#[test]
fn concurrent_processes_write_the_store() {
    let p = Project::new();
    let children: Vec<_> = (0..6)
        .map(|i| {
            p.cmd()
                .args(["trace", "--", "sh", "-c", &format!("echo {i} > f{i}.txt")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let log = p.json(&["log", "--json", "-n", "100"]);
    assert_eq!(log.as_array().unwrap().len(), 6, "{log:#}");
    for i in 0..6 {
        let info = p.json(&[
            "show",
            p.path(&format!("f{i}.txt")).to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(info["produced_by"].as_array().unwrap().len(), 1);
    }
    let found = p.json(&["log", "--json", "--search", "f3"]);
    assert_eq!(
        found.as_array().unwrap().len(),
        1,
        "full-text search over commands"
    );
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Value>>>);

async fn bundles(State(r): State<Received>, Json(body): Json<Value>) -> StatusCode {
    r.0.lock().unwrap().push(body);
    StatusCode::CREATED
}

fn serve(r: Received) -> String {
    let app = Router::new()
        .route("/api/v1/bundles", post(bundles))
        .with_state(r);
    format!("http://{}", common::fake_llm::serve_router(app))
}

#[test]
fn register_redacts_secrets_and_posts_the_bundle() {
    let p = Project::new();
    p.write("in.txt", "x\n");
    let out = p
        .cmd()
        .env("MY_SERVICE_TOKEN", "tok-very-secret-value")
        .args([
            "trace",
            "--",
            "sh",
            "-c",
            "sort in.txt > mid.txt",
            "sh",
            "--api-key=sk-abcdefghijklmnopqrstu",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = p.rollout(&["trace", "--", "sh", "-c", "cat mid.txt > final.txt"]);
    assert!(out.status.success());
    let final_txt = p.path("final.txt");

    let out = p.rollout(&[
        "register",
        final_txt.to_str().unwrap(),
        "--dry-run",
        "--redact",
        "very-secret",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dry = text(&out.stdout);
    assert!(
        !dry.contains("sk-abcdefghijklmnopqrstu"),
        "command secret leaked"
    );
    assert!(!dry.contains("tok-very-secret-value"), "env secret leaked");
    assert!(dry.contains("[REDACTED]"));
    let bundle: Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(
        bundle["jobs"].as_array().unwrap().len(),
        2,
        "both upstream jobs"
    );
    assert!(bundle["jobs"][0]["command"]
        .as_str()
        .unwrap()
        .contains("--api-key=[REDACTED]"));

    let received = Received::default();
    let url = serve(received.clone());
    let out = p.rollout(&["register", final_txt.to_str().unwrap(), "--server", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = received.0.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["root"], bundle["root"]);
    assert_eq!(got[0]["jobs"], bundle["jobs"]);
    assert!(!got[0].to_string().contains("tok-very-secret-value"));
    // A server that refuses says so, with a failing exit status.
    let out = p.rollout(&[
        "register",
        final_txt.to_str().unwrap(),
        "--server",
        &format!("{url}/nope"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));
}

#[test]
fn trial_provenance_is_recorded_for_a_run_and_reproduced() {
    require_docker();
    let p = Project::new();
    let jobs = p.dir.join("jobs");
    let out = p.rollout(&[
        "run",
        "-p",
        example("hello-world").to_str().unwrap(),
        "-a",
        "oracle",
        "-o",
        jobs.to_str().unwrap(),
        "--job-name",
        "job",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("warning: provenance"),
        "{}",
        text(&out.stderr)
    );
    let trial_dir = std::fs::read_dir(jobs.join("job"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|d| d.join("result.json").is_file())
        .unwrap();
    let job = p.json(&["show", trial_dir.to_str().unwrap(), "--json"]);
    assert_eq!(job["kind"], "trial");
    let result = read_json(&trial_dir.join("result.json"));
    assert_eq!(job["uid"], result["id"]);
    assert_eq!(
        job["session"], result["job_id"],
        "linked to the rollout job"
    );
    let inputs = job["inputs"].as_array().unwrap();
    let kinds: Vec<&str> = inputs.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert!(
        kinds.contains(&"tree") && kinds.contains(&"image") && kinds.contains(&"value"),
        "{inputs:#?}"
    );
    let task = inputs.iter().find(|i| i["kind"] == "tree").unwrap();
    assert_eq!(task["path"], result["task_path"]);
    let image = inputs
        .iter()
        .find(|i| i["kind"] == "image" && i["path"].as_str().unwrap().starts_with("image:"))
        .unwrap();
    // The base image the environment was built from is an input too.
    let base = inputs
        .iter()
        .find(|i| i["path"] == "base-image:debian:bookworm-slim")
        .unwrap_or_else(|| panic!("{inputs:#?}"));
    assert_eq!(
        base["hash"].as_str().unwrap(),
        blake3::hash(
            result["environment"]["base_images"]["debian:bookworm-slim"]
                .as_str()
                .unwrap()
                .as_bytes()
        )
        .to_hex()
        .as_str()
    );
    assert_eq!(
        image["hash"].as_str().unwrap(),
        blake3::hash(
            result["environment"]["image_id"]
                .as_str()
                .unwrap()
                .as_bytes()
        )
        .to_hex()
        .as_str()
    );
    assert!(inputs.iter().any(|i| i["path"] == "agent:oracle"));
    assert!(has(&paths(&job["inputs"]), &jobs.join("job/config.json")));
    let outputs = paths(&job["outputs"]);
    assert!(has(&outputs, &trial_dir.join("result.json")), "{outputs:?}");
    assert!(
        outputs.iter().any(|o| o.contains("/verifier/reward")),
        "{outputs:?}"
    );
    assert!(
        outputs.iter().any(|o| o.contains("trial.log")),
        "{outputs:?}"
    );
    assert_eq!(job["metadata"]["reward"], result["reward"]);
    assert_eq!(job["metadata"]["agent"]["name"], "oracle");
    // `show` also answers for the result file itself, by path.
    let info = p.json(&[
        "show",
        trial_dir.join("result.json").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(info["produced_by"][0]["uid"], result["id"]);
    // Re-running the trial gives the same reward.
    let rep = p.json(&[
        "reproduce",
        trial_dir.join("result.json").to_str().unwrap(),
        "--run",
        "--json",
    ]);
    assert_eq!(rep["outcome"]["matches"], true, "{rep:#}");
    assert_eq!(rep["outcome"]["reward"], result["reward"]);
}

#[test]
fn recording_failure_warns_but_never_fails_the_run() {
    require_docker();
    let p = Project::new();
    // A store path whose parent is a file cannot be created.
    std::fs::write(p.dir.join("blocker"), "").unwrap();
    let jobs = p.dir.join("jobs");
    let out = rollout_cmd()
        .current_dir(&p.dir)
        .env("ROLLOUT_STORE", p.dir.join("blocker/rollout.db"))
        .args([
            "run",
            "-p",
            example("hello-world").to_str().unwrap(),
            "-a",
            "oracle",
        ])
        .args(["-o", jobs.to_str().unwrap(), "--job-name", "job"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("warning: provenance"),
        "{}",
        text(&out.stderr)
    );
}

/// `rollout trace` inside a container under Docker's default seccomp profile, without
/// CAP_SYS_PTRACE: that profile refuses process_vm_readv, pidfd_getfd and kcmp, so the tracer
/// must read paths through /proc/<pid>/mem and still record the files (before the fallback it
/// recorded nothing, silently).
#[test]
fn tracing_works_in_a_container_under_the_default_seccomp_profile() {
    require_docker();
    let bin = env!("CARGO_BIN_EXE_rollout");
    let script = "mkdir -p /w/d && cd /w && echo hi > d/in.txt \
        && export ROLLOUT_STORE=/tmp/store/rollout.db \
        && rollout trace -- sh -c 'cd d && cat in.txt | tr a-z A-Z > out.txt' \
        && rollout lineage d/out.txt --json";
    let out = Command::new("timeout")
        .args([
            "300",
            "docker",
            "run",
            "--rm",
            "--label",
            "io.rollout.test=provenance",
        ])
        .arg("-v")
        .arg(format!("{bin}:/usr/local/bin/rollout:ro"))
        .args(["debian:bookworm-slim", "sh", "-c", script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 input(s), 1 output(s)"),
        "the traced job records in.txt -> out.txt: {stderr}"
    );
    assert!(!stderr.contains("warning"), "{stderr}");
    let lineage: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert!(lineage.to_string().contains("/w/d/in.txt"), "{lineage}");
}

// ---------------------------------------------------------------------------------------------
// `rollout prov`: the group, the store's housekeeping, collections, recorded context

/// `rollout prov …` and the former top-level names reach the same commands and the same store.
#[test]
fn prov_group_holds_every_provenance_command_and_the_old_names_still_work() {
    let p = Project::new();
    let out = p.rollout(&["prov", "init"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("created provenance store"));
    assert!(p.store.is_file());
    assert!(p.store.with_file_name("provenance.toml").is_file());
    let again = p.rollout(&["prov", "init"]);
    assert!(text(&again.stdout).starts_with("existing provenance store"));
    p.write("in.txt", "x\n");
    let out = p.rollout(&["prov", "trace", "--", "sh", "-c", "cat in.txt > out.txt"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    p.trace_sh("cat out.txt > out2.txt"); // the hidden alias
    let grouped = p.json(&["prov", "log", "--json"]);
    assert_eq!(grouped, p.json(&["log", "--json"]));
    assert_eq!(grouped.as_array().unwrap().len(), 2);
    let lineage = p.json(&["prov", "lineage", "out2.txt", "--json"]);
    assert_eq!(lineage, p.json(&["lineage", "out2.txt", "--json"]));
    // `rollout --help` lists the group, not the aliases.
    let help = text(&p.rollout(&["--help"]).stdout);
    assert!(help.contains("prov "), "{help}");
    assert!(!help.contains("\n  trace "), "{help}");
}

#[test]
fn prov_config_env_pop_and_reset_manage_the_store() {
    let p = Project::new();
    // config: set, read back, refuse what is not a setting or not a value.
    let out = p.rollout(&["prov", "config", "sha256", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&p.rollout(&["prov", "config", "sha256"]).stdout),
        "true\n"
    );
    let out = p.rollout(&["prov", "config", "sha256", "maybe"]);
    assert_eq!(out.status.code(), Some(2));
    let out = p.rollout(&["prov", "config", "colour", "red"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown setting"));
    // env: set for every traced command, and recorded.
    let out = p.rollout(&["prov", "env", "set", "SEED=42", "MODE=fast"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&p.rollout(&["prov", "env", "list"]).stdout),
        "MODE=fast\nSEED=42\n"
    );
    assert_eq!(
        p.rollout(&["prov", "env", "set", "1BAD=x"]).status.code(),
        Some(2)
    );
    p.trace_sh("echo $SEED > seed.txt");
    assert_eq!(std::fs::read_to_string(p.path("seed.txt")).unwrap(), "42\n");
    let job = p.last_job();
    assert_eq!(job["env"]["SEED"], "42");
    // sha256 = true took effect.
    assert!(job["outputs"][0]["sha256"].is_string(), "{job}");
    p.rollout(&["prov", "env", "unset", "SEED"]);
    p.trace_sh("echo ${SEED:-none} > seed2.txt");
    assert_eq!(
        std::fs::read_to_string(p.path("seed2.txt")).unwrap(),
        "none\n"
    );
    // pop: the newest job goes, the older stays.
    let before = p.json(&["prov", "log", "--json"]);
    assert_eq!(before.as_array().unwrap().len(), 2);
    let out = p.rollout(&["prov", "pop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let uid = before[0]["uid"].as_str().unwrap();
    assert!(
        text(&out.stdout).contains(&uid[..8]),
        "{}",
        text(&out.stdout)
    );
    let after = p.json(&["prov", "log", "--json"]);
    assert_eq!(after.as_array().unwrap().len(), 1);
    assert_eq!(after[0]["uid"], before[1]["uid"]);
    p.rollout(&["prov", "pop"]);
    assert_eq!(p.rollout(&["prov", "pop"]).status.code(), Some(2));
    // reset: only with --yes; the settings stay.
    let out = p.rollout(&["prov", "reset"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(p.store.is_file());
    let out = p.rollout(&["prov", "reset", "--yes"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!p.store.exists());
    assert!(p.store.with_file_name("provenance.toml").is_file());
}

#[test]
fn prov_collections_group_recorded_artifacts_and_jobs() {
    let p = Project::new();
    p.write("in.txt", "x\n");
    p.trace_sh("cat in.txt > out.txt");
    let job = p.last_job();
    let uid = job["uid"].as_str().unwrap().to_string();
    let ok = |args: &[&str]| {
        let out = p.rollout(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        out
    };
    ok(&[
        "prov",
        "collection",
        "create",
        "eval-v1",
        "--description",
        "first",
    ]);
    let dup = p.rollout(&["prov", "collection", "create", "eval-v1"]);
    assert_eq!(dup.status.code(), Some(2));
    assert!(text(&dup.stderr).contains("already exists"));
    // An unknown item refuses the whole add.
    let bad = p.rollout(&[
        "prov",
        "collection",
        "add",
        "eval-v1",
        "out.txt",
        "nope-nope",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let missing = p.rollout(&["prov", "collection", "add", "nope", "out.txt"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("no collection"));
    assert_eq!(
        p.json(&["prov", "collection", "show", "eval-v1", "--json"]),
        serde_json::json!([])
    );
    ok(&["prov", "collection", "add", "eval-v1", "out.txt", &uid[..8]]);
    ok(&["prov", "collection", "add", "eval-v1", "out.txt"]);
    let members = p.json(&["prov", "collection", "show", "eval-v1", "--json"]);
    let members = members.as_array().unwrap();
    assert_eq!(members.len(), 2, "{members:?}");
    assert_eq!(members[0]["kind"], "artifact");
    assert_eq!(members[0]["reference"], job["outputs"][0]["hash"]);
    assert_eq!(members[1]["kind"], "job");
    assert_eq!(members[1]["reference"], uid.as_str());
    let list = p.json(&["prov", "collection", "list", "--json"]);
    assert_eq!(list[0]["name"], "eval-v1");
    assert_eq!(list[0]["members"], 2);
    assert_eq!(list[0]["description"], "first");
    // A popped job leaves its collections.
    ok(&["prov", "pop"]);
    let list = p.json(&["prov", "collection", "list", "--json"]);
    assert_eq!(list[0]["members"], 1);
}

/// A traced job records the experiment-tracker runs of its environment and the active
/// interpreter's packages (here a stand-in interpreter in a virtual environment).
#[test]
fn prov_trace_records_tracker_links_and_python_packages() {
    let p = Project::new();
    let venv = p.path("venv");
    std::fs::create_dir_all(venv.join("bin")).unwrap();
    let python = venv.join("bin/python");
    std::fs::write(
        &python,
        "#!/bin/sh\necho '{\"version\": \"3.99.0\", \"packages\": {\"torch\": \"2.5.0\", \"Numpy\": \"2.1.0\"}}'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = p
        .cmd()
        .args(["prov", "trace", "--", "true"])
        .env("VIRTUAL_ENV", &venv)
        .env("WANDB_RUN_ID", "run7")
        .env("WANDB_PROJECT", "proj")
        .env("WANDB_ENTITY", "team")
        .env("WANDB_API_KEY", "key-must-not-be-in-context")
        .env("MLFLOW_RUN_ID", "m1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let job = p.last_job();
    let ctx = &job["metadata"]["context"];
    assert_eq!(
        ctx["trackers"]["wandb"]["url"],
        "https://wandb.ai/team/proj/runs/run7"
    );
    assert_eq!(ctx["trackers"]["mlflow"]["run_id"], "m1");
    assert!(!ctx.to_string().contains("key-must-not-be-in-context"));
    assert_eq!(ctx["python"]["interpreter"], python.to_str().unwrap());
    assert_eq!(ctx["python"]["version"], "3.99.0");
    assert_eq!(ctx["python"]["packages"]["torch"], "2.5.0");
    // Switched off: no package listing.
    p.rollout(&["prov", "config", "capture_packages", "false"]);
    let out = p
        .cmd()
        .args(["prov", "trace", "--", "true"])
        .env("VIRTUAL_ENV", &venv)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(p.last_job()["metadata"]["context"].get("python").is_none());
}

/// Listing the packages starts Python, which costs a short command more than tracing it: the
/// listing is reused while the interpreter and what it reported depending on (its import
/// directories, its distributions' metadata) are unchanged, and redone when one changes.
#[test]
fn prov_trace_reuses_the_package_listing_until_the_environment_changes() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new();
    let venv = p.path("venv");
    let site = venv.join("lib/site-packages");
    std::fs::create_dir_all(venv.join("bin")).unwrap();
    std::fs::create_dir_all(&site).unwrap();
    let calls = p.path("calls");
    let python = venv.join("bin/python");
    // A stand-in interpreter that counts its runs and lists one package per entry of `site`.
    let script = r#"#!/bin/sh
echo run >> 'CALLS'
pk=""
for f in $(ls 'SITE'); do pk="$pk${pk:+, }\"$f\": \"1.0\""; done
printf '{"version": "3.99.0", "packages": {%s}, "stamps": ["%s"]}\n' "$pk" 'SITE'
"#
    .replace("CALLS", calls.to_str().unwrap())
    .replace("SITE", site.to_str().unwrap());
    std::fs::write(&python, &script).unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let trace = || {
        let out = p
            .cmd()
            .args(["prov", "trace", "--", "true"])
            .env("VIRTUAL_ENV", &venv)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let job = p.last_job();
        job["metadata"]["context"]["python"]["packages"].clone()
    };
    let runs = || {
        std::fs::read_to_string(&calls)
            .unwrap_or_default()
            .lines()
            .count()
    };
    std::fs::create_dir(site.join("torch-2.5.0.dist-info")).unwrap();
    assert_eq!(trace(), serde_json::json!({"torch-2.5.0.dist-info": "1.0"}));
    assert_eq!(trace(), serde_json::json!({"torch-2.5.0.dist-info": "1.0"}));
    assert_eq!(runs(), 1, "the second trace reuses the listing");
    // A package installed: its import directory changed, so the listing is redone.
    std::fs::create_dir(site.join("numpy-2.1.0.dist-info")).unwrap();
    let packages = trace();
    assert_eq!(packages["numpy-2.1.0.dist-info"], "1.0", "{packages}");
    assert_eq!(runs(), 2);
    // Another interpreter binary at the same path: redone too.
    std::fs::write(&python, format!("{script}\n# rebuilt\n")).unwrap();
    trace();
    assert_eq!(runs(), 3);
    trace();
    assert_eq!(runs(), 3);
    // `prov reset` takes the cached listings with the store.
    p.rollout(&["prov", "reset", "--yes"]);
    trace();
    assert_eq!(runs(), 4);
}
