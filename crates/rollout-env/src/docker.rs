//! The Docker provider: Engine API over the unix socket (or `DOCKER_HOST`), via bollard.
//!
//! Images are tagged by the BLAKE3 of the environment directory, so an environment is built once
//! per machine and reused by every trial and job that has the same files. Containers keep the
//! image's ENTRYPOINT and get a keep-alive command; commands run through exec with a timeout
//! that kills the whole process tree; teardown is an immediate forced remove (no stop grace).

use crate::archive::{extract_stripped, TarBuilder};
use crate::exec::{Captured, ExecOutput, ExecRequest};
use crate::{DownloadInfo, EnvError, EnvSpec, Environment, ImageSource, PreparedImage, Provider};
use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::RestartContainerOptions;
use bollard::query_parameters::{
    BuildImageOptions, CreateContainerOptions, CreateImageOptions, DownloadFromContainerOptions,
    ListContainersOptions, RemoveContainerOptions, UploadToContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use rollout_core::labels;
use rollout_core::task_config::NetworkMode;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Largest build context rollout sends (the environment directory, as tar).
pub const MAX_BUILD_CONTEXT: usize = 1 << 30;
/// How much build output is kept for error messages and logs.
const BUILD_LOG_CAP: usize = 64 * 1024;
/// Capabilities removed from Docker's default set. Kept: CHOWN, DAC_OVERRIDE, FOWNER, FSETID,
/// KILL, SETGID, SETUID, NET_BIND_SERVICE (what apt, dpkg, pip and services need).
pub const DROPPED_CAPABILITIES: [&str; 6] = [
    "NET_RAW",
    "MKNOD",
    "AUDIT_WRITE",
    "SETFCAP",
    "SETPCAP",
    "SYS_CHROOT",
];
/// Bound on the helper execs rollout runs itself (killing a timed-out command).
const KILL_TIMEOUT: Duration = Duration::from_secs(15);

type ImageCell = Arc<tokio::sync::Mutex<Option<Result<PreparedImage, EnvError>>>>;

/// Limits on concurrent engine operations, separate from trial concurrency.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    pub builds: usize,
    pub creates: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self {
            builds: 2,
            creates: 8,
        }
    }
}

/// The Docker provider.
pub struct DockerProvider {
    docker: Docker,
    local: bool,
    images: Mutex<HashMap<String, ImageCell>>,
    build_slots: Semaphore,
    create_slots: Semaphore,
}

impl DockerProvider {
    /// Connect to the engine named by `DOCKER_HOST` (default: the local unix socket) and agree
    /// on an API version. Fails fast with a message saying how to start the engine.
    pub async fn connect(limits: EngineLimits) -> Result<Self, EnvError> {
        let host =
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        let docker = Docker::connect_with_defaults()
            .map_err(|e| EnvError::EngineUnreachable(format!("{host}: {e}")))?;
        let docker = tokio::time::timeout(Duration::from_secs(20), docker.negotiate_version())
            .await
            .map_err(|_| EnvError::EngineUnreachable(format!("{host}: no answer within 20 s")))?
            .map_err(|e| EnvError::EngineUnreachable(format!("{host}: {e}")))?;
        // A unix socket means the engine runs on this machine and sees its files.
        let local = host.starts_with("unix://") || host.starts_with('/');
        Ok(Self {
            docker,
            local,
            images: Mutex::new(HashMap::new()),
            build_slots: Semaphore::new(limits.builds.max(1)),
            create_slots: Semaphore::new(limits.creates.max(1)),
        })
    }

    /// The underlying client (for `rollout gc` and tests).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    fn cell(&self, key: &str) -> ImageCell {
        let mut map = self.images.lock().expect("image map poisoned");
        map.entry(key.to_string()).or_default().clone()
    }

    async fn image_id(&self, reference: &str) -> Result<Option<String>, EnvError> {
        match retried(|| self.docker.inspect_image(reference)).await {
            Ok(info) => Ok(Some(info.id.unwrap_or_default())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(EnvError::api(format!("inspecting image {reference}"), e)),
        }
    }

    async fn build(
        &self,
        context: &Path,
        tag: &str,
        timeout: Duration,
        force: bool,
        labels: &BTreeMap<String, String>,
    ) -> Result<PreparedImage, EnvError> {
        let _slot = self
            .build_slots
            .acquire()
            .await
            .expect("semaphore never closed");
        let ctx = context.to_path_buf();
        let tar = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut b = TarBuilder::new();
            b.host_dir(".", &ctx)?;
            b.finish()
        })
        .await
        .map_err(|e| EnvError::host("packing the build context", e))?
        .map_err(|e| EnvError::BuildFailed {
            image: tag.to_string(),
            message: format!("cannot read {}: {e}", context.display()),
            log: String::new(),
        })?;
        if tar.len() > MAX_BUILD_CONTEXT {
            return Err(EnvError::BuildFailed {
                image: tag.to_string(),
                message: format!(
                    "{} is {} MiB; build contexts are capped at {} MiB (move large data out of environment/)",
                    context.display(),
                    tar.len() >> 20,
                    MAX_BUILD_CONTEXT >> 20
                ),
                log: String::new(),
            });
        }
        let options = BuildImageOptions {
            dockerfile: "Dockerfile".into(),
            t: Some(tag.to_string()),
            rm: true,
            forcerm: true,
            nocache: force,
            labels: Some(labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            ..Default::default()
        };
        let mut log = Captured::with_cap(BUILD_LOG_CAP);
        let mut stream =
            self.docker
                .build_image(options, None, Some(bollard::body_full(tar.into())));
        let run = async {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(info) => {
                        if let Some(s) = &info.stream {
                            log.push(s.as_bytes());
                        }
                        if let Some(detail) = info.error_detail {
                            let message = detail
                                .message
                                .unwrap_or_else(|| "unknown build error".into());
                            log.push(message.as_bytes());
                            return Err(message);
                        }
                    }
                    Err(e) => return Err(docker_message(&e)),
                }
            }
            Ok(())
        };
        let outcome = tokio::time::timeout(timeout, run).await;
        log.finish();
        let log_text = log.to_text();
        match outcome {
            Err(_) => {
                return Err(EnvError::BuildTimeout {
                    image: tag.to_string(),
                    seconds: timeout.as_secs_f64(),
                    log: log_text,
                })
            }
            Ok(Err(message)) => {
                return Err(EnvError::BuildFailed {
                    image: tag.to_string(),
                    message: last_line(&message),
                    log: log_text,
                })
            }
            Ok(Ok(())) => {}
        }
        let id = self
            .image_id(tag)
            .await?
            .ok_or_else(|| EnvError::BuildFailed {
                image: tag.to_string(),
                message: "the build finished but the image is missing".into(),
                log: log_text.clone(),
            })?;
        Ok(PreparedImage {
            reference: tag.to_string(),
            id,
            fresh: true,
            build_log: Some(log_text),
        })
    }

    async fn pull(&self, reference: &str) -> Result<PreparedImage, EnvError> {
        let (image, tag) = split_reference(reference);
        let options = CreateImageOptions {
            from_image: Some(image.to_string()),
            tag: Some(tag.to_string()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(options), None, None);
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail {
                        return Err(EnvError::PullFailed {
                            image: reference.to_string(),
                            message: detail.message.unwrap_or_default(),
                        });
                    }
                }
                Err(e) => {
                    return Err(EnvError::PullFailed {
                        image: reference.to_string(),
                        message: docker_message(&e),
                    })
                }
            }
        }
        let id = self
            .image_id(reference)
            .await?
            .ok_or_else(|| EnvError::PullFailed {
                image: reference.to_string(),
                message: "the pull finished but the image is missing".into(),
            })?;
        Ok(PreparedImage {
            reference: reference.to_string(),
            id,
            fresh: true,
            build_log: None,
        })
    }
}

/// Tag of the image built from an environment directory with content digest `digest`.
pub fn image_tag(digest: &blake3::Hash) -> String {
    format!("rollout-env:{}", &digest.to_hex()[..24])
}

#[async_trait]
impl Provider for DockerProvider {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn host_mounts(&self) -> bool {
        self.local
    }

    fn forget_failures(&self) {
        let mut map = self.images.lock().expect("image map poisoned");
        map.retain(|_, cell| !cell.try_lock().is_ok_and(|g| matches!(&*g, Some(Err(_)))));
    }

    async fn prepare_image(
        &self,
        source: &ImageSource,
        labels: &BTreeMap<String, String>,
    ) -> Result<PreparedImage, EnvError> {
        match source {
            ImageSource::Build {
                context,
                timeout,
                force,
            } => {
                let ctx = context.clone();
                let digest =
                    tokio::task::spawn_blocking(move || rollout_core::digest::dir_digest(&ctx))
                        .await
                        .map_err(|e| EnvError::host("hashing the environment", e))?
                        .map_err(|e| EnvError::BuildFailed {
                            image: context.display().to_string(),
                            message: format!("cannot read {}: {e}", context.display()),
                            log: String::new(),
                        })?;
                let tag = image_tag(&digest);
                let cell = self.cell(&tag);
                let mut slot = cell.lock().await;
                if let Some(done) = &*slot {
                    return done.clone().map(|mut img| {
                        img.fresh = false;
                        img.build_log = None;
                        img
                    });
                }
                if !force {
                    if let Some(id) = self.image_id(&tag).await? {
                        let img = PreparedImage {
                            reference: tag,
                            id,
                            fresh: false,
                            build_log: None,
                        };
                        *slot = Some(Ok(img.clone()));
                        return Ok(img);
                    }
                }
                let mut labels = labels.clone();
                labels.insert(labels::MANAGED.into(), "true".into());
                labels.insert(labels::ENV_HASH.into(), digest.to_hex().to_string());
                let result = self.build(context, &tag, *timeout, *force, &labels).await;
                *slot = Some(result.clone());
                result
            }
            ImageSource::Prebuilt { reference } => {
                let cell = self.cell(reference);
                let mut slot = cell.lock().await;
                if let Some(done) = &*slot {
                    return done.clone().map(|mut img| {
                        img.fresh = false;
                        img
                    });
                }
                let result = match self.image_id(reference).await? {
                    Some(id) => Ok(PreparedImage {
                        reference: reference.clone(),
                        id,
                        fresh: false,
                        build_log: None,
                    }),
                    None => self.pull(reference).await,
                };
                *slot = Some(result.clone());
                result
            }
        }
    }

    async fn create(
        &self,
        image: &PreparedImage,
        spec: &EnvSpec,
    ) -> Result<Box<dyn Environment>, EnvError> {
        let _slot = self
            .create_slots
            .acquire()
            .await
            .expect("semaphore never closed");
        let name = format!("rollout-{}-{}", sanitize_name(&spec.name), short_random());
        let memory = (spec.memory_mb as i64) * 1024 * 1024;
        let host_config = HostConfig {
            nano_cpus: Some((spec.cpus * 1e9) as i64),
            memory: Some(memory),
            memory_swap: Some(memory),
            pids_limit: Some(spec.pids_limit),
            network_mode: Some(match spec.network {
                NetworkMode::NoNetwork => "none".into(),
                NetworkMode::Public | NetworkMode::Allowlist => "bridge".into(),
            }),
            // A real PID 1 that reaps zombies and forwards signals.
            init: Some(true),
            // Untrusted code gains no privilege through setuid binaries, and loses capabilities
            // ordinary tasks (apt, pip, servers on low ports) do not need.
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            cap_drop: Some(DROPPED_CAPABILITIES.iter().map(|c| c.to_string()).collect()),
            mounts: (!spec.mounts.is_empty()).then(|| {
                spec.mounts
                    .iter()
                    .map(|m| Mount {
                        target: Some(m.target.clone()),
                        source: Some(m.source.display().to_string()),
                        typ: Some(MountType::BIND),
                        read_only: Some(m.read_only),
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image.reference.clone()),
            // The image's ENTRYPOINT is kept; the keep-alive goes in as its command.
            cmd: Some(vec!["sleep".into(), "infinity".into()]),
            labels: Some(
                spec.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: spec.workdir.clone(),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| classify_start_error("creating container", e))?;
        let env = DockerEnvironment {
            docker: self.docker.clone(),
            id: created.id,
            destroyed: AtomicBool::new(false),
            exec_seq: AtomicU64::new(0),
        };
        if let Err(e) = self.docker.start_container(&env.id, None).await {
            let _ = env.destroy().await;
            return Err(classify_start_error("starting container", e));
        }
        Ok(Box::new(env))
    }

    async fn remove_labelled(&self, key: &str, value: &str) -> Result<usize, EnvError> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{key}={value}")])]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| EnvError::api("listing containers", e))?;
        let mut removed = 0;
        for c in list {
            let Some(id) = c.id else { continue };
            match self
                .docker
                .remove_container(&id, Some(force_remove()))
                .await
            {
                Ok(()) => removed += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(EnvError::api(format!("removing container {id}"), e)),
            }
        }
        Ok(removed)
    }
}

/// One container.
pub struct DockerEnvironment {
    docker: Docker,
    id: String,
    destroyed: AtomicBool,
    exec_seq: AtomicU64,
}

impl DockerEnvironment {
    async fn run_exec(&self, req: &ExecRequest, pid_file: &str) -> Result<ExecOutput, EnvError> {
        let started = Instant::now();
        let mut argv = vec![
            "sh".to_string(),
            "-c".to_string(),
            format!("{{ echo $$ > {pid_file}; }} 2>/dev/null; exec \"$@\""),
            "rollout-exec".to_string(),
        ];
        argv.extend(req.argv.iter().cloned());
        let exec = self
            .docker
            .create_exec(
                &self.id,
                CreateExecOptions {
                    cmd: Some(argv),
                    attach_stdin: Some(req.stdin.is_some()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    user: req.user.clone(),
                    working_dir: req.workdir.clone(),
                    env: (!req.env.is_empty())
                        .then(|| req.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| EnvError::api("creating an exec", e))?;
        let mut stdout = Captured::with_cap(req.output_cap);
        let mut stderr = Captured::with_cap(req.output_cap);
        let started_exec = self
            .docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: Some(64 * 1024),
                }),
            )
            .await
            .map_err(|e| EnvError::api("starting an exec", e))?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started_exec
        else {
            return Err(EnvError::api("starting an exec", "engine did not attach"));
        };
        // Feed stdin concurrently with reading output, so neither side can block the other.
        let writer = req.stdin.clone().map(|data| {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = input.write_all(&data).await;
                let _ = input.shutdown().await;
            })
        });
        let deadline = tokio::time::sleep(req.timeout);
        tokio::pin!(deadline);
        let mut timed_out = false;
        let mut output_limit_exceeded = false;
        loop {
            tokio::select! {
                item = output.next() => match item {
                    Some(Ok(bollard::container::LogOutput::StdOut { message })) => stdout.push(&message),
                    Some(Ok(bollard::container::LogOutput::StdErr { message })) => stderr.push(&message),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(EnvError::api("reading exec output", e)),
                    None => break,
                },
                _ = &mut deadline => { timed_out = true; break; }
            }
            if stdout.total > req.max_output || stderr.total > req.max_output {
                output_limit_exceeded = true;
                break;
            }
        }
        drop(output);
        if let Some(w) = writer {
            w.abort();
        }
        stdout.finish();
        stderr.finish();
        if timed_out || output_limit_exceeded {
            self.stop_command(pid_file).await?;
            return Ok(ExecOutput {
                exit_code: None,
                timed_out,
                output_limit_exceeded,
                stdout,
                stderr,
                duration: started.elapsed(),
            });
        }
        let exit_code = self.exit_code(&exec.id).await?;
        Ok(ExecOutput {
            exit_code,
            timed_out: false,
            output_limit_exceeded: false,
            stdout,
            stderr,
            duration: started.elapsed(),
        })
    }

    /// Start `req.argv` with stdin and stdout attached; stdout is relayed through a pipe by a
    /// task that ends with the command (or when the reader is dropped).
    async fn attach_exec(&self, req: &ExecRequest) -> Result<crate::ExecStream, EnvError> {
        let exec = self
            .docker
            .create_exec(
                &self.id,
                CreateExecOptions {
                    cmd: Some(req.argv.clone()),
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    user: req.user.clone(),
                    working_dir: req.workdir.clone(),
                    env: (!req.env.is_empty())
                        .then(|| req.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| EnvError::api("creating an attached exec", e))?;
        let started = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| EnvError::api("starting an attached exec", e))?;
        let StartExecResults::Attached { mut output, input } = started else {
            return Err(EnvError::api(
                "starting an attached exec",
                "engine did not attach",
            ));
        };
        let (reader, mut writer) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Some(Ok(item)) = output.next().await {
                if let bollard::container::LogOutput::StdOut { message } = item {
                    if writer.write_all(&message).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(crate::ExecStream {
            stdin: input,
            stdout: Box::pin(reader),
        })
    }

    /// The exit code of a finished exec. The engine can report it a moment after the output
    /// stream closes, so poll briefly while it still says "running".
    async fn exit_code(&self, exec_id: &str) -> Result<Option<i64>, EnvError> {
        for _ in 0..200 {
            let info = retried(|| self.docker.inspect_exec(exec_id))
                .await
                .map_err(|e| EnvError::api("inspecting an exec", e))?;
            if info.running != Some(true) {
                return Ok(info.exit_code);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(None)
    }

    /// Stop a runaway command: kill its process tree; if that cannot even run (a fork bomb has
    /// used up the pids limit), restart the container with no grace period, which ends every
    /// process in it but keeps its filesystem for the verifier.
    async fn stop_command(&self, pid_file: &str) -> Result<(), EnvError> {
        if self.kill_tree(pid_file).await {
            return Ok(());
        }
        tracing::warn!(container = %self.id, "could not kill a runaway command's processes; restarting the container");
        self.docker
            .restart_container(
                &self.id,
                Some(RestartContainerOptions {
                    t: Some(0),
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| EnvError::api("restarting the container to end a runaway command", e))
    }

    /// Stop and kill the process recorded in `pid_file` and all its descendants; true when the
    /// kill ran to the end.
    async fn kill_tree(&self, pid_file: &str) -> bool {
        let script = format!(
            "read p < {pid_file} 2>/dev/null || exit 0; \
             k() {{ kill -STOP $1 2>/dev/null; for c in $(cat /proc/$1/task/*/children 2>/dev/null); do k $c; done; kill -KILL $1 2>/dev/null; }}; \
             k $p; rm -f {pid_file}; \
             [ \"$(echo forked)\" = forked ]"
        );
        let req = ExecRequest {
            user: Some("0".into()),
            ..ExecRequest::sh(script, KILL_TIMEOUT)
        };
        // Run directly (not through run_exec) so that a kill never needs a kill of its own.
        let run = async {
            let exec = self
                .docker
                .create_exec(
                    &self.id,
                    CreateExecOptions {
                        cmd: Some(req.argv.clone()),
                        user: req.user.clone(),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        ..Default::default()
                    },
                )
                .await?;
            if let StartExecResults::Attached { mut output, .. } =
                self.docker.start_exec(&exec.id, None).await?
            {
                while output.next().await.is_some() {}
            }
            let info = self.docker.inspect_exec(&exec.id).await?;
            Ok::<_, BollardError>(info.exit_code == Some(0))
        };
        match tokio::time::timeout(KILL_TIMEOUT, run).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                tracing::warn!(container = %self.id, "could not kill a timed-out command: {e}");
                false
            }
            Err(_) => false,
        }
    }
}

#[async_trait]
impl Environment for DockerEnvironment {
    fn id(&self) -> &str {
        &self.id
    }

    async fn exec(&self, req: ExecRequest) -> Result<ExecOutput, EnvError> {
        let n = self.exec_seq.fetch_add(1, Ordering::Relaxed);
        let pid_file = format!("/tmp/.rollout-exec-{n}.pid");
        self.run_exec(&req, &pid_file).await
    }

    async fn exec_stream(&self, req: ExecRequest) -> Result<Option<crate::ExecStream>, EnvError> {
        self.attach_exec(&req).await.map(Some)
    }

    fn host_reaches_network(&self) -> bool {
        // Bridge-network addresses are routable from the host where the engine runs on this
        // machine's kernel (Linux); Docker Desktop keeps them inside its VM.
        cfg!(target_os = "linux")
    }

    async fn upload_tar(&self, tar: Vec<u8>) -> Result<(), EnvError> {
        self.docker
            .upload_to_container(
                &self.id,
                Some(UploadToContainerOptions {
                    path: "/".into(),
                    ..Default::default()
                }),
                bollard::body_full(tar.into()),
            )
            .await
            .map_err(|e| EnvError::api("copying files into the container", e))
    }

    async fn download_dir(
        &self,
        path: &str,
        dest: &Path,
        cap: u64,
    ) -> Result<DownloadInfo, EnvError> {
        let parent = dest.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .map_err(|e| EnvError::host(format!("creating {}", parent.display()), e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(parent).map_err(|e| {
            EnvError::host(
                format!("creating a temporary file in {}", parent.display()),
                e,
            )
        })?;
        let mut stream = self.docker.download_from_container(
            &self.id,
            Some(DownloadFromContainerOptions {
                path: path.to_string(),
            }),
        );
        let mut info = DownloadInfo {
            found: true,
            ..Default::default()
        };
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    let room = cap.saturating_sub(info.bytes) as usize;
                    let take = bytes.len().min(room);
                    tmp.write_all(&bytes[..take])
                        .map_err(|e| EnvError::host("writing a downloaded archive", e))?;
                    info.bytes += take as u64;
                    if take < bytes.len() {
                        info.truncated = true;
                        break;
                    }
                }
                Err(e) if is_not_found(&e) => {
                    info.found = false;
                    return Ok(info);
                }
                Err(e) => {
                    return Err(EnvError::api(
                        format!("copying {path} out of the container"),
                        e,
                    ))
                }
            }
        }
        drop(stream);
        let dest = dest.to_path_buf();
        let file = tmp
            .reopen()
            .map_err(|e| EnvError::host("reading a downloaded archive", e))?;
        let stats = tokio::task::spawn_blocking(move || {
            extract_stripped(std::io::BufReader::new(file), &dest)
        })
        .await
        .map_err(|e| EnvError::host("extracting a downloaded archive", e))?
        .map_err(|e| EnvError::host("extracting a downloaded archive", e))?;
        info.files = stats.files;
        info.skipped = stats.skipped;
        info.truncated |= stats.incomplete;
        Ok(info)
    }

    async fn destroy(&self) -> Result<(), EnvError> {
        if self.destroyed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        match retried(|| self.docker.remove_container(&self.id, Some(force_remove()))).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => {
                self.destroyed.store(false, Ordering::SeqCst);
                Err(EnvError::api(format!("removing container {}", self.id), e))
            }
        }
    }
}

/// Whether an engine error is worth retrying: connection trouble, timeouts, 5xx, and 409
/// conflicts (e.g. "removal already in progress").
fn transient(e: &BollardError) -> bool {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => {
            *status_code >= 500 || *status_code == 409
        }
        BollardError::RequestTimeoutError
        | BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. } => true,
        _ => false,
    }
}

/// Run an idempotent engine call, retrying transient errors with exponential backoff
/// (4 tries: 0.1, 0.2, 0.4 s apart).
pub(crate) async fn retried<T, F, Fut>(mut call: F) -> Result<T, BollardError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BollardError>>,
{
    let mut delay = Duration::from_millis(100);
    let mut tries = 1;
    loop {
        match call().await {
            Err(e) if tries < 4 && transient(&e) => {
                tracing::debug!("transient engine error, retrying in {delay:?}: {e}");
                tokio::time::sleep(delay).await;
                delay *= 2;
                tries += 1;
            }
            other => return other,
        }
    }
}

pub(crate) fn force_remove() -> RemoveContainerOptions {
    RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    }
}

pub(crate) fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn docker_message(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn classify_start_error(context: &str, e: BollardError) -> EnvError {
    match &e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } if *status_code < 500 || message.contains("OCI runtime") => {
            EnvError::StartFailed(format!("{context}: {message}"))
        }
        BollardError::DockerResponseServerError { message, .. } => {
            EnvError::StartFailed(format!("{context}: {message}"))
        }
        _ => EnvError::api(context, e),
    }
}

fn last_line(s: &str) -> String {
    s.trim().lines().last().unwrap_or("").to_string()
}

/// `name[:tag]` → (name, tag) with "latest" as default; digests (`@sha256:`) kept whole.
fn split_reference(reference: &str) -> (&str, &str) {
    if reference.contains('@') {
        return (reference, "");
    }
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => (&reference[..slash + i], &reference[slash + i + 1..]),
        None => (reference, "latest"),
    }
}

/// Docker container names allow `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn sanitize_name(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    cleaned.trim_start_matches(['_', '.', '-']).to_string()
}

fn short_random() -> String {
    let mut buf = [0u8; 4];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let h = blake3::hash(format!("{nanos}-{seq}-{}", std::process::id()).as_bytes());
    buf.copy_from_slice(&h.as_bytes()[..4]);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split() {
        assert_eq!(split_reference("debian"), ("debian", "latest"));
        assert_eq!(
            split_reference("debian:bookworm-slim"),
            ("debian", "bookworm-slim")
        );
        assert_eq!(
            split_reference("localhost:5000/a/b"),
            ("localhost:5000/a/b", "latest")
        );
        assert_eq!(
            split_reference("localhost:5000/a/b:1"),
            ("localhost:5000/a/b", "1")
        );
        assert_eq!(
            split_reference("does/not/exist:latest"),
            ("does/not/exist", "latest")
        );
    }

    #[test]
    fn names_are_docker_safe() {
        assert_eq!(
            sanitize_name("hello-world__oracle__1"),
            "hello-world__oracle__1"
        );
        assert_eq!(sanitize_name("_a b/c"), "a-b-c");
    }

    #[test]
    fn image_tags_are_content_addressed() {
        let h = blake3::hash(b"x");
        assert!(image_tag(&h).starts_with("rollout-env:"));
        assert_eq!(image_tag(&h).len(), "rollout-env:".len() + 24);
    }
}
