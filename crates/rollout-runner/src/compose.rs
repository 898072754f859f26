//! The compose file of a multi-container task, read for one trial.

use rollout_core::compose::{self, ComposeProject, MAIN_IMAGE_PLACEHOLDER};
use rollout_core::result::ErrorInfo;
use rollout_core::{ErrorKind, Task};
use rollout_env::{EnvSpec, Provider};
use std::collections::BTreeMap;

/// Read the task's compose file, if any, with the variables Harbor gives compose files: the
/// task's `[environment] env`, then its own (`MAIN_IMAGE_NAME`, `CONTEXT_DIR`, `CPUS`,
/// `MEMORY`), which win. A key rollout does not run faithfully fails the trial with
/// `environment_unsupported`, before any image is built or container started.
pub(crate) fn load(
    task: &Task,
    spec: &EnvSpec,
    provider: &dyn Provider,
) -> Result<Option<ComposeProject>, ErrorInfo> {
    let env_dir = task.environment_dir();
    let Some(file) = compose::find(&env_dir) else {
        return Ok(None);
    };
    if !provider.supports_compose() {
        // Never run main without its services.
        return Err(ErrorInfo::new(
            ErrorKind::EnvironmentUnsupported,
            format!(
                "multi-container task refused: the {} provider does not run docker-compose services ({}); run it with --env docker",
                provider.name(),
                file.display()
            ),
        ));
    }
    let (mut vars, _) = rollout_core::envvars::expand_map(&task.config.environment.env);
    let infra = BTreeMap::from([
        ("MAIN_IMAGE_NAME", MAIN_IMAGE_PLACEHOLDER.to_string()),
        ("CONTEXT_DIR", env_dir.display().to_string()),
        ("CPUS", spec.cpus.to_string()),
        ("MEMORY", format!("{}M", spec.memory_mb)),
    ]);
    vars.extend(infra.into_iter().map(|(k, v)| (k.to_string(), v)));
    let project = compose::load(&env_dir, &vars).map_err(|e| {
        ErrorInfo::new(
            ErrorKind::EnvironmentUnsupported,
            format!("multi-container task refused: {e}"),
        )
    })?;
    if let Some(why) = project
        .as_ref()
        .and_then(|p| provider.compose_unsupported(p))
    {
        return Err(ErrorInfo::new(
            ErrorKind::EnvironmentUnsupported,
            format!(
                "multi-container task refused on the {} provider: {why}",
                provider.name()
            ),
        ));
    }
    Ok(project)
}
