//! What a stage must leave behind to count as passed: deploy a `runtime_env.json` object,
//! rollout a `rollout.json` whose `paths.samples_jsonl` holds at least one valid sample,
//! evaluation and benchmark a metrics object with every required key and `ok: true` wherever
//! `ok` is present. Each failure is a reason `<stage>.<what>: detail`.

use crate::spec::{ROLLOUT_FILE, RUNTIME_ENV_FILE};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Read a JSON object, or say why not (`<stage>.<what>_missing|_invalid|_not_object`).
fn json_object(stage: &str, what: &str, path: &Path, shown: &str) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{stage}.{what}_missing: {shown} was not written ({e})"))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{stage}.{what}_invalid: {shown} is not valid JSON: {e}"))?;
    if !v.is_object() {
        return Err(format!(
            "{stage}.{what}_not_object: {shown} must hold a JSON object"
        ));
    }
    Ok(v)
}

/// Deploy setup must have written `.aider_fsm/runtime_env.json`, a JSON object.
pub fn runtime_env(repo: &Path) -> Result<Value, String> {
    json_object(
        "deploy_setup",
        "runtime_env",
        &repo.join(RUNTIME_ENV_FILE),
        RUNTIME_ENV_FILE,
    )
}

/// What a rollout produced.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutCheck {
    pub rollout_path: PathBuf,
    /// None when samples are not required and `paths.samples_jsonl` is absent.
    pub samples_path: Option<PathBuf>,
    pub valid_samples: u64,
    pub invalid_lines: u64,
    /// The first invalid line and why.
    pub first_invalid: Option<String>,
}

fn sample_problem(line: &str) -> Option<String> {
    let v: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return Some(format!("not JSON: {e}")),
    };
    let Some(o) = v.as_object() else {
        return Some("not a JSON object".into());
    };
    for k in ["prompt", "completion"] {
        if !o.get(k).is_some_and(Value::is_string) {
            return Some(format!("`{k}` is missing or not a string"));
        }
    }
    if !o.get("reward").is_some_and(Value::is_number) {
        return Some("`reward` is missing or not a number".into());
    }
    None
}

/// Rollout must have written `.aider_fsm/rollout.json` with `paths.samples_jsonl` naming a JSONL
/// file (relative to the repository) with at least one `{prompt, completion, reward}` line.
/// With `require_samples` false (`--require-samples false`, the seed's `require_samples=False`)
/// only `rollout.json` is required; samples, when named and readable, are still counted.
pub fn rollout(repo: &Path, require_samples: bool) -> Result<RolloutCheck, String> {
    let rollout_path = repo.join(ROLLOUT_FILE);
    let v = json_object("rollout", "rollout_json", &rollout_path, ROLLOUT_FILE)?;
    match samples(repo, &v) {
        Ok((samples_path, valid, invalid, first_invalid)) => Ok(RolloutCheck {
            rollout_path,
            samples_path: Some(samples_path),
            valid_samples: valid,
            invalid_lines: invalid,
            first_invalid,
        }),
        Err(_) if !require_samples => Ok(RolloutCheck {
            rollout_path,
            samples_path: v
                .pointer("/paths/samples_jsonl")
                .and_then(Value::as_str)
                .map(|r| repo.join(r)),
            valid_samples: 0,
            invalid_lines: 0,
            first_invalid: None,
        }),
        Err(e) => Err(e),
    }
}

/// The samples `rollout.json` names: (path, valid, invalid lines, first problem).
fn samples(repo: &Path, v: &Value) -> Result<(PathBuf, u64, u64, Option<String>), String> {
    let rel = v
        .pointer("/paths/samples_jsonl")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            format!(
                "rollout.samples_path_missing: {ROLLOUT_FILE} has no paths.samples_jsonl string"
            )
        })?;
    let samples_path = repo.join(rel);
    let text = std::fs::read_to_string(&samples_path).map_err(|e| {
        format!("rollout.samples_missing: paths.samples_jsonl {rel} cannot be read: {e}")
    })?;
    let (mut valid, mut invalid, mut first_invalid) = (0u64, 0u64, None);
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match sample_problem(line) {
            None => valid += 1,
            Some(p) => {
                invalid += 1;
                first_invalid.get_or_insert_with(|| format!("{rel} line {}: {p}", n + 1));
            }
        }
    }
    if valid == 0 {
        return Err(format!(
            "rollout.no_valid_samples: {rel} has no valid {{prompt, completion, reward}} line{}",
            first_invalid
                .as_ref()
                .map(|f| format!(" (first problem: {f})"))
                .unwrap_or_default()
        ));
    }
    Ok((samples_path, valid, invalid, first_invalid))
}

/// `.aider_fsm/hints_used.json`: proof that at least one official/hinted command ran.
pub const HINTS_USED_FILE: &str = ".aider_fsm/hints_used.json";
/// `.aider_fsm/hints_run.json`: the trace of the hints tried (optional).
pub const HINTS_RUN_FILE: &str = ".aider_fsm/hints_run.json";

/// With `AIDER_FSM_REQUIRE_HINTS=1`, evaluation must leave `hints_used.json`: an object with
/// `ok: true` and a non-empty `used_anchors` or `commands` list (`reason` says why otherwise).
pub fn hints_used(repo: &Path) -> Result<Value, String> {
    let v = json_object(
        "evaluation",
        "hints",
        &repo.join(HINTS_USED_FILE),
        HINTS_USED_FILE,
    )?;
    let non_empty = |k: &str| {
        v.get(k)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    if v.get("ok") != Some(&Value::Bool(true))
        || !(non_empty("used_anchors") || non_empty("commands"))
    {
        let why = v
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        return Err(format!(
            "evaluation.hints_not_used: AIDER_FSM_REQUIRE_HINTS=1 and {HINTS_USED_FILE} does not show a hint that ran (ok: true with used_anchors or commands): {why}"
        ));
    }
    Ok(v)
}

/// Evaluation or benchmark metrics: a JSON object holding every required key; `ok`, when
/// present, must be `true`.
pub fn metrics(stage: &str, repo: &Path, rel: &str, required: &[String]) -> Result<Value, String> {
    let v = json_object(stage, "metrics", &repo.join(rel), rel)?;
    let o = v.as_object().expect("checked above");
    let missing: Vec<&str> = required
        .iter()
        .filter(|k| !o.contains_key(k.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{stage}.missing_keys: {} (in {rel})",
            missing.join(", ")
        ));
    }
    if let Some(ok) = o.get("ok") {
        if ok != &Value::Bool(true) {
            return Err(format!("{stage}.ok_not_true: {rel} says ok = {ok}"));
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join(".aider_fsm")).unwrap();
        d
    }

    #[test]
    fn metrics_reasons() {
        let d = repo();
        let w = |s: &str| std::fs::write(d.path().join("m.json"), s).unwrap();
        let req = vec!["score".to_string(), "n".to_string()];
        let e = metrics("evaluation", d.path(), "m.json", &req).unwrap_err();
        assert!(e.starts_with("evaluation.metrics_missing"), "{e}");
        w("[1]");
        let e = metrics("evaluation", d.path(), "m.json", &req).unwrap_err();
        assert!(e.starts_with("evaluation.metrics_not_object"), "{e}");
        w(r#"{"score": 1}"#);
        let e = metrics("evaluation", d.path(), "m.json", &req).unwrap_err();
        assert!(e.starts_with("evaluation.missing_keys: n"), "{e}");
        w(r#"{"score": 1, "n": 2, "ok": "yes"}"#);
        let e = metrics("benchmark", d.path(), "m.json", &req).unwrap_err();
        assert!(e.starts_with("benchmark.ok_not_true"), "{e}");
        w(r#"{"score": 1, "n": 2, "ok": true}"#);
        assert_eq!(
            metrics("evaluation", d.path(), "m.json", &req).unwrap()["n"],
            2
        );
    }

    #[test]
    fn rollout_needs_one_valid_sample() {
        let d = repo();
        let e = rollout(d.path(), true).unwrap_err();
        assert!(e.starts_with("rollout.rollout_json_missing"), "{e}");
        std::fs::write(d.path().join(ROLLOUT_FILE), r#"{"paths": {}}"#).unwrap();
        assert!(rollout(d.path(), true)
            .unwrap_err()
            .starts_with("rollout.samples_path_missing"));
        std::fs::write(
            d.path().join(ROLLOUT_FILE),
            r#"{"paths": {"samples_jsonl": "s.jsonl"}}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("s.jsonl"),
            "{\"prompt\": \"p\", \"completion\": \"c\", \"reward\": \"1\"}\n",
        )
        .unwrap();
        let e = rollout(d.path(), true).unwrap_err();
        assert!(
            e.contains("no_valid_samples") && e.contains("line 1: `reward`"),
            "{e}"
        );
        std::fs::write(
            d.path().join("s.jsonl"),
            "{\"prompt\": \"p\", \"completion\": \"c\", \"reward\": 1}\n\nnot json\n",
        )
        .unwrap();
        let r = rollout(d.path(), true).unwrap();
        assert_eq!((r.valid_samples, r.invalid_lines), (1, 1));
    }

    #[test]
    fn samples_can_be_optional_and_hints_must_show_a_command() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join(".aider_fsm")).unwrap();
        std::fs::write(d.path().join(ROLLOUT_FILE), r#"{"paths": {}}"#).unwrap();
        assert!(rollout(d.path(), true)
            .unwrap_err()
            .starts_with("rollout.samples_path_missing"));
        let r = rollout(d.path(), false).unwrap();
        assert_eq!((r.valid_samples, r.samples_path), (0, None));
        assert!(hints_used(d.path())
            .unwrap_err()
            .starts_with("evaluation.hints_missing"));
        let hints = d.path().join(HINTS_USED_FILE);
        std::fs::write(
            &hints,
            r#"{"ok": true, "used_anchors": [], "commands": [], "reason": "no hint ran"}"#,
        )
        .unwrap();
        let e = hints_used(d.path()).unwrap_err();
        assert!(
            e.starts_with("evaluation.hints_not_used") && e.contains("no hint ran"),
            "{e}"
        );
        std::fs::write(&hints, r#"{"ok": false, "commands": ["make test"]}"#).unwrap();
        assert!(hints_used(d.path()).is_err());
        std::fs::write(&hints, r#"{"ok": true, "commands": ["make test"]}"#).unwrap();
        assert!(hints_used(d.path()).is_ok());
    }
}
