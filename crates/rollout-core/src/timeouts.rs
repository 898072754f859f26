//! Timeout arithmetic: task value, replaced by the job override, times the multiplier, capped by
//! `max × multiplier` (FORMATS.md §2). The one place that decides how long each phase may run.

use crate::job_config::{AgentSpec, JobConfig};
use crate::task_config::TaskConfig;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The multipliers of a job. A specific multiplier replaces the general one when set
/// (Harbor's semantics), it does not multiply with it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Multipliers {
    pub general: f64,
    pub agent: Option<f64>,
    pub agent_install: Option<f64>,
    pub verifier: Option<f64>,
    pub build: Option<f64>,
}

impl Default for Multipliers {
    fn default() -> Self {
        Self {
            general: 1.0,
            agent: None,
            agent_install: None,
            verifier: None,
            build: None,
        }
    }
}

impl Multipliers {
    /// The multipliers a job file asks for.
    pub fn from_job(job: &JobConfig) -> Self {
        Self {
            general: job.timeout_multiplier.unwrap_or(1.0),
            agent: job.agent_timeout_multiplier,
            agent_install: job.agent_install_timeout_multiplier,
            verifier: job.verifier_timeout_multiplier,
            build: job.build_timeout_multiplier,
        }
    }
}

/// The effective timeouts of one trial.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Timeouts {
    pub build: Duration,
    pub agent_install: Duration,
    pub agent: Duration,
    pub verifier: Duration,
}

/// `min(override or task, max) × multiplier`, in seconds; `max` absent means no cap.
pub fn effective_seconds(
    task_value: f64,
    override_value: Option<f64>,
    max: Option<f64>,
    multiplier: f64,
) -> f64 {
    let base = override_value.unwrap_or(task_value);
    let capped = match max {
        Some(m) => base.min(m),
        None => base,
    };
    (capped * multiplier).max(0.0)
}

/// Seconds as a `Duration`, saturating on absurd values.
pub fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)
}

impl Timeouts {
    /// The timeouts of a trial of `task` with `agent` in `job`.
    pub fn resolve(task: &TaskConfig, agent: &AgentSpec, job: &JobConfig, m: Multipliers) -> Self {
        let g = m.general;
        Self {
            build: seconds(effective_seconds(
                task.environment.build_timeout_sec,
                None,
                None,
                m.build.unwrap_or(g),
            )),
            agent_install: seconds(effective_seconds(
                task.agent.install_timeout_sec,
                agent.override_install_timeout_sec,
                None,
                m.agent_install.unwrap_or(g),
            )),
            agent: seconds(effective_seconds(
                task.agent.timeout_sec,
                agent.override_timeout_sec,
                agent.max_timeout_sec,
                m.agent.unwrap_or(g),
            )),
            verifier: seconds(effective_seconds(
                task.verifier.timeout_sec,
                job.verifier.override_timeout_sec,
                job.verifier.max_timeout_sec,
                m.verifier.unwrap_or(g),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        assert_eq!(effective_seconds(600.0, None, None, 1.0), 600.0);
        assert_eq!(effective_seconds(600.0, Some(120.0), None, 1.0), 120.0);
        assert_eq!(effective_seconds(600.0, None, None, 2.5), 1500.0);
        // capped by max × multiplier
        assert_eq!(effective_seconds(600.0, None, Some(300.0), 2.0), 600.0);
        assert_eq!(effective_seconds(100.0, None, Some(300.0), 2.0), 200.0);
        // override above the cap is still capped
        assert_eq!(
            effective_seconds(100.0, Some(900.0), Some(300.0), 1.0),
            300.0
        );
    }

    #[test]
    fn specific_multiplier_replaces_general() {
        let task = TaskConfig::default();
        let job = JobConfig {
            timeout_multiplier: Some(2.0),
            agent_timeout_multiplier: Some(0.5),
            ..Default::default()
        };
        let agent = AgentSpec {
            name: "a".into(),
            ..Default::default()
        };
        let t = Timeouts::resolve(&task, &agent, &job, Multipliers::from_job(&job));
        assert_eq!(t.agent, Duration::from_secs(300));
        assert_eq!(t.verifier, Duration::from_secs(1200));
        assert_eq!(t.agent_install, Duration::from_secs(600));
        assert_eq!(t.build, Duration::from_secs(1200));
    }

    #[test]
    fn job_verifier_override_and_cap() {
        let task = TaskConfig::default();
        let mut job = JobConfig::default();
        job.verifier.override_timeout_sec = Some(30.0);
        let agent = AgentSpec {
            name: "a".into(),
            override_timeout_sec: Some(5.0),
            ..Default::default()
        };
        let t = Timeouts::resolve(&task, &agent, &job, Multipliers::default());
        assert_eq!(t.verifier, Duration::from_secs(30));
        assert_eq!(t.agent, Duration::from_secs(5));
    }

    #[test]
    fn seconds_saturates() {
        assert_eq!(seconds(f64::INFINITY), Duration::MAX);
        assert_eq!(seconds(0.25), Duration::from_millis(250));
    }
}
