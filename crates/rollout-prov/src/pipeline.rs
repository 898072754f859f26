//! `rollout pipeline run|validate|scaffold`: repo-owned contracts (`pipeline.yml` +
//! `.aider_fsm/`), see docs/pipeline.md.

use clap::{ArgAction, Args, Subcommand, ValueEnum};
use rollout_launch::exit;
use rollout_pipeline::assist::Assistant;
use rollout_pipeline::events::{PipelineEvent, PipelineSink};
use rollout_pipeline::runner::{new_run_id, Mode, RunOptions};
use rollout_pipeline::{
    DockerOptions, EnvChoice, PipelineError, PipelineResult, StageResult, StageStatus, Unattended,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Subcommand, Debug)]
pub enum PipelineCommand {
    /// Run a repository's contract: bootstrap, actions, then auth → tests → deploy setup →
    /// deploy health → rollout → evaluation → benchmark, then teardown per teardown_policy.
    /// Exit status: 0 every stage passed, 1 a stage failed, 2 invalid contract or usage,
    /// 130 cancelled.
    Run(RunArgs),
    /// Check a contract without running it: schema, paths inside the repository, security
    /// regexes, scripts exist and pass `bash -n`, commands the policy would block.
    Validate(ValidateArgs),
    /// Have the built-in LLM agent write a minimal pipeline.yml and .aider_fsm/stages/*.sh into a
    /// repository that has no pipeline.yml.
    Scaffold(ScaffoldArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum ModeArg {
    Smoke,
    Full,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq)]
pub enum EnvArg {
    Local,
    Docker,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum UnattendedArg {
    /// Likely-interactive commands are blocked; stdin is closed.
    Strict,
    /// `auth.interactive: true` commands run with this terminal's stdin.
    Guided,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The repository: a local directory or a git URL (cloned into a temporary directory).
    pub target: String,
    /// Stages to run, comma-separated (auth, tests, deploy, rollout, evaluation, benchmark);
    /// default: every stage the contract defines.
    #[arg(long, value_delimiter = ',')]
    pub stages: Option<Vec<String>>,
    /// Exported to the stages as AIDER_FSM_MODE.
    #[arg(long, value_enum, default_value = "smoke")]
    pub mode: ModeArg,
    /// Evidence directory of this run (default `<repo>/.aider_fsm/artifacts/<run_id>`, or
    /// `./pipeline-artifacts/<run_id>` for a git URL).
    #[arg(long)]
    pub artifacts: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// On a failed stage, let the LLM agent (-m) edit `.aider_fsm/` and re-run the stage, up to
    /// N times per stage.
    #[arg(long, default_value_t = 0)]
    pub repair_iters: u32,
    /// Model for repairs and for scaffolding a missing pipeline.yml; also exported to the
    /// stages as AIDER_LLM_MODEL and ROLLOUT_MODEL.
    #[arg(short = 'm', long = "model")]
    pub model: Option<String>,
    #[arg(long, value_enum, default_value = "strict")]
    pub unattended: UnattendedArg,
    /// Branch, tag or commit of a git URL (default: the default branch).
    #[arg(long)]
    pub rev: Option<String>,
    /// Keep the clone of a git URL (its path is printed).
    #[arg(long)]
    pub keep_clone: bool,
    /// Turns per repair session.
    #[arg(long, default_value_t = 30)]
    pub max_turns: u64,
    /// Seconds per repair session (and for scaffolding a missing pipeline.yml).
    #[arg(long, default_value_t = 900.0)]
    pub repair_timeout: f64,
    /// Where the stages run: local = this machine, no isolation; docker = a container holding a
    /// copy of the repository (outputs and evidence are copied back).
    #[arg(long = "env", value_enum, default_value = "local")]
    pub env: EnvArg,
    /// Image of the --env docker container (default debian:bookworm-slim).
    #[arg(long)]
    pub image: Option<String>,
    /// Extra certificate authorities the container trusts: auto (the host's
    /// /usr/local/share/ca-certificates), none, or a PEM file or directory.
    #[arg(long, default_value = "auto")]
    pub ca_certs: rollout_launch::ca::CaCerts,
    /// With --env docker: MiB copied out at most, per output file and for the artifacts
    /// directory.
    #[arg(long, default_value_t = 256)]
    pub copy_out_mb: u64,
    /// Rollout must leave at least one valid sample; false: rollout.json is enough.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub require_samples: bool,
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// The repository directory.
    #[arg(default_value = ".")]
    pub repo: PathBuf,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ScaffoldArgs {
    /// The repository directory (it must not have a pipeline.yml).
    pub repo: PathBuf,
    /// The model (OpenAI-compatible endpoint from OPENAI_BASE_URL / OPENAI_API_KEY).
    #[arg(short = 'm', long = "model")]
    pub model: String,
    #[arg(long, default_value_t = 40)]
    pub max_turns: u64,
    /// Seconds the session may take.
    #[arg(long, default_value_t = 1200.0)]
    pub timeout: f64,
    /// Print the provenance report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn main(cmd: PipelineCommand) -> u8 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::TRIAL_ERRORS;
        }
    };
    rt.block_on(async move {
        match cmd {
            PipelineCommand::Run(a) => run(a).await,
            PipelineCommand::Validate(a) => validate(a).await,
            PipelineCommand::Scaffold(a) => scaffold(a).await,
        }
    })
}

fn is_url(s: &str) -> bool {
    ["http://", "https://", "ssh://", "git://", "file://", "git@"]
        .iter()
        .any(|p| s.starts_with(p))
}

/// First Ctrl-C/SIGTERM stops the stages (teardown still runs); the second stops teardown too.
fn watch_signals(cancel: CancellationToken, abort: CancellationToken) {
    rollout_launch::signals::on_interrupt(
        move || {
            eprintln!("\nrollout: cancelling: the running command is stopped, later stages are skipped, teardown runs. Press Ctrl-C again to stop teardown too.");
            cancel.cancel();
        },
        move || async move {
            eprintln!("rollout: stopping teardown");
            abort.cancel();
        },
    );
}

fn status_line(r: &StageResult) -> String {
    let mark = match r.status {
        StageStatus::Passed => "ok  ",
        StageStatus::Failed => "FAIL",
        StageStatus::Skipped => "skip",
    };
    let round = if r.round > 1 {
        format!(" (round {})", r.round)
    } else {
        String::new()
    };
    let why = r
        .reason
        .as_deref()
        .map(|w| format!(": {w}"))
        .unwrap_or_default();
    format!(
        "  {mark} {:<16}{:>8.2} s{round}{why}",
        r.stage, r.duration_seconds
    )
}

/// Renders a run's events on stderr as they happen.
struct Progress;

impl PipelineSink for Progress {
    fn event(&self, e: &PipelineEvent) {
        match e {
            PipelineEvent::RunStarted {
                run_id,
                repo,
                environment,
                ..
            } => eprintln!(
                "pipeline run {run_id} in {} ({environment} environment)",
                repo.display()
            ),
            PipelineEvent::StageFinished { result } => eprintln!("{}", status_line(result)),
            PipelineEvent::RepairFinished { report: rep } => eprintln!(
                "  repair {} of {}: {} file(s) changed, {} refused{}",
                rep.attempt,
                rep.stage.as_deref().unwrap_or("?"),
                rep.changed_files.len(),
                rep.refused.len(),
                rep.error
                    .as_deref()
                    .map(|e| format!(", error: {e}"))
                    .unwrap_or_default()
            ),
            _ => {}
        }
    }
}

fn print_summary(r: &PipelineResult) {
    if let Some(n) = r.samples {
        eprintln!("  samples: {n} valid");
    }
    if let Some(m) = &r.metrics {
        eprintln!("  metrics: {m}");
    }
    eprintln!("  evidence: {}", r.artifacts_dir.display());
    if r.cancelled {
        eprintln!("CANCELLED");
    } else if r.ok {
        eprintln!("OK");
    } else {
        eprintln!(
            "FAILED at {}: {}",
            r.failed_stage.as_deref().unwrap_or("?"),
            r.failure.as_deref().unwrap_or("?")
        );
    }
}

async fn run(a: RunArgs) -> u8 {
    if a.repair_iters > 0 && a.model.is_none() {
        eprintln!("error: --repair-iters needs a model: add -m MODEL");
        return exit::USAGE;
    }
    let run_id = new_run_id();
    let mut clone_dir = None;
    let (repo, url, commit) = if Path::new(&a.target).is_dir() || !is_url(&a.target) {
        (PathBuf::from(&a.target), None, None)
    } else {
        let tmp = match tempfile::Builder::new()
            .prefix(&format!("rollout-pipeline-{run_id}-"))
            .tempdir()
        {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: creating a temporary directory for the clone: {e}");
                return exit::TRIAL_ERRORS;
            }
        };
        let cache = rollout_sources::git::GitCache::new(tmp.path().to_path_buf())
            .with_timeout(Duration::from_secs(600));
        let url = a.target.clone();
        let rev = a.rev.clone();
        let co = tokio::task::spawn_blocking(move || cache.checkout(&url, rev.as_deref())).await;
        match co {
            Ok(Ok(c)) => {
                let dir = c.dir.clone();
                clone_dir = Some(tmp);
                (dir, Some(a.target.clone()), Some(c.commit))
            }
            Ok(Err(e)) => {
                eprintln!("error: {e}");
                return exit::USAGE;
            }
            Err(e) => {
                eprintln!("error: the clone task failed: {e}");
                return exit::TRIAL_ERRORS;
            }
        }
    };
    if !repo.join(rollout_pipeline::spec::PIPELINE_FILE).is_file() {
        if let Some(code) = scaffold_missing(&a, &repo).await {
            return code;
        }
    }
    let artifacts = a.artifacts.clone().or_else(|| {
        url.as_ref()
            .map(|_| PathBuf::from("pipeline-artifacts").join(&run_id))
    });
    let mut opts = RunOptions::new(repo.clone());
    opts.run_id = Some(run_id);
    opts.url = url;
    opts.commit = commit;
    opts.stages = a.stages.clone();
    opts.mode = match a.mode {
        ModeArg::Smoke => Mode::Smoke,
        ModeArg::Full => Mode::Full,
    };
    opts.artifacts = artifacts;
    opts.unattended = match a.unattended {
        UnattendedArg::Strict => Unattended::Strict,
        UnattendedArg::Guided => Unattended::Guided,
    };
    opts.model = a.model.clone();
    opts.repair_iters = a.repair_iters;
    opts.require_samples = a.require_samples;
    opts.subscribers.push(Arc::new(Progress));
    if a.env == EnvArg::Docker {
        let mut d = DockerOptions::new(a.image.clone(), rollout_runner::host_name());
        d.copy_out_cap = a.copy_out_mb.max(1) << 20;
        d.ca_bundle = match rollout_launch::ca::bundle(&a.ca_certs) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: --ca-certs: {e}");
                return exit::USAGE;
            }
        };
        opts.environment = EnvChoice::Docker(d);
    } else if a.image.is_some() {
        eprintln!("error: --image needs --env docker");
        return exit::USAGE;
    }
    if let (Some(m), true) = (&a.model, a.repair_iters > 0) {
        match Assistant::new(
            m,
            a.max_turns,
            Duration::from_secs_f64(a.repair_timeout.max(1.0)),
        ) {
            Ok(mut asst) => {
                if let Ok(spec) = rollout_pipeline::PipelineSpec::load(&repo) {
                    asst.security = spec.security;
                }
                opts.repairer = Some(Box::new(asst));
            }
            Err(e) => {
                eprintln!("error: {e}");
                return exit::USAGE;
            }
        }
    }
    let cancel = CancellationToken::new();
    let abort = CancellationToken::new();
    watch_signals(cancel.clone(), abort.clone());
    let res = rollout_pipeline::run(&opts, &cancel, &abort).await;
    if let Some(tmp) = clone_dir {
        if a.keep_clone {
            eprintln!("rollout: the clone is kept at {}", tmp.keep().display());
        }
    }
    match res {
        Ok(r) => {
            if let Err(e) = record_run(&r) {
                eprintln!("warning: provenance: the pipeline run was not recorded: {e}");
            }
            print_summary(&r);
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            }
            if r.cancelled {
                exit::CANCELLED
            } else if r.ok {
                exit::OK
            } else {
                exit::TRIAL_ERRORS
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                PipelineError::Io { .. } => exit::TRIAL_ERRORS,
                _ => exit::USAGE,
            }
        }
    }
}

/// Record a pipeline run in the provenance store (docs/provenance.md) as a `pipeline` job:
/// inputs are the contract files (and the repository's commit, in the job's git facts), outputs
/// the files the run verified (runtime env, rollout, samples, metrics) and `pipeline_result.json`.
/// A run with the store switched off records nothing. Every entry point that runs a contract
/// (the CLI, the Python bridge through it) records through this.
pub fn record_run(r: &PipelineResult) -> Result<(), String> {
    use rollout_store::{Job, JobKind, Session, Store};
    if crate::store_disabled() {
        return Ok(());
    }
    let mut store = Store::open(&crate::store_path()).map_err(|e| e.to_string())?;
    let git = rollout_store::git::info(&r.repo.path).map(|mut g| {
        if let Some(c) = &r.repo.commit {
            g.commit = c.clone();
        }
        g
    });
    let session = Session {
        uid: Job::new_uid(),
        name: Some(format!("pipeline {}", r.run_id)),
        kind: "pipeline".into(),
        created_at: r.started_at.clone(),
        git: git.clone(),
    };
    store.ensure_session(&session).map_err(|e| e.to_string())?;
    let refs = crate::file_refs;
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            r.repo.path.join(p)
        }
    };
    let inputs: Vec<PathBuf> = r
        .contract_files
        .iter()
        .map(|f| r.repo.path.join(&f.path))
        .collect();
    let outputs: Vec<PathBuf> = [
        &r.runtime_env_path,
        &r.rollout_path,
        &r.samples_path,
        &r.metrics_path,
    ]
    .into_iter()
    .flatten()
    .map(|p| abs(p))
    .chain(std::iter::once(
        abs(&r.artifacts_dir).join("pipeline_result.json"),
    ))
    .collect();
    let inputs = refs(
        store
            .hash_files(&inputs, false)
            .map_err(|e| e.to_string())?,
    );
    let outputs = refs(
        store
            .hash_files(&outputs, false)
            .map_err(|e| e.to_string())?,
    );
    let argv: Vec<String> = std::env::args().collect();
    let job = Job {
        uid: Job::new_uid(),
        session: session.uid.clone(),
        kind: JobKind::Pipeline,
        command: argv
            .iter()
            .map(|a| crate::shell_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
        argv,
        cwd: std::env::current_dir()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default(),
        git,
        started_at: r.started_at.clone(),
        duration_sec: r.duration_seconds,
        exit_code: Some(if r.ok { 0 } else { 1 }),
        env: Default::default(),
        metadata: serde_json::json!({
            "run_id": r.run_id,
            "ok": r.ok,
            "cancelled": r.cancelled,
            "repo": r.repo,
            "failed_stage": r.failed_stage,
            "failure": r.failure,
            "metrics": r.metrics,
            "samples": r.samples,
            "artifacts_dir": r.artifacts_dir,
            "repairs": r.repairs.len(),
            "environment": r.environment,
        }),
        host: rollout_runner::host_name(),
        inputs,
        outputs,
    };
    store.record_job(&job).map_err(|e| e.to_string())
}

async fn validate(a: ValidateArgs) -> u8 {
    let repo = match a.repo.canonicalize() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e}", a.repo.display());
            return exit::USAGE;
        }
    };
    let r = rollout_pipeline::validate::validate(&repo).await;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else {
        for p in &r.problems {
            eprintln!("error: {p}");
        }
        for w in &r.warnings {
            eprintln!("warning: {w}");
        }
        if r.ok {
            eprintln!(
                "ok: stages {}; scripts checked: {}",
                r.stages.join(", "),
                r.scripts.len()
            );
        }
    }
    if r.ok {
        exit::OK
    } else {
        exit::TRIAL_ERRORS
    }
}

/// `pipeline run` on a repository without pipeline.yml: scaffold it first (as the seed does),
/// with the model of -m. Returns an exit status when the run cannot go on.
async fn scaffold_missing(a: &RunArgs, repo: &Path) -> Option<u8> {
    let Some(model) = &a.model else {
        eprintln!(
            "error: {} has no pipeline.yml; pass -m MODEL to have the built-in agent scaffold one (or write it: docs/pipeline.md)",
            repo.display()
        );
        return Some(exit::USAGE);
    };
    eprintln!(
        "rollout: {} has no pipeline.yml: scaffolding one with {model}",
        repo.display()
    );
    let code = scaffold(ScaffoldArgs {
        repo: repo.to_path_buf(),
        model: model.clone(),
        max_turns: a.max_turns,
        timeout: a.repair_timeout,
        json: false,
    })
    .await;
    (code != exit::OK).then_some(code)
}

async fn scaffold(a: ScaffoldArgs) -> u8 {
    let repo = match a.repo.canonicalize() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e}", a.repo.display());
            return exit::USAGE;
        }
    };
    let asst = match Assistant::new(
        &a.model,
        a.max_turns,
        Duration::from_secs_f64(a.timeout.max(1.0)),
    ) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let dir = repo
        .join(rollout_pipeline::spec::ARTIFACTS_DIR)
        .join(new_run_id())
        .join("scaffold");
    let report = match asst.scaffold(&repo, &dir).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    }
    for c in &report.changed_files {
        eprintln!("  {:<9} {}", c.change, c.path);
    }
    for r in &report.refused {
        eprintln!("  refused: {r}");
    }
    eprintln!(
        "  provenance: {}",
        dir.join("scaffold_provenance.json").display()
    );
    if let Some(e) = &report.error {
        eprintln!("error: scaffold failed: {e}");
        return exit::TRIAL_ERRORS;
    }
    let v = rollout_pipeline::validate::validate(&repo).await;
    for p in &v.problems {
        eprintln!("error: the scaffolded contract: {p}");
    }
    if v.ok {
        eprintln!("ok: scaffolded stages {}", v.stages.join(", "));
        exit::OK
    } else {
        exit::TRIAL_ERRORS
    }
}
