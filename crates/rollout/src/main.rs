//! `rollout`: run agents on tasks in containers, verify the outcome into a reward, record it all.

mod ca;
mod cli;
mod experiment;
mod gc;
mod jobs_cmd;
mod kube_cmd;
mod metrics;
mod pipeline_cmd;
mod preflight;
mod progress;
mod prov_cmd;
mod run;
mod serve;
mod signals;
mod sources_cmd;
mod summary;
mod tasks_cmd;

use clap::Parser;
use std::process::ExitCode;

/// Exit statuses (documented in README).
pub mod exit {
    pub const OK: u8 = 0;
    pub const TRIAL_ERRORS: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const CANCELLED: u8 = 130;
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROLLOUT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    prov_cmd::set_store(cli.store.clone());
    let code = match cli.command {
        cli::Command::Run(args) => run::main(*args),
        cli::Command::Tasks(cli::TasksCommand::Check(args)) => tasks_cmd::check(args),
        cli::Command::Tasks(cli::TasksCommand::Init(args)) => sources_cmd::tasks_init(args),
        cli::Command::Jobs(cli::JobsCommand::Resume(args)) => jobs_cmd::resume(args),
        cli::Command::Jobs(cli::JobsCommand::Pause(a)) => jobs_cmd::pause(&a.job_dir),
        cli::Command::Jobs(cli::JobsCommand::Kill(a)) => jobs_cmd::kill(&a.job_dir),
        cli::Command::Jobs(cli::JobsCommand::List { jobs_dir, json }) => {
            jobs_cmd::list(&jobs_dir, json)
        }
        cli::Command::Jobs(cli::JobsCommand::Show { job_dir, json }) => {
            jobs_cmd::show(&job_dir, json)
        }
        cli::Command::Jobs(cli::JobsCommand::Diff { a, b, json }) => jobs_cmd::diff(&a, &b, json),
        cli::Command::Jobs(cli::JobsCommand::Export { job_dir, format }) => {
            jobs_cmd::export(&job_dir, format)
        }
        cli::Command::Datasets(cli::DatasetsCommand::List { registry }) => {
            sources_cmd::datasets_list(&registry)
        }
        cli::Command::Cache(cmd) => sources_cmd::cache(cmd),
        cli::Command::Gc(args) => gc::main(args),
        cli::Command::Preflight(args) => preflight::main(args),
        cli::Command::Trace(args) => prov_cmd::trace(args),
        cli::Command::Lineage(args) => prov_cmd::lineage(args),
        cli::Command::Log(args) => prov_cmd::log(args),
        cli::Command::Status(args) => prov_cmd::status(args),
        cli::Command::Show(args) => prov_cmd::show(args),
        cli::Command::Reproduce(args) => prov_cmd::reproduce::main(args),
        cli::Command::Register(args) => prov_cmd::register::main(args),
        cli::Command::Pipeline(cmd) => pipeline_cmd::main(cmd),
        cli::Command::Serve(args) => serve::main(*args),
        cli::Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = cli::Cli::command();
            clap_complete::generate(shell, &mut cmd, "rollout", &mut std::io::stdout());
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
