//! `rollout gc`.

use crate::cli::GcArgs;
use crate::exit;
use rollout_env::gc::GcOptions;

pub fn main(args: GcArgs) -> u8 {
    if args.env == Some(crate::cli::EnvKind::Kubernetes) {
        return crate::kube_cmd::gc(args);
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("error: cannot start the async runtime");
        return exit::TRIAL_ERRORS;
    };
    rt.block_on(async {
        let provider = match rollout_launch::provider::docker().await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::TRIAL_ERRORS;
            }
        };
        let opts = GcOptions {
            dry_run: args.dry_run,
            images: args.images,
            keep_per_env: args.keep_images,
            budget: args.images_budget,
        };
        let items = match provider.gc(&rollout_runner::host_name(), opts).await {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::TRIAL_ERRORS;
            }
        };
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
        if failed > 0 {
            exit::TRIAL_ERRORS
        } else {
            exit::OK
        }
    })
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
