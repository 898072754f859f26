//! Trials as provenance jobs: an [`EventSink`] that records every finished trial in the
//! provenance store, with its inputs (the task directory's Merkle digest, the environment image,
//! the agent configuration, the job and trial configuration files) and outputs (every file of the
//! trial directory: result.json, the reward file, logs, artifacts).
//!
//! Recording happens on a background thread so that the runner never waits for hashing or
//! SQLite. A store that cannot be written never fails the run: [`TrialRecorder::finish`] returns
//! the warnings for the caller to print.

use crate::events::{Event, EventSink, TrialConfig};
use rollout_core::result::TrialResult;
use rollout_store::{ArtifactKind, FileRef, Job, JobKind, Session, Store};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

enum Msg {
    Job {
        job_id: String,
        job_name: String,
        job_dir: PathBuf,
        config: Arc<serde_json::Value>,
    },
    Trial {
        config: Option<Arc<TrialConfig>>,
        result: Arc<TrialResult>,
        trial_dir: PathBuf,
    },
}

/// What the recorder did, for the caller to report.
#[derive(Debug, Default, Clone)]
pub struct RecorderReport {
    /// Trials recorded.
    pub recorded: usize,
    /// Problems met (the run went on regardless).
    pub warnings: Vec<String>,
}

/// Records trials in the provenance store at `store_path`.
pub struct TrialRecorder {
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    worker: Mutex<Option<JoinHandle<RecorderReport>>>,
    configs: Mutex<HashMap<String, Arc<TrialConfig>>>,
}

impl TrialRecorder {
    /// Start recording into the store at `store_path`; `argv` is the command line that runs the
    /// trials (kept with each trial job).
    pub fn start(store_path: PathBuf, argv: Vec<String>) -> Self {
        let (tx, rx) = mpsc::channel();
        let worker = std::thread::Builder::new()
            .name("provenance".into())
            .spawn(move || work(&store_path, argv, rx))
            .ok();
        TrialRecorder {
            tx: Mutex::new(Some(tx)),
            worker: Mutex::new(worker),
            configs: Mutex::new(HashMap::new()),
        }
    }

    /// Wait for every trial to be recorded and say how it went.
    pub fn finish(&self) -> RecorderReport {
        self.tx.lock().expect("recorder").take();
        match self.worker.lock().expect("recorder").take() {
            Some(w) => w.join().unwrap_or_else(|_| RecorderReport {
                recorded: 0,
                warnings: vec!["the provenance recorder panicked".into()],
            }),
            None => RecorderReport {
                recorded: 0,
                warnings: vec!["could not start the provenance recorder thread".into()],
            },
        }
    }

    fn send(&self, m: Msg) {
        if let Some(tx) = self.tx.lock().expect("recorder").as_ref() {
            let _ = tx.send(m);
        }
    }
}

impl EventSink for TrialRecorder {
    fn on_event(&self, event: &Event) {
        match event {
            Event::JobStarted {
                job_id,
                job_name,
                job_dir,
                config,
                ..
            } => self.send(Msg::Job {
                job_id: job_id.clone(),
                job_name: job_name.clone(),
                job_dir: job_dir.clone(),
                config: config.clone(),
            }),
            Event::TrialStarted { config, .. } => {
                self.configs
                    .lock()
                    .expect("recorder")
                    .insert(config.trial_name.clone(), config.clone());
            }
            Event::TrialFinished { result, trial_dir } => {
                let config = self
                    .configs
                    .lock()
                    .expect("recorder")
                    .remove(&result.trial_name);
                self.send(Msg::Trial {
                    config,
                    result: result.clone(),
                    trial_dir: trial_dir.clone(),
                })
            }
            _ => {}
        }
    }
}

struct JobCtx {
    job_id: String,
    job_dir: PathBuf,
    config: Arc<serde_json::Value>,
}

fn work(store_path: &Path, argv: Vec<String>, rx: mpsc::Receiver<Msg>) -> RecorderReport {
    let mut report = RecorderReport::default();
    let mut store = match Store::open(store_path) {
        Ok(s) => s,
        Err(e) => {
            report
                .warnings
                .push(format!("{e}; trials of this run are not recorded"));
            for _ in rx {}
            return report;
        }
    };
    let cwd = std::env::current_dir().unwrap_or_default();
    let git = rollout_store::git::info(&cwd);
    let host = crate::host_name();
    let mut job: Option<JobCtx> = None;
    let mut task_digests: HashMap<String, (String, u64)> = HashMap::new();
    for msg in rx {
        match msg {
            Msg::Job {
                job_id,
                job_name,
                job_dir,
                config,
            } => {
                let s = Session {
                    uid: job_id.clone(),
                    name: Some(job_name),
                    kind: "run".into(),
                    created_at: rollout_store::now(),
                    git: git.clone(),
                };
                if let Err(e) = store.ensure_session(&s) {
                    report.warnings.push(e.to_string());
                }
                job = Some(JobCtx {
                    job_id,
                    job_dir,
                    config,
                });
            }
            Msg::Trial {
                config,
                result,
                trial_dir,
            } => {
                let Some(ctx) = job.as_ref() else { continue };
                let rec = TrialRecord {
                    ctx,
                    config: config.as_deref(),
                    result: &result,
                    trial_dir: &trial_dir,
                    argv: &argv,
                    cwd: &cwd,
                    git: git.as_ref(),
                    host: &host,
                };
                match rec.job(&mut store, &mut task_digests) {
                    Ok(j) => match store.record_job(&j) {
                        Ok(()) => report.recorded += 1,
                        Err(e) => report
                            .warnings
                            .push(format!("trial {} not recorded: {e}", result.trial_name)),
                    },
                    Err(e) => report
                        .warnings
                        .push(format!("trial {} not recorded: {e}", result.trial_name)),
                }
            }
        }
    }
    report
}

struct TrialRecord<'a> {
    ctx: &'a JobCtx,
    config: Option<&'a TrialConfig>,
    result: &'a TrialResult,
    trial_dir: &'a Path,
    argv: &'a [String],
    cwd: &'a Path,
    git: Option<&'a rollout_store::git::GitInfo>,
    host: &'a str,
}

fn value_ref(path: String, kind: ArtifactKind, bytes: &[u8]) -> FileRef {
    FileRef {
        path,
        hash: blake3::hash(bytes).to_hex().to_string(),
        size: bytes.len() as u64,
        kind,
        sha256: None,
    }
}

fn file_ref(store: &mut Store, p: &Path) -> Result<FileRef, rollout_store::StoreError> {
    let d = store.hash_file(p, false)?;
    Ok(FileRef {
        path: p.to_string_lossy().into_owned(),
        hash: d.hash,
        size: d.size,
        kind: ArtifactKind::File,
        sha256: d.sha256,
    })
}

impl TrialRecord<'_> {
    fn job(
        &self,
        store: &mut Store,
        task_digests: &mut HashMap<String, (String, u64)>,
    ) -> Result<Job, String> {
        let r = self.result;
        let mut inputs = Vec::new();
        // The task directory, as a Merkle digest (once per task per run).
        let task_path = r.task_path.clone();
        let digest = match task_digests.get(&task_path) {
            Some(d) => Some(d.clone()),
            None => match rollout_store::tree_digest(Path::new(&task_path)) {
                Ok(d) => {
                    task_digests.insert(task_path.clone(), d.clone());
                    Some(d)
                }
                Err(_) => None, // a task from an archive or a cache that is gone
            },
        };
        if let Some((hash, size)) = &digest {
            inputs.push(FileRef {
                path: task_path.clone(),
                hash: hash.clone(),
                size: *size,
                kind: ArtifactKind::Tree,
                sha256: None,
            });
        }
        if let Some(id) = &r.environment.image_id {
            let name = r.environment.image.clone().unwrap_or_else(|| id.clone());
            inputs.push(value_ref(
                format!("image:{name}"),
                ArtifactKind::Image,
                id.as_bytes(),
            ));
        }
        // The base images the environment was built from: a re-run on other bases is another
        // experiment, and `rollout reproduce` says so.
        for (reference, id) in &r.environment.base_images {
            inputs.push(value_ref(
                format!("base-image:{reference}"),
                ArtifactKind::Image,
                id.as_bytes(),
            ));
        }
        let agent = self
            .config
            .map(|c| serde_json::to_value(&c.agent).unwrap_or_default())
            .unwrap_or_else(|| serde_json::to_value(&r.agent).unwrap_or_default());
        inputs.push(value_ref(
            format!("agent:{}", r.agent.name),
            ArtifactKind::Value,
            &serde_json::to_vec(&agent).unwrap_or_default(),
        ));
        for p in [
            self.ctx.job_dir.join("config.json"),
            self.trial_dir.join("config.json"),
        ] {
            if p.is_file() {
                inputs.push(file_ref(store, &p).map_err(|e| e.to_string())?);
            }
        }
        // Outputs: every file the trial left in its directory but its configuration.
        let mut outputs = Vec::new();
        let files = rollout_core::digest::list_files(self.trial_dir)
            .map_err(|e| format!("listing {}: {e}", self.trial_dir.display()))?;
        for rel in files {
            if rel == Path::new("config.json") {
                continue;
            }
            let p = self.trial_dir.join(&rel);
            if std::fs::metadata(&p).is_ok_and(|m| m.is_file()) {
                outputs.push(file_ref(store, &p).map_err(|e| e.to_string())?);
            }
        }
        let mut command = self.argv.join(" ");
        command.push_str(&format!(
            " # trial {} task {} agent {}",
            r.trial_name, r.task_name, r.agent.name
        ));
        let metadata = serde_json::json!({
            "job_id": r.job_id,
            "job_name": r.job_name,
            "trial_name": r.trial_name,
            "trial_dir": self.trial_dir,
            "task_name": r.task_name,
            "task_path": r.task_path,
            "task_checksum": r.task_checksum,
            "task_digest": digest.map(|d| d.0),
            "dataset": r.dataset,
            "agent": agent,
            "agent_info": r.agent,
            "image": r.environment.image,
            "image_id": r.environment.image_id,
            "base_images": r.environment.base_images,
            "environment": r.environment.kind,
            "reward": r.reward,
            "rewards": r.rewards,
            "error": r.error,
            "attempt": r.attempt,
            "job_config": &*self.ctx.config,
        });
        Ok(Job {
            uid: r.id.clone(),
            session: self.ctx.job_id.clone(),
            kind: JobKind::Trial,
            command,
            argv: self.argv.to_vec(),
            cwd: self.cwd.to_string_lossy().into_owned(),
            git: self.git.cloned(),
            started_at: rollout_store::format_time(r.started_at),
            duration_sec: r.seconds,
            exit_code: Some(if r.error.is_some() { 1 } else { 0 }),
            env: Default::default(),
            metadata,
            host: self.host.to_string(),
            inputs,
            outputs,
        })
    }
}
