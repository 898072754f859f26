//! One error type for the commands, and one mapping to exit statuses (documented in README).

use rollout_launch::LaunchError;

pub use rollout_launch::exit;

/// Why a command failed. Printed as `error: MESSAGE` (one line per problem) by [`report`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line, a file it names, or the request is wrong: exit 2.
    #[error("{0}")]
    Usage(String),
    /// Something failed while doing the work: exit 1.
    #[error("{0}")]
    Failed(String),
    /// The launcher refused or could not start the job.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// Already reported to the user; only the exit status is left.
    #[error("exit status {0}")]
    Exit(u8),
}

/// What a command returns: its exit status, or why it failed.
pub type CliResult = Result<u8, CliError>;

impl CliError {
    pub fn usage(m: impl std::fmt::Display) -> Self {
        CliError::Usage(m.to_string())
    }

    pub fn failed(m: impl std::fmt::Display) -> Self {
        CliError::Failed(m.to_string())
    }

    /// The exit status of this error.
    pub fn code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Failed(_) => exit::TRIAL_ERRORS,
            CliError::Launch(e) if e.is_usage() => exit::USAGE,
            CliError::Launch(_) => exit::TRIAL_ERRORS,
            CliError::Exit(c) => *c,
        }
    }
}

/// Print the error (if not already reported) and return its exit status.
pub fn report(result: CliResult) -> u8 {
    match result {
        Ok(code) => code,
        Err(e) => {
            match &e {
                CliError::Exit(_) => {}
                CliError::Launch(l) => {
                    for line in l.lines() {
                        eprintln!("error: {line}");
                    }
                }
                e => eprintln!("error: {e}"),
            }
            e.code()
        }
    }
}

/// The async runtime of a command: `workers` threads (None: one per core).
pub fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, CliError> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n);
    }
    b.enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}")))
}
