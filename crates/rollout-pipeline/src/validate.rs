//! `rollout pipeline validate`: everything that can be checked without running the contract —
//! the schema, confinement of paths, the security regexes, that every script a command runs
//! exists and passes `bash -n`, and which commands the policy would block.

use crate::exec::{self, CmdSpec};
use crate::security::{Policy, Unattended};
use crate::spec::{confine, ActionsSpec, BootstrapSpec, PipelineSpec, Stage, FSM_DIR};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The outcome of a validation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ValidateReport {
    pub ok: bool,
    /// What must be fixed, each naming its file and key.
    pub problems: Vec<String>,
    /// What is suspicious but allowed.
    pub warnings: Vec<String>,
    /// The stages the contract defines, in run order.
    pub stages: Vec<String>,
    /// Scripts checked with `bash -n`.
    pub scripts: Vec<String>,
}

/// Problems found without touching anything but the file system: paths leaving the repository,
/// invalid security regexes, non-positive limits.
pub fn static_problems(repo: &Path, spec: &PipelineSpec) -> Vec<String> {
    let mut out = Vec::new();
    for (key, path) in spec.paths() {
        if let Err(e) = confine(repo, &path) {
            out.push(format!("pipeline.yml: {key}: {e}"));
        }
    }
    if let Err(e) = Policy::new(&spec.security, Unattended::Strict) {
        out.push(format!("pipeline.yml: {e}"));
    }
    for (k, v) in [
        ("security.max_cmd_seconds", spec.security.max_cmd_seconds),
        (
            "security.max_total_seconds",
            spec.security.max_total_seconds,
        ),
    ] {
        if v.is_some_and(|v| v <= 0.0) {
            out.push(format!("pipeline.yml: {k} must be positive"));
        }
    }
    for s in spec.stages() {
        if s.timeout_seconds.is_some_and(|v| v <= 0.0) {
            out.push(format!(
                "pipeline.yml: {}: timeout_seconds must be positive",
                s.name
            ));
        }
    }
    out
}

async fn bash_n(path: &Path, repo: &Path) -> Result<(), String> {
    let cmd = format!(
        "bash -n {}",
        rollout_core::task_config::shell_quote(&path.display().to_string())
    );
    let out = exec::run(
        &CmdSpec {
            cmd: &cmd,
            workdir: repo,
            env: &[],
            timeout: Duration::from_secs(20),
            inherit_stdin: false,
            output_cap: 8 * 1024,
        },
        &CancellationToken::new(),
    )
    .await
    .map_err(|e| format!("cannot run bash -n: {e}"))?;
    if out.rc == 0 {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Validate the contract of `repo` without executing it.
pub async fn validate(repo: &Path) -> ValidateReport {
    let mut r = ValidateReport::default();
    let spec = match PipelineSpec::load(repo) {
        Ok(s) => Some(s),
        Err(e) => {
            r.problems.push(e.to_string());
            None
        }
    };
    let bootstrap = BootstrapSpec::load(repo).unwrap_or_else(|e| {
        r.problems.push(e.to_string());
        None
    });
    if let Err(e) = ActionsSpec::load(repo) {
        r.problems.push(e.to_string());
    }
    let mut stages: Vec<Stage> = bootstrap.iter().map(BootstrapSpec::stage).collect();
    if let Some(spec) = &spec {
        r.problems.extend(static_problems(repo, spec));
        stages.extend(spec.stages());
        stages.extend(spec.teardown().map(|(s, _)| s));
        if spec.stages().iter().all(|s| s.cmds.is_empty()) {
            r.warnings
                .push("pipeline.yml: no stage has a command: a run verifies nothing".into());
        }
        // With an invalid list (already reported), still check the built-in rules.
        let policy = Policy::new(&spec.security, Unattended::Strict)
            .or_else(|_| {
                let builtin = crate::spec::SecuritySection {
                    mode: spec.security.mode,
                    ..Default::default()
                };
                Policy::new(&builtin, Unattended::Strict)
            })
            .ok();
        let mut seen = std::collections::BTreeSet::new();
        for s in &stages {
            r.stages.push(s.name.as_str().into());
            let workdir = s
                .workdir
                .as_deref()
                .and_then(|w| confine(repo, w).ok())
                .unwrap_or_else(|| repo.to_path_buf());
            for (i, c) in s.cmds.iter().enumerate() {
                if let Some(p) = &policy {
                    if let Err(b) = p.check(&c.cmd, &workdir, s.interactive) {
                        let msg = format!("{} command {}: would be {b}", s.name, i + 1);
                        if s.interactive {
                            r.warnings
                                .push(format!("{msg} (run with --unattended guided)"));
                        } else {
                            r.problems.push(msg);
                        }
                    }
                }
                for script in crate::security::scripts_in(&c.cmd) {
                    let path = workdir.join(&script);
                    if !path.is_file() {
                        r.problems.push(format!(
                            "{} command {}: script {script} does not exist (in {})",
                            s.name,
                            i + 1,
                            workdir.display()
                        ));
                    } else if script.ends_with(".sh") || !script.contains('.') {
                        seen.insert(path);
                    }
                }
            }
        }
        let mut stage_scripts = Vec::new();
        if let Ok(rd) = std::fs::read_dir(repo.join(FSM_DIR).join("stages")) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "sh") {
                    stage_scripts.push(e.path());
                }
            }
        }
        seen.extend(stage_scripts);
        for path in seen {
            let shown = path
                .strip_prefix(repo)
                .unwrap_or(&path)
                .display()
                .to_string();
            if let Err(e) = bash_n(&path, repo).await {
                r.problems.push(format!("{shown}: bash -n: {e}"));
            }
            r.scripts.push(shown);
        }
    }
    r.ok = r.problems.is_empty();
    r
}
