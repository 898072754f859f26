//! One contract command: `bash -c CMD` through an [`rollout_env::Environment`] (the host's
//! `local` environment, or a container), stdin closed, with a deadline (the whole process group
//! is killed on expiry or cancellation) and capped output (the tail of each stream is kept; the
//! byte counts say how much there was).

use crate::sandbox::Sandbox;
use std::path::Path;
use std::time::Duration;
#[cfg(test)]
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Exit status reported for a command killed at its deadline.
pub const RC_TIMEOUT: i32 = 124;
/// Exit status reported for a command the policy refused (it never ran).
pub const RC_BLOCKED: i32 = 126;
/// Exit status reported for a command stopped by Ctrl-C / SIGTERM.
pub const RC_CANCELLED: i32 = 130;
/// Exit status reported for a command killed for writing more than [`MAX_OUTPUT`].
pub const RC_OUTPUT_LIMIT: i32 = 137;
/// Bytes one command may write to either stream before it is killed.
pub const MAX_OUTPUT: u64 = rollout_env::exec::DEFAULT_MAX_OUTPUT;
/// Default bytes kept of each stream.
pub const DEFAULT_OUTPUT_CAP: usize = 2 << 20;

/// What to run.
pub struct CmdSpec<'a> {
    pub cmd: &'a str,
    pub workdir: &'a Path,
    /// Variables set on top of the inherited environment.
    pub env: &'a [(String, String)],
    pub timeout: Duration,
    /// Give the command the terminal's stdin (guided interactive auth); otherwise /dev/null.
    pub inherit_stdin: bool,
    pub output_cap: usize,
}

/// How it ended.
#[derive(Debug, Clone, Default)]
pub struct CmdOutput {
    /// Exit status; 124 on timeout, 130 when cancelled, 128+N when killed by signal N.
    pub rc: i32,
    pub timed_out: bool,
    pub cancelled: bool,
    /// Killed for writing more than [`MAX_OUTPUT`] bytes.
    pub output_limit_exceeded: bool,
    pub seconds: f64,
    /// The last `output_cap` bytes of each stream.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Bytes written in all.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

/// Run one command on the host (a [`Sandbox::host`]); an error only when it could not be
/// started.
pub async fn run(spec: &CmdSpec<'_>, cancel: &CancellationToken) -> std::io::Result<CmdOutput> {
    Sandbox::host().run(spec, cancel).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(cmd: &'a str, dir: &'a Path, secs: f64) -> CmdSpec<'a> {
        CmdSpec {
            cmd,
            workdir: dir,
            env: &[],
            timeout: Duration::from_secs_f64(secs),
            inherit_stdin: false,
            output_cap: 16,
        }
    }

    #[tokio::test]
    async fn exit_codes_output_caps_and_timeouts() {
        let d = tempfile::tempdir().unwrap();
        let c = CancellationToken::new();
        let o = run(
            &spec("printf 0123456789abcdefXYZ; exit 3", d.path(), 10.0),
            &c,
        )
        .await
        .unwrap();
        assert_eq!(o.rc, 3);
        assert_eq!(o.stdout, b"3456789abcdefXYZ");
        assert_eq!(o.stdout_bytes, 19);
        // The deadline kills the whole group, grandchildren included.
        let pidfile = d.path().join("grandchild.pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
        let o = run(&spec(&script, d.path(), 1.0), &c).await.unwrap();
        assert!(
            o.timed_out && o.rc == RC_TIMEOUT && o.seconds < 5.0,
            "{o:?}"
        );
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .to_string();
        let gone = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.split_whitespace().nth(2) == Some("Z"))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone() {
            assert!(
                Instant::now() < deadline,
                "grandchild {pid} outlived the timeout"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn cancellation_stops_the_command() {
        let d = tempfile::tempdir().unwrap();
        let c = CancellationToken::new();
        let c2 = c.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            c2.cancel();
        });
        let o = run(&spec("sleep 30", d.path(), 60.0), &c).await.unwrap();
        assert!(o.cancelled && o.rc == RC_CANCELLED, "{o:?}");
    }
}
