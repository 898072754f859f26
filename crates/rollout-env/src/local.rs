//! The `local` provider: commands run on this machine, as this user, with no isolation at all.
//!
//! A [`LocalEnvironment`] runs `argv` as a child process in its own process group (stdin closed
//! unless given), with a working directory, extra variables on top of the inherited environment,
//! a timeout and capped output, exactly like a container's exec; when the timeout fires (or the
//! `exec` future is dropped, e.g. on Ctrl-C) the whole process group is killed. A command that
//! ends normally may leave background processes behind (a deploy stage's server): they are not
//! killed. Files move as plain copies: [`Environment::upload_tar`] extracts below the
//! environment's root directory, [`Environment::download_dir`] copies a host directory's regular
//! files (links and special files are skipped, as for containers).
//!
//! Nothing is enforced: no network policy, no resource limits, no separate filesystem. It is what
//! `rollout pipeline run` uses by default (a repository's contract runs on the host, as the
//! OpenCode-FSM runner does); never use it for untrusted agents.

use crate::exec::{Captured, ExecOutput, ExecRequest};
use crate::{
    Capabilities, DownloadInfo, EnvError, EnvSpec, Environment, ImageSource, PreparedImage,
    Provider,
};
use async_trait::async_trait;
use rollout_core::task_config::NetworkMode;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long to wait for the output pipes after the command ended (a background process it
/// started may hold them open).
const PIPE_GRACE: Duration = Duration::from_secs(5);

/// Makes [`LocalEnvironment`]s (see the module documentation: no isolation).
pub struct LocalProvider {
    root: PathBuf,
}

impl LocalProvider {
    /// Environments whose uploads are extracted below `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::minimal("local")
    }

    async fn prepare_image(
        &self,
        _source: &ImageSource,
        _labels: &BTreeMap<String, String>,
    ) -> Result<PreparedImage, EnvError> {
        // The host is the image.
        Ok(PreparedImage {
            reference: "local".into(),
            id: "local".into(),
            ..Default::default()
        })
    }

    async fn create(
        &self,
        _image: &PreparedImage,
        spec: &EnvSpec,
    ) -> Result<Box<dyn Environment>, EnvError> {
        if spec.network != NetworkMode::Public {
            return Err(EnvError::Unsupported(format!(
                "the local provider runs commands on the host and cannot enforce network mode {:?}; use --env docker",
                spec.network
            )));
        }
        if spec.gpus > 0 || !spec.mounts.is_empty() {
            return Err(EnvError::Unsupported(
                "the local provider runs commands on the host: it neither assigns GPUs nor binds mounts".into(),
            ));
        }
        let mut env = LocalEnvironment::new(self.root.clone());
        env.env = spec.env.clone();
        env.workdir = spec.workdir.as_ref().map(PathBuf::from);
        Ok(Box::new(env))
    }

    async fn remove_labelled(&self, _key: &str, _value: &str) -> Result<usize, EnvError> {
        Ok(0)
    }
}

/// The host as an [`Environment`] (see the module documentation: no isolation).
pub struct LocalEnvironment {
    id: String,
    /// Where [`Environment::upload_tar`] extracts archives.
    pub root: PathBuf,
    /// Default working directory (else the current one).
    pub workdir: Option<PathBuf>,
    /// Variables set for every command, on top of the inherited environment.
    pub env: BTreeMap<String, String>,
}

impl LocalEnvironment {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            id: format!("local-{}", std::process::id()),
            root: root.into(),
            workdir: None,
            env: BTreeMap::new(),
        }
    }

    /// [`Environment::exec`] with this terminal's stdin (guided interactive commands); `req.stdin`
    /// is ignored.
    pub async fn exec_with_terminal(&self, req: ExecRequest) -> Result<ExecOutput, EnvError> {
        self.run(req, true).await
    }

    async fn run(&self, req: ExecRequest, terminal: bool) -> Result<ExecOutput, EnvError> {
        if req.user.is_some() {
            return Err(EnvError::Unsupported(
                "the local provider runs commands as the current user; it cannot switch users"
                    .into(),
            ));
        }
        let Some((program, args)) = req.argv.split_first() else {
            return Err(EnvError::Unsupported("an empty command line".into()));
        };
        let started = Instant::now();
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if terminal {
                Stdio::inherit()
            } else if req.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .process_group(0)
            .kill_on_drop(true);
        if let Some(w) = req
            .workdir
            .as_deref()
            .map(Path::new)
            .or(self.workdir.as_deref())
        {
            cmd.current_dir(w);
        }
        cmd.envs(&self.env);
        cmd.envs(req.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd
            .spawn()
            .map_err(|e| EnvError::host(format!("starting `{program}` on the host"), e))?;
        // From here on, dropping this future (a cancelled caller) kills the whole group.
        let mut guard = GroupKill(child.id().and_then(|p| libc::pid_t::try_from(p).ok()));
        if let (Some(bytes), Some(mut stdin)) = (req.stdin.clone(), child.stdin.take()) {
            tokio::spawn(async move {
                let _ = stdin.write_all(&bytes).await;
            });
        }
        let over = Arc::new(tokio::sync::Notify::new());
        let exceeded = Arc::new(AtomicBool::new(false));
        let reader = |r: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>| {
            let (over, exceeded) = (over.clone(), exceeded.clone());
            let (cap, max) = (req.output_cap, req.max_output);
            tokio::spawn(async move {
                let mut c = Captured::with_cap(cap);
                if let Some(mut r) = r {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                c.push(&buf[..n]);
                                if c.total > max {
                                    exceeded.store(true, Ordering::SeqCst);
                                    over.notify_one();
                                    break;
                                }
                            }
                        }
                    }
                }
                c.finish();
                c
            })
        };
        let out = reader(
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        );
        let err = reader(
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        );
        let mut timed_out = false;
        let status = tokio::select! {
            s = child.wait() => s.ok(),
            _ = tokio::time::sleep(req.timeout) => { timed_out = true; None }
            _ = over.notified() => None,
        };
        if status.is_none() {
            guard.kill();
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
        guard.0 = None;
        let grace = if status.is_some() {
            PIPE_GRACE
        } else {
            Duration::from_secs(1)
        };
        let collect = |h: tokio::task::JoinHandle<Captured>| async move {
            tokio::time::timeout(grace, h)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_else(|| Captured::with_cap(req.output_cap))
        };
        let stdout = collect(out).await;
        let stderr = collect(err).await;
        let exit_code = status.map(|s| {
            use std::os::unix::process::ExitStatusExt;
            i64::from(s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)))
        });
        Ok(ExecOutput {
            exit_code,
            timed_out,
            output_limit_exceeded: exceeded.load(Ordering::SeqCst),
            stdout,
            stderr,
            duration: started.elapsed(),
        })
    }
}

/// Kills a process group when dropped, unless disarmed (`.0 = None`).
struct GroupKill(Option<libc::pid_t>);

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            // SAFETY: kill(2) on the negative pid signals the process group the child leads
            // (process_group(0) made its pid the group id); no memory is involved.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

#[async_trait]
impl Environment for LocalEnvironment {
    fn id(&self) -> &str {
        &self.id
    }

    async fn exec(&self, req: ExecRequest) -> Result<ExecOutput, EnvError> {
        self.run(req, false).await
    }

    async fn upload_tar(&self, tar: Vec<u8>) -> Result<(), EnvError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&root)?;
            let mut a = tar::Archive::new(std::io::Cursor::new(tar));
            a.set_preserve_permissions(true);
            // `unpack` refuses entries that would land outside `root` (`..`, links).
            a.unpack(&root)
        })
        .await
        .map_err(|e| EnvError::host("extracting an archive on the host", e))?
        .map_err(|e| {
            EnvError::host(
                format!("extracting an archive below {}", self.root.display()),
                e,
            )
        })
    }

    async fn download_dir(
        &self,
        path: &str,
        dest: &Path,
        cap: u64,
    ) -> Result<DownloadInfo, EnvError> {
        let src = PathBuf::from(path);
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || copy_capped(&src, &dest, cap))
            .await
            .map_err(|e| EnvError::host("copying a directory on the host", e))?
    }

    async fn destroy(&self) -> Result<(), EnvError> {
        Ok(())
    }
}

/// Copy the regular files and directories of `src` into `dest`, at most `cap` bytes of file
/// content; links and special files are skipped (and listed).
fn copy_capped(src: &Path, dest: &Path, cap: u64) -> Result<DownloadInfo, EnvError> {
    let mut info = DownloadInfo::default();
    if !src.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return Ok(info);
    }
    info.found = true;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let from = src.join(&rel);
        let to = dest.join(&rel);
        std::fs::create_dir_all(&to)
            .map_err(|e| EnvError::host(format!("creating {}", to.display()), e))?;
        let mut entries: Vec<_> = std::fs::read_dir(&from)
            .map_err(|e| EnvError::host(format!("reading {}", from.display()), e))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let r = rel.join(e.file_name());
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(r);
            } else if m.is_file() {
                if info.bytes + m.len() > cap {
                    info.truncated = true;
                    return Ok(info);
                }
                let target = dest.join(&r);
                if target.symlink_metadata().is_ok_and(|t| !t.is_file()) {
                    skip(&mut info, &r, "a destination that is not a regular file");
                    continue;
                }
                std::fs::copy(e.path(), &target).map_err(|err| {
                    EnvError::host(format!("copying {}", e.path().display()), err)
                })?;
                info.files += 1;
                info.bytes += m.len();
            } else {
                let what = if m.file_type().is_symlink() {
                    "a symbolic link"
                } else {
                    "a special file"
                };
                skip(&mut info, &r, what);
            }
        }
    }
    Ok(info)
}

fn skip(info: &mut DownloadInfo, rel: &Path, what: &str) {
    info.skipped += 1;
    if info.skipped_entries.len() < crate::archive::MAX_SKIPPED_LISTED {
        info.skipped_entries
            .push((rel.display().to_string(), what.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bash(script: &str, secs: f64) -> ExecRequest {
        let mut r = ExecRequest::bash(script, Duration::from_secs_f64(secs));
        r.output_cap = 16;
        r
    }

    #[tokio::test]
    async fn exit_codes_caps_env_and_workdir() {
        let d = tempfile::tempdir().unwrap();
        let mut env = LocalEnvironment::new(d.path());
        env.env.insert("A".into(), "from-env".into());
        let mut req = bash(
            "printf 0123456789abcdef; printf \"$A $B $(pwd)\" >&2; exit 3",
            10.0,
        );
        req.output_cap = 1 << 10;
        req.env.push(("B".into(), "from-req".into()));
        req.workdir = Some(d.path().display().to_string());
        let o = env.exec(req).await.unwrap();
        assert_eq!(o.exit_code, Some(3));
        assert_eq!(o.stdout.bytes, b"0123456789abcdef");
        let canon = d.path().canonicalize().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&o.stderr.bytes),
            format!("from-env from-req {}", canon.display())
        );
        let o = env
            .exec(bash("printf 0123456789abcdefXYZ", 10.0))
            .await
            .unwrap();
        assert_eq!(o.stdout.bytes, b"3456789abcdefXYZ");
        assert_eq!(o.stdout.total, 19);
        let mut req = bash("cat", 10.0);
        req.stdin = Some(b"piped".to_vec());
        let o = env.exec(req).await.unwrap();
        assert_eq!(o.stdout.bytes, b"piped");
        assert!(env
            .exec(bash("true", 1.0).user(Some("root".into())))
            .await
            .is_err());
    }

    fn wait_gone(pidfile: &Path) {
        let pid = std::fs::read_to_string(pidfile).unwrap().trim().to_string();
        let gone = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.split_whitespace().nth(2) == Some("Z"))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone() {
            assert!(Instant::now() < deadline, "process {pid} survived");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[tokio::test]
    async fn the_timeout_and_a_dropped_future_kill_the_whole_group() {
        let d = tempfile::tempdir().unwrap();
        let env = LocalEnvironment::new(d.path());
        let pidfile = d.path().join("grandchild.pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
        let o = env.exec(bash(&script, 1.0)).await.unwrap();
        assert!(o.timed_out && o.exit_code.is_none(), "{o:?}");
        wait_gone(&pidfile);
        // Dropping the future (what a cancelled caller does) kills the group too.
        let pidfile2 = d.path().join("second.pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pidfile2.display());
        let run = env.exec(bash(&script, 60.0));
        let written = async {
            while !pidfile2.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            _ = run => panic!("the command should still run"),
            _ = written => {}
        }
        wait_gone(&pidfile2);
        // Output beyond max_output stops the command.
        let mut req = bash("yes", 30.0);
        req.max_output = 1 << 20;
        let o = env.exec(req).await.unwrap();
        assert!(o.output_limit_exceeded && !o.success(), "{o:?}");
    }

    #[tokio::test]
    async fn files_move_as_copies_without_links_and_within_the_cap() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let env = LocalEnvironment::new(&root);
        let mut b = crate::archive::TarBuilder::new();
        b.dir("/work", 0o755)
            .unwrap()
            .file("/work/a.txt", 0o644, b"hello")
            .unwrap()
            .file("/work/sub/b.txt", 0o644, b"world!")
            .unwrap();
        env.upload_tar(b.finish().unwrap()).await.unwrap();
        assert_eq!(std::fs::read(root.join("work/a.txt")).unwrap(), b"hello");
        std::os::unix::fs::symlink("/etc/passwd", root.join("work/link")).unwrap();
        let out = d.path().join("out");
        let info = env
            .download_dir(root.join("work").to_str().unwrap(), &out, 1 << 20)
            .await
            .unwrap();
        assert!(info.found && !info.truncated, "{info:?}");
        assert_eq!((info.files, info.bytes, info.skipped), (2, 11, 1));
        assert!(out.join("link").symlink_metadata().is_err());
        assert_eq!(std::fs::read(out.join("sub/b.txt")).unwrap(), b"world!");
        let capped = env
            .download_dir(root.join("work").to_str().unwrap(), &d.path().join("o2"), 7)
            .await
            .unwrap();
        assert!(capped.truncated && capped.bytes <= 7, "{capped:?}");
        let missing = env
            .download_dir(root.join("nope").to_str().unwrap(), &d.path().join("o3"), 7)
            .await
            .unwrap();
        assert!(!missing.found);
    }
}
