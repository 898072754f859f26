//! Environments where trials run.
//!
//! An [`Environment`] is one sandbox (a container) that runs commands with a timeout and an
//! output cap, takes files in as tar and gives directories back. A [`Provider`] makes images and
//! environments and cleans up after them. The Docker provider ([`docker::DockerProvider`]) speaks
//! the Engine API through bollard; it never shells out to the `docker` CLI.
//!
//! Not here: what runs inside (agents), when (the runner), or where results go.

pub mod archive;
pub mod docker;
pub mod error;
pub mod exec;
pub mod gc;
pub mod health;

pub use error::EnvError;
pub use exec::{Captured, ExecOutput, ExecRequest};

use async_trait::async_trait;
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
    },
    /// Use this image: local if present, else pulled.
    Prebuilt {
        /// Image reference (`debian:bookworm-slim`).
        reference: String,
    },
}

/// An image ready to start containers from.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedImage {
    /// Reference to create containers with.
    pub reference: String,
    /// Engine id (`sha256:…`).
    pub id: String,
    /// True when this call built (or pulled) the image; false when it was already there.
    pub fresh: bool,
    /// Tail of the build output, when this call built it.
    pub build_log: Option<String>,
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
    /// Environment of every process.
    pub env: BTreeMap<String, String>,
    /// Default working directory of every command.
    pub workdir: Option<String>,
    /// Host paths bound into the environment (only when [`Provider::host_mounts`] is true).
    pub mounts: Vec<HostMount>,
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
}

/// Makes images and environments.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Short name (`docker`).
    fn name(&self) -> &'static str;

    /// Whether host paths can be bound into environments (the engine shares this machine's
    /// filesystem). When false, files move only as tar archives.
    fn host_mounts(&self) -> bool;

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

    /// Forget cached image failures, so that the next `prepare_image` builds or pulls again
    /// (called before an infrastructure retry).
    fn forget_failures(&self) {}

    /// Remove every environment carrying label `key=value`; returns how many were removed.
    async fn remove_labelled(&self, key: &str, value: &str) -> Result<usize, EnvError>;
}
