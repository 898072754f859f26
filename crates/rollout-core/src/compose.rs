//! Multi-container tasks: `environment/docker-compose.yaml` read the way Harbor merges it over
//! its `main` service.
//!
//! Harbor starts every task from a base compose file whose `main` service is the task's image
//! (its Dockerfile or `docker_image`) with a keep-alive command, its resource limits and mounts,
//! then merges the task's own compose file over it. This module parses that file into a
//! [`ComposeProject`]: the sidecar services, what the task adds to `main`, and the named
//! volumes. Only the subset of the Compose specification that rollout runs faithfully is
//! accepted; any other key is refused by name (file, service, key) before anything starts,
//! never ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_norway::Value;

/// File names looked for in `environment/`, in this order.
pub const COMPOSE_FILES: [&str; 4] = [
    "docker-compose.yaml",
    "docker-compose.yml",
    "compose.yaml",
    "compose.yml",
];
/// The name of the task's own container in the compose project.
pub const MAIN: &str = "main";
/// What `${MAIN_IMAGE_NAME}` expands to: a service with this image runs the main container's
/// image.
pub const MAIN_IMAGE_PLACEHOLDER: &str = "rollout.invalid/main-image:compose";
/// Largest compose file read.
const MAX_FILE: u64 = 1 << 20;

/// Why a compose file cannot be run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: {place}: {message}")]
pub struct ComposeError {
    /// The compose file.
    pub file: PathBuf,
    /// Where in it: `services.api.ports`, `volumes.data.driver`, …
    pub place: String,
    pub message: String,
}

/// When a service may start relative to one it depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// The dependency's container has started.
    Started,
    /// The dependency's healthcheck passed.
    Healthy,
    /// The dependency ran to completion with exit code 0.
    CompletedSuccessfully,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Started => "service_started",
            Condition::Healthy => "service_healthy",
            Condition::CompletedSuccessfully => "service_completed_successfully",
        }
    }
}

/// A service's healthcheck (Docker's semantics).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceHealth {
    /// Docker's `Test`: `["CMD", …]` or `["CMD-SHELL", "…"]`.
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
    pub start_interval: Option<Duration>,
}

impl ServiceHealth {
    /// The longest a healthy-or-not verdict can take after the container started.
    pub fn deadline(&self) -> Duration {
        self.start_period + (self.interval + self.timeout) * (self.retries.max(1) + 1)
    }
}

/// A named volume mounted into a service.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeMount {
    /// The volume's name in the compose file.
    pub volume: String,
    /// Absolute path in the container.
    pub target: String,
    pub read_only: bool,
}

/// Where a sidecar's image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceImage {
    /// Build this directory's `Dockerfile` (inside `environment/`).
    Build(PathBuf),
    /// Use this image (local, else pulled).
    Image(String),
}

/// One sidecar service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub image: ServiceImage,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub environment: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub healthcheck: Option<ServiceHealth>,
    pub depends_on: BTreeMap<String, Condition>,
    pub volumes: Vec<VolumeMount>,
    /// Ports other services reach it on (informational: every port is reachable on the trial
    /// network).
    pub expose: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub tty: bool,
    pub stdin_open: bool,
    pub init: Option<bool>,
}

/// What the compose file adds to the task's own container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MainService {
    pub environment: BTreeMap<String, String>,
    pub depends_on: BTreeMap<String, Condition>,
    pub volumes: Vec<VolumeMount>,
    pub expose: Vec<String>,
}

/// A task's compose project.
#[derive(Debug, Clone, PartialEq)]
pub struct ComposeProject {
    /// The compose file.
    pub file: PathBuf,
    pub main: MainService,
    /// The sidecars, by name.
    pub services: BTreeMap<String, Service>,
    /// Named volumes (created per trial).
    pub volumes: BTreeSet<String>,
    /// Every service (sidecars and `main`) in an order where each comes after what it depends
    /// on.
    pub order: Vec<String>,
}

impl ComposeProject {
    /// The dependencies of `service` (`main` included).
    pub fn depends_on(&self, service: &str) -> &BTreeMap<String, Condition> {
        if service == MAIN {
            &self.main.depends_on
        } else {
            &self.services[service].depends_on
        }
    }
}

/// The compose file of an `environment/` directory, if it has one.
pub fn find(env_dir: &Path) -> Option<PathBuf> {
    COMPOSE_FILES
        .iter()
        .map(|n| env_dir.join(n))
        .find(|p| p.is_file())
}

/// Read and check the compose file of `env_dir`, if any. `vars` are the variables `${VAR}`
/// interpolation sees first (Harbor's infra variables, then the task's `[environment] env`);
/// the host environment comes after them, as for `docker compose`.
pub fn load(
    env_dir: &Path,
    vars: &BTreeMap<String, String>,
) -> Result<Option<ComposeProject>, ComposeError> {
    let Some(file) = find(env_dir) else {
        return Ok(None);
    };
    let err = |place: &str, message: String| ComposeError {
        file: file.clone(),
        place: place.to_string(),
        message,
    };
    let meta = std::fs::metadata(&file).map_err(|e| err("file", e.to_string()))?;
    if meta.len() > MAX_FILE {
        return Err(err(
            "file",
            format!("{} bytes; compose files are capped at 1 MiB", meta.len()),
        ));
    }
    let text = std::fs::read_to_string(&file).map_err(|e| err("file", e.to_string()))?;
    parse(&text, &file, env_dir, vars).map(Some)
}

/// Parse compose `text` (the file `file` of `env_dir`).
pub fn parse(
    text: &str,
    file: &Path,
    env_dir: &Path,
    vars: &BTreeMap<String, String>,
) -> Result<ComposeProject, ComposeError> {
    let p = Parser {
        file: file.to_path_buf(),
        env_dir: env_dir.to_path_buf(),
        vars: vars.clone(),
    };
    p.project(text)
}

struct Parser {
    file: PathBuf,
    env_dir: PathBuf,
    vars: BTreeMap<String, String>,
}

type Map = serde_norway::Mapping;

impl Parser {
    fn err(&self, place: impl Into<String>, message: impl Into<String>) -> ComposeError {
        ComposeError {
            file: self.file.clone(),
            place: place.into(),
            message: message.into(),
        }
    }

    fn unsupported(&self, place: &str, why: &str) -> ComposeError {
        self.err(
            place,
            format!("key `{}` is not supported by rollout ({why})", last(place)),
        )
    }

    fn project(&self, text: &str) -> Result<ComposeProject, ComposeError> {
        let doc: Value =
            serde_norway::from_str(text).map_err(|e| self.err("file", format!("not YAML: {e}")))?;
        let root = match doc {
            Value::Mapping(m) => m,
            Value::Null => Map::new(),
            _ => return Err(self.err("file", "expected a mapping at the top level")),
        };
        let mut services_raw = None;
        let mut volumes = BTreeSet::new();
        for (k, v) in &root {
            let key = self.key(k, "file")?;
            match key.as_str() {
                "services" => services_raw = Some(v.clone()),
                "version" | "name" => {}
                "volumes" => volumes = self.top_volumes(v)?,
                k if k.starts_with("x-") => {}
                "networks" => {
                    return Err(self.unsupported(
                        "networks",
                        "every service joins the trial's own network, where it is reachable by its service name",
                    ))
                }
                other => {
                    return Err(self.unsupported(
                        other,
                        "supported top-level keys: services, volumes, version, name, x-*",
                    ))
                }
            }
        }
        let services_raw = match services_raw {
            Some(Value::Mapping(m)) => m,
            Some(Value::Null) | None => Map::new(),
            Some(_) => return Err(self.err("services", "expected a mapping of services")),
        };
        let mut main = MainService::default();
        let mut services = BTreeMap::new();
        for (k, v) in &services_raw {
            let name = self.key(k, "services")?;
            let place = format!("services.{name}");
            if !valid_service_name(&name) {
                return Err(self.err(
                    &place,
                    "service names are letters, digits, `-`, `_` and `.`, starting with a letter or digit",
                ));
            }
            let m = match v {
                Value::Mapping(m) => m.clone(),
                Value::Null => Map::new(),
                _ => return Err(self.err(&place, "expected a mapping")),
            };
            if name == MAIN {
                main = self.main(&m, &place)?;
            } else {
                services.insert(name.clone(), self.service(&name, &m, &place)?);
            }
        }
        // Every named volume used must be declared, as Compose requires.
        let uses = main.volumes.iter().map(|v| (MAIN, v)).chain(
            services
                .values()
                .flat_map(|s| s.volumes.iter().map(move |v| (s.name.as_str(), v))),
        );
        for (svc, v) in uses {
            if !volumes.contains(&v.volume) {
                return Err(self.err(
                    format!("services.{svc}.volumes"),
                    format!(
                        "volume `{}` is not declared under the top-level `volumes:`",
                        v.volume
                    ),
                ));
            }
        }
        let mut project = ComposeProject {
            file: self.file.clone(),
            main,
            services,
            volumes,
            order: Vec::new(),
        };
        project.order = self.order(&project)?;
        Ok(project)
    }

    fn key(&self, k: &Value, place: &str) -> Result<String, ComposeError> {
        match k {
            Value::String(s) => Ok(s.clone()),
            _ => Err(self.err(place, format!("expected string keys, found {k:?}"))),
        }
    }

    fn top_volumes(&self, v: &Value) -> Result<BTreeSet<String>, ComposeError> {
        let m = match v {
            Value::Mapping(m) => m,
            Value::Null => return Ok(BTreeSet::new()),
            _ => return Err(self.err("volumes", "expected a mapping of volume names")),
        };
        let mut out = BTreeSet::new();
        for (k, v) in m {
            let name = self.key(k, "volumes")?;
            let place = format!("volumes.{name}");
            if !valid_service_name(&name) {
                return Err(self.err(&place, "not a valid volume name"));
            }
            match v {
                Value::Null => {}
                Value::Mapping(opts) => {
                    if let Some((k, _)) = opts.iter().next() {
                        let k = self.key(k, &place)?;
                        return Err(self.unsupported(
                            &format!("{place}.{k}"),
                            "named volumes are plain local volumes created for each trial",
                        ));
                    }
                }
                _ => return Err(self.err(&place, "expected an empty mapping")),
            }
            out.insert(name);
        }
        Ok(out)
    }

    fn main(&self, m: &Map, place: &str) -> Result<MainService, ComposeError> {
        let mut main = MainService::default();
        for (k, v) in m {
            let key = self.key(k, place)?;
            let at = format!("{place}.{key}");
            match key.as_str() {
                "depends_on" => main.depends_on = self.depends_on(v, &at)?,
                "environment" => main.environment = self.environment(v, &at)?,
                "volumes" => main.volumes = self.volumes(v, &at)?,
                "expose" => main.expose = self.strings(v, &at)?,
                "build" | "image" => {
                    return Err(self.unsupported(
                        &at,
                        "main is the task's environment/Dockerfile or [environment] docker_image",
                    ))
                }
                "command" | "entrypoint" => {
                    return Err(self.unsupported(
                        &at,
                        "rollout keeps main alive itself and runs the agent and verifier in it",
                    ))
                }
                "healthcheck" => {
                    return Err(self.unsupported(
                        &at,
                        "use [environment.healthcheck] in task.toml for the main container",
                    ))
                }
                "working_dir" | "user" => {
                    return Err(self.unsupported(
                        &at,
                        "use [environment] workdir and [agent]/[verifier] user in task.toml",
                    ))
                }
                _ => {
                    return Err(self.unsupported(
                        &at,
                        "main accepts depends_on, environment, volumes (named) and expose",
                    ))
                }
            }
        }
        Ok(main)
    }

    fn service(&self, name: &str, m: &Map, place: &str) -> Result<Service, ComposeError> {
        let mut build = None;
        let mut image = None;
        let mut s = Service {
            name: name.to_string(),
            image: ServiceImage::Image(String::new()),
            command: None,
            entrypoint: None,
            environment: BTreeMap::new(),
            working_dir: None,
            user: None,
            hostname: None,
            healthcheck: None,
            depends_on: BTreeMap::new(),
            volumes: Vec::new(),
            expose: Vec::new(),
            labels: BTreeMap::new(),
            tty: false,
            stdin_open: false,
            init: None,
        };
        for (k, v) in m {
            let key = self.key(k, place)?;
            let at = format!("{place}.{key}");
            match key.as_str() {
                "build" => build = Some(self.build(v, &at)?),
                "image" => image = Some(self.string(v, &at)?),
                "command" => s.command = Some(self.command(v, &at)?),
                "entrypoint" => s.entrypoint = Some(self.command(v, &at)?),
                "environment" => s.environment = self.environment(v, &at)?,
                "working_dir" => s.working_dir = Some(self.string(v, &at)?),
                "user" => s.user = Some(self.string(v, &at)?),
                "hostname" => s.hostname = Some(self.string(v, &at)?),
                "healthcheck" => s.healthcheck = self.healthcheck(v, &at)?,
                "depends_on" => s.depends_on = self.depends_on(v, &at)?,
                "volumes" => s.volumes = self.volumes(v, &at)?,
                "expose" => s.expose = self.strings(v, &at)?,
                "labels" => s.labels = self.environment(v, &at)?,
                "tty" => s.tty = self.boolean(v, &at)?,
                "stdin_open" => s.stdin_open = self.boolean(v, &at)?,
                "init" => s.init = Some(self.boolean(v, &at)?),
                // What Compose does with these is what rollout does anyway: images are built
                // when missing, containers are removed at the end, and stopped at once.
                "pull_policy" => match self.string(v, &at)?.as_str() {
                    "build" | "missing" | "if_not_present" => {}
                    other => {
                        return Err(self.err(
                            &at,
                            format!("pull_policy `{other}` is not supported (build, missing)"),
                        ))
                    }
                },
                "restart" => match self.string(v, &at)?.as_str() {
                    "no" => {}
                    other => {
                        return Err(self.err(
                            &at,
                            format!("restart `{other}` is not supported: services run once, for the trial (use \"no\")"),
                        ))
                    }
                },
                "stop_grace_period" | "stop_signal" => {
                    // Teardown removes every container at once.
                    self.string(v, &at)?;
                }
                "ports" => return Err(self.unsupported(
                    &at,
                    "publishing host ports would collide between trials; services reach each other by name on the trial network (use expose)",
                )),
                "network_mode" | "networks" => return Err(self.unsupported(
                    &at,
                    "every service joins the trial's own network, where it is reachable by its service name",
                )),
                "container_name" => return Err(self.unsupported(
                    &at,
                    "container names must differ between trials; reach the service by its service name",
                )),
                "privileged" | "cap_add" | "security_opt" | "devices" | "pid" | "ipc"
                | "userns_mode" | "cgroup_parent" | "sysctls" => return Err(self.unsupported(
                    &at,
                    "services run with the same restricted privileges as the main container",
                )),
                "env_file" => return Err(self.unsupported(
                    &at,
                    "write the variables under `environment:`",
                )),
                _ => return Err(self.unsupported(&at, "see docs/task-format.md, Multi-container tasks, for the supported keys")),
            }
        }
        s.image = match (build, image) {
            (Some(b), _) => ServiceImage::Build(b),
            (None, Some(i)) if !i.trim().is_empty() => ServiceImage::Image(i),
            _ => return Err(self.err(place, "a service needs `build` or `image`")),
        };
        Ok(s)
    }

    fn build(&self, v: &Value, at: &str) -> Result<PathBuf, ComposeError> {
        let context = match v {
            Value::String(s) => self.interpolate(s, at)?,
            Value::Mapping(m) => {
                let mut context = None;
                for (k, v) in m {
                    let key = self.key(k, at)?;
                    let here = format!("{at}.{key}");
                    match key.as_str() {
                        "context" => context = Some(self.string(v, &here)?),
                        "dockerfile" => {
                            let d = self.string(v, &here)?;
                            if d != "Dockerfile" && d != "./Dockerfile" {
                                return Err(self.unsupported(
                                    &here,
                                    "the build context's file must be named Dockerfile",
                                ));
                            }
                        }
                        _ => {
                            return Err(self.unsupported(
                                &here,
                                "build accepts context (and dockerfile: Dockerfile)",
                            ))
                        }
                    }
                }
                context.unwrap_or_else(|| ".".into())
            }
            _ => return Err(self.err(at, "expected a path or a mapping")),
        };
        // Contexts are relative to environment/ and stay inside it: a build never reads the
        // host's other files.
        let rel = Path::new(&context);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(self.err(
                at,
                format!("build context `{context}` must be a path inside environment/"),
            ));
        }
        let dir = self.env_dir.join(rel);
        if !dir.join("Dockerfile").is_file() {
            return Err(self.err(
                at,
                format!(
                    "build context `{context}` has no Dockerfile ({} is missing)",
                    dir.join("Dockerfile").display()
                ),
            ));
        }
        Ok(dir)
    }

    fn healthcheck(&self, v: &Value, at: &str) -> Result<Option<ServiceHealth>, ComposeError> {
        let m = match v {
            Value::Mapping(m) => m,
            _ => return Err(self.err(at, "expected a mapping")),
        };
        let mut h = ServiceHealth {
            test: Vec::new(),
            // Docker's defaults.
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
            retries: 3,
            start_period: Duration::ZERO,
            start_interval: None,
        };
        let mut disable = false;
        for (k, v) in m {
            let key = self.key(k, at)?;
            let here = format!("{at}.{key}");
            match key.as_str() {
                "test" => {
                    h.test = match v {
                        Value::String(s) => vec!["CMD-SHELL".into(), self.interpolate(s, &here)?],
                        _ => self.strings(v, &here)?,
                    }
                }
                "interval" => h.interval = self.duration(v, &here)?,
                "timeout" => h.timeout = self.duration(v, &here)?,
                "start_period" => h.start_period = self.duration(v, &here)?,
                "start_interval" => h.start_interval = Some(self.duration(v, &here)?),
                "retries" => {
                    h.retries = match v {
                        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                        _ => None,
                    }
                    .ok_or_else(|| self.err(&here, "expected a non-negative integer"))?
                }
                "disable" => disable = self.boolean(v, &here)?,
                _ => {
                    return Err(self.unsupported(
                        &here,
                        "healthcheck accepts test, interval, timeout, retries, start_period, start_interval, disable",
                    ))
                }
            }
        }
        if disable || h.test.first().is_some_and(|t| t == "NONE") {
            return Ok(None);
        }
        match h.test.first().map(String::as_str) {
            Some("CMD") | Some("CMD-SHELL") if h.test.len() >= 2 => Ok(Some(h)),
            _ => Err(self.err(
                format!("{at}.test"),
                "expected [\"CMD\", …], [\"CMD-SHELL\", \"…\"] or a string",
            )),
        }
    }

    fn depends_on(&self, v: &Value, at: &str) -> Result<BTreeMap<String, Condition>, ComposeError> {
        let mut out = BTreeMap::new();
        match v {
            Value::Sequence(items) => {
                for i in items {
                    out.insert(self.string(i, at)?, Condition::Started);
                }
            }
            Value::Mapping(m) => {
                for (k, v) in m {
                    let dep = self.key(k, at)?;
                    let here = format!("{at}.{dep}");
                    let mut condition = Condition::Started;
                    if let Value::Mapping(opts) = v {
                        for (k, v) in opts {
                            let key = self.key(k, &here)?;
                            let there = format!("{here}.{key}");
                            match key.as_str() {
                                "condition" => {
                                    condition = match self.string(v, &there)?.as_str() {
                                        "service_started" => Condition::Started,
                                        "service_healthy" => Condition::Healthy,
                                        "service_completed_successfully" => {
                                            Condition::CompletedSuccessfully
                                        }
                                        other => {
                                            return Err(self.err(
                                                &there,
                                                format!("unknown condition `{other}`"),
                                            ))
                                        }
                                    }
                                }
                                "required" => {
                                    if !self.boolean(v, &there)? {
                                        return Err(self
                                            .unsupported(&there, "every dependency is required"));
                                    }
                                }
                                "restart" => {
                                    self.boolean(v, &there)?;
                                }
                                _ => {
                                    return Err(self.unsupported(
                                        &there,
                                        "depends_on accepts condition and required",
                                    ))
                                }
                            }
                        }
                    } else if !v.is_null() {
                        return Err(self.err(&here, "expected a mapping"));
                    }
                    out.insert(dep, condition);
                }
            }
            _ => return Err(self.err(at, "expected a list or a mapping")),
        }
        Ok(out)
    }

    fn volumes(&self, v: &Value, at: &str) -> Result<Vec<VolumeMount>, ComposeError> {
        let Value::Sequence(items) = v else {
            return Err(self.err(at, "expected a list"));
        };
        let bind = |s: &str| {
            self.unsupported(
                at,
                &format!("`{s}` is a host path: only named volumes (declared under the top-level volumes:) are mounted"),
            )
        };
        let mut out = Vec::new();
        for item in items {
            let mount = match item {
                Value::String(s) => {
                    let s = self.interpolate(s, at)?;
                    let parts: Vec<&str> = s.split(':').collect();
                    let (source, target, mode) = match parts.as_slice() {
                        [src, dst] => (*src, *dst, ""),
                        [src, dst, mode] => (*src, *dst, *mode),
                        [_] => {
                            return Err(self.unsupported(
                                at,
                                &format!("`{s}` is an anonymous volume: name it"),
                            ))
                        }
                        _ => return Err(self.err(at, format!("cannot read volume `{s}`"))),
                    };
                    if source.starts_with(['.', '/', '~']) {
                        return Err(bind(source));
                    }
                    let read_only = match mode {
                        "" | "rw" => false,
                        "ro" => true,
                        other => {
                            return Err(self.err(
                                at,
                                format!("volume mode `{other}` is not supported (ro, rw)"),
                            ))
                        }
                    };
                    VolumeMount {
                        volume: source.to_string(),
                        target: target.to_string(),
                        read_only,
                    }
                }
                Value::Mapping(m) => {
                    let mut typ = "volume".to_string();
                    let (mut source, mut target, mut read_only) = (None, None, false);
                    for (k, v) in m {
                        let key = self.key(k, at)?;
                        let here = format!("{at}.{key}");
                        match key.as_str() {
                            "type" => typ = self.string(v, &here)?,
                            "source" => source = Some(self.string(v, &here)?),
                            "target" => target = Some(self.string(v, &here)?),
                            "read_only" => read_only = self.boolean(v, &here)?,
                            _ => {
                                return Err(self.unsupported(
                                    &here,
                                    "volumes accept type: volume, source, target, read_only",
                                ))
                            }
                        }
                    }
                    if typ != "volume" {
                        return Err(self.unsupported(
                            &format!("{at}.type"),
                            &format!("type `{typ}`: only named volumes are mounted"),
                        ));
                    }
                    let (Some(source), Some(target)) = (source, target) else {
                        return Err(self.err(at, "a volume needs source and target"));
                    };
                    VolumeMount {
                        volume: source,
                        target,
                        read_only,
                    }
                }
                _ => return Err(self.err(at, "expected a string or a mapping")),
            };
            if !mount.target.starts_with('/') {
                return Err(self.err(
                    at,
                    format!("mount target `{}` must be an absolute path", mount.target),
                ));
            }
            out.push(mount);
        }
        Ok(out)
    }

    fn environment(&self, v: &Value, at: &str) -> Result<BTreeMap<String, String>, ComposeError> {
        let mut out = BTreeMap::new();
        match v {
            Value::Sequence(items) => {
                for i in items {
                    let s = self.string(i, at)?;
                    match s.split_once('=') {
                        Some((k, v)) => {
                            out.insert(k.to_string(), v.to_string());
                        }
                        // `- NAME` passes the variable through from where compose runs.
                        None => {
                            if let Some(val) = self.lookup(&s) {
                                out.insert(s, val);
                            }
                        }
                    }
                }
            }
            Value::Mapping(m) => {
                for (k, v) in m {
                    let key = self.key(k, at)?;
                    let val = match v {
                        Value::Null => match self.lookup(&key) {
                            Some(val) => val,
                            None => continue,
                        },
                        _ => self.string(v, &format!("{at}.{key}"))?,
                    };
                    out.insert(key, val);
                }
            }
            Value::Null => {}
            _ => return Err(self.err(at, "expected a list or a mapping")),
        }
        Ok(out)
    }

    fn command(&self, v: &Value, at: &str) -> Result<Vec<String>, ComposeError> {
        match v {
            // The string form runs through the image's shell split, as Compose does with
            // shell-like word splitting; rollout requires a list for anything with quotes.
            Value::String(s) => {
                let s = self.interpolate(s, at)?;
                if s.contains(['"', '\'', '\\']) {
                    return Err(self.err(
                        at,
                        "write a command with quotes as a list ([\"sh\", \"-c\", \"…\"])",
                    ));
                }
                Ok(s.split_whitespace().map(str::to_string).collect())
            }
            _ => self.strings(v, at),
        }
    }

    fn strings(&self, v: &Value, at: &str) -> Result<Vec<String>, ComposeError> {
        match v {
            Value::Sequence(items) => items.iter().map(|i| self.string(i, at)).collect(),
            _ => Err(self.err(at, "expected a list")),
        }
    }

    /// A scalar as a string, interpolated.
    fn string(&self, v: &Value, at: &str) -> Result<String, ComposeError> {
        match v {
            Value::String(s) => self.interpolate(s, at),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(self.err(at, "expected a string")),
        }
    }

    fn boolean(&self, v: &Value, at: &str) -> Result<bool, ComposeError> {
        match v {
            Value::Bool(b) => Ok(*b),
            Value::String(s) if s == "true" => Ok(true),
            Value::String(s) if s == "false" => Ok(false),
            _ => Err(self.err(at, "expected true or false")),
        }
    }

    fn duration(&self, v: &Value, at: &str) -> Result<Duration, ComposeError> {
        let s = self.string(v, at)?;
        parse_duration(&s).ok_or_else(|| {
            self.err(
                at,
                format!("`{s}` is not a duration (e.g. 30s, 1m30s, 500ms)"),
            )
        })
    }

    fn lookup(&self, name: &str) -> Option<String> {
        self.vars
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    }

    /// Compose interpolation: `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$$`. An unbraced
    /// `$VAR` is refused (Compose would interpolate it where a shell in the container might be
    /// meant): write `${VAR}` or `$$VAR`.
    fn interpolate(&self, s: &str, at: &str) -> Result<String, ComposeError> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body
                    .find('}')
                    .ok_or_else(|| self.err(at, format!("unclosed `${{` in `{s}`")))?;
                let inner = &body[..end];
                let (name, default, if_empty) = if let Some((n, d)) = inner.split_once(":-") {
                    (n, Some(d), true)
                } else if let Some((n, d)) = inner.split_once('-') {
                    (n, Some(d), false)
                } else {
                    (inner, None, false)
                };
                if !valid_var(name) {
                    return Err(self.err(
                        at,
                        format!("`${{{inner}}}`: only ${{VAR}}, ${{VAR:-default}} and ${{VAR-default}} are supported"),
                    ));
                }
                let value = self.lookup(name);
                match (value, default) {
                    (Some(v), Some(d)) if v.is_empty() && if_empty => out.push_str(d),
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => {}
                }
                rest = &body[end + 1..];
            } else if after.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                return Err(self.err(
                    at,
                    format!(
                        "`{s}`: write ${{VAR}} for a variable of the task, or $$ for a literal $"
                    ),
                ));
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Start order: a topological sort of the services (`main` included) by `depends_on`.
    fn order(&self, p: &ComposeProject) -> Result<Vec<String>, ComposeError> {
        let names: Vec<String> = std::iter::once(MAIN.to_string())
            .chain(p.services.keys().cloned())
            .collect();
        for name in &names {
            for (dep, cond) in p.depends_on(name) {
                let place = format!("services.{name}.depends_on.{dep}");
                if dep == name {
                    return Err(self.err(&place, "a service cannot depend on itself"));
                }
                if dep == MAIN {
                    return Err(self.unsupported(
                        &place,
                        "main starts after its sidecars; a sidecar cannot wait for it",
                    ));
                }
                let Some(svc) = p.services.get(dep) else {
                    return Err(self.err(&place, format!("no service named `{dep}`")));
                };
                if *cond == Condition::Healthy && svc.healthcheck.is_none() {
                    return Err(self.err(
                        &place,
                        format!("service_healthy needs a healthcheck on `{dep}`"),
                    ));
                }
            }
        }
        let mut order: Vec<String> = Vec::new();
        let mut placed = BTreeSet::new();
        while order.len() < names.len() {
            let before = order.len();
            for name in &names {
                if !placed.contains(name) && p.depends_on(name).keys().all(|d| placed.contains(d)) {
                    placed.insert(name.clone());
                    order.push(name.clone());
                }
            }
            if order.len() == before {
                let stuck: Vec<&str> = names
                    .iter()
                    .filter(|n| !placed.contains(*n))
                    .map(String::as_str)
                    .collect();
                return Err(self.err(
                    "services",
                    format!("depends_on has a cycle among {}", stuck.join(", ")),
                ));
            }
        }
        // main last among what is ready with it, so sidecars not needed by main start first.
        Ok(order)
    }
}

fn last(place: &str) -> &str {
    place.rsplit('.').next().unwrap_or(place)
}

fn valid_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_var(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A Compose duration: `1h2m3s`, `1.5s`, `500ms`, `10us`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<f64>() {
        return (n >= 0.0 && n.is_finite()).then(|| Duration::from_secs_f64(n));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in(dir: &Path, text: &str) -> Result<ComposeProject, ComposeError> {
        parse(
            text,
            &dir.join("docker-compose.yaml"),
            dir,
            &BTreeMap::new(),
        )
    }

    fn env_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("api-server")).unwrap();
        std::fs::write(d.path().join("api-server/Dockerfile"), "FROM x\n").unwrap();
        d
    }

    #[test]
    fn reads_the_cookbook_multi_container_recipe() {
        let d = env_dir();
        let p = parse_in(
            d.path(),
            r#"
services:
  main:
    depends_on:
      api-server:
        condition: service_healthy
  api-server:
    build:
      context: ./api-server
    expose:
      - "5000"
    environment:
      - MODEL=${SIM_USER_MODEL:-small}
      - PLAIN=1
    healthcheck:
      test: ["CMD", "python3", "-c", "print(1)"]
      interval: 2s
      timeout: 5s
      retries: 15
      start_period: 5s
"#,
        )
        .unwrap();
        assert_eq!(p.main.depends_on["api-server"], Condition::Healthy);
        let api = &p.services["api-server"];
        assert_eq!(
            api.image,
            ServiceImage::Build(d.path().join("./api-server"))
        );
        assert_eq!(api.expose, vec!["5000"]);
        assert_eq!(api.environment["MODEL"], "small");
        assert_eq!(api.environment["PLAIN"], "1");
        let h = api.healthcheck.as_ref().unwrap();
        assert_eq!(h.interval, Duration::from_secs(2));
        assert_eq!(h.retries, 15);
        assert_eq!(p.order, vec!["api-server", "main"]);
    }

    #[test]
    fn init_service_and_named_volume() {
        let d = env_dir();
        let p = parse_in(
            d.path(),
            r#"
services:
  main:
    depends_on: {init: {condition: service_completed_successfully}}
    volumes: ["shared:/data:ro"]
  init:
    image: debian:bookworm-slim
    command: ["sh", "-c", "echo hi > /data/x"]
    volumes:
      - type: volume
        source: shared
        target: /data
volumes:
  shared:
"#,
        )
        .unwrap();
        assert_eq!(p.volumes, BTreeSet::from(["shared".to_string()]));
        assert!(p.main.volumes[0].read_only);
        assert_eq!(p.services["init"].volumes[0].target, "/data");
        assert_eq!(p.main.depends_on["init"], Condition::CompletedSuccessfully);
    }

    #[test]
    fn unsupported_keys_are_refused_by_name() {
        let d = env_dir();
        for (text, place) in [
            (
                "services:\n  api:\n    image: x\n    ports: [\"80:80\"]\n",
                "services.api.ports",
            ),
            (
                "services:\n  api:\n    image: x\n    privileged: true\n",
                "services.api.privileged",
            ),
            (
                "services:\n  main:\n    command: [\"x\"]\n",
                "services.main.command",
            ),
            (
                "services:\n  api:\n    image: x\n    volumes: [\"./data:/data\"]\n",
                "services.api.volumes",
            ),
            (
                "services:\n  api:\n    image: x\n    frobnicate: 1\n",
                "services.api.frobnicate",
            ),
            ("networks:\n  n: {}\n", "networks"),
            ("volumes:\n  v:\n    driver: nfs\n", "volumes.v.driver"),
        ] {
            let e = parse_in(d.path(), text).unwrap_err();
            assert_eq!(e.place, place, "{text}");
        }
        let e = parse_in(
            d.path(),
            "services:\n  api:\n    image: x\n    ports: [\"80:80\"]\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("key `ports` is not supported"),
            "{e}"
        );
    }

    #[test]
    fn bad_graphs_are_refused() {
        let d = env_dir();
        let cycle = "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n";
        assert!(parse_in(d.path(), cycle)
            .unwrap_err()
            .message
            .contains("cycle"));
        let missing = "services:\n  main:\n    depends_on: [nope]\n";
        assert!(parse_in(d.path(), missing)
            .unwrap_err()
            .message
            .contains("no service"));
        let unhealthy = "services:\n  main:\n    depends_on: {a: {condition: service_healthy}}\n  a:\n    image: x\n";
        assert!(parse_in(d.path(), unhealthy)
            .unwrap_err()
            .message
            .contains("needs a healthcheck"));
        let escape = "services:\n  a:\n    build: ../..\n";
        assert!(parse_in(d.path(), escape)
            .unwrap_err()
            .message
            .contains("inside environment/"));
    }

    #[test]
    fn interpolation() {
        let d = env_dir();
        let vars = BTreeMap::from([("MAIN_IMAGE_NAME".to_string(), "img".to_string())]);
        let p = parse(
            "services:\n  a:\n    image: ${MAIN_IMAGE_NAME}\n    command: [\"sh\", \"-c\", \"echo $$HOME ${UNSET_ROLLOUT_X-dflt}\"]\n",
            &d.path().join("compose.yaml"),
            d.path(),
            &vars,
        )
        .unwrap();
        assert_eq!(p.services["a"].image, ServiceImage::Image("img".into()));
        assert_eq!(
            p.services["a"].command.as_ref().unwrap()[2],
            "echo $HOME dflt"
        );
        let e = parse_in(d.path(), "services:\n  a:\n    image: $X\n").unwrap_err();
        assert!(e.message.contains("${VAR}"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("2x"), None);
    }
}
