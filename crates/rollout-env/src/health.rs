//! Waiting for an environment's healthcheck, with Docker's semantics.

use crate::{EnvError, Environment, ExecRequest};
use rollout_core::task_config::Healthcheck;
use rollout_core::timeouts::seconds;
use std::time::Instant;

/// Run `check` until it passes. Failures during the start period do not count; `retries`
/// consecutive failures after it are an [`EnvError::Unhealthy`] carrying the last output.
pub async fn wait_healthy(env: &dyn Environment, check: &Healthcheck) -> Result<u32, EnvError> {
    let started = Instant::now();
    let start_period = seconds(check.start_period_sec);
    let interval = seconds(check.interval_sec);
    let mut failures = 0u32;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let mut req = ExecRequest::sh(check.command.clone(), seconds(check.timeout_sec));
        req.output_cap = 4096;
        let out = env.exec(req).await?;
        if out.success() {
            return Ok(attempts);
        }
        if started.elapsed() >= start_period {
            failures += 1;
        }
        if failures >= check.retries.max(1) {
            let why = if out.timed_out {
                format!("the check timed out after {} s", check.timeout_sec)
            } else {
                format!(
                    "exit code {}",
                    out.exit_code.map_or("none".into(), |c| c.to_string())
                )
            };
            let tail = out.stderr.to_text();
            let tail = tail.trim();
            return Err(EnvError::Unhealthy(format!(
                "`{}` failed {failures} times after a {} s start period ({why}){}",
                check.command,
                check.start_period_sec,
                if tail.is_empty() {
                    String::new()
                } else {
                    format!("; last stderr: {tail}")
                }
            )));
        }
        // Polling interval of the healthcheck protocol itself (`start_interval_sec` during the
        // start period).
        let pause = match check.start_interval_sec {
            Some(s) if started.elapsed() < start_period => seconds(s),
            _ => interval,
        };
        tokio::time::sleep(pause).await;
    }
}
