//! Multi-container tasks on a cluster: a task's compose services become containers of the
//! trial's one pod.
//!
//! The pod's containers share its network namespace, so the task's container (`main`) and its
//! sidecars reach each other on `localhost`; `hostAliases` map every service name (and `main`) to
//! 127.0.0.1, so that the names the compose file uses resolve as on Docker's trial network.
//! Named volumes are `emptyDir` volumes of the pod (empty at the start, gone with the pod). A
//! sidecar's `build` context is built and pushed like the task's own image; its `entrypoint`
//! and `command` are the container's `command` and `args` (Docker's ENTRYPOINT and CMD); its
//! healthcheck is a readiness probe, and `main`'s `depends_on` conditions are waited for before
//! the environment is handed over (the agent starts after them).
//!
//! What a pod cannot express is refused before anything is built ([`unsupported`]): containers
//! of a pod start together (a sidecar cannot wait for another), share one hostname and one
//! port space (no `hostname`, no port exposed by two services), run as numeric users only, and
//! have no per-container init process.

use crate::pod::{self, CONTAINER};
use crate::settings::KubeSettings;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, ExecAction, HostAlias, Pod, Probe,
    ResourceRequirements, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use rollout_core::compose::{ComposeProject, Condition, Service, ServiceHealth, MAIN};
use rollout_env::docker::DROPPED_CAPABILITIES;
use rollout_env::EnvSpec;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// What a sidecar asks the scheduler for (its limits are the trial's, as on Docker): the pod
/// is scheduled by the sum of its containers' requests, and reserving the trial's whole size
/// once per sidecar would keep small nodes from running compose trials at all.
const SIDECAR_CPU_REQUEST: &str = "10m";
const SIDECAR_MEMORY_REQUEST_MB: u64 = 32;

/// A DNS-1123 label: what a container name and a host alias must be.
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The ports an `expose` entry names (`8080`, `8080/udp`, `8000-8010`), with their protocol.
fn exposed(entry: &str) -> Vec<(u32, String)> {
    let (ports, proto) = entry.split_once('/').unwrap_or((entry, "tcp"));
    let proto = proto.to_ascii_lowercase();
    let (lo, hi) = ports.split_once('-').unwrap_or((ports, ports));
    match (lo.trim().parse::<u32>(), hi.trim().parse::<u32>()) {
        (Ok(lo), Ok(hi)) if lo <= hi && hi - lo < 65536 => {
            (lo..=hi).map(|p| (p, proto.clone())).collect()
        }
        _ => Vec::new(),
    }
}

/// A numeric `uid[:gid]`, the only user a pod's security context can name.
fn numeric_user(user: &str) -> Option<(i64, Option<i64>)> {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid = u.parse().ok()?;
    if g.is_empty() {
        return Some((uid, None));
    }
    Some((uid, Some(g.parse().ok()?)))
}

/// Why `project` cannot run as one pod, or `None` when it can.
pub fn unsupported(project: &ComposeProject) -> Option<String> {
    let file = project.file.display();
    let mut ports: BTreeMap<(u32, String), String> = BTreeMap::new();
    let main_expose = project.main.expose.iter().map(|e| (MAIN, e));
    let side_expose = project
        .services
        .values()
        .flat_map(|s| s.expose.iter().map(move |e| (s.name.as_str(), e)));
    for (svc, entry) in main_expose.chain(side_expose) {
        for port in exposed(entry) {
            if let Some(other) = ports.insert(port.clone(), svc.to_string()) {
                if other != svc {
                    return Some(format!(
                        "{file}: services `{other}` and `{svc}` both expose port {}/{}, and the containers of a pod share one network namespace (one of them could not listen)",
                        port.0, port.1
                    ));
                }
            }
        }
    }
    for s in project.services.values() {
        let at = format!("{file}: services.{}", s.name);
        if !dns_label(&s.name) {
            return Some(format!(
                "{at}: the service name must be a DNS label (lowercase letters, digits and `-`) to name a container of the pod and resolve through its host aliases"
            ));
        }
        if s.hostname.is_some() {
            return Some(format!(
                "{at}.hostname: the containers of a pod share one hostname (reach the service by its service name)"
            ));
        }
        if s.init == Some(true) {
            return Some(format!(
                "{at}.init: a pod's container has no init process of its own (bake one into the image's ENTRYPOINT, e.g. tini)"
            ));
        }
        if let Some(user) = &s.user {
            if numeric_user(user).is_none() {
                return Some(format!(
                    "{at}.user: `{user}` is a name, and a pod can only run a container as a numeric uid[:gid]"
                ));
            }
        }
        for (dep, condition) in &s.depends_on {
            if *condition != Condition::Started {
                return Some(format!(
                    "{at}.depends_on.{dep}: the containers of a pod start together, so a sidecar cannot wait for another to be {} (only main's depends_on conditions are waited for)",
                    match condition {
                        Condition::Healthy => "healthy",
                        _ => "completed",
                    }
                ));
            }
        }
    }
    None
}

/// Whole seconds, rounded up, at least `min`.
fn seconds(d: Duration, min: i32) -> i32 {
    (d.as_secs_f64().ceil() as i64).clamp(min as i64, i32::MAX as i64) as i32
}

/// A compose healthcheck as a readiness probe: ready after one passing check, as Docker's
/// `healthy`. During `start_period` Docker checks every `start_interval` when set.
pub fn readiness(h: &ServiceHealth) -> Probe {
    let command = match h.test.first().map(String::as_str) {
        Some("CMD-SHELL") => vec!["/bin/sh".into(), "-c".into(), h.test[1..].join(" ")],
        _ => h.test[1..].to_vec(),
    };
    let period = match h.start_interval {
        Some(i) if !h.start_period.is_zero() => i.min(h.interval),
        _ => h.interval,
    };
    Probe {
        exec: Some(ExecAction {
            command: Some(command),
        }),
        period_seconds: Some(seconds(period, 1)),
        timeout_seconds: Some(seconds(h.timeout, 1)),
        success_threshold: Some(1),
        failure_threshold: Some(h.retries.max(1) as i32),
        initial_delay_seconds: Some(0),
        ..Default::default()
    }
}

/// The pod volume name of compose volume number `i`.
fn volume_name(i: usize) -> String {
    format!("compose-volume-{i}")
}

fn mounts(
    names: &BTreeMap<&str, String>,
    vols: &[rollout_core::compose::VolumeMount],
) -> Option<Vec<VolumeMount>> {
    (!vols.is_empty()).then(|| {
        vols.iter()
            .map(|m| VolumeMount {
                name: names[m.volume.as_str()].clone(),
                mount_path: m.target.clone(),
                read_only: Some(m.read_only),
                ..Default::default()
            })
            .collect()
    })
}

fn sidecar(
    svc: &Service,
    image: &str,
    spec: &EnvSpec,
    volumes: &BTreeMap<&str, String>,
) -> Container {
    let mut limits = BTreeMap::from([
        ("cpu".to_string(), pod::millicores(spec.cpus)),
        ("memory".to_string(), pod::mebibytes(spec.memory_mb)),
    ]);
    let mut requests = BTreeMap::from([
        ("cpu".to_string(), Quantity(SIDECAR_CPU_REQUEST.into())),
        (
            "memory".to_string(),
            pod::mebibytes(SIDECAR_MEMORY_REQUEST_MB.min(spec.memory_mb)),
        ),
    ]);
    if spec.storage_mb > 0 {
        limits.insert("ephemeral-storage".into(), pod::mebibytes(spec.storage_mb));
        requests.insert("ephemeral-storage".into(), pod::mebibytes(0));
    }
    let (uid, gid) = svc
        .user
        .as_deref()
        .and_then(numeric_user)
        .map_or((None, None), |(u, g)| (Some(u), g));
    Container {
        name: svc.name.clone(),
        image: Some(image.into()),
        command: svc.entrypoint.clone(),
        args: svc.command.clone(),
        env: (!svc.environment.is_empty()).then(|| {
            svc.environment
                .iter()
                .map(|(k, v)| EnvVar {
                    name: k.clone(),
                    value: Some(v.clone()),
                    ..Default::default()
                })
                .collect()
        }),
        working_dir: svc.working_dir.clone(),
        tty: Some(svc.tty),
        stdin: Some(svc.stdin_open),
        readiness_probe: svc.healthcheck.as_ref().map(readiness),
        volume_mounts: mounts(volumes, &svc.volumes),
        resources: Some(ResourceRequirements {
            limits: Some(limits),
            requests: Some(requests),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(DROPPED_CAPABILITIES.iter().map(|c| c.to_string()).collect()),
                ..Default::default()
            }),
            run_as_user: uid,
            run_as_group: gid,
            ..Default::default()
        }),
        image_pull_policy: Some("IfNotPresent".into()),
        ..Default::default()
    }
}

/// The pod of a compose trial: [`pod::trial_pod`] for `main` (with the compose file's
/// additions to it), one container per sidecar (`images` by service name), the named volumes
/// as `emptyDir`, and host aliases from every service name to 127.0.0.1.
pub fn compose_pod(
    name: &str,
    main_image: &str,
    spec: &EnvSpec,
    settings: &KubeSettings,
    project: &ComposeProject,
    images: &BTreeMap<String, String>,
) -> Pod {
    let mut main_spec = spec.clone();
    // The task's own settings win over the compose file's, as on Docker.
    for (k, v) in &project.main.environment {
        main_spec.env.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let mut body = pod::trial_pod(name, main_image, &main_spec, settings);
    let volumes: BTreeMap<&str, String> = project
        .volumes
        .iter()
        .enumerate()
        .map(|(i, v)| (v.as_str(), volume_name(i)))
        .collect();
    let ps = body.spec.as_mut().expect("trial_pod sets a spec");
    ps.containers[0].volume_mounts = mounts(&volumes, &project.main.volumes);
    for svc in project.services.values() {
        ps.containers
            .push(sidecar(svc, &images[&svc.name], spec, &volumes));
    }
    if !volumes.is_empty() {
        ps.volumes = Some(
            volumes
                .values()
                .map(|n| Volume {
                    name: n.clone(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Default::default()
                })
                .collect(),
        );
    }
    let names: BTreeSet<String> = std::iter::once(MAIN.to_string())
        .chain(project.services.keys().cloned())
        .collect();
    ps.host_aliases = Some(vec![HostAlias {
        ip: "127.0.0.1".into(),
        hostnames: Some(names.into_iter().collect()),
    }]);
    debug_assert_eq!(ps.containers[0].name, CONTAINER);
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_core::task_config::NetworkMode;
    use std::path::Path;

    fn project(yaml: &str) -> ComposeProject {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("api")).unwrap();
        std::fs::write(dir.path().join("api/Dockerfile"), "FROM scratch\n").unwrap();
        rollout_core::compose::parse(
            yaml,
            Path::new("environment/docker-compose.yaml"),
            dir.path(),
            &BTreeMap::new(),
        )
        .unwrap()
    }

    fn spec() -> EnvSpec {
        EnvSpec {
            name: "t__oracle__1".into(),
            labels: BTreeMap::new(),
            cpus: 1.0,
            memory_mb: 512,
            storage_mb: 1024,
            pids_limit: 4096,
            network: NetworkMode::Public,
            allowed_hosts: Vec::new(),
            env: BTreeMap::from([("A".to_string(), "task".to_string())]),
            workdir: Some("/app".into()),
            mounts: Vec::new(),
            gpus: 0,
        }
    }

    const HTTP: &str = r#"services:
  main:
    depends_on:
      api:
        condition: service_healthy
    environment:
      A: compose
      B: compose
    volumes:
      - cache:/cache
  api:
    build:
      context: ./api
    entrypoint: ["python3"]
    command: ["-m", "http.server", "8080"]
    user: "1000:1001"
    environment:
      TOKEN: t
    expose: ["8080"]
    volumes:
      - cache:/data:ro
    healthcheck:
      test: "curl -f localhost:8080"
      interval: 2s
      timeout: 1500ms
      retries: 4
  db:
    image: debian:bookworm-slim
    command: ["sleep", "infinity"]
volumes:
  cache:
"#;

    #[test]
    fn services_become_containers_of_one_pod() {
        let p = project(HTTP);
        assert_eq!(unsupported(&p), None);
        let images = BTreeMap::from([
            ("api".to_string(), "reg/rollout-env:api".to_string()),
            ("db".to_string(), "debian:bookworm-slim".to_string()),
        ]);
        let pod = compose_pod(
            "p",
            "reg/main:1",
            &spec(),
            &KubeSettings::default(),
            &p,
            &images,
        );
        let ps = pod.spec.unwrap();
        let names: Vec<&str> = ps.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["main", "api", "db"]);
        let main = &ps.containers[0];
        let env: BTreeMap<_, _> = main
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap()))
            .collect();
        assert_eq!(env["A"], "task", "task.toml wins over the compose file");
        assert_eq!(env["B"], "compose");
        assert_eq!(main.volume_mounts.as_ref().unwrap()[0].mount_path, "/cache");
        let api = &ps.containers[1];
        assert_eq!(api.image.as_deref(), Some("reg/rollout-env:api"));
        assert_eq!(api.command.as_ref().unwrap(), &["python3"]);
        assert_eq!(api.args.as_ref().unwrap(), &["-m", "http.server", "8080"]);
        let sc = api.security_context.as_ref().unwrap();
        assert_eq!((sc.run_as_user, sc.run_as_group), (Some(1000), Some(1001)));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let m = &api.volume_mounts.as_ref().unwrap()[0];
        assert_eq!((m.mount_path.as_str(), m.read_only), ("/data", Some(true)));
        assert_eq!(
            m.name,
            main.volume_mounts.as_ref().unwrap()[0].name,
            "one emptyDir shared"
        );
        let probe = api.readiness_probe.as_ref().unwrap();
        assert_eq!(
            probe.exec.as_ref().unwrap().command.as_ref().unwrap(),
            &["/bin/sh", "-c", "curl -f localhost:8080"]
        );
        assert_eq!(probe.period_seconds, Some(2));
        assert_eq!(probe.timeout_seconds, Some(2));
        assert_eq!(probe.failure_threshold, Some(4));
        let r = api.resources.as_ref().unwrap();
        assert_eq!(r.limits.as_ref().unwrap()["memory"].0, "512Mi");
        assert_eq!(r.requests.as_ref().unwrap()["memory"].0, "32Mi");
        let db = &ps.containers[2];
        assert!(db.command.is_none(), "the image's ENTRYPOINT is kept");
        assert!(db.readiness_probe.is_none());
        let aliases = &ps.host_aliases.unwrap()[0];
        assert_eq!(aliases.ip, "127.0.0.1");
        assert_eq!(aliases.hostnames.as_ref().unwrap(), &["api", "db", "main"]);
        let vols = ps.volumes.unwrap();
        assert_eq!(vols.len(), 1);
        assert!(vols[0].empty_dir.is_some());
    }

    #[test]
    fn what_a_pod_cannot_express_is_refused_by_name() {
        let cases = [
            (
                "services:\n  a:\n    image: x\n    expose: [\"80\"]\n  b:\n    image: x\n    expose: [\"70-90\"]\n",
                "both expose port 80/tcp",
            ),
            (
                "services:\n  main:\n    expose: [\"8080\"]\n  a:\n    image: x\n    expose: [\"8080/tcp\"]\n",
                "`main` and `a` both expose port 8080",
            ),
            ("services:\n  My_Db:\n    image: x\n", "services.My_Db: the service name must be a DNS label"),
            ("services:\n  a:\n    image: x\n    hostname: h\n", "services.a.hostname"),
            ("services:\n  a:\n    image: x\n    init: true\n", "services.a.init"),
            ("services:\n  a:\n    image: x\n    user: postgres\n", "services.a.user: `postgres`"),
            (
                "services:\n  a:\n    image: x\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n  b:\n    image: x\n    depends_on:\n      a:\n        condition: service_healthy\n",
                "services.b.depends_on.a",
            ),
        ];
        for (yaml, want) in cases {
            let why = unsupported(&project(yaml)).unwrap_or_else(|| panic!("accepted: {yaml}"));
            assert!(why.contains(want), "{why}\n  should contain {want}");
        }
        // Same port in one service twice, udp next to tcp, started-only dependencies: fine.
        let ok = "services:\n  a:\n    image: x\n    expose: [\"53\", \"53/udp\"]\n    user: \"0\"\n  b:\n    image: x\n    depends_on: [a]\n";
        assert_eq!(unsupported(&project(ok)), None);
    }
}
