//! `rollout`: run agents on tasks in containers, verify the outcome into a reward, record it all.

mod cli;
mod error;
mod gc;
mod jobs_cmd;
mod progress;
mod run;
mod serve;
mod sources_cmd;
mod summary;
mod tasks_cmd;

use clap::Parser;
use std::process::ExitCode;

pub use error::exit;

type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The log filter, changeable once a job file names its `log_level`.
static LOG_FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

/// Logs to stderr, filtered by `ROLLOUT_LOG` (default `warn`).
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROLLOUT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = LOG_FILTER.set(handle);
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
}

/// A job file's `log_level` (the Rollout seed's key): applied unless `ROLLOUT_LOG` is set,
/// which wins as a command-line setting does.
pub fn set_job_log_level(level: &str) {
    if std::env::var_os("ROLLOUT_LOG").is_some() {
        return;
    }
    if let Some(handle) = LOG_FILTER.get() {
        let _ = handle.reload(tracing_subscriber::EnvFilter::new(level));
    }
}

/// Print one JSON document (a `--json` output) on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON output serializes")
    );
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse_from(cli::job_shorthand(std::env::args_os().collect()));
    init_logging();
    rollout_prov::set_store(cli.store.clone());
    let code = match cli.command {
        cli::Command::Run(args) => error::report(run::main(*args)),
        cli::Command::Tasks(cli::TasksCommand::Check(args)) => tasks_cmd::check(args),
        cli::Command::Tasks(cli::TasksCommand::Init(args)) => {
            error::report(sources_cmd::tasks_init(args))
        }
        cli::Command::Jobs(cli::JobsCommand::Resume(args)) => error::report(jobs_cmd::resume(args)),
        cli::Command::Jobs(cli::JobsCommand::Pause(a)) => {
            error::report(jobs_cmd::pause(&a.job_dir))
        }
        cli::Command::Jobs(cli::JobsCommand::Kill(a)) => error::report(jobs_cmd::kill(&a.job_dir)),
        cli::Command::Jobs(cli::JobsCommand::List { jobs_dir, json }) => {
            error::report(jobs_cmd::list(&jobs_dir, json))
        }
        cli::Command::Jobs(cli::JobsCommand::Show { job_dir, json }) => {
            error::report(jobs_cmd::show(&job_dir, json))
        }
        cli::Command::Jobs(cli::JobsCommand::Diff { a, b, json }) => jobs_cmd::diff(&a, &b, json),
        cli::Command::Jobs(cli::JobsCommand::Export { job_dir, format }) => {
            jobs_cmd::export(&job_dir, format)
        }
        cli::Command::Datasets(cli::DatasetsCommand::List { registry, json }) => {
            error::report(sources_cmd::datasets_list(&registry, json))
        }
        cli::Command::Cache(cmd) => error::report(sources_cmd::cache(cmd)),
        cli::Command::Gc(args) => error::report(gc::main(args)),
        cli::Command::Preflight(args) => error::report(run::preflight(args)),
        cli::Command::Prov(cmd) => rollout_prov::group::main(cmd),
        cli::Command::Trace(args) => rollout_prov::trace(args),
        cli::Command::Lineage(args) => rollout_prov::lineage(args),
        cli::Command::Log(args) => rollout_prov::log(args),
        cli::Command::Status(args) => rollout_prov::status(args),
        cli::Command::Show(args) => rollout_prov::show(args),
        cli::Command::Reproduce(args) => rollout_prov::reproduce::main(args),
        cli::Command::Register(args) => rollout_prov::register::main(args),
        cli::Command::Pipeline(cmd) => rollout_prov::pipeline::main(cmd),
        cli::Command::Serve(args) => error::report(serve::main(*args)),
        cli::Command::View(args) => rollout_view::view_main(args),
        cli::Command::Report(args) => rollout_view::report_main(args),
        cli::Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = cli::Cli::command();
            clap_complete::generate(shell, &mut cmd, "rollout", &mut std::io::stdout());
            exit::OK
        }
        cli::Command::Schema { document } => {
            let doc = rollout_core::schema::Document::ALL
                .into_iter()
                .find(|d| d.name() == document);
            print!("{}", doc.expect("clap checked the name").to_pretty_json());
            exit::OK
        }
        cli::Command::Man => {
            use clap::CommandFactory;
            match clap_mangen::Man::new(cli::Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => exit::OK,
                Err(e) => {
                    eprintln!("error: writing the man page: {e}");
                    exit::TRIAL_ERRORS
                }
            }
        }
    };
    ExitCode::from(code)
}
