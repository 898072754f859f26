//! Ctrl-C and SIGTERM: the first cancels (running trials stop, containers are removed, results
//! are written); the second stops waiting but still removes this job's containers, then exits 130.

use rollout_env::Provider;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

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
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot watch SIGTERM: {e}");
                    return;
                }
            };
        let next = async |term: &mut tokio::signal::unix::Signal| {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        };
        next(&mut term).await;
        eprintln!("\nrollout: cancelling: no new trials start; running trials stop and their containers are removed. Press Ctrl-C again to stop waiting.");
        cancel.cancel();
        next(&mut term).await;
        eprintln!("rollout: removing this job's containers and exiting");
        let sweep = provider.remove_labelled(rollout_core::labels::JOB, &job_id);
        match tokio::time::timeout(std::time::Duration::from_secs(30), sweep).await {
            Ok(Ok(n)) => eprintln!("rollout: removed {n} container(s)"),
            Ok(Err(e)) => eprintln!("rollout: could not remove containers: {e}; run `docker ps -a --filter label=io.rollout.job={job_id}`"),
            Err(_) => eprintln!("rollout: removing containers timed out; run `docker ps -a --filter label=io.rollout.job={job_id}`"),
        }
        std::process::exit(crate::exit::CANCELLED as i32);
    });
}
