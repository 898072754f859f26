//! The runner: turns a job into trials and runs each through its lifecycle
//! (environment setup → agent install → agent run → verify → collect → teardown), each phase
//! timed, bounded by its timeout and cancellable, every failure mapped to an error kind.
//!
//! The runner never prints: it emits [`Event`]s to [`EventSink`]s. The [`writer::ResultsWriter`]
//! sink turns events into the job directory; the CLI's progress display is another sink.
//! The runner does write a trial's evidence (agent and verifier output, artifacts) into the
//! trial directory, since that is where the sandbox's files land.

mod compose;
pub mod events;
pub mod fsutil;
pub mod plan;
pub mod provenance;
pub mod report;
mod runner;
mod sandbox;
pub mod session;
mod steps;
mod trial;
pub mod writer;

pub use events::{Event, EventSink, TrialConfig};
pub use plan::{JobPlan, PlanError, TrialPlan};
pub use runner::{host_name, RunOptions, Runner, CA_BUNDLE_PATH, CA_BUNDLE_VARS};
