//! `rollout gc --env kubernetes`: pods (and network policies) rollout left in the namespace
//! whose rollout process is gone.

use crate::{bounded, pod, KubeProvider};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams};
use rollout_core::labels;
use rollout_env::gc::GcItem;
use rollout_env::EnvError;
use std::collections::BTreeSet;

impl KubeProvider {
    /// Find (and unless `dry_run`, delete) the pods of rollout processes that are gone: the
    /// owner recorded in the pod's annotations (pid and host) no longer runs on this host. Pods
    /// of other hosts are left alone (their owner cannot be checked from here). Network policies
    /// whose pod no longer exists go too.
    pub async fn gc(&self, this_host: &str, dry_run: bool) -> Result<Vec<GcItem>, EnvError> {
        let managed = ListParams::default().labels(&format!("{}=rollout", pod::MANAGED_BY));
        let pods: Api<Pod> = Api::namespaced(self.client().clone(), self.namespace());
        let list = bounded("listing rollout's pods", pods.list(&managed)).await?;
        let mut items = Vec::new();
        let mut alive = BTreeSet::new();
        for p in list.items {
            let name = p.metadata.name.clone().unwrap_or_default();
            let notes = p.metadata.annotations.clone().unwrap_or_default();
            let pid: Option<u32> = notes.get(labels::PID).and_then(|v| v.parse().ok());
            let host = notes.get(labels::HOST).cloned().unwrap_or_default();
            let orphan = match pid {
                Some(pid) => !rollout_core::owner_alive(pid, &host, this_host),
                None => true,
            };
            if !orphan {
                alive.insert(name);
                continue;
            }
            let mut item = GcItem {
                kind: "pod",
                id: p.metadata.uid.clone().unwrap_or_default(),
                name: name.clone(),
                job: notes.get(labels::JOB).cloned(),
                reason: format!(
                    "rollout process {} on {host} is gone",
                    pid.map_or("?".into(), |p| p.to_string())
                ),
                removed: false,
                error: None,
            };
            if !dry_run {
                match self.delete_pod(&name).await {
                    Ok(()) => item.removed = true,
                    Err(e) => item.error = Some(e.to_string()),
                }
            }
            items.push(item);
        }
        let policies: Api<NetworkPolicy> = Api::namespaced(self.client().clone(), self.namespace());
        if let Ok(list) = bounded(
            "listing rollout's network policies",
            policies.list(&managed),
        )
        .await
        {
            for np in list.items {
                let name = np.metadata.name.clone().unwrap_or_default();
                if alive.contains(&name) || items.iter().any(|i| i.name == name) {
                    continue;
                }
                let mut item = GcItem {
                    kind: "netpolicy",
                    id: np.metadata.uid.clone().unwrap_or_default(),
                    name: name.clone(),
                    job: np
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(labels::JOB).cloned()),
                    reason: "its pod no longer exists".into(),
                    removed: false,
                    error: None,
                };
                if !dry_run {
                    match bounded(
                        "deleting a network policy",
                        policies.delete(&name, &DeleteParams::default()),
                    )
                    .await
                    {
                        Ok(_) => item.removed = true,
                        Err(e) => item.error = Some(e.to_string()),
                    }
                }
                items.push(item);
            }
        }
        Ok(items)
    }
}
