//! Aggregates shown by the viewer: per agent × dataset summaries, reward histograms, and the
//! comparison of two jobs (pass-rate difference with a Newcombe hybrid-score interval).

use crate::model::TrialRow;
use serde::Serialize;
use std::collections::BTreeMap;

/// z for a two-sided 95 % interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Wilson score interval of a proportion `k / n`.
pub fn wilson(k: usize, n: usize, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Newcombe's hybrid score interval (method 10) for `p_b − p_a` of two independent proportions.
pub fn newcombe(k_a: usize, n_a: usize, k_b: usize, n_b: usize, z: f64) -> (f64, f64) {
    let pa = if n_a == 0 {
        0.0
    } else {
        k_a as f64 / n_a as f64
    };
    let pb = if n_b == 0 {
        0.0
    } else {
        k_b as f64 / n_b as f64
    };
    let (la, ua) = wilson(k_a, n_a, z);
    let (lb, ub) = wilson(k_b, n_b, z);
    let d = pb - pa;
    let lower = d - ((pb - lb).powi(2) + (ua - pa).powi(2)).sqrt();
    let upper = d + ((ub - pb).powi(2) + (pa - la).powi(2)).sqrt();
    (lower.max(-1.0), upper.min(1.0))
}

/// Summary of a group of trials (one agent on one dataset, or a whole job).
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct Group {
    pub agent: String,
    pub dataset: String,
    /// Finished trials counted (not cancelled, not running).
    pub n: usize,
    pub n_passed: usize,
    pub n_errors: usize,
    pub n_running: usize,
    pub n_cancelled: usize,
    pub mean_reward: Option<f64>,
    pub pass_rate: Option<f64>,
    /// pass@k for k = 1, 2, 4, … up to the fewest attempts of a task, when rewards are 0/1.
    pub pass_at_k: BTreeMap<u32, f64>,
}

/// Aggregate `rows` into a group.
pub fn group<'a>(
    agent: &str,
    dataset: &str,
    rows: impl IntoIterator<Item = &'a TrialRow>,
) -> Group {
    let mut g = Group {
        agent: agent.into(),
        dataset: dataset.into(),
        ..Default::default()
    };
    let mut sum = 0.0;
    let mut binary = true;
    let mut per_task: BTreeMap<(&str, &str), (u32, u32)> = BTreeMap::new();
    for r in rows {
        match r.status {
            "cancelled" => g.n_cancelled += 1,
            "ok" | "error" => {
                g.n += 1;
                if r.status == "error" {
                    g.n_errors += 1;
                }
                let s = r.score();
                sum += s;
                binary &= s == 0.0 || s == 1.0;
                let e = per_task.entry((&r.agent, &r.task)).or_default();
                e.0 += 1;
                if s >= 1.0 {
                    g.n_passed += 1;
                    e.1 += 1;
                }
            }
            // Running, or left unfinished by a job that stopped.
            _ => g.n_running += 1,
        }
    }
    if g.n > 0 {
        g.mean_reward = Some(sum / g.n as f64);
        g.pass_rate = Some(g.n_passed as f64 / g.n as f64);
        if binary {
            let min_n = per_task.values().map(|v| v.0).min().unwrap_or(1);
            let mut k = 1;
            let mut ks = Vec::new();
            while k <= min_n {
                ks.push(k);
                k *= 2;
            }
            if !ks.contains(&min_n) {
                ks.push(min_n);
            }
            for k in ks {
                let total: f64 = per_task
                    .values()
                    .map(|&(n, c)| rollout_core::result::pass_at_k(n, c, k))
                    .sum();
                g.pass_at_k.insert(k, total / per_task.len() as f64);
            }
        }
    }
    g
}

/// Groups per (agent, dataset), sorted.
pub fn by_agent_dataset(rows: &[TrialRow]) -> Vec<Group> {
    let mut map: BTreeMap<(&str, &str), Vec<&TrialRow>> = BTreeMap::new();
    for r in rows {
        map.entry((&r.agent, &r.dataset)).or_default().push(r);
    }
    map.into_iter()
        .map(|((a, d), rs)| group(a, d, rs))
        .collect()
}

/// Reward histogram: 10 bins over [0, 1] plus counts of no reward and out-of-range values.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct Histogram {
    pub bins: Vec<usize>,
    pub no_reward: usize,
    pub below: usize,
    pub above: usize,
}

pub fn histogram(rows: &[TrialRow]) -> Histogram {
    let mut h = Histogram {
        bins: vec![0; 10],
        ..Default::default()
    };
    for r in rows.iter().filter(|r| r.counted()) {
        match r.reward {
            None => h.no_reward += 1,
            Some(x) if x < 0.0 => h.below += 1,
            Some(x) if x > 1.0 => h.above += 1,
            Some(x) => h.bins[((x * 10.0) as usize).min(9)] += 1,
        }
    }
    h
}

/// Mean seconds per phase over the trials that ran it.
pub fn phase_means(rows: &[TrialRow]) -> BTreeMap<String, f64> {
    let mut acc: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for r in rows {
        for (p, s) in &r.phases {
            let e = acc.entry(p).or_default();
            e.0 += s;
            e.1 += 1;
        }
    }
    acc.into_iter()
        .map(|(p, (s, n))| (p.to_string(), s / n as f64))
        .collect()
}

/// How many trials ended with each error kind.
pub fn error_counts(rows: &[TrialRow]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in rows {
        if let Some(k) = &r.error_kind {
            *m.entry(k.clone()).or_default() += 1;
        }
    }
    m
}

/// One task in a comparison of two jobs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskChange {
    pub task: String,
    pub n_a: usize,
    pub n_b: usize,
    pub mean_a: Option<f64>,
    pub mean_b: Option<f64>,
    pub delta: Option<f64>,
}

/// The comparison of job A (baseline) and job B.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Comparison {
    pub n_a: usize,
    pub n_b: usize,
    pub passed_a: usize,
    pub passed_b: usize,
    pub pass_rate_a: Option<f64>,
    pub pass_rate_b: Option<f64>,
    /// `pass_rate_b − pass_rate_a`.
    pub pass_rate_delta: Option<f64>,
    /// 95 % Newcombe hybrid score interval of the difference.
    pub ci95: Option<(f64, f64)>,
    pub tasks: Vec<TaskChange>,
}

pub fn compare(a: &[TrialRow], b: &[TrialRow]) -> Comparison {
    let ga = group("", "", a);
    let gb = group("", "", b);
    let mut tasks: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for r in a.iter().filter(|r| r.counted()) {
        tasks.entry(&r.task).or_default().0.push(r.score());
    }
    for r in b.iter().filter(|r| r.counted()) {
        tasks.entry(&r.task).or_default().1.push(r.score());
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let mut tasks: Vec<TaskChange> = tasks
        .into_iter()
        .map(|(t, (va, vb))| {
            let (ma, mb) = (mean(&va), mean(&vb));
            TaskChange {
                task: t.to_string(),
                n_a: va.len(),
                n_b: vb.len(),
                mean_a: ma,
                mean_b: mb,
                delta: ma.zip(mb).map(|(x, y)| y - x),
            }
        })
        .collect();
    // Largest changes first; tasks present in one job only last.
    tasks.sort_by(|x, y| {
        let k = |t: &TaskChange| t.delta.map_or(-1.0, f64::abs);
        k(y).total_cmp(&k(x)).then(x.task.cmp(&y.task))
    });
    let both = ga.n > 0 && gb.n > 0;
    Comparison {
        n_a: ga.n,
        n_b: gb.n,
        passed_a: ga.n_passed,
        passed_b: gb.n_passed,
        pass_rate_a: ga.pass_rate,
        pass_rate_b: gb.pass_rate,
        pass_rate_delta: ga.pass_rate.zip(gb.pass_rate).map(|(x, y)| y - x),
        ci95: both.then(|| newcombe(ga.n_passed, ga.n, gb.n_passed, gb.n, Z95)),
        tasks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_reference_values() {
        // Newcombe (1998), table I: 81/263 → 0.2553 to 0.3662.
        let (l, u) = wilson(81, 263, Z95);
        assert!(
            (l - 0.2553).abs() < 1e-4 && (u - 0.3662).abs() < 1e-4,
            "{l} {u}"
        );
        assert_eq!(wilson(0, 0, Z95), (0.0, 1.0));
    }

    #[test]
    fn newcombe_matches_reference_values() {
        // Newcombe (1998), table II example: 56/70 vs 48/80 → difference 0.2 with
        // method 10 interval 0.0524 to 0.3339 (for p1 − p2).
        let (l, u) = newcombe(48, 80, 56, 70, Z95);
        assert!(
            (l - 0.0524).abs() < 1e-4 && (u - 0.3339).abs() < 1e-4,
            "{l} {u}"
        );
    }

    #[test]
    fn group_counts_errors_as_zero_and_skips_running() {
        let row = |task: &str, reward: Option<f64>, status: &'static str| TrialRow {
            name: task.into(),
            task: task.into(),
            agent: "a".into(),
            model: None,
            dataset: "-".into(),
            attempt: None,
            status,
            reward,
            rewards: Default::default(),
            error_kind: (status == "error").then(|| "agent_execution_timeout".into()),
            error_message: None,
            started_at: None,
            finished_at: None,
            seconds: None,
            phases: Default::default(),
        };
        let rows = [
            row("t1", Some(1.0), "ok"),
            row("t2", None, "error"),
            row("t3", None, "running"),
        ];
        let g = group("a", "-", &rows);
        assert_eq!((g.n, g.n_passed, g.n_errors, g.n_running), (2, 1, 1, 1));
        assert_eq!(g.mean_reward, Some(0.5));
        assert_eq!(g.pass_at_k.get(&1), Some(&0.5));
        let c = compare(&rows[..1], &rows[..2]);
        assert_eq!(c.pass_rate_delta, Some(-0.5));
        assert_eq!(c.tasks[0].task, "t1");
        assert_eq!(c.tasks[0].delta, Some(0.0));
    }
}
