//! Job-level `metrics:` that run a program: Harbor's `uv-script` metric.
//!
//! The program gets the rewards of every finished trial as JSONL (one object per line, `null`
//! for a trial without rewards) in a file given with `-i`, and writes a JSON object of metrics
//! to the file given with `-o`. It runs with `uv run` when `uv` is installed, else (for a `.py`
//! script) with `python3`; bounded by [`SCRIPT_TIMEOUT`], its stderr and output capped.

use rollout_core::job_config::{MetricKind, MetricSpec};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a metric program may run.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest metrics file read back.
const OUTPUT_CAP: u64 = 1 << 20;
/// Tail of stderr shown when the program fails.
const STDERR_CAP: usize = 4096;

/// The rewards of the job's trials, in trial-name order (`null` for none).
pub fn trial_rewards(job_dir: &Path) -> Vec<Value> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(job_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("result.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.iter()
        .filter_map(|d| std::fs::read_to_string(d.join("result.json")).ok())
        .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
        .map(|v| v.get("rewards").cloned().unwrap_or(Value::Null))
        .collect()
}

/// Run every script metric of `specs` over `rewards`; the metrics of all of them, merged.
pub async fn run_scripts(
    specs: &[MetricSpec],
    rewards: &[Value],
) -> Result<BTreeMap<String, Value>, String> {
    let mut out = BTreeMap::new();
    for spec in specs.iter().filter(|s| s.kind == MetricKind::UvScript) {
        let script = spec
            .kwargs
            .get("script_path")
            .and_then(Value::as_str)
            .ok_or("a uv-script metric needs kwargs.script_path")?;
        out.extend(run_script(Path::new(script), rewards).await?);
    }
    Ok(out)
}

/// The program for `script`: `uv run SCRIPT`, or `python3 SCRIPT` where uv is absent.
fn command_for(script: &Path) -> Result<tokio::process::Command, String> {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
    };
    if on_path("uv") {
        let mut c = tokio::process::Command::new("uv");
        c.arg("run").arg(script);
        Ok(c)
    } else if script.extension().is_some_and(|e| e == "py") && on_path("python3") {
        let mut c = tokio::process::Command::new("python3");
        c.arg(script);
        Ok(c)
    } else {
        Err(format!(
            "cannot run metric script {}: install uv (https://docs.astral.sh/uv/) or python3",
            script.display()
        ))
    }
}

async fn run_script(script: &Path, rewards: &[Value]) -> Result<BTreeMap<String, Value>, String> {
    if !script.is_file() {
        return Err(format!(
            "metric script {} not found (paths are relative to the directory rollout runs in)",
            script.display()
        ));
    }
    let tmp = tempfile::tempdir().map_err(|e| format!("creating a temporary directory: {e}"))?;
    let input = tmp.path().join("rewards.jsonl");
    let output = tmp.path().join("metric.json");
    let stderr_path = tmp.path().join("stderr.txt");
    let mut jsonl = String::new();
    for r in rewards {
        jsonl.push_str(&r.to_string());
        jsonl.push('\n');
    }
    std::fs::write(&input, jsonl).map_err(|e| format!("writing {}: {e}", input.display()))?;
    let stderr = std::fs::File::create(&stderr_path)
        .map_err(|e| format!("creating {}: {e}", stderr_path.display()))?;
    let mut cmd = command_for(script)?;
    cmd.arg("-i")
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting metric script {}: {e}", script.display()))?;
    let status = match tokio::time::timeout(SCRIPT_TIMEOUT, child.wait()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("waiting for {}: {e}", script.display())),
        Err(_) => {
            let _ = child.kill().await;
            return Err(format!(
                "metric script {} ran past its {} s timeout and was killed",
                script.display(),
                SCRIPT_TIMEOUT.as_secs()
            ));
        }
    };
    if !status.success() {
        let text = std::fs::read(&stderr_path).unwrap_or_default();
        let tail = String::from_utf8_lossy(&text[text.len().saturating_sub(STDERR_CAP)..]);
        return Err(format!(
            "metric script {} failed ({status}): {}",
            script.display(),
            tail.trim()
        ));
    }
    let size = std::fs::metadata(&output)
        .map_err(|_| format!("metric script {} wrote no -o file", script.display()))?
        .len();
    if size > OUTPUT_CAP {
        return Err(format!(
            "metric script {} wrote {size} bytes of metrics, over the {} KiB cap",
            script.display(),
            OUTPUT_CAP >> 10
        ));
    }
    let text = std::fs::read_to_string(&output).map_err(|e| format!("reading metrics: {e}"))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => Ok(map.into_iter().collect()),
        _ => Err(format!(
            "metric script {} must write a JSON object of metrics, e.g. {{\"accuracy\": 0.5}}",
            script.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(script: &Path) -> MetricSpec {
        MetricSpec {
            kind: MetricKind::UvScript,
            kwargs: BTreeMap::from([(
                "script_path".to_string(),
                Value::String(script.display().to_string()),
            )]),
        }
    }

    #[tokio::test]
    async fn a_script_gets_the_rewards_and_its_metrics_come_back() {
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("m.py");
        std::fs::write(
            &script,
            "import json, sys\nargs = dict(zip(sys.argv[1::2], sys.argv[2::2]))\nrows = [json.loads(l) for l in open(args['-i'])]\njson.dump({'n': len(rows), 'nulls': sum(r is None for r in rows), 'c': sum(r['c'] for r in rows if r)}, open(args['-o'], 'w'))\n",
        )
        .unwrap();
        let rewards = [
            serde_json::json!({"c": 1}),
            Value::Null,
            serde_json::json!({"c": 0.5}),
        ];
        let m = run_scripts(&[spec(&script)], &rewards).await.unwrap();
        assert_eq!(m["n"], 3);
        assert_eq!(m["nulls"], 1);
        assert_eq!(m["c"], 1.5);
    }

    #[tokio::test]
    async fn failures_say_what_went_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("bad.py");
        std::fs::write(
            &script,
            "import sys\nsys.stderr.write('boom')\nsys.exit(3)\n",
        )
        .unwrap();
        let e = run_scripts(&[spec(&script)], &[]).await.unwrap_err();
        assert!(e.contains("boom"), "{e}");
        let e = run_scripts(&[spec(&tmp.path().join("none.py"))], &[])
            .await
            .unwrap_err();
        assert!(e.contains("not found"), "{e}");
        std::fs::write(&script, "import sys\nopen(sys.argv[4], 'w').write('[1]')\n").unwrap();
        let e = run_scripts(&[spec(&script)], &[]).await.unwrap_err();
        assert!(e.contains("JSON object"), "{e}");
    }
}
