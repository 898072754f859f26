//! The contract files: `pipeline.yml` v1, `.aider_fsm/bootstrap.yml` and `.aider_fsm/actions.yml`,
//! parsed strictly (an unknown key is an error naming it and its line) and turned into the stages
//! the runner executes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `pipeline.yml` at the repository root.
pub const PIPELINE_FILE: &str = "pipeline.yml";
/// The contract workspace inside the repository.
pub const FSM_DIR: &str = ".aider_fsm";
/// Optional environment preparation, run before every stage.
pub const BOOTSTRAP_FILE: &str = ".aider_fsm/bootstrap.yml";
/// Optional one-shot actions, applied then removed.
pub const ACTIONS_FILE: &str = ".aider_fsm/actions.yml";
/// What deploy setup must write.
pub const RUNTIME_ENV_FILE: &str = ".aider_fsm/runtime_env.json";
/// What rollout must write.
pub const ROLLOUT_FILE: &str = ".aider_fsm/rollout.json";
/// Default metrics file of evaluation and benchmark.
pub const METRICS_FILE: &str = ".aider_fsm/metrics.json";
/// Default evidence root (`<out_dir>/<run_id>/`).
pub const ARTIFACTS_DIR: &str = ".aider_fsm/artifacts";

/// Default per-command limit when neither the command, its section nor `security` sets one.
pub const DEFAULT_CMD_SECONDS: f64 = 1800.0;

/// A contract file that cannot be read or is not valid.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ContractError {
    #[error("{path}: cannot read it: {message}")]
    Read { path: String, message: String },
    #[error("{path}: {message}\n  hint: see docs/pipeline.md for the pipeline.yml v1 keys")]
    Parse { path: String, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: String,
        field: String,
        message: String,
    },
}

/// One command: a string, or a mapping with its own limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CmdEntry {
    Plain(String),
    Detailed(DetailedCmd),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetailedCmd {
    pub cmd: String,
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
    #[serde(default)]
    pub retries: Option<u32>,
}

impl CmdEntry {
    pub fn text(&self) -> &str {
        match self {
            CmdEntry::Plain(s) => s,
            CmdEntry::Detailed(d) => &d.cmd,
        }
    }
}

/// `security:`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySection {
    /// `safe` (default) or `system`.
    #[serde(default)]
    pub mode: SecurityMode,
    #[serde(default)]
    pub allowlist: Vec<String>,
    #[serde(default)]
    pub denylist: Vec<String>,
    #[serde(default)]
    pub max_cmd_seconds: Option<f64>,
    #[serde(default)]
    pub max_total_seconds: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityMode {
    #[default]
    Safe,
    System,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeardownPolicy {
    #[default]
    Always,
    OnSuccess,
    OnFailure,
    Never,
}

macro_rules! section {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fm])* #[serde(default)] pub $f: $t,)*
            /// Per-command limit for this section's commands.
            #[serde(default)]
            pub timeout_seconds: Option<f64>,
            /// Extra attempts of a failing command.
            #[serde(default)]
            pub retries: Option<u32>,
            /// Variables for this section's commands (`${VAR}`, `$VAR` expanded from the host).
            #[serde(default)]
            pub env: BTreeMap<String, String>,
            /// Working directory, relative to the repository root (must stay inside it).
            #[serde(default)]
            pub workdir: Option<String>,
        }
    };
}

section!(
    /// `tests:`.
    TestsSection { cmd: Option<CmdEntry>, cmds: Vec<CmdEntry> }
);
section!(
    /// `auth:`.
    AuthSection { cmd: Option<CmdEntry>, cmds: Vec<CmdEntry>, steps: Vec<CmdEntry>, interactive: bool }
);
section!(
    /// `deploy:`.
    DeploySection {
        setup_cmd: Option<CmdEntry>, setup_cmds: Vec<CmdEntry>,
        health_cmd: Option<CmdEntry>, health_cmds: Vec<CmdEntry>,
        teardown_cmd: Option<CmdEntry>, teardown_cmds: Vec<CmdEntry>,
        teardown_policy: TeardownPolicy,
        /// Accepted for compatibility with the seed's contracts; rollout does not use it.
        kubectl_dump: Option<serde_json::Value>,
    }
);
section!(
    /// `rollout:`.
    RolloutSection { run_cmd: Option<CmdEntry>, run_cmds: Vec<CmdEntry>, cmd: Option<CmdEntry>, cmds: Vec<CmdEntry> }
);
section!(
    /// `evaluation:` and `benchmark:`.
    MetricsSection {
        run_cmd: Option<CmdEntry>, run_cmds: Vec<CmdEntry>, cmd: Option<CmdEntry>, cmds: Vec<CmdEntry>,
        metrics_path: Option<String>,
        required_keys: Vec<String>,
    }
);

/// `artifacts:`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsSection {
    #[serde(default)]
    pub out_dir: Option<String>,
}

/// `pipeline.yml` v1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    pub version: u32,
    #[serde(default)]
    pub security: SecuritySection,
    #[serde(default)]
    pub auth: Option<AuthSection>,
    #[serde(default)]
    pub tests: Option<TestsSection>,
    #[serde(default)]
    pub deploy: Option<DeploySection>,
    #[serde(default)]
    pub rollout: Option<RolloutSection>,
    #[serde(default)]
    pub evaluation: Option<MetricsSection>,
    #[serde(default)]
    pub benchmark: Option<MetricsSection>,
    #[serde(default)]
    pub artifacts: ArtifactsSection,
}

/// `.aider_fsm/bootstrap.yml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapSpec {
    pub version: u32,
    #[serde(default)]
    pub cmds: Vec<CmdEntry>,
    #[serde(default)]
    pub steps: Vec<CmdEntry>,
    /// Applied to bootstrap and to every later stage.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
    #[serde(default)]
    pub retries: Option<u32>,
}

/// `.aider_fsm/actions.yml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsSpec {
    pub version: u32,
    #[serde(default)]
    pub actions: Vec<Action>,
}

/// One action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    #[serde(default)]
    pub id: Option<String>,
    pub kind: ActionKind,
    #[serde(default)]
    pub cmd: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
    #[serde(default)]
    pub retries: Option<u32>,
    /// Informational, kept in the evidence.
    #[serde(default)]
    pub risk_level: Option<String>,
    #[serde(default)]
    pub rationale: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    RunCmd,
    WriteFile,
}

/// The stages, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageName {
    Bootstrap,
    Actions,
    Auth,
    Tests,
    DeploySetup,
    DeployHealth,
    Rollout,
    Evaluation,
    Benchmark,
    DeployTeardown,
}

impl StageName {
    pub fn as_str(self) -> &'static str {
        match self {
            StageName::Bootstrap => "bootstrap",
            StageName::Actions => "actions",
            StageName::Auth => "auth",
            StageName::Tests => "tests",
            StageName::DeploySetup => "deploy_setup",
            StageName::DeployHealth => "deploy_health",
            StageName::Rollout => "rollout",
            StageName::Evaluation => "evaluation",
            StageName::Benchmark => "benchmark",
            StageName::DeployTeardown => "deploy_teardown",
        }
    }

    /// The contract stages `--stages` can select (deploy covers setup, health and teardown).
    pub const SELECTABLE: [&'static str; 6] = [
        "auth",
        "tests",
        "deploy",
        "rollout",
        "evaluation",
        "benchmark",
    ];

    /// Which `--stages` name selects this stage.
    pub fn selector(self) -> &'static str {
        match self {
            StageName::DeploySetup | StageName::DeployHealth | StageName::DeployTeardown => {
                "deploy"
            }
            other => other.as_str(),
        }
    }
}

impl std::fmt::Display for StageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One command of a stage, with its limits resolved against the section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageCmd {
    pub cmd: String,
    /// The command's own limit (the runner also applies the section's and `security`'s).
    pub timeout_seconds: Option<f64>,
    pub retries: u32,
}

/// A stage ready to run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    pub name: StageName,
    pub cmds: Vec<StageCmd>,
    /// The section's per-command limit.
    pub timeout_seconds: Option<f64>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    /// Commands that may prompt (`auth.interactive`).
    pub interactive: bool,
    /// Metrics file (evaluation, benchmark).
    pub metrics_path: Option<String>,
    pub required_keys: Vec<String>,
}

fn cmds(one: &[&Option<CmdEntry>], many: &[&Vec<CmdEntry>], retries: Option<u32>) -> Vec<StageCmd> {
    one.iter()
        .filter_map(|c| c.as_ref())
        .chain(many.iter().flat_map(|v| v.iter()))
        .map(|c| match c {
            CmdEntry::Plain(s) => StageCmd {
                cmd: s.clone(),
                timeout_seconds: None,
                retries: retries.unwrap_or(0),
            },
            CmdEntry::Detailed(d) => StageCmd {
                cmd: d.cmd.clone(),
                timeout_seconds: d.timeout_seconds,
                retries: d.retries.or(retries).unwrap_or(0),
            },
        })
        .collect()
}

macro_rules! stage {
    ($name:expr, $sec:expr, $cmds:expr) => {
        Stage {
            name: $name,
            cmds: $cmds,
            timeout_seconds: $sec.timeout_seconds,
            env: $sec.env.clone(),
            workdir: $sec.workdir.clone(),
            interactive: false,
            metrics_path: None,
            required_keys: Vec::new(),
        }
    };
}

impl PipelineSpec {
    /// Parse `pipeline.yml` text; `path` names the file in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, ContractError> {
        let spec: PipelineSpec = parse_yaml(text, path)?;
        if spec.version != 1 {
            return Err(ContractError::Invalid {
                path: path.into(),
                field: "version".into(),
                message: format!("is {}; this rollout reads version 1", spec.version),
            });
        }
        Ok(spec)
    }

    /// Read `<repo>/pipeline.yml`.
    pub fn load(repo: &Path) -> Result<Self, ContractError> {
        let path = repo.join(PIPELINE_FILE);
        let text = read(&path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The contract stages present in the file, in run order (teardown separately).
    pub fn stages(&self) -> Vec<Stage> {
        let mut out = Vec::new();
        if let Some(a) = &self.auth {
            let mut s = stage!(
                StageName::Auth,
                a,
                cmds(&[&a.cmd], &[&a.cmds, &a.steps], a.retries)
            );
            s.interactive = a.interactive;
            out.push(s);
        }
        if let Some(t) = &self.tests {
            out.push(stage!(
                StageName::Tests,
                t,
                cmds(&[&t.cmd], &[&t.cmds], t.retries)
            ));
        }
        if let Some(d) = &self.deploy {
            out.push(stage!(
                StageName::DeploySetup,
                d,
                cmds(&[&d.setup_cmd], &[&d.setup_cmds], d.retries)
            ));
            out.push(stage!(
                StageName::DeployHealth,
                d,
                cmds(&[&d.health_cmd], &[&d.health_cmds], d.retries)
            ));
        }
        if let Some(r) = &self.rollout {
            out.push(stage!(
                StageName::Rollout,
                r,
                cmds(&[&r.run_cmd, &r.cmd], &[&r.run_cmds, &r.cmds], r.retries)
            ));
        }
        for (name, sec) in [
            (StageName::Evaluation, &self.evaluation),
            (StageName::Benchmark, &self.benchmark),
        ] {
            if let Some(m) = sec {
                let mut s = stage!(
                    name,
                    m,
                    cmds(&[&m.run_cmd, &m.cmd], &[&m.run_cmds, &m.cmds], m.retries)
                );
                s.metrics_path = Some(
                    m.metrics_path
                        .clone()
                        .unwrap_or_else(|| METRICS_FILE.to_string()),
                );
                s.required_keys = m.required_keys.clone();
                out.push(s);
            }
        }
        out
    }

    /// The teardown stage, when deploy has teardown commands.
    pub fn teardown(&self) -> Option<(Stage, TeardownPolicy)> {
        let d = self.deploy.as_ref()?;
        let c = cmds(&[&d.teardown_cmd], &[&d.teardown_cmds], d.retries);
        if c.is_empty() {
            return None;
        }
        Some((stage!(StageName::DeployTeardown, d, c), d.teardown_policy))
    }

    /// Every workdir and path the contract names, with the key that names it (for confinement).
    pub fn paths(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut push = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                out.push((k.to_string(), v.clone()));
            }
        };
        push(
            "auth.workdir",
            &self.auth.as_ref().and_then(|s| s.workdir.clone()),
        );
        push(
            "tests.workdir",
            &self.tests.as_ref().and_then(|s| s.workdir.clone()),
        );
        push(
            "deploy.workdir",
            &self.deploy.as_ref().and_then(|s| s.workdir.clone()),
        );
        push(
            "rollout.workdir",
            &self.rollout.as_ref().and_then(|s| s.workdir.clone()),
        );
        for (n, s) in [
            ("evaluation", &self.evaluation),
            ("benchmark", &self.benchmark),
        ] {
            push(
                &format!("{n}.workdir"),
                &s.as_ref().and_then(|s| s.workdir.clone()),
            );
            push(
                &format!("{n}.metrics_path"),
                &s.as_ref().and_then(|s| s.metrics_path.clone()),
            );
        }
        push("artifacts.out_dir", &self.artifacts.out_dir);
        out
    }
}

impl BootstrapSpec {
    /// Read `<repo>/.aider_fsm/bootstrap.yml` when present.
    pub fn load(repo: &Path) -> Result<Option<Self>, ContractError> {
        let path = repo.join(BOOTSTRAP_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let spec: BootstrapSpec = parse_yaml(&read(&path)?, &path.display().to_string())?;
        check_version(spec.version, &path)?;
        Ok(Some(spec))
    }

    pub fn stage(&self) -> Stage {
        Stage {
            name: StageName::Bootstrap,
            cmds: cmds(&[], &[&self.cmds, &self.steps], self.retries),
            timeout_seconds: self.timeout_seconds,
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            interactive: false,
            metrics_path: None,
            required_keys: Vec::new(),
        }
    }
}

impl ActionsSpec {
    /// Read `<repo>/.aider_fsm/actions.yml` when present.
    pub fn load(repo: &Path) -> Result<Option<Self>, ContractError> {
        let path = repo.join(ACTIONS_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let spec: ActionsSpec = parse_yaml(&read(&path)?, &path.display().to_string())?;
        check_version(spec.version, &path)?;
        for (i, a) in spec.actions.iter().enumerate() {
            let need = match a.kind {
                ActionKind::RunCmd if a.cmd.is_none() => Some("cmd"),
                ActionKind::WriteFile if a.path.is_none() => Some("path"),
                ActionKind::WriteFile if a.content.is_none() => Some("content"),
                _ => None,
            };
            if let Some(field) = need {
                return Err(ContractError::Invalid {
                    path: path.display().to_string(),
                    field: format!("actions[{i}]"),
                    message: format!("a {:?} action needs `{field}`", a.kind),
                });
            }
        }
        Ok(Some(spec))
    }
}

fn check_version(v: u32, path: &Path) -> Result<(), ContractError> {
    if v != 1 {
        return Err(ContractError::Invalid {
            path: path.display().to_string(),
            field: "version".into(),
            message: format!("is {v}; this rollout reads version 1"),
        });
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, ContractError> {
    std::fs::read_to_string(path).map_err(|e| ContractError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, path: &str) -> Result<T, ContractError> {
    serde_norway::from_str(text).map_err(|e| ContractError::Parse {
        path: path.into(),
        message: e.to_string(),
    })
}

/// Resolve `rel` against `repo` and refuse anything that leaves the repository (`..`, absolute
/// paths elsewhere, symlinks pointing out). The path need not exist yet: its deepest existing
/// ancestor is canonicalised.
pub fn confine(repo: &Path, rel: &str) -> Result<PathBuf, String> {
    let root = repo
        .canonicalize()
        .map_err(|e| format!("cannot resolve the repository {}: {e}", repo.display()))?;
    let joined = root.join(rel);
    let mut existing = joined.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(p), Some(n)) => {
                rest.push(n.to_owned());
                existing = p.to_path_buf();
            }
            _ => break,
        }
    }
    let mut resolved = existing
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", existing.display()))?;
    for part in rest.iter().rev() {
        if part == ".." {
            resolved.pop();
        } else if part != "." {
            resolved.push(part);
        }
    }
    if resolved.starts_with(&root) {
        Ok(resolved)
    } else {
        Err(format!(
            "{rel:?} resolves to {} outside the repository {}",
            resolved.display(),
            root.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_contract_parses_into_ordered_stages() {
        let y = r#"
version: 1
security: {mode: safe, max_cmd_seconds: 60}
tests: {cmds: ["true"], timeout_seconds: 10}
deploy:
  setup_cmds: [bash .aider_fsm/stages/deploy_setup.sh]
  health_cmd: {cmd: "true", timeout_seconds: 5, retries: 2}
  teardown_cmds: ["true"]
  teardown_policy: on_failure
rollout: {run_cmd: "bash rollout.sh"}
evaluation: {run_cmds: ["bash eval.sh"], required_keys: [score]}
auth: {steps: ["echo login"]}
"#;
        let p = PipelineSpec::parse(y, "pipeline.yml").unwrap();
        let names: Vec<_> = p.stages().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "auth",
                "tests",
                "deploy_setup",
                "deploy_health",
                "rollout",
                "evaluation"
            ]
        );
        let health = &p.stages()[3];
        assert_eq!(health.cmds[0].retries, 2);
        assert_eq!(health.cmds[0].timeout_seconds, Some(5.0));
        let eval = p.stages().pop().unwrap();
        assert_eq!(eval.metrics_path.as_deref(), Some(METRICS_FILE));
        assert_eq!(p.teardown().unwrap().1, TeardownPolicy::OnFailure);
    }

    #[test]
    fn unknown_keys_and_versions_are_errors_naming_them() {
        let e = PipelineSpec::parse("version: 1\ntests: {cmdz: [x]}\n", "p.yml").unwrap_err();
        assert!(e.to_string().contains("cmdz"), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = PipelineSpec::parse("version: 2\n", "p.yml").unwrap_err();
        assert!(e.to_string().contains("version"), "{e}");
    }

    #[test]
    fn confinement_refuses_escapes() {
        let d = tempfile::tempdir().unwrap();
        assert!(confine(d.path(), "sub/dir").is_ok());
        assert!(confine(d.path(), ".").is_ok());
        assert!(confine(d.path(), "../x").is_err());
        assert!(confine(d.path(), "a/../../x").is_err());
        assert!(confine(d.path(), "/etc").is_err());
        std::os::unix::fs::symlink("/tmp", d.path().join("link")).unwrap();
        assert!(confine(d.path(), "link/x").is_err());
    }
}
