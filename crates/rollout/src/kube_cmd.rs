//! `--env kubernetes`: checking a job's cluster settings before it starts, making the provider,
//! and `rollout gc --env kubernetes`.

use crate::cli::GcArgs;
use crate::exit;
use rollout_core::job_config::EnvironmentType;
use rollout_core::{JobConfig, Task};
use rollout_env::Provider;
use rollout_kube::{KubeProvider, KubeSettings};
use std::sync::Arc;

/// Refuse a job that cannot run on a cluster before anything starts: bad `environment:` keys,
/// or tasks built from a Dockerfile with no registry to push them to.
pub fn check(config: &JobConfig, tasks: &[Task]) -> Result<(), String> {
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

/// The Kubernetes provider when the job asks for it; `None` for other environment types.
pub async fn provider_for(config: &JobConfig) -> Option<Result<Arc<dyn Provider>, String>> {
    if config.environment.kind != EnvironmentType::Kubernetes {
        return None;
    }
    Some(
        async {
            let settings = KubeSettings::from_job(&config.environment.extra)?;
            let p = KubeProvider::connect(settings)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(p) as Arc<dyn Provider>)
        }
        .await,
    )
}

/// Whether the cluster of `config` answers (for `rollout preflight`): a note, or what failed.
pub async fn reachable(config: &JobConfig) -> Result<String, String> {
    let settings = KubeSettings::from_job(&config.environment.extra)?;
    let p = KubeProvider::connect(settings)
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "Kubernetes API server answers; pods go to namespace {}",
        p.namespace()
    ))
}

/// `rollout gc --env kubernetes`.
pub fn gc(args: GcArgs) -> u8 {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("error: cannot start the async runtime");
        return exit::TRIAL_ERRORS;
    };
    rt.block_on(async {
        let settings = match KubeSettings::from_job(&Default::default()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::USAGE;
            }
        };
        let provider = match KubeProvider::connect(settings).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::TRIAL_ERRORS;
            }
        };
        let items = match provider.gc(&rollout_runner::host_name(), args.dry_run).await {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::TRIAL_ERRORS;
            }
        };
        let failed = crate::gc::print_items(&items, false);
        println!(
            "{} item(s) in namespace {}{}",
            items.len(),
            provider.namespace(),
            if args.dry_run {
                " (dry run: nothing removed)"
            } else {
                ""
            }
        );
        if args.images {
            println!("images: --images applies to the local Docker engine; run `rollout gc --images` for them");
        }
        if failed > 0 {
            exit::TRIAL_ERRORS
        } else {
            exit::OK
        }
    })
}
