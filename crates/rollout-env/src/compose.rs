//! Multi-container trials on Docker: a task's compose services around its main container,
//! through the Engine API (no `docker compose` binary).
//!
//! One trial gets its own bridge network (internal, without a route out, when the task says
//! `network_mode = "no-network"`) on which every service is reachable by its service name and
//! the task's container by `main`; its own named volumes; and its sidecars, started in
//! `depends_on` order with `service_started`, `service_healthy` and
//! `service_completed_successfully` honoured. Every container, network and volume carries the
//! trial's labels, so that teardown, the runner's sweep and `rollout gc` find them all.

use crate::docker::{
    classify_start_error, force_remove, is_not_found, retried, sanitize_name, short_random,
    DockerEnvironment, DockerProvider, DROPPED_CAPABILITIES,
};
use crate::{DownloadInfo, EnvError, EnvSpec, Environment, ImageSource, PreparedImage, Provider};
use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HealthStatusEnum, HostConfig, Mount,
    MountType, NetworkCreateRequest, NetworkingConfig, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListNetworksOptions, ListVolumesOptions, LogsOptions,
    RemoveVolumeOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use rollout_core::compose::{ComposeProject, Condition, Service, ServiceImage, MAIN};
use rollout_core::labels;
use rollout_core::task_config::NetworkMode;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How compose services are made.
#[derive(Debug, Clone)]
pub struct ComposeOptions {
    /// Bound on each sidecar image build.
    pub build_timeout: Duration,
    /// Rebuild sidecar images even when cached.
    pub force_build: bool,
    /// When to refresh the base images of sidecar builds from their registry.
    pub pull: rollout_core::job_config::PullPolicy,
    /// Bound on waiting for a one-shot service to finish (`service_completed_successfully`).
    pub start_timeout: Duration,
}

/// How a container joins a compose trial.
#[derive(Debug, Clone)]
pub(crate) struct Attach {
    /// Network name.
    pub network: String,
    /// Names it answers to on that network.
    pub aliases: Vec<String>,
    /// Named volume mounts.
    pub volumes: Vec<Mount>,
    /// Create the container without starting it.
    pub defer_start: bool,
}

impl Attach {
    pub(crate) fn networking(&self) -> NetworkingConfig {
        NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                self.network.clone(),
                EndpointSettings {
                    aliases: Some(self.aliases.clone()),
                    ..Default::default()
                },
            )])),
        }
    }
}

/// What a compose trial created, for cleanup.
#[derive(Default)]
struct Created {
    containers: Vec<String>,
    network: Option<String>,
    volumes: Vec<String>,
}

impl Created {
    /// Remove everything (containers first, all at once; a network or volume in use cannot go).
    async fn remove(&self, docker: &Docker) -> Result<(), EnvError> {
        let containers =
            futures_util::future::join_all(self.containers.iter().map(|id| async move {
                match retried(|| docker.remove_container(id, Some(force_remove()))).await {
                    Ok(()) => Ok(()),
                    Err(e) if is_not_found(&e) => Ok(()),
                    Err(e) => Err(EnvError::api(format!("removing container {id}"), e)),
                }
            }))
            .await;
        let network = async {
            let Some(net) = &self.network else {
                return Ok(());
            };
            match retried(|| docker.remove_network(net)).await {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(EnvError::api(format!("removing network {net}"), e)),
            }
        };
        let volumes = futures_util::future::join_all(self.volumes.iter().map(|v| async move {
            let force = Some(RemoveVolumeOptions { force: true });
            match retried(|| docker.remove_volume(v, force.clone())).await {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(EnvError::api(format!("removing volume {v}"), e)),
            }
        }));
        let (network, volumes) = tokio::join!(network, volumes);
        containers
            .into_iter()
            .chain(std::iter::once(network))
            .chain(volumes)
            .collect::<Result<Vec<()>, EnvError>>()
            .map(|_| ())
    }
}

/// A running compose trial: commands run in main; teardown removes every part.
pub struct ComposeEnvironment {
    main: DockerEnvironment,
    docker: Docker,
    created: Created,
    destroyed: AtomicBool,
}

#[async_trait]
impl Environment for ComposeEnvironment {
    fn id(&self) -> &str {
        self.main.id()
    }

    async fn exec(&self, req: crate::ExecRequest) -> Result<crate::ExecOutput, EnvError> {
        self.main.exec(req).await
    }

    // Everything the agent and the verifier do happens in main, so main answers for the
    // optional capabilities too (MCP stdio servers, reaching sidecars by address, the
    // sandbox's stop-everything fallback and its restart count).
    async fn exec_stream(
        &self,
        req: crate::ExecRequest,
    ) -> Result<Option<crate::ExecStream>, EnvError> {
        self.main.exec_stream(req).await
    }

    fn host_reaches_network(&self) -> bool {
        self.main.host_reaches_network()
    }

    fn restarts(&self) -> u64 {
        self.main.restarts()
    }

    async fn stop_all(&self) -> Result<(), EnvError> {
        self.main.stop_all().await
    }

    async fn upload_tar(&self, tar: Vec<u8>) -> Result<(), EnvError> {
        self.main.upload_tar(tar).await
    }

    async fn download_dir(
        &self,
        path: &str,
        dest: &Path,
        cap: u64,
    ) -> Result<DownloadInfo, EnvError> {
        self.main.download_dir(path, dest, cap).await
    }

    async fn destroy(&self) -> Result<(), EnvError> {
        if self.destroyed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // `created` holds main's container too: every container goes at once.
        let removed = self.created.remove(&self.docker).await;
        if removed.is_err() {
            self.destroyed.store(false, Ordering::SeqCst);
        }
        removed
    }
}

/// Start a compose trial (see the module docs). On any error, what was created is removed
/// before the error returns.
pub(crate) async fn start(
    provider: &DockerProvider,
    image: &PreparedImage,
    spec: &EnvSpec,
    project: &ComposeProject,
    options: &ComposeOptions,
) -> Result<Box<dyn Environment>, EnvError> {
    let docker = provider.client().clone();
    let mut created = Created::default();
    match start_in(provider, image, spec, project, options, &mut created).await {
        Ok(main) => Ok(Box::new(ComposeEnvironment {
            main,
            docker,
            created,
            destroyed: AtomicBool::new(false),
        })),
        Err(e) => {
            if let Err(cleanup) = created.remove(&docker).await {
                tracing::warn!("cleaning up a failed compose start: {cleanup}");
            }
            Err(e)
        }
    }
}

async fn start_in(
    provider: &DockerProvider,
    image: &PreparedImage,
    spec: &EnvSpec,
    project: &ComposeProject,
    options: &ComposeOptions,
    created: &mut Created,
) -> Result<DockerEnvironment, EnvError> {
    let docker = provider.client();
    // Images first: nothing runs before every image is there.
    let mut images: BTreeMap<&str, PreparedImage> = BTreeMap::new();
    let image_labels = BTreeMap::from([(labels::MANAGED.to_string(), "true".to_string())]);
    let prepared = futures_util::future::join_all(project.services.values().map(|s| {
        let source = match &s.image {
            ServiceImage::Build(context) => Some(ImageSource::Build {
                context: context.clone(),
                timeout: options.build_timeout,
                force: options.force_build,
                pull: options.pull,
            }),
            ServiceImage::Image(r) if r == rollout_core::compose::MAIN_IMAGE_PLACEHOLDER => None,
            ServiceImage::Image(r) => Some(ImageSource::Prebuilt {
                reference: r.clone(),
            }),
        };
        let labels = &image_labels;
        async move {
            match source {
                Some(src) => provider.prepare_image(&src, labels).await,
                None => Ok(image.clone()),
            }
        }
    }))
    .await;
    for (s, img) in project.services.values().zip(prepared) {
        images.insert(s.name.as_str(), img.map_err(|e| with_service(e, &s.name))?);
    }

    let base = format!("rollout-{}-{}", sanitize_name(&spec.name), short_random());
    let mut resource_labels: HashMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    resource_labels.insert(labels::MANAGED.into(), "true".into());
    let network = docker
        .create_network(NetworkCreateRequest {
            name: base.clone(),
            driver: Some("bridge".into()),
            // No route out: services reach each other, nothing else.
            internal: Some(spec.network == NetworkMode::NoNetwork),
            labels: Some(resource_labels.clone()),
            ..Default::default()
        })
        .await
        .map_err(|e| classify_start_error("creating the trial network", e))?;
    created.network = Some(network.id.clone());
    let mut volume_names = BTreeMap::new();
    for v in &project.volumes {
        let name = format!("{base}-{v}");
        docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.clone()),
                labels: Some(resource_labels.clone()),
                ..Default::default()
            })
            .await
            .map_err(|e| classify_start_error(&format!("creating volume {v}"), e))?;
        created.volumes.push(name.clone());
        volume_names.insert(v.clone(), name);
    }
    let mounts = |vols: &[rollout_core::compose::VolumeMount]| -> Vec<Mount> {
        vols.iter()
            .map(|m| Mount {
                target: Some(m.target.clone()),
                source: Some(volume_names[&m.volume].clone()),
                typ: Some(MountType::VOLUME),
                read_only: Some(m.read_only),
                ..Default::default()
            })
            .collect()
    };

    // main's container is created (not started) while the sidecars start: no sidecar may
    // depend on main, and main starts only once its own dependencies are ready.
    let mut main_spec = spec.clone();
    // The task's own settings win over the compose file's, as Harbor's env override.
    for (k, v) in &project.main.environment {
        main_spec.env.entry(k.clone()).or_insert_with(|| v.clone());
    }
    main_spec.labels.insert(labels::SERVICE.into(), MAIN.into());
    let main_attach = Attach {
        network: network.id.clone(),
        aliases: vec![MAIN.to_string()],
        volumes: mounts(&project.main.volumes),
        defer_start: true,
    };
    let make_main = provider.create_attached(image, &main_spec, Some(&main_attach));
    let mut sidecar_ids: Vec<String> = Vec::new();
    let start_sidecars = async {
        let mut ids: BTreeMap<String, String> = BTreeMap::new();
        for name in project.order.iter().filter(|n| n.as_str() != MAIN) {
            for (dep, condition) in project.depends_on(name) {
                let svc = &project.services[dep];
                wait_for(
                    docker,
                    &ids[dep],
                    svc,
                    *condition,
                    options.start_timeout,
                    name,
                )
                .await?;
            }
            let svc = &project.services[name];
            let attach = Attach {
                network: network.id.clone(),
                aliases: vec![name.clone()],
                volumes: mounts(&svc.volumes),
                defer_start: false,
            };
            let id = create_sidecar(
                docker,
                &images[name.as_str()],
                spec,
                svc,
                &attach,
                &base,
                &mut sidecar_ids,
            )
            .await?;
            ids.insert(name.clone(), id);
        }
        Ok::<_, EnvError>(ids)
    };
    let (main, ids) = tokio::join!(make_main, start_sidecars);
    created.containers.extend(sidecar_ids);
    if let Ok(m) = &main {
        created.containers.push(m.id().to_string());
    }
    let (main, ids) = (main?, ids?);
    for (dep, condition) in &project.main.depends_on {
        let svc = &project.services[dep];
        wait_for(
            docker,
            &ids[dep],
            svc,
            *condition,
            options.start_timeout,
            MAIN,
        )
        .await?;
    }
    docker
        .start_container(main.id(), None)
        .await
        .map_err(|e| classify_start_error("starting the main container", e))?;
    Ok(main)
}

#[allow(clippy::too_many_arguments)]
async fn create_sidecar(
    docker: &Docker,
    image: &PreparedImage,
    spec: &EnvSpec,
    svc: &Service,
    attach: &Attach,
    base: &str,
    created: &mut Vec<String>,
) -> Result<String, EnvError> {
    let mut labels_of: HashMap<String, String> = spec
        .labels
        .iter()
        .chain(
            svc.labels
                .iter()
                .filter(|(k, _)| !k.starts_with("io.rollout.")),
        )
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels_of.insert(labels::SERVICE.into(), svc.name.clone());
    // Sidecars get the trial's memory, CPU and process limits and main's restricted privileges.
    let memory = (spec.memory_mb as i64) * 1024 * 1024;
    let host_config = HostConfig {
        nano_cpus: Some((spec.cpus * 1e9) as i64),
        memory: Some(memory),
        memory_swap: Some(memory),
        pids_limit: Some(spec.pids_limit),
        network_mode: Some(attach.network.clone()),
        init: svc.init,
        security_opt: Some(vec!["no-new-privileges:true".into()]),
        cap_drop: Some(DROPPED_CAPABILITIES.iter().map(|c| c.to_string()).collect()),
        mounts: (!attach.volumes.is_empty()).then(|| attach.volumes.clone()),
        ..Default::default()
    };
    let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    let body = ContainerCreateBody {
        image: Some(image.reference.clone()),
        cmd: svc.command.clone(),
        entrypoint: svc.entrypoint.clone(),
        env: Some(
            svc.environment
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        ),
        working_dir: svc.working_dir.clone(),
        user: svc.user.clone(),
        hostname: svc.hostname.clone(),
        tty: Some(svc.tty),
        open_stdin: Some(svc.stdin_open),
        labels: Some(labels_of),
        healthcheck: svc.healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(h.test.clone()),
            interval: Some(nanos(h.interval)),
            timeout: Some(nanos(h.timeout)),
            retries: Some(h.retries as i64),
            start_period: Some(nanos(h.start_period)),
            start_interval: h.start_interval.map(nanos),
        }),
        host_config: Some(host_config),
        networking_config: Some(attach.networking()),
        ..Default::default()
    };
    let name = format!("{base}-{}", svc.name);
    let c = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name),
                ..Default::default()
            }),
            body,
        )
        .await
        .map_err(|e| classify_start_error(&format!("creating service {}", svc.name), e))?;
    created.push(c.id.clone());
    docker
        .start_container(&c.id, None)
        .await
        .map_err(|e| classify_start_error(&format!("starting service {}", svc.name), e))?;
    Ok(c.id)
}

/// Wait until `svc` (container `id`) meets `condition` for `waiter`.
async fn wait_for(
    docker: &Docker,
    id: &str,
    svc: &Service,
    condition: Condition,
    start_timeout: Duration,
    waiter: &str,
) -> Result<(), EnvError> {
    let started = Instant::now();
    let deadline = match (condition, &svc.healthcheck) {
        (Condition::Healthy, Some(h)) => h.deadline() + Duration::from_secs(10),
        _ => start_timeout,
    };
    if condition == Condition::Started {
        return Ok(());
    }
    let mut pause = Duration::from_millis(20);
    loop {
        let info = retried(|| docker.inspect_container(id, None))
            .await
            .map_err(|e| EnvError::api(format!("inspecting service {}", svc.name), e))?;
        let state = info.state.unwrap_or_default();
        let running = state.running == Some(true);
        let exit = state.exit_code.unwrap_or(-1);
        match condition {
            Condition::CompletedSuccessfully if !running => {
                if exit == 0 {
                    return Ok(());
                }
                return Err(EnvError::StartFailed(format!(
                    "service `{}` (which `{waiter}` waits for with service_completed_successfully) exited with {exit}{}",
                    svc.name,
                    logs_tail(docker, id).await
                )));
            }
            Condition::Healthy => {
                let health = state.health.unwrap_or_default();
                match health.status {
                    Some(HealthStatusEnum::HEALTHY) => return Ok(()),
                    Some(HealthStatusEnum::UNHEALTHY) => {
                        let last = health
                            .log
                            .and_then(|l| l.into_iter().last())
                            .map(|r| {
                                format!(
                                    "; last check exited {}: {}",
                                    r.exit_code.unwrap_or(-1),
                                    r.output.unwrap_or_default().trim()
                                )
                            })
                            .unwrap_or_default();
                        return Err(EnvError::Unhealthy(format!(
                            "service `{}` (which `{waiter}` waits for with service_healthy) is unhealthy{last}",
                            svc.name
                        )));
                    }
                    _ if !running => {
                        return Err(EnvError::StartFailed(format!(
                            "service `{}` (which `{waiter}` waits for with service_healthy) exited with {exit} before it was healthy{}",
                            svc.name,
                            logs_tail(docker, id).await
                        )));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        if started.elapsed() > deadline {
            return Err(match condition {
                Condition::Healthy => EnvError::Unhealthy(format!(
                    "service `{}` was not healthy within {:.0} s",
                    svc.name,
                    deadline.as_secs_f64()
                )),
                _ => EnvError::StartFailed(format!(
                    "service `{}` did not finish within {:.0} s (`{waiter}` waits for it with service_completed_successfully)",
                    svc.name,
                    deadline.as_secs_f64()
                )),
            });
        }
        // Polling the engine's view of the container: short at first, then up to 250 ms.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// The last lines a service wrote, for error messages.
async fn logs_tail(docker: &Docker, id: &str) -> String {
    let mut stream = docker.logs(
        id,
        Some(LogsOptions {
            stdout: true,
            stderr: true,
            tail: "20".into(),
            ..Default::default()
        }),
    );
    let mut out = String::new();
    let read = async {
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            if out.len() > 4096 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    let out: String = out.trim().chars().take(4096).collect();
    if out.is_empty() {
        String::new()
    } else {
        format!("; its last output: {out}")
    }
}

fn with_service(e: EnvError, service: &str) -> EnvError {
    match e {
        EnvError::BuildFailed {
            image,
            message,
            log,
        } => EnvError::BuildFailed {
            image: format!("{image} (service {service})"),
            message,
            log,
        },
        EnvError::PullFailed { image, message } => EnvError::PullFailed {
            image: format!("{image} (service {service})"),
            message,
        },
        other => other,
    }
}

/// Remove the networks and volumes labelled `key=value` (after their containers are gone);
/// returns how many were removed.
pub(crate) async fn remove_labelled_resources(
    docker: &Docker,
    key: &str,
    value: &str,
) -> Result<usize, EnvError> {
    let filter = || HashMap::from([("label".to_string(), vec![format!("{key}={value}")])]);
    let mut removed = 0;
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filter()),
        }))
        .await
        .map_err(|e| EnvError::api("listing networks", e))?;
    for n in networks {
        let Some(id) = n.id else { continue };
        match retried(|| docker.remove_network(&id)).await {
            Ok(()) => removed += 1,
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(EnvError::api(format!("removing network {id}"), e)),
        }
    }
    let volumes = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(filter()),
        }))
        .await
        .map_err(|e| EnvError::api("listing volumes", e))?;
    for v in volumes.volumes.unwrap_or_default() {
        match retried(|| docker.remove_volume(&v.name, Some(RemoveVolumeOptions { force: true })))
            .await
        {
            Ok(()) => removed += 1,
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(EnvError::api(format!("removing volume {}", v.name), e)),
        }
    }
    Ok(removed)
}
