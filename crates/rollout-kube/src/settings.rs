//! The `environment:` keys of a job that choose and shape the cluster, with their environment
//! variable fallbacks.

use k8s_openapi::api::core::v1::Toleration;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Environment variable naming the namespace when the job file does not.
pub const NAMESPACE_VAR: &str = "ROLLOUT_K8S_NAMESPACE";
/// Environment variable naming the kubeconfig context when the job file does not.
pub const CONTEXT_VAR: &str = "ROLLOUT_K8S_CONTEXT";
/// Environment variable naming the image registry when the job file does not.
pub const REGISTRY_VAR: &str = "ROLLOUT_K8S_IMAGE_REGISTRY";

/// Default bound on how long a pod may take to be scheduled, pull its image and start.
pub const DEFAULT_POD_START_TIMEOUT: Duration = Duration::from_secs(300);
/// Default bound on concurrent pod creations (and, separately, deletions).
pub const DEFAULT_POD_OPERATIONS: usize = 8;

/// Where and how trials run on a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeSettings {
    /// Namespace of the pods; default the context's namespace, else `default`.
    pub namespace: Option<String>,
    /// kubeconfig context; default the current context.
    pub context: Option<String>,
    /// Registry that images built from Dockerfiles are pushed to (`host[:port][/path]`).
    pub image_registry: Option<String>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    pub runtime_class: Option<String>,
    /// Service account of the pods; when unset, pods get no API token at all.
    pub service_account: Option<String>,
    /// How long a pod may take to start before the trial fails with its events.
    pub pod_start_timeout: Duration,
    /// Concurrent pod creations (and, separately, deletions).
    pub pod_operations: usize,
}

impl Default for KubeSettings {
    fn default() -> Self {
        Self {
            namespace: None,
            context: None,
            image_registry: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            runtime_class: None,
            service_account: None,
            pod_start_timeout: DEFAULT_POD_START_TIMEOUT,
            pod_operations: DEFAULT_POD_OPERATIONS,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    namespace: Option<String>,
    context: Option<String>,
    image_registry: Option<String>,
    #[serde(default)]
    node_selector: BTreeMap<String, String>,
    #[serde(default)]
    tolerations: Vec<Toleration>,
    runtime_class: Option<String>,
    service_account: Option<String>,
    pod_start_timeout_sec: Option<f64>,
    pod_operations: Option<usize>,
}

impl KubeSettings {
    /// Read the provider keys of a job's `environment:` block (the keys rollout-core does not
    /// know), then fill what is missing from `ROLLOUT_K8S_NAMESPACE`, `ROLLOUT_K8S_CONTEXT` and
    /// `ROLLOUT_K8S_IMAGE_REGISTRY`.
    pub fn from_job(extra: &BTreeMap<String, serde_json::Value>) -> Result<Self, String> {
        let object: serde_json::Map<String, serde_json::Value> =
            extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let raw: Raw = serde_json::from_value(serde_json::Value::Object(object)).map_err(|e| {
            format!(
                "environment (type kubernetes): {e}; the keys are namespace, context, image_registry, \
                 node_selector, tolerations, runtime_class, service_account, pod_start_timeout_sec, pod_operations"
            )
        })?;
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let pod_start_timeout = match raw.pod_start_timeout_sec {
            Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s),
            Some(s) => {
                return Err(format!(
                "environment.pod_start_timeout_sec must be a positive number of seconds, not {s}"
            ))
            }
            None => DEFAULT_POD_START_TIMEOUT,
        };
        Ok(Self {
            namespace: raw.namespace.or_else(|| var(NAMESPACE_VAR)),
            context: raw.context.or_else(|| var(CONTEXT_VAR)),
            image_registry: raw
                .image_registry
                .or_else(|| var(REGISTRY_VAR))
                .map(|r| r.trim_end_matches('/').to_string()),
            node_selector: raw.node_selector,
            tolerations: raw.tolerations,
            runtime_class: raw.runtime_class,
            service_account: raw.service_account,
            pod_start_timeout,
            pod_operations: raw.pod_operations.unwrap_or(DEFAULT_POD_OPERATIONS).max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn extra(v: serde_json::Value) -> BTreeMap<String, serde_json::Value> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn reads_every_key() {
        let s = KubeSettings::from_job(&extra(json!({
            "namespace": "evals",
            "context": "prod",
            "image_registry": "registry.example:5000/team/",
            "node_selector": {"pool": "cpu"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "evals", "effect": "NoSchedule"}],
            "runtime_class": "gvisor",
            "service_account": "rollout-trial",
            "pod_start_timeout_sec": 30,
            "pod_operations": 3
        })))
        .unwrap();
        assert_eq!(s.namespace.as_deref(), Some("evals"));
        assert_eq!(s.context.as_deref(), Some("prod"));
        assert_eq!(
            s.image_registry.as_deref(),
            Some("registry.example:5000/team")
        );
        assert_eq!(s.node_selector["pool"], "cpu");
        assert_eq!(s.tolerations[0].key.as_deref(), Some("dedicated"));
        assert_eq!(s.tolerations[0].effect.as_deref(), Some("NoSchedule"));
        assert_eq!(s.runtime_class.as_deref(), Some("gvisor"));
        assert_eq!(s.service_account.as_deref(), Some("rollout-trial"));
        assert_eq!(s.pod_start_timeout, Duration::from_secs(30));
        assert_eq!(s.pod_operations, 3);
    }

    #[test]
    fn a_misspelt_key_is_named() {
        let e = KubeSettings::from_job(&extra(json!({"namespce": "x"}))).unwrap_err();
        assert!(e.contains("namespce"), "{e}");
        assert!(e.contains("namespace, context"), "{e}");
    }

    #[test]
    fn a_bad_timeout_is_refused() {
        let e = KubeSettings::from_job(&extra(json!({"pod_start_timeout_sec": -1}))).unwrap_err();
        assert!(e.contains("pod_start_timeout_sec"), "{e}");
    }
}
