//! `--max-errors N`: a job stops starting trials once N have ended with infrastructure or
//! provider errors, so a broken environment or a wrong key does not burn the whole job.

mod common;

use common::*;

#[test]
fn a_job_stops_starting_trials_after_max_errors() {
    let r = run_task(
        &fixture("build-fails"),
        "oracle",
        &["-k", "4", "-n", "1", "--max-errors", "2"],
    );
    let job = r.job_result();
    let trials = r.trials();
    assert_eq!(trials.len(), 2, "two failed, then nothing started: {job:#}");
    for t in &trials {
        assert_eq!(t["error"]["type"], "environment_build_failed", "{t}");
    }
    assert_eq!(job["n_not_started"], 2, "{job:#}");
    assert!(
        r.stderr().contains("max_errors 2") || r.stdout().contains("max_errors 2"),
        "the stop is explained:\n{}",
        r.stderr()
    );
    r.assert_no_containers();
}

#[test]
fn max_errors_zero_is_refused() {
    let r = run_task(&fixture("build-fails"), "oracle", &["--max-errors", "0"]);
    assert_ne!(r.code(), 0);
    assert!(r.stderr().contains("max_errors"), "{}", r.stderr());
}
