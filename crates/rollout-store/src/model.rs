//! The values the store records and answers with (all serde: they are also the wire format of
//! registration bundles and of the server's artifact endpoints).

use crate::git::GitInfo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What kind of job produced the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// A `rollout run` trial.
    Trial,
    /// A command run under `rollout trace`.
    Trace,
    /// A setup step (`rollout trace --build`): runs first on reproduction.
    Build,
    /// A step of a repo-owned pipeline.
    Pipeline,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Trial => "trial",
            JobKind::Trace => "trace",
            JobKind::Build => "build",
            JobKind::Pipeline => "pipeline",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "trial" => JobKind::Trial,
            "trace" => JobKind::Trace,
            "build" => JobKind::Build,
            "pipeline" => JobKind::Pipeline,
            _ => return None,
        })
    }
}

/// What an artifact is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    /// A regular file: the hash is BLAKE3 of its bytes.
    #[default]
    File,
    /// A directory: the hash is a Merkle digest ([`crate::tree_digest`]).
    Tree,
    /// A container image: the hash is BLAKE3 of the engine's image id.
    Image,
    /// A value (an agent configuration …): the hash is BLAKE3 of its canonical JSON.
    Value,
}

impl ArtifactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::File => "file",
            ArtifactKind::Tree => "tree",
            ArtifactKind::Image => "image",
            ArtifactKind::Value => "value",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "tree" => ArtifactKind::Tree,
            "image" => ArtifactKind::Image,
            "value" => ArtifactKind::Value,
            _ => ArtifactKind::File,
        }
    }
}

/// One input or output of a job: where it was and what it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRef {
    /// Absolute path (or a name such as `image:<ref>` for non-file artifacts).
    pub path: String,
    /// BLAKE3, hex.
    pub hash: String,
    pub size: u64,
    #[serde(default)]
    pub kind: ArtifactKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// A recorded execution: a traced command, a build step or a trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Unique id (a UUID; a trial's is its result id).
    pub uid: String,
    /// The session it belongs to.
    pub session: String,
    pub kind: JobKind,
    /// The command line, as a shell would show it.
    pub command: String,
    /// The command's arguments, exactly.
    pub argv: Vec<String>,
    /// Working directory (absolute).
    pub cwd: String,
    pub git: Option<GitInfo>,
    /// Start time (RFC 3339 UTC).
    pub started_at: String,
    pub duration_sec: f64,
    /// None when killed by a signal or not applicable.
    pub exit_code: Option<i64>,
    /// Environment variables the command ran with (trace) — redacted when registered.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Kind-specific facts (a trial's agent, image id, reward …).
    #[serde(default)]
    pub metadata: serde_json::Value,
    pub host: String,
    pub inputs: Vec<FileRef>,
    pub outputs: Vec<FileRef>,
}

impl Job {
    /// A fresh job uid.
    pub fn new_uid() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    /// Step identity: BLAKE3 over the sorted inputs and outputs (path and hash).
    pub fn step_hash(&self) -> String {
        let mut h = crate::hash::ChunkedHasher::new();
        for (tag, refs) in [(b"I", &self.inputs), (b"O", &self.outputs)] {
            let mut put = |p: &str, hash: &str| {
                h.push(tag);
                h.push(&(p.len() as u64).to_le_bytes());
                h.push(p.as_bytes());
                h.push(hash.as_bytes());
            };
            fn key(f: &FileRef) -> (&str, &str) {
                (f.path.as_str(), f.hash.as_str())
            }
            // A job's files usually come sorted (the store and the tracer give byte order).
            if refs.is_sorted_by(|a, b| key(a) <= key(b)) {
                refs.iter().for_each(|f| put(&f.path, &f.hash));
            } else {
                let mut v: Vec<(&str, &str)> = refs.iter().map(key).collect();
                v.sort_unstable();
                v.into_iter().for_each(|(p, hash)| put(p, hash));
            }
        }
        h.finalize_hex()
    }
}

/// A group of jobs: one `rollout run` job, or a series of traced steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub uid: String,
    pub name: Option<String>,
    /// `run` (a rollout job), `trace` (traced steps), or the kind of its first job.
    pub kind: String,
    pub created_at: String,
    pub git: Option<GitInfo>,
}

/// A short view of a job, for lists and artifact pages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    pub uid: String,
    pub session: String,
    pub kind: JobKind,
    pub command: String,
    pub cwd: String,
    pub started_at: String,
    pub duration_sec: f64,
    pub exit_code: Option<i64>,
    pub git_commit: Option<String>,
    /// Path under which this job read or wrote the artifact (on artifact pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// What the store knows about one artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactInfo {
    pub hash: String,
    pub size: u64,
    pub kind: ArtifactKind,
    pub first_seen: String,
    /// Other digests (`sha256`), by algorithm.
    pub digests: BTreeMap<String, String>,
    /// Every path it was seen at.
    pub paths: Vec<String>,
    /// Jobs that wrote it, latest first.
    pub produced_by: Vec<JobSummary>,
    /// Jobs that read it, latest first.
    pub consumed_by: Vec<JobSummary>,
}

/// An artifact in a lineage tree, with the job that produced it and, recursively, its inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineageNode {
    pub hash: String,
    pub path: Option<String>,
    pub size: u64,
    pub kind: ArtifactKind,
    /// None: not produced by any recorded job (a source file, or beyond `depth`).
    pub produced_by: Option<Box<LineageJob>>,
    /// The depth limit stopped the walk here although a producer is recorded.
    #[serde(default)]
    pub truncated: bool,
}

/// A job in a lineage tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineageJob {
    pub job: JobSummary,
    pub inputs: Vec<LineageNode>,
}

/// Everything needed to register an artifact's lineage elsewhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    pub schema_version: String,
    /// The artifact the bundle is about.
    pub root: String,
    pub sessions: Vec<Session>,
    /// The jobs of the lineage, with their inputs and outputs, oldest first.
    pub jobs: Vec<Job>,
    /// Every artifact the jobs mention.
    pub artifacts: Vec<ArtifactRecord>,
}

/// An artifact row, as in a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    pub hash: String,
    pub size: u64,
    pub kind: ArtifactKind,
    pub first_seen: String,
    #[serde(default)]
    pub digests: BTreeMap<String, String>,
}

/// What [`crate::Store::import_bundle`] added.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImportStats {
    pub sessions: usize,
    pub jobs: usize,
    pub artifacts: usize,
}

/// A recorded file whose current content differs from the last recorded one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangedFile {
    pub path: String,
    pub recorded: String,
    /// None: the file is gone.
    pub current: Option<String>,
}

/// A job that read a version of a file that has since been replaced (directly, or upstream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StaleJob {
    pub job: JobSummary,
    /// The input path whose version is outdated.
    pub path: String,
    pub read_hash: String,
    /// The newer version and the job that wrote it (None when only the file on disk changed).
    pub current_hash: Option<String>,
    pub replaced_by: Option<String>,
    /// Stale only because an upstream job is stale.
    pub upstream: bool,
}

/// `rollout status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub changed: Vec<ChangedFile>,
    pub stale: Vec<StaleJob>,
}
