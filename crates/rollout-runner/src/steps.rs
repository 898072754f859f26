//! Multi-step tasks (`[[steps]]`, Harbor's `MultiStepTrial`): one environment, the steps in
//! order. Per step: the logs of the previous step are cleared, `steps/<name>/workdir/` is
//! uploaded into the working directory and its `setup.sh` run, the step's healthcheck waited
//! for, the agent given the step's instruction, the step verified (top-level `tests/` merged
//! under `steps/<name>/tests/`), its artifacts and logs collected into `steps/<name>/`, and
//! `min_reward` decides whether the next step runs. The trial's rewards derive from the steps'
//! by `multi_step_reward_strategy`.
//!
//! Every phase is the trial's own (agent run, verify, collect), run with a step context.

use crate::events::Event;
use crate::sandbox::Mark;
use crate::trial::{bounded, code, Copied, State, TrialRun, VerifySpec};
use chrono::Utc;
use rollout_agents::{AgentContext, AgentFiles, INSTRUCTION_PATH};
use rollout_core::result::{main_reward, ErrorInfo, Phase, StepResult};
use rollout_core::task_config::{
    shell_quote, ArtifactSpec, MinReward, MultiStepRewardStrategy, StepConfig,
};
use rollout_core::timeouts::{Multipliers, Timeouts};
use rollout_core::{ErrorKind, Task};
use rollout_env::archive::TarBuilder;
use rollout_env::{Environment, ExecRequest};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;

/// What verifying a step needs from the trial: when the agent's processes began (all of them
/// are killed before a verifier scores) and the tally of what was copied out.
pub(crate) struct Guard<'a> {
    pub mark: &'a Mark,
    pub copied: &'a Mutex<Copied>,
}
use std::time::{Duration, Instant};

/// Housekeeping commands (clearing directories, copying artifacts) are bounded too.
const HOUSEKEEPING_TIMEOUT: Duration = Duration::from_secs(60);
/// Output kept of a step's `setup.sh`.
const SETUP_OUTPUT_CAP: usize = 64 << 10;

impl TrialRun<'_> {
    /// Run every step of a multi-step task in `env`, after the agent's install. Fills
    /// `st.step_results`, the trial's first error and its rewards.
    pub(crate) async fn run_steps(
        &self,
        env: &dyn Environment,
        base: &AgentContext<'_>,
        st: &mut State,
        guard: &Guard<'_>,
    ) {
        let task = &self.plan.task;
        let steps = &task.config.steps;
        // The agent's install logs (agent/setup/) stay at the trial level.
        let keep_in_agent: Vec<String> = std::fs::read_dir(self.dir.join("agent"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for (i, step) in steps.iter().enumerate() {
            self.emit(Event::StepStarted {
                trial: self.plan.name.clone(),
                step: step.name.clone(),
                index: i + 1,
                total: steps.len(),
            });
            let result = self
                .run_step(env, base, i, step, &keep_in_agent, guard)
                .await;
            if let Some(e) = &result.error {
                st.fail(e.clone());
            }
            let stop = result.stopped.is_some();
            let result = Arc::new(result);
            self.emit(Event::StepFinished {
                trial: self.plan.name.clone(),
                result: result.clone(),
            });
            st.step_results.push(Arc::unwrap_or_clone(result));
            if stop {
                break;
            }
        }
        st.rewards = trial_rewards(
            task.config.multi_step_reward_strategy.unwrap_or_default(),
            &st.step_results,
        );
    }

    async fn run_step(
        &self,
        env: &dyn Environment,
        base: &AgentContext<'_>,
        index: usize,
        step: &StepConfig,
        keep_in_agent: &[String],
        guard: &Guard<'_>,
    ) -> StepResult {
        let (mark, copied) = (guard.mark, guard.copied);
        let task = &self.plan.task;
        let job = &self.shared.job;
        let started_at = Utc::now();
        let t0 = Instant::now();
        let mut st = State::default();
        let step_dir = self.dir.join("steps").join(&step.name);
        for sub in ["agent", "verifier", "artifacts"] {
            if let Err(e) = std::fs::create_dir_all(step_dir.join(sub)) {
                st.fail(ErrorInfo::new(
                    ErrorKind::InternalError,
                    format!("creating {}: {e}", step_dir.join(sub).display()),
                ));
            }
        }
        let timeouts = self.step_timeouts(step);
        let agent_user = step
            .agent_user
            .clone()
            .or_else(|| task.config.agent.user.clone());
        let mut setup = None;
        if st.error.is_none() {
            setup = self
                .phase(
                    &mut st,
                    Phase::StepSetup,
                    true,
                    self.prepare_step(env, index, step, agent_user.clone()),
                )
                .await
                .flatten();
        }
        let mut agent_ran = false;
        if st.error.is_none() {
            let step_task = Task {
                instruction: task
                    .step_instructions
                    .get(index)
                    .cloned()
                    .unwrap_or_default(),
                ..(**task).clone()
            };
            let ctx = AgentContext {
                task: &step_task,
                env: base.env,
                logs_dir: base.logs_dir,
                user: agent_user.clone(),
                install_timeout: base.install_timeout,
                run_timeout: timeouts.agent,
                env_vars: base.env_vars.clone(),
                output_cap: base.output_cap,
            };
            agent_ran = self.agent_phase(&mut st, &ctx).await;
        }
        if agent_ran && !st.cancelled() && !job.config.verifier.disable {
            let mut venv = task.config.verifier.env.clone();
            venv.extend(step.verifier_env.clone());
            let ended = Mutex::new(None);
            let spec = VerifySpec {
                tests: vec![task.tests_dir(), task.step_dir(&step.name).join("tests")],
                timeout: timeouts.verifier,
                env: venv,
                user: step
                    .verifier_user
                    .clone()
                    .or_else(|| task.config.verifier.user.clone()),
            };
            let verified = self
                .phase(&mut st, Phase::Verify, true, async {
                    // Only this step's tests and outputs: a previous step's (or the agent's)
                    // files in /tests or /logs/verifier must not count.
                    self.housekeeping(env, &clear_dirs(&["/tests", "/logs/verifier"]))
                        .await?;
                    self.verify(env, &spec, mark, &ended, copied).await
                })
                .await;
            if let Some((outcome, rewards)) = verified {
                st.verifier = Some(outcome);
                st.rewards = Some(rewards);
            }
            let ended = *ended.lock().expect("not poisoned");
            if let Some(ended) = ended {
                self.agent_ended(&mut st, &ended, self.memory_mb());
            }
        }
        if !st.cancelled() {
            self.phase(&mut st, Phase::Collect, true, async {
                let artifacts: Vec<&ArtifactSpec> = task
                    .config
                    .artifacts
                    .iter()
                    .chain(&step.artifacts)
                    .collect();
                self.stage_artifacts(env, &artifacts).await;
                self.collect(env, copied).await
            })
            .await;
        }
        if let Err(e) = self.archive_step(&step_dir, keep_in_agent) {
            st.fail(ErrorInfo::new(
                ErrorKind::InternalError,
                format!(
                    "moving the logs of step {:?} into {}: {e}",
                    step.name,
                    step_dir.display()
                ),
            ));
        }
        if let Some(e) = st.error.as_mut() {
            if e.kind != ErrorKind::Cancelled {
                e.message = format!("step {:?}: {}", step.name, e.message);
            }
        }
        let stopped = self.stop_reason(step, &st, index + 1 == task.config.steps.len());
        StepResult {
            step_name: step.name.clone(),
            reward: st.rewards.as_ref().and_then(main_reward),
            rewards: st.rewards,
            error: st.error,
            setup,
            agent_run: st.agent_run,
            verifier: st.verifier,
            stopped,
            started_at,
            finished_at: Utc::now(),
            seconds: t0.elapsed().as_secs_f64(),
            phases: st.phases,
        }
    }

    /// The step's agent and verifier timeouts: the step's values (else the task's), through
    /// the job's overrides, caps and multipliers like a single-step trial's.
    fn step_timeouts(&self, step: &StepConfig) -> Timeouts {
        let mut config = self.plan.task.config.clone();
        if let Some(t) = step.agent_timeout_sec {
            config.agent.timeout_sec = t;
        }
        if let Some(t) = step.verifier_timeout_sec {
            config.verifier.timeout_sec = t;
        }
        let job = &self.shared.job.config;
        Timeouts::resolve(
            &config,
            &self.plan.agent_spec,
            job,
            Multipliers::from_job(job),
        )
    }

    /// Why no further step runs after this one (Harbor's rules): it was cancelled, it failed
    /// without a reward, or a reward is under its `min_reward` (a missing key counts as -inf;
    /// not checked when verification is disabled).
    fn stop_reason(&self, step: &StepConfig, st: &State, last: bool) -> Option<String> {
        if last {
            return None;
        }
        if st.cancelled() {
            return Some("cancelled: the remaining steps did not run".into());
        }
        if let (Some(e), None) = (&st.error, &st.rewards) {
            return Some(format!(
                "the step failed ({}) without a reward: the remaining steps did not run",
                e.kind
            ));
        }
        if self.shared.job.config.verifier.disable {
            return None;
        }
        let thresholds: BTreeMap<String, f64> = match step.min_reward.as_ref()? {
            MinReward::Reward(r) => BTreeMap::from([("reward".to_string(), *r)]),
            MinReward::PerKey(k) => k.clone(),
        };
        for (key, min) in thresholds {
            let actual = st
                .rewards
                .as_ref()
                .and_then(|r| r.get(&key).copied())
                .unwrap_or(f64::NEG_INFINITY);
            if actual < min {
                return Some(format!(
                    "{key} = {actual} is below min_reward {min}: the remaining steps did not run"
                ));
            }
        }
        None
    }

    /// Before the agent: clear the previous step's logs and tests, give the agent this step's
    /// instruction (and the oracle its solution), upload `workdir/`, run `setup.sh`, wait for
    /// the step's healthcheck. Returns the outcome of `setup.sh` when the step has one.
    async fn prepare_step(
        &self,
        env: &dyn Environment,
        index: usize,
        step: &StepConfig,
        user: Option<String>,
    ) -> Result<Option<rollout_core::result::CommandOutcome>, ErrorInfo> {
        let task = &self.plan.task;
        let clear = clear_dirs(&["/tests", "/logs/agent", "/logs/verifier", "/logs/artifacts"]);
        if index > 0 {
            self.housekeeping(env, &clear).await?;
        }
        self.place_instruction(env, index).await?;
        for files in self.plan.agent.step_files(task, index) {
            self.place_files(env, &files).await?;
        }
        let workdir_src = task.step_dir(&step.name).join("workdir");
        let mut setup = None;
        if workdir_src.is_dir() {
            let workdir = self.workdir(env).await?;
            let src = workdir_src.clone();
            let dest = workdir.clone();
            let tar = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                let mut b = TarBuilder::new();
                b.host_dir(&dest, &src)?;
                b.finish()
            })
            .await
            .map_err(|e| ErrorInfo::new(ErrorKind::InternalError, e.to_string()))?
            .map_err(|e| {
                ErrorInfo::new(
                    ErrorKind::InternalError,
                    format!("packing {}: {e}", workdir_src.display()),
                )
            })?;
            bounded(env.upload_tar(tar), "copying the step's workdir/ in").await?;
            if let Some(u) = user.as_deref().filter(|u| *u != "root" && *u != "0") {
                // The files are the agent's to change (setup.sh may even delete itself).
                let entries: Vec<String> = std::fs::read_dir(&workdir_src)
                    .map(|d| {
                        d.flatten()
                            .map(|e| {
                                shell_quote(&format!(
                                    "{}/{}",
                                    workdir.trim_end_matches('/'),
                                    e.file_name().to_string_lossy()
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if !entries.is_empty() {
                    self.housekeeping(
                        env,
                        &format!("chown -R {} -- {}", shell_quote(u), entries.join(" ")),
                    )
                    .await?;
                }
            }
            if workdir_src.join("setup.sh").is_file() {
                let script = format!("{}/setup.sh", workdir.trim_end_matches('/'));
                let timeout = self.plan.timeouts.build;
                let mut req =
                    ExecRequest::bash(format!("bash {}", shell_quote(&script)), timeout).user(user);
                req.output_cap = SETUP_OUTPUT_CAP;
                let out = env
                    .exec(req)
                    .await
                    .map_err(|e| ErrorInfo::new(e.kind(), e.to_string()))?;
                let rel = Path::new("steps").join(&step.name).join("setup");
                self.write_text(&rel.join("stdout.txt"), &out.stdout.to_text());
                self.write_text(&rel.join("stderr.txt"), &out.stderr.to_text());
                let outcome = rollout_agents::outcome_of(&out);
                if out.timed_out {
                    return Err(ErrorInfo::new(
                        ErrorKind::EnvironmentStartFailed,
                        format!(
                            "workdir/setup.sh ran past its {:.0} s timeout (the task's build timeout)",
                            timeout.as_secs_f64()
                        ),
                    ));
                }
                if !out.success() {
                    let stderr = out.stderr.to_text();
                    let tail: Vec<&str> = stderr.trim().lines().rev().take(3).collect();
                    return Err(ErrorInfo::new(
                        ErrorKind::EnvironmentStartFailed,
                        format!(
                            "workdir/setup.sh exited with {}{}; see steps/{}/setup/stderr.txt",
                            code(&outcome),
                            if tail.is_empty() {
                                String::new()
                            } else {
                                format!(
                                    " (stderr ends: {})",
                                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                                )
                            },
                            step.name
                        ),
                    ));
                }
                setup = Some(outcome);
            }
        }
        if let Some(check) = &step.healthcheck {
            rollout_env::health::wait_healthy(env, check)
                .await
                .map_err(|e| ErrorInfo::new(e.kind(), format!("step healthcheck: {e}")))?;
        }
        Ok(setup)
    }

    /// Put step `index`'s instruction at [`INSTRUCTION_PATH`], where every agent reads it.
    async fn place_instruction(
        &self,
        env: &dyn Environment,
        index: usize,
    ) -> Result<(), ErrorInfo> {
        let text = self
            .plan
            .task
            .step_instructions
            .get(index)
            .cloned()
            .unwrap_or_default();
        let mut tar = TarBuilder::new();
        let packed = tar
            .dir("/rollout", 0o755)
            .and_then(|t| t.file(INSTRUCTION_PATH, 0o644, text.as_bytes()))
            .and_then(|t| {
                let seed_path = crate::trial::instruction_path(&self.shared.job.config);
                if seed_path == INSTRUCTION_PATH {
                    Ok(t)
                } else {
                    t.file(seed_path, 0o644, text.as_bytes())
                }
            })
            .map(|_| ())
            .and_then(|_| tar.finish())
            .map_err(|e| {
                ErrorInfo::new(
                    ErrorKind::InternalError,
                    format!("packing the instruction: {e}"),
                )
            })?;
        bounded(env.upload_tar(packed), "copying the step's instruction in").await
    }

    /// Replace the contents of `files.target` (and its aliases) with `files.source`.
    async fn place_files(
        &self,
        env: &dyn Environment,
        files: &AgentFiles,
    ) -> Result<(), ErrorInfo> {
        let mut script = format!(
            "mkdir -p {t} && find {t} -mindepth 1 -delete",
            t = shell_quote(&files.target)
        );
        for alias in &files.aliases {
            script.push_str(&format!(" && rm -rf {}", shell_quote(alias)));
        }
        self.housekeeping(env, &script).await?;
        let f = files.clone();
        let tar = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut b = TarBuilder::new();
            b.dir(&f.target, 0o755)?;
            if f.source.is_file() {
                if let Some(name) = f.source.file_name() {
                    let bytes = std::fs::read(&f.source)?;
                    b.file(
                        &format!("{}/{}", f.target, name.to_string_lossy()),
                        0o644,
                        &bytes,
                    )?;
                }
            } else if f.source.is_dir() {
                b.host_dir(&f.target, &f.source)?;
            }
            for alias in &f.aliases {
                b.symlink(alias, &f.target)?;
            }
            b.finish()
        })
        .await
        .map_err(|e| ErrorInfo::new(ErrorKind::InternalError, e.to_string()))?
        .map_err(|e| {
            ErrorInfo::new(
                ErrorKind::InternalError,
                format!("packing {}: {e}", files.source.display()),
            )
        })?;
        bounded(env.upload_tar(tar), "copying the agent's step files in").await
    }

    /// The environment's working directory (`[environment] workdir`, else the image's).
    async fn workdir(&self, env: &dyn Environment) -> Result<String, ErrorInfo> {
        if let Some(w) = &self.plan.task.config.environment.workdir {
            return Ok(w.clone());
        }
        let out = env
            .exec(ExecRequest::sh("pwd", HOUSEKEEPING_TIMEOUT))
            .await
            .map_err(|e| ErrorInfo::new(e.kind(), e.to_string()))?;
        let dir = out.stdout.to_text().trim().to_string();
        Ok(if out.success() && dir.starts_with('/') {
            dir
        } else {
            "/".into()
        })
    }

    /// Copy the artifact paths into `/logs/artifacts` (mirroring each source path, or at its
    /// `destination`), from where the collection takes them. A missing path is a note.
    async fn stage_artifacts(&self, env: &dyn Environment, artifacts: &[&ArtifactSpec]) {
        for a in artifacts {
            if a.service.as_deref().is_some_and(|s| s != "main") {
                self.note(format!(
                    "artifact {}: collecting from service {:?} is not supported here; skipped",
                    a.source,
                    a.service.as_deref().unwrap_or_default()
                ));
                continue;
            }
            let rel = a.destination.as_deref().unwrap_or(&a.source);
            let rel: Vec<&str> = rel
                .split('/')
                .filter(|c| !c.is_empty() && *c != "." && *c != "..")
                .collect();
            if rel.is_empty() {
                continue;
            }
            let dest = format!("/logs/artifacts/{}", rel.join("/"));
            let script = format!(
                "[ -e {src} ] || {{ echo missing; exit 3; }}; mkdir -p \"$(dirname {dest})\" && rm -rf {dest} && cp -a -- {src} {dest}",
                src = shell_quote(&a.source),
                dest = shell_quote(&dest)
            );
            match self.housekeeping(env, &script).await {
                Ok(()) => {}
                Err(e) if e.message.contains("exit 3") => self.note(format!(
                    "artifact {} does not exist in the environment",
                    a.source
                )),
                Err(e) => self.note(format!("artifact {}: {}", a.source, e.message)),
            }
        }
    }

    /// Run a bounded command as root; a failure is an error naming it.
    async fn housekeeping(&self, env: &dyn Environment, script: &str) -> Result<(), ErrorInfo> {
        let mut req =
            ExecRequest::sh(script.to_string(), HOUSEKEEPING_TIMEOUT).user(Some("0".into()));
        req.output_cap = 4096;
        let out = env
            .exec(req)
            .await
            .map_err(|e| ErrorInfo::new(e.kind(), e.to_string()))?;
        if out.success() {
            return Ok(());
        }
        Err(ErrorInfo::new(
            ErrorKind::EnvironmentApiError,
            format!(
                "`{script}` failed (exit {}): {}",
                out.exit_code.map_or("none".into(), |c| c.to_string()),
                out.stderr.to_text().trim()
            ),
        ))
    }

    /// Move what the step left in the trial's `agent/`, `verifier/`, `artifacts/` into
    /// `steps/<name>/`, leaving those directories empty for the next step.
    fn archive_step(&self, step_dir: &Path, keep_in_agent: &[String]) -> std::io::Result<()> {
        for sub in ["agent", "verifier", "artifacts"] {
            let from = self.dir.join(sub);
            let to = step_dir.join(sub);
            std::fs::create_dir_all(&to)?;
            let Ok(entries) = std::fs::read_dir(&from) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if sub == "agent" && keep_in_agent.iter().any(|k| *k == *name.to_string_lossy()) {
                    continue;
                }
                let dest = to.join(&name);
                if std::fs::rename(entry.path(), &dest).is_err() {
                    // Another filesystem, or a directory we may not re-parent: copy, then drop.
                    if entry.file_type()?.is_dir() {
                        rollout_env::archive::copy_tree(&entry.path(), &dest)?;
                        std::fs::remove_dir_all(entry.path())?;
                    } else {
                        std::fs::copy(entry.path(), &dest)?;
                        std::fs::remove_file(entry.path())?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A command that empties each directory (keeping the directory itself: it may be a mount),
/// creating it when absent.
fn clear_dirs(dirs: &[&str]) -> String {
    let list: Vec<String> = dirs.iter().map(|d| shell_quote(d)).collect();
    let list = list.join(" ");
    format!("mkdir -p {list} && find {list} -mindepth 1 -delete")
}

/// The trial's rewards from its steps' (Harbor's `_select_multi_step_reward`): `final` takes
/// the last step that ran; `mean` averages each key over the steps that were verified, a key a
/// step did not write counting 0. No verified step: no rewards.
pub(crate) fn trial_rewards(
    strategy: MultiStepRewardStrategy,
    steps: &[StepResult],
) -> Option<BTreeMap<String, f64>> {
    match strategy {
        MultiStepRewardStrategy::Final => steps.last().and_then(|s| s.rewards.clone()),
        MultiStepRewardStrategy::Mean => {
            let verified: Vec<&BTreeMap<String, f64>> =
                steps.iter().filter_map(|s| s.rewards.as_ref()).collect();
            if verified.is_empty() {
                return None;
            }
            let keys: std::collections::BTreeSet<&String> =
                verified.iter().flat_map(|r| r.keys()).collect();
            if keys.is_empty() {
                return None;
            }
            let n = verified.len() as f64;
            Some(
                keys.into_iter()
                    .map(|k| {
                        let sum: f64 = verified
                            .iter()
                            .map(|r| r.get(k).copied().unwrap_or(0.0))
                            .sum();
                        (k.clone(), sum / n)
                    })
                    .collect(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, rewards: Option<&[(&str, f64)]>) -> StepResult {
        let rewards: Option<BTreeMap<String, f64>> =
            rewards.map(|r| r.iter().map(|(k, v)| (k.to_string(), *v)).collect());
        StepResult {
            step_name: name.into(),
            reward: rewards.as_ref().and_then(main_reward),
            rewards,
            error: None,
            setup: None,
            agent_run: None,
            verifier: None,
            stopped: None,
            started_at: Utc::now(),
            finished_at: Utc::now(),
            seconds: 0.0,
            phases: BTreeMap::new(),
        }
    }

    #[test]
    fn mean_averages_each_key_over_verified_steps_missing_keys_count_zero() {
        let steps = [
            step("a", Some(&[("reward", 1.0), ("style", 1.0)])),
            step("b", None),
            step("c", Some(&[("reward", 0.0)])),
        ];
        let r = trial_rewards(MultiStepRewardStrategy::Mean, &steps).unwrap();
        assert_eq!(r["reward"], 0.5);
        assert_eq!(r["style"], 0.5);
        assert_eq!(r.len(), 2);
        assert_eq!(
            trial_rewards(MultiStepRewardStrategy::Mean, &[step("x", None)]),
            None
        );
    }

    #[test]
    fn final_takes_the_last_step_that_ran_even_without_a_reward() {
        let steps = [
            step("a", Some(&[("reward", 1.0)])),
            step("b", Some(&[("reward", 0.25)])),
        ];
        let r = trial_rewards(MultiStepRewardStrategy::Final, &steps).unwrap();
        assert_eq!(r["reward"], 0.25);
        let steps = [step("a", Some(&[("reward", 1.0)])), step("b", None)];
        assert_eq!(trial_rewards(MultiStepRewardStrategy::Final, &steps), None);
    }
}
