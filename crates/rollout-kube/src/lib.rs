//! The Kubernetes provider: the same [`Provider`]/[`Environment`] contract as Docker, on a
//! cluster.
//!
//! Each trial is one Pod running the task image with the keep-alive command (the image's
//! ENTRYPOINT kept), requests and limits from the task, the trial's labels and owner
//! annotations. Commands run through the API's exec subresource (websocket) with the same
//! timeouts and output caps as Docker; files move as tar streams over exec. Images named by
//! `docker_image` are used as they are; images built from a Dockerfile are built by the local
//! Docker engine, tagged by the environment's content hash and pushed once to `image_registry`.
//! The kubeconfig is found the usual way (`KUBECONFIG`, `~/.kube/config`, in-cluster).

/// Why `network_mode = "allowlist"` is refused on Kubernetes (shown in the refusal). A
/// NetworkPolicy cannot name host names, so an allowlist would need, as on Docker, an egress
/// proxy that is the pod's only way out, and only a NetworkPolicy can make it the only way:
/// that holds only where the cluster's CNI plugin enforces NetworkPolicy, which rollout cannot
/// tell from the API (the local test cluster, dockershim without a CNI plugin, does not; Debian
/// ships no plugin that does).
pub const ALLOWLIST_REFUSAL: &str = "pods get no egress proxy: a NetworkPolicy cannot name host names, and one confining the pod to a proxy holds only where the cluster's CNI plugin enforces NetworkPolicy (Calico, Cilium …), which rollout cannot check; run allowlist tasks with --env docker";

pub mod compose;
mod env;
pub mod gc;
pub mod pod;
pub mod settings;

pub use settings::KubeSettings;

use async_trait::async_trait;
use bollard::query_parameters::{PushImageOptions, TagImageOptions};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use rollout_core::compose::{ComposeProject, Condition, ServiceImage, MAIN_IMAGE_PLACEHOLDER};
use rollout_env::compose::ComposeOptions;
use rollout_env::docker::{DockerProvider, EngineLimits};
use rollout_env::{EnvError, EnvSpec, Environment, ImageSource, PreparedImage, Provider};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OnceCell, Semaphore};

/// Bound on one API call rollout makes (list, create, delete, get).
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the API server to answer when connecting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How much of a pod's events goes into an error message.
const EVENTS_CAP: usize = 4096;

type ImageCell = Arc<tokio::sync::Mutex<Option<Result<PreparedImage, EnvError>>>>;

/// The Kubernetes provider.
pub struct KubeProvider {
    client: Client,
    namespace: String,
    settings: KubeSettings,
    docker: OnceCell<DockerProvider>,
    images: Mutex<HashMap<String, ImageCell>>,
    create_slots: Semaphore,
    delete_slots: Arc<Semaphore>,
}

/// Install the process-wide TLS crypto provider (aws-lc-rs) once; kube's rustls needs one.
fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn unreachable_error(e: impl std::fmt::Display) -> EnvError {
    EnvError::ClusterUnreachable(e.to_string())
}

pub(crate) fn api_error(context: impl Into<String>, e: impl std::fmt::Display) -> EnvError {
    EnvError::Api {
        context: context.into(),
        message: e.to_string(),
    }
}

/// Classify a failed API call: connection trouble is `ClusterUnreachable`, RBAC refusals say
/// which permission is missing, the rest is an API error.
pub(crate) fn classify(context: &str, e: kube::Error) -> EnvError {
    match &e {
        kube::Error::Api(s) if s.is_forbidden() => EnvError::Api {
            context: context.to_string(),
            message: format!(
                "{}; the credentials lack a permission (docs/kubernetes.md lists the minimal Role)",
                s.message
            ),
        },
        kube::Error::Api(s) => api_error(context, &s.message),
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            EnvError::ClusterUnreachable(format!("{context}: {e}"))
        }
        _ => api_error(context, e),
    }
}

/// Run one API call with the standard bound.
pub(crate) async fn bounded<T>(
    context: &str,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, EnvError> {
    match tokio::time::timeout(API_TIMEOUT, call).await {
        Ok(r) => r.map_err(|e| classify(context, e)),
        Err(_) => Err(EnvError::ClusterUnreachable(format!(
            "{context}: no answer within {} s",
            API_TIMEOUT.as_secs()
        ))),
    }
}

fn short_random() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let h = rollout_core::digest::bytes_digest(
        format!("{nanos}-{seq}-{}", std::process::id()).as_bytes(),
    );
    h[..8].to_string()
}

impl KubeProvider {
    /// Connect with the kubeconfig found the usual way (or the context in `settings`) and check
    /// that the API server answers.
    pub async fn connect(settings: KubeSettings) -> Result<Self, EnvError> {
        install_crypto();
        let config = match &settings.context {
            Some(context) => Config::from_kubeconfig(&KubeConfigOptions {
                context: Some(context.clone()),
                ..Default::default()
            })
            .await
            .map_err(|e| unreachable_error(format!("kubeconfig context {context}: {e}")))?,
            None => Config::infer().await.map_err(|e| {
                unreachable_error(format!(
                    "no kubeconfig (KUBECONFIG, ~/.kube/config) and not in a cluster: {e}"
                ))
            })?,
        };
        let server = config.cluster_url.to_string();
        let namespace = settings
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client =
            Client::try_from(config).map_err(|e| unreachable_error(format!("{server}: {e}")))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, client.apiserver_version()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(unreachable_error(format!("{server}: {e}"))),
            Err(_) => {
                return Err(unreachable_error(format!(
                    "{server}: no answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
        }
        let slots = settings.pod_operations.max(1);
        Ok(Self {
            client,
            namespace,
            settings,
            docker: OnceCell::new(),
            images: Mutex::new(HashMap::new()),
            create_slots: Semaphore::new(slots),
            delete_slots: Arc::new(Semaphore::new(slots)),
        })
    }

    /// Whether a kubeconfig can be found at all, without connecting (for messages).
    pub fn kubeconfig_present() -> bool {
        Kubeconfig::read().is_ok() || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
    }

    /// The namespace pods go to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The client (for `rollout gc` and tests).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn policies(&self) -> Api<NetworkPolicy> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn cell(&self, key: &str) -> ImageCell {
        let mut map = self.images.lock().expect("image map poisoned");
        map.entry(key.to_string()).or_default().clone()
    }

    async fn docker(&self) -> Result<&DockerProvider, EnvError> {
        self.docker
            .get_or_try_init(|| DockerProvider::connect(EngineLimits::default()))
            .await
    }

    /// Build with the local engine, then push `<registry>/rollout-env:<hash>` unless the
    /// registry already has it.
    async fn build_and_push(
        &self,
        source: &ImageSource,
        labels: &BTreeMap<String, String>,
        registry: &str,
        timeout: Duration,
        force: bool,
    ) -> Result<PreparedImage, EnvError> {
        let docker = self.docker().await?;
        let local = docker.prepare_image(source, labels).await?;
        let remote = format!("{registry}/{}", local.reference);
        let cell = self.cell(&remote);
        let mut slot = cell.lock().await;
        if let Some(done) = &*slot {
            return done.clone().map(|mut img| {
                img.fresh = false;
                img.build_log = None;
                img.build_reason = None;
                img
            });
        }
        let result = self
            .push(docker, &local, &remote, timeout, force || local.fresh)
            .await
            .map(|()| PreparedImage {
                reference: remote.clone(),
                id: local.id.clone(),
                fresh: local.fresh,
                build_log: local.build_log.clone(),
                bases: local.bases.clone(),
                build_reason: local.build_reason.clone(),
            });
        *slot = Some(result.clone());
        result
    }

    async fn push(
        &self,
        docker: &DockerProvider,
        local: &PreparedImage,
        remote: &str,
        timeout: Duration,
        always: bool,
    ) -> Result<(), EnvError> {
        let engine = docker.client();
        let push_failed = |message: String| {
            EnvError::BuildFailed {
            image: remote.to_string(),
            message: format!(
                "pushing to the image registry failed: {message} (check image_registry / {} and that this machine's Docker can push to it)",
                settings::REGISTRY_VAR
            ),
            log: String::new(),
        }
        };
        if !always
            && tokio::time::timeout(API_TIMEOUT, engine.inspect_registry_image(remote, None))
                .await
                .is_ok_and(|r| r.is_ok())
        {
            tracing::debug!("{remote} is already in the registry");
            return Ok(());
        }
        let (repo, tag) = remote.rsplit_once(':').unwrap_or((remote, "latest"));
        engine
            .tag_image(
                &local.reference,
                Some(TagImageOptions {
                    repo: Some(repo.to_string()),
                    tag: Some(tag.to_string()),
                }),
            )
            .await
            .map_err(|e| push_failed(format!("tagging {}: {e}", local.reference)))?;
        let run = async {
            let mut stream = engine.push_image(
                repo,
                Some(PushImageOptions {
                    tag: Some(tag.to_string()),
                    ..Default::default()
                }),
                None,
            );
            while let Some(item) = stream.next().await {
                match item {
                    Ok(info) => {
                        if let Some(detail) = info.error_detail {
                            return Err(detail.message.unwrap_or_default());
                        }
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(m)) => Err(push_failed(m)),
            Err(_) => Err(push_failed(format!(
                "no end within {} s",
                timeout.as_secs()
            ))),
        }
    }

    /// The pod's events, oldest first, as `reason: message` lines (capped).
    pub(crate) async fn events_of(&self, pod: &str) -> String {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let params = ListParams::default().fields(&format!("involvedObject.name={pod}"));
        match bounded("listing the pod's events", events.list(&params)).await {
            Ok(list) => {
                let mut items = list.items;
                items.sort_by_key(|e| e.last_timestamp.clone().map(|t| t.0));
                let mut text = items
                    .iter()
                    .map(|e| {
                        format!(
                            "{} {}: {}",
                            e.type_.as_deref().unwrap_or(""),
                            e.reason.as_deref().unwrap_or(""),
                            e.message.as_deref().unwrap_or("").trim()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                if text.is_empty() {
                    text = "none recorded".into();
                }
                if text.len() > EVENTS_CAP {
                    let mut cut = EVENTS_CAP;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                    text.push_str(" …");
                }
                text
            }
            Err(e) => format!("(could not list events: {e})"),
        }
    }

    /// Delete a pod and its policy at once (no grace), bounded by the deletion slots.
    pub(crate) async fn delete_pod(&self, name: &str) -> Result<(), EnvError> {
        delete_pod_with(
            self.pods(),
            self.policies(),
            self.delete_slots.clone(),
            name.to_string(),
        )
        .await
    }

    /// Create the trial's pod (with its compose services when `compose` is given), wait until
    /// it runs (and main's dependencies meet their conditions); on any error the pod goes.
    async fn start_pod(
        &self,
        image: &PreparedImage,
        spec: &EnvSpec,
        compose: Option<(&ComposeProject, &BTreeMap<String, String>, Duration)>,
    ) -> Result<Box<dyn Environment>, EnvError> {
        let _slot = self
            .create_slots
            .acquire()
            .await
            .expect("semaphore never closed");
        let name = pod::pod_name(&spec.name, &short_random());
        let pods = self.pods();
        let policies = self.policies();
        let guard = PodGuard {
            pods: pods.clone(),
            policies: policies.clone(),
            slots: self.delete_slots.clone(),
            name: Some(name.clone()),
        };
        if let Some(policy) = pod::deny_all_policy(&name, spec) {
            bounded(
                "creating the network policy that denies the pod's traffic",
                policies.create(&PostParams::default(), &policy),
            )
            .await
            .map_err(|e| match e {
                EnvError::Api { context, message } => EnvError::StartFailed(format!(
                    "{context}: {message} (network_mode = \"no-network\" needs permission to create networkpolicies)"
                )),
                other => other,
            })?;
        }
        let body = match compose {
            Some((project, images, _)) => compose::compose_pod(
                &name,
                &image.reference,
                spec,
                &self.settings,
                project,
                images,
            ),
            None => pod::trial_pod(&name, &image.reference, spec, &self.settings),
        };
        bounded(
            "creating the pod",
            pods.create(&PostParams::default(), &body),
        )
        .await
        .map_err(|e| match e {
            EnvError::Api { context, message } => {
                EnvError::StartFailed(format!("{context} {name}: {message}"))
            }
            other => other,
        })?;
        self.wait_running(&name, &image.reference).await?;
        if let Some((project, _, start_timeout)) = compose {
            self.wait_dependencies(&name, project, start_timeout)
                .await?;
        }
        guard.disarm();
        Ok(Box::new(env::KubeEnvironment::new(
            self.client.clone(),
            self.namespace.clone(),
            name,
            self.delete_slots.clone(),
        )))
    }

    /// Wait until every dependency of main meets its condition (`service_healthy`: the
    /// sidecar's readiness probe passed; `service_completed_successfully`: it ended with 0),
    /// or fail naming the service, with its last output or the pod's events.
    async fn wait_dependencies(
        &self,
        name: &str,
        project: &ComposeProject,
        start_timeout: Duration,
    ) -> Result<(), EnvError> {
        let mut pending: Vec<(&rollout_core::compose::Service, Condition)> = project
            .main
            .depends_on
            .iter()
            .filter(|(_, c)| **c != Condition::Started)
            .map(|(dep, c)| (&project.services[dep], *c))
            .collect();
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        let pods = self.pods();
        while !pending.is_empty() {
            let pod = bounded("reading the pod's status", pods.get(name)).await?;
            let status = pod.status.unwrap_or_default();
            if status.phase.as_deref() == Some("Failed") {
                let events = self.events_of(name).await;
                return Err(EnvError::StartFailed(format!(
                    "pod {name} failed while main waited for its services: {}; events: {events}",
                    status.reason.unwrap_or_default()
                )));
            }
            let statuses = status.container_statuses.unwrap_or_default();
            let mut still = Vec::new();
            for (svc, condition) in pending {
                let st = statuses.iter().find(|c| c.name == svc.name);
                let ended = st.and_then(|c| c.state.as_ref()?.terminated.clone());
                let elapsed = started.elapsed();
                match condition {
                    Condition::Healthy => {
                        if st.is_some_and(|c| c.ready) {
                            continue;
                        }
                        if let Some(t) = ended {
                            return Err(EnvError::StartFailed(format!(
                                "service `{}` (which `main` waits for with service_healthy) exited with {} before it was healthy{}",
                                svc.name,
                                t.exit_code,
                                self.logs_tail(name, &svc.name).await
                            )));
                        }
                        let deadline = svc
                            .healthcheck
                            .as_ref()
                            .map_or(start_timeout, |h| h.deadline() + Duration::from_secs(10));
                        if elapsed > deadline {
                            let events = self.events_of(name).await;
                            return Err(EnvError::Unhealthy(format!(
                                "service `{}` was not healthy within {:.0} s (its readiness probe never passed); pod {name} events: {events}",
                                svc.name,
                                deadline.as_secs_f64()
                            )));
                        }
                    }
                    Condition::CompletedSuccessfully => {
                        if let Some(t) = ended {
                            if t.exit_code == 0 {
                                continue;
                            }
                            return Err(EnvError::StartFailed(format!(
                                "service `{}` (which `main` waits for with service_completed_successfully) exited with {}{}",
                                svc.name,
                                t.exit_code,
                                self.logs_tail(name, &svc.name).await
                            )));
                        }
                        if elapsed > start_timeout {
                            return Err(EnvError::StartFailed(format!(
                                "service `{}` did not finish within {:.0} s (`main` waits for it with service_completed_successfully)",
                                svc.name,
                                start_timeout.as_secs_f64()
                            )));
                        }
                    }
                    Condition::Started => continue,
                }
                still.push((svc, condition));
            }
            pending = still;
            if !pending.is_empty() {
                // Polling the API server's view of the pod: short at first, then every second.
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
        Ok(())
    }

    /// The last lines a container of the pod wrote, for error messages.
    async fn logs_tail(&self, pod: &str, container: &str) -> String {
        let params = LogParams {
            container: Some(container.to_string()),
            tail_lines: Some(20),
            limit_bytes: Some(EVENTS_CAP as i64),
            ..Default::default()
        };
        match bounded("reading a service's output", self.pods().logs(pod, &params)).await {
            Ok(text) if !text.trim().is_empty() => {
                let text: String = text.trim().chars().take(EVENTS_CAP).collect();
                format!("; its last output: {text}")
            }
            _ => String::new(),
        }
    }

    /// Wait until the pod's container runs, or fail with a typed error naming why.
    async fn wait_running(&self, name: &str, image: &str) -> Result<(), EnvError> {
        let pods = self.pods();
        let deadline = Instant::now() + self.settings.pod_start_timeout;
        let mut delay = Duration::from_millis(100);
        loop {
            let pod = bounded("reading the pod's status", pods.get(name)).await?;
            let last_reason = match start_state(&pod) {
                StartState::Running => return Ok(()),
                StartState::Waiting(reason) => reason,
                StartState::PullFailed(container, message) => {
                    let events = self.events_of(name).await;
                    let image = if container == pod::CONTAINER {
                        image.to_string()
                    } else {
                        let sidecar = pod
                            .spec
                            .iter()
                            .flat_map(|s| &s.containers)
                            .find(|c| c.name == container)
                            .and_then(|c| c.image.clone())
                            .unwrap_or_default();
                        format!("{sidecar} (service {container})")
                    };
                    return Err(EnvError::PullFailed {
                        image,
                        message: format!("{message}; pod {name} events: {events}"),
                    });
                }
                StartState::Failed(reason, message) => {
                    let events = self.events_of(name).await;
                    return Err(EnvError::StartFailed(format!(
                        "pod {name}: {reason}: {message}; events: {events}"
                    )));
                }
            };
            if Instant::now() >= deadline {
                let events = self.events_of(name).await;
                return Err(EnvError::PodNotStarted {
                    pod: name.to_string(),
                    reason: last_reason,
                    seconds: self.settings.pod_start_timeout.as_secs_f64(),
                    events,
                });
            }
            tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }
}

pub(crate) async fn delete_pod_with(
    pods: Api<Pod>,
    policies: Api<NetworkPolicy>,
    slots: Arc<Semaphore>,
    name: String,
) -> Result<(), EnvError> {
    let _slot = slots.acquire().await.expect("semaphore never closed");
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    match bounded(&format!("deleting pod {name}"), pods.delete(&name, &now)).await {
        Ok(_) => {}
        Err(EnvError::Api { message, .. }) if message.contains("not found") => {}
        Err(e) => return Err(e),
    }
    match bounded(
        &format!("deleting network policy {name}"),
        policies.delete(&name, &DeleteParams::default()),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(EnvError::Api { message, .. }) if message.contains("not found") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Name the compose service whose image failed.
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

/// Where a starting pod stands.
#[derive(Debug, PartialEq)]
enum StartState {
    Running,
    /// Still starting (scheduling, pulling…), with the current reason.
    Waiting(String),
    /// The image of this container cannot be pulled.
    PullFailed(String, String),
    /// The pod or its container failed before it ran.
    Failed(String, String),
}

const PULL_FAILURES: [&str; 4] = [
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
];
const START_FAILURES: [&str; 3] = [
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

fn start_state(pod: &Pod) -> StartState {
    let Some(status) = &pod.status else {
        return StartState::Waiting("Pending".into());
    };
    let phase = status.phase.as_deref().unwrap_or("Pending");
    if matches!(phase, "Failed" | "Succeeded") {
        let reason = status.reason.clone().unwrap_or_else(|| phase.to_string());
        let terminated = status
            .container_statuses
            .iter()
            .flatten()
            .find_map(|c| c.state.as_ref()?.terminated.as_ref());
        let message = match terminated {
            Some(t) => format!(
                "container {} with exit code {}{}",
                t.reason.as_deref().unwrap_or("ended"),
                t.exit_code,
                t.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            None => status.message.clone().unwrap_or_default(),
        };
        return StartState::Failed(reason, message);
    }
    // Every container has started (a compose sidecar may already have ended: whether that
    // matters is for main's depends_on to say); main must be running.
    let expected = pod.spec.as_ref().map_or(1, |s| s.containers.len());
    let mut started = 0;
    let mut waiting = None;
    for c in status.container_statuses.iter().flatten() {
        let Some(state) = &c.state else { continue };
        let who = if c.name == pod::CONTAINER {
            String::new()
        } else {
            format!("container {}: ", c.name)
        };
        if state.running.is_some() {
            started += 1;
            continue;
        }
        if let Some(w) = &state.waiting {
            let reason = w.reason.clone().unwrap_or_default();
            let message = w.message.clone().unwrap_or_default();
            if PULL_FAILURES.contains(&reason.as_str()) {
                return StartState::PullFailed(c.name.clone(), format!("{reason}: {message}"));
            }
            if START_FAILURES.contains(&reason.as_str()) {
                return StartState::Failed(format!("{who}{reason}"), message);
            }
            waiting.get_or_insert(if message.is_empty() {
                format!("{who}{reason}")
            } else {
                format!("{who}{reason}: {message}")
            });
            continue;
        }
        if let Some(t) = &state.terminated {
            if c.name != pod::CONTAINER {
                started += 1;
                continue;
            }
            return StartState::Failed(
                t.reason.clone().unwrap_or_else(|| "Terminated".into()),
                format!("exit code {}", t.exit_code),
            );
        }
    }
    if let Some(reason) = waiting {
        return StartState::Waiting(reason);
    }
    if started > 0 && started >= expected {
        return StartState::Running;
    }
    // Not yet scheduled: say why (Unschedulable and its message).
    let scheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    match scheduled {
        Some(c) => StartState::Waiting(format!(
            "{}: {}",
            c.reason.as_deref().unwrap_or("NotScheduled"),
            c.message.as_deref().unwrap_or("")
        )),
        None => StartState::Waiting(phase.to_string()),
    }
}

/// Deletes a pod in the background unless disarmed: a creation cancelled half-way (the trial's
/// future dropped on Ctrl-C) leaves no pod behind.
struct PodGuard {
    pods: Api<Pod>,
    policies: Api<NetworkPolicy>,
    slots: Arc<Semaphore>,
    name: Option<String>,
}

impl PodGuard {
    fn disarm(mut self) {
        self.name = None;
    }
}

impl Drop for PodGuard {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            let (pods, policies, slots) =
                (self.pods.clone(), self.policies.clone(), self.slots.clone());
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = delete_pod_with(pods, policies, slots, name.clone()).await {
                        tracing::warn!("could not delete pod {name}: {e}");
                    }
                });
            }
        }
    }
}

#[async_trait]
impl Provider for KubeProvider {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn host_mounts(&self) -> bool {
        false
    }

    fn forget_failures(&self) {
        let mut map = self.images.lock().expect("image map poisoned");
        map.retain(|_, cell| !cell.try_lock().is_ok_and(|g| matches!(&*g, Some(Err(_)))));
        if let Some(d) = self.docker.get() {
            d.forget_failures();
        }
    }

    async fn prepare_image(
        &self,
        source: &ImageSource,
        labels: &BTreeMap<String, String>,
    ) -> Result<PreparedImage, EnvError> {
        match source {
            ImageSource::Prebuilt { reference } => Ok(PreparedImage {
                reference: reference.clone(),
                id: reference.clone(),
                fresh: false,
                build_log: None,
                ..Default::default()
            }),
            ImageSource::Build {
                context,
                timeout,
                force,
                ..
            } => {
                let Some(registry) = self.settings.image_registry.clone() else {
                    return Err(EnvError::BuildFailed {
                        image: context.display().to_string(),
                        message: format!(
                            "this task builds its image from a Dockerfile, and a cluster can only run images from a registry: \
                             set environment.image_registry in the job file (or {}) to a registry this machine's Docker can push to \
                             and the cluster can pull from, or give the task a docker_image",
                            settings::REGISTRY_VAR
                        ),
                        log: String::new(),
                    });
                };
                self.build_and_push(source, labels, &registry, *timeout, *force)
                    .await
            }
        }
    }

    async fn create(
        &self,
        image: &PreparedImage,
        spec: &EnvSpec,
    ) -> Result<Box<dyn Environment>, EnvError> {
        self.start_pod(image, spec, None).await
    }

    fn supports_compose(&self) -> bool {
        true
    }

    fn compose_unsupported(&self, project: &ComposeProject) -> Option<String> {
        compose::unsupported(project)
    }

    /// The services become containers of the trial's pod (see [`compose`]).
    async fn create_compose(
        &self,
        image: &PreparedImage,
        spec: &EnvSpec,
        project: &ComposeProject,
        options: &ComposeOptions,
    ) -> Result<Box<dyn Environment>, EnvError> {
        if let Some(why) = compose::unsupported(project) {
            return Err(EnvError::Unsupported(why));
        }
        // Images first: no pod exists before every image is in the registry.
        let image_labels = BTreeMap::from([(
            rollout_core::labels::MANAGED.to_string(),
            "true".to_string(),
        )]);
        let prepared = futures_util::future::join_all(project.services.values().map(|s| {
            let labels = &image_labels;
            async move {
                let reference = match &s.image {
                    ServiceImage::Build(context) => {
                        let source = ImageSource::Build {
                            context: context.clone(),
                            timeout: options.build_timeout,
                            force: options.force_build,
                            pull: options.pull,
                        };
                        self.prepare_image(&source, labels)
                            .await
                            .map_err(|e| with_service(e, &s.name))?
                            .reference
                    }
                    ServiceImage::Image(r) if r == MAIN_IMAGE_PLACEHOLDER => {
                        image.reference.clone()
                    }
                    ServiceImage::Image(r) => r.clone(),
                };
                Ok::<_, EnvError>((s.name.clone(), reference))
            }
        }))
        .await;
        let images = prepared
            .into_iter()
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        self.start_pod(image, spec, Some((project, &images, options.start_timeout)))
            .await
    }

    /// GPUs become `nvidia.com/gpu` limits (the scheduler places the pod on a node that has
    /// them, or it stays pending until the start timeout); a GPU model cannot be expressed
    /// portably (node labels differ per cluster), so `gpu_types` is refused. An allowlist is
    /// refused ([`ALLOWLIST_REFUSAL`]).
    fn capabilities(&self) -> rollout_env::Capabilities {
        rollout_env::Capabilities {
            provider: "kubernetes".into(),
            network: rollout_env::NetworkCapabilities {
                public: true,
                none: true,
                allowlist: Default::default(),
                allowlist_note: Some(ALLOWLIST_REFUSAL.to_string()),
                allowlist_compose: false,
            },
            host_mounts: false,
            gpus: rollout_env::GpuSupport::AnyModel,
            pids_limit: false,
            // Services become containers of the trial's pod ([`compose`]); what a pod cannot
            // express is refused by `compose_unsupported`.
            compose: true,
            mcp_stdio: false,
        }
    }

    async fn gc_orphans(&self, this_host: &str) -> Result<usize, EnvError> {
        let items = self.gc(this_host, false).await?;
        Ok(items.iter().filter(|i| i.removed).count())
    }

    async fn remove_labelled(&self, key: &str, value: &str) -> Result<usize, EnvError> {
        let selector = format!("{key}={}", pod::label_value(value));
        let params = ListParams::default().labels(&selector);
        let list = bounded("listing pods", self.pods().list(&params)).await?;
        let mut removed = 0;
        for p in list.items {
            let Some(name) = p.metadata.name else {
                continue;
            };
            self.delete_pod(&name).await?;
            removed += 1;
        }
        // Policies whose pod never got created.
        if let Ok(list) = bounded("listing network policies", self.policies().list(&params)).await {
            for p in list.items {
                if let Some(name) = p.metadata.name {
                    let _ = bounded(
                        "deleting a network policy",
                        self.policies().delete(&name, &DeleteParams::default()),
                    )
                    .await;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn start_states_name_the_reason() {
        let unschedulable = pod(serde_json::json!({
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
              "reason": "Unschedulable", "message": "0/1 nodes are available: 1 node(s) didn't match node selector."}]}
        }));
        assert!(
            matches!(start_state(&unschedulable), StartState::Waiting(r) if r.starts_with("Unschedulable: 0/1"))
        );
        let backoff = pod(serde_json::json!({
            "status": {"phase": "Pending", "containerStatuses": [{"name": "main", "image": "x", "imageID": "",
              "ready": false, "restartCount": 0,
              "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}}]}
        }));
        assert!(
            matches!(start_state(&backoff), StartState::PullFailed(c, m) if c == "main" && m.contains("Back-off"))
        );
        let running = pod(serde_json::json!({
            "status": {"phase": "Running", "containerStatuses": [{"name": "main", "image": "x", "imageID": "",
              "ready": true, "restartCount": 0, "state": {"running": {}}}]}
        }));
        assert_eq!(start_state(&running), StartState::Running);
        let oom = pod(serde_json::json!({
            "status": {"phase": "Failed", "containerStatuses": [{"name": "main", "image": "x", "imageID": "",
              "ready": false, "restartCount": 0, "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}
        }));
        assert!(matches!(start_state(&oom), StartState::Failed(_, m) if m.contains("OOMKilled")));
        // A compose pod runs once every container has started; a one-shot sidecar that
        // already ended counts as started, one still waiting for its image names itself.
        let containers = serde_json::json!([{"name": "main"}, {"name": "seed"}, {"name": "api"}]);
        let status = |api: serde_json::Value| {
            pod(
                serde_json::json!({"spec": {"containers": containers.clone()},
              "status": {"phase": "Running", "containerStatuses": [
                {"name": "main", "image": "x", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "seed", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0}}},
                {"name": "api", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": api}]}}),
            )
        };
        assert_eq!(
            start_state(&status(serde_json::json!({"running": {}}))),
            StartState::Running
        );
        assert!(matches!(
            start_state(&status(serde_json::json!({"waiting": {"reason": "ContainerCreating"}}))),
            StartState::Waiting(r) if r == "container api: ContainerCreating"
        ));
        assert!(matches!(
            start_state(&status(serde_json::json!({"waiting": {"reason": "ErrImageNeverPull", "message": "m"}}))),
            StartState::PullFailed(c, _) if c == "api"
        ));
        let evicted = pod(serde_json::json!({
            "status": {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: ephemeral-storage."}
        }));
        assert!(
            matches!(start_state(&evicted), StartState::Failed(r, m) if r == "Evicted" && m.contains("ephemeral-storage"))
        );
    }
}
