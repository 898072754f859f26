//! The end-of-job summary table.

use rollout_core::result::{JobResult, Stats};
use std::fmt::Write;
use std::path::Path;

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{:.1}%", v * 100.0))
}

fn num(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.3}"))
}

fn row(out: &mut String, name: &str, model: &str, s: &Stats, w: (usize, usize)) {
    let (width, mw) = w;
    let pass1 = s.pass_at_k.as_ref().and_then(|m| m.get(&1).copied());
    let _ = writeln!(
        out,
        "{name:<width$}  {model:<mw$}  {:>6}  {:>6}  {:>9}  {:>11}  {:>9}  {:>6}",
        s.n_trials + s.n_cancelled,
        s.n_errored,
        s.n_cancelled,
        num(s.mean_reward),
        pct(s.pass_rate),
        num(pass1),
    );
    // A keyed reward: one line per key under the row, mean and pass rate in their columns.
    for (key, k) in &s.reward_keys {
        let label = format!("  {key}");
        let _ = writeln!(
            out,
            "{label:<width$}  {:<mw$}  {:>6}  {:>6}  {:>9}  {:>11}  {:>9}  {:>6}",
            "",
            "",
            "",
            "",
            num(Some(k.mean)),
            pct(Some(k.pass_rate)),
            "",
        );
    }
}

/// Render the summary: one row per agent × model × dataset, a total row, error kinds, the job
/// directory.
pub fn render(result: &JobResult, job_dir: &Path) -> String {
    let mut out = String::new();
    // (agent / dataset, model, stats); results written before the model column have no model.
    let rows: Vec<(String, String, &Stats)> = if result.by_agent_model_dataset.is_empty() {
        result
            .by_agent_dataset
            .iter()
            .map(|(k, s)| (k.clone(), "-".to_string(), s))
            .collect()
    } else {
        result
            .by_agent_model_dataset
            .iter()
            .map(|g| {
                (
                    format!("{} / {}", g.agent, g.dataset),
                    g.model.clone().unwrap_or_else(|| "-".into()),
                    &g.stats,
                )
            })
            .collect()
    };
    let width = rows
        .iter()
        .map(|(k, _, _)| k.len())
        .chain(
            rows.iter()
                .flat_map(|(_, _, s)| s.reward_keys.keys().map(|k| k.len() + 2)),
        )
        .max()
        .unwrap_or(0)
        .max("agent / dataset".len());
    let mw = rows
        .iter()
        .map(|(_, m, _)| m.chars().count())
        .max()
        .unwrap_or(0)
        .max("model".len());
    let _ = writeln!(
        out,
        "{:<width$}  {:<mw$}  {:>6}  {:>6}  {:>9}  {:>11}  {:>9}  {:>6}",
        "agent / dataset",
        "model",
        "trials",
        "errors",
        "cancelled",
        "mean reward",
        "pass rate",
        "pass@1"
    );
    for (name, model, s) in &rows {
        row(&mut out, name, model, s, (width, mw));
    }
    if rows.len() > 1 {
        row(&mut out, "total", "", &result.stats, (width, mw));
    }
    if let Some(p) = &result.stats.pass_at_k {
        if p.len() > 1 {
            let ks: Vec<String> = p.iter().map(|(k, v)| format!("pass@{k} {v:.3}")).collect();
            let _ = writeln!(out, "{}", ks.join("  "));
        }
    }
    if !result.stats.metrics.is_empty() {
        let metrics: Vec<String> = result
            .stats
            .metrics
            .iter()
            .map(|(k, v)| match v.as_f64() {
                Some(x) => format!("{k} {x:.3}"),
                None => format!("{k} {v}"),
            })
            .collect();
        let _ = writeln!(out, "metrics: {}", metrics.join("  "));
    }
    if !result.stats.error_counts.is_empty() {
        let errs: Vec<String> = result
            .stats
            .error_counts
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect();
        let _ = writeln!(out, "errors: {}", errs.join(", "));
    }
    if result.n_not_started > 0 {
        let _ = writeln!(out, "not started (cancelled): {}", result.n_not_started);
    }
    let _ = writeln!(out, "job: {}  ({:.1} s)", job_dir.display(), result.seconds);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_core::result::{AgentInfo, EnvironmentInfo, ErrorInfo, TrialResult};
    use rollout_core::ErrorKind;
    use std::collections::BTreeMap;

    fn trial(
        agent: &str,
        task: &str,
        reward: Option<f64>,
        error: Option<ErrorKind>,
    ) -> TrialResult {
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        TrialResult {
            schema_version: "1.0".into(),
            id: "id".into(),
            trial_name: format!("{task}__{agent}__1"),
            trial_uri: String::new(),
            job_id: "job".into(),
            job_name: "j".into(),
            task_name: task.into(),
            task_path: format!("/tasks/{task}"),
            task_checksum: task.into(),
            dataset: Some("smoke".into()),
            agent: AgentInfo {
                name: agent.into(),
                ..Default::default()
            },
            attempt: 1,
            rewards: reward.map(|r| BTreeMap::from([("reward".into(), r)])),
            reward,
            error: error.map(|k| ErrorInfo::new(k, "m")),
            environment: EnvironmentInfo::default(),
            agent_install: None,
            agent_run: None,
            verifier: None,
            started_at: t,
            finished_at: t,
            seconds: 1.0,
            phases: BTreeMap::new(),
            previous_tries: Vec::new(),
            step_results: Vec::new(),
        }
    }

    /// A job result of `n` trials with these stats, for rendering.
    fn job_result(
        started_at: chrono::DateTime<chrono::Utc>,
        seconds: f64,
        n: usize,
        stats: Stats,
        by_agent_dataset: BTreeMap<String, Stats>,
        by_agent_model_dataset: Vec<rollout_core::result::GroupStats>,
    ) -> JobResult {
        JobResult {
            schema_version: "1.0".into(),
            id: "job".into(),
            name: "j".into(),
            started_at,
            finished_at: Some(started_at),
            seconds,
            n_total_trials: n,
            n_not_started: 0,
            cancelled: false,
            stats,
            by_agent: BTreeMap::new(),
            by_dataset: BTreeMap::new(),
            by_agent_dataset,
            by_agent_model_dataset,
            trials: BTreeMap::new(),
            harbor_stats: None,
        }
    }

    #[test]
    fn summary_table() {
        let trials = [
            trial("oracle", "a", Some(1.0), None),
            trial("oracle", "b", Some(1.0), None),
            trial("nop", "a", Some(0.0), None),
            trial("nop", "b", None, Some(ErrorKind::VerifierRewardMissing)),
        ];
        let stats = |v: Vec<&TrialResult>| rollout_core::result::compute_stats(v);
        let t = trials[0].started_at;
        let result = job_result(
            t,
            12.34,
            4,
            stats(trials.iter().collect()),
            BTreeMap::from([
                (
                    "nop / smoke".to_string(),
                    stats(trials[2..].iter().collect()),
                ),
                (
                    "oracle / smoke".to_string(),
                    stats(trials[..2].iter().collect()),
                ),
            ]),
            Vec::new(),
        );
        insta::assert_snapshot!(render(&result, Path::new("jobs/j")));
    }

    #[test]
    fn one_row_per_model() {
        let with_model = |model: &str, reward: f64| {
            let mut t = trial("rollout-agent", "a", Some(reward), None);
            t.agent.model_name = Some(model.into());
            t
        };
        let trials = [with_model("big", 1.0), with_model("small", 0.0)];
        let stats = |v: &[TrialResult]| rollout_core::result::compute_stats(v.iter());
        let group = |model: &str, v: &[TrialResult]| rollout_core::result::GroupStats {
            agent: "rollout-agent".into(),
            model: Some(model.into()),
            dataset: "smoke".into(),
            stats: stats(v),
        };
        let t = trials[0].started_at;
        let result = job_result(
            t,
            2.0,
            2,
            stats(&trials),
            BTreeMap::from([("rollout-agent / smoke".to_string(), stats(&trials))]),
            vec![group("big", &trials[..1]), group("small", &trials[1..])],
        );
        let out = render(&result, Path::new("jobs/j"));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].contains(" model "), "{out}");
        assert!(
            lines[1].contains(" big ") && lines[1].contains("1.000"),
            "{out}"
        );
        assert!(
            lines[2].contains(" small ") && lines[2].contains("0.000"),
            "{out}"
        );
        assert!(lines[3].starts_with("total"), "{out}");
        insta::assert_snapshot!(out);
    }

    #[test]
    fn keyed_rewards_are_shown_per_key() {
        let keyed = |task: &str, c: f64, p: f64| {
            let mut t = trial("oracle", task, None, None);
            t.rewards = Some(BTreeMap::from([
                ("correctness".to_string(), c),
                ("performance".to_string(), p),
            ]));
            t.reward = t
                .rewards
                .as_ref()
                .and_then(rollout_core::result::main_reward);
            t
        };
        let trials = [keyed("a", 1.0, 0.5), keyed("b", 1.0, 1.0)];
        let stats = rollout_core::result::compute_stats(trials.iter());
        assert_eq!(stats.mean_reward, None, "no `reward` key: no main reward");
        assert_eq!(stats.reward_keys["correctness"].mean, 1.0);
        assert_eq!(stats.reward_keys["performance"].mean, 0.75);
        assert_eq!(stats.reward_keys["performance"].pass_rate, 0.5);
        let t = trials[0].started_at;
        let mut overall = stats.clone();
        overall
            .metrics
            .insert("mean_correctness".into(), serde_json::json!(1.0));
        let result = job_result(
            t,
            3.0,
            2,
            overall,
            BTreeMap::from([("oracle / smoke".to_string(), stats)]),
            Vec::new(),
        );
        insta::assert_snapshot!(render(&result, Path::new("jobs/j")));
    }
}
