//! What a provider (Docker, Kubernetes …) can enforce, and the one check that refuses a task
//! asking for more ([`check_enforceable`]). Every entry point (`rollout run`, `rollout serve`'s
//! `/api/v1/jobs` and `/submit`) reaches it through the runner, per trial, before anything is
//! built or started, so that a task is refused with the same message whichever way it came.

use crate::allowlist::EntryKind;
use crate::task::Task;
use crate::task_config::{network_name, NetworkMode};
use serde::Serialize;
use std::collections::BTreeSet;

/// How a provider can give environments GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "reason")]
pub enum GpuSupport {
    /// No GPUs; the text says why (shown in refusals).
    None(String),
    /// Any number of GPUs of whatever model the host has (`gpu_types` refused).
    AnyModel,
    /// GPUs of a chosen model too.
    Typed,
}

/// Network policies a provider enforces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct NetworkCapabilities {
    /// `network_mode = "public"`.
    pub public: bool,
    /// `network_mode = "no-network"`.
    pub none: bool,
    /// `network_mode = "allowlist"`: which kinds of `allowed_hosts` entries it enforces
    /// (empty: allowlists are refused).
    pub allowlist: BTreeSet<EntryKind>,
    /// Why allowlists are refused (or limited), for the refusal message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowlist_note: Option<String>,
    /// Whether an allowlist is enforced for multi-container (compose) tasks too.
    pub allowlist_compose: bool,
}

/// What a provider can enforce (typed, so that every entry point refuses alike).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Provider name (`docker`), for messages.
    pub provider: String,
    pub network: NetworkCapabilities,
    /// Host paths can be bound into environments.
    pub host_mounts: bool,
    pub gpus: GpuSupport,
    /// A process-count limit is enforced.
    pub pids_limit: bool,
    /// Multi-container tasks (docker-compose services) run.
    pub compose: bool,
    /// A command can run attached (MCP stdio servers inside the environment).
    pub mcp_stdio: bool,
}

impl Capabilities {
    /// A provider that enforces nothing optional (the default of the trait).
    pub fn minimal(provider: &str) -> Self {
        Self {
            provider: provider.to_string(),
            network: NetworkCapabilities {
                public: true,
                ..Default::default()
            },
            host_mounts: false,
            gpus: GpuSupport::None(format!(
                "the {provider} provider cannot give environments GPUs"
            )),
            pids_limit: false,
            compose: false,
            mcp_stdio: false,
        }
    }

    /// Every allowlist entry kind.
    pub fn all_entry_kinds() -> BTreeSet<EntryKind> {
        [
            EntryKind::Hostname,
            EntryKind::WildcardHostname,
            EntryKind::IpAddress,
            EntryKind::CidrRange,
        ]
        .into_iter()
        .collect()
    }
}

/// Why a task cannot run on a provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {task}: {field}: {message}")]
pub struct Refusal {
    /// The task's name.
    pub task: String,
    /// The task.toml key (`environment.network_mode`) or file concerned.
    pub field: String,
    /// What cannot be enforced and what to do.
    pub message: String,
}

/// Refuse `task` if it asks for something `caps` cannot enforce: a network mode (or an
/// allowlist entry kind), GPUs or a GPU model, or compose services. The one refusal every
/// entry point uses; the runner calls it per trial before any image is built (the trial ends
/// `environment_unsupported` with this message). Returns the first problem.
pub fn check_enforceable(task: &Task, caps: &Capabilities) -> Result<(), Refusal> {
    let refuse = |field: &str, message: String| Refusal {
        task: task.name.clone(),
        field: field.into(),
        message,
    };
    let p = &caps.provider;
    let env = &task.config.environment;
    let compose = crate::compose::find(&task.environment_dir());
    if let Some(file) = &compose {
        if !caps.compose {
            return Err(refuse(
                "environment",
                format!(
                    "a multi-container task ({} defines docker-compose services) and the {p} provider does not run compose services; run it with --env docker",
                    file.file_name().unwrap_or_default().to_string_lossy()
                ),
            ));
        }
    }
    let mode_supported = match env.network_mode {
        NetworkMode::Public => caps.network.public,
        NetworkMode::NoNetwork => caps.network.none,
        NetworkMode::Allowlist => !caps.network.allowlist.is_empty(),
    };
    let note = caps
        .network
        .allowlist_note
        .as_deref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    if !mode_supported {
        return Err(refuse(
            "environment.network_mode",
            format!(
                "network_mode = {:?} cannot be enforced by the {p} provider{}; the task would run with a network it did not ask for",
                network_name(env.network_mode),
                if env.network_mode == NetworkMode::Allowlist { note.as_str() } else { "" },
            ),
        ));
    }
    if env.network_mode == NetworkMode::Allowlist {
        let entries = crate::allowlist::parse(&env.allowed_hosts)
            .map_err(|e| refuse("environment.allowed_hosts", e))?;
        if let Some(kind) = entries
            .iter()
            .map(|e| e.kind())
            .find(|k| !caps.network.allowlist.contains(k))
        {
            return Err(refuse(
                "environment.allowed_hosts",
                format!(
                    "the {p} provider does not enforce allowlists of {}{note}",
                    kind.describe()
                ),
            ));
        }
        if compose.is_some() && !caps.network.allowlist_compose {
            return Err(refuse(
                "environment.network_mode",
                format!(
                    "network_mode = \"allowlist\" is not enforced by the {p} provider for multi-container (compose) tasks; use \"public\" or \"no-network\""
                ),
            ));
        }
    }
    if env.gpus > 0 {
        match &caps.gpus {
            GpuSupport::None(why) => {
                return Err(refuse(
                    "environment.gpus",
                    format!("the task needs {} GPU(s): {why}", env.gpus),
                ))
            }
            GpuSupport::AnyModel if !env.gpu_types.is_empty() => {
                return Err(refuse(
                    "environment.gpu_types",
                    format!(
                        "the task accepts only GPU types {} and the {p} provider cannot choose a GPU model",
                        env.gpu_types.join(", ")
                    ),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(toml: &str, compose: bool) -> (tempfile::TempDir, Task) {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        std::fs::create_dir_all(t.join("environment")).unwrap();
        std::fs::write(t.join("task.toml"), toml).unwrap();
        std::fs::write(t.join("instruction.md"), "do it").unwrap();
        std::fs::create_dir_all(t.join("tests")).unwrap();
        std::fs::write(
            t.join("tests/test.sh"),
            "echo 1 > /logs/verifier/reward.txt\n",
        )
        .unwrap();
        std::fs::write(
            t.join("environment/Dockerfile"),
            "FROM debian:bookworm-slim\n",
        )
        .unwrap();
        if compose {
            std::fs::write(
                t.join("environment/docker-compose.yaml"),
                "services:\n  main:\n    build: .\n",
            )
            .unwrap();
        }
        let task = Task::load(&t).unwrap();
        (d, task)
    }

    fn docker_like() -> Capabilities {
        Capabilities {
            network: NetworkCapabilities {
                public: true,
                none: true,
                allowlist: Capabilities::all_entry_kinds(),
                allowlist_note: None,
                allowlist_compose: false,
            },
            compose: true,
            ..Capabilities::minimal("docker")
        }
    }

    #[test]
    fn allowlist_is_refused_where_not_enforced_and_accepted_where_it_is() {
        let (_d, t) = task(
            "[environment]\nnetwork_mode = \"allowlist\"\nallowed_hosts = [\"deb.debian.org\"]\n",
            false,
        );
        let err = check_enforceable(&t, &Capabilities::minimal("kubernetes")).unwrap_err();
        assert_eq!(err.field, "environment.network_mode");
        assert!(err.message.contains("\"allowlist\""), "{err}");
        assert!(err.message.contains("kubernetes"), "{err}");
        assert_eq!(check_enforceable(&t, &docker_like()), Ok(()));
        let mut only_names = docker_like();
        only_names.network.allowlist = [EntryKind::Hostname].into_iter().collect();
        let (_d2, cidr) = task(
            "[environment]\nnetwork_mode = \"allowlist\"\nallowed_hosts = [\"10.0.0.0/8\"]\n",
            false,
        );
        let err = check_enforceable(&cidr, &only_names).unwrap_err();
        assert!(err.message.contains("CIDR"), "{err}");
    }

    #[test]
    fn gpus_and_compose_are_refused_without_support() {
        let (_d, t) = task("[environment]\ngpus = 1\n", false);
        let err = check_enforceable(&t, &docker_like()).unwrap_err();
        assert_eq!(err.field, "environment.gpus");
        let mut gpu = docker_like();
        gpu.gpus = GpuSupport::AnyModel;
        assert_eq!(check_enforceable(&t, &gpu), Ok(()));
        let (_d, c) = task("", true);
        assert_eq!(check_enforceable(&c, &docker_like()), Ok(()));
        let err = check_enforceable(&c, &Capabilities::minimal("kubernetes")).unwrap_err();
        assert!(err.message.contains("compose"), "{err}");
        let (_d, ca) = task(
            "[environment]\nnetwork_mode = \"allowlist\"\nallowed_hosts = [\"pypi.org\"]\n",
            true,
        );
        let err = check_enforceable(&ca, &docker_like()).unwrap_err();
        assert!(err.message.contains("multi-container"), "{err}");
    }
}
