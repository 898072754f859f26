//! Ctrl-C and SIGTERM: the first cancels (running trials stop, containers are removed, results
//! are written); the second stops waiting but still removes this job's containers, then exits 130.

use rollout_env::Provider;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The exit status of a cancelled command (128 + SIGINT).
pub const CANCELLED_EXIT: i32 = 130;

/// The one Ctrl-C/SIGTERM watcher: the first SIGINT or SIGTERM runs `first`, the second runs
/// `second` (to its end). Used by `rollout run` (cancel, then sweep and exit), `rollout pipeline
/// run` (stop stages, then teardown) and `rollout serve` (drain).
pub fn on_interrupt<F, S, Fut>(first: F, second: S)
where
    F: FnOnce() + Send + 'static,
    S: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::warn!("cannot watch SIGTERM/SIGINT");
            return;
        };
        let mut next = async || {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
        };
        next().await;
        first();
        next().await;
        second().await;
    });
}

/// A server's shutdown: the first SIGTERM or SIGINT cancels `stop` (after printing `message`).
pub fn shutdown_on_signal(stop: CancellationToken, message: &'static str) {
    on_interrupt(
        move || {
            eprintln!("{message}");
            stop.cancel();
        },
        || async {},
    );
}

/// SIGUSR1 pauses the job (no new trial starts), SIGUSR2 resumes it: what `rollout jobs
/// pause|resume` send from another terminal.
pub fn watch_pause(pause: Arc<tokio::sync::watch::Sender<bool>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut usr1), Ok(mut usr2)) = (
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
    ) else {
        tracing::warn!(
            "cannot watch SIGUSR1/SIGUSR2: pausing from another terminal is unavailable"
        );
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = usr1.recv() => { pause.send_replace(true); }
                _ = usr2.recv() => { pause.send_replace(false); }
            }
        }
    });
}

/// Watch for SIGINT/SIGTERM for the job `job_id`.
pub fn watch(cancel: CancellationToken, provider: Arc<dyn Provider>, job_id: String) {
    let id = job_id.clone();
    on_interrupt(
        move || {
            eprintln!("\nrollout: cancelling: no new trials start; running trials stop and their containers are removed. Press Ctrl-C again to stop waiting.");
            cancel.cancel();
            watchdog(id);
        },
        move || async move {
            eprintln!("rollout: removing this job's containers and exiting");
            let sweep = provider.remove_labelled(rollout_core::labels::JOB, &job_id);
            match tokio::time::timeout(std::time::Duration::from_secs(30), sweep).await {
                Ok(Ok(n)) => eprintln!("rollout: removed {n} container(s)"),
                Ok(Err(e)) => eprintln!("rollout: could not remove containers: {e}; run `docker ps -a --filter label=io.rollout.job={job_id}`"),
                Err(_) => eprintln!("rollout: removing containers timed out; run `docker ps -a --filter label=io.rollout.job={job_id}`"),
            }
            std::process::exit(CANCELLED_EXIT);
        },
    );
}

/// How long a cancelled run may take to stop its trials, remove its containers and write its
/// results before the process exits anyway.
pub const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(90);

/// Cancellation always wins: a plain thread (independent of the async runtime, so that nothing
/// blocking it can stop this) ends the process [`CANCEL_GRACE`] after the first signal.
/// Containers left behind carry this process's labels; `rollout gc` removes them.
fn watchdog(job_id: String) {
    std::thread::spawn(move || {
        std::thread::sleep(CANCEL_GRACE);
        eprintln!(
            "rollout: still not stopped {} s after the signal: exiting; `rollout gc` removes what is left (job {job_id})",
            CANCEL_GRACE.as_secs()
        );
        std::process::exit(CANCELLED_EXIT);
    });
}
