//! Running a contract: bootstrap, actions, the stages in order, repair attempts, teardown, and
//! the evidence of every command.

use crate::events::{PipelineEvent, Subscribers};
use crate::exec::{self, CmdSpec, RC_BLOCKED};
use crate::sandbox::{EnvChoice, Sandbox};
use crate::security::{is_secret_name, Blocked, Policy, Unattended};
use crate::spec::{
    confine, ActionKind, ActionsSpec, BootstrapSpec, PipelineSpec, Stage, StageName,
    TeardownPolicy, ACTIONS_FILE, ARTIFACTS_DIR, BOOTSTRAP_FILE, DEFAULT_CMD_SECONDS,
    PIPELINE_FILE, ROLLOUT_FILE, RUNTIME_ENV_FILE,
};
use crate::{verify, FileDigest, PipelineError, PipelineResult, RepoInfo};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// `--mode`: exported to the stages as `AIDER_FSM_MODE`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Smoke,
    Full,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Smoke => "smoke",
            Mode::Full => "full",
        }
    }
}

/// Something that may fix a failed stage by editing `.aider_fsm/` (the LLM agent).
#[async_trait::async_trait]
pub trait Repairer: Send + Sync {
    /// Try once; `dir` is this attempt's evidence directory. Returns the provenance report.
    async fn repair(
        &self,
        repo: &Path,
        failed: &StageResult,
        attempt: u32,
        dir: &Path,
    ) -> crate::assist::RepairReport;
}

/// How to run.
pub struct RunOptions {
    /// The run's id (default: a new one).
    pub run_id: Option<String>,
    /// The repository (a local directory).
    pub repo: PathBuf,
    /// Where it came from, when it was cloned.
    pub url: Option<String>,
    /// Its commit, when known (a clone); otherwise read from `.git` when present.
    pub commit: Option<String>,
    /// `--stages` (selectors: auth, tests, deploy, rollout, evaluation, benchmark); None: all.
    pub stages: Option<Vec<String>>,
    pub mode: Mode,
    /// The evidence directory of this run; default `<repo>/<artifacts.out_dir>/<run_id>`.
    pub artifacts: Option<PathBuf>,
    pub unattended: Unattended,
    /// Exported as `AIDER_LLM_MODEL` and `ROLLOUT_MODEL`.
    pub model: Option<String>,
    pub repair_iters: u32,
    pub repairer: Option<Box<dyn Repairer>>,
    /// Bytes kept of each command's stdout and stderr.
    pub output_cap: usize,
    /// Where the stages run (`--env`).
    pub environment: EnvChoice,
    /// Who hears the run's events (progress, logs, streaming).
    pub subscribers: Subscribers,
    /// Rollout must leave at least one valid sample (`--require-samples`, default true).
    pub require_samples: bool,
}

impl RunOptions {
    pub fn new(repo: PathBuf) -> Self {
        Self {
            run_id: None,
            repo,
            url: None,
            commit: None,
            stages: None,
            mode: Mode::Smoke,
            artifacts: None,
            unattended: Unattended::Strict,
            model: None,
            repair_iters: 0,
            repairer: None,
            output_cap: exec::DEFAULT_OUTPUT_CAP,
            environment: EnvChoice::Local,
            subscribers: Subscribers::default(),
            require_samples: true,
        }
    }
}

/// How a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Passed,
    Failed,
    Skipped,
}

/// One try of one command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptRecord {
    #[serde(rename = "try")]
    pub attempt: u32,
    pub rc: i32,
    pub timed_out: bool,
    pub cancelled: bool,
    pub duration_seconds: f64,
    pub timeout_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<BlockedRecord>,
    /// Evidence files' common prefix (`<stage>_cmdNN_tryNN`).
    pub evidence: String,
}

/// [`Blocked`], as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockedRecord {
    pub rule: String,
    pub pattern: String,
    pub location: String,
    pub text: String,
}

impl From<&Blocked> for BlockedRecord {
    fn from(b: &Blocked) -> Self {
        Self {
            rule: b.rule.clone(),
            pattern: b.pattern.clone(),
            location: b.location.clone(),
            text: b.text.clone(),
        }
    }
}

/// One command of a stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandRecord {
    pub index: usize,
    pub cmd: String,
    pub rc: i32,
    pub attempts: Vec<AttemptRecord>,
}

/// One stage (`<stage>_summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageResult {
    pub stage: String,
    pub status: StageStatus,
    /// Why it failed or was skipped (`evaluation.missing_keys: …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub commands: Vec<CommandRecord>,
    /// What verification found (runtime env, samples count, metrics).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<Value>,
    pub duration_seconds: f64,
    /// Which run of the stage this is (1, then 2… after repairs).
    pub round: u32,
}

impl StageResult {
    fn skipped(name: StageName, why: &str) -> Self {
        Self {
            stage: name.as_str().into(),
            status: StageStatus::Skipped,
            reason: Some(why.into()),
            commands: Vec::new(),
            verification: None,
            duration_seconds: 0.0,
            round: 1,
        }
    }
}

/// `${VAR}`, `${VAR:-default}` and `$VAR` from `lookup`; `$$` is a literal `$`.
pub fn expand(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut missing = Vec::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if after.starts_with('$') || after.starts_with('{') || name_len == 0 {
            // Delegate `$$`, `${…}` and a lone `$` to the shared expander.
            let end = if after.starts_with('$') {
                1
            } else if after.starts_with('{') {
                after.find('}').map_or(0, |e| e + 1)
            } else {
                0
            };
            out.push_str(&rollout_core::envvars::expand(
                &rest[i..i + 1 + end],
                lookup,
                &mut missing,
            ));
            rest = &after[end..];
        } else {
            out.push_str(&lookup(&after[..name_len]).unwrap_or_default());
            rest = &after[name_len..];
        }
    }
    out.push_str(rest);
    out
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A new run id: `YYYYMMDDTHHMMSSZ-xxxxxxxx`.
pub fn new_run_id() -> String {
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// BLAKE3 of a file.
pub fn digest(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|b| blake3::hash(&b).to_hex().to_string())
}

/// The contract files as they were when the run started: pipeline.yml, bootstrap/actions and
/// every file under `.aider_fsm/` except run outputs and artifacts.
pub fn contract_files(repo: &Path) -> Vec<FileDigest> {
    let mut out = Vec::new();
    let mut push = |rel: &str| {
        let p = repo.join(rel);
        if let (Ok(m), Some(h)) = (std::fs::metadata(&p), digest(&p)) {
            out.push(FileDigest {
                path: rel.to_string(),
                blake3: h,
                bytes: m.len(),
            });
        }
    };
    push(PIPELINE_FILE);
    let mut files = Vec::new();
    crate::assist::walk(&repo.join(crate::spec::FSM_DIR), repo, &mut files);
    files.sort();
    for rel in files {
        if crate::assist::is_run_output(&rel) {
            continue;
        }
        push(&rel);
    }
    out
}

fn git_commit(repo: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && s.len() == 40).then_some(s)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), PipelineError> {
    std::fs::write(path, bytes).map_err(|e| PipelineError::Io {
        context: format!("writing evidence {}", path.display()),
        message: e.to_string(),
    })
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<(), PipelineError> {
    let tmp = path.with_extension("json.tmp");
    write(&tmp, &serde_json::to_vec_pretty(v).unwrap_or_default())?;
    std::fs::rename(&tmp, path).map_err(|e| PipelineError::Io {
        context: format!("writing evidence {}", path.display()),
        message: e.to_string(),
    })
}

/// Everything the stages share.
struct Ctx<'a> {
    repo: PathBuf,
    run_id: String,
    artifacts: PathBuf,
    policy: Policy,
    spec: &'a PipelineSpec,
    /// Bootstrap's env, applied to every later stage.
    base_env: BTreeMap<String, String>,
    opts: &'a RunOptions,
    output_cap: usize,
    sandbox: &'a Sandbox,
    /// What deploy's runtime_env.json says (exported to later stages).
    runtime: RuntimeHints,
}

/// The seed's use of `runtime_env.json`: `inference.openai_base_url` (or `inference.base_url`),
/// `inference.model` and `service.base_url`, read after deploy setup passed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeHints {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inference_base_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inference_model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_base_url: Option<String>,
}

impl RuntimeHints {
    /// From a runtime_env.json object.
    pub fn from_runtime_env(v: &Value) -> Self {
        let s = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        Self {
            inference_base_url: s("/inference/openai_base_url")
                .or_else(|| s("/inference/base_url")),
            inference_model: s("/inference/model"),
            service_base_url: s("/service/base_url"),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Ctx<'_> {
    fn host_lookup(&self) -> impl Fn(&str) -> Option<String> + '_ {
        |k: &str| {
            self.base_env
                .get(k)
                .cloned()
                .or_else(|| std::env::var(k).ok())
        }
    }

    /// The variables a stage's commands get on top of the inherited environment, and the
    /// section's own (for the evidence, secrets redacted).
    fn stage_env(&self, stage: &Stage) -> (Vec<(String, String)>, BTreeMap<String, String>) {
        let mut vars: BTreeMap<String, String> = self.base_env.clone();
        let lookup = self.host_lookup();
        let mut own = BTreeMap::new();
        for (k, v) in &stage.env {
            let x = expand(v, &lookup);
            own.insert(k.clone(), x.clone());
            vars.insert(k.clone(), x);
        }
        let abs = |p: &Path| p.display().to_string();
        vars.insert("AIDER_FSM_STAGE".into(), stage.name.as_str().into());
        vars.insert("AIDER_FSM_ARTIFACTS_DIR".into(), abs(&self.artifacts));
        vars.insert("AIDER_FSM_REPO_ROOT".into(), abs(&self.repo));
        vars.insert("AIDER_FSM_RUN_ID".into(), self.run_id.clone());
        vars.insert("AIDER_FSM_MODE".into(), self.opts.mode.as_str().into());
        vars.insert(
            "AIDER_RUNTIME_ENV_PATH".into(),
            abs(&self.repo.join(RUNTIME_ENV_FILE)),
        );
        let model = self
            .opts
            .model
            .clone()
            .or_else(|| self.runtime.inference_model.clone());
        if let Some(m) = model {
            vars.insert("AIDER_LLM_MODEL".into(), m.clone());
            vars.insert("ROLLOUT_MODEL".into(), m);
        }
        let rt = &self.runtime;
        if let Some(u) = &rt.inference_base_url {
            vars.insert("AIDER_FSM_INFERENCE_BASE_URL".into(), u.clone());
            // The endpoint deploy started, unless the user named one.
            let named = ["OPENAI_BASE_URL", "OPENAI_API_BASE"]
                .iter()
                .any(|k| lookup(k).is_some_and(|v| !v.is_empty()));
            if !named {
                vars.insert("OPENAI_BASE_URL".into(), u.clone());
                vars.insert("OPENAI_API_BASE".into(), u.clone());
            }
        }
        if let Some(m) = &rt.inference_model {
            vars.insert("AIDER_FSM_INFERENCE_MODEL".into(), m.clone());
        }
        if let Some(u) = &rt.service_base_url {
            vars.insert("AIDER_FSM_SERVICE_BASE_URL".into(), u.clone());
        }
        // A container inherits nothing from the host: pass the switches the runner reads.
        if !self.sandbox.is_host() {
            for k in ["AIDER_FSM_REQUIRE_HINTS"] {
                if let Some(v) = lookup(k) {
                    vars.entry(k.into()).or_insert(v);
                }
            }
        }
        if self.policy.unattended == Unattended::Strict {
            for (k, v) in [
                ("CI", "1"),
                ("GIT_TERMINAL_PROMPT", "0"),
                ("DEBIAN_FRONTEND", "noninteractive"),
                ("PIP_NO_INPUT", "1"),
            ] {
                vars.entry(k.into()).or_insert_with(|| v.into());
            }
        }
        (vars.into_iter().collect(), own)
    }

    /// Secret values (by variable name) to scrub from evidence, longest first.
    fn secrets(&self, env: &[(String, String)]) -> Vec<String> {
        let mut s: Vec<String> = std::env::vars()
            .chain(env.iter().cloned())
            .filter(|(k, v)| is_secret_name(k) && v.len() >= 6)
            .map(|(_, v)| v)
            .collect();
        s.sort_by_key(|v| std::cmp::Reverse(v.len()));
        s.dedup();
        s
    }

    fn cmd_timeout(&self, stage: &Stage, own: Option<f64>, stage_started: Instant) -> f64 {
        let mut t = [
            own,
            stage.timeout_seconds,
            self.spec.security.max_cmd_seconds,
        ]
        .into_iter()
        .flatten()
        .filter(|t| *t > 0.0)
        .fold(f64::INFINITY, f64::min);
        if !t.is_finite() {
            t = DEFAULT_CMD_SECONDS;
        }
        if let Some(total) = self.spec.security.max_total_seconds {
            let left = total - stage_started.elapsed().as_secs_f64();
            t = t.min(left.max(0.001));
        }
        t
    }
}

fn redact(text: &[u8], secrets: &[String]) -> Vec<u8> {
    if secrets.is_empty() {
        return text.to_vec();
    }
    let mut s = String::from_utf8_lossy(text).into_owned();
    for v in secrets {
        s = s.replace(v.as_str(), "***");
    }
    s.into_bytes()
}

/// Run one stage's commands (with retries) and write their evidence; no verification.
async fn run_commands(
    ctx: &Ctx<'_>,
    stage: &Stage,
    round: u32,
    index_base: usize,
    cancel: &CancellationToken,
) -> Result<(Vec<CommandRecord>, Option<String>), PipelineError> {
    let started = Instant::now();
    let name = stage.name.as_str();
    let workdir = match &stage.workdir {
        Some(w) => match confine(&ctx.repo, w) {
            Ok(p) => p,
            Err(e) => {
                return Ok((
                    Vec::new(),
                    Some(format!("{name}.workdir_outside_repo: {e}")),
                ))
            }
        },
        None => ctx.repo.clone(),
    };
    if !workdir.is_dir() {
        return Ok((
            Vec::new(),
            Some(format!(
                "{name}.workdir_missing: {} is not a directory",
                workdir.display()
            )),
        ));
    }
    let (env, own_env) = ctx.stage_env(stage);
    let secrets = ctx.secrets(&env);
    let shown_env: BTreeMap<&String, &str> = own_env
        .iter()
        .map(|(k, v)| (k, if is_secret_name(k) { "***" } else { v.as_str() }))
        .collect();
    let suffix = if round > 1 {
        format!("_round{round:02}")
    } else {
        String::new()
    };
    let mut records = Vec::new();
    for (i, c) in stage.cmds.iter().enumerate() {
        let i = i + index_base;
        let mut rec = CommandRecord {
            index: i + 1,
            cmd: c.cmd.clone(),
            rc: 0,
            attempts: Vec::new(),
        };
        let mut failure = None;
        for attempt in 1..=c.retries + 1 {
            let prefix = format!("{name}{suffix}_cmd{:02}_try{attempt:02}", i + 1);
            let file = |what: &str| ctx.artifacts.join(format!("{prefix}_{what}"));
            write(&file("cmd.txt"), &redact(c.cmd.as_bytes(), &secrets))?;
            let timeout = ctx.cmd_timeout(stage, c.timeout_seconds, started);
            let blocked = ctx.policy.check(&c.cmd, &workdir, stage.interactive).err();
            let out = match &blocked {
                Some(_) => exec::CmdOutput {
                    rc: RC_BLOCKED,
                    ..Default::default()
                },
                None if cancel.is_cancelled() => exec::CmdOutput {
                    rc: exec::RC_CANCELLED,
                    cancelled: true,
                    ..Default::default()
                },
                None => ctx
                    .sandbox
                    .run(
                        &CmdSpec {
                            cmd: &c.cmd,
                            workdir: &workdir,
                            env: &env,
                            timeout: Duration::from_secs_f64(timeout),
                            inherit_stdin: stage.interactive
                                && ctx.policy.unattended == Unattended::Guided,
                            output_cap: ctx.output_cap,
                        },
                        cancel,
                    )
                    .await
                    .map_err(|e| PipelineError::Io {
                        context: format!(
                            "starting `bash -c` for {name} command {} ({} environment)",
                            i + 1,
                            ctx.sandbox.provider()
                        ),
                        message: format!("{e}; is bash installed there?"),
                    })?,
            };
            let mut stderr = redact(&out.stderr, &secrets);
            if let Some(b) = &blocked {
                stderr = format!("rollout: {b}\n").into_bytes();
            }
            write(&file("stdout.txt"), &redact(&out.stdout, &secrets))?;
            write(&file("stderr.txt"), &stderr)?;
            write_json(
                &file("result.json"),
                &json!({
                    "stage": name, "cmd_index": i + 1, "try": attempt, "round": round,
                    "cmd": String::from_utf8_lossy(&redact(c.cmd.as_bytes(), &secrets)),
                    "workdir": workdir, "rc": out.rc, "timed_out": out.timed_out,
                    "cancelled": out.cancelled, "duration_seconds": out.seconds,
                    "timeout_seconds": timeout,
                    "blocked": blocked.as_ref().map(BlockedRecord::from),
                    "stdout_bytes": out.stdout_bytes, "stderr_bytes": out.stderr_bytes,
                    "stdout_truncated": out.stdout_bytes > out.stdout.len() as u64,
                    "stderr_truncated": out.stderr_bytes > out.stderr.len() as u64,
                    "env": shown_env,
                }),
            )?;
            rec.rc = out.rc;
            let attempt_record = AttemptRecord {
                attempt,
                rc: out.rc,
                timed_out: out.timed_out,
                cancelled: out.cancelled,
                duration_seconds: out.seconds,
                timeout_seconds: timeout,
                blocked: blocked.as_ref().map(BlockedRecord::from),
                evidence: prefix,
            };
            ctx.opts.subscribers.emit(PipelineEvent::CommandFinished {
                stage: name.to_string(),
                round,
                index: i + 1,
                cmd: String::from_utf8_lossy(&redact(c.cmd.as_bytes(), &secrets)).into_owned(),
                attempt: attempt_record.clone(),
            });
            rec.attempts.push(attempt_record);
            let short: String = c.cmd.chars().take(120).collect();
            failure = if let Some(b) = &blocked {
                Some(format!("{name}.blocked: command {} {b}", i + 1))
            } else if out.cancelled {
                Some(format!(
                    "{name}.cancelled: command {} `{short}` was stopped (Ctrl-C / SIGTERM)",
                    i + 1
                ))
            } else if out.output_limit_exceeded {
                Some(format!(
                    "{name}.output_limit: command {} `{short}` was killed after writing more than {} bytes",
                    i + 1,
                    exec::MAX_OUTPUT
                ))
            } else if out.timed_out {
                Some(format!(
                    "{name}.timeout: command {} `{short}` was killed after {timeout} s (rc 124)",
                    i + 1
                ))
            } else if out.rc != 0 {
                Some(format!(
                    "{name}.command_failed: command {} `{short}` exited {}",
                    i + 1,
                    out.rc
                ))
            } else {
                None
            };
            // A blocked or cancelled command is not retried: it would end the same way.
            if failure.is_none() || blocked.is_some() || out.cancelled {
                break;
            }
        }
        records.push(rec);
        if failure.is_some() {
            return Ok((records, failure));
        }
    }
    Ok((records, None))
}

/// Move a previous run's output aside (into the evidence) so that a stale file cannot pass.
fn set_aside(ctx: &Ctx<'_>, stage: StageName, rel: &str) -> Option<String> {
    let p = ctx.repo.join(rel);
    if !p.is_file() {
        return None;
    }
    let name = Path::new(rel).file_name()?.to_string_lossy().into_owned();
    let dest = ctx.artifacts.join(format!("{stage}_previous_{name}"));
    if std::fs::rename(&p, &dest).is_err() {
        std::fs::copy(&p, &dest).ok()?;
        std::fs::remove_file(&p).ok()?;
    }
    Some(dest.display().to_string())
}

/// Run a stage and verify what it must leave behind.
async fn run_stage(
    ctx: &Ctx<'_>,
    stage: &Stage,
    round: u32,
    cancel: &CancellationToken,
) -> Result<StageResult, PipelineError> {
    let t0 = Instant::now();
    let outputs: Vec<String> = match stage.name {
        StageName::DeploySetup => vec![RUNTIME_ENV_FILE.into()],
        StageName::Rollout => vec![ROLLOUT_FILE.into()],
        StageName::Evaluation | StageName::Benchmark => {
            stage.metrics_path.iter().cloned().collect()
        }
        _ => Vec::new(),
    };
    ctx.opts.subscribers.emit(PipelineEvent::StageStarted {
        stage: stage.name.as_str().into(),
        round,
    });
    let set_aside: Vec<String> = outputs
        .iter()
        .filter_map(|o| set_aside(ctx, stage.name, o))
        .collect();
    if !ctx.sandbox.is_host() {
        for o in &outputs {
            if confine(&ctx.repo, o).is_ok() {
                ctx.sandbox.remove(&ctx.repo.join(o)).await;
            }
        }
    }
    let (commands, mut reason) = run_commands(ctx, stage, round, 0, cancel).await?;
    let mut verification = None;
    if reason.is_none() {
        if let Err(e) = pull_outputs(ctx, stage).await {
            reason = Some(format!("{}.copy_out: {e}", stage.name));
        }
    }
    if reason.is_none() {
        let checked = match stage.name {
            StageName::DeploySetup => {
                verify::runtime_env(&ctx.repo).map(|v| json!({"runtime_env": v}))
            }
            StageName::Rollout => {
                verify::rollout(&ctx.repo, ctx.opts.require_samples).map(|r| json!(r))
            }
            StageName::Evaluation | StageName::Benchmark => {
                let rel = stage.metrics_path.as_deref().unwrap_or_default();
                match confine(&ctx.repo, rel) {
                    Err(e) => Err(format!("{}.metrics_path_outside_repo: {e}", stage.name)),
                    Ok(_) => {
                        verify::metrics(stage.name.as_str(), &ctx.repo, rel, &stage.required_keys)
                            .map(|m| json!({"metrics_path": rel, "metrics": m}))
                            .and_then(|mut v| {
                                if stage.name == StageName::Evaluation {
                                    hints_audit(ctx, &mut v)?;
                                }
                                Ok(v)
                            })
                    }
                }
            }
            _ => Ok(Value::Null),
        };
        match checked {
            Ok(Value::Null) => {}
            Ok(mut v) => {
                if !set_aside.is_empty() {
                    v["previous_outputs_set_aside"] = json!(set_aside);
                }
                verification = Some(v);
            }
            Err(r) => reason = Some(r),
        }
    }
    let res = StageResult {
        stage: stage.name.as_str().into(),
        status: if reason.is_some() {
            StageStatus::Failed
        } else {
            StageStatus::Passed
        },
        reason,
        commands,
        verification,
        duration_seconds: t0.elapsed().as_secs_f64(),
        round,
    };
    let suffix = if round > 1 {
        format!("_round{round:02}")
    } else {
        String::new()
    };
    write_json(
        &ctx.artifacts
            .join(format!("{}{suffix}_summary.json", stage.name)),
        &res,
    )?;
    ctx.opts.subscribers.emit(PipelineEvent::StageFinished {
        result: res.clone(),
    });
    Ok(res)
}

/// In a container: copy back the files this stage's verification reads.
async fn pull_outputs(ctx: &Ctx<'_>, stage: &Stage) -> Result<(), String> {
    if ctx.sandbox.is_host() {
        return Ok(());
    }
    let sb = ctx.sandbox;
    match stage.name {
        StageName::DeploySetup => sb.pull(&ctx.repo, RUNTIME_ENV_FILE).await,
        StageName::Rollout => {
            sb.pull(&ctx.repo, ROLLOUT_FILE).await?;
            let named = std::fs::read_to_string(ctx.repo.join(ROLLOUT_FILE))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| {
                    v.pointer("/paths/samples_jsonl")
                        .and_then(Value::as_str)
                        .map(String::from)
                });
            match named {
                Some(rel) if !rel.is_empty() => sb.pull(&ctx.repo, &rel).await,
                _ => Ok(()),
            }
        }
        StageName::Evaluation | StageName::Benchmark => {
            if let Some(rel) = &stage.metrics_path {
                sb.pull(&ctx.repo, rel).await?;
            }
            if stage.name == StageName::Evaluation {
                sb.pull(&ctx.repo, verify::HINTS_USED_FILE).await?;
                sb.pull(&ctx.repo, verify::HINTS_RUN_FILE).await?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The hints audit of evaluation: with `AIDER_FSM_REQUIRE_HINTS=1` a `hints_used.json` showing a
/// hint that ran is required; `hints_used.json` and `hints_run.json`, when present, are kept in
/// the evidence and named in the verification.
fn hints_audit(ctx: &Ctx<'_>, v: &mut Value) -> Result<(), String> {
    let required = ctx.host_lookup()("AIDER_FSM_REQUIRE_HINTS").as_deref() == Some("1");
    for (rel, key) in [
        (verify::HINTS_USED_FILE, "hints_used"),
        (verify::HINTS_RUN_FILE, "hints_run"),
    ] {
        let p = ctx.repo.join(rel);
        if p.is_file() {
            let dest = ctx.artifacts.join(format!("evaluation_{key}.json"));
            let _ = std::fs::copy(&p, &dest);
            v[key] = json!(dest);
        }
    }
    if required {
        let used = verify::hints_used(&ctx.repo)?;
        v["hints_required"] = json!(true);
        v["hints"] = used;
    }
    Ok(())
}

/// Apply `.aider_fsm/actions.yml`: each action in order (commands under the policy, files
/// confined to the repository), then remove the file.
async fn run_actions(
    ctx: &Ctx<'_>,
    actions: &ActionsSpec,
    cancel: &CancellationToken,
) -> Result<StageResult, PipelineError> {
    let t0 = Instant::now();
    ctx.opts.subscribers.emit(PipelineEvent::StageStarted {
        stage: "actions".into(),
        round: 1,
    });
    let src = ctx.repo.join(ACTIONS_FILE);
    let _ = std::fs::copy(&src, ctx.artifacts.join("actions.yml"));
    let mut commands = Vec::new();
    let mut reason = None;
    let mut log = Vec::new();
    for (i, a) in actions.actions.iter().enumerate() {
        let id = a.id.clone().unwrap_or_else(|| format!("action{}", i + 1));
        match a.kind {
            ActionKind::WriteFile => {
                let rel = a.path.as_deref().unwrap_or_default();
                let content = a.content.as_deref().unwrap_or_default();
                let mut r = confine(&ctx.repo, rel).and_then(|p| {
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                    }
                    std::fs::write(&p, content).map_err(|e| e.to_string())?;
                    Ok(p)
                });
                if let Ok(p) = &r {
                    if let Err(e) = ctx.sandbox.write_file(p, content.as_bytes()).await {
                        r = Err(e);
                    }
                }
                log.push(json!({"id": id, "kind": "write_file", "path": rel, "ok": r.is_ok(), "error": r.as_ref().err()}));
                if let Err(e) = r {
                    reason = Some(format!("actions.write_failed: {id}: {e}"));
                    break;
                }
            }
            ActionKind::RunCmd => {
                let stage = Stage {
                    name: StageName::Actions,
                    cmds: vec![crate::spec::StageCmd {
                        cmd: a.cmd.clone().unwrap_or_default(),
                        timeout_seconds: a.timeout_seconds,
                        retries: a.retries.unwrap_or(0),
                    }],
                    timeout_seconds: None,
                    env: BTreeMap::new(),
                    workdir: None,
                    interactive: false,
                    metrics_path: None,
                    required_keys: Vec::new(),
                };
                let (recs, fail) = run_commands(ctx, &stage, 1, i, cancel).await?;
                log.push(json!({"id": id, "kind": "run_cmd", "ok": fail.is_none(), "risk_level": a.risk_level, "rationale": a.rationale}));
                commands.extend(recs);
                if let Some(f) = fail {
                    reason = Some(format!("{f} (action {id})"));
                    break;
                }
            }
        }
    }
    let removed = std::fs::remove_file(&src).is_ok();
    let res = StageResult {
        stage: "actions".into(),
        status: if reason.is_some() {
            StageStatus::Failed
        } else {
            StageStatus::Passed
        },
        reason,
        commands,
        verification: Some(json!({"actions": log, "actions_file_removed": removed})),
        duration_seconds: t0.elapsed().as_secs_f64(),
        round: 1,
    };
    write_json(&ctx.artifacts.join("actions_summary.json"), &res)?;
    ctx.opts.subscribers.emit(PipelineEvent::StageFinished {
        result: res.clone(),
    });
    Ok(res)
}

/// Check `--stages` against the contract.
pub fn select(
    spec: &PipelineSpec,
    wanted: &Option<Vec<String>>,
) -> Result<Vec<Stage>, PipelineError> {
    let all = spec.stages();
    let Some(wanted) = wanted else {
        return Ok(all);
    };
    for w in wanted {
        if !StageName::SELECTABLE.contains(&w.as_str()) {
            return Err(PipelineError::Usage(format!(
                "--stages: unknown stage {w:?}; choose from {}",
                StageName::SELECTABLE.join(", ")
            )));
        }
        if !all.iter().any(|s| s.name.selector() == w) {
            return Err(PipelineError::Usage(format!(
                "--stages: pipeline.yml has no `{w}` section"
            )));
        }
    }
    Ok(all
        .into_iter()
        .filter(|s| wanted.iter().any(|w| w == s.name.selector()))
        .collect())
}

/// Run the contract of `opts.repo`. `cancel` stops the stages (teardown still runs); `abort`
/// also stops teardown.
pub async fn run(
    opts: &RunOptions,
    cancel: &CancellationToken,
    abort: &CancellationToken,
) -> Result<PipelineResult, PipelineError> {
    let started_at = now();
    let t0 = Instant::now();
    let repo = opts.repo.canonicalize().map_err(|e| {
        PipelineError::Usage(format!("{}: not a directory: {e}", opts.repo.display()))
    })?;
    let spec = PipelineSpec::load(&repo)?;
    let problems = crate::validate::static_problems(&repo, &spec);
    if let Some(p) = problems.first() {
        return Err(PipelineError::Contract(p.clone()));
    }
    let bootstrap = BootstrapSpec::load(&repo)?;
    let actions = ActionsSpec::load(&repo)?;
    let stages = select(&spec, &opts.stages)?;
    // The policy compiles before anything is created.
    Policy::new(&spec.security, opts.unattended).map_err(PipelineError::Contract)?;
    let run_id = opts.run_id.clone().unwrap_or_else(new_run_id);
    let artifacts = match &opts.artifacts {
        Some(a) => a.clone(),
        None => {
            let out = spec.artifacts.out_dir.as_deref().unwrap_or(ARTIFACTS_DIR);
            confine(&repo, out)
                .map_err(|e| PipelineError::Contract(format!("artifacts.out_dir: {e}")))?
                .join(&run_id)
        }
    };
    std::fs::create_dir_all(&artifacts).map_err(|e| PipelineError::Io {
        context: format!("creating the evidence directory {}", artifacts.display()),
        message: e.to_string(),
    })?;
    let artifacts = artifacts.canonicalize().unwrap_or(artifacts);
    let contract = contract_files(&repo);
    let _ = std::fs::copy(repo.join(PIPELINE_FILE), artifacts.join("pipeline.yml"));
    if matches!(opts.environment, EnvChoice::Docker(_))
        && opts.unattended == Unattended::Guided
        && stages.iter().any(|s| s.interactive)
    {
        return Err(PipelineError::Usage(
            "--unattended guided gives interactive commands this terminal, which a container does not have: run them with --env local".into(),
        ));
    }
    let sandbox = Sandbox::open(&opts.environment, &repo, &artifacts, &run_id).await?;
    let outcome = run_in(
        opts,
        cancel,
        abort,
        &sandbox,
        &spec,
        stages,
        bootstrap,
        actions,
        repo,
        run_id,
        artifacts.clone(),
        contract,
        started_at,
        t0,
    )
    .await;
    // The container goes on every path (a failed run, an error, Ctrl-C).
    let info = sandbox.close().await;
    let mut result = outcome?;
    result.environment = Some(info);
    write_json(&artifacts.join("pipeline_result.json"), &result)?;
    opts.subscribers.emit(PipelineEvent::RunFinished {
        run_id: result.run_id.clone(),
        ok: result.ok,
        cancelled: result.cancelled,
        failed_stage: result.failed_stage.clone(),
        failure: result.failure.clone(),
    });
    Ok(result)
}

#[allow(clippy::too_many_arguments)]
async fn run_in(
    opts: &RunOptions,
    cancel: &CancellationToken,
    abort: &CancellationToken,
    sandbox: &Sandbox,
    spec: &PipelineSpec,
    stages: Vec<Stage>,
    bootstrap: Option<BootstrapSpec>,
    actions: Option<ActionsSpec>,
    repo: PathBuf,
    run_id: String,
    artifacts: PathBuf,
    contract: Vec<FileDigest>,
    started_at: String,
    t0: Instant,
) -> Result<PipelineResult, PipelineError> {
    let policy = Policy::new(&spec.security, opts.unattended).map_err(PipelineError::Contract)?;
    opts.subscribers.emit(PipelineEvent::RunStarted {
        run_id: run_id.clone(),
        repo: repo.clone(),
        artifacts_dir: artifacts.clone(),
        environment: sandbox.provider().into(),
        stages: stages.iter().map(|s| s.name.as_str().to_string()).collect(),
    });
    let mut ctx = Ctx {
        repo: repo.clone(),
        run_id: run_id.clone(),
        artifacts: artifacts.clone(),
        policy,
        spec,
        base_env: BTreeMap::new(),
        opts,
        output_cap: opts.output_cap,
        sandbox,
        runtime: RuntimeHints::default(),
    };
    let mut result = PipelineResult {
        schema_version: "1.0".into(),
        run_id,
        ok: false,
        cancelled: false,
        repo: RepoInfo {
            path: repo.clone(),
            url: opts.url.clone(),
            commit: opts.commit.clone().or_else(|| git_commit(&repo)),
        },
        mode: opts.mode,
        unattended: opts.unattended,
        contract_files: contract,
        artifacts_dir: artifacts.clone(),
        stages: Vec::new(),
        teardown: None,
        failed_stage: None,
        failure: None,
        runtime_env_path: None,
        rollout_path: None,
        samples_path: None,
        samples: None,
        metrics_path: None,
        metrics: None,
        repairs: Vec::new(),
        runtime: None,
        environment: None,
        started_at,
        finished_at: String::new(),
        duration_seconds: 0.0,
    };

    let mut failed: Option<StageResult> = None;
    if let Some(b) = &bootstrap {
        let _ = std::fs::copy(repo.join(BOOTSTRAP_FILE), artifacts.join("bootstrap.yml"));
        let lookup = |k: &str| std::env::var(k).ok();
        ctx.base_env = b
            .env
            .iter()
            .map(|(k, v)| (k.clone(), expand(v, &lookup)))
            .collect();
        let shown: BTreeMap<_, _> = ctx
            .base_env
            .iter()
            .map(|(k, v)| (k, if is_secret_name(k) { "***" } else { v.as_str() }))
            .collect();
        write_json(&artifacts.join("bootstrap_env.json"), &shown)?;
        let stage = b.stage();
        let r = run_with_repairs(&ctx, &stage, cancel, &mut result).await?;
        if r.status == StageStatus::Failed {
            failed = Some(r);
        }
    }
    if failed.is_none() {
        if let Some(a) = &actions {
            let r = run_actions(&ctx, a, cancel).await?;
            result.stages.push(r.clone());
            if r.status == StageStatus::Failed {
                failed = Some(r);
            }
        }
    }
    let mut deploy_started = false;
    for stage in &stages {
        if failed.is_some() {
            let r = StageResult::skipped(stage.name, "an earlier stage failed");
            opts.subscribers
                .emit(PipelineEvent::StageFinished { result: r.clone() });
            result.stages.push(r);
            continue;
        }
        if stage.cmds.is_empty() {
            let r = StageResult::skipped(stage.name, "no commands");
            opts.subscribers
                .emit(PipelineEvent::StageFinished { result: r.clone() });
            result.stages.push(r);
            continue;
        }
        deploy_started |= stage.name == StageName::DeploySetup;
        let r = run_with_repairs(&ctx, stage, cancel, &mut result).await?;
        record_outputs(&mut result, &r, &repo);
        if r.status == StageStatus::Passed && stage.name == StageName::DeploySetup {
            if let Some(v) = r.verification.as_ref().map(|v| &v["runtime_env"]) {
                ctx.runtime = RuntimeHints::from_runtime_env(v);
                if !ctx.runtime.is_empty() {
                    result.runtime = Some(ctx.runtime.clone());
                }
            }
        }
        if r.status == StageStatus::Failed {
            failed = Some(r);
        }
    }
    let ok = failed.is_none();
    if let Some(f) = &failed {
        result.failed_stage = Some(f.stage.clone());
        result.failure = f.reason.clone();
    }
    result.cancelled = cancel.is_cancelled();

    // Teardown, per policy, whenever deploy setup ran (also after a failure or Ctrl-C).
    if let Some((stage, policy)) = spec.teardown() {
        let selected = opts
            .stages
            .as_ref()
            .is_none_or(|w| w.iter().any(|s| s == "deploy"));
        let wanted = match policy {
            TeardownPolicy::Always => true,
            TeardownPolicy::OnSuccess => ok,
            TeardownPolicy::OnFailure => !ok,
            TeardownPolicy::Never => false,
        };
        result.teardown = Some(if selected && deploy_started && wanted {
            run_stage(&ctx, &stage, 1, abort).await?
        } else {
            let why = if !deploy_started {
                "deploy setup did not run".to_string()
            } else {
                format!("teardown_policy {policy:?} (pipeline ok: {ok})")
            };
            let r = StageResult::skipped(StageName::DeployTeardown, &why);
            opts.subscribers
                .emit(PipelineEvent::StageFinished { result: r.clone() });
            r
        });
    }
    result.ok = ok && !result.cancelled;
    result.finished_at = now();
    result.duration_seconds = t0.elapsed().as_secs_f64();
    Ok(result)
}

fn record_outputs(result: &mut PipelineResult, r: &StageResult, repo: &Path) {
    if r.status != StageStatus::Passed {
        return;
    }
    match r.stage.as_str() {
        "deploy_setup" => result.runtime_env_path = Some(repo.join(RUNTIME_ENV_FILE)),
        "rollout" => {
            if let Some(v) = &r.verification {
                result.rollout_path = v["rollout_path"].as_str().map(PathBuf::from);
                result.samples_path = v["samples_path"].as_str().map(PathBuf::from);
                result.samples = v["valid_samples"].as_u64();
            }
        }
        "evaluation" | "benchmark" => {
            if let Some(v) = &r.verification {
                result.metrics_path = v["metrics_path"].as_str().map(|p| repo.join(p));
                result.metrics = Some(v["metrics"].clone());
            }
        }
        _ => {}
    }
}

/// Run a stage; while it fails and repair attempts remain, let the repairer edit `.aider_fsm/`
/// and run the stage again (re-verified from scratch).
async fn run_with_repairs(
    ctx: &Ctx<'_>,
    stage: &Stage,
    cancel: &CancellationToken,
    result: &mut PipelineResult,
) -> Result<StageResult, PipelineError> {
    let mut r = run_stage(ctx, stage, 1, cancel).await?;
    let mut round = 1;
    if let Some(repairer) = &ctx.opts.repairer {
        while r.status == StageStatus::Failed
            && round <= ctx.opts.repair_iters
            && !cancel.is_cancelled()
        {
            let dir = ctx.artifacts.join(format!(
                "repair_{:02}_{}",
                result.repairs.len() + 1,
                stage.name
            ));
            std::fs::create_dir_all(&dir).map_err(|e| PipelineError::Io {
                context: format!("creating {}", dir.display()),
                message: e.to_string(),
            })?;
            result.stages.push(r.clone());
            let report = repairer.repair(&ctx.repo, &r, round, &dir).await;
            write_json(&dir.join("repair_provenance.json"), &report)?;
            ctx.opts.subscribers.emit(PipelineEvent::RepairFinished {
                report: report.clone(),
            });
            result.repairs.push(report);
            ctx.sandbox.push_contract(&ctx.repo).await?;
            round += 1;
            r = run_stage(ctx, stage, round, cancel).await?;
        }
    }
    result.stages.push(r.clone());
    Ok(r)
}
