//! Picking the environment provider: the one place every command (run, resume, kill, gc,
//! preflight, serve) gets its Docker engine or Kubernetes cluster from.

use crate::LaunchError;
use rollout_core::job_config::EnvironmentType;
use rollout_core::{JobConfig, Task};
use rollout_env::docker::{DockerProvider, EngineLimits};
use rollout_env::Provider;
use rollout_kube::{KubeProvider, KubeSettings};
use std::sync::Arc;

/// Refuse a job its provider cannot run before anything starts: an environment type this build
/// does not have; on Kubernetes, bad `environment:` keys, or tasks built from a Dockerfile with
/// no registry to push them to.
pub fn check(config: &JobConfig, tasks: &[Task]) -> Result<(), LaunchError> {
    match config.environment.kind {
        EnvironmentType::Docker => Ok(()),
        EnvironmentType::Kubernetes => check_kube(config, tasks).map_err(LaunchError::Invalid),
        other => Err(LaunchError::Invalid(format!(
            "environment type {other:?} is not available in this build of rollout; use --env docker"
        ))),
    }
}

fn check_kube(config: &JobConfig, tasks: &[Task]) -> Result<(), String> {
    let settings = KubeSettings::from_job(&config.environment.extra)?;
    if settings.image_registry.is_none() {
        if let Some(t) = tasks
            .iter()
            .find(|t| t.config.environment.docker_image.is_none())
        {
            return Err(format!(
                "task {} builds its image from a Dockerfile, and on Kubernetes images must come from a registry: \
                 set environment.image_registry in the job file (or {}) to a registry this machine's Docker can push to \
                 and the cluster can pull from",
                t.name,
                rollout_kube::settings::REGISTRY_VAR
            ));
        }
    }
    Ok(())
}

/// The provider of the job's environment type.
pub async fn connect(config: &JobConfig) -> Result<Arc<dyn Provider>, LaunchError> {
    match config.environment.kind {
        EnvironmentType::Kubernetes => Ok(Arc::new(kube(config).await?)),
        _ => Ok(Arc::new(docker().await?)),
    }
}

/// The local Docker engine.
pub async fn docker() -> Result<DockerProvider, LaunchError> {
    DockerProvider::connect(EngineLimits::default())
        .await
        .map_err(|e| LaunchError::Provider(e.to_string()))
}

/// The cluster of the job's `environment:` settings (ROLLOUT_K8S_* / the kubeconfig's when the
/// job sets none).
pub async fn kube(config: &JobConfig) -> Result<KubeProvider, LaunchError> {
    let settings =
        KubeSettings::from_job(&config.environment.extra).map_err(LaunchError::Invalid)?;
    KubeProvider::connect(settings)
        .await
        .map_err(|e| LaunchError::Provider(e.to_string()))
}

/// Whether the cluster of `config` answers (for `rollout preflight`): a note, or what failed.
pub async fn kube_reachable(config: &JobConfig) -> Result<String, String> {
    let p = kube(config).await.map_err(|e| e.to_string())?;
    Ok(format!(
        "Kubernetes API server answers; pods go to namespace {}",
        p.namespace()
    ))
}
