//! `rollout tasks check`.

use crate::cli::CheckArgs;
use crate::exit;
use rollout_core::task::{discover, Severity};

pub fn check(args: CheckArgs) -> u8 {
    let mut errors = 0usize;
    let mut warnings = 0usize;
    let mut ok = 0usize;
    for path in &args.paths {
        match discover(path) {
            Ok(tasks) => {
                for t in tasks {
                    let findings = t.findings();
                    if findings.is_empty() {
                        println!("ok      {}", t.name);
                    }
                    for f in &findings {
                        match f.severity {
                            Severity::Error => errors += 1,
                            Severity::Warning => warnings += 1,
                        }
                        let tag = if f.severity == Severity::Error {
                            "error"
                        } else {
                            "warning"
                        };
                        println!("{tag:<7} {}: {}: {}", t.name, f.path.display(), f.message);
                    }
                    if !findings.iter().any(|f| f.severity == Severity::Error) {
                        ok += 1;
                    }
                }
            }
            Err(errs) => {
                for e in errs {
                    errors += 1;
                    println!("error   {e}");
                }
            }
        }
    }
    println!("{ok} task(s) ok, {errors} error(s), {warnings} warning(s)");
    if errors > 0 {
        exit::TRIAL_ERRORS
    } else {
        exit::OK
    }
}
