//! The error kinds a trial can end with, and which of them are infrastructure failures.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a trial did not produce a clean result. Serialised in snake_case (`agent_execution_timeout`),
/// which is the `error.type` field of a trial result.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Building the task's `environment/` failed (Dockerfile error, bad context …).
    EnvironmentBuildFailed,
    /// Building the environment took longer than `build_timeout_sec`.
    EnvironmentBuildTimeout,
    /// A `docker_image` is neither local nor pullable.
    EnvironmentImagePullFailed,
    /// The container could not be created or started.
    EnvironmentStartFailed,
    /// `[environment.healthcheck]` never passed.
    EnvironmentHealthcheckFailed,
    /// The container engine failed during the trial (API error, lost connection, daemon restart).
    EnvironmentApiError,
    /// Removing the container failed.
    EnvironmentTeardownFailed,
    /// The task needs something this host or provider cannot give (GPUs on a host without
    /// them, Windows containers, a TPU, a separate verifier environment …): refused before
    /// the environment starts, never run without it.
    EnvironmentUnsupported,
    /// The task's own files are invalid (task.toml, instruction.md, tests/): its trials end
    /// with this, naming file, line and field; the rest of the job runs.
    TaskInvalid,
    /// The agent's install step exited non-zero.
    AgentInstallFailed,
    /// The agent's install step ran past its timeout.
    AgentInstallTimeout,
    /// The agent exited non-zero.
    AgentExecutionFailed,
    /// The agent ran past its timeout (the verifier still runs).
    AgentExecutionTimeout,
    /// The memory limit was hit while the agent ran: the kernel's OOM killer ended one of its
    /// processes (the verifier still runs).
    AgentOutOfMemory,
    /// The agent is misconfigured for this task (e.g. oracle without `solution/solve.sh`).
    AgentConfigInvalid,
    /// The model provider kept answering 429 (rate limited) after the agent's retries.
    ApiRateLimit,
    /// The model provider refused the credentials (401/403).
    ApiAuth,
    /// The conversation no longer fits the model's context window.
    ContextWindowExceeded,
    /// The model provider does not know the model.
    ModelNotFound,
    /// The model provider failed otherwise (5xx, connection errors) after the agent's retries.
    ApiError,
    /// `tests/test.sh` ran past its timeout.
    VerifierTimeout,
    /// `tests/test.sh` could not be run at all.
    VerifierFailed,
    /// test.sh finished but wrote neither `reward.json` nor `reward.txt`.
    VerifierRewardMissing,
    /// The reward file is empty or not a number / object of numbers.
    VerifierRewardInvalid,
    /// The memory limit was hit while `tests/test.sh` ran (the OOM killer ended one of its
    /// processes) and it wrote no reward.
    VerifierOutOfMemory,
    /// The trial was cancelled (Ctrl-C, SIGTERM, `rollout jobs kill`).
    Cancelled,
    /// A bug or an unexpected host-side failure (disk full writing results …).
    InternalError,
}

/// Who is to blame for an error: decides retries and the job's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The machine, engine or image: retryable, says nothing about the agent.
    Infrastructure,
    /// The agent did something wrong or too slowly.
    Agent,
    /// The model provider failed (rate limits, auth, unknown model, outages).
    Provider,
    /// The task's verifier misbehaved.
    Verifier,
    /// The user or signal stopped it.
    Cancelled,
    /// Host-side bug.
    Internal,
    /// The task itself cannot run here (invalid files, unsupported requirements): not
    /// retried, says nothing about the agent.
    Task,
}

impl ErrorKind {
    /// Every kind, in declaration order (for docs and exhaustive tests).
    pub const ALL: [ErrorKind; 27] = [
        Self::EnvironmentBuildFailed,
        Self::EnvironmentBuildTimeout,
        Self::EnvironmentImagePullFailed,
        Self::EnvironmentStartFailed,
        Self::EnvironmentHealthcheckFailed,
        Self::EnvironmentApiError,
        Self::EnvironmentTeardownFailed,
        Self::EnvironmentUnsupported,
        Self::TaskInvalid,
        Self::AgentInstallFailed,
        Self::AgentInstallTimeout,
        Self::AgentExecutionFailed,
        Self::AgentExecutionTimeout,
        Self::AgentOutOfMemory,
        Self::AgentConfigInvalid,
        Self::ApiRateLimit,
        Self::ApiAuth,
        Self::ContextWindowExceeded,
        Self::ModelNotFound,
        Self::ApiError,
        Self::VerifierTimeout,
        Self::VerifierFailed,
        Self::VerifierRewardMissing,
        Self::VerifierRewardInvalid,
        Self::VerifierOutOfMemory,
        Self::Cancelled,
        Self::InternalError,
    ];

    /// The class of this kind.
    pub fn class(self) -> ErrorClass {
        use ErrorKind::*;
        match self {
            EnvironmentBuildFailed
            | EnvironmentBuildTimeout
            | EnvironmentImagePullFailed
            | EnvironmentStartFailed
            | EnvironmentHealthcheckFailed
            | EnvironmentApiError
            | EnvironmentTeardownFailed => ErrorClass::Infrastructure,
            EnvironmentUnsupported | TaskInvalid => ErrorClass::Task,
            AgentInstallFailed
            | AgentInstallTimeout
            | AgentExecutionFailed
            | AgentExecutionTimeout
            | AgentOutOfMemory
            | AgentConfigInvalid => ErrorClass::Agent,
            ApiRateLimit | ApiAuth | ContextWindowExceeded | ModelNotFound | ApiError => {
                ErrorClass::Provider
            }
            VerifierTimeout
            | VerifierFailed
            | VerifierRewardMissing
            | VerifierRewardInvalid
            | VerifierOutOfMemory => ErrorClass::Verifier,
            Cancelled => ErrorClass::Cancelled,
            InternalError => ErrorClass::Internal,
        }
    }

    /// Whether the retry policy retries a trial that ended with this kind: infrastructure
    /// failures and transient provider failures (rate limits, outages). Agent and verifier
    /// outcomes, and deterministic provider refusals (auth, unknown model, context), are not.
    pub fn retryable(self) -> bool {
        (self.class() == ErrorClass::Infrastructure && self != ErrorKind::EnvironmentUnsupported)
            || matches!(self, ErrorKind::ApiRateLimit | ErrorKind::ApiError)
    }

    /// The snake_case name used in JSON and logs.
    pub fn as_str(self) -> &'static str {
        use ErrorKind::*;
        match self {
            EnvironmentBuildFailed => "environment_build_failed",
            EnvironmentBuildTimeout => "environment_build_timeout",
            EnvironmentImagePullFailed => "environment_image_pull_failed",
            EnvironmentStartFailed => "environment_start_failed",
            EnvironmentHealthcheckFailed => "environment_healthcheck_failed",
            EnvironmentApiError => "environment_api_error",
            EnvironmentTeardownFailed => "environment_teardown_failed",
            EnvironmentUnsupported => "environment_unsupported",
            TaskInvalid => "task_invalid",
            AgentInstallFailed => "agent_install_failed",
            AgentInstallTimeout => "agent_install_timeout",
            AgentExecutionFailed => "agent_execution_failed",
            AgentExecutionTimeout => "agent_execution_timeout",
            AgentOutOfMemory => "agent_out_of_memory",
            AgentConfigInvalid => "agent_config_invalid",
            ApiRateLimit => "api_rate_limit",
            ApiAuth => "api_auth",
            ContextWindowExceeded => "context_window_exceeded",
            ModelNotFound => "model_not_found",
            ApiError => "api_error",
            VerifierTimeout => "verifier_timeout",
            VerifierFailed => "verifier_failed",
            VerifierRewardMissing => "verifier_reward_missing",
            VerifierRewardInvalid => "verifier_reward_invalid",
            VerifierOutOfMemory => "verifier_out_of_memory",
            Cancelled => "cancelled",
            InternalError => "internal_error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_name_matches_as_str() {
        for kind in ErrorKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            let back: ErrorKind = serde_json::from_str(&json).unwrap();
            assert_eq!(back, kind);
        }
    }

    #[test]
    fn retryable_kinds() {
        assert!(ErrorKind::EnvironmentBuildFailed.retryable());
        assert!(ErrorKind::ApiRateLimit.retryable());
        assert!(!ErrorKind::ApiAuth.retryable());
        assert!(!ErrorKind::EnvironmentUnsupported.retryable());
        assert!(!ErrorKind::AgentExecutionTimeout.retryable());
        assert!(!ErrorKind::VerifierRewardMissing.retryable());
        assert!(!ErrorKind::TaskInvalid.retryable());
        assert!(!ErrorKind::EnvironmentUnsupported.retryable());
    }

    #[test]
    fn only_environment_kinds_are_infrastructure() {
        for kind in ErrorKind::ALL {
            assert_eq!(
                kind.class() == ErrorClass::Infrastructure,
                kind.as_str().starts_with("environment_")
                    && kind != ErrorKind::EnvironmentUnsupported,
                "{kind}"
            );
        }
    }
}
