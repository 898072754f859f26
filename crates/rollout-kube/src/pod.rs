//! How one trial becomes one Pod (and, without network, one NetworkPolicy): pure functions, so
//! the mapping can be read and tested without a cluster.

use crate::settings::KubeSettings;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, Pod, PodSpec, ResourceRequirements, SecurityContext,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use rollout_core::labels;
use rollout_core::task_config::NetworkMode;
use rollout_env::docker::DROPPED_CAPABILITIES;
use rollout_env::EnvSpec;
use std::collections::BTreeMap;

/// Label every object rollout creates on a cluster carries (`app.kubernetes.io/managed-by`).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label naming the pod an object belongs to (the NetworkPolicy's selector).
pub const POD_LABEL: &str = "io.rollout.pod";
/// The one container of a trial pod.
pub const CONTAINER: &str = "main";

/// A Kubernetes label value: at most 63 of `[A-Za-z0-9._-]`, starting and ending alphanumeric.
pub fn label_value(v: &str) -> String {
    let cleaned: String = v
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// A pod name (DNS-1123 label): `rollout-<name>-<suffix>`, lowercase, at most 63 characters.
pub fn pod_name(name: &str, suffix: &str) -> String {
    let mut cleaned: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while cleaned.contains("--") {
        cleaned = cleaned.replace("--", "-");
    }
    let room = 63 - "rollout-".len() - 1 - suffix.len();
    let body: String = cleaned.trim_matches('-').chars().take(room).collect();
    let body = body.trim_end_matches('-');
    if body.is_empty() {
        format!("rollout-{suffix}")
    } else {
        format!("rollout-{body}-{suffix}")
    }
}

/// Labels of a trial's objects: the trial's labels (values made label-safe), the managed-by
/// label and the pod's own name. The exact values go into annotations.
pub fn object_labels(spec: &EnvSpec, pod: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), label_value(v)))
        .collect();
    out.insert(MANAGED_BY.into(), "rollout".into());
    out.insert(labels::MANAGED.into(), "true".into());
    out.insert(POD_LABEL.into(), pod.into());
    out
}

/// A Kubernetes quantity of mebibytes.
pub(crate) fn mebibytes(mb: u64) -> Quantity {
    Quantity(format!("{mb}Mi"))
}

/// A Kubernetes CPU quantity in millicores (at least 1m).
pub(crate) fn millicores(cpus: f64) -> Quantity {
    Quantity(format!("{}m", ((cpus * 1000.0).round() as i64).max(1)))
}

/// The pod of a trial: the task image with the keep-alive command as its arguments (the image's
/// ENTRYPOINT is kept, as with Docker), requests = limits from the task's cpus, memory and
/// storage (ephemeral-storage), never restarted, no API token unless a service account is
/// configured, the same dropped capabilities as the Docker provider.
pub fn trial_pod(name: &str, image: &str, spec: &EnvSpec, settings: &KubeSettings) -> Pod {
    let mut resources = BTreeMap::from([
        ("cpu".to_string(), millicores(spec.cpus)),
        ("memory".to_string(), mebibytes(spec.memory_mb)),
    ]);
    if spec.storage_mb > 0 {
        resources.insert("ephemeral-storage".into(), mebibytes(spec.storage_mb));
    }
    if spec.gpus > 0 {
        // NVIDIA's device plugin resource; requests = limits, as for the other resources.
        resources.insert(
            "nvidia.com/gpu".into(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity(spec.gpus.to_string()),
        );
    }
    let container = Container {
        name: CONTAINER.into(),
        image: Some(image.into()),
        args: Some(vec!["sleep".into(), "infinity".into()]),
        env: (!spec.env.is_empty()).then(|| {
            spec.env
                .iter()
                .map(|(k, v)| EnvVar {
                    name: k.clone(),
                    value: Some(v.clone()),
                    ..Default::default()
                })
                .collect()
        }),
        working_dir: spec.workdir.clone(),
        resources: Some(ResourceRequirements {
            limits: Some(resources.clone()),
            requests: Some(resources),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(DROPPED_CAPABILITIES.iter().map(|c| c.to_string()).collect()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        image_pull_policy: Some("IfNotPresent".into()),
        ..Default::default()
    };
    let mut annotations: BTreeMap<String, String> = spec.labels.clone();
    annotations.insert("io.rollout.name".into(), spec.name.clone());
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: None,
            labels: Some(object_labels(spec, name)),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".into()),
            termination_grace_period_seconds: Some(0),
            enable_service_links: Some(false),
            automount_service_account_token: Some(settings.service_account.is_some()),
            service_account_name: settings.service_account.clone(),
            node_selector: (!settings.node_selector.is_empty())
                .then(|| settings.node_selector.clone()),
            tolerations: (!settings.tolerations.is_empty()).then(|| settings.tolerations.clone()),
            runtime_class_name: settings.runtime_class.clone(),
            ..Default::default()
        }),
        status: None,
    }
}

/// For `network_mode = "no-network"`: a policy selecting only this pod that allows no ingress
/// and no egress. Enforced only by a CNI plugin that implements NetworkPolicy.
pub fn deny_all_policy(pod: &str, spec: &EnvSpec) -> Option<NetworkPolicy> {
    if spec.network != NetworkMode::NoNetwork {
        return None;
    }
    Some(NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(pod.into()),
            labels: Some(object_labels(spec, pod)),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(POD_LABEL.to_string(), pod.to_string())])),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: None,
            egress: None,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(network: NetworkMode) -> EnvSpec {
        EnvSpec {
            name: "hello-world__oracle__1".into(),
            labels: BTreeMap::from([
                (labels::JOB.to_string(), "5d3c-job".to_string()),
                (labels::HOST.to_string(), "My Host!".to_string()),
            ]),
            cpus: 1.5,
            memory_mb: 512,
            storage_mb: 1024,
            pids_limit: 4096,
            network,
            allowed_hosts: Vec::new(),
            env: BTreeMap::from([("A".to_string(), "b".to_string())]),
            workdir: Some("/app".into()),
            mounts: Vec::new(),
            gpus: 0,
        }
    }

    #[test]
    fn names_and_label_values_are_valid() {
        let n = pod_name("Hello_World__oracle__1", "0a1b2c3d");
        assert_eq!(n, "rollout-hello-world-oracle-1-0a1b2c3d");
        let long = pod_name(&"x".repeat(200), "0a1b2c3d");
        assert_eq!(long.len(), 63);
        assert_eq!(pod_name("___", "ff"), "rollout-ff");
        assert_eq!(label_value("My Host!"), "My-Host");
        assert_eq!(label_value(&"a".repeat(100)).len(), 63);
    }

    #[test]
    fn the_pod_carries_the_task_resources_and_labels() {
        let settings = KubeSettings {
            node_selector: BTreeMap::from([("pool".to_string(), "cpu".to_string())]),
            runtime_class: Some("gvisor".into()),
            ..Default::default()
        };
        let pod = trial_pod("p", "reg/img:1", &spec(NetworkMode::Public), &settings);
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["cpu"].0, "1500m");
        assert_eq!(limits["memory"].0, "512Mi");
        assert_eq!(limits["ephemeral-storage"].0, "1024Mi");
        assert_eq!(c.args.as_ref().unwrap(), &["sleep", "infinity"]);
        assert!(c.command.is_none(), "the image's ENTRYPOINT is kept");
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[labels::JOB], "5d3c-job");
        assert_eq!(labels[labels::HOST], "My-Host");
        assert_eq!(labels[MANAGED_BY], "rollout");
        let annotations = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[labels::HOST], "My Host!");
        let ps = pod.spec.as_ref().unwrap();
        assert_eq!(ps.restart_policy.as_deref(), Some("Never"));
        assert_eq!(ps.automount_service_account_token, Some(false));
        assert_eq!(ps.node_selector.as_ref().unwrap()["pool"], "cpu");
        assert_eq!(ps.runtime_class_name.as_deref(), Some("gvisor"));
    }

    #[test]
    fn no_network_means_a_deny_all_policy() {
        assert!(deny_all_policy("p", &spec(NetworkMode::Public)).is_none());
        let np = deny_all_policy("p", &spec(NetworkMode::NoNetwork)).unwrap();
        let s = np.spec.unwrap();
        assert_eq!(
            s.policy_types.unwrap(),
            vec!["Ingress".to_string(), "Egress".to_string()]
        );
        assert!(s.egress.is_none() && s.ingress.is_none());
        assert_eq!(
            s.pod_selector.unwrap().match_labels.unwrap()[POD_LABEL],
            "p"
        );
    }
}
