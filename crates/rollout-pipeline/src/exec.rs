//! One contract command on the host: `bash -c CMD` in its own process group, stdin closed, with a
//! deadline (the whole group is killed on expiry or cancellation) and capped output (the tail of
//! each stream is kept; the byte counts say how much there was).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// Exit status reported for a command killed at its deadline.
pub const RC_TIMEOUT: i32 = 124;
/// Exit status reported for a command the policy refused (it never ran).
pub const RC_BLOCKED: i32 = 126;
/// Exit status reported for a command stopped by Ctrl-C / SIGTERM.
pub const RC_CANCELLED: i32 = 130;
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
    pub seconds: f64,
    /// The last `output_cap` bytes of each stream.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Bytes written in all.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

async fn read_capped<R: tokio::io::AsyncRead + Unpin>(r: Option<R>, cap: usize) -> (Vec<u8>, u64) {
    let mut kept = Vec::new();
    let mut total = 0u64;
    if let Some(mut r) = r {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    total += n as u64;
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > 2 * cap.max(1) {
                        kept.drain(..kept.len() - cap);
                    }
                }
            }
        }
    }
    if kept.len() > cap {
        kept.drain(..kept.len() - cap);
    }
    (kept, total)
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill(2) on the negative pid signals the process group the child leads
        // (process_group(0) made its pid the group id); no memory is involved.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// Run one command; an error only when it could not be started.
pub async fn run(spec: &CmdSpec<'_>, cancel: &CancellationToken) -> std::io::Result<CmdOutput> {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-c")
        .arg(spec.cmd)
        .current_dir(spec.workdir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if spec.inherit_stdin {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in spec.env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let cap = spec.output_cap;
    let out = tokio::spawn(read_capped(child.stdout.take(), cap));
    let err = tokio::spawn(read_capped(child.stderr.take(), cap));
    let (mut timed_out, mut cancelled) = (false, false);
    let status = tokio::select! {
        s = child.wait() => s.ok(),
        _ = tokio::time::sleep(spec.timeout) => { timed_out = true; None }
        _ = cancel.cancelled() => { cancelled = true; None }
    };
    let status = match status {
        Some(s) => Some(s),
        None => {
            kill_group(pid);
            let _ = child.kill().await;
            child.wait().await.ok();
            None
        }
    };
    // A background process the command started may keep the pipes open: do not wait for it.
    let grace = Duration::from_secs(if status.is_some() { 5 } else { 1 });
    let (stdout, stdout_bytes) = tokio::time::timeout(grace, out)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let (stderr, stderr_bytes) = tokio::time::timeout(grace, err)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let rc = match status {
        _ if timed_out => RC_TIMEOUT,
        _ if cancelled => RC_CANCELLED,
        Some(s) => {
            use std::os::unix::process::ExitStatusExt;
            s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
        }
        None => RC_CANCELLED,
    };
    Ok(CmdOutput {
        rc,
        timed_out,
        cancelled,
        seconds: started.elapsed().as_secs_f64(),
        stdout,
        stderr,
        stdout_bytes,
        stderr_bytes,
    })
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
