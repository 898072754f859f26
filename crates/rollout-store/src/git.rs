//! The git state of a working directory, as recorded with each job.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

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
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = Vec::new();
        let _ = (&mut stdout)
            .take(GIT_OUTPUT_CAP as u64)
            .read_to_end(&mut buf);
        // Drain the rest so git never blocks on a full pipe.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        let _ = tx.send(buf);
    });
    // git closes its output when it ends: wait for that, then for its status.
    let Ok(out) = rx.recv_timeout(GIT_TIMEOUT) else {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    };
    let status = child.wait().ok()?;
    status
        .success()
        .then(|| String::from_utf8_lossy(&out).trim().to_string())
}

/// Whether `dir` may be in a git work tree: a `.git` in it or an ancestor, or git told where
/// the repository is (`GIT_DIR`, `GIT_WORK_TREE`). Saves starting git where there is none.
fn maybe_in_repo(dir: &Path) -> bool {
    if std::env::var_os("GIT_DIR").is_some() || std::env::var_os("GIT_WORK_TREE").is_some() {
        return true;
    }
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    dir.ancestors().any(|d| d.join(".git").exists())
}

/// The git state of `dir`, or None outside a work tree (or without git). The queries after
/// the first run at once.
pub fn info(dir: &Path) -> Option<GitInfo> {
    if !maybe_in_repo(dir) {
        return None;
    }
    let repo = git(dir, &["rev-parse", "--show-toplevel"])?;
    let (commit, branch, dirty, remote) = std::thread::scope(|s| {
        let branch = s.spawn(|| git(dir, &["symbolic-ref", "--short", "-q", "HEAD"]));
        let dirty = s.spawn(|| git(dir, &["status", "--porcelain", "--untracked-files=no"]));
        let remote = s.spawn(|| git(dir, &["config", "--get", "remote.origin.url"]));
        let commit = git(dir, &["rev-parse", "HEAD"]);
        let join = |h: std::thread::ScopedJoinHandle<'_, Option<String>>| h.join().ok().flatten();
        (commit, join(branch), join(dirty), join(remote))
    });
    Some(GitInfo {
        repo,
        commit: commit?,
        branch: branch.filter(|b| !b.is_empty()),
        dirty: dirty.is_none_or(|s| !s.is_empty()),
        remote: remote.filter(|r| !r.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }

    #[test]
    fn info_reads_commit_branch_remote_and_dirtiness() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().canonicalize().unwrap();
        assert_eq!(info(&dir), None, "not a work tree");
        run(&dir, &["init", "-q", "-b", "main"]);
        assert_eq!(info(&dir), None, "no commit yet");
        std::fs::write(dir.join("f"), "1").unwrap();
        run(&dir, &["add", "f"]);
        run(&dir, &["commit", "-q", "-m", "one"]);
        std::fs::create_dir(dir.join("sub")).unwrap();
        let g = info(&dir.join("sub")).unwrap();
        assert_eq!(g.repo, dir.to_string_lossy());
        assert_eq!(g.commit.len(), 40, "{g:?}");
        assert_eq!(g.branch.as_deref(), Some("main"));
        assert!(!g.dirty);
        assert_eq!(g.remote, None);
        run(
            &dir,
            &["remote", "add", "origin", "https://example.invalid/r.git"],
        );
        std::fs::write(dir.join("f"), "2").unwrap();
        let g = info(&dir).unwrap();
        assert!(g.dirty);
        assert_eq!(g.remote.as_deref(), Some("https://example.invalid/r.git"));
        run(&dir, &["checkout", "-q", "--detach"]);
        assert_eq!(info(&dir).unwrap().branch, None, "detached");
    }
}
