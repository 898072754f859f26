//! Garbage collection of what rollout left on the Docker engine: containers whose rollout
//! process is gone (crashes, preserved environments), dangling build images, and on request the
//! environment images themselves (which are otherwise kept: they are the build cache).

use crate::docker::{force_remove, is_not_found, retried, DockerProvider};
use crate::EnvError;
use bollard::query_parameters::{
    ListContainersOptions, ListImagesOptions, ListNetworksOptions, ListVolumesOptions,
    PruneImagesOptions, RemoveImageOptions, RemoveVolumeOptions,
};
use rollout_core::labels;
use std::collections::HashMap;

/// One thing `gc` found.
#[derive(Debug, Clone, PartialEq)]
pub struct GcItem {
    /// `container`, `network`, `volume` or `image`.
    pub kind: &'static str,
    pub id: String,
    pub name: String,
    /// Job id, for containers, networks and volumes.
    pub job: Option<String>,
    /// Why it is garbage.
    pub reason: String,
    /// Whether it was removed (false in dry runs or when removal failed).
    pub removed: bool,
    /// Why removal failed.
    pub error: Option<String>,
}

/// Options of a collection.
#[derive(Debug, Clone, Copy, Default)]
pub struct GcOptions {
    pub dry_run: bool,
    /// Also remove environment images (`rollout-env:*`) not used by any container.
    pub images: bool,
}

impl DockerProvider {
    /// Find (and unless `dry_run`, remove) rollout's leftovers on this engine.
    pub async fn gc(&self, this_host: &str, opts: GcOptions) -> Result<Vec<GcItem>, EnvError> {
        let docker = self.client();
        let mut items = Vec::new();
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}=true", labels::MANAGED)],
        )]);
        let containers = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters.clone()),
                ..Default::default()
            }))
            .await
            .map_err(|e| EnvError::api("listing containers", e))?;
        for c in containers {
            let labels_of = c.labels.unwrap_or_default();
            let pid: Option<u32> = labels_of.get(labels::PID).and_then(|p| p.parse().ok());
            let host = labels_of.get(labels::HOST).cloned().unwrap_or_default();
            let orphan = match pid {
                Some(pid) => !rollout_core::owner_alive(pid, &host, this_host),
                None => true,
            };
            if !orphan {
                continue;
            }
            let id = c.id.unwrap_or_default();
            let mut item = GcItem {
                kind: "container",
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                job: labels_of.get(labels::JOB).cloned(),
                reason: format!(
                    "rollout process {} on {host} is gone",
                    pid.map_or("?".into(), |p| p.to_string())
                ),
                id: id.clone(),
                removed: false,
                error: None,
            };
            if !opts.dry_run {
                // `retried`: a 409 "removal already in progress" (another gc, or the owner
                // finishing) is retried until the container is gone.
                match retried(|| docker.remove_container(&id, Some(force_remove()))).await {
                    Ok(()) => item.removed = true,
                    // Gone between the listing and now: its owner removed it as it finished
                    // (the listing is a snapshot, the owner check comes later). Not garbage.
                    Err(e) if is_not_found(&e) => continue,
                    Err(e) => item.error = Some(e.to_string()),
                }
            }
            items.push(item);
        }
        // Networks and volumes of multi-container trials whose rollout process is gone (their
        // containers went just above).
        let orphan_of = |l: &HashMap<String, String>| -> Option<String> {
            let pid: Option<u32> = l.get(labels::PID).and_then(|p| p.parse().ok());
            let host = l.get(labels::HOST).cloned().unwrap_or_default();
            let alive = pid.is_some_and(|pid| rollout_core::owner_alive(pid, &host, this_host));
            (!alive).then(|| {
                format!(
                    "rollout process {} on {host} is gone",
                    pid.map_or("?".into(), |p| p.to_string())
                )
            })
        };
        let networks = docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters.clone()),
            }))
            .await
            .map_err(|e| EnvError::api("listing networks", e))?;
        for n in networks {
            let l = n.labels.unwrap_or_default();
            let Some(reason) = orphan_of(&l) else {
                continue;
            };
            let id = n.id.unwrap_or_default();
            let mut item = GcItem {
                kind: "network",
                id: id.clone(),
                name: n.name.unwrap_or_default(),
                job: l.get(labels::JOB).cloned(),
                reason,
                removed: false,
                error: None,
            };
            if !opts.dry_run {
                match retried(|| docker.remove_network(&id)).await {
                    Ok(()) => item.removed = true,
                    Err(e) if is_not_found(&e) => continue,
                    Err(e) => item.error = Some(e.to_string()),
                }
            }
            items.push(item);
        }
        let volumes = docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filters.clone()),
            }))
            .await
            .map_err(|e| EnvError::api("listing volumes", e))?;
        for v in volumes.volumes.unwrap_or_default() {
            let Some(reason) = orphan_of(&v.labels) else {
                continue;
            };
            let mut item = GcItem {
                kind: "volume",
                id: v.name.clone(),
                name: v.name.clone(),
                job: v.labels.get(labels::JOB).cloned(),
                reason,
                removed: false,
                error: None,
            };
            if !opts.dry_run {
                let force = Some(RemoveVolumeOptions { force: true });
                match retried(|| docker.remove_volume(&v.name, force.clone())).await {
                    Ok(()) => item.removed = true,
                    Err(e) if is_not_found(&e) => continue,
                    Err(e) => item.error = Some(e.to_string()),
                }
            }
            items.push(item);
        }
        // Dangling images left by failed or superseded builds.
        let dangling = HashMap::from([
            ("dangling".to_string(), vec!["true".to_string()]),
            (
                "label".to_string(),
                vec![format!("{}=true", labels::MANAGED)],
            ),
        ]);
        let images = docker
            .list_images(Some(ListImagesOptions {
                all: false,
                filters: Some(dangling.clone()),
                ..Default::default()
            }))
            .await
            .map_err(|e| EnvError::api("listing images", e))?;
        for img in images {
            items.push(GcItem {
                kind: "image",
                id: img.id.clone(),
                name: "<dangling>".into(),
                job: None,
                reason: "dangling build image".into(),
                removed: false,
                error: None,
            });
        }
        if !opts.dry_run {
            match docker
                .prune_images(Some(PruneImagesOptions {
                    filters: Some(dangling),
                }))
                .await
            {
                Ok(_) => items
                    .iter_mut()
                    .filter(|i| i.kind == "image")
                    .for_each(|i| i.removed = true),
                Err(e) => items
                    .iter_mut()
                    .filter(|i| i.kind == "image")
                    .for_each(|i| i.error = Some(e.to_string())),
            }
        }
        if opts.images {
            let env_images = docker
                .list_images(Some(ListImagesOptions {
                    all: false,
                    filters: Some(filters),
                    ..Default::default()
                }))
                .await
                .map_err(|e| EnvError::api("listing images", e))?;
            for img in env_images {
                let name = img
                    .repo_tags
                    .first()
                    .cloned()
                    .unwrap_or_else(|| img.id.clone());
                if name == "<none>:<none>" {
                    continue;
                }
                let mut item = GcItem {
                    kind: "image",
                    id: img.id.clone(),
                    name: name.clone(),
                    job: None,
                    reason: "environment image (--images)".into(),
                    removed: false,
                    error: None,
                };
                if !opts.dry_run {
                    match docker
                        .remove_image(&name, None::<RemoveImageOptions>, None)
                        .await
                    {
                        Ok(_) => item.removed = true,
                        // Removed meanwhile by another `rollout gc` or by hand.
                        Err(e) if is_not_found(&e) => continue,
                        Err(e) => item.error = Some(e.to_string()),
                    }
                }
                items.push(item);
            }
        }
        Ok(items)
    }
}
