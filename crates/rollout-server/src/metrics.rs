//! Prometheus metrics: counters incremented where things happen, durations as histograms.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the duration histograms' buckets.
const BUCKETS: [f64; 12] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];

/// A fixed-bucket histogram of seconds.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds (atomic integer arithmetic).
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let s = seconds.max(0.0);
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add((s * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.counts[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Every metric the server exports.
#[derive(Default)]
pub struct Metrics {
    pub batches_total: AtomicU64,
    pub batches_active: AtomicU64,
    pub batches_queued: AtomicU64,
    pub batches_completed: AtomicU64,
    pub batches_failed: AtomicU64,
    pub batches_cancelled: AtomicU64,
    pub batches_interrupted: AtomicU64,
    pub tasks_total: AtomicU64,
    pub tasks_passed: AtomicU64,
    pub tasks_failed: AtomicU64,
    pub submissions_rejected: AtomicU64,
    pub auth_failures: AtomicU64,
    pub http_requests: AtomicU64,
    pub task_duration: Histogram,
    pub batch_duration: Histogram,
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(c: &AtomicU64) {
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(1))
        });
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut one = |name: &str, kind: &str, help: &str, c: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP rollout_serve_{name} {help}\n# TYPE rollout_serve_{name} {kind}\nrollout_serve_{name} {}",
                c.load(Ordering::Relaxed)
            );
        };
        one(
            "batches_total",
            "counter",
            "Runs submitted (batches and jobs).",
            &self.batches_total,
        );
        one(
            "batches_active",
            "gauge",
            "Runs running now.",
            &self.batches_active,
        );
        one(
            "batches_queued",
            "gauge",
            "Runs waiting for a slot (--max-batches).",
            &self.batches_queued,
        );
        one(
            "batches_completed",
            "counter",
            "Runs that finished.",
            &self.batches_completed,
        );
        one(
            "batches_failed",
            "counter",
            "Runs that failed before or while running.",
            &self.batches_failed,
        );
        one(
            "batches_cancelled",
            "counter",
            "Runs cancelled by a client.",
            &self.batches_cancelled,
        );
        one(
            "batches_interrupted",
            "counter",
            "Runs interrupted by a shutdown.",
            &self.batches_interrupted,
        );
        one(
            "tasks_total",
            "counter",
            "Trials finished.",
            &self.tasks_total,
        );
        one(
            "tasks_passed",
            "counter",
            "Trials finished with reward 1.",
            &self.tasks_passed,
        );
        one(
            "tasks_failed",
            "counter",
            "Trials finished with reward below 1 or an error.",
            &self.tasks_failed,
        );
        one(
            "submissions_rejected_total",
            "counter",
            "Submissions refused (bad archive or config, limits).",
            &self.submissions_rejected,
        );
        one(
            "auth_failures_total",
            "counter",
            "Requests refused by authentication.",
            &self.auth_failures,
        );
        one(
            "http_requests_total",
            "counter",
            "HTTP requests received.",
            &self.http_requests,
        );
        self.task_duration.render(
            &mut out,
            "rollout_serve_task_duration_seconds",
            "Duration of finished trials.",
        );
        self.batch_duration.render(
            &mut out,
            "rollout_serve_batch_duration_seconds",
            "Duration of finished runs.",
        );
        self.render_seed(&mut out);
        out
    }

    /// The same counters under the term-executor's names, so that its dashboards and alerts
    /// keep working against rollout.
    fn render_seed(&self, out: &mut String) {
        let seed = [
            (
                "batches_total",
                "counter",
                "Total batches submitted.",
                Self::get(&self.batches_total),
            ),
            (
                "batches_active",
                "gauge",
                "Currently running batches.",
                Self::get(&self.batches_active),
            ),
            (
                "batches_completed",
                "counter",
                "Completed batches.",
                Self::get(&self.batches_completed),
            ),
            (
                "tasks_total",
                "counter",
                "Total tasks evaluated.",
                Self::get(&self.tasks_total),
            ),
            (
                "tasks_passed",
                "counter",
                "Tasks that passed (reward=1).",
                Self::get(&self.tasks_passed),
            ),
            (
                "tasks_failed",
                "counter",
                "Tasks that failed (reward=0).",
                Self::get(&self.tasks_failed),
            ),
            (
                "duration_ms_sum",
                "counter",
                "Sum of batch durations in ms.",
                self.batch_duration.sum_us.load(Ordering::Relaxed) / 1000,
            ),
        ];
        for (name, kind, help, value) in seed {
            let _ = writeln!(
                out,
                "# HELP term_executor_{name} {help}\n# TYPE term_executor_{name} {kind}\nterm_executor_{name} {value}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.task_duration.observe(0.5);
        m.task_duration.observe(7.0);
        let text = m.render();
        assert!(
            text.contains("rollout_serve_task_duration_seconds_bucket{le=\"1\"} 1"),
            "{text}"
        );
        assert!(text.contains("rollout_serve_task_duration_seconds_bucket{le=\"10\"} 2"));
        assert!(text.contains("rollout_serve_task_duration_seconds_count 2"));
        assert!(text.contains("rollout_serve_task_duration_seconds_sum 7.5"));
    }

    #[test]
    fn the_seed_metric_names_are_exported_too() {
        let m = Metrics::default();
        Metrics::inc(&m.batches_total);
        Metrics::inc(&m.tasks_passed);
        m.batch_duration.observe(1.234);
        let text = m.render();
        assert!(text.contains("\nterm_executor_batches_total 1\n"), "{text}");
        assert!(text.contains("\nterm_executor_tasks_passed 1\n"), "{text}");
        assert!(
            text.contains("\nterm_executor_duration_ms_sum 1234\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE term_executor_batches_active gauge"));
        assert!(text.contains("\nrollout_serve_batches_total 1\n"));
    }
}
