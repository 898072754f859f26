//! Live progress: a bar with done/running/errored and the mean reward so far when stdout is a
//! terminal; one plain line per finished trial otherwise. Both go to stderr.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rollout_runner::{Event, EventSink};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Default)]
struct Counts {
    done: usize,
    running: usize,
    errored: usize,
    reward_sum: f64,
    scored: usize,
}

/// The progress display.
pub struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    counts: Mutex<Counts>,
    started: Instant,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        Self {
            bar,
            total,
            counts: Mutex::new(Counts::default()),
            started: Instant::now(),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn line(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }
}

impl EventSink for Progress {
    fn on_event(&self, event: &Event) {
        let mut c = self.counts.lock().expect("progress poisoned");
        match event {
            Event::JobStarted {
                job_name,
                job_dir,
                n_trials,
                concurrency,
                ..
            } => {
                self.line(format!(
                    "job {job_name}: {n_trials} trial(s), {concurrency} at a time → {}",
                    job_dir.display()
                ));
            }
            Event::TrialStarted { .. } => c.running += 1,
            Event::TrialFinished { result, .. } => {
                c.running = c.running.saturating_sub(1);
                c.done += 1;
                if result.is_errored() {
                    c.errored += 1;
                }
                if !result.is_cancelled() {
                    c.reward_sum += result.score();
                    c.scored += 1;
                }
                let outcome = match (&result.error, result.reward) {
                    (Some(e), Some(r)) => {
                        format!("reward {r} with error {}: {}", e.kind, e.message)
                    }
                    (Some(e), None) => format!("error {}: {}", e.kind, e.message),
                    (None, Some(r)) => format!("reward {r}"),
                    (None, None) => "done".into(),
                };
                let width = self.total.to_string().len();
                let show = self.bar.is_none() || result.error.is_some();
                if show {
                    self.line(format!(
                        "[{:>width$}/{}] {} {outcome} ({:.1} s)",
                        c.done, self.total, result.trial_name, result.seconds
                    ));
                }
            }
            Event::Cancelling => self.line(
                "cancelling: running trials are being stopped and their containers removed".into(),
            ),
            Event::Note { trial, message } => self.line(match trial {
                Some(t) => format!("{t}: {message}"),
                None => message.clone(),
            }),
            _ => {}
        }
        if let Some(bar) = &self.bar {
            bar.set_position(c.done as u64);
            let mean = if c.scored > 0 {
                format!("{:.3}", c.reward_sum / c.scored as f64)
            } else {
                "-".into()
            };
            bar.set_message(format!(
                "running {}  errored {}  mean reward {mean}",
                c.running, c.errored
            ));
        } else if matches!(event, Event::JobFinished { .. }) {
            eprintln!(
                "finished {} trial(s) in {:.1} s",
                c.done,
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}
