//! The Docker provider: Engine API over the unix socket (or `DOCKER_HOST`), via bollard.
//!
//! Images are tagged by the BLAKE3 of the environment directory, so an environment is built once
//! per machine and reused by every trial and job that has the same files. Containers keep the
//! image's ENTRYPOINT and get a keep-alive command; commands run through exec with a timeout
//! that kills the whole process tree; teardown is an immediate forced remove (no stop grace).

use crate::archive::extract_stripped;
use crate::exec::{Captured, ExecOutput, ExecRequest};
use crate::{DownloadInfo, EnvError, EnvSpec, Environment, ImageSource, PreparedImage, Provider};
use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    BuildImageOptions, CreateContainerOptions, CreateImageOptions, DownloadFromContainerOptions,
    ListContainersOptions, RemoveContainerOptions, UploadToContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
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
/// Bound on the helper execs rollout runs itself (killing a timed-out command). Past it,
/// every process of the container is stopped instead.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on each engine call of a hard stop (pause, kill, start).
const HARD_STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// An exec still streaming after this long is inspected every [`EXEC_CHECK_EVERY`]: the engine
/// can leave an exec's stream open after its process has ended (seen with Engine 20.10,
/// docker/cli#4553), which would otherwise hold the trial until its timeout and score it as one.
const EXEC_CHECK_AFTER: Duration = Duration::from_secs(2);
const EXEC_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Once the engine says the exec's process has ended, output still in flight gets this long.
/// The engine itself gives a background child that holds the output open 2 s.
const EXEC_DRAIN_GRACE: Duration = Duration::from_secs(3);

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
    gpus: crate::GpuSupport,
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
        let gpus = match gpu_problem(&docker, local).await {
            Some(why) => crate::GpuSupport::None(why),
            None => crate::GpuSupport::AnyModel,
        };
        Ok(Self {
            docker,
            local,
            gpus,
            images: Mutex::new(HashMap::new()),
            build_slots: Semaphore::new(limits.builds.max(1)),
            create_slots: Semaphore::new(limits.creates.max(1)),
        })
    }

    /// The underlying client (for `rollout gc` and tests).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    pub(crate) fn cell(&self, key: &str) -> ImageCell {
        let mut map = self.images.lock().expect("image map poisoned");
        map.entry(key.to_string()).or_default().clone()
    }

    pub(crate) async fn image_id(&self, reference: &str) -> Result<Option<String>, EnvError> {
        match retried(|| self.docker.inspect_image(reference)).await {
            Ok(info) => Ok(Some(info.id.unwrap_or_default())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(EnvError::api(format!("inspecting image {reference}"), e)),
        }
    }

    /// Build the context `tar` (already packed, `.dockerignore` applied) as `tag`.
    pub(crate) async fn build(
        &self,
        tar: Vec<u8>,
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
        if tar.len() > MAX_BUILD_CONTEXT {
            return Err(EnvError::BuildFailed {
                image: tag.to_string(),
                message: format!(
                    "{} is {} MiB; build contexts are capped at {} MiB (move large data out of environment/, or list it in environment/.dockerignore)",
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
            ..Default::default()
        })
    }

    pub(crate) async fn pull(&self, reference: &str) -> Result<PreparedImage, EnvError> {
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
            ..Default::default()
        })
    }
}

/// Tag of the image built from an environment directory with content digest `digest`.
pub fn image_tag(digest: &blake3::Hash) -> String {
    format!("rollout-env:{}", &digest.to_hex()[..24])
}

/// The Engine API request for `count` GPUs (what `docker run --gpus N` sends).
fn gpu_request(count: u32) -> bollard::models::DeviceRequest {
    bollard::models::DeviceRequest {
        count: Some(i64::from(count)),
        capabilities: Some(vec![vec!["gpu".to_string()]]),
        ..Default::default()
    }
}

/// Why this engine cannot give containers GPUs, from its `Runtimes` and the host's devices
/// (asked once, when the provider connects).
async fn gpu_problem(docker: &Docker, local: bool) -> Option<String> {
    let info = match tokio::time::timeout(Duration::from_secs(20), docker.info()).await {
        Ok(Ok(info)) => info,
        Ok(Err(e)) => return Some(format!("cannot ask the Docker engine about GPUs: {e}")),
        Err(_) => {
            return Some("the Docker engine did not say within 20 s whether it has GPUs".into())
        }
    };
    let nvidia_runtime = info
        .runtimes
        .as_ref()
        .is_some_and(|r| r.keys().any(|k| k.contains("nvidia")));
    let devices = !local
        || std::path::Path::new("/dev/nvidiactl").exists()
        || std::path::Path::new("/dev/nvidia0").exists();
    (!(nvidia_runtime && devices)).then(|| {
        format!(
            "this Docker host has none (no nvidia runtime{}); run it on a GPU host or drop the task",
            if local && !devices { ", no /dev/nvidia*" } else { "" }
        )
    })
}

#[async_trait]
impl Provider for DockerProvider {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn capabilities(&self) -> crate::Capabilities {
        crate::Capabilities {
            provider: "docker".into(),
            network: crate::NetworkCapabilities {
                public: true,
                none: true,
                // Enforced by an internal network and rollout's filtering proxy, which must
                // listen on the network's gateway: this machine must be the engine's host.
                allowlist: if self.local {
                    crate::Capabilities::all_entry_kinds()
                } else {
                    Default::default()
                },
                allowlist_note: (!self.local).then(|| {
                    "the engine is remote (DOCKER_HOST), and the allowlist proxy must run on the engine's host".to_string()
                }),
                allowlist_compose: false,
            },
            host_mounts: self.local,
            gpus: self.gpus.clone(),
            pids_limit: true,
            compose: true,
            mcp_stdio: true,
        }
    }

    async fn gc_orphans(&self, this_host: &str) -> Result<usize, EnvError> {
        let items = self
            .gc(
                this_host,
                crate::gc::GcOptions {
                    dry_run: false,
                    ..Default::default()
                },
            )
            .await?;
        Ok(items.iter().filter(|i| i.removed).count())
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
                pull,
            } => {
                self.prepare_build(context, *timeout, *force, *pull, labels)
                    .await
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
                        ..Default::default()
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
        if spec.network == NetworkMode::Allowlist {
            return Ok(Box::new(self.create_allowlisted(image, spec).await?));
        }
        Ok(Box::new(self.create_attached(image, spec, None).await?))
    }

    async fn create_compose(
        &self,
        image: &PreparedImage,
        spec: &EnvSpec,
        project: &rollout_core::compose::ComposeProject,
        options: &crate::compose::ComposeOptions,
    ) -> Result<Box<dyn Environment>, EnvError> {
        crate::compose::start(self, image, spec, project, options).await
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
        // The networks and volumes of multi-container trials, once their containers are gone.
        crate::compose::remove_labelled_resources(&self.docker, key, value).await?;
        Ok(removed)
    }
}

impl DockerProvider {
    /// Create and start one container whose only way out is an egress proxy allowing
    /// `spec.allowed_hosts` ([`crate::egress`]): the container joins a new `internal` network
    /// (no route out), and the proxy listens on that network's gateway. The network is
    /// labelled like the container (swept with the job, reaped by `rollout gc`) and removed
    /// with the environment; the proxy stops when the environment is dropped or destroyed.
    async fn create_allowlisted(
        &self,
        image: &PreparedImage,
        spec: &EnvSpec,
    ) -> Result<DockerEnvironment, EnvError> {
        if !self.local {
            return Err(EnvError::Unsupported(
                "network_mode = \"allowlist\" needs the Docker engine on this machine (the egress proxy listens on the trial network's gateway); DOCKER_HOST names a remote engine".into(),
            ));
        }
        let allow = rollout_core::allowlist::Allowlist::new(&spec.allowed_hosts)
            .map_err(|e| EnvError::Unsupported(format!("environment.allowed_hosts: {e}")))?;
        let name = format!(
            "rollout-egress-{}-{}",
            sanitize_name(&spec.name),
            short_random()
        );
        let mut labels: HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(rollout_core::labels::MANAGED.into(), "true".into());
        labels.insert(crate::egress::NETWORK_LABEL.into(), "allowlist".into());
        let network = self
            .docker
            .create_network(bollard::models::NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                // No route out: the proxy on the gateway is the only way.
                internal: Some(true),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(|e| classify_start_error("creating the trial's allowlist network", e))?;
        let network_id = network.id;
        let remove_network = || async {
            let _ = retried(|| self.docker.remove_network(&network_id)).await;
        };
        let proxy = match self.start_proxy(&network_id, allow).await {
            Ok(p) => p,
            Err(e) => {
                remove_network().await;
                return Err(e);
            }
        };
        let mut spec = spec.clone();
        spec.env.extend(proxy.env());
        let attach = crate::compose::Attach {
            network: name,
            aliases: Vec::new(),
            volumes: Vec::new(),
            defer_start: false,
        };
        match self.create_attached(image, &spec, Some(&attach)).await {
            Ok(mut env) => {
                env.egress = Some(Egress {
                    network: network_id.clone(),
                    proxy: Mutex::new(Some(proxy)),
                });
                Ok(env)
            }
            Err(e) => {
                drop(proxy);
                remove_network().await;
                Err(e)
            }
        }
    }

    /// Start the proxy on the gateway of network `id`, serving that network's subnet.
    async fn start_proxy(
        &self,
        id: &str,
        allow: rollout_core::allowlist::Allowlist,
    ) -> Result<crate::egress::EgressProxy, EnvError> {
        let info = self
            .docker
            .inspect_network(id, None::<bollard::query_parameters::InspectNetworkOptions>)
            .await
            .map_err(|e| EnvError::api("inspecting the trial's allowlist network", e))?;
        let ipam = info
            .ipam
            .and_then(|i| i.config)
            .and_then(|c| {
                c.into_iter()
                    .find(|c| c.gateway.is_some() && c.subnet.is_some())
            })
            .ok_or_else(|| {
                EnvError::StartFailed(
                    "the trial's allowlist network has no gateway address for the egress proxy"
                        .into(),
                )
            })?;
        let (subnet, gateway) = (
            ipam.subnet.unwrap_or_default(),
            ipam.gateway.unwrap_or_default(),
        );
        let gateway: std::net::IpAddr = gateway.parse().map_err(|_| {
            EnvError::StartFailed(format!(
                "the allowlist network's gateway {gateway:?} is not an IP address"
            ))
        })?;
        let clients = rollout_core::allowlist::Allowlist::new(std::slice::from_ref(&subnet))
            .map_err(|e| EnvError::StartFailed(format!("the allowlist network's subnet: {e}")))?;
        crate::egress::EgressProxy::start(gateway, clients, allow)
            .await
            .map_err(|e| {
                EnvError::StartFailed(format!(
                    "starting the egress proxy on {gateway} (the allowlist network's gateway): {e}"
                ))
            })
    }

    /// Create and start one container; `attach` joins it to a compose trial's network (under
    /// its aliases) with its named volumes, instead of the default network (and may leave it
    /// created but not started).
    pub(crate) async fn create_attached(
        &self,
        image: &PreparedImage,
        spec: &EnvSpec,
        attach: Option<&crate::compose::Attach>,
    ) -> Result<DockerEnvironment, EnvError> {
        let _slot = self
            .create_slots
            .acquire()
            .await
            .expect("semaphore never closed");
        let name = format!("rollout-{}-{}", sanitize_name(&spec.name), short_random());
        let memory = i64::try_from(spec.memory_mb)
            .ok()
            .and_then(|mb| mb.checked_mul(1 << 20))
            .ok_or_else(|| {
                EnvError::StartFailed(format!(
                    "a memory limit of {} MiB does not fit the engine's byte count",
                    spec.memory_mb
                ))
            })?;
        let host_config = HostConfig {
            nano_cpus: Some((spec.cpus * 1e9) as i64),
            memory: Some(memory),
            memory_swap: Some(memory),
            pids_limit: Some(spec.pids_limit),
            network_mode: Some(match (attach, spec.network) {
                (Some(a), _) => a.network.clone(),
                (None, NetworkMode::NoNetwork) => "none".into(),
                (None, NetworkMode::Public | NetworkMode::Allowlist) => "bridge".into(),
            }),
            // A real PID 1 that reaps zombies and forwards signals.
            init: Some(true),
            // Untrusted code gains no privilege through setuid binaries, and loses capabilities
            // ordinary tasks (apt, pip, servers on low ports) do not need.
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            cap_drop: Some(DROPPED_CAPABILITIES.iter().map(|c| c.to_string()).collect()),
            device_requests: (spec.gpus > 0).then(|| vec![gpu_request(spec.gpus)]),
            mounts: (!spec.mounts.is_empty() || attach.is_some_and(|a| !a.volumes.is_empty()))
                .then(|| {
                    spec.mounts
                        .iter()
                        .map(|m| Mount {
                            target: Some(m.target.clone()),
                            source: Some(m.source.display().to_string()),
                            typ: Some(MountType::BIND),
                            read_only: Some(m.read_only),
                            ..Default::default()
                        })
                        .chain(attach.into_iter().flat_map(|a| a.volumes.iter().cloned()))
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
            networking_config: attach.map(crate::compose::Attach::networking),
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
            restarts: AtomicU64::new(0),
            egress: None,
        };
        // A compose trial's main container is started by the compose code, once its
        // dependencies are ready.
        if attach.is_some_and(|a| a.defer_start) {
            return Ok(env);
        }
        if let Err(e) = self.docker.start_container(&env.id, None).await {
            let _ = env.destroy().await;
            return Err(classify_start_error("starting container", e));
        }
        Ok(env)
    }
}

/// One container.
pub struct DockerEnvironment {
    docker: Docker,
    id: String,
    destroyed: AtomicBool,
    exec_seq: AtomicU64,
    restarts: AtomicU64,
    /// The allowlist network and proxy of a `network_mode = "allowlist"` trial.
    egress: Option<Egress>,
}

/// What an allowlisted container has besides itself.
struct Egress {
    /// Network id.
    network: String,
    /// Taken (stopped) on destroy; dropped with the environment otherwise.
    proxy: Mutex<Option<crate::egress::EgressProxy>>,
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
        let mut check = tokio::time::interval_at(
            tokio::time::Instant::now() + EXEC_CHECK_AFTER,
            EXEC_CHECK_EVERY,
        );
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the engine first reported the exec's process as ended while its stream stayed open.
        let mut ended_at: Option<Instant> = None;
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
                _ = check.tick() => match ended_at {
                    Some(t) if t.elapsed() >= EXEC_DRAIN_GRACE => {
                        tracing::warn!(
                            container = %self.id,
                            exec = %exec.id,
                            "the engine kept an exec's output open {:.0} s after its process ended; \
                             its result is taken without the rest of the stream",
                            t.elapsed().as_secs_f64()
                        );
                        break;
                    }
                    Some(_) => {}
                    None => {
                        // A failed inspection is not an end: the stream and the deadline still rule.
                        if let Ok(info) = self.docker.inspect_exec(&exec.id).await {
                            if info.running == Some(false) {
                                ended_at = Some(Instant::now());
                            }
                        }
                    }
                },
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
    /// used up the pids limit), stop every process of the container ([`Environment::stop_all`]),
    /// which keeps its filesystem for the verifier.
    async fn stop_command(&self, pid_file: &str) -> Result<(), EnvError> {
        if self.kill_tree(pid_file).await {
            return Ok(());
        }
        tracing::warn!(container = %self.id, "could not kill a runaway command's processes; stopping every process of the container");
        self.hard_stop().await
    }

    /// Freeze every process at once (the cgroup freezer: `pause`), kill the container (its
    /// init dies, the kernel kills the rest of its pid namespace, frozen or not), start it
    /// again. The writable layer, and so everything the agent did, is kept; the image's
    /// ENTRYPOINT runs again, so services it starts are back for the verifier.
    async fn hard_stop(&self) -> Result<(), EnvError> {
        let step = |what: &'static str| {
            move |e: BollardError| EnvError::api(format!("{what} (stopping every process)"), e)
        };
        let bounded = |what: &'static str| {
            move |_| EnvError::Api {
                context: format!("{what} (stopping every process)"),
                message: format!("no answer within {} s", HARD_STOP_TIMEOUT.as_secs()),
            }
        };
        // Pausing fails when the container is not running any more; killing still applies.
        let _ =
            tokio::time::timeout(HARD_STOP_TIMEOUT, self.docker.pause_container(&self.id)).await;
        match tokio::time::timeout(
            HARD_STOP_TIMEOUT,
            self.docker.kill_container(
                &self.id,
                Some(bollard::query_parameters::KillContainerOptions {
                    signal: "SIGKILL".into(),
                }),
            ),
        )
        .await
        .map_err(bounded("killing the container"))?
        {
            Ok(()) => {}
            // 409: not running (already dead); the start below brings it back.
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => {}
            Err(e) => return Err(step("killing the container")(e)),
        }
        self.wait_stopped().await;
        self.restarts.fetch_add(1, Ordering::SeqCst);
        tokio::time::timeout(
            HARD_STOP_TIMEOUT,
            self.docker.start_container(&self.id, None),
        )
        .await
        .map_err(bounded("starting the container again"))?
        .map_err(step("starting the container again"))
    }

    /// Wait (bounded) until the engine reports the container as no longer running.
    async fn wait_stopped(&self) {
        let deadline = Instant::now() + HARD_STOP_TIMEOUT;
        while Instant::now() < deadline {
            match self.docker.inspect_container(&self.id, None).await {
                Ok(info) => {
                    let state = info.state.unwrap_or_default();
                    if state.running != Some(true) {
                        return;
                    }
                }
                Err(_) => return,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
        info.skipped_entries = stats.skipped_entries;
        info.truncated |= stats.incomplete;
        Ok(info)
    }

    fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::SeqCst)
    }

    async fn stop_all(&self) -> Result<(), EnvError> {
        self.hard_stop().await
    }

    async fn destroy(&self) -> Result<(), EnvError> {
        if self.destroyed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        match retried(|| self.docker.remove_container(&self.id, Some(force_remove()))).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                self.destroyed.store(false, Ordering::SeqCst);
                return Err(EnvError::api(format!("removing container {}", self.id), e));
            }
        }
        if let Some(egress) = &self.egress {
            drop(egress.proxy.lock().expect("proxy lock poisoned").take());
            match retried(|| self.docker.remove_network(&egress.network)).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(EnvError::api(
                        format!("removing the allowlist network {}", egress.network),
                        e,
                    ))
                }
            }
        }
        Ok(())
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

pub(crate) fn docker_message(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn classify_start_error(context: &str, e: BollardError) -> EnvError {
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
pub(crate) fn sanitize_name(s: &str) -> String {
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

pub(crate) fn short_random() -> String {
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
