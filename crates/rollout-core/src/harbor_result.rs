//! Harbor's result fields, written next to rollout's own in every `result.json`.
//!
//! Harbor (0.26) reads a trial directory's `result.json` with its `TrialResult` model and a job
//! directory's with `JobResult`. rollout writes those fields in the same JSON object as its own
//! (docs/results.md lists both), derived from rollout's fields at serialization time, so a
//! rollout job directory opens in Harbor's tools and rollout's readers keep reading their own
//! fields (Harbor's are ignored when read back).
//!
//! Where a name is shared with a different shape:
//! - `schema_version`: Harbor's document version, always the integer 1; rollout's own version
//!   moved to `rollout_schema_version`.
//! - `verifier`: rollout's verifier command outcome; Harbor's `TimingInfo` keys `started_at`,
//!   `finished_at` (from the `verify` phase) are added to the same object.
//! - `stats` (job): rollout's `Stats` keys plus Harbor's `JobStats` keys (no key is shared).
//! - `step_results[]`: rollout's step keys plus Harbor's `StepResult` keys.

use crate::kinds::ErrorKind;
use crate::result::{
    compute_stats, ErrorInfo, JobResult, Phase, PhaseTiming, StepResult, TrialResult,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Harbor's document version (`schema_version`) of the trial and job results rollout writes.
pub const HARBOR_SCHEMA_VERSION: u32 = 1;

/// Harbor's exception type name for a rollout error kind: Harbor's own name where Harbor
/// has an exception of the same meaning (so Harbor's error policy applies), otherwise the
/// kind in CamelCase with an `Error` suffix (Harbor treats unknown names with its default
/// policy).
pub fn exception_type(kind: ErrorKind) -> String {
    let known = match kind {
        ErrorKind::EnvironmentBuildFailed => "SandboxBuildFailedError",
        ErrorKind::EnvironmentBuildTimeout => "EnvironmentStartTimeoutError",
        ErrorKind::EnvironmentHealthcheckFailed => "HealthcheckError",
        ErrorKind::AgentInstallTimeout => "AgentSetupTimeoutError",
        ErrorKind::AgentExecutionFailed => "NonZeroAgentExitCodeError",
        ErrorKind::AgentExecutionTimeout => "AgentTimeoutError",
        ErrorKind::ApiRateLimit => "ApiRateLimitError",
        ErrorKind::ApiAuth => "AgentAuthenticationError",
        ErrorKind::ContextWindowExceeded => "ContextWindowExceededError",
        ErrorKind::ModelNotFound => "ModelNotFoundError",
        ErrorKind::ApiError => "ApiError",
        ErrorKind::VerifierTimeout => "VerifierTimeoutError",
        ErrorKind::VerifierRewardMissing => "RewardFileNotFoundError",
        ErrorKind::VerifierRewardInvalid => "VerifierOutputParseError",
        ErrorKind::Cancelled => "CancelledError",
        other => {
            let mut name = String::new();
            for part in other.as_str().split('_') {
                let mut chars = part.chars();
                if let Some(c) = chars.next() {
                    name.extend(c.to_uppercase());
                    name.push_str(chars.as_str());
                }
            }
            name.push_str("Error");
            return name;
        }
    };
    known.to_string()
}

/// Whether Harbor's error policy keeps a trial's reward valid after this exception type
/// (Harbor's `ErrorPolicy.has_valid_reward`, for the names [`exception_type`] produces).
pub fn has_valid_reward(exception_type: &str) -> bool {
    !matches!(
        exception_type,
        "SandboxBuildFailedError"
            | "EnvironmentStartTimeoutError"
            | "HealthcheckError"
            | "AgentSetupTimeoutError"
            | "ApiRateLimitError"
            | "ApiError"
            | "AgentAuthenticationError"
            | "ModelNotFoundError"
            | "VerifierTimeoutError"
            | "RewardFileNotFoundError"
            | "VerifierOutputParseError"
            | "CancelledError"
    )
}

fn timing(t: Option<&PhaseTiming>) -> Value {
    match t {
        Some(t) => json!({"started_at": t.started_at, "finished_at": t.finished_at}),
        None => Value::Null,
    }
}

fn exception_info(e: Option<&ErrorInfo>, at: DateTime<Utc>) -> Value {
    match e {
        Some(e) => json!({
            "exception_type": exception_type(e.kind),
            "exception_message": e.message,
            "exception_traceback": "",
            "occurred_at": at,
        }),
        None => Value::Null,
    }
}

/// Harbor's `AgentContext` from an agent command's outcome (null when the agent did not run).
fn agent_context(run: Option<&crate::result::CommandOutcome>) -> Value {
    let Some(run) = run else {
        return Value::Null;
    };
    match &run.usage {
        Some(u) => json!({
            "n_input_tokens": u.input_tokens,
            "n_cache_tokens": null,
            "n_output_tokens": u.output_tokens,
            "cost_usd": u.cost_usd,
            "metadata": {"requests": u.requests, "turns": u.turns, "stop_reason": u.stop_reason},
        }),
        None => json!({
            "n_input_tokens": null, "n_cache_tokens": null, "n_output_tokens": null,
            "cost_usd": null, "metadata": null,
        }),
    }
}

fn verifier_result(rewards: Option<&BTreeMap<String, f64>>) -> Value {
    match rewards {
        Some(r) => json!({ "rewards": r }),
        None => Value::Null,
    }
}

/// Add `started_at`/`finished_at` of the verify phase to the `verifier` object (rollout's
/// command outcome), when both exist.
fn merge_verifier_timing(obj: &mut Map<String, Value>, verify: Option<&PhaseTiming>) {
    if let (Some(Value::Object(v)), Some(t)) = (obj.get_mut("verifier"), verify) {
        v.insert("started_at".into(), json!(t.started_at));
        v.insert("finished_at".into(), json!(t.finished_at));
    }
}

/// `name` and `provider` of Harbor's `ModelInfo`: a `provider/name` model splits at its first
/// slash; any other has no provider.
fn model_info(model: Option<&str>) -> Value {
    match model {
        Some(m) => match m.split_once('/') {
            Some((p, n)) if !p.is_empty() && !n.is_empty() => json!({"name": n, "provider": p}),
            _ => json!({"name": m, "provider": null}),
        },
        None => Value::Null,
    }
}

/// Harbor's evals key (`JobStats.format_agent_evals_key`): `agent__model__dataset`, or
/// `agent__dataset` without a model; a trial of no dataset is `adhoc`.
pub fn evals_key(t: &TrialResult) -> String {
    let dataset = t.dataset.as_deref().unwrap_or("adhoc");
    let model = t
        .agent
        .model_name
        .as_deref()
        .map(|m| match m.split_once('/') {
            Some((p, n)) if !p.is_empty() && !n.is_empty() => n,
            _ => m,
        });
    match model {
        Some(m) => format!("{}__{m}__{dataset}", t.agent.name),
        None => format!("{}__{dataset}", t.agent.name),
    }
}

/// Add Harbor's `TrialResult` fields to a trial's serialized object.
pub(crate) fn add_trial_fields(t: &TrialResult, v: &mut Value) {
    let Value::Object(obj) = v else { return };
    let trials_dir = t
        .trial_uri
        .strip_prefix("file://")
        .and_then(|p| std::path::Path::new(p).parent())
        .map(|p| p.display().to_string());
    let mut config = json!({
        "task": {"path": t.task_path, "source": t.dataset},
        "trial_name": t.trial_name,
        "agent": {"name": t.agent.name, "model_name": t.agent.model_name},
        "job_id": t.job_id,
    });
    if let Some(dir) = trials_dir {
        config["trials_dir"] = json!(dir);
    }
    let fields = [
        ("schema_version", json!(HARBOR_SCHEMA_VERSION)),
        ("task_id", json!({"path": t.task_path})),
        ("source", json!(t.dataset)),
        ("config", config),
        (
            "agent_info",
            json!({
                "name": t.agent.name,
                "version": t.agent.version.as_deref().unwrap_or("unknown"),
                "model_info": model_info(t.agent.model_name.as_deref()),
            }),
        ),
        ("agent_result", agent_context(t.agent_run.as_ref())),
        ("verifier_result", verifier_result(t.rewards.as_ref())),
        (
            "exception_info",
            exception_info(t.error.as_ref(), t.finished_at),
        ),
        (
            "environment_setup",
            timing(t.phases.get(&Phase::EnvironmentSetup)),
        ),
        ("agent_setup", timing(t.phases.get(&Phase::AgentInstall))),
        ("agent_execution", timing(t.phases.get(&Phase::AgentRun))),
    ];
    for (k, value) in fields {
        obj.insert(k.into(), value);
    }
    merge_verifier_timing(obj, t.phases.get(&Phase::Verify));
}

/// Add Harbor's `StepResult` fields to a step's serialized object.
pub(crate) fn add_step_fields(s: &StepResult, v: &mut Value) {
    let Value::Object(obj) = v else { return };
    obj.insert("agent_result".into(), agent_context(s.agent_run.as_ref()));
    obj.insert(
        "verifier_result".into(),
        verifier_result(s.rewards.as_ref()),
    );
    obj.insert(
        "exception_info".into(),
        exception_info(s.error.as_ref(), s.finished_at),
    );
    obj.insert(
        "agent_execution".into(),
        timing(s.phases.get(&Phase::AgentRun)),
    );
    merge_verifier_timing(obj, s.phases.get(&Phase::Verify));
}

/// Add Harbor's `JobResult` fields to a job's serialized object.
pub(crate) fn add_job_fields(j: &JobResult, v: &mut Value) {
    let Value::Object(obj) = v else { return };
    obj.insert("schema_version".into(), json!(HARBOR_SCHEMA_VERSION));
    obj.insert(
        "updated_at".into(),
        json!(j.finished_at.unwrap_or(j.started_at)),
    );
    if let (Some(h), Some(Value::Object(stats))) = (&j.harbor_stats, obj.get_mut("stats")) {
        if let Ok(Value::Object(hv)) = serde_json::to_value(h) {
            stats.extend(hv);
        }
    }
}

/// Harbor's `AgentDatasetStats`: one agent (and model) on one dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AgentDatasetStats {
    /// Trials with a valid reward (Harbor's `reward_valid`).
    pub n_trials: usize,
    /// Trials that recorded an exception.
    pub n_errors: usize,
    /// `[{"mean": …}]`: the mean main reward of the group (Harbor's default metric).
    pub metrics: Vec<BTreeMap<String, Value>>,
    /// pass@k, when every reward is 0 or 1.
    pub pass_at_k: BTreeMap<u32, f64>,
    /// Reward key → reward value (as text) → trial names.
    pub reward_stats: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// Exception type → trial names.
    pub exception_stats: BTreeMap<String, Vec<String>>,
}

/// Harbor's `JobStats`, written inside the job's `stats` next to rollout's keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HarborJobStats {
    pub n_completed_trials: usize,
    pub n_errored_trials: usize,
    pub n_running_trials: usize,
    pub n_pending_trials: usize,
    pub n_cancelled_trials: usize,
    pub n_retries: usize,
    pub evals: BTreeMap<String, AgentDatasetStats>,
    pub n_input_tokens: Option<u64>,
    pub n_cache_tokens: Option<u64>,
    pub n_output_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
}

/// The exception types a trial recorded (trial first, then its steps), without repeats.
fn exception_types(t: &TrialResult) -> std::collections::BTreeSet<String> {
    t.error
        .iter()
        .chain(t.step_results.iter().filter_map(|s| s.error.as_ref()))
        .map(|e| exception_type(e.kind))
        .collect()
}

/// Harbor's `reward_valid`: a non-empty reward and no exception that voids it.
pub fn reward_valid(t: &TrialResult) -> bool {
    t.rewards.as_ref().is_some_and(|r| !r.is_empty())
        && exception_types(t).iter().all(|e| has_valid_reward(e))
}

/// A reward value as Harbor writes a float dictionary key (`1.0`, `0.5`).
fn reward_key(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

impl HarborJobStats {
    /// Harbor's `JobStats.from_trial_results` over `trials`, with the job's progress counts.
    pub fn from_trials(trials: &[TrialResult], n_total_trials: usize) -> Self {
        let mut s = HarborJobStats::default();
        let mut groups: BTreeMap<String, Vec<&TrialResult>> = BTreeMap::new();
        for t in trials {
            s.n_completed_trials += 1;
            s.n_retries += t.previous_tries.len();
            let key = evals_key(t);
            groups.entry(key.clone()).or_default().push(t);
            let e = s.evals.entry(key).or_default();
            if reward_valid(t) {
                e.n_trials += 1;
                for (k, x) in t.rewards.iter().flatten() {
                    e.reward_stats
                        .entry(k.clone())
                        .or_default()
                        .entry(reward_key(*x))
                        .or_default()
                        .push(t.trial_name.clone());
                }
            }
            let types = exception_types(t);
            for ty in &types {
                e.exception_stats
                    .entry(ty.clone())
                    .or_default()
                    .push(t.trial_name.clone());
            }
            if !types.is_empty() {
                e.n_errors += 1;
                s.n_errored_trials += 1;
                if types.contains("CancelledError") {
                    s.n_cancelled_trials += 1;
                }
            }
            let usage = t
                .agent_run
                .iter()
                .chain(t.step_results.iter().filter_map(|s| s.agent_run.as_ref()))
                .filter_map(|r| r.usage.as_ref());
            for u in usage {
                *s.n_input_tokens.get_or_insert(0) += u.input_tokens;
                *s.n_output_tokens.get_or_insert(0) += u.output_tokens;
                if let Some(c) = u.cost_usd {
                    *s.cost_usd.get_or_insert(0.0) += c;
                }
            }
        }
        for (key, members) in groups {
            let stats = compute_stats(members.iter().copied());
            let e = s.evals.get_mut(&key).expect("group has an entry");
            if let Some(mean) = stats.mean_reward {
                e.metrics = vec![BTreeMap::from([("mean".to_string(), json!(mean))])];
            }
            e.pass_at_k = stats.pass_at_k.unwrap_or_default();
        }
        s.n_pending_trials = n_total_trials.saturating_sub(s.n_completed_trials);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_map_to_harbor_exception_names() {
        assert_eq!(
            exception_type(ErrorKind::AgentExecutionTimeout),
            "AgentTimeoutError"
        );
        assert_eq!(
            exception_type(ErrorKind::EnvironmentStartFailed),
            "EnvironmentStartFailedError"
        );
        assert!(has_valid_reward("AgentTimeoutError"));
        assert!(!has_valid_reward("RewardFileNotFoundError"));
    }

    fn fixture(rel: &str) -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/results/v1-job");
        std::fs::read(dir.join(rel)).unwrap()
    }

    #[test]
    fn results_written_before_2_0_still_read() {
        let t: TrialResult =
            serde_json::from_slice(&fixture("hello-world__oracle__1/result.json")).unwrap();
        assert_eq!(t.schema_version, "1.0");
        assert_eq!(t.reward, Some(1.0));
        assert_eq!(t.trial_uri, "");
        let j: JobResult = serde_json::from_slice(&fixture("result.json")).unwrap();
        assert_eq!(j.schema_version, "1.0");
        assert_eq!(j.stats.n_errored, 1);
        assert!(j.harbor_stats.is_none());

        // Written again, the trial carries Harbor's fields and reads back the same.
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["rollout_schema_version"], "1.0");
        assert_eq!(v["verifier_result"]["rewards"]["reward"], 1.0);
        assert_eq!(v["agent_info"]["name"], "oracle");
        assert_eq!(v["agent_info"]["version"], "unknown");
        assert_eq!(v["task_id"]["path"], "/tasks/hello-world");
        assert_eq!(
            v["verifier"]["started_at"],
            serde_json::to_value(t.phases[&Phase::Verify].started_at).unwrap()
        );
        assert_eq!(v["verifier"]["exit_code"], 0);
        assert!(v["agent_execution"]["finished_at"].is_string());
        assert!(v["exception_info"].is_null());
        let back: TrialResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn job_results_carry_harbor_stats_inside_stats() {
        let oracle: TrialResult =
            serde_json::from_slice(&fixture("hello-world__oracle__1/result.json")).unwrap();
        let nop: TrialResult =
            serde_json::from_slice(&fixture("hello-world__nop__1/result.json")).unwrap();
        let mut j: JobResult = serde_json::from_slice(&fixture("result.json")).unwrap();
        j.schema_version = crate::RESULT_SCHEMA_VERSION.into();
        j.harbor_stats = Some(HarborJobStats::from_trials(&[oracle, nop], 3));
        let v = serde_json::to_value(&j).unwrap();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["rollout_schema_version"], "2.0");
        let s = &v["stats"];
        assert_eq!(s["n_completed_trials"], 2);
        assert_eq!(s["n_errored_trials"], 1);
        assert_eq!(s["n_pending_trials"], 1);
        assert_eq!(s["n_errored"], 1, "rollout's own keys stay");
        let e = &s["evals"]["oracle__adhoc"];
        assert_eq!(e["n_trials"], 1);
        assert_eq!(
            e["reward_stats"]["reward"]["1.0"][0],
            "hello-world__oracle__1"
        );
        let nop = &s["evals"]["nop__adhoc"];
        assert_eq!(nop["n_errors"], 1);
        assert_eq!(
            nop["exception_stats"]["RewardFileNotFoundError"][0],
            "hello-world__nop__1"
        );
        let back: JobResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, j);
    }

    #[test]
    fn reward_keys_read_like_python_floats() {
        assert_eq!(reward_key(1.0), "1.0");
        assert_eq!(reward_key(0.25), "0.25");
    }
}
