//! `--env kubernetes` end to end against a real single-node cluster (`scripts/k8s-test-cluster
//! up` starts it; these tests fail loudly, naming that command, when it is not up): rewards of
//! the examples, images pushed to the registry, pod resources, typed start failures with events,
//! and no pod left after cancellation, kill -9 + resume, and `rollout gc --env kubernetes`.

mod common;

use common::compose_task::{http_task, task};
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
fn compose_services_run_as_containers_of_the_trial_pod() {
    // The Docker compose tests' HTTP sidecar (built from its own Dockerfile, pushed to the
    // registry, healthchecked; main waits for service_healthy and reaches it as `api`), and a
    // one-shot service that seeds a shared named volume before main starts
    // (service_completed_successfully). Oracle 1, nop 0, and no pod left.
    let tmp = tempfile::tempdir().unwrap();
    let http = http_task(tmp.path(), "http-sidecar", "");
    let seeded = task(
        tmp.path(),
        "seeded-volume",
        r#"services:
  main:
    depends_on:
      seed:
        condition: service_completed_successfully
    volumes:
      - shared:/shared:ro
  seed:
    image: debian:bookworm-slim
    entrypoint: ["/bin/sh", "-c"]
    command: ["echo \"seeded by $$WHO\" > /data/seed"]
    environment:
      WHO: seed
    volumes:
      - shared:/data
volumes:
  shared:
"#,
        "#!/bin/bash\ncp /shared/seed /app/answer.txt\n",
        "seeded by seed",
    );
    let started = Instant::now();
    let run = run_k8s(
        &[
            "-p",
            http.to_str().unwrap(),
            "-p",
            seeded.to_str().unwrap(),
            "-a",
            "oracle",
            "-a",
            "nop",
            "-n",
            "4",
        ],
        &[],
    );
    eprintln!(
        "compose job on the cluster: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let trials = run.trials();
    assert_eq!(trials.len(), 4, "stderr:\n{}", run.stderr());
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
    }
    assert_no_pods(&job_id(&run.job_dir));
}

#[test]
fn compose_tasks_a_pod_cannot_express_are_refused_before_any_pod() {
    // Two services listening on one port cannot share a pod's network namespace: the task's
    // trials fail with environment_unsupported naming both, before any image is pushed or pod
    // created; the other task of the job still runs.
    let tmp = tempfile::tempdir().unwrap();
    let t = task(
        tmp.path(),
        "same-port",
        "services:\n  web:\n    image: debian:bookworm-slim\n    command: [\"sleep\", \"infinity\"]\n    expose: [\"8080\"]\n  admin:\n    image: debian:bookworm-slim\n    command: [\"sleep\", \"infinity\"]\n    expose: [\"8000-8090\"]\n",
        "#!/bin/bash\necho x > /app/answer.txt\n",
        "x",
    );
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
        .find(|t| t["task_name"] == "same-port")
        .unwrap();
    assert_eq!(
        error_type(refused),
        Some("environment_unsupported"),
        "{refused}"
    );
    let msg = refused["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("kubernetes")
            && msg.contains("docker-compose.yaml")
            && msg.contains("`admin` and `web` both expose port 8080/tcp"),
        "{msg}"
    );
    assert!(refused["reward"].is_null());
    assert!(
        refused["environment"]["image"].is_null(),
        "nothing was built or pushed: {refused}"
    );
    let other = trials
        .iter()
        .find(|t| t["task_name"] == "hello-prebuilt")
        .unwrap();
    assert_eq!(other["reward"], 1.0, "{other}");
    assert_no_pods(&job_id(&run.job_dir));
}

#[test]
fn a_sidecar_that_never_becomes_healthy_fails_the_trial_and_leaves_no_pod() {
    let tmp = tempfile::tempdir().unwrap();
    let t = task(
        tmp.path(),
        "never-healthy",
        "services:\n  main:\n    depends_on:\n      db:\n        condition: service_healthy\n  db:\n    image: debian:bookworm-slim\n    command: [\"sleep\", \"infinity\"]\n    healthcheck:\n      test: [\"CMD-SHELL\", \"echo not yet; exit 1\"]\n      interval: 1s\n      timeout: 1s\n      retries: 1\n",
        "#!/bin/bash\necho x > /app/answer.txt\n",
        "x",
    );
    let run = run_k8s(&["-p", t.to_str().unwrap(), "-a", "oracle"], &[]);
    let trial = run.trial();
    assert_eq!(
        error_type(&trial),
        Some("environment_healthcheck_failed"),
        "{trial}"
    );
    let msg = trial["error"]["message"].as_str().unwrap();
    assert!(msg.contains("service `db` was not healthy"), "{msg}");
    assert!(trial["reward"].is_null());
    assert_no_pods(&job_id(&run.job_dir));
}

/// Reward and error type of each trial of a job, by trial name.
fn outcomes(run: &Run) -> BTreeMap<String, (Value, Option<String>)> {
    run.trials()
        .iter()
        .map(|t| {
            (
                t["trial_name"].as_str().unwrap_or_default().to_string(),
                (t["reward"].clone(), error_type(t).map(str::to_string)),
            )
        })
        .collect()
}

#[test]
fn an_allowlist_task_is_refused_on_the_cluster_naming_why() {
    // This cluster does not enforce NetworkPolicy (docs/kubernetes.md): an allowlist must be
    // refused, never run with the network it did not ask for.
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("allowlist");
    let write = common::compose_task::write;
    write(&t, "instruction.md", "Nothing to do.\n");
    write(
        &t,
        "task.toml",
        "version = \"1.0\"\n[environment]\ndocker_image = \"debian:bookworm-slim\"\nnetwork_mode = \"allowlist\"\nallowed_hosts = [\"example.com\"]\n",
    );
    write(&t, "solution/solve.sh", "#!/bin/bash\ntrue\n");
    write(
        &t,
        "tests/test.sh",
        "#!/bin/bash\necho 1 > /logs/verifier/reward.txt\n",
    );
    let run = run_k8s(&["-p", t.to_str().unwrap(), "-a", "oracle"], &[]);
    let trial = run.trial();
    assert_eq!(
        error_type(&trial),
        Some("environment_unsupported"),
        "{trial}"
    );
    let message = trial["error"]["message"].as_str().unwrap();
    assert!(
        message
            .contains("network_mode = \"allowlist\" cannot be enforced by the kubernetes provider")
            && message.contains(rollout_kube::ALLOWLIST_REFUSAL),
        "{message}"
    );
    assert_no_pods(&job_id(&run.job_dir));
}

#[test]
fn docker_and_the_cluster_give_the_same_outcome_trial_by_trial() {
    // One set of tasks, run on Docker and on the cluster: a normal task, one whose verifier
    // installs from the package mirrors (apt's index from deb.debian.org, a small pure-Python
    // package from PyPI over HTTPS through the proxy whose CA rollout injects), a failing one,
    // one whose verifier times out, one without tests/test.sh. Each trial must end the same way
    // on both, and as expected.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let write = common::compose_task::write;
    let hello = root.join("hello");
    rollout_env::archive::copy_tree(&fixture("hello-prebuilt"), &hello).unwrap();
    let simple = |name: &str, toml: &str, test: Option<&str>| {
        let t = root.join(name);
        write(&t, "instruction.md", "Write the answer to /tmp/answer.\n");
        write(&t, "task.toml", toml);
        write(
            &t,
            "solution/solve.sh",
            "#!/bin/bash\necho 41 > /tmp/answer\n",
        );
        if let Some(test) = test {
            write(&t, "tests/test.sh", test);
        }
        t
    };
    let prebuilt = "version = \"1.0\"\n[agent]\ntimeout_sec = 30\n[verifier]\ntimeout_sec = 5\n[environment]\ndocker_image = \"debian:bookworm-slim\"\n";
    let mirrors = simple(
        "mirrors",
        "version = \"1.0\"\n[agent]\ntimeout_sec = 30\n[verifier]\ntimeout_sec = 300\n[environment]\nbuild_timeout_sec = 900\n",
        Some(
            "#!/bin/bash\n# apt's index and a pure-Python wheel from PyPI, as a verifier installing its test deps does.\n\
             echo 0 > /logs/verifier/reward.txt\n\
             timeout 120 apt-get update > /logs/verifier/apt.log 2>&1 || exit 0\n\
             timeout 120 pip install --no-deps --break-system-packages --target /tmp/pkg six==1.16.0 > /logs/verifier/pip.log 2>&1 || exit 0\n\
             PYTHONPATH=/tmp/pkg python3 -c 'import six; assert six.__version__ == \"1.16.0\"' && echo 1 > /logs/verifier/reward.txt\n",
        ),
    );
    // The https-pip fixture's image: Debian's pip, without the ca-certificates package.
    write(
        &mirrors,
        "environment/Dockerfile",
        &std::fs::read_to_string(fixture("https-pip").join("environment/Dockerfile")).unwrap(),
    );
    let failing = simple(
        "failing",
        prebuilt,
        Some("#!/bin/bash\n[ \"$(cat /tmp/answer)\" = 42 ] && echo 1 > /logs/verifier/reward.txt || echo 0 > /logs/verifier/reward.txt\n"),
    );
    let slow = simple(
        "slow-verifier",
        prebuilt,
        Some("#!/bin/bash\nsleep 60\necho 1 > /logs/verifier/reward.txt\n"),
    );
    let untested = simple("no-tests", prebuilt, None);
    let mut args: Vec<&str> = Vec::new();
    for t in [&hello, &mirrors, &failing, &slow, &untested] {
        args.extend(["-p", t.to_str().unwrap()]);
    }
    args.extend(["-a", "oracle", "-n", "5"]);
    let started = Instant::now();
    let docker = run(&args);
    let docker_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let cluster = run_k8s(&args, &[]);
    let cluster_secs = started.elapsed().as_secs_f64();
    let (on_docker, on_cluster) = (outcomes(&docker), outcomes(&cluster));
    eprintln!("trial | docker | kubernetes   (jobs: docker {docker_secs:.1} s, cluster {cluster_secs:.1} s)");
    for (name, d) in &on_docker {
        eprintln!("{name} | {d:?} | {:?}", on_cluster.get(name));
    }
    let expected: BTreeMap<String, (Value, Option<String>)> = [
        ("hello__oracle__1", (serde_json::json!(1.0), None)),
        ("mirrors__oracle__1", (serde_json::json!(1.0), None)),
        ("failing__oracle__1", (serde_json::json!(0.0), None)),
        (
            "slow-verifier__oracle__1",
            (Value::Null, Some("verifier_timeout")),
        ),
        ("no-tests__oracle__1", (Value::Null, Some("task_invalid"))),
    ]
    .into_iter()
    .map(|(n, (r, e))| (n.to_string(), (r, e.map(str::to_string))))
    .collect();
    assert_eq!(
        on_docker,
        expected,
        "on Docker; stderr:\n{}\nmirrors' logs: {:?}",
        docker.stderr(),
        std::fs::read_to_string(
            docker
                .trial_dir("mirrors__oracle__1")
                .join("verifier/pip.log")
        )
    );
    assert_eq!(
        on_cluster,
        on_docker,
        "the cluster differs from Docker; stderr:\n{}\nmirrors' logs: apt {:?} pip {:?}",
        cluster.stderr(),
        std::fs::read_to_string(
            cluster
                .trial_dir("mirrors__oracle__1")
                .join("verifier/apt.log")
        ),
        std::fs::read_to_string(
            cluster
                .trial_dir("mirrors__oracle__1")
                .join("verifier/pip.log")
        )
    );
    assert_no_pods(&job_id(&cluster.job_dir));
}

#[test]
fn jobs_kill_removes_the_pods_of_a_job_on_the_cluster() {
    // The job's process dies without cleaning up (kill -9); `rollout jobs kill` then removes
    // the pod it left, on the cluster the job ran on.
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, job_dir) = start_background(tmp.path(), "slow-solve", &[]);
    let id = job_id(&job_dir);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(pods_of(&id).len(), 1, "kill -9 leaves the pod running");
    let out = k8s_cmd()
        .args(["jobs", "kill", job_dir.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("removed 1 container(s) or pod(s)"),
        "{stdout}"
    );
    assert_no_pods(&id);
}

/// The names of the pods carrying label `key=value` in the default namespace.
async fn pods_labelled(key: &str, value: &str) -> Vec<String> {
    let kubeconfig = cluster()["KUBECONFIG"].clone();
    let selector = format!("{key}={value}");
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_and_a_warm_pool_run_on_pods_of_the_cluster() {
    use common::serve::{client, Server};
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let tasks = root.join("tasks");
    let d = tasks.join("answer");
    std::fs::create_dir_all(d.join("environment")).unwrap();
    std::fs::create_dir_all(d.join("tests")).unwrap();
    std::fs::write(
        d.join("environment/Dockerfile"),
        "FROM debian:bookworm-slim\nWORKDIR /app\nLABEL io.rollout.test=k8s-sessions\n",
    )
    .unwrap();
    std::fs::write(
        d.join("instruction.md"),
        "Write done into /app/answer.txt\n",
    )
    .unwrap();
    // Small: the pool's pod and the session's fit on the test node's 2 CPUs at once.
    std::fs::write(
        d.join("task.toml"),
        "version = \"1.0\"\n[environment]\ncpus = 0.25\nmemory_mb = 256\n",
    )
    .unwrap();
    std::fs::write(
        d.join("tests/test.sh"),
        "#!/bin/bash\n[ \"$(cat /app/answer.txt)\" = done ] && echo 1 > /logs/verifier/reward.txt || echo 0 > /logs/verifier/reward.txt\n",
    )
    .unwrap();
    let env: Vec<(String, String)> = cluster()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let warm = format!("{}=1", tasks.join("answer").display());
    // SIGTERM on every path (a failed assertion too): the server removes its pods.
    struct Stop(Server);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(120);
            while self.0.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let mut server = Stop(Server::spawn(
        &root.join("data"),
        &root.join("cache"),
        &root.join("server.log"),
        &[
            "--env",
            "kubernetes",
            "--allow-local-paths",
            tasks.to_str().unwrap(),
            "--warm-pool",
            &warm,
        ],
        &env,
    ));
    let server_id = std::fs::read_to_string(root.join("data/server-id")).unwrap();
    let c = client();
    let pool_ready = |c: reqwest::Client, url: String| async move {
        let pools: Value = c.get(url).send().await.unwrap().json().await.unwrap();
        let p = &pools["pools"][0];
        (p["ready"].as_u64() == Some(1), p.clone())
    };
    let pools_url = server.0.url("/api/v1/pools");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (ready, p) = pool_ready(c.clone(), pools_url.clone()).await;
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the warm pool did not fill in 300 s: {p}\n{}",
            server.0.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pooled = pods_labelled("io.rollout.server", &server_id).await;
    assert_eq!(
        pooled.len(),
        1,
        "the pool's environment is a pod: {pooled:?}"
    );

    // Open (warm: the pool's pod), exec, grade, close.
    let resp = c
        .post(server.0.url("/api/v1/sessions"))
        .json(&serde_json::json!({"task": tasks.join("answer")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let s: Value = resp.json().await.unwrap();
    assert_eq!(s["warm"], true, "{s}");
    let pod = s["container_id"].as_str().unwrap().to_string();
    assert_eq!(pooled, vec![pod.clone()], "the session took the pool's pod");
    let id = s["id"].as_str().unwrap();
    let out: Value = c
        .post(server.0.url(&format!("/api/v1/sessions/{id}/exec")))
        .json(&serde_json::json!({"command": "echo done > /app/answer.txt; hostname"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(out["exit_code"], 0, "{out}");
    let grade: Value = c
        .post(server.0.url(&format!("/api/v1/sessions/{id}/grade")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(grade["reward"], 1.0, "{grade}");
    let closed = c
        .delete(server.0.url(&format!("/api/v1/sessions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status().as_u16(), 200);
    let job: Value = c
        .get(server.0.url(&format!("/api/v1/jobs/{id}/trials")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let trial = &job["trials"][0];
    assert_eq!(trial["reward"], 1.0, "{job}");

    // Close removed the pod; the pool refilled with a new one.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let now = pods_labelled("io.rollout.server", &server_id).await;
        let (ready, p) = pool_ready(c.clone(), pools_url.clone()).await;
        if ready && now.len() == 1 && !now.contains(&pod) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after close: pods {now:?}, pool {p}\n{}",
            server.0.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // SIGTERM: the pool's pod goes too.
    server.0.signal(libc::SIGTERM);
    server.0.wait_exit(120);
    assert_eq!(
        pods_labelled("io.rollout.server", &server_id).await,
        Vec::<String>::new()
    );
}
