//! Where contract commands run: an [`Environment`] of the `local` provider (the host, no
//! isolation: today's behaviour) or of the Docker provider (`--env docker`).
//!
//! In a container the repository sits at the same absolute path as on the host (so paths in
//! `rollout.json` and the `AIDER_FSM_*` variables mean the same on both sides), copied in before
//! the first stage (without `.aider_fsm/artifacts/`). The files verification reads (runtime
//! env, rollout, samples, metrics, hints) are copied back into the host repository after their
//! stage, one regular file each, at most the copy-out cap; links are refused. What the stages
//! wrote under `AIDER_FSM_ARTIFACTS_DIR` is copied into `<evidence>/container/` at the end
//! (regular files only, capped). The container is labelled like a trial's and removed on every
//! path.

use crate::exec::{CmdOutput, CmdSpec, RC_CANCELLED, RC_OUTPUT_LIMIT, RC_TIMEOUT};
use crate::spec::confine;
use crate::PipelineError;
use rollout_core::labels;
use rollout_core::task_config::NetworkMode;
use rollout_env::local::LocalEnvironment;
use rollout_env::{EnvSpec, Environment, ExecRequest, ImageSource, Provider};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The image `--env docker` uses unless `--image` says otherwise.
pub const DEFAULT_IMAGE: &str = "debian:bookworm-slim";
/// Where the CA bundle goes inside the container (as for trials).
pub const CA_BUNDLE_PATH: &str = "/rollout/ca-certificates.crt";
/// Variables pointing common tools at the bundle (as for trials).
pub const CA_BUNDLE_VARS: [&str; 6] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
];
/// Default cap on what is copied out of a container: per file, and for the artifacts directory.
pub const DEFAULT_COPY_OUT_CAP: u64 = 256 << 20;
/// Largest repository (file bytes, artifacts excluded) copied into a container.
const MAX_REPO_BYTES: u64 = 2 << 30;
/// Engine calls (create, copy, remove) get this long.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(300);

/// `--env`: where the stages run.
#[derive(Debug, Clone, Default)]
pub enum EnvChoice {
    /// On the host (no isolation).
    #[default]
    Local,
    /// In a container of the Docker provider.
    Docker(DockerOptions),
}

/// How to make the container.
#[derive(Debug, Clone)]
pub struct DockerOptions {
    pub image: String,
    /// PEM bundle to install at [`CA_BUNDLE_PATH`] (`--ca-certs`).
    pub ca_bundle: Option<Vec<u8>>,
    /// This machine's name (the `io.rollout.host` label, for `rollout gc`).
    pub host: String,
    /// Bytes copied out at most, per file and for the artifacts directory.
    pub copy_out_cap: u64,
    pub cpus: f64,
    pub memory_mb: u64,
}

impl DockerOptions {
    pub fn new(image: Option<String>, host: String) -> Self {
        Self {
            image: image.unwrap_or_else(|| DEFAULT_IMAGE.into()),
            ca_bundle: None,
            host,
            copy_out_cap: DEFAULT_COPY_OUT_CAP,
            cpus: 2.0,
            memory_mb: 4096,
        }
    }
}

/// Where a run's stages ran (`environment` in `pipeline_result.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EnvironmentInfo {
    /// `local` or `docker`.
    pub provider: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// What was copied out of `AIDER_FSM_ARTIFACTS_DIR` (docker).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifacts_copied: Option<serde_json::Value>,
    /// Whether the container was removed (docker).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<bool>,
}

/// The environment of one run.
pub enum Sandbox {
    Local(LocalEnvironment),
    Docker {
        env: Box<dyn Environment>,
        opts: DockerOptions,
        artifacts: PathBuf,
    },
}

fn io_err(context: impl Into<String>, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Io {
        context: context.into(),
        message: e.to_string(),
    }
}

async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, PipelineError> {
    match tokio::time::timeout(ENGINE_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(io_err(what, e)),
        Err(_) => Err(io_err(what, format!("no answer within {ENGINE_TIMEOUT:?}"))),
    }
}

/// A tar of `repo` at its own absolute path, without `skip` (the evidence directories).
fn repo_archive(
    repo: &Path,
    skip: &[PathBuf],
    extra_dirs: &[&Path],
    ca: Option<&[u8]>,
) -> Result<Vec<u8>, String> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    let rel = |p: &Path| p.strip_prefix("/").unwrap_or(p).to_path_buf();
    let dir_header = || {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h
    };
    for d in extra_dirs.iter().copied().chain([repo]) {
        let mut acc = PathBuf::new();
        for c in rel(d).components() {
            acc.push(c);
            let mut h = dir_header();
            b.append_data(&mut h, &acc, std::io::empty())
                .map_err(|e| e.to_string())?;
        }
    }
    if let Some(ca) = ca {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(ca.len() as u64);
        b.append_data(&mut h, rel(Path::new(CA_BUNDLE_PATH)), ca)
            .map_err(|e| e.to_string())?;
    }
    let mut total = 0u64;
    let mut stack = vec![repo.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for e in entries.flatten() {
            let p = e.path();
            if skip.iter().any(|s| s == &p) {
                continue;
            }
            let Ok(m) = p.symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                b.append_path_with_name(&p, rel(&p))
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                stack.push(p);
            } else if m.is_file() || m.file_type().is_symlink() {
                total += m.len();
                if total > MAX_REPO_BYTES {
                    return Err(format!(
                        "the repository holds more than {} MiB (artifacts excluded): too large to copy into a container",
                        MAX_REPO_BYTES >> 20
                    ));
                }
                b.append_path_with_name(&p, rel(&p))
                    .map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
    }
    b.into_inner().map_err(|e| e.to_string())
}

impl Sandbox {
    /// The host (no isolation).
    pub fn host() -> Self {
        Sandbox::Local(LocalEnvironment::new("/"))
    }

    /// Create the environment of a run of `repo` (canonical) whose evidence goes to `artifacts`.
    pub async fn open(
        choice: &EnvChoice,
        repo: &Path,
        artifacts: &Path,
        run_id: &str,
    ) -> Result<Self, PipelineError> {
        let opts = match choice {
            EnvChoice::Local => return Ok(Self::host()),
            EnvChoice::Docker(o) => o.clone(),
        };
        let provider = rollout_env::docker::DockerProvider::connect(Default::default())
            .await
            .map_err(|e| io_err("connecting to the Docker engine (--env docker)", e))?;
        let job = format!("pipeline-{run_id}");
        let labels = BTreeMap::from([
            (labels::JOB.to_string(), job.clone()),
            (labels::TRIAL.to_string(), job.clone()),
            (labels::MANAGED.to_string(), "true".to_string()),
            (labels::PID.to_string(), std::process::id().to_string()),
            (labels::HOST.to_string(), opts.host.clone()),
        ]);
        let image = bounded(
            &format!("preparing the image {}", opts.image),
            provider.prepare_image(
                &ImageSource::Prebuilt {
                    reference: opts.image.clone(),
                },
                &labels,
            ),
        )
        .await?;
        let mut env_vars = BTreeMap::new();
        if opts.ca_bundle.is_some() {
            for v in CA_BUNDLE_VARS {
                env_vars.insert(v.to_string(), CA_BUNDLE_PATH.to_string());
            }
        }
        let spec = EnvSpec {
            name: job.clone(),
            labels,
            cpus: opts.cpus,
            memory_mb: opts.memory_mb,
            storage_mb: 10240,
            pids_limit: 4096,
            network: NetworkMode::Public,
            allowed_hosts: Vec::new(),
            env: env_vars,
            workdir: Some(repo.display().to_string()),
            mounts: Vec::new(),
            gpus: 0,
        };
        let env = bounded(
            &format!("starting a container from {}", opts.image),
            provider.create(&image, &spec),
        )
        .await?;
        let sandbox = Sandbox::Docker {
            env,
            opts: opts.clone(),
            artifacts: artifacts.to_path_buf(),
        };
        // From here on the caller owns the container; on a failed copy remove it now.
        if let Err(e) = sandbox.copy_in(repo, artifacts).await {
            sandbox.destroy().await;
            return Err(e);
        }
        Ok(sandbox)
    }

    async fn copy_in(&self, repo: &Path, artifacts: &Path) -> Result<(), PipelineError> {
        let Sandbox::Docker { env, opts, .. } = self else {
            return Ok(());
        };
        let skip = vec![
            repo.join(crate::spec::ARTIFACTS_DIR),
            artifacts.to_path_buf(),
        ];
        let (repo2, art2, ca) = (
            repo.to_path_buf(),
            artifacts.to_path_buf(),
            opts.ca_bundle.clone(),
        );
        let tar = tokio::task::spawn_blocking(move || {
            repo_archive(&repo2, &skip, &[&art2], ca.as_deref())
        })
        .await
        .map_err(|e| io_err("archiving the repository", e))?
        .map_err(|e| io_err("archiving the repository for the container", e))?;
        bounded(
            "copying the repository into the container",
            env.upload_tar(tar),
        )
        .await
    }

    /// `local` or `docker`.
    pub fn provider(&self) -> &'static str {
        match self {
            Sandbox::Local(_) => "local",
            Sandbox::Docker { .. } => "docker",
        }
    }

    /// Whether the commands see the host's filesystem.
    pub fn is_host(&self) -> bool {
        matches!(self, Sandbox::Local(_))
    }

    fn env(&self) -> &dyn Environment {
        match self {
            Sandbox::Local(l) => l,
            Sandbox::Docker { env, .. } => env.as_ref(),
        }
    }

    /// Run one command; an error only when it could not be started.
    pub async fn run(
        &self,
        spec: &CmdSpec<'_>,
        cancel: &CancellationToken,
    ) -> std::io::Result<CmdOutput> {
        let mut req = ExecRequest::bash(spec.cmd, spec.timeout);
        req.workdir = Some(spec.workdir.display().to_string());
        req.env = spec.env.to_vec();
        req.output_cap = spec.output_cap;
        req.max_output = crate::exec::MAX_OUTPUT;
        let exec = async {
            match self {
                Sandbox::Local(l) if spec.inherit_stdin => l.exec_with_terminal(req).await,
                _ => self.env().exec(req).await,
            }
        };
        // The environment enforces the timeout; this bound only guards against an engine that
        // stops answering.
        let guard = spec.timeout + Duration::from_secs(60);
        let cancelled = CmdOutput {
            rc: RC_CANCELLED,
            cancelled: true,
            ..Default::default()
        };
        if cancel.is_cancelled() {
            return Ok(cancelled);
        }
        let started = std::time::Instant::now();
        let out = tokio::select! {
            r = tokio::time::timeout(guard, exec) => r,
            _ = cancel.cancelled() => {
                // The host's group died with the dropped future; a container's processes are
                // stopped (its filesystem stays for teardown).
                if !self.is_host() {
                    let _ = tokio::time::timeout(ENGINE_TIMEOUT, self.env().stop_all()).await;
                }
                return Ok(CmdOutput { seconds: started.elapsed().as_secs_f64(), ..cancelled });
            }
        };
        let out = match out {
            Err(_) => {
                return Ok(CmdOutput {
                    rc: RC_TIMEOUT,
                    timed_out: true,
                    seconds: started.elapsed().as_secs_f64(),
                    ..Default::default()
                })
            }
            Ok(Err(e)) => return Err(std::io::Error::other(e.to_string())),
            Ok(Ok(o)) => o,
        };
        let rc = if out.timed_out {
            RC_TIMEOUT
        } else if out.output_limit_exceeded {
            RC_OUTPUT_LIMIT
        } else {
            out.exit_code
                .and_then(|c| i32::try_from(c).ok())
                .unwrap_or(RC_OUTPUT_LIMIT)
        };
        Ok(CmdOutput {
            rc,
            timed_out: out.timed_out,
            cancelled: false,
            output_limit_exceeded: out.output_limit_exceeded,
            seconds: out.duration.as_secs_f64(),
            stdout_bytes: out.stdout.total,
            stderr_bytes: out.stderr.total,
            stdout: out.stdout.bytes,
            stderr: out.stderr.bytes,
        })
    }

    async fn small(&self, script: &str, args: &[&str], cap: usize) -> Result<CmdOutput, String> {
        let mut argv: Vec<String> =
            vec!["bash".into(), "-c".into(), script.into(), "rollout".into()];
        argv.extend(args.iter().map(|a| a.to_string()));
        let mut req = ExecRequest::argv(argv, Duration::from_secs(120));
        req.output_cap = cap;
        req.max_output = cap as u64;
        let o = tokio::time::timeout(Duration::from_secs(180), self.env().exec(req))
            .await
            .map_err(|_| "the engine did not answer".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(CmdOutput {
            rc: o
                .exit_code
                .and_then(|c| i32::try_from(c).ok())
                .unwrap_or(-1),
            timed_out: o.timed_out,
            output_limit_exceeded: o.output_limit_exceeded,
            stdout_bytes: o.stdout.total,
            stdout: o.stdout.bytes,
            stderr: o.stderr.bytes,
            ..Default::default()
        })
    }

    /// Remove `path` (absolute) inside a container; nothing on the host (the caller moved it).
    pub async fn remove(&self, path: &Path) {
        if !self.is_host() {
            let _ = self
                .small("rm -f -- \"$1\"", &[&path.display().to_string()], 1024)
                .await;
        }
    }

    /// Write a file inside a container too (the host copy is the caller's).
    pub async fn write_file(&self, path: &Path, content: &[u8]) -> Result<(), String> {
        if self.is_host() {
            return Ok(());
        }
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(content.len() as u64);
        let rel = path.strip_prefix("/").unwrap_or(path);
        b.append_data(&mut h, rel, content)
            .map_err(|e| e.to_string())?;
        let tar = b.into_inner().map_err(|e| e.to_string())?;
        bounded(
            "copying a file into the container",
            self.env().upload_tar(tar),
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// Copy the contract workspace (`.aider_fsm/` without artifacts, `pipeline.yml`) into the
    /// container again (after a repair edited it on the host).
    pub async fn push_contract(&self, repo: &Path) -> Result<(), PipelineError> {
        let Sandbox::Docker { env, .. } = self else {
            return Ok(());
        };
        let (repo2, fsm) = (repo.to_path_buf(), repo.join(crate::spec::FSM_DIR));
        let tar = tokio::task::spawn_blocking(move || {
            repo_archive(&fsm, &[repo2.join(crate::spec::ARTIFACTS_DIR)], &[], None)
        })
        .await
        .map_err(|e| io_err("archiving the contract", e))?
        .map_err(|e| io_err("archiving the contract for the container", e))?;
        bounded(
            "copying the repaired contract into the container",
            env.upload_tar(tar),
        )
        .await?;
        let p = repo.join(crate::spec::PIPELINE_FILE);
        if let Ok(bytes) = std::fs::read(&p) {
            self.write_file(&p, &bytes)
                .await
                .map_err(|e| io_err("copying pipeline.yml into the container", e))?;
        }
        Ok(())
    }

    /// Copy `rel` (a file of the repository, as the stage left it in the container) back into
    /// the host repository; the host copy is removed when the container has none. Links and
    /// files over the copy-out cap are refused (`Err` says why).
    pub async fn pull(&self, repo: &Path, rel: &str) -> Result<(), String> {
        let Sandbox::Docker { opts, .. } = self else {
            return Ok(());
        };
        let host = confine(repo, rel)?;
        let cap = opts.copy_out_cap;
        let shown = host.display().to_string();
        let o = self
            .small(
                "if [ -L \"$1\" ]; then exit 4; fi; if [ ! -f \"$1\" ]; then exit 3; fi; exec head -c \"$2\" -- \"$1\"",
                &[&shown, &(cap + 1).to_string()],
                usize::try_from(cap + 1).unwrap_or(usize::MAX),
            )
            .await
            .map_err(|e| format!("copying {rel} out of the container: {e}"))?;
        let clear = || {
            if host.symlink_metadata().is_ok() {
                let _ = std::fs::remove_file(&host);
            }
        };
        match o.rc {
            0 if o.stdout_bytes > cap || o.output_limit_exceeded => {
                clear();
                Err(format!(
                    "{rel} is larger than the copy-out cap ({cap} bytes): not copied out of the container"
                ))
            }
            0 => {
                clear();
                if let Some(parent) = host.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                }
                std::fs::write(&host, &o.stdout).map_err(|e| format!("writing {shown}: {e}"))
            }
            3 => {
                clear();
                Ok(())
            }
            4 => {
                clear();
                Err(format!(
                    "{rel} is a symbolic link in the container: not copied out"
                ))
            }
            rc => Err(format!(
                "copying {rel} out of the container: exit {rc}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
        }
    }

    /// The end of a run: copy what the stages wrote under the artifacts directory out of a
    /// container (into `<artifacts>/container/`), then remove it. Never fails.
    pub async fn close(&self) -> EnvironmentInfo {
        let mut info = EnvironmentInfo {
            provider: self.provider().into(),
            ..Default::default()
        };
        if let Sandbox::Docker {
            env,
            opts,
            artifacts,
        } = self
        {
            info.image = Some(opts.image.clone());
            info.container = Some(env.id().to_string());
            let dest = artifacts.join("container");
            let copied = tokio::time::timeout(
                ENGINE_TIMEOUT,
                env.download_dir(&artifacts.display().to_string(), &dest, opts.copy_out_cap),
            )
            .await;
            info.artifacts_copied = Some(match copied {
                Ok(Ok(d)) => serde_json::json!({
                    "dir": dest, "files": d.files, "bytes": d.bytes, "truncated": d.truncated,
                    "skipped": d.skipped, "skipped_entries": d.skipped_entries,
                }),
                Ok(Err(e)) => serde_json::json!({"error": e.to_string()}),
                Err(_) => serde_json::json!({"error": "the engine did not answer"}),
            });
            info.removed = Some(self.destroy().await);
        }
        info
    }

    /// Remove a container (retried once); true when it is gone.
    pub async fn destroy(&self) -> bool {
        if self.is_host() {
            return true;
        }
        for _ in 0..2 {
            if let Ok(Ok(())) = tokio::time::timeout(ENGINE_TIMEOUT, self.env().destroy()).await {
                return true;
            }
        }
        false
    }
}
