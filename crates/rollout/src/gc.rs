//! `rollout gc`.

use crate::cli::GcArgs;
use crate::error::{exit, CliError, CliResult};
use rollout_env::gc::GcOptions;

pub fn main(args: GcArgs) -> CliResult {
    let rt = crate::error::runtime(Some(1))?;
    if args.env == Some(crate::cli::ContainerEnv::Kubernetes) {
        return rt.block_on(kube(args));
    }
    rt.block_on(async {
        let provider = rollout_launch::provider::docker()
            .await
            .map_err(CliError::failed)?;
        let opts = GcOptions {
            dry_run: args.dry_run,
            images: args.images,
            keep_per_env: args.keep_images,
            budget: args.images_budget,
        };
        let items = provider
            .gc(&rollout_runner::host_name(), opts)
            .await
            .map_err(CliError::failed)?;
        if args.json {
            return Ok(json_out(&items, "docker", None, args.dry_run));
        }
        let failed = print_items(&items, true);
        println!(
            "{} item(s){}",
            items.len(),
            if args.dry_run {
                " (dry run: nothing removed)"
            } else {
                ""
            }
        );
        Ok(if failed > 0 {
            exit::TRIAL_ERRORS
        } else {
            exit::OK
        })
    })
}

/// `rollout gc --env kubernetes`: the namespace's orphans.
async fn kube(args: GcArgs) -> CliResult {
    let provider = rollout_launch::provider::kube(&Default::default()).await?;
    let items = provider
        .gc(&rollout_runner::host_name(), args.dry_run)
        .await
        .map_err(CliError::failed)?;
    if args.json {
        let ns = Some(provider.namespace());
        return Ok(json_out(&items, "kubernetes", ns, args.dry_run));
    }
    let failed = print_items(&items, false);
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
    Ok(if failed > 0 {
        exit::TRIAL_ERRORS
    } else {
        exit::OK
    })
}

/// `--json`: one document (docs/cli-json.md); the exit status as without it.
fn json_out(items: &[rollout_env::gc::GcItem], env: &str, ns: Option<&str>, dry: bool) -> u8 {
    let n_failed = items.iter().filter(|i| i.error.is_some()).count();
    crate::print_json(&serde_json::json!({
        "env": env, "namespace": ns, "dry_run": dry, "items": items, "n_failed": n_failed,
    }));
    if n_failed > 0 {
        exit::TRIAL_ERRORS
    } else {
        exit::OK
    }
}

/// Print one line per collected item (with the short id when `with_id`); returns how many
/// could not be removed.
pub(crate) fn print_items(items: &[rollout_env::gc::GcItem], with_id: bool) -> usize {
    let mut failed = 0;
    for i in items {
        let id: String = if with_id {
            let short: String =
                i.id.trim_start_matches("sha256:")
                    .chars()
                    .take(12)
                    .collect();
            format!("{short} ")
        } else {
            String::new()
        };
        let state = match (&i.error, i.removed) {
            (Some(e), _) => {
                failed += 1;
                format!("not removed: {e}")
            }
            (None, true) => "removed".into(),
            (None, false) => "would remove".into(),
        };
        let job = i
            .job
            .as_deref()
            .map(|j| format!(" job {j}"))
            .unwrap_or_default();
        println!("{:<9} {id}{}{job}: {} ({state})", i.kind, i.name, i.reason);
    }
    failed
}
