//! Task sources: everything that is not already a local Harbor task directory becomes one.
//!
//! - [`git`] and [`registry`]: datasets listed in a `registry.json` (FORMATS.md §3), cloned once per
//!   (git_url, commit) into a persistent cache.
//! - [`archive`]: hardened extraction of uploaded zip / tar.gz archives.
//! - [`jsonl`]: per-task-image rows (`task_boundary_v2`, FORMATS.md §5).
//! - [`executor`]: term-executor archives (FORMATS.md §4) turned into task directories.
//! - [`policy`]: what an untrusted submitter (`rollout serve`) may make rollout fetch.
//!
//! Not here: running anything. Sources only produce [`rollout_core::Task`]s.

pub mod archive;
pub mod executor;
pub mod experiment;
pub mod git;
pub mod job;
pub mod jsonl;
pub mod policy;
pub mod registry;
