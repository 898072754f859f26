//! Every task a job names, whatever its source.

use crate::executor::{ExecutorBatch, ExecutorOptions};
use crate::git::GitCache;
use crate::registry::{resolve_dataset, Registry};
use rollout_core::job_config::DatasetSpec;
use rollout_core::{JobConfig, Task, TaskFilter};
use std::path::{Path, PathBuf};

/// How sources are reached.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// The git cache for registry datasets and executor archives.
    pub git: GitCache,
    /// Parallel clones.
    pub parallel_clones: usize,
    /// Executor archives to run (`--archive`).
    pub archives: Vec<PathBuf>,
    /// How archives become tasks.
    pub executor: ExecutorOptions,
    /// What an untrusted submitter may make rollout fetch (`rollout serve`: registries here,
    /// repositories through `git`, which must carry the same policy); None: anything.
    pub policy: Option<std::sync::Arc<crate::policy::RemotePolicy>>,
}

/// What a job's sources produced.
#[derive(Debug, Default)]
pub struct LoadedTasks {
    pub tasks: Vec<Task>,
    /// Agent programs shipped in executor archives (`agent_code/`), to run as code agents.
    pub archive_agents: Vec<PathBuf>,
}

/// Load every task of `job`: its datasets (directories, `.jsonl` row files, registry datasets)
/// with their filters, its single tasks, and the executor archives of `opts`. Errors list every
/// source that failed.
pub fn load_job_tasks(job: &JobConfig, opts: &SourceOptions) -> Result<LoadedTasks, Vec<String>> {
    let mut out = LoadedTasks::default();
    let mut errors = Vec::new();
    for (i, d) in job.datasets.iter().enumerate() {
        match load_dataset(d, opts) {
            Ok(tasks) => match TaskFilter::new(&d.task_names, &d.exclude_task_names, None) {
                Ok(f) => {
                    // Sorted by name; shuffled with the job's seed when asked; then limited.
                    let mut kept = f.apply(tasks);
                    if let Some(seed) = job.shuffle_seed {
                        rollout_core::task::shuffle(&mut kept, seed);
                    }
                    if let Some(n) = d.n_tasks {
                        kept.truncate(n);
                    }
                    out.tasks.extend(kept);
                }
                Err(e) => errors.push(format!("datasets[{i}]: {e}")),
            },
            Err(mut e) => errors.append(&mut e),
        }
    }
    for t in &job.tasks {
        match rollout_core::task::discover_lenient(&t.path) {
            Ok(found) => out.tasks.extend(found),
            Err(errs) => errors.extend(errs.into_iter().map(|e| e.to_string())),
        }
    }
    for archive in &opts.archives {
        let mut exec = opts.executor.clone();
        exec.parallel_clones = opts.parallel_clones;
        match crate::executor::load(archive, &opts.git, &exec) {
            Ok(ExecutorBatch {
                tasks, agent_code, ..
            }) => {
                out.tasks.extend(tasks);
                out.archive_agents.extend(agent_code);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn load_dataset(d: &DatasetSpec, opts: &SourceOptions) -> Result<Vec<Task>, Vec<String>> {
    if let Some(reg) = &d.registry {
        let location = match (&reg.path, &reg.url) {
            (Some(p), _) => p.display().to_string(),
            (None, Some(u)) => u.clone(),
            (None, None) => return Err(vec!["a registry needs `path` or `url`".into()]),
        };
        let name = d.name.as_deref().unwrap_or_default();
        let registry = Registry::load_with(&location, opts.policy.as_deref())
            .map_err(|e| vec![e.to_string()])?;
        let ds = registry
            .find(name, d.version.as_deref())
            .map_err(|e| vec![e.to_string()])?;
        return resolve_dataset(ds, &opts.git, opts.parallel_clones)
            .map_err(|errs| errs.into_iter().map(|e| e.to_string()).collect());
    }
    let Some(path) = &d.path else {
        return Err(vec!["a dataset needs `path` or `registry`".into()]);
    };
    if path.is_file() && path.extension().is_some_and(|e| e == "jsonl") {
        return load_jsonl(path).map_err(|e| vec![e]);
    }
    rollout_core::task::discover_lenient(path)
        .map_err(|errs| errs.into_iter().map(|e| e.to_string()).collect())
}

/// Rows of a `task_boundary_v2` file as task directories in rollout's cache (keyed by content).
fn load_jsonl(path: &Path) -> Result<Vec<Task>, String> {
    let rows = crate::jsonl::load_rows(path).map_err(|e| e.to_string())?;
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let root = rollout_core::cache_root()
        .join("jsonl")
        .join(&rollout_core::digest::bytes_digest(&bytes)[..24]);
    let dataset = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    let mut tasks = Vec::new();
    for row in &rows {
        let dir = crate::jsonl::materialize(row, &root)
            .map_err(|e| format!("{}: task {}: {e}", path.display(), row.id))?;
        let mut task = Task::load_or_invalid(&dir).map_err(|e| e.to_string())?;
        task.dataset = dataset.clone();
        tasks.push(task);
    }
    Ok(tasks)
}
