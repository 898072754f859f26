//! Term-executor archives (FORMATS.md §4) as ordinary Harbor task directories.
//!
//! ```text
//! tasks/<id>/workspace.yaml   repo, version (required), base_commit?, install? [cmds], language?
//! tasks/<id>/prompt.md        the instruction
//! tasks/<id>/tests/*.sh       checks; every other file under tests/ is written into the repo
//! tasks/<id>/checks.txt       one check per line, used only when there is no .sh
//! agent_code/…                the agent program (files concatenated; language from extension)
//! ```
//!
//! Each task becomes a directory whose environment is a base image with git and the language's
//! runtime, the repository checked out at `base_commit` (through the git cache), and the
//! `install` commands run as build steps. Its generated `tests/test.sh` writes the test files into
//! the repository, runs every check from the repository, and writes `reward.json`: reward 1 only
//! when every check passes. A task without any check gets no `tests/test.sh`, so its trial ends
//! `task_invalid` before anything runs (the seed's `.all()` of nothing scored 1: a bug).
//! The unpacked archive lives in rollout's cache, keyed by its content, so a job that uses it can
//! be resumed.

use crate::archive::{extract_file, ArchiveError, Limits};
use crate::git::{GitCache, SourceError};
use rollout_agents::code::Language;
use rollout_core::Task;
use serde::Deserialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Base image of generated environments unless `--executor-image` says otherwise.
pub const DEFAULT_BASE_IMAGE: &str = "debian:bookworm-slim";

/// How archives are turned into tasks.
#[derive(Debug, Clone, Default)]
pub struct ExecutorOptions {
    /// Base image; None: [`DEFAULT_BASE_IMAGE`] plus git and the language runtime from apt.
    pub base_image: Option<String>,
    /// CA bundle trusted during builds (install commands behind a TLS-intercepting proxy).
    pub ca_bundle: Option<Vec<u8>>,
    /// Extraction limits.
    pub limits: Limits,
    /// Parallel clones.
    pub parallel_clones: usize,
    /// Where archives are unpacked; None: `<cache>/archives`, shared and reused. `rollout serve`
    /// unpacks into the run's own directory, so that the run's expiry removes it.
    pub unpack_dir: Option<PathBuf>,
    /// The agent timeout of the generated tasks, seconds (default 600, as the seed).
    pub agent_timeout_sec: Option<f64>,
    /// The test (verifier) timeout of the generated tasks, seconds (default 300, as the seed).
    pub test_timeout_sec: Option<f64>,
}

/// An archive's tasks and agent.
#[derive(Debug)]
pub struct ExecutorBatch {
    /// The archive's file stem (the dataset name of its tasks).
    pub name: String,
    pub tasks: Vec<Task>,
    /// The agent program (`agent_code/`), if the archive has one.
    pub agent_code: Option<PathBuf>,
    /// Where the archive was unpacked and its tasks generated.
    pub root: PathBuf,
}

/// Why an archive could not become tasks.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("archive {archive}: {source}")]
    Archive {
        archive: PathBuf,
        source: ArchiveError,
    },
    #[error("{0}")]
    Git(#[from] SourceError),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ExecutorError {
    let context = context.into();
    move |source| ExecutorError::Io { context, source }
}

fn invalid(path: &Path, message: impl Into<String>) -> ExecutorError {
    ExecutorError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// `workspace.yaml`.
#[derive(Debug, Clone, Deserialize)]
pub struct Workspace {
    pub repo: String,
    pub version: serde_norway::Value,
    #[serde(default)]
    pub base_commit: Option<String>,
    #[serde(default)]
    pub install: Vec<String>,
    #[serde(default)]
    pub language: Option<String>,
}

/// Unpack `archive` (zip or tar.gz) and generate its tasks, reusing an earlier unpacking of the
/// same archive with the same options.
pub fn load(
    archive: &Path,
    cache: &GitCache,
    opts: &ExecutorOptions,
) -> Result<ExecutorBatch, ExecutorError> {
    let bytes = std::fs::read(archive).map_err(io(format!("reading {}", archive.display())))?;
    let mut key = blake3::Hasher::new();
    key.update(&bytes);
    key.update(opts.base_image.as_deref().unwrap_or("").as_bytes());
    key.update(opts.ca_bundle.as_deref().unwrap_or(b""));
    let root = opts
        .unpack_dir
        .clone()
        .unwrap_or_else(|| rollout_core::cache_root().join("archives"))
        .join(&key.finalize().to_hex()[..24]);
    let name = archive
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_end_matches(".gz")
                .trim_end_matches(".tar")
                .trim_end_matches(".tgz")
                .trim_end_matches(".zip")
                .to_string()
        })
        .unwrap_or_else(|| "archive".into());
    if !root.join(".complete").is_file() {
        // Unique per call: two batches of the same archive in one process (the server) must
        // not unpack into, or delete, each other's staging directory.
        static STAGING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STAGING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let staging = root.with_extension(format!("tmp-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let built = generate(
            archive,
            &staging.join("extracted"),
            &staging,
            cache,
            opts,
            &name,
        );
        let all_cloned = match built {
            Ok(all) => all,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        // A failed clone is not cached: the next load of the archive tries again.
        if all_cloned {
            std::fs::write(staging.join(".complete"), b"")
                .map_err(io("marking the archive unpacked"))?;
        }
        // An earlier unpacking with failed clones is replaced.
        if root.is_dir() && !root.join(".complete").is_file() {
            let _ = std::fs::remove_dir_all(&root);
        }
        if std::fs::rename(&staging, &root).is_err() {
            // Another process unpacked the same archive first: use theirs.
            let _ = std::fs::remove_dir_all(&staging);
        }
    }
    let mut tasks = Vec::new();
    let tasks_dir = root.join("tasks");
    let mut ids: Vec<PathBuf> = std::fs::read_dir(&tasks_dir)
        .map_err(io(format!("listing {}", tasks_dir.display())))?
        .flatten()
        .map(|e| e.path())
        .collect();
    ids.sort();
    for dir in ids {
        if let Ok(why) = std::fs::read_to_string(dir.join(CLONE_FAILED)) {
            tasks.push(Task {
                name: dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                checksum: String::new(),
                config: Default::default(),
                instruction: std::fs::read_to_string(dir.join("instruction.md"))
                    .unwrap_or_default(),
                step_instructions: Vec::new(),
                dir,
                dataset: Some(name.clone()),
                invalid: Some(why),
            });
            continue;
        }
        let mut task = Task::load_or_invalid(&dir).map_err(|e| invalid(&dir, e.to_string()))?;
        task.dataset = Some(name.clone());
        tasks.push(task);
    }
    let agent = root
        .join("extracted")
        .join(find_root(&root.join("extracted")).unwrap_or_default())
        .join("agent_code");
    Ok(ExecutorBatch {
        name,
        tasks,
        agent_code: agent.is_dir().then_some(agent),
        root,
    })
}

/// The directory holding `tasks/` inside an extracted archive: the top, or a single top-level
/// directory (archives made with `tar czf x.tgz batch/`).
fn find_root(extracted: &Path) -> Option<PathBuf> {
    if extracted.join("tasks").is_dir() {
        return Some(PathBuf::new());
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(extracted)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    match entries.as_slice() {
        [only] if only.join("tasks").is_dir() => only.file_name().map(PathBuf::from),
        _ => None,
    }
}

/// The tasks of an extracted archive: the directory holding `tasks/`, and each task's
/// directory with its parsed `workspace.yaml` (sorted by id).
fn parse_tasks(
    archive: &Path,
    extracted: &Path,
) -> Result<(PathBuf, Vec<(PathBuf, Workspace)>), ExecutorError> {
    let base = find_root(extracted).ok_or_else(|| invalid(archive, "no tasks/ directory at the top of the archive (or inside its single top-level directory)"))?;
    let tasks_src = extracted.join(&base).join("tasks");
    let mut task_dirs: Vec<PathBuf> = std::fs::read_dir(&tasks_src)
        .map_err(io(format!("listing {}", tasks_src.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    task_dirs.sort();
    if task_dirs.is_empty() {
        return Err(invalid(&tasks_src, "the archive holds no tasks"));
    }
    let mut parsed = Vec::new();
    for dir in &task_dirs {
        let ws_path = dir.join("workspace.yaml");
        let text = std::fs::read_to_string(&ws_path).map_err(|e| {
            invalid(
                &ws_path,
                format!("required file missing or unreadable: {e}"),
            )
        })?;
        let ws: Workspace =
            serde_norway::from_str(&text).map_err(|e| invalid(&ws_path, e.to_string()))?;
        if ws.repo.trim().is_empty() {
            return Err(invalid(&ws_path, "`repo` must not be empty"));
        }
        if !dir.join("prompt.md").is_file() {
            return Err(invalid(&dir.join("prompt.md"), "required file missing"));
        }
        parsed.push((dir.clone(), ws));
    }
    Ok((base, parsed))
}

/// What an archive holds, checked without cloning anything: its task ids with their
/// `workspace.yaml`, and whether it has `agent_code/`. `scratch` (created, then removed) is
/// where it is extracted. `rollout serve` answers a submission with this, then clones.
#[derive(Debug)]
pub struct Inspection {
    pub tasks: Vec<(String, Workspace)>,
    pub has_agent_code: bool,
}

pub fn inspect(
    archive: &Path,
    limits: &Limits,
    scratch: &Path,
) -> Result<Inspection, ExecutorError> {
    let _ = std::fs::remove_dir_all(scratch);
    let result = (|| {
        extract_file(archive, scratch, limits).map_err(|source| ExecutorError::Archive {
            archive: archive.to_path_buf(),
            source,
        })?;
        let (base, parsed) = parse_tasks(archive, scratch)?;
        Ok(Inspection {
            has_agent_code: scratch.join(&base).join("agent_code").is_dir(),
            tasks: parsed
                .into_iter()
                .map(|(dir, ws)| {
                    let id = dir
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    (id, ws)
                })
                .collect(),
        })
    })();
    let _ = std::fs::remove_dir_all(scratch);
    result
}

/// The file in a generated task directory that says its repository could not be cloned (the
/// task's trials fail with it; the archive's other tasks run).
const CLONE_FAILED: &str = "clone-failed.txt";

fn generate(
    archive: &Path,
    extracted: &Path,
    out: &Path,
    cache: &GitCache,
    opts: &ExecutorOptions,
    name: &str,
) -> Result<bool, ExecutorError> {
    extract_file(archive, extracted, &opts.limits).map_err(|source| ExecutorError::Archive {
        archive: archive.to_path_buf(),
        source,
    })?;
    let (base, parsed) = parse_tasks(archive, extracted)?;
    let requests: Vec<(String, Option<String>)> = parsed
        .iter()
        .map(|(_, ws)| {
            (
                ws.repo.clone(),
                ws.base_commit.clone().filter(|c| !c.is_empty()),
            )
        })
        .collect();
    let checkouts = cache.checkout_many(&requests, opts.parallel_clones.max(1));
    let agent_language = std::fs::read_dir(extracted.join(&base).join("agent_code"))
        .ok()
        .and_then(|_| {
            rollout_agents::code::read_program(&extracted.join(&base).join("agent_code"))
                .ok()
                .map(|(_, l)| l)
        });
    let mut all_cloned = true;
    for ((dir, ws), checkout) in parsed.iter().zip(checkouts) {
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let task = out.join("tasks").join(&id);
        let checkout = match checkout {
            Ok(c) => c,
            // A refusal of the source policy refuses the archive; any other failure to clone
            // fails this task alone.
            Err(e) if e.to_string().contains(crate::policy::REFUSED) => return Err(e.into()),
            Err(e) => {
                all_cloned = false;
                std::fs::create_dir_all(&task)
                    .map_err(io(format!("creating {}", task.display())))?;
                std::fs::copy(dir.join("prompt.md"), task.join("instruction.md"))
                    .map_err(io("copying prompt.md"))?;
                std::fs::write(task.join(CLONE_FAILED), format!("git clone failed: {e}"))
                    .map_err(io("recording a failed clone"))?;
                continue;
            }
        };
        write_task(
            dir,
            ws,
            &checkout.dir,
            &checkout.commit,
            &task,
            opts,
            name,
            agent_language,
        )?;
    }
    Ok(all_cloned)
}

#[allow(clippy::too_many_arguments)]
fn write_task(
    src: &Path,
    ws: &Workspace,
    repo: &Path,
    commit: &str,
    task: &Path,
    opts: &ExecutorOptions,
    batch: &str,
    agent_language: Option<Language>,
) -> Result<(), ExecutorError> {
    let env = task.join("environment");
    std::fs::create_dir_all(&env).map_err(io(format!("creating {}", env.display())))?;
    std::fs::copy(src.join("prompt.md"), task.join("instruction.md"))
        .map_err(io("copying prompt.md"))?;
    rollout_env::archive::copy_tree(repo, &env.join("repo"))
        .map_err(io(format!("copying the checkout of {}", ws.repo)))?;
    let language = ws
        .language
        .as_deref()
        .and_then(|l| match l.to_ascii_lowercase().as_str() {
            "python" | "py" => Some(Language::Python),
            "javascript" | "js" | "node" => Some(Language::JavaScript),
            "typescript" | "ts" => Some(Language::TypeScript),
            "go" | "golang" => Some(Language::Go),
            "rust" | "rs" => Some(Language::Rust),
            "bash" | "shell" | "sh" => Some(Language::Shell),
            _ => None,
        });
    let mut packages: Vec<&str> = vec!["git", "ca-certificates"];
    for l in [language, agent_language].into_iter().flatten() {
        for p in l.debian_packages() {
            if !packages.contains(p) {
                packages.push(p);
            }
        }
    }
    let mut dockerfile = String::new();
    match &opts.base_image {
        Some(image) => writeln!(dockerfile, "FROM {image}").ok(),
        None => writeln!(
            dockerfile,
            "FROM {DEFAULT_BASE_IMAGE}\nRUN apt-get update && apt-get install -y --no-install-recommends {} && rm -rf /var/lib/apt/lists/*",
            packages.join(" ")
        )
        .ok(),
    };
    if let Some(bundle) = &opts.ca_bundle {
        std::fs::write(env.join("rollout-ca.crt"), bundle).map_err(io("writing the CA bundle"))?;
        dockerfile.push_str("COPY rollout-ca.crt /rollout-ca.crt\n");
        dockerfile.push_str("ENV SSL_CERT_FILE=/rollout-ca.crt REQUESTS_CA_BUNDLE=/rollout-ca.crt PIP_CERT=/rollout-ca.crt CURL_CA_BUNDLE=/rollout-ca.crt NODE_EXTRA_CA_CERTS=/rollout-ca.crt GIT_SSL_CAINFO=/rollout-ca.crt\n");
    }
    dockerfile.push_str("COPY repo /repo\nWORKDIR /repo\n");
    // The cache holds trees without history; agents expect a repository (`git diff` shows
    // their changes), so the checkout becomes one commit, labelled with the original id.
    writeln!(
        dockerfile,
        "RUN if command -v git >/dev/null; then git init -q && git add -A && git -c user.name=rollout -c user.email=rollout@localhost commit -q --allow-empty -m 'base_commit {commit}'; fi"
    )
    .ok();
    for cmd in &ws.install {
        writeln!(dockerfile, "RUN {}", cmd.replace('\n', " \\\n    ")).ok();
    }
    std::fs::write(env.join("Dockerfile"), dockerfile).map_err(io("writing the Dockerfile"))?;

    let toml = format!(
        "version = \"1.0\"\nsource = \"executor archive {batch}\"\n\n[metadata]\nrepo = {repo:?}\nbase_commit = {commit:?}\nlanguage = {lang:?}\n\n[agent]\ntimeout_sec = {agent:?}\n\n[verifier]\ntimeout_sec = {test:?}\n\n[environment]\nbuild_timeout_sec = 1800.0\nworkdir = \"/repo\"\n",
        repo = ws.repo,
        lang = ws.language.clone().unwrap_or_default(),
        agent = opts.agent_timeout_sec.unwrap_or(600.0),
        test = opts.test_timeout_sec.unwrap_or(300.0),
    );
    std::fs::write(task.join("task.toml"), toml).map_err(io("writing task.toml"))?;
    write_tests(src, &task.join("tests"))
}

/// Checks (`tests/*.sh`, else `checks.txt` lines) and the other test files, plus the
/// generated `test.sh` that runs them (none when there is no check).
fn write_tests(src: &Path, tests: &Path) -> Result<(), ExecutorError> {
    let checks_dir = tests.join("checks");
    let files_dir = tests.join("files");
    std::fs::create_dir_all(&checks_dir).map_err(io("creating tests/checks"))?;
    let src_tests = src.join("tests");
    let mut n_checks = 0;
    if src_tests.is_dir() {
        for rel in rollout_core::digest::list_files(&src_tests).map_err(io("listing tests/"))? {
            let from = src_tests.join(&rel);
            let is_check =
                rel.components().count() == 1 && rel.extension().is_some_and(|e| e == "sh");
            let to = if is_check {
                checks_dir.join(&rel)
            } else {
                files_dir.join(&rel)
            };
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(io("creating test directories"))?;
            }
            std::fs::copy(&from, &to).map_err(io(format!("copying {}", from.display())))?;
            if is_check {
                n_checks += 1;
            }
        }
    }
    if n_checks == 0 {
        if let Ok(text) = std::fs::read_to_string(src.join("checks.txt")) {
            for (i, line) in text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .enumerate()
            {
                std::fs::write(
                    checks_dir.join(format!("check-{:03}.sh", i + 1)),
                    format!("#!/bin/bash\n{line}\n"),
                )
                .map_err(io("writing a check"))?;
                n_checks += 1;
            }
        }
    }
    // A task without checks cannot be scored: like a task directory without tests/test.sh, its
    // trial ends task_invalid before anything runs (the seed's `.all()` of nothing scored 1).
    if n_checks > 0 {
        std::fs::write(tests.join("test.sh"), TEST_SH).map_err(io("writing test.sh"))?;
    }
    Ok(())
}

/// Runs every check from the repository; reward 1 only if all pass and there is at least one.
const TEST_SH: &str = r#"#!/bin/bash
# Generated by rollout from an executor archive.
cd /repo || { echo "no /repo"; exit 1; }
if [ -d /tests/files ]; then cp -a /tests/files/. /repo/; fi
total=0
passed=0
for check in /tests/checks/*; do
    [ -f "$check" ] || continue
    total=$((total + 1))
    name=$(basename "$check")
    (cd /repo && bash "$check") > "/logs/verifier/$name.log" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        echo "PASS $name"
    else
        echo "FAIL $name (exit $rc)"
    fi
done
reward=0
if [ "$total" -gt 0 ] && [ "$passed" -eq "$total" ]; then reward=1; fi
printf '{"reward": %s, "checks_passed": %s, "checks_total": %s}\n' "$reward" "$passed" "$total" > /logs/verifier/reward.json
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_come_from_sh_files_else_checks_txt() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("tests/data")).unwrap();
        std::fs::write(src.path().join("tests/test_a.sh"), "exit 0").unwrap();
        std::fs::write(src.path().join("tests/test_x.py"), "print(1)").unwrap();
        std::fs::write(src.path().join("tests/data/in.txt"), "x").unwrap();
        let out = tempfile::tempdir().unwrap();
        write_tests(src.path(), out.path()).unwrap();
        assert!(out.path().join("checks/test_a.sh").is_file());
        assert!(out.path().join("files/test_x.py").is_file());
        assert!(out.path().join("files/data/in.txt").is_file());
        assert!(out.path().join("test.sh").is_file());

        let src = tempfile::tempdir().unwrap();
        std::fs::write(
            src.path().join("checks.txt"),
            "test -f a\n\n# comment\npython3 -m pytest\n",
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        write_tests(src.path(), out.path()).unwrap();
        let mut checks: Vec<_> = std::fs::read_dir(out.path().join("checks"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        checks.sort();
        assert_eq!(checks, ["check-001.sh", "check-002.sh"]);
        assert!(out.path().join("test.sh").is_file());

        // No check at all: no test.sh, so the task is invalid rather than scored.
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("tests")).unwrap();
        std::fs::write(src.path().join("tests/data.txt"), "x").unwrap();
        let out = tempfile::tempdir().unwrap();
        write_tests(src.path(), out.path()).unwrap();
        assert!(!out.path().join("test.sh").exists());
    }

    #[test]
    fn the_generated_verifier_never_rewards_zero_checks() {
        assert!(TEST_SH.contains(r#"[ "$total" -gt 0 ]"#));
    }
}
