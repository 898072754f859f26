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
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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
    /// Also collect environment images (`rollout-env:*`) beyond the kept set.
    pub images: bool,
    /// With `images`: how many images to keep per environment (per build context, newest
    /// first); 0 removes every one not in use.
    pub keep_per_env: usize,
    /// With `images`: a bound on the total size of the kept images, in bytes; past it the
    /// oldest kept images go too.
    pub budget: Option<u64>,
}

/// An environment image as gc sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvImage {
    pub id: String,
    pub name: String,
    /// The build context it came from (`io.rollout.env-hash`), else its id.
    pub group: String,
    pub created: i64,
    pub size: u64,
    /// Whether a container (of any state) uses it.
    pub in_use: bool,
}

/// Which environment images to remove, with why: beyond the newest `keep` of each build
/// context, then the oldest of the rest while their total size exceeds `budget`. Images in use
/// by a container are kept (and count towards the budget).
pub fn images_to_remove(
    images: &[EnvImage],
    keep: usize,
    budget: Option<u64>,
) -> Vec<(EnvImage, String)> {
    let mut sorted: Vec<&EnvImage> = images.iter().collect();
    sorted.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
    let mut per_group: HashMap<&str, usize> = HashMap::new();
    let mut kept: Vec<&EnvImage> = Vec::new();
    let mut out = Vec::new();
    for img in sorted {
        let n = per_group.entry(img.group.as_str()).or_default();
        if img.in_use || *n < keep {
            *n += 1;
            kept.push(img);
        } else {
            out.push((
                img.clone(),
                format!("environment image beyond the newest {keep} of its environment (--images)"),
            ));
        }
    }
    if let Some(budget) = budget {
        let mut total: u64 = kept.iter().map(|i| i.size).sum();
        // Oldest first; images in use cannot go.
        for img in kept.iter().rev() {
            if total <= budget {
                break;
            }
            if img.in_use {
                continue;
            }
            total -= img.size;
            out.push((
                (*img).clone(),
                format!(
                    "environment image over the {} MiB images budget (--images-budget)",
                    budget >> 20
                ),
            ));
        }
    }
    out
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
                    filters: Some(filters.clone()),
                    ..Default::default()
                }))
                .await
                .map_err(|e| EnvError::api("listing images", e))?;
            let used: std::collections::HashSet<String> = docker
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    ..Default::default()
                }))
                .await
                .map_err(|e| EnvError::api("listing containers", e))?
                .into_iter()
                .filter_map(|c| c.image_id)
                .collect();
            let candidates: Vec<EnvImage> = env_images
                .into_iter()
                .filter_map(|img| {
                    let name = img.repo_tags.first().cloned()?;
                    if name == "<none>:<none>" {
                        return None;
                    }
                    Some(EnvImage {
                        group: img
                            .labels
                            .get(labels::ENV_HASH)
                            .cloned()
                            .unwrap_or_else(|| img.id.clone()),
                        in_use: used.contains(&img.id),
                        created: img.created,
                        size: img.size.max(0) as u64,
                        id: img.id,
                        name,
                    })
                })
                .collect();
            for (img, reason) in images_to_remove(&candidates, opts.keep_per_env, opts.budget) {
                let mut item = GcItem {
                    kind: "image",
                    id: img.id.clone(),
                    name: img.name.clone(),
                    job: None,
                    reason,
                    removed: false,
                    error: None,
                };
                if !opts.dry_run {
                    match docker
                        .remove_image(
                            &img.id,
                            Some(RemoveImageOptions {
                                force: true,
                                ..Default::default()
                            }),
                            None,
                        )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: &str, group: &str, created: i64, size_mib: u64, in_use: bool) -> EnvImage {
        EnvImage {
            id: id.into(),
            name: format!("rollout-env:{id}"),
            group: group.into(),
            created,
            size: size_mib << 20,
            in_use,
        }
    }

    fn ids(v: &[(EnvImage, String)]) -> Vec<&str> {
        let mut out: Vec<&str> = v.iter().map(|(i, _)| i.id.as_str()).collect();
        out.sort();
        out
    }

    #[test]
    fn keeps_the_newest_per_environment_and_whatever_is_in_use() {
        let images = [
            img("a1", "a", 1, 10, false),
            img("a2", "a", 2, 10, false),
            img("a3", "a", 3, 10, false),
            img("b1", "b", 1, 10, true),
            img("b2", "b", 2, 10, false),
        ];
        assert_eq!(ids(&images_to_remove(&images, 1, None)), ["a1", "a2"]);
        assert_eq!(ids(&images_to_remove(&images, 2, None)), ["a1"]);
        assert_eq!(
            ids(&images_to_remove(&images, 0, None)),
            ["a1", "a2", "a3", "b2"]
        );
    }

    #[test]
    fn a_budget_removes_the_oldest_kept_images_first() {
        let images = [
            img("a3", "a", 30, 100, false),
            img("b2", "b", 20, 100, false),
            img("c1", "c", 10, 100, true),
            img("d0", "d", 5, 100, false),
        ];
        // 400 MiB kept, budget 250: d0 goes (oldest), c1 is in use, then b2.
        let out = images_to_remove(&images, 1, Some(250 << 20));
        assert_eq!(ids(&out), ["b2", "d0"]);
        assert!(out[0].1.contains("budget"));
        assert!(images_to_remove(&images, 1, Some(1 << 40)).is_empty());
    }
}
