//! Typed environment errors, each mapping to one trial error kind.

use rollout_core::ErrorKind;

/// What went wrong in an environment operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EnvError {
    #[error("building image {image} failed: {message}")]
    BuildFailed {
        image: String,
        message: String,
        log: String,
    },
    #[error("building image {image} took longer than its {seconds:.0} s build timeout (raise [environment] build_timeout_sec or --timeout-multiplier)")]
    BuildTimeout {
        image: String,
        seconds: f64,
        log: String,
    },
    #[error("image {image} is not local and could not be pulled: {message}")]
    PullFailed { image: String, message: String },
    #[error("could not start the environment: {0}")]
    StartFailed(String),
    #[error("the environment never became healthy: {0}")]
    Unhealthy(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("Docker engine not reachable ({0}); start it (scripts/setup does) or set DOCKER_HOST")]
    EngineUnreachable(String),
    #[error("Kubernetes cluster not reachable ({0}); check KUBECONFIG and the context, or start the test cluster with scripts/k8s-test-cluster up")]
    ClusterUnreachable(String),
    #[error("pod {pod} did not start within {seconds:.0} s ({reason}); its events: {events}")]
    PodNotStarted {
        pod: String,
        reason: String,
        seconds: f64,
        events: String,
    },
    #[error("pod {pod} stopped while the trial used it ({reason}): {message}")]
    PodLost {
        pod: String,
        reason: String,
        message: String,
    },
    #[error("container engine error while {context}: {message}")]
    Api { context: String, message: String },
    #[error("{context}: {message}")]
    Host { context: String, message: String },
}

impl EnvError {
    /// The trial error kind this error ends a trial with.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EnvError::BuildFailed { .. } => ErrorKind::EnvironmentBuildFailed,
            EnvError::BuildTimeout { .. } => ErrorKind::EnvironmentBuildTimeout,
            EnvError::PullFailed { .. } => ErrorKind::EnvironmentImagePullFailed,
            EnvError::StartFailed(_) | EnvError::PodNotStarted { .. } => {
                ErrorKind::EnvironmentStartFailed
            }
            EnvError::ClusterUnreachable(_) | EnvError::PodLost { .. } => {
                ErrorKind::EnvironmentApiError
            }
            EnvError::Unhealthy(_) => ErrorKind::EnvironmentHealthcheckFailed,
            EnvError::Unsupported(_) => ErrorKind::EnvironmentUnsupported,
            EnvError::EngineUnreachable(_) | EnvError::Api { .. } => ErrorKind::EnvironmentApiError,
            EnvError::Host { .. } => ErrorKind::InternalError,
        }
    }

    /// The build output that goes with a build error, if any.
    pub fn build_log(&self) -> Option<&str> {
        match self {
            EnvError::BuildFailed { log, .. } | EnvError::BuildTimeout { log, .. } => Some(log),
            _ => None,
        }
    }

    pub(crate) fn api(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        EnvError::Api {
            context: context.into(),
            message: err.to_string(),
        }
    }

    pub(crate) fn host(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        EnvError::Host {
            context: context.into(),
            message: err.to_string(),
        }
    }
}
