//! An in-memory [`Provider`] for tests (cargo feature `testing`): no container engine is
//! touched. Every behaviour is scripted: what preparing an image and creating an environment
//! do on the Nth call, what each command run in an environment does (exit code, output, how long
//! it runs, whether it hangs past its own timeout, whether the engine call fails, which files it
//! writes), and what the environment's file system "contains" (`/logs/verifier/reward.txt` …).
//! A [`Ledger`] records every call so that tests can check what the runner did: environments
//! created against destroyed, commands run, the largest number of environments alive at once.
//!
//! Commands are told apart by [`Role`]: the runner's own helpers (the process mark before the
//! agent, ending the agent before the verifier, the OOM probe), the verifier (`/tests/test.sh`),
//! and everything else (the agent's commands), matched by a substring of their script.
//!
//! ```ignore
//! let fake = FakeProvider::new();
//! fake.on_create([Act::fail(EnvError::StartFailed("no space".into())), Act::ok()]);
//! fake.on_exec(Match::Contains("solve".into()), [Act::exit(0).after(Duration::from_secs(5))]);
//! fake.verifier([Act::ok().writes("/logs/verifier/reward.txt", "1")]);
//! ```

use crate::{
    DownloadInfo, EnvError, EnvSpec, Environment, ExecOutput, ExecRequest, ImageSource,
    PreparedImage, Provider,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What one scripted call does.
#[derive(Debug, Clone, Default)]
pub struct Act {
    /// Exit code of a command.
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
    /// How long the call takes (tokio time: use paused time in tests). A command whose delay
    /// reaches its request's timeout ends timed out at the timeout, as the real providers do.
    pub delay: Duration,
    /// Never return, whatever the request's timeout (a provider or agent whose own timeout
    /// handling hangs).
    pub hang: bool,
    /// Fail the call with this error (after `delay`).
    pub error: Option<EnvError>,
    /// Files the command writes into the environment (absolute path, content), on success.
    pub writes: Vec<(String, Vec<u8>)>,
    /// Set `output_limit_exceeded` on the command's output.
    pub output_limit_exceeded: bool,
}

impl Act {
    /// Success: exit 0 at once.
    pub fn ok() -> Self {
        Self::default()
    }

    /// Exit with `code` at once.
    pub fn exit(code: i64) -> Self {
        Self {
            exit_code: code,
            ..Self::default()
        }
    }

    /// Fail the call with `error`.
    pub fn fail(error: EnvError) -> Self {
        Self {
            error: Some(error),
            ..Self::default()
        }
    }

    /// Never return.
    pub fn hang() -> Self {
        Self {
            hang: true,
            ..Self::default()
        }
    }

    /// Take `delay` before returning.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Write `content` at `path` in the environment when the command succeeds.
    pub fn writes(mut self, path: &str, content: impl Into<Vec<u8>>) -> Self {
        self.writes.push((path.to_string(), content.into()));
        self
    }

    pub fn stdout(mut self, text: &str) -> Self {
        self.stdout = text.to_string();
        self
    }

    pub fn stderr(mut self, text: &str) -> Self {
        self.stderr = text.to_string();
        self
    }

    /// A verifier writing `text` to `/logs/verifier/reward.txt`.
    pub fn reward_txt(text: &str) -> Self {
        Self::ok().writes("/logs/verifier/reward.txt", text)
    }

    /// A verifier writing `json` to `/logs/verifier/reward.json`.
    pub fn reward_json(json: &str) -> Self {
        Self::ok().writes("/logs/verifier/reward.json", json)
    }
}

/// Which command an exec is, as far as the fake can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The runner's mark of where the agent's processes begin (reads `/proc/self/stat`).
    Mark,
    /// The runner ending the agent's processes before the verifier (`rollout-end-agent`).
    EndAgent,
    /// The runner reading the OOM-kill count.
    OomProbe,
    /// The verifier: `/tests/test.sh`.
    Verifier,
    /// Anything else: the agent's commands, healthchecks, housekeeping.
    Other,
}

impl Role {
    /// Classify a request.
    pub fn of(req: &ExecRequest) -> Self {
        let script = req.argv.get(2).map(String::as_str).unwrap_or_default();
        if req.argv.iter().any(|a| a == "rollout-end-agent") {
            Role::EndAgent
        } else if script.contains("/proc/self/stat") {
            Role::Mark
        } else if script.starts_with("oom()") {
            Role::OomProbe
        } else if script.contains("/tests/test.sh") {
            Role::Verifier
        } else {
            Role::Other
        }
    }
}

/// Which execs a rule applies to.
#[derive(Debug, Clone, PartialEq)]
pub enum Match {
    Role(Role),
    /// A command of role [`Role::Other`] whose argv contains this text.
    Contains(String),
}

impl Match {
    fn matches(&self, role: Role, req: &ExecRequest) -> bool {
        match self {
            Match::Role(r) => *r == role,
            Match::Contains(s) => role == Role::Other && req.argv.iter().any(|a| a.contains(s)),
        }
    }
}

/// A sequence of acts: each call takes the next, the last one repeats.
#[derive(Debug, Clone, Default)]
struct Seq(VecDeque<Act>);

impl Seq {
    fn new(acts: impl IntoIterator<Item = Act>) -> Self {
        Self(acts.into_iter().collect())
    }

    fn next(&mut self) -> Act {
        if self.0.len() > 1 {
            self.0.pop_front().unwrap_or_default()
        } else {
            self.0.front().cloned().unwrap_or_default()
        }
    }
}

#[derive(Debug, Default)]
struct Script {
    prepare: Seq,
    create: Seq,
    destroy: Seq,
    upload: Seq,
    download: Seq,
    /// Later rules win.
    rules: Vec<(Match, Seq)>,
    /// Files every new environment contains.
    files: BTreeMap<String, Vec<u8>>,
}

/// One recorded exec.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecRecord {
    pub env: String,
    pub role: Role,
    /// The script (`argv[2]`) or the argv joined.
    pub command: String,
    pub user: Option<String>,
    pub timeout: Duration,
    /// Whether it has returned (false while it runs or when it was dropped mid-way).
    pub finished: bool,
}

/// What the fake saw.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub prepares: usize,
    /// Calls to `create` (failed ones included).
    pub create_calls: usize,
    /// Environments created (ids in creation order).
    pub created: Vec<String>,
    /// Environments destroyed through [`Environment::destroy`] (each once).
    pub destroyed: BTreeSet<String>,
    /// Calls to `destroy` (repeats included).
    pub destroy_calls: usize,
    /// Environments removed by [`Provider::remove_labelled`].
    pub swept: BTreeSet<String>,
    /// Environments alive now.
    pub live: BTreeSet<String>,
    /// The most environments alive at once.
    pub max_live: usize,
    pub execs: Vec<ExecRecord>,
    pub uploads: usize,
    pub downloads: Vec<(String, String)>,
    pub forget_failures: usize,
    /// A line per call, in order (`create fake-1`, `exec fake-1 verifier`, `destroy fake-1` …).
    pub log: Vec<String>,
}

impl Ledger {
    /// Execs of `role` started so far.
    pub fn execs_of(&self, role: Role) -> usize {
        self.execs.iter().filter(|e| e.role == role).count()
    }

    /// Execs of `role` that have started and not returned.
    pub fn running(&self, role: Role) -> usize {
        self.execs
            .iter()
            .filter(|e| e.role == role && !e.finished)
            .count()
    }

    /// Environments created and never removed (neither destroyed nor swept).
    pub fn leaked(&self) -> Vec<String> {
        self.live.iter().cloned().collect()
    }
}

struct Inner {
    script: Mutex<Script>,
    ledger: Mutex<Ledger>,
    /// Bumped on every ledger change, for [`FakeProvider::until`].
    changed: tokio::sync::watch::Sender<u64>,
    next_id: Mutex<u64>,
    labels: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
}

impl Inner {
    fn record<T>(&self, f: impl FnOnce(&mut Ledger) -> T) -> T {
        let out = f(&mut self.ledger.lock().expect("ledger poisoned"));
        self.changed.send_modify(|n| *n += 1);
        out
    }

    fn script<T>(&self, f: impl FnOnce(&mut Script) -> T) -> T {
        f(&mut self.script.lock().expect("script poisoned"))
    }
}

/// The in-memory provider. Cheap to clone (shared state).
#[derive(Clone)]
pub struct FakeProvider {
    inner: Arc<Inner>,
}

impl Default for FakeProvider {
    fn default() -> Self {
        Self::new()
    }
}

async fn play(act: &Act) -> Result<(), EnvError> {
    if act.hang {
        std::future::pending::<()>().await;
    }
    if !act.delay.is_zero() {
        tokio::time::sleep(act.delay).await;
    }
    match &act.error {
        Some(e) => Err(e.clone()),
        None => Ok(()),
    }
}

impl FakeProvider {
    /// Everything succeeds at once; the verifier writes `reward.txt` = 1.
    pub fn new() -> Self {
        let script = Script {
            rules: vec![
                (
                    Match::Role(Role::Mark),
                    Seq::new([Act::ok().stdout("start 100\noom 0\n")]),
                ),
                (
                    Match::Role(Role::EndAgent),
                    Seq::new([Act::ok().stdout("killed 0\noom 0\n")]),
                ),
                (
                    Match::Role(Role::OomProbe),
                    Seq::new([Act::ok().stdout("oom 0\n")]),
                ),
                (
                    Match::Role(Role::Verifier),
                    Seq::new([Act::reward_txt("1")]),
                ),
            ],
            ..Script::default()
        };
        Self {
            inner: Arc::new(Inner {
                script: Mutex::new(script),
                ledger: Mutex::new(Ledger::default()),
                changed: tokio::sync::watch::Sender::new(0),
                next_id: Mutex::new(0),
                labels: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// What `prepare_image` does on each call.
    pub fn on_prepare(&self, acts: impl IntoIterator<Item = Act>) -> &Self {
        self.inner.script(|s| s.prepare = Seq::new(acts));
        self
    }

    /// What `create` does on each call (the first call takes the first act …).
    pub fn on_create(&self, acts: impl IntoIterator<Item = Act>) -> &Self {
        self.inner.script(|s| s.create = Seq::new(acts));
        self
    }

    /// What `destroy` does on each call.
    pub fn on_destroy(&self, acts: impl IntoIterator<Item = Act>) -> &Self {
        self.inner.script(|s| s.destroy = Seq::new(acts));
        self
    }

    /// What `upload_tar` does on each call.
    pub fn on_upload(&self, acts: impl IntoIterator<Item = Act>) -> &Self {
        self.inner.script(|s| s.upload = Seq::new(acts));
        self
    }

    /// What `download_dir` does on each call.
    pub fn on_download(&self, acts: impl IntoIterator<Item = Act>) -> &Self {
        self.inner.script(|s| s.download = Seq::new(acts));
        self
    }

    /// What the execs `m` matches do, call after call (rules added later win).
    pub fn on_exec(&self, m: Match, acts: impl IntoIterator<Item = Act>) -> &Self {
        self.inner.script(|s| s.rules.push((m, Seq::new(acts))));
        self
    }

    /// What the verifier does, run after run.
    pub fn verifier(&self, acts: impl IntoIterator<Item = Act>) -> &Self {
        self.on_exec(Match::Role(Role::Verifier), acts)
    }

    /// What agent commands containing `text` do, run after run.
    pub fn agent(&self, text: &str, acts: impl IntoIterator<Item = Act>) -> &Self {
        self.on_exec(Match::Contains(text.to_string()), acts)
    }

    /// A file every environment created from now on contains.
    pub fn contains(&self, path: &str, content: impl Into<Vec<u8>>) -> &Self {
        self.inner
            .script(|s| s.files.insert(path.to_string(), content.into()));
        self
    }

    /// A copy of what was recorded so far.
    pub fn ledger(&self) -> Ledger {
        self.inner.ledger.lock().expect("ledger poisoned").clone()
    }

    /// Wait until `cond` holds of the ledger (checked after every recorded call). This is the
    /// tests' synchronisation point: no sleeps.
    pub async fn until(&self, cond: impl Fn(&Ledger) -> bool) {
        let mut rx = self.inner.changed.subscribe();
        loop {
            if cond(&self.ledger()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn capabilities(&self) -> crate::Capabilities {
        // An in-memory sandbox enforces whatever a task asks of its network (nothing leaves
        // it); it has no GPUs and runs one container per trial.
        let mut caps = crate::Capabilities::minimal("fake");
        caps.network.none = true;
        caps.network.allowlist = crate::Capabilities::all_entry_kinds();
        caps.pids_limit = true;
        caps
    }

    fn host_mounts(&self) -> bool {
        false
    }

    async fn prepare_image(
        &self,
        source: &ImageSource,
        _labels: &BTreeMap<String, String>,
    ) -> Result<PreparedImage, EnvError> {
        let act = self.inner.script(|s| s.prepare.next());
        let n = self.inner.record(|l| {
            l.prepares += 1;
            l.log.push("prepare_image".into());
            l.prepares
        });
        play(&act).await?;
        let reference = match source {
            ImageSource::Prebuilt { reference } => reference.clone(),
            ImageSource::Build { .. } => "rollout-fake:task".into(),
        };
        Ok(PreparedImage {
            reference,
            id: "sha256:fake".into(),
            fresh: n == 1,
            ..Default::default()
        })
    }

    async fn create(
        &self,
        _image: &PreparedImage,
        spec: &EnvSpec,
    ) -> Result<Box<dyn Environment>, EnvError> {
        let (act, files) = self.inner.script(|s| (s.create.next(), s.files.clone()));
        self.inner.record(|l| {
            l.create_calls += 1;
            l.log.push(format!("create {}", spec.name));
        });
        play(&act).await?;
        let id = {
            let mut n = self.inner.next_id.lock().expect("poisoned");
            *n += 1;
            format!("fake-{n}")
        };
        self.inner
            .labels
            .lock()
            .expect("poisoned")
            .insert(id.clone(), spec.labels.clone());
        self.inner.record(|l| {
            l.created.push(id.clone());
            l.live.insert(id.clone());
            l.max_live = l.max_live.max(l.live.len());
            l.log.push(format!("created {id}"));
        });
        Ok(Box::new(FakeEnv {
            id,
            inner: self.inner.clone(),
            files: Mutex::new(files),
        }))
    }

    fn forget_failures(&self) {
        self.inner.record(|l| l.forget_failures += 1);
    }

    async fn remove_labelled(&self, key: &str, value: &str) -> Result<usize, EnvError> {
        let labels = self.inner.labels.lock().expect("poisoned").clone();
        Ok(self.inner.record(|l| {
            let gone: Vec<String> = l
                .live
                .iter()
                .filter(|id| {
                    labels
                        .get(*id)
                        .is_some_and(|m| m.get(key).is_some_and(|v| v == value))
                })
                .cloned()
                .collect();
            for id in &gone {
                l.live.remove(id);
                l.swept.insert(id.clone());
            }
            l.log
                .push(format!("remove_labelled {key} -> {}", gone.len()));
            gone.len()
        }))
    }
}

/// One in-memory environment: a map of files, scripted commands.
pub struct FakeEnv {
    id: String,
    inner: Arc<Inner>,
    files: Mutex<BTreeMap<String, Vec<u8>>>,
}

/// Marks an exec finished when dropped (also when the runner drops it mid-way).
struct Running<'a> {
    inner: &'a Inner,
    index: usize,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.inner.record(|l| l.execs[self.index].finished = true);
    }
}

impl FakeEnv {
    fn remove_under(&self, dir: &str) {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        self.files
            .lock()
            .expect("poisoned")
            .retain(|p, _| !p.starts_with(&prefix));
    }
}

#[async_trait]
impl Environment for FakeEnv {
    fn id(&self) -> &str {
        &self.id
    }

    async fn exec(&self, req: ExecRequest) -> Result<ExecOutput, EnvError> {
        let role = Role::of(&req);
        let act = self.inner.script(|s| {
            s.rules
                .iter_mut()
                .rev()
                .find(|(m, _)| m.matches(role, &req))
                .map(|(_, seq)| seq.next())
                .unwrap_or_default()
        });
        let command = req
            .argv
            .get(2)
            .cloned()
            .unwrap_or_else(|| req.argv.join(" "));
        let index = self.inner.record(|l| {
            l.execs.push(ExecRecord {
                env: self.id.clone(),
                role,
                command: command.clone(),
                user: req.user.clone(),
                timeout: req.timeout,
                finished: false,
            });
            l.log.push(format!("exec {} {role:?}", self.id));
            l.execs.len() - 1
        });
        let _running = Running {
            inner: &self.inner,
            index,
        };
        let mut out = ExecOutput {
            exit_code: Some(act.exit_code),
            timed_out: false,
            output_limit_exceeded: act.output_limit_exceeded,
            stdout: crate::Captured::with_cap(req.output_cap),
            stderr: crate::Captured::with_cap(req.output_cap),
            duration: act.delay,
        };
        if !act.hang && act.delay >= req.timeout {
            // Killed at its timeout, as the real providers do.
            tokio::time::sleep(req.timeout).await;
            out.exit_code = None;
            out.timed_out = true;
            out.duration = req.timeout;
            return Ok(out);
        }
        play(&act).await?;
        if role == Role::EndAgent {
            // The real helper empties /logs/verifier: nothing the agent planted there counts.
            self.remove_under("/logs/verifier");
        }
        {
            let mut files = self.files.lock().expect("poisoned");
            for (path, content) in &act.writes {
                files.insert(path.clone(), content.clone());
            }
        }
        out.stdout.push(act.stdout.as_bytes());
        out.stderr.push(act.stderr.as_bytes());
        out.stdout.finish();
        out.stderr.finish();
        Ok(out)
    }

    async fn upload_tar(&self, tar: Vec<u8>) -> Result<(), EnvError> {
        let act = self.inner.script(|s| s.upload.next());
        self.inner.record(|l| {
            l.uploads += 1;
            l.log.push(format!("upload {}", self.id));
        });
        play(&act).await?;
        let mut archive = ::tar::Archive::new(std::io::Cursor::new(tar));
        let entries = archive
            .entries()
            .map_err(|e| EnvError::host("reading an uploaded archive", e))?;
        let mut files = self.files.lock().expect("poisoned");
        for entry in entries {
            let mut entry = entry.map_err(|e| EnvError::host("reading an uploaded archive", e))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let path = entry
                .path()
                .map_err(|e| EnvError::host("reading an uploaded archive", e))?
                .to_string_lossy()
                .into_owned();
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content)
                .map_err(|e| EnvError::host("reading an uploaded archive", e))?;
            files.insert(format!("/{}", path.trim_start_matches('/')), content);
        }
        Ok(())
    }

    async fn download_dir(
        &self,
        path: &str,
        dest: &Path,
        cap: u64,
    ) -> Result<DownloadInfo, EnvError> {
        let act = self.inner.script(|s| s.download.next());
        self.inner.record(|l| {
            l.downloads.push((self.id.clone(), path.to_string()));
            l.log.push(format!("download {} {path}", self.id));
        });
        play(&act).await?;
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let wanted: Vec<(String, Vec<u8>)> = self
            .files
            .lock()
            .expect("poisoned")
            .iter()
            .filter_map(|(p, c)| Some((p.strip_prefix(&prefix)?.to_string(), c.clone())))
            .collect();
        let mut info = DownloadInfo {
            found: true,
            ..Default::default()
        };
        std::fs::create_dir_all(dest).map_err(|e| EnvError::host("creating a download dir", e))?;
        for (rel, content) in wanted {
            if info.bytes + content.len() as u64 > cap {
                info.truncated = true;
                break;
            }
            let target = dest.join(&rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| EnvError::host("creating a download dir", e))?;
            }
            std::fs::write(&target, &content)
                .map_err(|e| EnvError::host("writing a downloaded file", e))?;
            info.files += 1;
            info.bytes += content.len() as u64;
        }
        Ok(info)
    }

    async fn destroy(&self) -> Result<(), EnvError> {
        let act = self.inner.script(|s| s.destroy.next());
        self.inner.record(|l| {
            l.destroy_calls += 1;
            l.log.push(format!("destroy {}", self.id));
        });
        play(&act).await?;
        self.inner.record(|l| {
            l.live.remove(&self.id);
            l.destroyed.insert(self.id.clone());
        });
        Ok(())
    }

    async fn stop_all(&self) -> Result<(), EnvError> {
        self.inner
            .record(|l| l.log.push(format!("stop_all {}", self.id)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> EnvSpec {
        EnvSpec {
            name: "t".into(),
            labels: BTreeMap::from([("job".to_string(), "j1".to_string())]),
            cpus: 1.0,
            memory_mb: 512,
            storage_mb: 1024,
            pids_limit: 100,
            network: Default::default(),
            allowed_hosts: Vec::new(),
            env: BTreeMap::new(),
            workdir: None,
            mounts: Vec::new(),
            gpus: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn scripted_calls_play_in_order_and_are_recorded() {
        let fake = FakeProvider::new();
        fake.on_create([Act::fail(EnvError::StartFailed("boom".into())), Act::ok()]);
        fake.agent("work", [Act::exit(3).writes("/out/a.txt", "hi")]);
        let image = PreparedImage::default();
        let err = fake
            .create(&image, &spec())
            .await
            .err()
            .expect("first fails");
        assert!(matches!(err, EnvError::StartFailed(_)));
        let env = fake.create(&image, &spec()).await.expect("second works");
        let out = env
            .exec(ExecRequest::bash("work", Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(out.exit_code, Some(3));
        let dir = tempfile::tempdir().unwrap();
        let info = env.download_dir("/out", dir.path(), 1 << 20).await.unwrap();
        assert_eq!(info.files, 1);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.txt")).unwrap(),
            "hi"
        );
        env.destroy().await.unwrap();
        env.destroy().await.unwrap();
        let l = fake.ledger();
        assert_eq!(l.create_calls, 2);
        assert_eq!(l.created, ["fake-1"]);
        assert_eq!(l.destroy_calls, 2);
        assert!(l.leaked().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_longer_than_its_timeout_times_out_at_it() {
        let fake = FakeProvider::new();
        fake.agent("slow", [Act::ok().after(Duration::from_secs(3600))]);
        let env = fake
            .create(&PreparedImage::default(), &spec())
            .await
            .unwrap();
        let t0 = tokio::time::Instant::now();
        let out = env
            .exec(ExecRequest::bash("slow", Duration::from_secs(10)))
            .await
            .unwrap();
        assert!(out.timed_out);
        assert_eq!(out.exit_code, None);
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
        assert_eq!(fake.remove_labelled("job", "j1").await.unwrap(), 1);
        assert!(fake.ledger().leaked().is_empty());
    }
}
