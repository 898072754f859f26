//! `rollout gc --env kubernetes`.

use crate::cli::GcArgs;
use crate::exit;

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
        let provider = match rollout_launch::provider::kube(&Default::default()).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return if e.is_usage() {
                    exit::USAGE
                } else {
                    exit::TRIAL_ERRORS
                };
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
