//! The context recorded with a traced command besides its files: the active Python
//! interpreter's packages and the experiment-tracker runs the command reported to.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long listing the Python packages may take.
pub const PACKAGES_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of the listing read.
const PACKAGES_OUTPUT_CAP: u64 = 1 << 20;
/// Packages kept.
const MAX_PACKAGES: usize = 5000;

/// The tracker variables recorded, per tracker: (tracker, field, variable). Keys and tokens
/// (`WANDB_API_KEY`, `MLFLOW_TRACKING_TOKEN` …) are never among them.
const TRACKER_VARS: &[(&str, &str, &str)] = &[
    ("wandb", "run_id", "WANDB_RUN_ID"),
    ("wandb", "project", "WANDB_PROJECT"),
    ("wandb", "entity", "WANDB_ENTITY"),
    ("wandb", "run_group", "WANDB_RUN_GROUP"),
    ("wandb", "base_url", "WANDB_BASE_URL"),
    ("mlflow", "run_id", "MLFLOW_RUN_ID"),
    ("mlflow", "experiment_id", "MLFLOW_EXPERIMENT_ID"),
    ("mlflow", "experiment_name", "MLFLOW_EXPERIMENT_NAME"),
    ("mlflow", "tracking_uri", "MLFLOW_TRACKING_URI"),
    ("neptune", "project", "NEPTUNE_PROJECT"),
    ("neptune", "custom_run_id", "NEPTUNE_CUSTOM_RUN_ID"),
];

/// `{"trackers": …, "python": …}` for a command run with the process's environment plus
/// `extra` (`python` only when `packages`). `cache`: the file where package lists are kept
/// between traces (see [`python_packages`]).
pub fn capture(packages: bool, extra: &BTreeMap<String, String>, cache: Option<&Path>) -> Value {
    let var = |name: &str| -> Option<String> {
        extra
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
            .filter(|v| !v.is_empty())
    };
    let mut out = json!({"trackers": trackers(&var)});
    if packages {
        out["python"] = python_packages(&var, cache);
    }
    out
}

/// The tracker runs named by the environment, with a link when it can be built.
pub fn trackers(var: &dyn Fn(&str) -> Option<String>) -> Value {
    let mut out = Map::new();
    for (tracker, field, name) in TRACKER_VARS {
        if let Some(v) = var(name) {
            let entry = out.entry(tracker.to_string()).or_insert_with(|| json!({}));
            entry[*field] = json!(v);
        }
    }
    if let Some(w) = out.get_mut("wandb") {
        let url = match (
            w["entity"].as_str(),
            w["project"].as_str(),
            w["run_id"].as_str(),
        ) {
            (Some(e), Some(p), Some(r)) => {
                let base = w["base_url"]
                    .as_str()
                    .unwrap_or("https://wandb.ai")
                    .trim_end_matches('/')
                    .replace("api.wandb.ai", "wandb.ai");
                Some(format!("{base}/{e}/{p}/runs/{r}"))
            }
            _ => None,
        };
        if let Some(u) = url {
            w["url"] = json!(u);
        }
    }
    if let Some(m) = out.get_mut("mlflow") {
        let url = match (
            m["tracking_uri"].as_str(),
            m["experiment_id"].as_str(),
            m["run_id"].as_str(),
        ) {
            (Some(u), Some(x), Some(r))
                if u.starts_with("http://") || u.starts_with("https://") =>
            {
                Some(format!(
                    "{}/#/experiments/{x}/runs/{r}",
                    u.trim_end_matches('/')
                ))
            }
            _ => None,
        };
        if let Some(u) = url {
            m["url"] = json!(u);
        }
    }
    Value::Object(out)
}

/// The active interpreter: `$VIRTUAL_ENV/bin/python`, else `python3` on `PATH`.
fn interpreter(var: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(venv) = var("VIRTUAL_ENV") {
        let p = PathBuf::from(venv).join("bin/python");
        if p.is_file() {
            return Some(p);
        }
    }
    let path = var("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("python3"))
        .find(|p| p.is_file())
}

/// Prints the interpreter's version and packages, and what the listing depends on (`stamps`):
/// the import path's directories (installing or removing a package adds or removes an entry in
/// one) and each distribution's metadata file (an editable project's version bump rewrites it).
const LIST_PACKAGES: &str = r#"import importlib.metadata as m, json, os, sys
d = {}
stamps = [p for p in sys.path if p]
for x in m.distributions():
    n = x.metadata['Name']
    if n:
        d[n] = x.version
    p = getattr(x, '_path', None)
    if p is not None:
        p = str(p)
        for f in ('METADATA', 'PKG-INFO'):
            if os.path.isfile(os.path.join(p, f)):
                p = os.path.join(p, f)
                break
        stamps.append(p)
print(json.dumps({'version': sys.version.split()[0], 'packages': d, 'stamps': stamps}))
"#;

/// How a listed file stood: (path, size, mtime in ns), or no size/mtime when it is missing.
type Stamp = (String, Option<u64>, Option<i128>);

fn stamp(path: &str) -> Stamp {
    match std::fs::metadata(path) {
        Ok(m) => {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as i128);
            (path.to_string(), Some(m.len()), mtime)
        }
        Err(_) => (path.to_string(), None, None),
    }
}

/// One interpreter's cached listing: valid while every stamp (the interpreter's first) is
/// unchanged.
#[derive(serde::Serialize, serde::Deserialize)]
struct CachedListing {
    stamps: Vec<Stamp>,
    value: Value,
}

/// Listings kept between traces, by interpreter path.
type ListingCache = BTreeMap<String, CachedListing>;

/// Cache files larger than this are ignored (and rewritten).
const CACHE_CAP: u64 = 16 << 20;

fn read_cache(path: &Path) -> ListingCache {
    std::fs::File::open(path)
        .ok()
        .filter(|f| f.metadata().is_ok_and(|m| m.len() <= CACHE_CAP))
        .and_then(|f| serde_json::from_reader(std::io::BufReader::new(f)).ok())
        .unwrap_or_default()
}

/// Write the cache through a temporary file and a rename, so a concurrent reader sees the old
/// or the new file, never half of one. Failing to write only costs the next trace a listing.
fn write_cache(path: &Path, cache: &ListingCache) {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let ok = serde_json::to_vec(cache)
        .ok()
        .is_some_and(|bytes| std::fs::write(&tmp, bytes).is_ok())
        && std::fs::rename(&tmp, path).is_ok();
    if !ok {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// `{"interpreter", "version", "packages": {name: version}}` of the active interpreter (the
/// `pip list` of it, read through importlib.metadata), `{"error": …}` when it cannot be listed
/// within [`PACKAGES_TIMEOUT`], or null when there is no interpreter. With `cache`, a listing
/// is reused while the interpreter, its import directories and its distributions' metadata
/// files are unchanged (starting Python costs a short command more than tracing it).
pub fn python_packages(var: &dyn Fn(&str) -> Option<String>, cache: Option<&Path>) -> Value {
    let Some(python) = interpreter(var) else {
        return Value::Null;
    };
    let key = python.to_string_lossy().into_owned();
    let mut cached = cache.map(read_cache).unwrap_or_default();
    if let Some(c) = cached.get(&key) {
        if c.stamps.iter().all(|s| stamp(&s.0) == *s) {
            return c.value.clone();
        }
    }
    let (value, stamps) = list_packages(&python);
    if let (Some(path), Some(mut stamps)) = (cache, stamps) {
        stamps.insert(0, stamp(&key));
        cached.insert(
            key,
            CachedListing {
                stamps,
                value: value.clone(),
            },
        );
        write_cache(path, &cached);
    }
    value
}

/// Run the listing: its value, and its stamps when it succeeded.
fn list_packages(python: &Path) -> (Value, Option<Vec<Stamp>>) {
    match run_capped(python, PACKAGES_TIMEOUT) {
        Ok(text) => match serde_json::from_str::<Value>(&text) {
            Ok(mut v) => {
                let stamps = v
                    .as_object_mut()
                    .and_then(|o| o.remove("stamps"))
                    .and_then(|s| serde_json::from_value::<Vec<String>>(s).ok())
                    .map(|paths| paths.iter().map(|p| stamp(p)).collect());
                let mut truncated = false;
                if let Some(p) = v["packages"].as_object_mut() {
                    let mut sorted: Vec<(String, Value)> = std::mem::take(p).into_iter().collect();
                    sorted.sort_by_key(|(k, _)| k.to_ascii_lowercase());
                    truncated = sorted.len() > MAX_PACKAGES;
                    sorted.truncate(MAX_PACKAGES);
                    *p = sorted.into_iter().collect();
                }
                v["interpreter"] = json!(python);
                if truncated {
                    v["truncated"] = json!(true);
                }
                (v, stamps)
            }
            Err(e) => (
                json!({"interpreter": python, "error": format!("unreadable package list: {e}")}),
                None,
            ),
        },
        Err(e) => (json!({"interpreter": python, "error": e}), None),
    }
}

/// Run `python -c LIST_PACKAGES`, killed after `timeout`; its stdout, capped.
fn run_capped(python: &Path, timeout: Duration) -> Result<String, String> {
    let mut child = Command::new(python)
        .args(["-I", "-c", LIST_PACKAGES])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = stdout {
            let _ = o.take(PACKAGES_OUTPUT_CAP).read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for {}: {e}", python.display())),
        }
    };
    let out = reader.join().unwrap_or_default();
    match status {
        None => Err(format!(
            "listing the packages took longer than {} s",
            timeout.as_secs()
        )),
        Some(st) if !st.success() => Err(format!("listing the packages failed ({st})")),
        Some(_) => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_runs_and_links_come_from_their_variables_never_keys() {
        let env: BTreeMap<&str, &str> = [
            ("WANDB_RUN_ID", "abc123"),
            ("WANDB_PROJECT", "proj"),
            ("WANDB_ENTITY", "team"),
            ("WANDB_API_KEY", "secret"),
            ("MLFLOW_RUN_ID", "r1"),
            ("MLFLOW_EXPERIMENT_ID", "7"),
            ("MLFLOW_TRACKING_URI", "http://mlflow.example:5000/"),
            ("MLFLOW_TRACKING_TOKEN", "secret"),
        ]
        .into_iter()
        .collect();
        let v = trackers(&|n| env.get(n).map(|s| s.to_string()));
        assert_eq!(v["wandb"]["url"], "https://wandb.ai/team/proj/runs/abc123");
        assert_eq!(
            v["mlflow"]["url"],
            "http://mlflow.example:5000/#/experiments/7/runs/r1"
        );
        assert!(!v.to_string().contains("secret"), "{v}");
        assert_eq!(trackers(&|_| None), json!({}));
    }
}
