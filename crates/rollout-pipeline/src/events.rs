//! What a pipeline run tells the world while it runs: progress rendering, JSON-lines logs and
//! (later) server streaming subscribe to the same events, like the runner's
//! `rollout_runner::Event`s for jobs.

use crate::assist::RepairReport;
use crate::runner::{AttemptRecord, StageResult};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

/// Something that happened in a pipeline run. Serialised as an object tagged by `type`
/// (`stage_started` …).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PipelineEvent {
    /// The contract was loaded and the environment is ready.
    RunStarted {
        run_id: String,
        repo: PathBuf,
        artifacts_dir: PathBuf,
        /// `local` or `docker`.
        environment: String,
        /// Stages that will run, in order (selectors' stage names).
        stages: Vec<String>,
    },
    /// A stage (bootstrap, actions, a contract stage, teardown) begins a round.
    StageStarted { stage: String, round: u32 },
    /// One try of one command ended (its evidence files are written).
    CommandFinished {
        stage: String,
        round: u32,
        /// 1-based position in the stage.
        index: usize,
        /// The command, secrets redacted.
        cmd: String,
        attempt: AttemptRecord,
    },
    /// A stage ended (passed, failed or skipped), verification included.
    StageFinished { result: StageResult },
    /// A repair attempt ended.
    RepairFinished { report: RepairReport },
    /// The run ended (`pipeline_result.json` is written).
    RunFinished {
        run_id: String,
        ok: bool,
        cancelled: bool,
        failed_stage: Option<String>,
        failure: Option<String>,
    },
}

/// Receives every event of a run, in order, from the task running it (keep it quick: hand
/// slow work to a channel).
pub trait PipelineSink: Send + Sync {
    fn event(&self, event: &PipelineEvent);
}

/// The subscribers of a run.
#[derive(Clone, Default)]
pub struct Subscribers(Vec<Arc<dyn PipelineSink>>);

impl Subscribers {
    pub fn push(&mut self, sink: Arc<dyn PipelineSink>) {
        self.0.push(sink);
    }

    pub fn emit(&self, event: PipelineEvent) {
        for s in &self.0 {
            s.event(&event);
        }
    }
}

/// Collects every event (tests, the Python bridge).
#[derive(Default)]
pub struct Recorder(pub std::sync::Mutex<Vec<PipelineEvent>>);

impl PipelineSink for Recorder {
    fn event(&self, event: &PipelineEvent) {
        self.0.lock().expect("recorder lock").push(event.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{run, RunOptions};
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn a_run_tells_its_subscribers_every_step_in_order() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("pipeline.yml"),
            "version: 1\ntests:\n  cmds: [\"echo one\", \"exit 3\"]\nevaluation:\n  run_cmds: [\"true\"]\n",
        )
        .unwrap();
        let rec = Arc::new(Recorder::default());
        let mut opts = RunOptions::new(d.path().to_path_buf());
        opts.subscribers.push(rec.clone());
        let c = CancellationToken::new();
        let r = run(&opts, &c, &c).await.unwrap();
        assert!(!r.ok);
        let seen: Vec<String> = rec
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|e| match e {
                PipelineEvent::RunStarted { environment, .. } => format!("run:{environment}"),
                PipelineEvent::StageStarted { stage, .. } => format!("start:{stage}"),
                PipelineEvent::CommandFinished { index, attempt, .. } => {
                    format!("cmd{index}:{}", attempt.rc)
                }
                PipelineEvent::StageFinished { result } => {
                    format!("end:{}:{:?}", result.stage, result.status)
                }
                PipelineEvent::RepairFinished { .. } => "repair".into(),
                PipelineEvent::RunFinished {
                    ok, failed_stage, ..
                } => {
                    format!("done:{ok}:{}", failed_stage.as_deref().unwrap_or("-"))
                }
            })
            .collect();
        assert_eq!(
            seen,
            [
                "run:local",
                "start:tests",
                "cmd1:0",
                "cmd2:3",
                "end:tests:Failed",
                "end:evaluation:Skipped",
                "done:false:tests"
            ]
        );
    }
}
