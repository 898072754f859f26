//! The context recorded with a traced command besides its files: the active Python
//! interpreter's packages and the experiment-tracker runs the command reported to.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
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
/// `extra` (`python` only when `packages`).
pub fn capture(packages: bool, extra: &BTreeMap<String, String>) -> Value {
    let var = |name: &str| -> Option<String> {
        extra
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
            .filter(|v| !v.is_empty())
    };
    let mut out = json!({"trackers": trackers(&var)});
    if packages {
        out["python"] = python_packages(&var);
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

const LIST_PACKAGES: &str = "import importlib.metadata as m, json, sys\n\
d = {}\n\
for x in m.distributions():\n    n = x.metadata['Name']\n    if n: d[n] = x.version\n\
print(json.dumps({'version': sys.version.split()[0], 'packages': d}))\n";

/// `{"interpreter", "version", "packages": {name: version}}` of the active interpreter (the
/// `pip list` of it, read through importlib.metadata), `{"error": …}` when it cannot be listed
/// within [`PACKAGES_TIMEOUT`], or null when there is no interpreter.
pub fn python_packages(var: &dyn Fn(&str) -> Option<String>) -> Value {
    let Some(python) = interpreter(var) else {
        return Value::Null;
    };
    match run_capped(&python, PACKAGES_TIMEOUT) {
        Ok(text) => match serde_json::from_str::<Value>(&text) {
            Ok(mut v) => {
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
                v
            }
            Err(e) => {
                json!({"interpreter": python, "error": format!("unreadable package list: {e}")})
            }
        },
        Err(e) => json!({"interpreter": python, "error": e}),
    }
}

/// Run `python -c LIST_PACKAGES`, killed after `timeout`; its stdout, capped.
fn run_capped(python: &std::path::Path, timeout: Duration) -> Result<String, String> {
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
