//! Trial and job results: the JSON written to `result.json` (schema `RESULT_SCHEMA_VERSION`).

use crate::kinds::{ErrorClass, ErrorKind};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An error a trial ended with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorInfo {
    /// One of the documented kinds.
    #[serde(rename = "type")]
    pub kind: ErrorKind,
    /// What happened and, where it helps, what to do.
    pub message: String,
}

impl ErrorInfo {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Start, end and duration of one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PhaseTiming {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub seconds: f64,
}

/// The phases of a trial, in order.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    EnvironmentSetup,
    AgentInstall,
    /// A step of a multi-step task: its `workdir/` upload, `setup.sh` and healthcheck.
    StepSetup,
    AgentRun,
    Verify,
    Collect,
    Teardown,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::EnvironmentSetup => "environment_setup",
            Phase::AgentInstall => "agent_install",
            Phase::StepSetup => "step_setup",
            Phase::AgentRun => "agent_run",
            Phase::Verify => "verify",
            Phase::Collect => "collect",
            Phase::Teardown => "teardown",
        }
    }
}

/// Which agent ran a trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct AgentInfo {
    pub name: String,
    pub version: Option<String>,
    pub model_name: Option<String>,
}

/// Exit status and output bookkeeping of one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct CommandOutcome {
    /// None when the command was killed (timeout) before it exited.
    pub exit_code: Option<i64>,
    pub timed_out: bool,
    pub seconds: f64,
    /// Total bytes the command wrote to stdout / stderr (only the tail is kept when capped).
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// Whether the kept output is a tail of what was written.
    pub output_truncated: bool,
    /// Whether the command was killed for writing more output than allowed.
    #[serde(default)]
    pub output_limit_exceeded: bool,
    /// Model usage, for agents that talk to a model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ModelUsage>,
}

/// What an agent spent on its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct ModelUsage {
    pub requests: u64,
    pub turns: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// When prices were given (agent kwargs `input_cost_per_mtok`, `output_cost_per_mtok`).
    pub cost_usd: Option<f64>,
    /// Why the agent stopped: `final_answer`, `max_turns`, `token_budget`, `cost_budget`,
    /// `timeout`, `empty_replies`, `repeated_tool_calls`, `content_filter`, or the error kind
    /// of a failing provider (`context_window_exceeded`, `api_error` …).
    pub stop_reason: String,
    /// Turns whose token counts are estimates (the provider reported no usage).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub estimated_turns: u64,
}

/// Where a trial ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct EnvironmentInfo {
    /// Provider (`docker`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Image reference used.
    pub image: Option<String>,
    /// Engine image id (`sha256:…`).
    pub image_id: Option<String>,
    /// Whether this trial's image was built (false: reused or pulled).
    pub built: bool,
    /// For a built environment, the engine id of each base image its Dockerfile names
    /// (reference → `sha256:…`): inputs of the trial, like the image itself.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub base_images: std::collections::BTreeMap<String, String>,
    /// Container id (kept for preserved environments).
    pub container_id: Option<String>,
    /// Whether the container was left running (preserve_env).
    pub preserved: bool,
    /// Directories of the environment (`/logs/agent` …) that were larger than the copy cap:
    /// only their first part was copied out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub truncated: Vec<String>,
    /// Entries the environment left in its log directories that were not copied out because
    /// they are neither regular files nor directories (links, FIFOs, devices).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped_entries: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The result of one trial (`<trial>/result.json`).
///
/// Serialized with Harbor's `TrialResult` fields next to rollout's own (see
/// [`crate::harbor_result`] and docs/results.md): `schema_version` is Harbor's document version
/// (always 1), rollout's own version is `rollout_schema_version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self")]
pub struct TrialResult {
    /// rollout's result schema version (`rollout_schema_version`; files without it are
    /// rollout 1.0 files, whose `schema_version` held `"1.0"`).
    #[serde(rename = "rollout_schema_version", default = "legacy_schema_version")]
    pub schema_version: String,
    /// Unique id of this trial run.
    pub id: String,
    /// Directory name of the trial inside the job directory.
    pub trial_name: String,
    /// `file://` URI of the trial directory (Harbor's `trial_uri`); empty in files written
    /// before rollout 2.0.
    #[serde(default)]
    pub trial_uri: String,
    pub job_id: String,
    pub job_name: String,
    pub task_name: String,
    pub task_path: String,
    pub task_checksum: String,
    pub dataset: Option<String>,
    pub agent: AgentInfo,
    /// 1-based attempt number of this (agent, task) pair.
    pub attempt: u32,
    /// Every named reward the verifier wrote (`reward.txt` gives `{"reward": x}`).
    pub rewards: Option<BTreeMap<String, f64>>,
    /// The main reward: `rewards["reward"]`, or the only value when there is one.
    pub reward: Option<f64>,
    pub error: Option<ErrorInfo>,
    pub environment: EnvironmentInfo,
    pub agent_install: Option<CommandOutcome>,
    pub agent_run: Option<CommandOutcome>,
    pub verifier: Option<CommandOutcome>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub seconds: f64,
    /// Timing of each phase that ran, by phase name.
    pub phases: BTreeMap<Phase, PhaseTiming>,
    /// Earlier tries of this trial that ended in an infrastructure error and were retried; their
    /// evidence is kept under `previous-tries/try-<n>/`.
    #[serde(default)]
    pub previous_tries: Vec<TryRecord>,
    /// One entry per step that started, in order (multi-step tasks only; Harbor's
    /// `step_results`). The trial's `rewards` derive from them by the task's
    /// `multi_step_reward_strategy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_results: Vec<StepResult>,
}

/// What one step of a multi-step trial did (Harbor's `StepResult`; its `agent_result`,
/// `verifier_result.rewards`, `exception_info`, `agent_execution` and `verifier` are
/// `agent_run`, `rewards`, `error` and `phases` here, named like the trial's own fields, and
/// are written next to them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self")]
pub struct StepResult {
    /// The step's `name` (its directory under `steps/`).
    pub step_name: String,
    /// What the step's verifier wrote; absent when it did not run or failed.
    pub rewards: Option<BTreeMap<String, f64>>,
    /// The main reward of `rewards`.
    pub reward: Option<f64>,
    /// The first error of the step.
    pub error: Option<ErrorInfo>,
    /// The step's `workdir/setup.sh`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<CommandOutcome>,
    pub agent_run: Option<CommandOutcome>,
    pub verifier: Option<CommandOutcome>,
    /// Why the remaining steps did not run, when this step stopped the trial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub seconds: f64,
    /// Timing of the step's phases (`step_setup`, `agent_run`, `verify`, `collect`).
    pub phases: BTreeMap<Phase, PhaseTiming>,
}

/// One earlier try of a trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TryRecord {
    /// 1-based try number.
    #[serde(rename = "try")]
    pub number: u32,
    pub error: Option<ErrorInfo>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub seconds: f64,
    /// Directory of its evidence, relative to the trial directory.
    pub dir: String,
}

impl TrialResult {
    /// Whether the trial ended with an error other than a cancellation.
    pub fn is_errored(&self) -> bool {
        self.error
            .as_ref()
            .is_some_and(|e| e.kind != ErrorKind::Cancelled)
    }

    /// Whether the trial was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.error
            .as_ref()
            .is_some_and(|e| e.kind == ErrorKind::Cancelled)
    }

    /// Reward used in aggregates: a missing reward counts as 0 (an error never helps a score).
    pub fn score(&self) -> f64 {
        self.reward.unwrap_or(0.0)
    }
}

/// The main reward of a rewards map: `reward` if present, else the only value, else none.
pub fn main_reward(rewards: &BTreeMap<String, f64>) -> Option<f64> {
    rewards
        .get("reward")
        .copied()
        .or_else(|| (rewards.len() == 1).then(|| *rewards.values().next().expect("len 1")))
}

/// Aggregates over a set of trials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct Stats {
    /// Trials counted (not cancelled).
    pub n_trials: usize,
    /// Trials that ended without any error.
    pub n_completed: usize,
    /// Trials that ended with an error (agent, verifier or infrastructure).
    pub n_errored: usize,
    /// Trials cancelled before they finished.
    pub n_cancelled: usize,
    /// Mean reward over counted trials, missing rewards as 0.
    pub mean_reward: Option<f64>,
    pub sum_reward: Option<f64>,
    pub min_reward: Option<f64>,
    pub max_reward: Option<f64>,
    /// Fraction of counted trials with reward ≥ 1.
    pub pass_rate: Option<f64>,
    /// pass@k for k = 1, 2, 4, … up to the attempts per task, when every reward is 0 or 1.
    pub pass_at_k: Option<BTreeMap<u32, f64>>,
    /// How many trials ended with each error kind.
    pub error_counts: BTreeMap<ErrorKind, usize>,
    /// Per reward key, when some trial's reward has keys (`{"correctness": 1, "performance":
    /// 0.5}`): mean, min, max and pass rate over the counted trials, a key a trial lacks
    /// counting 0. Empty when every reward is a plain `reward`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reward_keys: BTreeMap<String, KeyStats>,
    /// Job-level metrics (`metrics:` of the job file), by name; only in the job's overall stats.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, serde_json::Value>,
}

/// Aggregates of one reward key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct KeyStats {
    /// Counted trials whose rewards hold this key.
    pub n_present: usize,
    /// Mean over the counted trials, a missing key as 0.
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// Fraction of counted trials where this key is ≥ 1.
    pub pass_rate: f64,
}

/// The result of a job (`<job>/result.json`).
///
/// Serialized with Harbor's `JobResult` fields next to rollout's own: `schema_version` (1),
/// `updated_at`, and Harbor's `JobStats` fields inside `stats` (from `harbor_stats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self")]
pub struct JobResult {
    /// rollout's result schema version (`rollout_schema_version`), as in [`TrialResult`].
    #[serde(rename = "rollout_schema_version", default = "legacy_schema_version")]
    pub schema_version: String,
    pub id: String,
    pub name: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub seconds: f64,
    /// Trials planned.
    pub n_total_trials: usize,
    /// Trials never started because the job was cancelled first.
    pub n_not_started: usize,
    /// Whether the job was cancelled before every trial finished.
    pub cancelled: bool,
    /// Aggregates over every trial.
    pub stats: Stats,
    /// Aggregates per agent name.
    pub by_agent: BTreeMap<String, Stats>,
    /// Aggregates per dataset (`-` for single tasks).
    pub by_dataset: BTreeMap<String, Stats>,
    /// Aggregates per agent and dataset (`agent / dataset`), for the summary table.
    pub by_agent_dataset: BTreeMap<String, Stats>,
    /// Aggregates per agent, model and dataset (one row per `-a` × `-m` × dataset), for the
    /// summary table's model column; empty in files written before it existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_agent_model_dataset: Vec<GroupStats>,
    /// Every finished trial: name → reward (null when none).
    pub trials: BTreeMap<String, Option<f64>>,
    /// Harbor's `JobStats` over the same trials, written inside `stats` (None when read from
    /// a file written before rollout 2.0).
    #[serde(skip)]
    pub harbor_stats: Option<crate::harbor_result::HarborJobStats>,
}

/// The aggregates of one agent × model × dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct GroupStats {
    pub agent: String,
    pub model: Option<String>,
    /// `-` for single tasks.
    pub dataset: String,
    pub stats: Stats,
}

/// `rollout_schema_version` of files that lack it (written before rollout 2.0).
fn legacy_schema_version() -> String {
    "1.0".into()
}

impl Serialize for TrialResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut v = TrialResult::serialize(self, serde_json::value::Serializer)
            .map_err(serde::ser::Error::custom)?;
        crate::harbor_result::add_trial_fields(self, &mut v);
        v.serialize(s)
    }
}

impl<'de> Deserialize<'de> for TrialResult {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        TrialResult::deserialize(d)
    }
}

impl Serialize for StepResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut v = StepResult::serialize(self, serde_json::value::Serializer)
            .map_err(serde::ser::Error::custom)?;
        crate::harbor_result::add_step_fields(self, &mut v);
        v.serialize(s)
    }
}

impl<'de> Deserialize<'de> for StepResult {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        StepResult::deserialize(d)
    }
}

impl Serialize for JobResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut v = JobResult::serialize(self, serde_json::value::Serializer)
            .map_err(serde::ser::Error::custom)?;
        crate::harbor_result::add_job_fields(self, &mut v);
        v.serialize(s)
    }
}

impl<'de> Deserialize<'de> for JobResult {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let mut r = JobResult::deserialize(&v).map_err(serde::de::Error::custom)?;
        r.harbor_stats = v
            .get("stats")
            .filter(|s| s.get("n_completed_trials").is_some())
            .and_then(|s| serde_json::from_value(s.clone()).ok());
        Ok(r)
    }
}

/// A pass@k group: (agent, model, dataset, task).
type PassGroup<'a> = (&'a str, Option<&'a str>, &'a str, &'a str);

/// Compute aggregates. `pass_at_k` groups trials by (agent, model, task).
pub fn compute_stats<'a>(trials: impl IntoIterator<Item = &'a TrialResult>) -> Stats {
    let mut s = Stats::default();
    let mut rewards = Vec::new();
    let mut groups: BTreeMap<PassGroup<'_>, (u32, u32)> = BTreeMap::new();
    let mut binary = true;
    let mut keyed: Vec<Option<&BTreeMap<String, f64>>> = Vec::new();
    let mut any_main = false;
    for t in trials {
        if t.is_cancelled() {
            s.n_cancelled += 1;
            continue;
        }
        keyed.push(t.rewards.as_ref());
        any_main |= t.reward.is_some();
        s.n_trials += 1;
        if let Some(e) = &t.error {
            s.n_errored += 1;
            *s.error_counts.entry(e.kind).or_default() += 1;
        } else {
            s.n_completed += 1;
        }
        let r = t.score();
        if r != 0.0 && r != 1.0 {
            binary = false;
        }
        rewards.push(r);
        let g = groups
            .entry((
                t.agent.name.as_str(),
                t.agent.model_name.as_deref(),
                t.task_checksum.as_str(),
                t.task_name.as_str(),
            ))
            .or_default();
        g.0 += 1;
        if r >= 1.0 {
            g.1 += 1;
        }
    }
    if rewards.is_empty() {
        return s;
    }
    s.reward_keys = key_stats(&keyed);
    if !any_main && !s.reward_keys.is_empty() {
        // Keyed rewards without a `reward` key have no main reward: report them per key only,
        // never as a mean of zeros.
        return s;
    }
    let n = rewards.len() as f64;
    let sum: f64 = rewards.iter().sum();
    s.sum_reward = Some(sum);
    s.mean_reward = Some(sum / n);
    s.min_reward = rewards.iter().copied().reduce(f64::min);
    s.max_reward = rewards.iter().copied().reduce(f64::max);
    s.pass_rate = Some(rewards.iter().filter(|r| **r >= 1.0).count() as f64 / n);
    if binary {
        let min_n = groups.values().map(|g| g.0).min().unwrap_or(1);
        let mut ks = Vec::new();
        let mut k = 1;
        while k <= min_n {
            ks.push(k);
            k *= 2;
        }
        if !ks.contains(&min_n) {
            ks.push(min_n);
        }
        let mut map = BTreeMap::new();
        for k in ks {
            let total: f64 = groups.values().map(|&(n, c)| pass_at_k(n, c, k)).sum();
            map.insert(k, total / groups.len() as f64);
        }
        s.pass_at_k = Some(map);
    }
    s
}

/// Per-key aggregates, when some reward has a key other than a lone `reward`.
fn key_stats(rewards: &[Option<&BTreeMap<String, f64>>]) -> BTreeMap<String, KeyStats> {
    let keys: std::collections::BTreeSet<&String> =
        rewards.iter().flatten().flat_map(|r| r.keys()).collect();
    if keys.is_empty() || (keys.len() == 1 && keys.iter().next().is_some_and(|k| *k == "reward")) {
        return BTreeMap::new();
    }
    let n = rewards.len() as f64;
    keys.into_iter()
        .map(|key| {
            let values: Vec<f64> = rewards
                .iter()
                .map(|r| r.and_then(|r| r.get(key)).copied().unwrap_or(0.0))
                .collect();
            let stats = KeyStats {
                n_present: rewards
                    .iter()
                    .filter(|r| r.is_some_and(|r| r.contains_key(key)))
                    .count(),
                mean: values.iter().sum::<f64>() / n,
                min: values.iter().copied().fold(f64::INFINITY, f64::min),
                max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                pass_rate: values.iter().filter(|v| **v >= 1.0).count() as f64 / n,
            };
            (key.clone(), stats)
        })
        .collect()
}

/// Unbiased pass@k estimator (Chen et al. 2021): 1 − C(n−c, k) / C(n, k).
pub fn pass_at_k(n: u32, c: u32, k: u32) -> f64 {
    if k == 0 || n == 0 {
        return 0.0;
    }
    if n - c < k {
        return 1.0;
    }
    let mut prod = 1.0;
    for i in (n - c + 1)..=n {
        prod *= 1.0 - k as f64 / i as f64;
    }
    1.0 - prod
}

/// Whether any trial ended with an error that makes the job's exit status 1.
pub fn any_errored(stats: &Stats) -> bool {
    stats
        .error_counts
        .keys()
        .any(|k| k.class() != ErrorClass::Cancelled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(
        agent: &str,
        task: &str,
        reward: Option<f64>,
        error: Option<ErrorKind>,
    ) -> TrialResult {
        let now = Utc::now();
        TrialResult {
            schema_version: crate::RESULT_SCHEMA_VERSION.into(),
            id: "x".into(),
            trial_name: format!("{task}__{agent}"),
            trial_uri: String::new(),
            job_id: "j".into(),
            job_name: "j".into(),
            task_name: task.into(),
            task_path: "/t".into(),
            task_checksum: task.into(),
            dataset: None,
            agent: AgentInfo {
                name: agent.into(),
                ..Default::default()
            },
            attempt: 1,
            rewards: reward.map(|r| BTreeMap::from([("reward".to_string(), r)])),
            reward,
            error: error.map(|k| ErrorInfo::new(k, "m")),
            environment: EnvironmentInfo::default(),
            agent_install: None,
            agent_run: None,
            verifier: None,
            started_at: now,
            finished_at: now,
            seconds: 0.0,
            phases: BTreeMap::new(),
            previous_tries: Vec::new(),
            step_results: Vec::new(),
        }
    }

    #[test]
    fn pass_at_k_estimator() {
        assert_eq!(pass_at_k(3, 0, 1), 0.0);
        assert_eq!(pass_at_k(3, 3, 1), 1.0);
        assert!((pass_at_k(3, 1, 1) - 1.0 / 3.0).abs() < 1e-12);
        assert!((pass_at_k(3, 1, 2) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(pass_at_k(3, 1, 3), 1.0);
    }

    #[test]
    fn stats_count_errors_as_zero_and_skip_cancelled() {
        let trials = [
            trial("oracle", "a", Some(1.0), None),
            trial("oracle", "b", None, Some(ErrorKind::VerifierRewardMissing)),
            trial(
                "oracle",
                "c",
                Some(1.0),
                Some(ErrorKind::AgentExecutionTimeout),
            ),
            trial("oracle", "d", None, Some(ErrorKind::Cancelled)),
        ];
        let s = compute_stats(&trials);
        assert_eq!(s.n_trials, 3);
        assert_eq!(s.n_completed, 1);
        assert_eq!(s.n_errored, 2);
        assert_eq!(s.n_cancelled, 1);
        assert_eq!(s.mean_reward, Some(2.0 / 3.0));
        assert_eq!(s.pass_rate, Some(2.0 / 3.0));
        assert_eq!(s.error_counts[&ErrorKind::VerifierRewardMissing], 1);
        assert_eq!(s.pass_at_k.as_ref().unwrap()[&1], 2.0 / 3.0);
        assert!(any_errored(&s));
    }

    #[test]
    fn pass_at_k_over_attempts() {
        let trials = [
            trial("a", "t1", Some(1.0), None),
            trial("a", "t1", Some(0.0), None),
            trial("a", "t1", Some(0.0), None),
            trial("a", "t2", Some(0.0), None),
            trial("a", "t2", Some(0.0), None),
            trial("a", "t2", Some(0.0), None),
        ];
        let p = compute_stats(&trials).pass_at_k.unwrap();
        assert_eq!(p.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert!((p[&1] - (1.0 / 3.0) / 2.0).abs() < 1e-12);
        assert!((p[&3] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn non_binary_rewards_have_no_pass_at_k() {
        let trials = [trial("a", "t", Some(0.5), None)];
        let s = compute_stats(&trials);
        assert!(s.pass_at_k.is_none());
        assert_eq!(s.mean_reward, Some(0.5));
    }

    #[test]
    fn main_reward_rules() {
        let m = BTreeMap::from([("reward".to_string(), 0.5), ("tests".to_string(), 7.0)]);
        assert_eq!(main_reward(&m), Some(0.5));
        let m = BTreeMap::from([("accuracy".to_string(), 0.25)]);
        assert_eq!(main_reward(&m), Some(0.25));
        let m = BTreeMap::from([("a".to_string(), 1.0), ("b".to_string(), 0.0)]);
        assert_eq!(main_reward(&m), None);
    }
}
