//! Building an environment image on the Docker engine, reused only when its whole
//! [`Identity`](crate::buildctx::Identity) matches: the context after `.dockerignore`, the build
//! arguments, the platform, and the engine id of every base image (resolved, and with
//! `pull: always` refreshed from the registry, before the tag is chosen).

use crate::buildctx::{
    base_images, rebuild_reason, BuildContext, ContextError, Identity, PullPolicy, LABEL_BASES,
    LABEL_IDENTITY, LABEL_PLATFORM,
};
use crate::docker::{retried, DockerProvider};
use crate::{EnvError, PreparedImage};
use bollard::query_parameters::ListImagesOptions;
use rollout_core::labels;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

/// The Dockerfile rollout builds (inside the context).
const DOCKERFILE: &str = "Dockerfile";

/// What the engine needs to resolve before an environment's identity is known.
pub struct Resolved {
    pub context: BuildContext,
    pub identity: Identity,
}

impl DockerProvider {
    /// The platform images are built for: the engine's `os/arch`.
    async fn platform(&self) -> Result<String, EnvError> {
        let cell = self.cell("\0platform");
        let mut slot = cell.lock().await;
        if let Some(Ok(p)) = &*slot {
            return Ok(p.reference.clone());
        }
        let v = retried(|| self.client().version())
            .await
            .map_err(|e| EnvError::api("asking the engine for its platform", e))?;
        let platform = format!(
            "{}/{}",
            v.os.unwrap_or_else(|| "linux".into()),
            v.arch.unwrap_or_else(|| "unknown".into())
        );
        *slot = Some(Ok(PreparedImage {
            reference: platform.clone(),
            ..Default::default()
        }));
        Ok(platform)
    }

    /// The engine id of base image `reference` under `policy`: `always` pulls it once per
    /// process (later builds of the same run use that pull), `missing` pulls only when the
    /// engine lacks it, `never` refuses a missing one.
    async fn resolve_base(
        &self,
        reference: &str,
        policy: PullPolicy,
        needed_by: &Path,
    ) -> Result<String, EnvError> {
        let failed = |message: String| EnvError::BuildFailed {
            image: needed_by.display().to_string(),
            message,
            log: String::new(),
        };
        if policy == PullPolicy::Always {
            let cell = self.cell(&format!("\0pulled-base\0{reference}"));
            let mut slot = cell.lock().await;
            if slot.is_none() {
                *slot = Some(self.pull(reference).await);
            }
            return match slot.as_ref().expect("set above") {
                Ok(img) => Ok(img.id.clone()),
                Err(e) => Err(failed(format!(
                    "base image {reference} could not be pulled (environment.pull: always / --pull): {e}; \
                     with environment.pull: missing the local copy is used"
                ))),
            };
        }
        if let Some(id) = self.image_id(reference).await? {
            return Ok(id);
        }
        if policy == PullPolicy::Never {
            return Err(failed(format!(
                "base image {reference} is not on this engine and environment.pull is never; \
                 pull or build it first, or allow pulls with environment.pull: missing"
            )));
        }
        let cell = self.cell(&format!("\0missing-base\0{reference}"));
        let mut slot = cell.lock().await;
        if slot.is_none() {
            *slot = Some(self.pull(reference).await);
        }
        match slot.as_ref().expect("set above") {
            Ok(img) => Ok(img.id.clone()),
            Err(e) => Err(failed(format!(
                "base image {reference} is neither on this engine nor pullable: {e}"
            ))),
        }
    }

    /// Read the context and resolve every input of the environment's identity.
    pub async fn resolve_environment(
        &self,
        context: &Path,
        build_args: &BTreeMap<String, String>,
        pull: PullPolicy,
    ) -> Result<Resolved, EnvError> {
        let dir = context.to_path_buf();
        let read = tokio::task::spawn_blocking(move || {
            let ctx = BuildContext::read(&dir)?;
            let digest = ctx.digest()?;
            let dockerfile = std::fs::read_to_string(dir.join(DOCKERFILE))?;
            Ok::<_, ContextError>((ctx, digest, dockerfile))
        })
        .await
        .map_err(|e| EnvError::host("reading the environment", e))?;
        let (ctx, digest, dockerfile) = read.map_err(|e| EnvError::BuildFailed {
            image: context.display().to_string(),
            message: format!("cannot use {} as a build context: {e}", context.display()),
            log: String::new(),
        })?;
        let refs = base_images(&dockerfile, build_args).map_err(|e| EnvError::BuildFailed {
            image: context.display().to_string(),
            message: format!("{}/{DOCKERFILE}: {e}", context.display()),
            log: String::new(),
        })?;
        let mut bases = BTreeMap::new();
        for r in refs {
            let id = self.resolve_base(&r, pull, context).await?;
            bases.insert(r, id);
        }
        let identity = Identity {
            context: digest,
            dockerfile: DOCKERFILE.into(),
            build_args: build_args.clone(),
            platform: self.platform().await?,
            bases,
        };
        Ok(Resolved {
            context: ctx,
            identity,
        })
    }

    /// The most recent image built from the same context (any bases), with its labels.
    async fn previous_build(&self, context_digest: &str) -> Option<HashMap<String, String>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{}=true", labels::MANAGED),
                format!("{}={context_digest}", labels::ENV_HASH),
            ],
        )]);
        let images = self
            .client()
            .list_images(Some(ListImagesOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .ok()?;
        images
            .into_iter()
            .max_by_key(|i| i.created)
            .map(|i| i.labels)
    }

    /// After a build: every base still has the id the identity was computed with. A base
    /// re-tagged while the build ran may have been used instead, so the image would carry the
    /// wrong identity: it is removed and the build fails (an infrastructure error, retried).
    async fn check_bases_unchanged(&self, identity: &Identity, tag: &str) -> Result<(), EnvError> {
        for (reference, id) in &identity.bases {
            let now = self.image_id(reference).await?;
            if now.as_deref() != Some(id.as_str()) {
                let _ = self
                    .client()
                    .remove_image(
                        tag,
                        Some(bollard::query_parameters::RemoveImageOptions {
                            force: true,
                            ..Default::default()
                        }),
                        None,
                    )
                    .await;
                return Err(EnvError::BuildFailed {
                    image: tag.to_string(),
                    message: format!(
                        "base image {reference} changed while the environment was being built ({} → {}); run again",
                        crate::buildctx::short_id(id),
                        now.as_deref().map_or("absent", crate::buildctx::short_id)
                    ),
                    log: String::new(),
                });
            }
        }
        Ok(())
    }

    /// `prepare_image` for [`ImageSource::Build`](crate::ImageSource::Build).
    pub(crate) async fn prepare_build(
        &self,
        context: &Path,
        timeout: Duration,
        force: bool,
        pull: PullPolicy,
        labels: &BTreeMap<String, String>,
    ) -> Result<PreparedImage, EnvError> {
        let Resolved {
            context: ctx,
            identity,
        } = self
            .resolve_environment(context, &BTreeMap::new(), pull)
            .await?;
        let tag = identity.tag();
        let cell = self.cell(&tag);
        let mut slot = cell.lock().await;
        if let Some(done) = &*slot {
            return done.clone().map(|mut img| {
                img.fresh = false;
                img.build_log = None;
                img.build_reason = None;
                img
            });
        }
        if !force {
            if let Some(id) = self.image_id(&tag).await? {
                let img = PreparedImage {
                    reference: tag,
                    id,
                    bases: identity.bases.clone(),
                    ..Default::default()
                };
                *slot = Some(Ok(img.clone()));
                return Ok(img);
            }
        }
        let reason = if force {
            "a rebuild was asked for (--force-build)".to_string()
        } else {
            let prev = self.previous_build(&identity.context.to_hex()).await;
            rebuild_reason(
                &identity,
                prev.as_ref()
                    .and_then(|l| l.get(LABEL_BASES))
                    .map(String::as_str),
                prev.as_ref()
                    .and_then(|l| l.get(LABEL_PLATFORM))
                    .map(String::as_str),
            )
        };
        let mut labels = labels.clone();
        labels.insert(labels::MANAGED.into(), "true".into());
        labels.insert(
            labels::ENV_HASH.into(),
            identity.context.to_hex().to_string(),
        );
        labels.insert(LABEL_IDENTITY.into(), identity.hash().to_hex().to_string());
        labels.insert(LABEL_BASES.into(), identity.bases_label());
        labels.insert(LABEL_PLATFORM.into(), identity.platform.clone());
        let packed = tokio::task::spawn_blocking(move || ctx.tar())
            .await
            .map_err(|e| EnvError::host("packing the build context", e))?
            .map_err(|e| EnvError::BuildFailed {
                image: tag.clone(),
                message: format!("cannot read {}: {e}", context.display()),
                log: String::new(),
            })?;
        let header = format!("rollout: building {tag}: {reason}\n");
        let built = self
            .build(packed, context, &tag, timeout, force, &labels)
            .await;
        let built = match built {
            Ok(img) => self
                .check_bases_unchanged(&identity, &tag)
                .await
                .map(|()| img),
            Err(e) => Err(e),
        };
        let result = built
            .map(|mut img| {
                img.build_log = Some(format!("{header}{}", img.build_log.unwrap_or_default()));
                img.bases = identity.bases.clone();
                img.build_reason = Some(reason.clone());
                img
            })
            .map_err(|e| match e {
                EnvError::BuildFailed {
                    image,
                    message,
                    log,
                } => EnvError::BuildFailed {
                    image,
                    message,
                    log: format!("{header}{log}"),
                },
                EnvError::BuildTimeout {
                    image,
                    seconds,
                    log,
                } => EnvError::BuildTimeout {
                    image,
                    seconds,
                    log: format!("{header}{log}"),
                },
                other => other,
            });
        *slot = Some(result.clone());
        result
    }
}
