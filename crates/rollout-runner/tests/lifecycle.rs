//! The runner's lifecycle against the in-memory fake provider (`rollout_env::testing`): no
//! container engine is involved (these tests pass with `DOCKER_HOST=unix:///nonexistent`).
//! Time is tokio's paused clock, so timeouts of minutes take no wall time; tests synchronise on
//! what the fake recorded, never on sleeps.

use rollout_core::result::Phase;
use rollout_core::{ErrorKind, JobConfig, JobResult, Task, TrialResult};
use rollout_env::testing::{Act, FakeProvider, Ledger, Role};
use rollout_env::EnvError;
use rollout_runner::writer::ResultsWriter;
use rollout_runner::{Event, EventSink, JobPlan, RunOptions, Runner};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Agent timeout in the tasks written here (s).
const AGENT_TIMEOUT: u64 = 100;
/// Verifier timeout in the tasks written here (s).
const VERIFIER_TIMEOUT: u64 = 50;
/// Install timeout (s).
const INSTALL_TIMEOUT: u64 = 30;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
}

/// A task `name` in `parent`; `extra` is appended to its task.toml.
fn task_with(parent: &Path, name: &str, extra: &str) -> Task {
    let d = parent.join(name);
    write(
        &d,
        "task.toml",
        &format!(
            "schema_version = \"1.1\"\n\n[agent]\ntimeout_sec = {AGENT_TIMEOUT}\ninstall_timeout_sec = {INSTALL_TIMEOUT}\n\n[verifier]\ntimeout_sec = {VERIFIER_TIMEOUT}\n{extra}"
        ),
    );
    write(&d, "instruction.md", &format!("Solve {name}.\n"));
    write(&d, "tests/test.sh", "echo 1 > /logs/verifier/reward.txt\n");
    write(&d, "solution/solve.sh", "true\n");
    write(&d, "environment/Dockerfile", "FROM debian:bookworm-slim\n");
    Task::load(&d).unwrap()
}

fn task(parent: &Path, name: &str) -> Task {
    task_with(parent, name, "")
}

/// Records every event.
#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl EventSink for Recorder {
    fn on_event(&self, event: &Event) {
        self.0.lock().unwrap().push(event.clone());
    }
}

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
}

/// One test's world: a temp dir for tasks and jobs, the fake, a cancel token.
struct World {
    root: tempfile::TempDir,
    fake: FakeProvider,
    cancel: CancellationToken,
    recorder: Arc<Recorder>,
    writer: Arc<ResultsWriter>,
}

impl World {
    fn new() -> Self {
        Self {
            root: tempfile::tempdir().unwrap(),
            fake: FakeProvider::new(),
            cancel: CancellationToken::new(),
            recorder: Arc::default(),
            writer: Arc::default(),
        }
    }

    fn path(&self) -> &Path {
        self.root.path()
    }

    /// A job from YAML, its directory `<root>/jobs/job`.
    fn config(&self, yaml: &str) -> JobConfig {
        let mut c = JobConfig::parse(yaml, Path::new("job.yaml")).unwrap();
        c.jobs_dir = Some(self.path().join("jobs"));
        c.name = Some("job".into());
        c
    }

    fn plan(&self, yaml: &str, tasks: Vec<Task>) -> JobPlan {
        JobPlan::new(self.config(yaml), tasks).unwrap()
    }

    fn job_dir(&self) -> PathBuf {
        self.path().join("jobs/job")
    }

    fn runner(&self) -> Runner {
        let mut runner = Runner::new(
            Arc::new(self.fake.clone()),
            self.cancel.clone(),
            RunOptions::default(),
        );
        runner.subscribe(self.recorder.clone());
        runner.subscribe(self.writer.clone());
        runner
    }

    async fn run(&self, plan: JobPlan) -> JobResult {
        self.runner().run(plan).await
    }

    /// The result of the only trial of the job just run.
    fn trial(&self, job: &JobResult) -> TrialResult {
        assert_eq!(job.trials.len(), 1, "one trial expected: {:?}", job.trials);
        self.trial_named(job.trials.keys().next().unwrap())
    }

    fn trial_named(&self, name: &str) -> TrialResult {
        let bytes = std::fs::read(self.job_dir().join(name).join("result.json")).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// The events as one line each, volatile values (durations, ids, paths) left out.
    fn event_lines(&self) -> String {
        let tmp = self.path().canonicalize().unwrap().display().to_string();
        self.recorder
            .events()
            .iter()
            .map(|e| line(e).replace(&tmp, "[TMP]"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One event as a line, from its serialised form.
fn line(e: &Event) -> String {
    let v = serde_json::to_value(e).unwrap();
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let kind = s("type");
    match kind.as_str() {
        "job_started" => format!(
            "job_started trials={} kept={} concurrency={}",
            v["n_trials"], v["n_kept"], v["concurrency"]
        ),
        "trial_started" => format!(
            "trial_started {} attempt={}",
            v["config"]["trial_name"].as_str().unwrap(),
            v["config"]["attempt"]
        ),
        "phase_started" => format!("  {} {} started", s("trial"), s("phase")),
        "phase_finished" => format!(
            "  {} {} finished{}",
            s("trial"),
            s("phase"),
            v["error"]
                .as_str()
                .map_or(String::new(), |e| format!(" error={e}"))
        ),
        "step_started" => format!(
            "  {} step {} {}/{}",
            s("trial"),
            s("step"),
            v["index"],
            v["total"]
        ),
        "step_finished" => format!(
            "  {} step {} done reward={} stopped={}",
            s("trial"),
            v["result"]["step_name"].as_str().unwrap(),
            v["result"]["reward"],
            v["result"]["stopped"]
        ),
        "trial_finished" => format!(
            "trial_finished {} reward={} error={} tries={}",
            v["result"]["trial_name"].as_str().unwrap(),
            v["result"]["reward"],
            v["result"]["error"]["type"].as_str().unwrap_or("none"),
            v["result"]["previous_tries"].as_array().map_or(0, Vec::len)
        ),
        "note" => format!("note {}: {}", s("trial"), s("message")),
        "job_finished" => format!(
            "job_finished trials={} not_started={} cancelled={}",
            v["result"]["n_total_trials"], v["result"]["n_not_started"], v["result"]["cancelled"]
        ),
        other => other.to_string(),
    }
}

fn kind(r: &TrialResult) -> Option<ErrorKind> {
    r.error.as_ref().map(|e| e.kind)
}

/// Every environment the fake created was destroyed through `destroy` (none left to the
/// job's label sweep, none leaked).
fn assert_all_destroyed(l: &Ledger) {
    assert!(
        l.leaked().is_empty(),
        "environments leaked: {:?}",
        l.leaked()
    );
    assert!(
        l.swept.is_empty(),
        "environments left for the sweep: {:?}",
        l.swept
    );
    assert_eq!(
        l.created.len(),
        l.destroyed.len(),
        "created {:?}, destroyed {:?}",
        l.created,
        l.destroyed
    );
}

const WORKER: &str = "agents:\n  - name: worker\n    execute: do-the-work\n";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(start_paused = true)]
async fn a_clean_trial_runs_every_phase_in_order() {
    let w = World::new();
    let plan = w.plan(WORKER, vec![task(w.path(), "hello")]);
    let job = w.run(plan).await;
    let r = w.trial(&job);
    assert_eq!(r.reward, Some(1.0));
    assert_eq!(r.error, None);
    let phases: Vec<Phase> = r.phases.keys().copied().collect();
    assert_eq!(
        phases,
        [
            Phase::EnvironmentSetup,
            Phase::AgentInstall,
            Phase::AgentRun,
            Phase::Verify,
            Phase::Collect,
            Phase::Teardown
        ]
    );
    let l = w.fake.ledger();
    assert_all_destroyed(&l);
    let roles: Vec<Role> = l.execs.iter().map(|e| e.role).collect();
    assert_eq!(
        roles,
        [Role::Mark, Role::Other, Role::EndAgent, Role::Verifier]
    );
    assert_eq!(l.execs[1].command, "do-the-work");
    assert_eq!(l.execs[1].timeout, secs(AGENT_TIMEOUT));
    assert_eq!(l.execs[3].timeout, secs(VERIFIER_TIMEOUT));
    insta::assert_snapshot!(w.event_lines());
}

#[tokio::test(start_paused = true)]
async fn the_setup_archive_brings_the_instruction_and_the_oracle_solution() {
    let w = World::new();
    let plan = w.plan("agents:\n  - name: oracle\n", vec![task(w.path(), "hello")]);
    let job = w.run(plan).await;
    assert_eq!(w.trial(&job).reward, Some(1.0));
    let l = w.fake.ledger();
    assert_eq!(l.uploads, 1);
    assert!(l
        .execs
        .iter()
        .any(|e| e.command.contains("bash /solution/solve.sh")));
    assert_all_destroyed(&l);
}

#[tokio::test(start_paused = true)]
async fn an_agent_failure_is_scored_anyway() {
    let w = World::new();
    w.fake.agent("do-the-work", [Act::exit(2).stderr("oops")]);
    w.fake.verifier([Act::reward_txt("0.25")]);
    let job = w.run(w.plan(WORKER, vec![task(w.path(), "t")])).await;
    let r = w.trial(&job);
    assert_eq!(kind(&r), Some(ErrorKind::AgentExecutionFailed));
    assert_eq!(r.reward, Some(0.25));
    assert_eq!(r.agent_run.as_ref().unwrap().exit_code, Some(2));
    let stderr = w
        .job_dir()
        .join(&r.trial_name)
        .join("agent/command-0/stderr.txt");
    assert_eq!(std::fs::read_to_string(stderr).unwrap(), "oops");
    assert_all_destroyed(&w.fake.ledger());
}

#[tokio::test(start_paused = true)]
async fn an_agent_past_its_timeout_is_agent_execution_timeout_and_still_verified() {
    let w = World::new();
    w.fake.agent("do-the-work", [Act::ok().after(secs(3600))]);
    let t0 = tokio::time::Instant::now();
    let job = w.run(w.plan(WORKER, vec![task(w.path(), "t")])).await;
    let r = w.trial(&job);
    assert_eq!(kind(&r), Some(ErrorKind::AgentExecutionTimeout));
    assert!(r.agent_run.as_ref().unwrap().timed_out);
    assert_eq!(r.reward, Some(1.0), "the verifier still ran");
    // The fake kills at the request's timeout: the whole trial took the agent's timeout.
    assert!(t0.elapsed() >= secs(AGENT_TIMEOUT) && t0.elapsed() < secs(AGENT_TIMEOUT + 60));
    assert_all_destroyed(&w.fake.ledger());
}

#[tokio::test(start_paused = true)]
async fn an_agent_whose_timeout_handling_hangs_is_stopped_by_the_runner_deadline() {
    let w = World::new();
    w.fake.agent("do-the-work", [Act::hang()]);
    let job = w.run(w.plan(WORKER, vec![task(w.path(), "t")])).await;
    let r = w.trial(&job);
    let e = r.error.clone().unwrap();
    assert_eq!(e.kind, ErrorKind::AgentExecutionTimeout);
    assert!(
        e.message.contains("the runner stopped waiting"),
        "{}",
        e.message
    );
    assert!(
        r.phases[&Phase::AgentRun].seconds < 5.0,
        "paused time: no wall time"
    );
    // The agent's processes are ended and the work verified, as after its own timeout.
    let l = w.fake.ledger();
    assert_eq!(l.execs_of(Role::EndAgent), 1);
    assert_eq!(r.reward, Some(1.0));
    assert_all_destroyed(&l);
    insta::assert_snapshot!(w.event_lines());
}

#[tokio::test(start_paused = true)]
async fn a_verifier_past_its_timeout_is_verifier_timeout() {
    let w = World::new();
    w.fake
        .verifier([Act::reward_txt("1").after(secs(VERIFIER_TIMEOUT * 10))]);
    let job = w.run(w.plan(WORKER, vec![task(w.path(), "t")])).await;
    let r = w.trial(&job);
    assert_eq!(kind(&r), Some(ErrorKind::VerifierTimeout));
    assert_eq!(r.reward, None);
    assert_all_destroyed(&w.fake.ledger());
}

#[tokio::test(start_paused = true)]
async fn a_verifier_that_hangs_is_stopped_by_the_runner_deadline() {
    let w = World::new();
    w.fake.verifier([Act::hang()]);
    let job = w.run(w.plan(WORKER, vec![task(w.path(), "t")])).await;
    let r = w.trial(&job);
    let e = r.error.clone().unwrap();
    assert_eq!(e.kind, ErrorKind::VerifierTimeout);
    assert!(
        e.message.contains("tests/test.sh did not return"),
        "{}",
        e.message
    );
    assert_all_destroyed(&w.fake.ledger());
}

#[tokio::test(start_paused = true)]
async fn install_failures_and_timeouts_stop_before_the_agent_runs() {
    let yaml = "agents:\n  - name: worker\n    install: set-me-up\n    execute: do-the-work\n";
    for (act, expected) in [
        (Act::exit(7), ErrorKind::AgentInstallFailed),
        (
            Act::ok().after(secs(INSTALL_TIMEOUT + 1)),
            ErrorKind::AgentInstallTimeout,
        ),
        (Act::hang(), ErrorKind::AgentInstallTimeout),
    ] {
        let w = World::new();
        w.fake.agent("set-me-up", [act]);
        let job = w.run(w.plan(yaml, vec![task(w.path(), "t")])).await;
        let r = w.trial(&job);
        assert_eq!(kind(&r), Some(expected));
        let l = w.fake.ledger();
        assert!(!l.execs.iter().any(|e| e.command == "do-the-work"));
        assert_eq!(l.execs_of(Role::Verifier), 0);
        assert_all_destroyed(&l);
    }
}

#[tokio::test(start_paused = true)]
async fn infrastructure_errors_are_retried_and_earlier_tries_kept() {
    let w = World::new();
    w.fake.on_create([
        Act::fail(EnvError::StartFailed("no space left on device".into())),
        Act::fail(EnvError::StartFailed("no space left on device".into())),
        Act::ok(),
    ]);
    let yaml = format!("{WORKER}retry:\n  max_retries: 2\n  min_wait_sec: 1\n  max_wait_sec: 1\n");
    let job = w.run(w.plan(&yaml, vec![task(w.path(), "t")])).await;
    let r = w.trial(&job);
    assert_eq!(r.error, None);
    assert_eq!(r.reward, Some(1.0));
    assert_eq!(r.previous_tries.len(), 2);
    for (i, t) in r.previous_tries.iter().enumerate() {
        assert_eq!(t.number, i as u32 + 1);
        assert_eq!(
            t.error.as_ref().unwrap().kind,
            ErrorKind::EnvironmentStartFailed
        );
        let kept = w
            .job_dir()
            .join(&r.trial_name)
            .join(&t.dir)
            .join("result.json");
        assert!(kept.is_file(), "{} missing", kept.display());
    }
    let l = w.fake.ledger();
    assert_eq!(l.create_calls, 3);
    assert_eq!(l.forget_failures, 2);
    assert_all_destroyed(&l);
    insta::assert_snapshot!(w.event_lines());
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_the_configured_number() {
    let w = World::new();
    w.fake
        .on_create([Act::fail(EnvError::EngineUnreachable("socket gone".into()))]);
    let yaml = format!("{WORKER}retry:\n  max_retries: 3\n  min_wait_sec: 1\n  max_wait_sec: 2\n");
    let job = w.run(w.plan(&yaml, vec![task(w.path(), "t")])).await;
    let r = w.trial(&job);
    assert_eq!(kind(&r), Some(ErrorKind::EnvironmentApiError));
    assert_eq!(r.previous_tries.len(), 3);
    assert_eq!(w.fake.ledger().create_calls, 4);
}

#[tokio::test(start_paused = true)]
async fn an_engine_error_during_the_agent_is_retried_in_a_new_environment() {
    let w = World::new();
    w.fake.agent(
        "do-the-work",
        [
            Act::fail(EnvError::Api {
                context: "exec".into(),
                message: "connection reset".into(),
            }),
            Act::ok(),
        ],
    );
    let yaml = format!("{WORKER}retry:\n  max_retries: 1\n  min_wait_sec: 1\n  max_wait_sec: 1\n");
    let job = w.run(w.plan(&yaml, vec![task(w.path(), "t")])).await;
    let r = w.trial(&job);
    assert_eq!(r.error, None);
    assert_eq!(r.previous_tries.len(), 1);
    assert_eq!(
        r.previous_tries[0].error.as_ref().unwrap().kind,
        ErrorKind::EnvironmentApiError
    );
    let l = w.fake.ledger();
    assert_eq!(l.created.len(), 2);
    assert_all_destroyed(&l);
}

#[tokio::test(start_paused = true)]
async fn agent_and_verifier_errors_are_not_retried() {
    for (agent, verifier, expected) in [
        (
            Act::exit(1),
            Act::reward_txt("0"),
            ErrorKind::AgentExecutionFailed,
        ),
        (Act::ok(), Act::ok(), ErrorKind::VerifierRewardMissing),
    ] {
        let w = World::new();
        w.fake.agent("do-the-work", [agent]);
        w.fake.verifier([verifier]);
        let yaml = format!("{WORKER}retry:\n  max_retries: 3\n");
        let job = w.run(w.plan(&yaml, vec![task(w.path(), "t")])).await;
        let r = w.trial(&job);
        assert_eq!(kind(&r), Some(expected));
        assert!(r.previous_tries.is_empty());
        assert_eq!(w.fake.ledger().create_calls, 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_build_never_creates_an_environment() {
    let w = World::new();
    w.fake.on_prepare([Act::fail(EnvError::BuildFailed {
        image: "rollout-fake:task".into(),
        message: "RUN exited 1".into(),
        log: "step 2/3: RUN false\n".into(),
    })]);
    let job = w.run(w.plan(WORKER, vec![task(w.path(), "t")])).await;
    let r = w.trial(&job);
    assert_eq!(kind(&r), Some(ErrorKind::EnvironmentBuildFailed));
    let log = w
        .job_dir()
        .join(&r.trial_name)
        .join("environment/build.log");
    assert_eq!(
        std::fs::read_to_string(log).unwrap(),
        "step 2/3: RUN false\n"
    );
    let l = w.fake.ledger();
    assert_eq!(l.create_calls, 0);
    assert!(!r.phases.contains_key(&Phase::Teardown));
}

#[tokio::test(start_paused = true)]
async fn a_failure_after_create_still_destroys_the_environment() {
    let w = World::new();
    w.fake.on_upload([Act::fail(EnvError::Api {
        context: "uploading".into(),
        message: "broken pipe".into(),
    })]);
    let job = w.run(w.plan(WORKER, vec![task(w.path(), "t")])).await;
    let r = w.trial(&job);
    assert_eq!(kind(&r), Some(ErrorKind::EnvironmentApiError));
    let l = w.fake.ledger();
    assert_eq!(l.created.len(), 1);
    assert_eq!(l.execs.len(), 0, "nothing ran in a half set-up environment");
    assert_all_destroyed(&l);
}

#[tokio::test(start_paused = true)]
async fn a_failed_teardown_is_reported_and_the_sweep_removes_the_container() {
    let w = World::new();
    w.fake.on_destroy([Act::fail(EnvError::Api {
        context: "removing".into(),
        message: "device busy".into(),
    })]);
    let job = w.run(w.plan(WORKER, vec![task(w.path(), "t")])).await;
    let r = w.trial(&job);
    assert_eq!(kind(&r), Some(ErrorKind::EnvironmentTeardownFailed));
    assert_eq!(r.reward, Some(1.0));
    let l = w.fake.ledger();
    assert!(l.leaked().is_empty());
    assert_eq!(l.swept.len(), 1, "the job's label sweep removed it");
}

#[tokio::test(start_paused = true)]
async fn an_invalid_task_fails_its_trials_alone_without_an_environment() {
    let w = World::new();
    let good = task(w.path(), "good");
    write(
        w.path(),
        "bad/task.toml",
        "[agent]\ntimeout_sec = \"soon\"\n",
    );
    write(w.path(), "bad/instruction.md", "x");
    let bad = Task::load_or_invalid(&w.path().join("bad")).unwrap();
    assert!(bad.invalid.is_some());
    let job = w.run(w.plan(WORKER, vec![good, bad])).await;
    assert_eq!(job.trials.len(), 2);
    assert_eq!(
        kind(&w.trial_named("bad__worker__1")),
        Some(ErrorKind::TaskInvalid)
    );
    assert_eq!(w.trial_named("good__worker__1").reward, Some(1.0));
    let l = w.fake.ledger();
    assert_eq!(l.create_calls, 1);
    assert_all_destroyed(&l);
}

#[tokio::test(start_paused = true)]
async fn cancelling_mid_agent_cancels_running_trials_and_removes_their_environments() {
    let w = World::new();
    w.fake.agent("do-the-work", [Act::hang()]);
    let yaml = format!("{WORKER}n_concurrent_trials: 2\n");
    let tasks = vec![
        task(w.path(), "a"),
        task(w.path(), "b"),
        task(w.path(), "c"),
    ];
    let plan = w.plan(&yaml, tasks);
    let runner = w.runner();
    let fake = w.fake.clone();
    let cancel = w.cancel.clone();
    let (job, ()) = tokio::join!(runner.run(plan), async move {
        fake.until(|l| l.running(Role::Other) == 2).await;
        cancel.cancel();
    });
    assert!(job.cancelled);
    assert_eq!(job.n_total_trials, 3);
    assert_eq!(job.n_not_started, 1);
    for name in ["a__worker__1", "b__worker__1"] {
        let r = w.trial_named(name);
        assert_eq!(kind(&r), Some(ErrorKind::Cancelled), "{name}");
        assert!(r.phases.contains_key(&Phase::Teardown), "{name}");
    }
    let l = w.fake.ledger();
    assert_eq!(l.created.len(), 2);
    assert_eq!(
        l.execs_of(Role::Verifier),
        0,
        "a cancelled trial is not verified"
    );
    assert_all_destroyed(&l);
    assert!(w
        .recorder
        .events()
        .iter()
        .any(|e| matches!(e, Event::Cancelling)));
}

#[tokio::test(start_paused = true)]
async fn a_job_cancelled_before_it_starts_creates_nothing() {
    let w = World::new();
    w.cancel.cancel();
    let job = w.run(w.plan(WORKER, vec![task(w.path(), "a")])).await;
    assert!(job.cancelled);
    assert_eq!(job.n_not_started, 1);
    assert_eq!(w.fake.ledger().create_calls, 0);
    insta::assert_snapshot!(w.event_lines());
}

#[tokio::test(start_paused = true)]
async fn concurrency_never_exceeds_the_limit() {
    let w = World::new();
    w.fake.agent("do-the-work", [Act::ok().after(secs(10))]);
    let yaml = format!("{WORKER}n_concurrent_trials: 2\nn_attempts: 6\n");
    let job = w.run(w.plan(&yaml, vec![task(w.path(), "t")])).await;
    assert_eq!(job.trials.len(), 6);
    assert!(job.trials.values().all(|r| *r == Some(1.0)));
    let l = w.fake.ledger();
    assert_eq!(l.max_live, 2, "two at a time, and the limit was reached");
    assert_eq!(l.created.len(), 6);
    assert_all_destroyed(&l);
}

#[tokio::test(start_paused = true)]
async fn a_paused_job_starts_no_trial_until_resumed() {
    let w = World::new();
    w.fake.agent("do-the-work", [Act::ok().after(secs(10))]);
    let yaml = format!("{WORKER}n_concurrent_trials: 1\n");
    let plan = w.plan(&yaml, vec![task(w.path(), "a"), task(w.path(), "b")]);
    let runner = w.runner();
    let pause = runner.pause_handle();
    let fake = w.fake.clone();
    let (job, ()) = tokio::join!(runner.run(plan), async move {
        fake.until(|l| l.running(Role::Other) == 1).await;
        pause.send_replace(true);
        // The running trial finishes while paused …
        fake.until(|l| l.destroyed.len() == 1).await;
        // … and, however long the pause lasts, the next one does not start.
        tokio::time::sleep(secs(3600)).await;
        assert_eq!(fake.ledger().create_calls, 1);
        pause.send_replace(false);
    });
    assert_eq!(job.trials.len(), 2);
    assert!(!job.cancelled);
    let l = w.fake.ledger();
    assert_eq!(l.created.len(), 2);
    assert_all_destroyed(&l);
    let lines = w.event_lines();
    let paused = lines.find("paused").unwrap();
    let resumed = lines.find("resumed").unwrap();
    let second = lines.find("trial_started b__worker__1").unwrap();
    assert!(paused < resumed && resumed < second, "{lines}");
}

#[tokio::test(start_paused = true)]
async fn resuming_keeps_finished_trials_and_reruns_the_rest() {
    let w = World::new();
    let tasks = || {
        vec![
            task(w.path(), "a"),
            task(w.path(), "b"),
            task(w.path(), "c"),
        ]
    };
    let first = w.plan(WORKER, tasks());
    let job_id = first.job_id.clone();
    let job = w.run(first).await;
    assert_eq!(job.trials.len(), 3);
    // b's run was interrupted (no result), c's was cancelled.
    std::fs::remove_file(w.job_dir().join("b__worker__1/result.json")).unwrap();
    let c = w.job_dir().join("c__worker__1/result.json");
    let mut cancelled: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&c).unwrap()).unwrap();
    cancelled["error"] =
        serde_json::json!({"type": "cancelled", "message": "cancelled during agent_run"});
    cancelled["reward"] = serde_json::Value::Null;
    cancelled["rewards"] = serde_json::Value::Null;
    std::fs::write(&c, cancelled.to_string()).unwrap();
    let before = w.fake.ledger().created.len();

    let resumed = JobPlan::resume(w.config(WORKER), tasks(), job_id, w.job_dir(), false).unwrap();
    assert_eq!(resumed.kept.len(), 1);
    let names: Vec<&str> = resumed.trials.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["b__worker__1", "c__worker__1"]);
    let w2 = World {
        root: tempfile::tempdir().unwrap(),
        fake: w.fake.clone(),
        cancel: CancellationToken::new(),
        recorder: Arc::default(),
        writer: Arc::default(),
    };
    let job = w2.run(resumed).await;
    assert_eq!(job.n_total_trials, 3);
    assert!(job.trials.values().all(|r| *r == Some(1.0)));
    let l = w.fake.ledger();
    assert_eq!(
        l.created.len() - before,
        2,
        "only the unfinished trials ran again"
    );
    assert_all_destroyed(&l);
}

#[tokio::test(start_paused = true)]
async fn rewards_are_read_from_reward_txt_or_reward_json() {
    let cases: [(Act, Option<f64>, Option<ErrorKind>); 5] = [
        (Act::reward_txt(" 0.5\n"), Some(0.5), None),
        (
            Act::reward_json(r#"{"reward": 0.75, "style": 1}"#),
            Some(0.75),
            None,
        ),
        (
            Act::exit(1).stderr("AssertionError: expected 4\n"),
            None,
            Some(ErrorKind::VerifierRewardMissing),
        ),
        (
            Act::reward_txt("perfect"),
            None,
            Some(ErrorKind::VerifierRewardInvalid),
        ),
        (
            Act::reward_txt(""),
            None,
            Some(ErrorKind::VerifierRewardInvalid),
        ),
    ];
    for (act, reward, error) in cases {
        let w = World::new();
        w.fake.verifier([act.clone()]);
        let job = w.run(w.plan(WORKER, vec![task(w.path(), "t")])).await;
        let r = w.trial(&job);
        assert_eq!((r.reward, kind(&r)), (reward, error), "{act:?}");
        if error == Some(ErrorKind::VerifierRewardMissing) {
            let m = &r.error.as_ref().unwrap().message;
            assert!(
                m.contains("exited with 1") && m.contains("AssertionError"),
                "{m}"
            );
        }
        assert_all_destroyed(&w.fake.ledger());
    }
}

#[tokio::test(start_paused = true)]
async fn a_reward_the_agent_planted_is_not_read() {
    let w = World::new();
    w.fake.agent(
        "do-the-work",
        [Act::ok().writes("/logs/verifier/reward.txt", "1")],
    );
    w.fake.verifier([Act::exit(1)]);
    let job = w.run(w.plan(WORKER, vec![task(w.path(), "t")])).await;
    let r = w.trial(&job);
    assert_eq!(kind(&r), Some(ErrorKind::VerifierRewardMissing));
    assert_eq!(r.reward, None);
}

#[tokio::test(start_paused = true)]
async fn the_verifier_is_skipped_when_disabled() {
    let w = World::new();
    let yaml = format!("{WORKER}verifier:\n  disable: true\n");
    let job = w.run(w.plan(&yaml, vec![task(w.path(), "t")])).await;
    let r = w.trial(&job);
    assert_eq!((r.reward, r.error.clone()), (None, None));
    let l = w.fake.ledger();
    assert_eq!(l.execs_of(Role::Verifier), 0);
    assert_all_destroyed(&l);
}

fn three_steps(parent: &Path) -> Task {
    let d = parent.join("steps-task");
    let toml = "[[steps]]\nname = \"one\"\nmin_reward = 1.0\n\n[[steps]]\nname = \"two\"\nmin_reward = 1.0\n\n[[steps]]\nname = \"three\"\n";
    for s in ["one", "two", "three"] {
        write(
            &d,
            &format!("steps/{s}/instruction.md"),
            &format!("step {s}\n"),
        );
        write(&d, &format!("steps/{s}/tests/test.sh"), "true\n");
    }
    task_with(parent, "steps-task", toml)
}

#[tokio::test(start_paused = true)]
async fn a_multi_step_task_runs_its_steps_in_one_environment() {
    let w = World::new();
    w.fake.verifier([
        Act::reward_txt("1"),
        Act::reward_txt("1"),
        Act::reward_txt("0.5"),
    ]);
    let job = w.run(w.plan(WORKER, vec![three_steps(w.path())])).await;
    let r = w.trial(&job);
    assert_eq!(r.step_results.len(), 3);
    let rewards: Vec<Option<f64>> = r.step_results.iter().map(|s| s.reward).collect();
    assert_eq!(rewards, [Some(1.0), Some(1.0), Some(0.5)]);
    let l = w.fake.ledger();
    assert_eq!(l.created.len(), 1);
    assert_eq!(l.execs_of(Role::Verifier), 3);
    assert_all_destroyed(&l);
    insta::assert_snapshot!(w.event_lines());
}

#[tokio::test(start_paused = true)]
async fn a_step_below_its_min_reward_stops_the_rest() {
    let w = World::new();
    w.fake.verifier([Act::reward_txt("0")]);
    let job = w.run(w.plan(WORKER, vec![three_steps(w.path())])).await;
    let r = w.trial(&job);
    assert_eq!(r.step_results.len(), 1);
    assert!(r.step_results[0].stopped.is_some());
    let l = w.fake.ledger();
    assert_eq!(l.execs_of(Role::Verifier), 1);
    assert_all_destroyed(&l);
}

#[tokio::test(start_paused = true)]
async fn preserved_environments_are_kept_and_not_swept() {
    let w = World::new();
    w.fake.verifier([Act::reward_txt("0")]);
    let yaml = format!("{WORKER}environment:\n  delete: false\n");
    let job = w.run(w.plan(&yaml, vec![task(w.path(), "t")])).await;
    let r = w.trial(&job);
    assert!(r.environment.preserved);
    let l = w.fake.ledger();
    assert_eq!(l.destroy_calls, 0);
    assert_eq!(l.leaked(), ["fake-1"]);
}

#[tokio::test(start_paused = true)]
async fn events_serialise_with_typed_error_kinds() {
    let w = World::new();
    w.fake.agent("do-the-work", [Act::hang()]);
    w.run(w.plan(WORKER, vec![task(w.path(), "t")])).await;
    let finished: Vec<serde_json::Value> = w
        .recorder
        .events()
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::PhaseFinished {
                    phase: Phase::AgentRun,
                    ..
                }
            )
        })
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["type"], "phase_finished");
    assert_eq!(finished[0]["phase"], "agent_run");
    assert_eq!(finished[0]["error"], "agent_execution_timeout");
    let Event::PhaseFinished { error, .. } = w
        .recorder
        .events()
        .into_iter()
        .find(|e| {
            matches!(
                e,
                Event::PhaseFinished {
                    phase: Phase::AgentRun,
                    ..
                }
            )
        })
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!(error, Some(ErrorKind::AgentExecutionTimeout));
}
