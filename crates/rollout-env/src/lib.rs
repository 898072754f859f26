//! Environments where trials run.
//!
//! An [`Environment`] is one sandbox (a container) that runs commands with a timeout and an
//! output cap, takes files in as tar and gives directories back. A [`Provider`] makes images and
//! environments and cleans up after them. The Docker provider ([`docker::DockerProvider`]) speaks
//! the Engine API through bollard; it never shells out to the `docker` CLI. The `local` provider
//! ([`local::LocalProvider`]) runs commands on the host with no isolation (repo-owned pipeline
//! contracts).
//!
//! Not here: what runs inside (agents), when (the runner), or where results go.

pub mod archive;
pub mod buildctx;
pub mod compose;
pub mod docker;
pub mod egress;
pub mod envbuild;
pub mod error;
pub mod exec;
pub mod gc;
pub mod health;
pub mod local;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::EnvError;
pub use exec::{Captured, ExecOutput, ExecRequest};

use async_trait::async_trait;
pub use rollout_core::capabilities::{Capabilities, GpuSupport, NetworkCapabilities};
use rollout_core::task_config::NetworkMode;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What image a trial needs.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// Build `context` (a directory with a Dockerfile); tag by its content hash.
    Build {
        /// The task's `environment/` directory.
        context: PathBuf,
        /// How long the build may take.
        timeout: Duration,
        /// Rebuild even if an image with this content hash exists.
        force: bool,
        /// When to refresh the Dockerfile's base images from their registry first.
        pull: rollout_core::job_config::PullPolicy,
    },
    /// Use this image: local if present, else pulled.
    Prebuilt {
        /// Image reference (`debian:bookworm-slim`).
        reference: String,
    },
}

/// An image ready to start containers from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PreparedImage {
    /// Reference to create containers with.
    pub reference: String,
    /// Engine id (`sha256:…`).
    pub id: String,
    /// True when this call built (or pulled) the image; false when it was already there.
    pub fresh: bool,
    /// Tail of the build output, when this call built it.
    pub build_log: Option<String>,
    /// For a built environment: the engine id of each base image it was built from
    /// (reference → `sha256:…`).
    pub bases: BTreeMap<String, String>,
    /// For a build: why it was built rather than reused (e.g. a base image changed).
    pub build_reason: Option<String>,
}

/// Everything needed to create one environment.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvSpec {
    /// Human-readable name prefix (the engine may add a suffix to keep names unique).
    pub name: String,
    /// Labels to put on the container (job, trial, managed …).
    pub labels: BTreeMap<String, String>,
    pub cpus: f64,
    pub memory_mb: u64,
    /// Disk the environment may write (providers that can enforce it: Kubernetes'
    /// ephemeral-storage).
    pub storage_mb: u64,
    pub pids_limit: i64,
    pub network: NetworkMode,
    /// With [`NetworkMode::Allowlist`]: the task's `allowed_hosts`.
    pub allowed_hosts: Vec<String>,
    /// Environment of every process.
    pub env: BTreeMap<String, String>,
    /// Default working directory of every command.
    pub workdir: Option<String>,
    /// Host paths bound into the environment (only when [`Provider::host_mounts`] is true).
    pub mounts: Vec<HostMount>,
    /// GPUs to give the environment (0 = none). Callers check [`Provider::gpu_support`] first;
    /// a provider that cannot honour it fails `create`, never runs without them.
    pub gpus: u32,
}

/// A host path bound into an environment.
#[derive(Debug, Clone, PartialEq)]
pub struct HostMount {
    /// Absolute host path (must exist).
    pub source: PathBuf,
    /// Absolute path inside the environment.
    pub target: String,
    pub read_only: bool,
}

/// Result of copying a directory out of an environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DownloadInfo {
    /// False when the path did not exist in the environment.
    pub found: bool,
    /// Regular files written.
    pub files: u64,
    /// Bytes of the archive received.
    pub bytes: u64,
    /// True when the size cap stopped the copy (what was received is kept).
    pub truncated: bool,
    /// Entries not materialised on the host (links, devices), for safety.
    pub skipped: u64,
    /// The first few of them: (path below the copied directory, what it was).
    pub skipped_entries: Vec<(String, String)>,
}

/// A command running with its stdin and stdout attached (an MCP stdio server). Dropping it
/// closes the command's stdin; the command ends then, or at the latest with the environment.
pub struct ExecStream {
    pub stdin: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    pub stdout: std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>,
}

/// One running sandbox.
#[async_trait]
pub trait Environment: Send + Sync {
    /// Engine id of the sandbox (container id).
    fn id(&self) -> &str;

    /// Run a command; never returns before the command ended or was killed at its timeout.
    async fn exec(&self, req: ExecRequest) -> Result<ExecOutput, EnvError>;

    /// Extract a tar archive at `/` inside the environment (paths in the archive are relative
    /// to `/`; ownership root, modes as in the archive).
    async fn upload_tar(&self, tar: Vec<u8>) -> Result<(), EnvError>;

    /// Copy the directory `path` out into `dest` (created if needed), at most `cap` bytes.
    /// Links and special files are not materialised on the host.
    async fn download_dir(
        &self,
        path: &str,
        dest: &Path,
        cap: u64,
    ) -> Result<DownloadInfo, EnvError>;

    /// Start a command with its stdin and stdout attached, for a conversation with it (its
    /// stderr is discarded); `req.timeout`, `stdin` and the caps do not apply. `None` when the
    /// provider cannot attach to a command.
    async fn exec_stream(&self, _req: ExecRequest) -> Result<Option<ExecStream>, EnvError> {
        Ok(None)
    }

    /// Whether this machine can open connections to addresses of the environment's network
    /// (Docker on Linux: the container's and its services' IPs on the bridge network).
    fn host_reaches_network(&self) -> bool {
        false
    }

    /// Remove the sandbox at once (no stop grace). Idempotent.
    async fn destroy(&self) -> Result<(), EnvError>;

    /// End every process in the sandbox at once, whatever they do (a fork bomb included), and
    /// keep its filesystem so that the verifier can still run: the hard stop used when killing
    /// the agent's processes from inside cannot work. Providers that cannot do this return an
    /// error (the trial then ends without verification).
    /// How many times [`Environment::stop_all`] (or a runaway command's stop) has restarted the
    /// sandbox's processes.
    fn restarts(&self) -> u64 {
        0
    }

    async fn stop_all(&self) -> Result<(), EnvError> {
        Err(EnvError::Api {
            context: "stopping every process of the environment".into(),
            message: "this provider cannot stop processes while keeping the filesystem".into(),
        })
    }
}

/// Makes images and environments.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Short name (`docker`).
    fn name(&self) -> &'static str;

    /// What this provider enforces (network modes, GPUs, compose …): the input of
    /// [`rollout_core::capabilities::check_enforceable`], which the runner calls for every
    /// trial before anything is built, whatever the entry point.
    fn capabilities(&self) -> Capabilities;

    /// Whether host paths can be bound into environments (the engine shares this machine's
    /// filesystem). When false, files move only as tar archives.
    fn host_mounts(&self) -> bool {
        self.capabilities().host_mounts
    }

    /// Make sure the image exists: build it once per content hash, or pull it. Concurrent
    /// callers asking for the same image wait for one build.
    async fn prepare_image(
        &self,
        source: &ImageSource,
        labels: &BTreeMap<String, String>,
    ) -> Result<PreparedImage, EnvError>;

    /// Create and start an environment from a prepared image.
    async fn create(
        &self,
        image: &PreparedImage,
        spec: &EnvSpec,
    ) -> Result<Box<dyn Environment>, EnvError>;

    /// Whether [`Provider::create_compose`] runs compose services (checked before any image is
    /// made, so that a task this provider would refuse costs nothing).
    fn supports_compose(&self) -> bool {
        self.capabilities().compose
    }

    /// Why this provider cannot run `project` faithfully, if it cannot (checked right after
    /// the compose file is read, before any image is made); `None` when it can. The trial then
    /// fails with `environment_unsupported` and this message.
    fn compose_unsupported(
        &self,
        project: &rollout_core::compose::ComposeProject,
    ) -> Option<String> {
        let _ = project;
        None
    }

    /// Create and start a multi-container environment: the task's compose services around
    /// the main container made from `image` and `spec` (see [`compose`]). Providers that cannot
    /// run compose services refuse with [`EnvError::Unsupported`], never start main alone.
    async fn create_compose(
        &self,
        image: &PreparedImage,
        spec: &EnvSpec,
        project: &rollout_core::compose::ComposeProject,
        options: &compose::ComposeOptions,
    ) -> Result<Box<dyn Environment>, EnvError> {
        let _ = (image, spec, options);
        Err(EnvError::Unsupported(format!(
            "the {} provider does not run multi-container tasks: {} defines services ({}); run the task with --env docker",
            self.name(),
            project.file.display(),
            project.services.keys().cloned().collect::<Vec<_>>().join(", ")
        )))
    }

    /// Forget cached image failures, so that the next `prepare_image` builds or pulls again
    /// (called before an infrastructure retry).
    fn forget_failures(&self) {}

    /// Remove every environment carrying label `key=value`; returns how many were removed.
    async fn remove_labelled(&self, key: &str, value: &str) -> Result<usize, EnvError>;

    /// Whether environments can get `gpus` GPUs of one of `gpu_types` (empty = any); `Err`
    /// says why not. Derived from [`Provider::capabilities`].
    async fn gpu_support(&self, gpus: u32, gpu_types: &[String]) -> Result<(), String> {
        match self.capabilities().gpus {
            GpuSupport::None(why) => Err(format!("the task needs {gpus} GPU(s): {why}")),
            GpuSupport::AnyModel if !gpu_types.is_empty() => Err(format!(
                "the task accepts only GPU types {} (environment.gpu_types) and the {} provider cannot choose a GPU model",
                gpu_types.join(", "),
                self.name()
            )),
            _ => Ok(()),
        }
    }

    /// Remove what rollout processes that are gone left on this provider (containers, pods,
    /// networks, volumes, policies): those whose owner (pid on `this_host`) no longer runs.
    /// Returns how many resources were removed. The default removes nothing.
    async fn gc_orphans(&self, this_host: &str) -> Result<usize, EnvError> {
        let _ = this_host;
        Ok(0)
    }

    /// Remove every environment (and its networks, volumes, policies) of job `job_id`, at once;
    /// returns how many environments were removed.
    async fn kill_job(&self, job_id: &str) -> Result<usize, EnvError> {
        self.remove_labelled(rollout_core::labels::JOB, job_id)
            .await
    }
}
