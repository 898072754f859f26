//! `rollout tasks check`.

use crate::cli::CheckArgs;
use crate::exit;
use rollout_core::task::Severity;

pub fn check(args: CheckArgs) -> u8 {
    let r = rollout_core::task::check_paths(&args.paths);
    if args.json {
        crate::print_json(&r);
    } else {
        for t in &r.tasks {
            if t.findings.is_empty() {
                println!("ok      {}", t.name);
            }
            for f in &t.findings {
                let tag = match f.severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                };
                println!("{tag:<7} {}: {}: {}", t.name, f.path.display(), f.message);
            }
        }
        for e in &r.load_errors {
            println!("error   {e}");
        }
        println!(
            "{} task(s) ok, {} error(s), {} warning(s)",
            r.n_ok, r.n_errors, r.n_warnings
        );
    }
    if r.ok {
        exit::OK
    } else {
        exit::TRIAL_ERRORS
    }
}
