//! `--env kubernetes` end to end against a real single-node cluster (`scripts/k8s-test-cluster
//! up` starts it; these tests fail loudly, naming that command, when it is not up): rewards of
//! the examples, images pushed to the registry, pod resources, typed start failures with events,
//! and no pod left after cancellation, kill -9 + resume, and `rollout gc --env kubernetes`.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The variables of the test cluster (`scripts/k8s-test-cluster env`), after checking it is up.
fn cluster() -> &'static BTreeMap<String, String> {
    static ENV: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let script = repo().join("scripts/k8s-test-cluster");
        let status = Command::new(&script).arg("status").output().unwrap();
        assert!(
            status.status.success(),
            "these tests need the local Kubernetes test cluster: run `scripts/k8s-test-cluster up` (as root).\nstatus:\n{}{}",
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&status.stderr)
        );
        let out = Command::new(&script).arg("env").output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}

fn registry() -> String {
    cluster()["ROLLOUT_K8S_IMAGE_REGISTRY"].clone()
}

fn k8s_cmd() -> Command {
    let mut c = rollout_cmd();
    c.envs(cluster());
    c.env_remove("ROLLOUT_K8S_NAMESPACE");
    c
}

/// `rollout run ARGS --env kubernetes -o <tmp> --job-name job` with the cluster's variables.
fn run_k8s(args: &[&str], env: &[(&str, &str)]) -> Run {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let mut c = k8s_cmd();
    c.arg("run").args(args).args(["--env", "kubernetes"]).args([
        "-o",
        tmp.path().to_str().unwrap(),
        "--job-name",
        "job",
    ]);
    for (k, v) in env {
        c.env(k, v);
    }
    let output = c.output().unwrap();
    Run {
        output,
        job_dir: tmp.path().join("job"),
        _tmp: tmp,
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The pods of a job in the default namespace.
fn pods_of(job_id: &str) -> Vec<Pod> {
    let kubeconfig = cluster()["KUBECONFIG"].clone();
    block_on(async move {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let pods: Api<Pod> = Api::namespaced(client, "default");
        pods.list(&ListParams::default().labels(&format!("io.rollout.job={job_id}")))
            .await
            .unwrap()
            .items
    })
}

fn assert_no_pods(job_id: &str) {
    let left: Vec<String> = pods_of(job_id)
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert!(
        left.is_empty(),
        "pods of job {job_id} left behind: {left:?}"
    );
}

/// A job file in `dir` running on the cluster, with extra `environment:` keys.
fn job_file(dir: &Path, environment: Value, body: Value) -> std::path::PathBuf {
    let mut env = serde_json::json!({"type": "kubernetes"});
    env.as_object_mut()
        .unwrap()
        .extend(environment.as_object().unwrap().clone());
    let mut job = body;
    job["environment"] = env;
    let path = dir.join("job.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&job).unwrap()).unwrap();
    path
}

/// A Kubernetes quantity as a number (`1500m` = 1.5, `2Gi` = 2^31).
fn quantity(q: &str) -> f64 {
    let units = [
        ("m", 1e-3),
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().unwrap() * factor;
        }
    }
    q.parse()
        .unwrap_or_else(|_| panic!("unexpected quantity {q}"))
}

fn error_type(t: &Value) -> Option<&str> {
    t["error"]["type"].as_str()
}

#[test]
fn examples_pass_with_the_oracle_and_score_zero_with_nop_on_the_cluster() {
    let r = run_k8s(
        &[
            "-p",
            example("hello-world").to_str().unwrap(),
            "-p",
            example("datasets/smoke").to_str().unwrap(),
            "-a",
            "oracle",
            "-a",
            "nop",
            "-n",
            "4",
        ],
        &[],
    );
    assert_eq!(
        r.code(),
        0,
        "stderr:\n{}\nstdout:\n{}",
        r.stderr(),
        r.stdout()
    );
    let trials = r.trials();
    assert_eq!(trials.len(), 14, "7 tasks x 2 agents");
    for t in &trials {
        assert!(t["error"].is_null(), "trial errored: {t}");
        assert_eq!(t["environment"]["type"], "kubernetes", "{t}");
        let expected = if t["agent"]["name"] == "oracle" {
            1.0
        } else {
            0.0
        };
        assert_eq!(
            t["reward"], expected,
            "{} with {}: {t}",
            t["task_name"], t["agent"]["name"]
        );
        let image = t["environment"]["image"].as_str().unwrap_or_default();
        assert!(
            image.starts_with(&format!("{}/rollout-env:", registry())),
            "the image comes from the registry: {image}"
        );
    }
    // The agent's and verifier's files came back through exec.
    let dir = r.trial_dir("hello-world__oracle__1");
    assert_eq!(
        std::fs::read_to_string(dir.join("verifier/reward.txt"))
            .unwrap()
            .trim(),
        "1"
    );
    assert_no_pods(r.job_result()["id"].as_str().unwrap());
}

#[test]
fn dockerfile_images_are_pushed_to_the_registry_once() {
    let r = run_k8s(
        &[
            "-p",
            example("hello-world").to_str().unwrap(),
            "-a",
            "oracle",
        ],
        &[],
    );
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    let t = r.trial();
    let image = t["environment"]["image"].as_str().unwrap().to_string();
    let (repo_tag, tag) = image.rsplit_once(':').unwrap();
    let repo_name = repo_tag.trim_start_matches(&format!("{}/", registry()));
    // The registry itself lists the tag.
    let out = Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "10",
            &format!("http://{}/v2/{repo_name}/tags/list", registry()),
        ])
        .output()
        .unwrap();
    let tags: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("registry answer: {}", String::from_utf8_lossy(&out.stdout)));
    assert!(
        tags["tags"].as_array().unwrap().iter().any(|t| t == tag),
        "{tag} not in {tags}"
    );
    // A second job finds it there: nothing is built.
    let again = run_k8s(
        &["-p", example("hello-world").to_str().unwrap(), "-a", "nop"],
        &[],
    );
    assert_eq!(again.code(), 0, "stderr:\n{}", again.stderr());
    assert_eq!(again.trial()["environment"]["built"], false);
    assert_eq!(again.trial()["environment"]["image"], image.as_str());
}

#[test]
fn a_dockerfile_task_without_a_registry_is_refused_naming_the_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = rollout_cmd();
    c.env("KUBECONFIG", &cluster()["KUBECONFIG"])
        .env_remove("ROLLOUT_K8S_IMAGE_REGISTRY");
    let out = c
        .args([
            "run",
            "-p",
            example("hello-world").to_str().unwrap(),
            "-a",
            "oracle",
        ])
        .args(["--env", "kubernetes", "-o", tmp.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("image_registry"), "{stderr}");
    assert!(stderr.contains("ROLLOUT_K8S_IMAGE_REGISTRY"), "{stderr}");
}

#[test]
fn users_workdir_and_environment_apply_to_commands_in_the_pod() {
    let r = run_k8s(
        &[
            "-p",
            fixture("user-workdir-env").to_str().unwrap(),
            "-a",
            "oracle",
        ],
        &[],
    );
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    let t = r.trial();
    assert_eq!(t["reward"], 1.0, "{t}");
}

/// Spawn `rollout run` in the background on `task` with `agent`; returns the child and the job
/// directory once a trial's agent runs.
fn start_background(
    tmp: &Path,
    task: &str,
    extra: &[&str],
) -> (std::process::Child, std::path::PathBuf) {
    require_docker();
    let child = k8s_cmd()
        .arg("run")
        .args(["-p", fixture(task).to_str().unwrap(), "-a", "oracle"])
        .args(extra)
        .args([
            "--env",
            "kubernetes",
            "-o",
            tmp.to_str().unwrap(),
            "--job-name",
            "job",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let job_dir = tmp.join("job");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let started = std::fs::read_dir(&job_dir).ok().is_some_and(|d| {
            d.flatten().any(|e| {
                std::fs::read_to_string(e.path().join("trial.log"))
                    .is_ok_and(|l| l.contains("agent_run started"))
            })
        });
        if started {
            break;
        }
        assert!(Instant::now() < deadline, "no agent started within 180 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, job_dir)
}

/// The job id, from the first trial's config.json.
fn job_id(job_dir: &Path) -> String {
    let trial = std::fs::read_dir(job_dir)
        .unwrap()
        .flatten()
        .find(|e| e.path().join("config.json").is_file())
        .expect("a trial directory with config.json");
    read_json(&trial.path().join("config.json"))["job_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_pod_carries_the_task_resources_labels_and_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, job_dir) = start_background(tmp.path(), "slow-solve", &[]);
    let id = job_id(&job_dir);
    let pods = pods_of(&id);
    let _ = child.wait();
    assert_eq!(pods.len(), 1, "one pod for the one trial");
    let p = &pods[0];
    let labels = p.metadata.labels.clone().unwrap();
    assert_eq!(labels["io.rollout.job"], id);
    assert_eq!(labels["io.rollout.managed"], "true");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "rollout");
    let notes = p.metadata.annotations.clone().unwrap();
    assert_eq!(notes["io.rollout.pid"], child.id().to_string());
    let c = &p.spec.as_ref().unwrap().containers[0];
    let res = c.resources.as_ref().unwrap();
    let limits = res.limits.as_ref().unwrap();
    let task = rollout_core::TaskConfig::load(&fixture("slow-solve").join("task.toml")).unwrap();
    let (cpus, memory, storage) = (
        task.environment.cpus,
        task.environment.memory_mb,
        task.environment.storage_mb,
    );
    // The API server normalises quantities ("1000m" comes back as "1", "2048Mi" as "2Gi").
    assert_eq!(quantity(&limits["cpu"].0), cpus);
    assert_eq!(quantity(&limits["memory"].0), (memory << 20) as f64);
    assert_eq!(
        quantity(&limits["ephemeral-storage"].0),
        (storage << 20) as f64
    );
    assert_eq!(res.requests.as_ref().unwrap(), limits);
    assert_eq!(
        c.args.as_deref(),
        Some(&["sleep".to_string(), "infinity".to_string()][..])
    );
    assert_no_pods(&id);
}

#[test]
fn a_pod_that_cannot_be_scheduled_fails_with_its_events() {
    let tmp = tempfile::tempdir().unwrap();
    let job = job_file(
        tmp.path(),
        serde_json::json!({"node_selector": {"rollout-test/no-such-node": "x"}, "pod_start_timeout_sec": 6}),
        serde_json::json!({"tasks": [{"path": fixture("hello-prebuilt")}], "agents": [{"name": "oracle"}]}),
    );
    let r = run_k8s(&[job.to_str().unwrap(), "--max-retries", "0"], &[]);
    let t = r.trial();
    assert_eq!(error_type(&t), Some("environment_start_failed"), "{t}");
    let message = t["error"]["message"].as_str().unwrap();
    assert!(message.contains("did not start within 6 s"), "{message}");
    assert!(message.contains("Unschedulable"), "{message}");
    assert!(
        message.contains("FailedScheduling"),
        "the events are in the message: {message}"
    );
    assert_no_pods(r.job_result()["id"].as_str().unwrap());
}

#[test]
fn an_image_that_cannot_be_pulled_fails_as_a_pull_error_with_events() {
    let r = run_k8s(
        &[
            "-p",
            fixture("missing-image").to_str().unwrap(),
            "-a",
            "oracle",
            "--max-retries",
            "0",
        ],
        &[],
    );
    let t = r.trial();
    assert_eq!(error_type(&t), Some("environment_image_pull_failed"), "{t}");
    let message = t["error"]["message"].as_str().unwrap();
    assert!(message.contains("does/not/exist"), "{message}");
    assert!(message.contains("events"), "{message}");
    assert_no_pods(r.job_result()["id"].as_str().unwrap());
}

#[test]
fn ctrl_c_mid_job_leaves_no_pod() {
    let tmp = tempfile::tempdir().unwrap();
    let (child, job_dir) = start_background(tmp.path(), "agent-hangs", &[]);
    let id = job_id(&job_dir);
    assert_eq!(pods_of(&id).len(), 1, "the trial's pod runs");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = read_json(&job_dir.join("result.json"));
    assert_eq!(result["cancelled"], true);
    assert_no_pods(&id);
}

#[test]
fn kill_9_then_resume_removes_the_orphaned_pod() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, job_dir) = start_background(tmp.path(), "slow-solve", &[]);
    let id = job_id(&job_dir);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(pods_of(&id).len(), 1, "kill -9 leaves the pod running");
    let out = k8s_cmd()
        .arg("run")
        .args([
            "-p",
            fixture("slow-solve").to_str().unwrap(),
            "-a",
            "oracle",
        ])
        .args([
            "--env",
            "kubernetes",
            "-o",
            tmp.path().to_str().unwrap(),
            "--job-name",
            "job",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    assert!(stderr.contains("orphaned"), "{stderr}");
    let t = read_json(&job_dir.join("slow-solve__oracle__1/result.json"));
    assert_eq!(t["reward"], 1.0, "{t}");
    assert_no_pods(&id);
}

#[test]
fn gc_removes_the_pods_of_dead_rollout_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, job_dir) = start_background(tmp.path(), "agent-hangs", &[]);
    let id = job_id(&job_dir);
    child.kill().unwrap();
    child.wait().unwrap();
    let pods = pods_of(&id);
    assert_eq!(pods.len(), 1, "kill -9 leaves the pod running");
    let name = pods[0].metadata.name.clone().unwrap();
    let dry = k8s_cmd()
        .args(["gc", "--env", "kubernetes", "--dry-run"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(text.contains(&format!("{name} job {id}")), "{text}");
    assert!(text.contains("would remove"), "{text}");
    assert_eq!(pods_of(&id).len(), 1, "a dry run removes nothing");
    let out = k8s_cmd()
        .args(["gc", "--env", "kubernetes"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("{name} job {id}")), "{text}");
    assert_no_pods(&id);
}

#[test]
fn an_unreachable_cluster_is_named_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1'}\n\
         users:\n- name: u\n  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
    )
    .unwrap();
    let out = rollout_cmd()
        .env("KUBECONFIG", &kubeconfig)
        .env("ROLLOUT_K8S_IMAGE_REGISTRY", registry())
        .args([
            "run",
            "-p",
            fixture("hello-prebuilt").to_str().unwrap(),
            "-a",
            "oracle",
        ])
        .args(["--env", "kubernetes", "-o", tmp.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr.contains("Kubernetes cluster not reachable"),
        "{stderr}"
    );
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
}

/// A multi-step task on the cluster: one pod for the three steps (files travel through exec
/// there, not bind mounts): the oracle solves every step, nop stops after step one, and no pod
/// is left.
#[test]
fn a_three_step_task_runs_its_steps_in_one_pod() {
    let tmp = tempfile::tempdir().unwrap();
    let task = common::steps_task::three_step_task(tmp.path(), "three-step", "");
    let r = run_k8s(
        &[
            "-p",
            task.to_str().unwrap(),
            "-a",
            "oracle",
            "-a",
            "nop",
            "-n",
            "2",
        ],
        &[],
    );
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    for t in r.trials() {
        assert_eq!(t["environment"]["type"], "kubernetes", "{t}");
        let steps: Vec<&str> = t["step_results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step_name"].as_str().unwrap())
            .collect();
        if t["agent"]["name"] == "oracle" {
            assert_eq!(t["reward"], 1.0, "{t:#}");
            assert!(t["error"].is_null(), "{t:#}");
            assert_eq!(steps, ["one", "two", "three"]);
            let dir = r.trial_dir(t["trial_name"].as_str().unwrap());
            assert_eq!(
                std::fs::read_to_string(dir.join("steps/one/artifacts/app/one.txt")).unwrap(),
                "one\n"
            );
            assert!(dir.join("steps/three/artifacts/three-log.txt").is_file());
        } else {
            assert_eq!(t["reward"], 0.0, "{t:#}");
            assert_eq!(steps, ["one"], "nop stops after step one");
        }
    }
    assert_no_pods(r.job_result()["id"].as_str().unwrap());
}

#[test]
fn a_compose_task_is_refused_on_the_cluster_and_never_runs_without_its_services() {
    // Compose services do not map to the trial's pod yet: the task's trials fail with a typed
    // environment_unsupported error, before any image is pushed or pod created; the other
    // tasks of the job still run.
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("with-sidecar");
    for (rel, text) in [
        ("instruction.md", "Ask the api service.\n"),
        (
            "task.toml",
            "version = \"1.0\"\n[environment]\ndocker_image = \"debian:bookworm-slim\"\n",
        ),
        (
            "environment/docker-compose.yaml",
            "services:\n  main:\n    depends_on: [api]\n  api:\n    image: debian:bookworm-slim\n    command: [\"sleep\", \"infinity\"]\n",
        ),
        ("solution/solve.sh", "#!/bin/bash\ntrue\n"),
        ("tests/test.sh", "#!/bin/bash\necho 1 > /logs/verifier/reward.txt\n"),
    ] {
        let p = t.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let run = run_k8s(
        &[
            "-p",
            t.to_str().unwrap(),
            "-p",
            fixture("hello-prebuilt").to_str().unwrap(),
            "-a",
            "oracle",
        ],
        &[],
    );
    let trials = run.trials();
    assert_eq!(trials.len(), 2, "stderr:\n{}", run.stderr());
    let refused = trials
        .iter()
        .find(|t| t["task_name"] == "with-sidecar")
        .unwrap();
    assert_eq!(
        error_type(refused),
        Some("environment_unsupported"),
        "{refused}"
    );
    let msg = refused["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("kubernetes") && msg.contains("docker-compose.yaml"),
        "{msg}"
    );
    assert!(refused["reward"].is_null());
    let other = trials
        .iter()
        .find(|t| t["task_name"] == "hello-prebuilt")
        .unwrap();
    assert_eq!(other["reward"], 1.0, "{other}");
    assert_no_pods(&job_id(&run.job_dir));
}
