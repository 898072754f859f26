//! Command-line flags, in one place, documented where they are parsed.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "rollout",
    version,
    about = "Run AI agents on tasks in containers, verify the outcome into a reward, and record every trial."
)]
pub struct Cli {
    /// The provenance store (SQLite file); default `.rollout/rollout.db` in the project
    /// directory; `off` records nothing.
    #[arg(long, global = true, env = "ROLLOUT_STORE")]
    pub store: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// `rollout JOB.yaml` (the Rollout seed's invocation) is `rollout run JOB.yaml`: when the first
/// argument that is not a global option names an existing job file (`.yaml`, `.yml`, `.json`)
/// and no subcommand, `run` is inserted before it.
pub fn job_shorthand(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if a == "--store" {
            i += 2;
            continue;
        }
        if a.starts_with("--store=") {
            i += 1;
            continue;
        }
        break;
    }
    let Some(first) = args.get(i) else {
        return args;
    };
    let path = std::path::Path::new(first);
    let is_job_file = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    ) && path.is_file();
    if is_job_file {
        args.insert(i, "run".into());
    }
    args
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a job: every agent on every task, n_attempts times, in containers.
    Run(Box<RunArgs>),
    /// Work with task directories.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Work with job directories.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Work with dataset registries.
    #[command(subcommand)]
    Datasets(DatasetsCommand),
    /// Inspect or empty rollout's cache (git clones, unpacked archives, code agents).
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Check everything that can fail before a run, without running an agent.
    Preflight(PreflightArgs),
    /// Repo-owned contracts (pipeline.yml + .aider_fsm/): run, validate, scaffold.
    #[command(subcommand)]
    Pipeline(rollout_prov::pipeline::PipelineCommand),
    /// Remove containers whose rollout process is gone (crashes, preserved environments) and
    /// dangling build images. Environment images are kept unless --images.
    Gc(GcArgs),
    /// Provenance: trace commands, query lineage, reproduce and register artifacts, manage the
    /// store (init, config, env, pop, reset) and collections.
    #[command(subcommand)]
    Prov(rollout_prov::ProvCommand),
    // The provenance commands' former top-level names, kept working (hidden: `rollout prov`
    // lists them).
    #[command(hide = true)]
    Trace(rollout_prov::TraceArgs),
    #[command(hide = true)]
    Lineage(rollout_prov::LineageArgs),
    #[command(hide = true)]
    Log(rollout_prov::LogArgs),
    #[command(hide = true)]
    Status(rollout_prov::StatusArgs),
    #[command(hide = true)]
    Show(rollout_prov::ShowArgs),
    #[command(hide = true)]
    Reproduce(rollout_prov::ReproduceArgs),
    #[command(hide = true)]
    Register(rollout_prov::RegisterArgs),
    /// Serve the evaluation executor over HTTP: the term-executor API and the /api/v1 job API.
    Serve(Box<crate::serve::ServeArgs>),
    /// Browse job directories in a local web UI (jobs, trials, trajectories, comparisons).
    View(rollout_view::ViewArgs),
    /// Write one self-contained HTML report of a job directory.
    Report(rollout_view::ReportArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the rollout(1) man page (roff) on stdout.
    Man,
    /// Print the JSON Schema of a file rollout reads or writes (docs/schemas/).
    Schema {
        /// job (job.yaml), task (task.toml), result (a trial's result.json) or job-result (a
        /// job's result.json).
        #[arg(value_parser = ["job", "task", "result", "job-result"])]
        document: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DatasetsCommand {
    /// List the datasets of a registry: names, versions, task counts.
    List {
        /// registry.json: a path or an http(s) URL.
        #[arg(long)]
        registry: String,
        /// Print JSON (`{"registry", "datasets": [...]}`) instead of the table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// What the cache holds.
    Ls {
        /// Print JSON (`{"root", "git": [...], "dirs": [...]}`) instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Remove everything in the cache.
    Clean,
}

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// Un-pause a paused running job; or finish a job whose process is gone (crash, kill -9,
    /// Ctrl-C): complete trials are kept, the others run from scratch, orphaned containers are
    /// removed first.
    Resume(ResumeArgs),
    /// Stop starting new trials in a running job (running trials go on).
    Pause(JobDirArg),
    /// Cancel a running job as Ctrl-C does: trials stop, containers are removed, results written.
    Kill(JobDirArg),
    /// Past and running jobs under a jobs directory.
    List {
        /// The jobs directory.
        #[arg(short = 'o', long = "jobs-dir", default_value = "jobs")]
        jobs_dir: PathBuf,
        /// Print JSON (one object per job) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// One job: status, active trials, summary, one row per trial, failures.
    Show {
        /// The job directory (`jobs/<name>`).
        job_dir: PathBuf,
        /// Print JSON (the job result and every trial result) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Compare two jobs: mean reward per agent and task, and the pass rates.
    Diff {
        /// The earlier job directory.
        a: PathBuf,
        /// The later job directory.
        b: PathBuf,
        /// Print the comparison as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a job's trials as CSV, JSON Lines or JUnit XML on stdout.
    Export {
        /// The job directory (`jobs/<name>`).
        job_dir: PathBuf,
        /// csv (one row per trial), jsonl (each trial's result.json), junit (one test case
        /// per trial).
        #[arg(long, default_value = "csv")]
        format: rollout_runner::report::ExportFormat,
    },
}

#[derive(Args, Debug)]
pub struct JobDirArg {
    /// The job directory (`jobs/<name>`).
    pub job_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct ResumeArgs {
    /// The job directory (`jobs/<name>`).
    pub job_dir: PathBuf,
    /// Also re-run trials that ended in an error.
    #[arg(long)]
    pub retry_errors: bool,
    /// Extra CAs environments trust (as for `rollout run`).
    #[arg(long = "ca-certs", default_value = "auto")]
    pub ca_certs: rollout_launch::ca::CaCerts,
    /// Trials running at once (default: as the job was configured).
    #[arg(short = 'n', long = "n-concurrent")]
    pub n_concurrent: Option<usize>,
    /// Print the job result as JSON on stdout instead of the summary table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PreflightArgs {
    /// A job file (YAML or JSON), or an experiment file (AgentLab shape).
    pub config: Option<PathBuf>,
    /// A task directory, dataset directory or JSONL row file (repeatable).
    #[arg(short = 'p', long = "path")]
    pub paths: Vec<PathBuf>,
    /// Agents to check (`oracle`, `nop`, …), as for `rollout run`.
    #[arg(short = 'a', long = "agent")]
    pub agents: Vec<String>,
    /// Actually build (or pull) every image needed, instead of only checking they can be.
    #[arg(long)]
    pub build: bool,
    /// Print `{"ok", "checks": [...]}` on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Only list what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Also collect environment images (they are the build cache): keep the newest
    /// --keep-images of each environment and, with --images-budget, at most that much in all;
    /// images a container uses are always kept.
    #[arg(long)]
    pub images: bool,
    /// With --images: environment images kept per environment (build context), newest first;
    /// 0 removes every one not in use.
    #[arg(long = "keep-images", default_value_t = 1, value_name = "N")]
    pub keep_images: usize,
    /// With --images: total size the kept environment images may take (e.g. 20G, 500M); past
    /// it the oldest go first.
    #[arg(long = "images-budget", value_name = "SIZE", value_parser = parse_size)]
    pub images_budget: Option<u64>,
    /// Where to collect: the Docker engine (default) or the Kubernetes namespace
    /// (ROLLOUT_K8S_NAMESPACE / ROLLOUT_K8S_CONTEXT, else the kubeconfig's).
    #[arg(long = "env", value_enum)]
    pub env: Option<ContainerEnv>,
    /// Print JSON (`{"dry_run", "items": [...], "n_failed"}`) instead of lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum TasksCommand {
    /// Validate tasks or datasets without running them (exit 1 when any task has an error).
    Check(CheckArgs),
    /// Create a new Harbor-format task directory to fill in.
    Init(InitArgs),
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Task name (the directory name).
    pub name: String,
    /// Parent directory (default: the current directory).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Task directories or dataset directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Print JSON (`{"ok", "tasks": [...], ...}`) instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// Where environments run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EnvKind {
    // AgentLab's executor name `local_docker` is accepted (a plain comment: documented
    // variants would switch every --help to the long layout).
    #[value(alias = "local_docker")]
    Docker,
    // AgentLab's `local_process` is accepted.
    #[value(alias = "local_process")]
    Local,
    Kubernetes,
}

/// Where containers run, for the commands that manage them (`serve`, `gc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ContainerEnv {
    #[value(alias = "local_docker")]
    Docker,
    Kubernetes,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A job file (YAML or JSON), or an experiment file (AgentLab shape, docs/experiments.md).
    /// Flags given here override its fields.
    pub config: Option<PathBuf>,

    /// A task directory or a dataset directory of tasks (repeatable).
    #[arg(short = 'p', long = "path")]
    pub paths: Vec<PathBuf>,

    /// A registry dataset `NAME[@VERSION]` (repeatable; needs --registry).
    #[arg(short = 'd', long = "dataset")]
    pub datasets: Vec<String>,

    /// The registry (registry.json) for -d: a path or an http(s) URL.
    #[arg(long)]
    pub registry: Option<String>,

    /// A term-executor archive (zip or tar.gz) of tasks and agent code (repeatable).
    #[arg(long)]
    pub archive: Vec<PathBuf>,

    /// Base image for archive tasks (default: debian:bookworm-slim plus git and the runtime).
    #[arg(long = "executor-image")]
    pub executor_image: Option<String>,

    /// Shuffle the tasks (before -l) with --seed, for reproducible sampling.
    #[arg(long)]
    pub shuffle: bool,

    /// Seed of --shuffle (default 0).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Agent to run: `oracle`, `nop`, `code:PATH`, or an agent defined in the job file (repeatable).
    #[arg(short = 'a', long = "agent")]
    pub agents: Vec<String>,

    /// Version of the agents to install (installed CLI agents).
    #[arg(long = "agent-version")]
    pub agent_version: Option<String>,

    /// An agent option `KEY=VALUE` (JSON values are parsed), for every agent (repeatable).
    #[arg(long = "ak", alias = "agent-kwarg")]
    pub agent_kwargs: Vec<String>,

    /// An agent environment variable `KEY=VALUE`, for every agent (repeatable).
    #[arg(long = "ae", alias = "agent-env")]
    pub agent_env: Vec<String>,

    /// Model passed to the agents (repeatable: each agent runs once per model).
    #[arg(short = 'm', long = "model", value_name = "MODEL")]
    pub models: Vec<String>,

    /// Trials running at once (default 4).
    #[arg(short = 'n', long = "n-concurrent")]
    pub n_concurrent: Option<usize>,

    /// Trials per (agent, task) (default 1).
    #[arg(short = 'k', long = "n-attempts")]
    pub n_attempts: Option<u32>,

    /// Parent directory of job directories (default `jobs`).
    #[arg(short = 'o', long = "jobs-dir")]
    pub jobs_dir: Option<PathBuf>,

    /// Name of the job directory (default: the start time).
    #[arg(long = "job-name")]
    pub job_name: Option<String>,

    /// Only tasks whose name matches this glob (repeatable).
    #[arg(short = 't', long = "task")]
    pub include: Vec<String>,

    /// Skip tasks whose name matches this glob (repeatable).
    #[arg(short = 'x', long = "exclude-task")]
    pub exclude: Vec<String>,

    /// Run at most this many tasks (after filtering, in name order; AgentLab's AGENTLAB_LIMIT)
    #[arg(short = 'l', long = "n-tasks", env = "AGENTLAB_LIMIT")]
    pub n_tasks: Option<usize>,

    /// Environment provider (`--executor`, AgentLab's name for it, is accepted).
    #[arg(long = "env", visible_alias = "executor", value_enum)]
    pub env: Option<EnvKind>,

    /// Rebuild environment images even when an image with the same content exists.
    #[arg(long = "force-build")]
    pub force_build: bool,

    /// Refresh the base images every Dockerfile names from their registry before building
    /// (as `docker build --pull`; job option `environment.pull: always`). An environment whose
    /// base changed is rebuilt.
    #[arg(long)]
    pub pull: bool,

    /// Retries of trials that fail for infrastructure reasons (build, start, engine errors).
    #[arg(long = "max-retries")]
    pub max_retries: Option<u32>,

    /// Stop starting new trials once this many ended with infrastructure or model provider
    /// errors (job file `max_errors`).
    #[arg(long = "max-errors", value_name = "N")]
    pub max_errors: Option<u32>,

    /// With an existing --job-name: also re-run trials that ended in an error.
    #[arg(long)]
    pub retry_errors: bool,

    /// Extra CAs environments trust: `auto` (the host's /usr/local/share/ca-certificates),
    /// `none`, or a PEM file or directory. Needed behind a TLS-intercepting proxy.
    #[arg(long = "ca-certs", default_value = "auto")]
    pub ca_certs: rollout_launch::ca::CaCerts,

    /// Multiply every timeout by this factor.
    #[arg(long = "timeout-multiplier")]
    pub timeout_multiplier: Option<f64>,

    /// Print the job result as JSON on stdout instead of the summary table.
    #[arg(long)]
    pub json: bool,

    /// Start without the preflight checks `rollout run` makes first (files, verifiers, agents,
    /// disk; see `rollout preflight`).
    #[arg(long = "no-preflight")]
    pub no_preflight: bool,
}

/// A size such as `20G`, `500M`, `1.5GiB` or `1024` (bytes); K, M, G, T are powers of 1024.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 20G, 500M)"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: unknown unit (use K, M, G or T)")),
    };
    Ok((n * (1u64 << shift) as f64) as u64)
}

#[cfg(test)]
mod size_tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_in_powers_of_1024() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("2kb").unwrap(), 2048);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3X").is_err());
    }
}

#[cfg(test)]
mod shorthand_tests {
    use super::job_shorthand;
    use std::ffi::OsString;

    fn argv(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_job_file_as_first_argument_means_run() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job.yaml");
        std::fs::write(&job, "tasks: []\n").unwrap();
        let j = job.to_str().unwrap();
        assert_eq!(
            job_shorthand(argv(&["rollout", j, "-n", "2"])),
            argv(&["rollout", "run", j, "-n", "2"])
        );
        assert_eq!(
            job_shorthand(argv(&["rollout", "--store", "off", j])),
            argv(&["rollout", "--store", "off", "run", j])
        );
        // Subcommands, missing files and other extensions are left to clap.
        for unchanged in [
            argv(&["rollout", "run", j]),
            argv(&["rollout", "missing.yaml"]),
            argv(&["rollout", "jobs", "list"]),
            argv(&["rollout"]),
        ] {
            assert_eq!(job_shorthand(unchanged.clone()), unchanged);
        }
    }
}
