//! The git state of a working directory, as recorded with each job.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where in git a job ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitInfo {
    /// Top of the work tree (absolute path).
    pub repo: String,
    /// `HEAD` commit.
    pub commit: String,
    /// Branch name (None when detached).
    pub branch: Option<String>,
    /// Tracked files differ from `HEAD`.
    pub dirty: bool,
    /// `remote.origin.url`, when set.
    pub remote: Option<String>,
}

/// Each git query is bounded: a hung git (a network filesystem, a lock) cannot hang a job.
const GIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Output kept from a git query.
const GIT_OUTPUT_CAP: usize = 64 * 1024;

/// Run `git -C dir ARGS`, returning trimmed stdout on success.
pub fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let mut child = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = Vec::new();
        let _ = (&mut stdout)
            .take(GIT_OUTPUT_CAP as u64)
            .read_to_end(&mut buf);
        // Drain the rest so git never blocks on a full pipe.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        buf
    });
    let deadline = Instant::now() + GIT_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let out = reader.join().ok()?;
    status
        .success()
        .then(|| String::from_utf8_lossy(&out).trim().to_string())
}

/// The git state of `dir`, or None outside a work tree (or without git).
pub fn info(dir: &Path) -> Option<GitInfo> {
    let repo = git(dir, &["rev-parse", "--show-toplevel"])?;
    let commit = git(dir, &["rev-parse", "HEAD"])?;
    let branch = git(dir, &["symbolic-ref", "--short", "-q", "HEAD"]).filter(|b| !b.is_empty());
    let dirty =
        git(dir, &["status", "--porcelain", "--untracked-files=no"]).is_none_or(|s| !s.is_empty());
    let remote = git(dir, &["config", "--get", "remote.origin.url"]).filter(|r| !r.is_empty());
    Some(GitInfo {
        repo,
        commit,
        branch,
        dirty,
        remote,
    })
}
