//! Dataset registries (FORMATS.md §3): a JSON array of
//! `{name, version, description, tasks: [{name, git_url, git_commit_id?, path?}], metrics?}`.
//!
//! An empty or missing `git_commit_id` means the default branch's HEAD; an empty or missing `path`
//! means the repository root. Datasets are resolved into ordinary [`Task`]s through the
//! [`GitCache`]: each (git_url, commit) is cloned once, in parallel.

use crate::git::{commit_problem, GitCache, SourceError};
use rollout_core::Task;
use serde::{Deserialize, Deserializer, Serialize};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Timeout for downloading a registry.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest registry accepted.
const MAX_REGISTRY_BYTES: u64 = 64 << 20;

/// A parsed registry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Registry {
    pub datasets: Vec<RegistryDataset>,
}

/// One dataset of a registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistryDataset {
    #[serde(deserialize_with = "de::name")]
    pub name: String,
    /// A string (a JSON number is accepted and kept as written).
    #[serde(deserialize_with = "de::version")]
    pub version: String,
    #[serde(default, deserialize_with = "de::string_or_null")]
    pub description: String,
    pub tasks: Vec<RegistryTask>,
    /// Kept as given (`null` when absent); not interpreted.
    #[serde(default)]
    pub metrics: serde_json::Value,
}

/// One task of a dataset: a directory of a git repository at a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryTask {
    #[serde(deserialize_with = "de::name")]
    pub name: String,
    #[serde(deserialize_with = "de::non_empty")]
    pub git_url: String,
    /// None (missing, null or empty): the default branch's HEAD.
    #[serde(
        default,
        deserialize_with = "de::commit",
        skip_serializing_if = "Option::is_none"
    )]
    pub git_commit_id: Option<String>,
    /// Relative directory of the task in the repository; None (missing, null or empty): the root.
    #[serde(
        default,
        deserialize_with = "de::rel_path",
        skip_serializing_if = "Option::is_none"
    )]
    pub path: Option<String>,
}

impl Registry {
    /// Load a registry from a local path (or `file://` URL) or an http(s) URL.
    pub fn load(location: &str) -> Result<Self, SourceError> {
        Self::load_with(location, None)
    }

    /// [`Registry::load`], fetching only what `policy` allows (`rollout serve`): a URL is
    /// downloaded from the checked addresses only, without following redirects.
    pub fn load_with(
        location: &str,
        policy: Option<&crate::policy::RemotePolicy>,
    ) -> Result<Self, SourceError> {
        let mut pin = None;
        if let Some(policy) = policy {
            let refused = |message: String| SourceError::Registry {
                origin: location.to_string(),
                line: None,
                column: None,
                field: None,
                message,
            };
            match policy.check_registry(location).map_err(refused)? {
                crate::policy::Access::Remote {
                    host, port, pin: p, ..
                } => pin = Some((host, crate::policy::pinned_addrs(&p, port))),
                crate::policy::Access::Local(_) => {}
            }
        }
        let lower = location.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let text = fetch_text(location, pin)?;
            return Self::parse(&text, location);
        }
        let path = location.strip_prefix("file://").unwrap_or(location);
        let text = std::fs::read_to_string(path).map_err(|e| SourceError::Registry {
            origin: location.to_string(),
            line: None,
            column: None,
            field: None,
            message: format!(
                "cannot read the registry: {e}; give the path of a registry.json or an http(s) URL"
            ),
        })?;
        Self::parse(&text, location)
    }

    /// Parse registry JSON; errors name `origin`, the line and the field at fault.
    pub fn parse(text: &str, origin: &str) -> Result<Self, SourceError> {
        let err = |line: Option<usize>, column: Option<usize>, field: Option<String>, message| {
            SourceError::Registry {
                origin: origin.to_string(),
                line,
                column,
                field,
                message,
            }
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = serde_path_to_error::deserialize::<_, Vec<RegistryDataset>>(&mut de)
            .map_err(|e| (e.path().to_string(), e.into_inner()))
            .and_then(|d| de.end().map(|()| d).map_err(|e| (".".to_string(), e)));
        let datasets = match parsed {
            Ok(d) => d,
            Err((path, inner)) => {
                let (line, column) = match inner.line() {
                    0 => (None, None),
                    l => (Some(l), Some(inner.column())),
                };
                let mut message = inner.to_string();
                if let Some(i) = message.rfind(" at line ") {
                    message.truncate(i);
                }
                let mut field = (path != ".").then_some(path);
                if let Some(name) = message
                    .strip_prefix("missing field `")
                    .and_then(|r| r.split('`').next())
                {
                    field = Some(match field {
                        Some(p) => format!("{p}.{name}"),
                        None => name.to_string(),
                    });
                }
                if field.is_none() && message.contains("expected a sequence") {
                    message.push_str(
                        "; a registry is a JSON array of datasets: \
                         [{\"name\", \"version\", \"description\", \"tasks\": [...]}]",
                    );
                }
                return Err(err(line, column, field, message));
            }
        };
        let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, d) in datasets.iter().enumerate() {
            if let Some(first) = seen.insert((&d.name, &d.version), i) {
                return Err(err(
                    None,
                    None,
                    Some(format!("[{i}].version")),
                    format!(
                        "dataset {}@{} is listed twice (also at [{first}]); give each version once",
                        d.name, d.version
                    ),
                ));
            }
            let mut names: HashMap<&str, usize> = HashMap::new();
            for (j, t) in d.tasks.iter().enumerate() {
                if let Some(first) = names.insert(&t.name, j) {
                    return Err(err(
                        None,
                        None,
                        Some(format!("[{i}].tasks[{j}].name")),
                        format!(
                            "task {:?} appears twice in dataset {}@{} (also at tasks[{first}]); task names must be unique",
                            t.name, d.name, d.version
                        ),
                    ));
                }
            }
        }
        Ok(Self { datasets })
    }

    /// The dataset `name` at `version`; with no version, the only one or the highest (compared
    /// numerically per dot-separated part, else as strings). The error lists what is available.
    pub fn find(&self, name: &str, version: Option<&str>) -> Result<&RegistryDataset, SourceError> {
        let version = version.map(str::trim).filter(|v| !v.is_empty());
        let same_name: Vec<&RegistryDataset> =
            self.datasets.iter().filter(|d| d.name == name).collect();
        let found = match version {
            Some(v) => same_name.iter().copied().find(|d| d.version == v),
            None => same_name
                .iter()
                .copied()
                .max_by(|a, b| compare_versions(&a.version, &b.version)),
        };
        found.ok_or_else(|| {
            let listed = if same_name.is_empty() {
                self.datasets.iter().collect()
            } else {
                same_name
            };
            let mut available: Vec<String> = listed
                .iter()
                .map(|d| format!("{}@{}", d.name, d.version))
                .collect();
            available.sort();
            available.dedup();
            SourceError::DatasetNotFound {
                name: name.to_string(),
                version: version.map(str::to_string),
                available,
            }
        })
    }
}

/// `NAME@VERSION` → (name, Some(version)); `NAME` (or `NAME@`) → (name, None). The last `@` splits.
pub fn parse_dataset_ref(s: &str) -> (String, Option<String>) {
    let s = s.trim();
    match s.rsplit_once('@') {
        Some((name, version)) if !name.is_empty() => {
            let version = version.trim();
            (
                name.trim().to_string(),
                (!version.is_empty()).then(|| version.to_string()),
            )
        }
        _ => (s.to_string(), None),
    }
}

/// Order of two versions: numerically per dot-separated part where both parts are numbers,
/// otherwise as strings; more parts is higher when all shared parts are equal.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let mut pa = a.split('.');
    let mut pb = b.split('.');
    loop {
        match (pa.next(), pb.next()) {
            (Some(x), Some(y)) => {
                let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    _ => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
            (Some(_), None) => return Ordering::Greater,
            (None, Some(_)) => return Ordering::Less,
            (None, None) => return a.cmp(b),
        }
    }
}

/// Check out every task's repository (deduplicated, `parallel` at once) and load each task
/// directory (`<checkout>/<path>`). Each task is named by its registry name and carries the
/// dataset's name. Sorted by name; the error lists every task that failed.
pub fn resolve_dataset(
    ds: &RegistryDataset,
    cache: &GitCache,
    parallel: usize,
) -> Result<Vec<Task>, Vec<SourceError>> {
    if ds.tasks.is_empty() {
        return Err(vec![SourceError::Registry {
            origin: format!("dataset {}@{}", ds.name, ds.version),
            line: None,
            column: None,
            field: Some("tasks".into()),
            message: "the dataset lists no tasks".into(),
        }]);
    }
    let requests: Vec<(String, Option<String>)> = ds
        .tasks
        .iter()
        .map(|t| (t.git_url.clone(), t.git_commit_id.clone()))
        .collect();
    let checkouts = cache.checkout_many(&requests, parallel);
    let mut tasks = Vec::new();
    let mut errors = Vec::new();
    for (rt, checkout) in ds.tasks.iter().zip(checkouts) {
        let loaded = checkout.and_then(|co| load_task(rt, &co.dir, &co.commit));
        match loaded {
            Ok(mut task) => {
                task.name = rt.name.clone();
                task.dataset = Some(ds.name.clone());
                tasks.push(task);
            }
            Err(e) => errors.push(SourceError::InTask {
                dataset: format!("{}@{}", ds.name, ds.version),
                task: rt.name.clone(),
                source: Box::new(e),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    tasks.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.dir.cmp(&b.dir)));
    Ok(tasks)
}

/// Load `<checkout>/<path>`, refusing paths that leave the checkout.
fn load_task(rt: &RegistryTask, checkout: &Path, commit: &str) -> Result<Task, SourceError> {
    let path = rt.path.as_deref().unwrap_or("");
    let bad = |message: String| SourceError::TaskPath {
        url: rt.git_url.clone(),
        commit: commit.to_string(),
        path: path.to_string(),
        message,
    };
    let rel = safe_rel_path(path).map_err(|m| bad(m.to_string()))?;
    let dir = checkout.join(rel);
    if !dir.is_dir() {
        return Err(bad(
            "no such directory in the checkout; check the task's `path` in the registry (relative to the repository root)"
                .into(),
        ));
    }
    let inside = match (dir.canonicalize(), checkout.canonicalize()) {
        (Ok(d), Ok(c)) => d.starts_with(c),
        _ => false,
    };
    if !inside {
        return Err(bad(
            "leads outside the repository (through a symlink); point `path` at a real directory"
                .into(),
        ));
    }
    Task::load_or_invalid(&dir).map_err(|error| SourceError::TaskLoad { error })
}

/// A relative path with no `..`, root or prefix components.
fn safe_rel_path(path: &str) -> Result<PathBuf, &'static str> {
    let p = Path::new(path);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("`path` must not contain `..`"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("`path` must be relative to the repository root")
            }
        }
    }
    Ok(out)
}

/// GET `url` as text, on a thread of its own (the blocking client must not run inside an async
/// runtime), with a timeout and a size limit.
/// `pin` (under a policy): connect to these addresses only, and follow no redirect.
fn fetch_text(
    url: &str,
    pin: Option<(String, Vec<std::net::SocketAddr>)>,
) -> Result<String, SourceError> {
    let owned = url.to_string();
    let result = std::thread::spawn(move || -> Result<String, String> {
        let mut builder = reqwest::blocking::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("rollout/", env!("CARGO_PKG_VERSION")));
        if let Some((host, addrs)) = &pin {
            builder = builder.redirect(reqwest::redirect::Policy::none());
            if !addrs.is_empty() {
                builder = builder.resolve_to_addrs(host, addrs);
            }
        }
        let client = builder.build().map_err(|e| error_chain(&e))?;
        let resp = client.get(&owned).send().map_err(|e| error_chain(&e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("the server answered HTTP {status}"));
        }
        let mut body = Vec::new();
        resp.take(MAX_REGISTRY_BYTES + 1)
            .read_to_end(&mut body)
            .map_err(|e| error_chain(&e))?;
        if body.len() as u64 > MAX_REGISTRY_BYTES {
            return Err(format!(
                "the registry is larger than {} MiB",
                MAX_REGISTRY_BYTES >> 20
            ));
        }
        String::from_utf8(body).map_err(|_| "the registry is not UTF-8 text".to_string())
    })
    .join()
    .unwrap_or_else(|_| Err("the download thread panicked".into()));
    result.map_err(|message| SourceError::Fetch {
        url: url.to_string(),
        message,
    })
}

/// An error and its sources, joined with `: `.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

/// Field deserializers that validate as they read, so errors carry a line and a field path.
mod de {
    use super::*;
    use serde::de::Error;

    pub fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Err(D::Error::custom("must not be empty"));
        }
        Ok(s.trim().to_string())
    }

    pub fn name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let s = non_empty(d)?;
        if s == "." || s == ".." || s.contains(['/', '\\']) || s.chars().any(char::is_control) {
            return Err(D::Error::custom(format!(
                "invalid name {s:?}: no `/`, `\\` or control characters, and not `.` or `..`"
            )));
        }
        Ok(s)
    }

    pub fn version<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            serde_json::Value::String(_) => Err(D::Error::custom("must not be empty")),
            other => Err(D::Error::custom(format!(
                "expected a version string such as \"1.0\", found {other}"
            ))),
        }
    }

    pub fn string_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
    }

    fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<String>::deserialize(d)?
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()))
    }

    pub fn commit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let c = optional(d)?;
        if let Some(problem) = c.as_deref().and_then(commit_problem) {
            return Err(D::Error::custom(format!(
                "invalid commit {:?}: {problem}",
                c.unwrap_or_default()
            )));
        }
        Ok(c)
    }

    pub fn rel_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let p = optional(d)?;
        if let Some(p) = &p {
            safe_rel_path(p).map_err(D::Error::custom)?;
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_refs() {
        assert_eq!(
            parse_dataset_ref("tb@2.0"),
            ("tb".into(), Some("2.0".into()))
        );
        assert_eq!(parse_dataset_ref("tb"), ("tb".into(), None));
        assert_eq!(parse_dataset_ref("tb@"), ("tb".into(), None));
        assert_eq!(
            parse_dataset_ref("org@x@1"),
            ("org@x".into(), Some("1".into()))
        );
    }

    #[test]
    fn versions_compare_numerically_then_as_strings() {
        assert_eq!(compare_versions("1.10", "1.9"), Ordering::Greater);
        assert_eq!(compare_versions("2.0", "10.0"), Ordering::Less);
        assert_eq!(compare_versions("1.0.1", "1.0"), Ordering::Greater);
        assert_eq!(compare_versions("1.0", "1.0"), Ordering::Equal);
        assert_eq!(compare_versions("1.0-beta", "1.0-alpha"), Ordering::Greater);
    }

    fn reg(json: &str) -> Result<Registry, SourceError> {
        Registry::parse(json, "reg.json")
    }

    #[test]
    fn optional_fields_default_and_empty_means_none() {
        let r = reg(r#"[{"name":"d","version":1.5,"tasks":[
            {"name":"a","git_url":"u","git_commit_id":"","path":""},
            {"name":"b","git_url":"u","git_commit_id":null,"path":"./x/y"}]}]"#)
        .unwrap();
        let d = &r.datasets[0];
        assert_eq!(d.version, "1.5");
        assert_eq!(d.description, "");
        assert_eq!(d.metrics, serde_json::Value::Null);
        assert_eq!(d.tasks[0].git_commit_id, None);
        assert_eq!(d.tasks[0].path, None);
        assert_eq!(d.tasks[1].path.as_deref(), Some("./x/y"));
    }

    #[test]
    fn errors_name_origin_line_and_field() {
        let e =
            reg("[\n {\"name\": \"d\", \"version\": \"1\",\n  \"tasks\": [{\"name\": \"a\"}]}]")
                .unwrap_err();
        let SourceError::Registry { field, line, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(field.as_deref(), Some("[0].tasks[0].git_url"), "{e}");
        assert_eq!(*line, Some(3), "{e}");
        assert!(
            e.to_string().starts_with("registry reg.json, line 3"),
            "{e}"
        );

        let e = reg(
            r#"[{"name":"d","version":"1","tasks":[{"name":"a","git_url":"u","path":"../up"}]}]"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("field `[0].tasks[0].path`"), "{e}");
        assert!(e.to_string().contains(".."), "{e}");

        let e = reg(r#"[{"name":"d","version":"1","tasks":[{"name":"a","git_url":"u","git_commit_id":"--upload-pack=x"}]}]"#)
            .unwrap_err();
        assert!(e.to_string().contains("[0].tasks[0].git_commit_id"), "{e}");

        let e = reg(r#"{"datasets": []}"#).unwrap_err();
        assert!(e.to_string().contains("JSON array of datasets"), "{e}");

        let e = reg(r#"[] x"#).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");

        let e = reg(r#"[{"name":"d","version":"1","tasks":[{"name":"a","git_url":"u"},{"name":"a","git_url":"v"}]}]"#)
            .unwrap_err();
        assert!(e.to_string().contains("[0].tasks[1].name"), "{e}");
    }

    #[test]
    fn find_picks_versions() {
        let r = reg(r#"[
            {"name":"d","version":"1.9","tasks":[]},
            {"name":"d","version":"1.10","tasks":[]},
            {"name":"e","version":"head","tasks":[]}]"#)
        .unwrap();
        assert_eq!(r.find("d", None).unwrap().version, "1.10");
        assert_eq!(r.find("d", Some("1.9")).unwrap().version, "1.9");
        assert_eq!(r.find("e", None).unwrap().version, "head");
        let e = r.find("d", Some("3")).unwrap_err().to_string();
        assert!(e.contains("d@1.10, d@1.9") && e.contains("d@3"), "{e}");
        let e = r.find("zzz", None).unwrap_err().to_string();
        assert!(e.contains("e@head"), "{e}");
    }

    #[test]
    fn paths_must_stay_inside() {
        assert!(safe_rel_path("a/../b").is_err());
        assert!(safe_rel_path("/etc").is_err());
        assert_eq!(safe_rel_path("./a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(safe_rel_path("").unwrap(), PathBuf::new());
    }
}
