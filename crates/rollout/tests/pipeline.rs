//! `rollout pipeline run|validate|scaffold` on the example repositories under
//! tests/fixtures/pipelines/ (each copied to a temporary directory first: a run writes into the
//! repository), and scaffold/repair against the scripted OpenAI-compatible server.

mod common;

use common::fake_llm::{final_answer, serve, tool_call, write_call, Script};
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// A private copy of a fixture repository.
fn repo(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    copy_dir(
        &repo_root().join("tests/fixtures/pipelines").join(name),
        &dir,
    );
    (tmp, dir)
}

fn repo_root() -> PathBuf {
    common::repo()
}

fn pipeline(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = rollout_cmd();
    c.arg("pipeline").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `rollout pipeline run DIR --json ARGS`: exit code and result.
fn run_json(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, Value) {
    let mut all = vec!["run", dir.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    let o = pipeline(&all, env);
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no JSON on stdout ({e}); stderr:\n{}", stderr(&o)));
    (o.status.code().unwrap_or(-1), v)
}

fn stage_names(r: &Value) -> Vec<String> {
    r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}:{}",
                s["stage"].as_str().unwrap(),
                s["status"].as_str().unwrap()
            )
        })
        .collect()
}

fn evidence(r: &Value, file: &str) -> PathBuf {
    PathBuf::from(r["artifacts_dir"].as_str().unwrap()).join(file)
}

fn text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn b3(p: &Path) -> String {
    rollout_pipeline::runner::digest(p).unwrap()
}

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "git {args:?} failed");
}

#[test]
fn a_passing_contract_runs_every_stage_and_keeps_evidence() {
    let (_t, dir) = repo("passing");
    git(&dir, &["init", "-q"]);
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-qm", "contract"]);
    let head = String::from_utf8(
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(&dir)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let secret = "s3cr3t-value-123";
    let (code, r) = run_json(&dir, &[], &[("PIPELINE_TEST_TOKEN", secret)]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["ok"], true);
    assert_eq!(
        stage_names(&r),
        [
            "bootstrap:passed",
            "actions:passed",
            "tests:passed",
            "deploy_setup:passed",
            "deploy_health:passed",
            "rollout:passed",
            "evaluation:passed"
        ]
    );
    assert_eq!(r["teardown"]["status"], "passed");
    assert!(dir.join(".aider_fsm/teardown.marker").is_file());
    assert_eq!(r["samples"], 2);
    assert_eq!(r["metrics"]["score"], 0.5);
    assert_eq!(r["repo"]["commit"], head.trim());
    assert!(r["metrics_path"]
        .as_str()
        .unwrap()
        .ends_with(".aider_fsm/metrics.json"));
    assert!(r["samples_path"]
        .as_str()
        .unwrap()
        .ends_with(".aider_fsm/out/samples.jsonl"));
    // The contract as it was, with hashes (the actions file included: it is removed after).
    let files = r["contract_files"].as_array().unwrap();
    let pipeline_entry = files.iter().find(|f| f["path"] == "pipeline.yml").unwrap();
    assert_eq!(pipeline_entry["blake3"], b3(&dir.join("pipeline.yml")));
    assert!(files.iter().any(|f| f["path"] == ".aider_fsm/actions.yml"));
    assert!(
        !dir.join(".aider_fsm/actions.yml").exists(),
        "actions.yml is removed after applying"
    );

    // Evidence: under .aider_fsm/artifacts/<run_id>/ by default.
    let art = PathBuf::from(r["artifacts_dir"].as_str().unwrap());
    assert_eq!(
        art,
        dir.canonicalize()
            .unwrap()
            .join(".aider_fsm/artifacts")
            .join(r["run_id"].as_str().unwrap())
    );
    for f in ["cmd.txt", "stdout.txt", "stderr.txt", "result.json"] {
        assert!(
            evidence(&r, &format!("tests_cmd01_try01_{f}")).is_file(),
            "{f}"
        );
    }
    for s in [
        "bootstrap",
        "actions",
        "tests",
        "deploy_setup",
        "deploy_health",
        "rollout",
        "evaluation",
        "deploy_teardown",
    ] {
        let sum = read_json(&evidence(&r, &format!("{s}_summary.json")));
        assert_eq!(sum["status"], "passed", "{s}: {sum}");
    }
    assert_eq!(
        text(&evidence(&r, "tests_cmd01_try01_cmd.txt")),
        "bash .aider_fsm/stages/tests.sh"
    );
    let res = read_json(&evidence(&r, "tests_cmd01_try01_result.json"));
    assert_eq!(res["rc"], 0);
    assert_eq!(res["timed_out"], false);
    assert!(res["duration_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(
        res["timeout_seconds"], 60.0,
        "security.max_cmd_seconds bounds the command"
    );
    // Secrets are redacted in the recorded env and in the captured output.
    assert_eq!(res["env"]["API_TOKEN"], "***");
    assert_eq!(res["env"]["WHERE"], "stage=tests");
    let out = text(&evidence(&r, "tests_cmd01_try01_stdout.txt"));
    assert!(out.contains("tests in stage tests mode smoke"), "{out}");
    assert!(
        out.contains("greeting: hello from bootstrap"),
        "bootstrap env reaches the stages: {out}"
    );
    assert!(out.contains("token: ***") && !out.contains(secret), "{out}");
    let rollout_sum = read_json(&evidence(&r, "rollout_summary.json"));
    assert_eq!(rollout_sum["verification"]["valid_samples"], 2);
    assert_eq!(
        read_json(&evidence(&r, "pipeline_result.json"))["run_id"],
        r["run_id"]
    );

    // A second run sets the first run's outputs aside instead of trusting them.
    let (code, r2) = run_json(&dir, &["--stages", "evaluation", "--mode", "full"], &[]);
    assert_eq!(code, 0, "{r2:#}");
    assert_eq!(stage_names(&r2), ["bootstrap:passed", "evaluation:passed"]);
    let v = &r2["stages"][1]["verification"]["previous_outputs_set_aside"];
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{r2:#}");
    assert_eq!(r2["teardown"]["status"], "skipped");
}

#[test]
fn a_git_url_is_cloned_and_its_commit_recorded() {
    let (t, dir) = repo("missing-key");
    std::fs::write(
        dir.join(".aider_fsm/stages/evaluation.sh"),
        "echo '{\"score\": 1, \"n\": 1}' > .aider_fsm/metrics.json\n",
    )
    .unwrap();
    git(&dir, &["init", "-q"]);
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-qm", "c"]);
    let art = t.path().join("evidence");
    let url = format!("file://{}", dir.display());
    let (code, r) = run_json(
        Path::new(&url),
        &["--artifacts", art.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["repo"]["url"], url);
    assert_eq!(r["repo"]["commit"].as_str().unwrap().len(), 40);
    assert!(art.join("evaluation_summary.json").is_file());
    assert!(
        !dir.join(".aider_fsm/metrics.json").exists(),
        "the run happened in the clone"
    );
    assert!(
        !Path::new(r["repo"]["path"].as_str().unwrap()).exists(),
        "the clone is removed after the run"
    );
}

#[test]
fn stage_selection_is_checked_against_the_contract() {
    let (_t, dir) = repo("passing");
    let (code, r) = run_json(&dir, &["--stages", "tests"], &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(
        stage_names(&r),
        ["bootstrap:passed", "actions:passed", "tests:passed"]
    );
    assert_eq!(r["teardown"]["status"], "skipped", "deploy did not run");
    let o = pipeline(
        &["run", dir.to_str().unwrap(), "--stages", "tests,deploi"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown stage \"deploi\""),
        "{}",
        stderr(&o)
    );
    let (_t2, dir2) = repo("missing-key");
    let o = pipeline(&["run", dir2.to_str().unwrap(), "--stages", "rollout"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no `rollout` section"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn metrics_missing_a_required_key_fail_evaluation() {
    let (_t, dir) = repo("missing-key");
    let (code, r) = run_json(&dir, &[], &[]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["ok"], false);
    assert_eq!(r["failed_stage"], "evaluation");
    assert!(
        r["failure"]
            .as_str()
            .unwrap()
            .starts_with("evaluation.missing_keys: n"),
        "{}",
        r["failure"]
    );
    let sum = read_json(&evidence(&r, "evaluation_summary.json"));
    assert_eq!(sum["status"], "failed");
    assert_eq!(sum["reason"], r["failure"]);
}

#[test]
fn ok_false_is_not_success_and_later_stages_are_skipped() {
    let (_t, dir) = repo("ok-false");
    let o = pipeline(&["run", dir.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("FAILED at evaluation: evaluation.ok_not_true"),
        "{err}"
    );
    let (_, r) = run_json(&dir, &[], &[]);
    assert!(r["failure"]
        .as_str()
        .unwrap()
        .starts_with("evaluation.ok_not_true"));
    assert_eq!(
        stage_names(&r),
        ["tests:passed", "evaluation:failed", "benchmark:skipped"]
    );
}

#[test]
fn a_blocked_command_names_its_rule_and_never_runs() {
    let (_t, dir) = repo("blocked");
    let (code, r) = run_json(&dir, &[], &[]);
    assert_eq!(code, 1, "{r:#}");
    let failure = r["failure"].as_str().unwrap();
    assert!(failure.starts_with("tests.blocked: command 2"), "{failure}");
    assert!(failure.contains("safe.sudo"), "{failure}");
    assert!(
        failure.contains("script .aider_fsm/stages/tests.sh line 3"),
        "{failure}"
    );
    assert_eq!(
        text(&evidence(&r, "tests_cmd01_try01_stdout.txt")),
        "first\n"
    );
    let res = read_json(&evidence(&r, "tests_cmd02_try01_result.json"));
    assert_eq!(res["rc"], 126);
    assert_eq!(res["blocked"]["rule"], "safe.sudo");
    assert_eq!(
        text(&evidence(&r, "tests_cmd02_try01_stdout.txt")),
        "",
        "the script never ran"
    );
    assert!(
        text(&evidence(&r, "tests_cmd02_try01_stderr.txt")).contains("blocked by rule safe.sudo")
    );
    assert!(!evidence(&r, "tests_cmd03_try01_cmd.txt").exists());

    // The denylist names its entry; system mode lifts the safe-mode rules but not the hard ones.
    std::fs::write(
        dir.join("pipeline.yml"),
        "version: 1\nsecurity: {mode: system, denylist: ['\\bcurl\\b']}\ntests:\n  cmds: [\"curl -s http://127.0.0.1:9\", \"rm -rf /\"]\n",
    )
    .unwrap();
    let (_, r) = run_json(&dir, &[], &[]);
    assert!(
        r["failure"].as_str().unwrap().contains("denylist[0]"),
        "{r:#}"
    );
    std::fs::write(
        dir.join("pipeline.yml"),
        "version: 1\nsecurity: {mode: system}\ntests:\n  cmds: [\"sudo -n true || true\", \"rm -rf /\"]\n",
    )
    .unwrap();
    let (_, r) = run_json(&dir, &[], &[]);
    let f = r["failure"].as_str().unwrap();
    assert!(
        f.starts_with("tests.blocked: command 2") && f.contains("hard_deny.rm_root"),
        "{f}"
    );
}

#[test]
fn a_stage_timeout_kills_the_command_with_124_and_retries() {
    let (_t, dir) = repo("timeout");
    let t0 = std::time::Instant::now();
    let (code, r) = run_json(&dir, &[], &[]);
    assert_eq!(code, 1, "{r:#}");
    assert!(t0.elapsed().as_secs() < 30, "the 1 s limit held");
    assert!(
        r["failure"]
            .as_str()
            .unwrap()
            .starts_with("tests.timeout: command 1"),
        "{r:#}"
    );
    for t in ["try01", "try02"] {
        let res = read_json(&evidence(&r, &format!("tests_cmd01_{t}_result.json")));
        assert_eq!(res["rc"], 124);
        assert_eq!(res["timed_out"], true);
        assert_eq!(
            res["timeout_seconds"], 1.0,
            "min of command, stage and security limits"
        );
    }
    assert_eq!(
        text(&evidence(&r, "tests_cmd01_try01_stdout.txt")),
        "started\n"
    );
}

#[test]
fn teardown_runs_after_a_failed_health_check() {
    let (_t, dir) = repo("teardown-on-failure");
    let (code, r) = run_json(&dir, &[], &[]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["failed_stage"], "deploy_health");
    assert_eq!(
        r["failure"],
        "deploy_health.command_failed: command 1 `exit 3` exited 3"
    );
    assert_eq!(
        stage_names(&r),
        [
            "deploy_setup:passed",
            "deploy_health:failed",
            "rollout:skipped"
        ]
    );
    assert_eq!(r["teardown"]["status"], "passed");
    assert_eq!(text(&dir.join(".aider_fsm/teardown.marker")), "torn-down\n");
    assert!(!dir.join(".aider_fsm/rollout-ran").exists());
    assert!(evidence(&r, "deploy_teardown_summary.json").is_file());

    // Deploy setup that does not write runtime_env.json fails its verification.
    std::fs::write(
        dir.join(".aider_fsm/stages/deploy_setup.sh"),
        "echo no file\n",
    )
    .unwrap();
    let (_, r) = run_json(&dir, &[], &[]);
    assert!(
        r["failure"]
            .as_str()
            .unwrap()
            .starts_with("deploy_setup.runtime_env_missing"),
        "{r:#}"
    );
}

#[test]
fn ctrl_c_stops_the_stage_kills_its_processes_and_still_tears_down() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join(".aider_fsm")).unwrap();
    std::fs::write(
        dir.join("pipeline.yml"),
        r#"version: 1
deploy:
  setup_cmds: ["echo '{}' > .aider_fsm/runtime_env.json"]
  teardown_cmds: ["echo down > .aider_fsm/teardown.marker"]
rollout:
  run_cmds: ["sleep 120 & echo $! > .aider_fsm/child.pid; wait"]
"#,
    )
    .unwrap();
    let child = rollout_cmd()
        .args(["pipeline", "run", dir.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pidfile = dir.join(".aider_fsm/child.pid");
    wait_for("the rollout command to start", 30, || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    });
    // SAFETY: kill(2) on the pid of the child we spawned.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("CANCELLED"), "{}", stderr(&out));
    assert_eq!(text(&dir.join(".aider_fsm/teardown.marker")), "down\n");
    let pid = text(&pidfile).trim().to_string();
    wait_for("the stage's background process to be gone", 10, || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.split_whitespace().nth(2) == Some("Z"))
    });
}

#[test]
fn validate_reports_every_problem_without_running_anything() {
    let (_t, dir) = repo("invalid");
    let o = pipeline(&["validate", dir.to_str().unwrap(), "--json"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let problems: Vec<&str> = r["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let has = |s: &str| problems.iter().any(|p| p.contains(s));
    assert!(has("security.denylist[0]: invalid regex"), "{problems:#?}");
    assert!(
        has("tests.workdir") && has("outside the repository"),
        "{problems:#?}"
    );
    assert!(has("missing.sh does not exist"), "{problems:#?}");
    assert!(has(".aider_fsm/stages/tests.sh: bash -n"), "{problems:#?}");
    assert!(
        has("rollout command 1: would be blocked by rule safe.sudo"),
        "{problems:#?}"
    );
    // Running it is refused up front (exit 2), before any command.
    let o = pipeline(&["run", dir.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("invalid contract"), "{}", stderr(&o));
    assert!(!dir.join(".aider_fsm/artifacts").exists());

    let (_t, ok) = repo("passing");
    let o = pipeline(&["validate", ok.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        !ok.join(".aider_fsm/artifacts").exists(),
        "validate executes nothing"
    );
    assert!(ok.join(".aider_fsm/actions.yml").exists());

    let o = pipeline(&["validate", dir.parent().unwrap().to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("pipeline.yml: cannot read it"),
        "{}",
        stderr(&o)
    );
}

const FIXED_EVAL: &str = "#!/usr/bin/env bash\necho '{\"ok\": true, \"score\": 1, \"n\": 3}' > .aider_fsm/metrics.json\n";

#[test]
fn repair_edits_only_the_contract_workspace_and_reports_every_change() {
    let (_t, dir) = repo("missing-key");
    std::fs::write(dir.join("app.py"), "print('app')\n").unwrap();
    let eval = dir.join(".aider_fsm/stages/evaluation.sh");
    let before = b3(&eval);
    let pipeline_before = text(&dir.join("pipeline.yml"));
    let script = Script::ok(vec![
        write_call("c1", "pipeline.yml", "version: 1\n"),
        write_call("c2", "app.py", "hacked\n"),
        tool_call("c3", "echo sneaky > outside.txt; echo hacked > app.py"),
        write_call("c4", ".aider_fsm/stages/evaluation.sh", FIXED_EVAL),
        final_answer("fixed evaluation.sh to write n"),
    ]);
    let url = serve(script.clone());
    let (code, r) = run_json(
        &dir,
        &["--repair-iters", "2", "-m", "fake-model"],
        &[("OPENAI_BASE_URL", &url), ("OPENAI_API_KEY", "test-key")],
    );
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(stage_names(&r), ["evaluation:failed", "evaluation:passed"]);
    assert_eq!(r["stages"][1]["round"], 2);
    let rep = &r["repairs"][0];
    assert_eq!(rep["stage"], "evaluation");
    assert!(rep["failure"]
        .as_str()
        .unwrap()
        .starts_with("evaluation.missing_keys"));
    let changed = rep["changed_files"].as_array().unwrap();
    assert_eq!(changed.len(), 1, "{rep:#}");
    assert_eq!(changed[0]["path"], ".aider_fsm/stages/evaluation.sh");
    assert_eq!(changed[0]["change"], "modified");
    assert_eq!(changed[0]["blake3_before"], before);
    assert_eq!(changed[0]["blake3_after"], b3(&eval));
    assert_eq!(rep["refused"].as_array().unwrap().len(), 3, "{rep:#}");
    assert_eq!(rep["summary"], "fixed evaluation.sh to write n");
    // Nothing outside .aider_fsm/ changed.
    assert_eq!(text(&dir.join("pipeline.yml")), pipeline_before);
    assert_eq!(text(&dir.join("app.py")), "print('app')\n");
    assert!(!dir.join("outside.txt").exists());
    // The refusals went back to the model as tool errors.
    let seen = script.seen();
    assert_eq!(seen.len(), 5);
    let last_tool = |i: usize| {
        seen[i]["messages"].as_array().unwrap().last().unwrap()["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        last_tool(1).starts_with("error: refused: write_file pipeline.yml"),
        "{}",
        last_tool(1)
    );
    assert!(
        last_tool(2).starts_with("error: refused: write_file app.py"),
        "{}",
        last_tool(2)
    );
    assert!(
        last_tool(3).contains("changes were undone"),
        "{}",
        last_tool(3)
    );
    assert!(seen[0]["messages"][1]["content"]
        .as_str()
        .unwrap()
        .contains("evaluation.missing_keys: n"));
    // The provenance report is in the evidence.
    let prov = read_json(&evidence(&r, "repair_01_evaluation/repair_provenance.json"));
    assert_eq!(prov["changed_files"], rep["changed_files"]);
    assert!(evidence(&r, "repair_01_evaluation/trajectory.json").is_file());
    assert!(evidence(&r, "evaluation_round02_summary.json").is_file());
}

#[test]
fn scaffold_writes_a_contract_where_there_is_none() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("target-repo");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("README.md"), "# calc\nAdds numbers.\n").unwrap();
    let contract = "version: 1\ntests:\n  cmds: [bash .aider_fsm/stages/tests.sh]\nevaluation:\n  run_cmds: [bash .aider_fsm/stages/evaluation.sh]\n  required_keys: [score]\n";
    let script = Script::ok(vec![
        write_call("c1", "pipeline.yml", contract),
        write_call(
            "c2",
            ".aider_fsm/stages/tests.sh",
            "#!/usr/bin/env bash\necho tests ok\n",
        ),
        write_call(
            "c3",
            ".aider_fsm/stages/evaluation.sh",
            "#!/usr/bin/env bash\necho '{\"ok\": true, \"score\": 1}' > .aider_fsm/metrics.json\n",
        ),
        write_call("c4", "README.md", "rewritten\n"),
        tool_call("c5", "bash .aider_fsm/stages/tests.sh"),
        final_answer("wrote the contract"),
    ]);
    let url = serve(script.clone());
    let env = [("OPENAI_BASE_URL", url.as_str()), ("OPENAI_API_KEY", "k")];
    let o = pipeline(
        &[
            "scaffold",
            dir.to_str().unwrap(),
            "-m",
            "fake-model",
            "--json",
        ],
        &env,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rep: Value = serde_json::from_slice(&o.stdout).unwrap();
    let paths: Vec<(&str, &str)> = rep["changed_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["path"].as_str().unwrap(), c["change"].as_str().unwrap()))
        .collect();
    assert_eq!(
        paths,
        [
            (".aider_fsm/stages/evaluation.sh", "created"),
            (".aider_fsm/stages/tests.sh", "created"),
            ("pipeline.yml", "created")
        ]
    );
    assert_eq!(rep["refused"].as_array().unwrap().len(), 1, "{rep:#}");
    assert_eq!(text(&dir.join("README.md")), "# calc\nAdds numbers.\n");
    assert_eq!(text(&dir.join("pipeline.yml")), contract);
    let seen = script.seen();
    let bash_result = seen[5]["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        bash_result.contains("exit code: 0") && bash_result.contains("tests ok"),
        "{bash_result}"
    );
    let provs: Vec<PathBuf> = std::fs::read_dir(dir.join(".aider_fsm/artifacts"))
        .unwrap()
        .map(|e| e.unwrap().path().join("scaffold/scaffold_provenance.json"))
        .collect();
    assert_eq!(provs.len(), 1);
    assert_eq!(read_json(&provs[0])["changed_files"], rep["changed_files"]);

    // The scaffolded contract runs.
    let (code, r) = run_json(&dir, &[], &[]);
    assert_eq!(code, 0, "{r:#}");
    // A repository that has a contract is not scaffolded again.
    let o = pipeline(
        &["scaffold", dir.to_str().unwrap(), "-m", "fake-model"],
        &env,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("already has a pipeline.yml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_pipeline_run_is_recorded_in_the_provenance_store() {
    let (tmp, dir) = repo("passing");
    let store = tmp.path().join("store/rollout.db");
    let store_env = store.to_str().unwrap();
    let (code, r) = run_json(&dir, &[], &[("ROLLOUT_STORE", store_env)]);
    assert_eq!(code, 0, "{r}");
    let out = rollout_cmd()
        .args(["log", "--json"])
        .env("ROLLOUT_STORE", store_env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let log: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = log.to_string();
    assert!(
        text.contains("\"pipeline\""),
        "no pipeline job in the log: {text}"
    );
    // The contract is an input and the metrics an output of the recorded job.
    let show = rollout_cmd()
        .args(["lineage", "--json"])
        .arg(dir.join(r["metrics_path"].as_str().unwrap()))
        .env("ROLLOUT_STORE", store_env)
        .output()
        .unwrap();
    assert!(show.status.success(), "{}", stderr(&show));
    let lineage = String::from_utf8_lossy(&show.stdout);
    assert!(lineage.contains("pipeline.yml"), "{lineage}");
}

/// `rollout pipeline ARGS` with OPENAI_BASE_URL/OPENAI_API_BASE cleared (the tests set them).
fn pipeline_clean(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = rollout_cmd();
    c.arg("pipeline")
        .args(args)
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_BASE")
        .env_remove("AIDER_FSM_REQUIRE_HINTS");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn run_clean(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, Value, String) {
    let mut all = vec!["run", dir.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    let o = pipeline_clean(&all, env);
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no JSON on stdout ({e}); stderr:\n{}", stderr(&o)));
    (o.status.code().unwrap_or(-1), v, stderr(&o))
}

fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (rel, content) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

#[test]
fn run_without_a_contract_scaffolds_it_with_the_model_or_asks_for_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bare");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("README.md"), "# bare\n").unwrap();
    // No model: a usage error naming -m, nothing written.
    let o = pipeline_clean(&["run", dir.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no pipeline.yml") && stderr(&o).contains("pass -m MODEL"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.join("pipeline.yml").exists());
    // With -m: scaffolded (the endpoint given by the seed's OPENAI_API_BASE), then run.
    let contract = "version: 1\nevaluation:\n  run_cmds: [bash .aider_fsm/stages/evaluation.sh]\n  required_keys: [score]\n";
    let script = Script::ok(vec![
        write_call("c1", "pipeline.yml", contract),
        write_call(
            "c2",
            ".aider_fsm/stages/evaluation.sh",
            "#!/usr/bin/env bash\necho '{\"ok\": true, \"score\": 3}' > .aider_fsm/metrics.json\n",
        ),
        final_answer("wrote the contract"),
    ]);
    let url = serve(script.clone());
    let (code, r, err) = run_clean(
        &dir,
        &["-m", "fake-model"],
        &[("OPENAI_API_BASE", url.as_str()), ("OPENAI_API_KEY", "k")],
    );
    assert_eq!(code, 0, "{err}\n{r:#}");
    assert!(err.contains("scaffolding one with fake-model"), "{err}");
    assert_eq!(r["metrics"]["score"], 3);
    assert_eq!(text(&dir.join("pipeline.yml")), contract);
    assert_eq!(
        script.seen().len(),
        3,
        "the alias reached the scripted endpoint"
    );
}

#[test]
fn hints_samples_and_runtime_env_follow_the_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("seedish");
    write_files(
        &dir,
        &[
            (
                "pipeline.yml",
                "version: 1\ndeploy:\n  setup_cmds: [bash .aider_fsm/stages/deploy_setup.sh]\nrollout:\n  run_cmds: [bash .aider_fsm/stages/rollout.sh]\nevaluation:\n  run_cmds: [bash .aider_fsm/stages/evaluation.sh]\n  required_keys: [score]\n",
            ),
            (
                ".aider_fsm/stages/deploy_setup.sh",
                "echo '{\"inference\": {\"openai_base_url\": \"http://127.0.0.1:9/v1\", \"model\": \"served-m\"}, \"service\": {\"base_url\": \"http://svc:1\"}}' > .aider_fsm/runtime_env.json\n",
            ),
            (
                ".aider_fsm/stages/rollout.sh",
                "echo \"api=$OPENAI_API_BASE base=$OPENAI_BASE_URL model=$AIDER_LLM_MODEL svc=$AIDER_FSM_SERVICE_BASE_URL\"\necho '{\"paths\": {}}' > .aider_fsm/rollout.json\n",
            ),
            (
                ".aider_fsm/stages/evaluation.sh",
                "echo '{\"ok\": true, \"score\": 1}' > .aider_fsm/metrics.json\nif [ \"${HINT_RAN:-0}\" = 1 ]; then c='[\"make test\"]'; else c='[]'; fi\necho \"{\\\"ok\\\": true, \\\"used_anchors\\\": [], \\\"commands\\\": $c, \\\"reason\\\": \\\"tried\\\"}\" > .aider_fsm/hints_used.json\necho '{\"tried\": [\"make test\"]}' > .aider_fsm/hints_run.json\n",
            ),
        ],
    );
    // Samples are required by default.
    let (code, r, _) = run_clean(&dir, &[], &[]);
    assert_eq!(code, 1);
    assert!(
        r["failure"]
            .as_str()
            .unwrap()
            .starts_with("rollout.samples_path_missing"),
        "{r:#}"
    );
    // require_samples off: rollout.json is enough; runtime_env's inference/service reach the
    // later stages.
    let (code, r, err) = run_clean(&dir, &["--require-samples", "false"], &[]);
    assert_eq!(code, 0, "{err}\n{r:#}");
    assert!(err.contains("ok   evaluation"), "progress lines: {err}");
    let out = text(&evidence(&r, "rollout_cmd01_try01_stdout.txt"));
    assert_eq!(
        out.trim(),
        "api=http://127.0.0.1:9/v1 base=http://127.0.0.1:9/v1 model=served-m svc=http://svc:1"
    );
    assert_eq!(r["runtime"]["inference_model"], "served-m");
    assert_eq!(r["runtime"]["service_base_url"], "http://svc:1");
    // -m and a user-named endpoint win over runtime_env.
    let (_, r, _) = run_clean(
        &dir,
        &["--require-samples", "false", "-m", "mine"],
        &[("OPENAI_BASE_URL", "http://user:2/v1")],
    );
    let out = text(&evidence(&r, "rollout_cmd01_try01_stdout.txt"));
    assert!(
        out.contains("base=http://user:2/v1") && out.contains("model=mine"),
        "{out}"
    );
    // AIDER_FSM_REQUIRE_HINTS=1: a hints_used.json without a command that ran fails.
    let (code, r, _) = run_clean(
        &dir,
        &["--require-samples", "false"],
        &[("AIDER_FSM_REQUIRE_HINTS", "1")],
    );
    assert_eq!(code, 1, "{r:#}");
    let f = r["failure"].as_str().unwrap();
    assert!(
        f.starts_with("evaluation.hints_not_used") && f.contains("tried"),
        "{f}"
    );
    let (code, r, _) = run_clean(
        &dir,
        &["--require-samples", "false"],
        &[("AIDER_FSM_REQUIRE_HINTS", "1"), ("HINT_RAN", "1")],
    );
    assert_eq!(code, 0, "{r:#}");
    let eval = r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "evaluation")
        .unwrap();
    let v = &eval["verification"];
    assert_eq!(v["hints"]["commands"][0], "make test", "{v:#}");
    assert_eq!(
        read_json(&evidence(&r, "evaluation_hints_run.json"))["tried"][0],
        "make test"
    );
    // Without the switch, hints are kept as evidence but not required.
    std::fs::remove_file(dir.join(".aider_fsm/stages/evaluation.sh")).unwrap();
    write_files(
        &dir,
        &[(
            ".aider_fsm/stages/evaluation.sh",
            "echo '{\"ok\": true, \"score\": 1}' > .aider_fsm/metrics.json\nrm -f .aider_fsm/hints_used.json\n",
        )],
    );
    let (code, r, _) = run_clean(&dir, &["--require-samples", "false"], &[]);
    assert_eq!(code, 0, "{r:#}");
}

#[test]
fn docker_runs_the_contract_in_a_container_and_copies_outputs_back() {
    require_docker();
    let (_t, dir) = repo("passing");
    let (code, r, err) = run_clean(&dir, &["--env", "docker", "--ca-certs", "none"], &[]);
    assert_eq!(code, 0, "{err}\n{r:#}");
    assert!(err.contains("(docker environment)"), "{err}");
    assert_eq!(
        stage_names(&r),
        [
            "bootstrap:passed",
            "actions:passed",
            "tests:passed",
            "deploy_setup:passed",
            "deploy_health:passed",
            "rollout:passed",
            "evaluation:passed"
        ]
    );
    assert_eq!(r["teardown"]["status"], "passed");
    // Tests ran in the container (not on the host) and the metrics were read back.
    assert_eq!(r["samples"], 2);
    assert_eq!(r["metrics"]["score"], 0.5);
    assert_eq!(
        read_json(&dir.join(".aider_fsm/metrics.json"))["n"],
        2,
        "metrics copied back into the host repository"
    );
    assert!(dir.join(".aider_fsm/out/samples.jsonl").is_file());
    assert!(
        !dir.join(".aider_fsm/teardown.marker").exists(),
        "teardown ran in the container, not on the host"
    );
    let env = &r["environment"];
    assert_eq!(env["provider"], "docker");
    assert_eq!(env["image"], "debian:bookworm-slim");
    assert_eq!(env["removed"], true);
    assert_no_containers(&format!("pipeline-{}", r["run_id"].as_str().unwrap()));
    let out = text(&evidence(&r, "tests_cmd01_try01_stdout.txt"));
    assert!(out.contains("greeting: hello from bootstrap"), "{out}");
}

#[test]
fn docker_copy_out_refuses_links_and_stops_at_the_cap() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hostile");
    write_files(
        &dir,
        &[
            (
                "pipeline.yml",
                "version: 1\nrollout:\n  run_cmds: [bash .aider_fsm/stages/rollout.sh]\nevaluation:\n  run_cmds: [bash .aider_fsm/stages/evaluation.sh]\n  required_keys: [score]\n",
            ),
            (
                ".aider_fsm/stages/rollout.sh",
                "mkdir -p out\nln -sf /etc/hostname out/samples.jsonl\necho '{\"paths\": {\"samples_jsonl\": \"out/samples.jsonl\"}}' > .aider_fsm/rollout.json\nhead -c 3000000 /dev/zero > \"$AIDER_FSM_ARTIFACTS_DIR/big.bin\"\nln -s / \"$AIDER_FSM_ARTIFACTS_DIR/root\"\n",
            ),
            (
                ".aider_fsm/stages/evaluation.sh",
                "ln -sf /etc/passwd .aider_fsm/metrics.json\n",
            ),
        ],
    );
    // A samples "file" that is a link into the container's system is not copied out.
    let (code, r, err) = run_clean(
        &dir,
        &[
            "--env",
            "docker",
            "--ca-certs",
            "none",
            "--copy-out-mb",
            "1",
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}\n{r:#}");
    let f = r["failure"].as_str().unwrap();
    assert!(
        f.starts_with("rollout.copy_out") && f.contains("symbolic link"),
        "{f}"
    );
    assert!(dir.join("out/samples.jsonl").symlink_metadata().is_err());
    let copied = &r["environment"]["artifacts_copied"];
    assert_eq!(copied["truncated"], true, "{copied:#}");
    assert!(copied["bytes"].as_u64().unwrap() <= 1 << 20, "{copied:#}");
    let host = PathBuf::from(copied["dir"].as_str().unwrap());
    assert!(host.join("root").symlink_metadata().is_err());
    let on_disk: u64 = std::fs::read_dir(&host)
        .map(|d| d.flatten().map(|e| e.metadata().unwrap().len()).sum())
        .unwrap_or(0);
    assert!(on_disk <= 1 << 20, "{on_disk} bytes copied out");
    assert_eq!(r["environment"]["removed"], true);
    assert_no_containers(&format!("pipeline-{}", r["run_id"].as_str().unwrap()));
    // Metrics that are a link fail evaluation; the host file is not written through it.
    let (code, r, _) = run_clean(
        &dir,
        &[
            "--env",
            "docker",
            "--ca-certs",
            "none",
            "--stages",
            "evaluation",
        ],
        &[],
    );
    assert_eq!(code, 1, "{r:#}");
    let f = r["failure"].as_str().unwrap();
    assert!(
        f.starts_with("evaluation.copy_out") && f.contains("symbolic link"),
        "{f}"
    );
    assert!(dir
        .join(".aider_fsm/metrics.json")
        .symlink_metadata()
        .is_err());
    assert_no_containers(&format!("pipeline-{}", r["run_id"].as_str().unwrap()));
}

#[test]
fn docker_ctrl_c_stops_the_stage_tears_down_and_removes_the_container() {
    use std::io::BufRead;
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("slow");
    write_files(
        &dir,
        &[(
            "pipeline.yml",
            "version: 1\ndeploy:\n  setup_cmds: [\"echo '{}' > .aider_fsm/runtime_env.json\"]\n  teardown_cmds: [\"echo down\"]\nrollout:\n  run_cmds: [\"sleep 300\"]\n",
        )],
    );
    let mut child = rollout_cmd()
        .args([
            "pipeline",
            "run",
            dir.to_str().unwrap(),
            "--json",
            "--env",
            "docker",
            "--ca-certs",
            "none",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once deploy setup is reported, the rollout stage is next (or already running): Ctrl-C.
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.contains("deploy_setup");
        seen.push(line);
        if done {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("deploy_setup")),
        "no progress line for deploy setup: {seen:?}"
    );
    // SAFETY: kill(2) on the pid of the child we spawned.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{seen:?} {rest:?}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["cancelled"], true);
    assert_eq!(r["teardown"]["status"], "passed", "{r:#}");
    assert!(r["failure"]
        .as_str()
        .unwrap()
        .starts_with("rollout.cancelled"));
    assert_eq!(r["environment"]["removed"], true);
    assert_no_containers(&format!("pipeline-{}", r["run_id"].as_str().unwrap()));
}
