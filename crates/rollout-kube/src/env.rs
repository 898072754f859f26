//! One trial pod: commands through the exec subresource (websocket), files as tar over exec.
//!
//! The exec API has no user, working directory or environment options, and the protocol of
//! older API servers (v4) cannot close stdin without closing the whole stream. So every command
//! runs under a small `sh` prelude that records its pid (for the timeout kill), changes
//! directory, exports the variables, switches user (setpriv/runuser) and, when input is given,
//! reads exactly that many bytes through `head -c` so that stdin never needs closing.

use crate::{classify, delete_pod_with, pod};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams, AttachedProcess};
use kube::Client;
use rollout_env::archive::extract_stripped;
use rollout_env::{Captured, DownloadInfo, EnvError, Environment, ExecOutput, ExecRequest};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

/// Bound on the helper execs rollout runs itself (killing a timed-out command).
const KILL_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on copying files in or out.
const COPY_TIMEOUT: Duration = Duration::from_secs(600);
/// Exit code of the download helper when the path does not exist.
const MISSING: i64 = 44;
/// Buffer between the websocket and rollout's readers.
const PIPE_BUF: usize = 64 * 1024;

/// One pod.
pub(crate) struct KubeEnvironment {
    pods: Api<Pod>,
    policies: Api<NetworkPolicy>,
    name: String,
    delete_slots: Arc<Semaphore>,
    destroyed: AtomicBool,
    exec_seq: AtomicU64,
}

/// Single-quote for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// How to become `user` with what every image with util-linux has; `None` for root.
fn user_prefix(user: Option<&str>) -> Option<String> {
    let user = user?.trim();
    if user.is_empty() || user == "root" || user == "0" || user == "0:0" {
        return None;
    }
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    if u.chars().all(|c| c.is_ascii_digit()) {
        let g = if g.is_empty() { u } else { g };
        Some(format!(
            "setpriv --reuid={} --regid={} --clear-groups --",
            quote(u),
            quote(g)
        ))
    } else {
        Some(format!("runuser -u {} --", quote(u)))
    }
}

/// The `sh -c` prelude that runs `"$@"` as the request asks.
fn prelude(req: &ExecRequest, pid_file: &str, stdin_len: Option<usize>) -> String {
    let mut s = format!("{{ echo $$ > {pid_file}; }} 2>/dev/null; ");
    if let Some(dir) = &req.workdir {
        s.push_str(&format!("cd {} || exit 126; ", quote(dir)));
    }
    for (k, v) in &req.env {
        s.push_str(&format!("export {}={}; ", k, quote(v)));
    }
    let run = match user_prefix(req.user.as_deref()) {
        Some(p) => format!("{p} \"$@\""),
        None => "\"$@\"".to_string(),
    };
    match stdin_len {
        Some(n) => s.push_str(&format!("head -c {n} | {run}")),
        None => s.push_str(&format!("exec {run} </dev/null")),
    }
    s
}

/// The exit code in the exec's closing status: `Success` is 0; a non-zero exit is a failure
/// whose cause `ExitCode` carries the number.
fn exit_code(status: &Status) -> Result<i64, String> {
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    let code = status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))
        .and_then(|c| c.message.as_deref()?.parse().ok());
    match code {
        Some(code) => Ok(code),
        None => Err(format!(
            "{} ({})",
            status.message.as_deref().unwrap_or("no message"),
            status.reason.as_deref().unwrap_or("no reason")
        )),
    }
}

enum Sink<'a> {
    Capture(&'a mut Captured),
    File {
        file: &'a mut std::fs::File,
        cap: u64,
        written: &'a mut u64,
        truncated: &'a mut bool,
    },
}

impl KubeEnvironment {
    pub(crate) fn new(
        client: Client,
        namespace: String,
        name: String,
        delete_slots: Arc<Semaphore>,
    ) -> Self {
        Self {
            pods: Api::namespaced(client.clone(), &namespace),
            policies: Api::namespaced(client, &namespace),
            name,
            delete_slots,
            destroyed: AtomicBool::new(false),
            exec_seq: AtomicU64::new(0),
        }
    }

    async fn attach(&self, argv: Vec<String>, stdin: bool) -> Result<AttachedProcess, EnvError> {
        let params = AttachParams {
            container: Some(pod::CONTAINER.into()),
            stdin,
            stdout: true,
            stderr: true,
            tty: false,
            max_stdin_buf_size: Some(PIPE_BUF),
            max_stdout_buf_size: Some(PIPE_BUF),
            max_stderr_buf_size: Some(PIPE_BUF),
        };
        match tokio::time::timeout(
            Duration::from_secs(30),
            self.pods.exec(&self.name, argv, &params),
        )
        .await
        {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(self
                .lost_or(classify("starting a command in the pod", e))
                .await),
            Err(_) => Err(EnvError::ClusterUnreachable(format!(
                "starting a command in pod {}: no answer within 30 s",
                self.name
            ))),
        }
    }

    /// When the pod itself is gone or failed (evicted, OOM-killed, deleted), say so; otherwise
    /// keep the original error.
    async fn lost_or(&self, original: EnvError) -> EnvError {
        match tokio::time::timeout(Duration::from_secs(10), self.pods.get(&self.name)).await {
            Ok(Ok(p)) => {
                let status = p.status.unwrap_or_default();
                let phase = status.phase.clone().unwrap_or_default();
                // Only main's end loses the trial: a compose sidecar may end by design.
                let terminated = status
                    .container_statuses
                    .iter()
                    .flatten()
                    .filter(|c| c.name == pod::CONTAINER)
                    .find_map(|c| c.state.as_ref()?.terminated.clone());
                if phase == "Failed" || phase == "Succeeded" || terminated.is_some() {
                    let reason = terminated
                        .as_ref()
                        .and_then(|t| t.reason.clone())
                        .or(status.reason.clone())
                        .unwrap_or(phase);
                    let message = status.message.clone().unwrap_or_else(|| {
                        terminated
                            .map(|t| format!("container ended with exit code {}", t.exit_code))
                            .unwrap_or_default()
                    });
                    return EnvError::PodLost {
                        pod: self.name.clone(),
                        reason,
                        message,
                    };
                }
                original
            }
            Ok(Err(kube::Error::Api(s))) if s.is_not_found() => EnvError::PodLost {
                pod: self.name.clone(),
                reason: "Deleted".into(),
                message: "the pod no longer exists (deleted by someone else, or by the cluster)"
                    .into(),
            },
            _ => original,
        }
    }

    /// Run `argv` under the prelude; stdout goes to `sink`, stderr is captured.
    async fn run(
        &self,
        req: &ExecRequest,
        sink: Sink<'_>,
        stderr: &mut Captured,
    ) -> Result<(Option<i64>, bool, bool), EnvError> {
        let n = self.exec_seq.fetch_add(1, Ordering::Relaxed);
        let pid_file = format!("/tmp/.rollout-exec-{n}.pid");
        let stdin_len = req.stdin.as_ref().map(Vec::len);
        let mut argv = vec![
            "sh".to_string(),
            "-c".to_string(),
            prelude(req, &pid_file, stdin_len),
            "rollout-exec".to_string(),
        ];
        argv.extend(req.argv.iter().cloned());
        let mut proc = self.attach(argv, req.stdin.is_some()).await?;
        let status = proc.take_status();
        // The writer stays open until the command ended: closing stdin would close the whole
        // stream on v4 of the protocol. `head -c` ends the input instead.
        let writer = match (req.stdin.clone(), proc.stdin()) {
            (Some(data), Some(mut w)) => Some(tokio::spawn(async move {
                let _ = w.write_all(&data).await;
                let _ = w.flush().await;
                std::future::pending::<()>().await;
                drop(w);
            })),
            _ => None,
        };
        let mut out = proc.stdout();
        let mut err = proc.stderr();
        let deadline = tokio::time::sleep(req.timeout);
        tokio::pin!(deadline);
        let mut timed_out = false;
        let mut over_limit = false;
        let mut sink = sink;
        let mut out_total: u64 = 0;
        let mut buf_out = vec![0u8; PIPE_BUF];
        let mut buf_err = vec![0u8; PIPE_BUF];
        while out.is_some() || err.is_some() {
            tokio::select! {
                r = async { out.as_mut().expect("checked").read(&mut buf_out).await }, if out.is_some() => match r {
                    Ok(0) | Err(_) => out = None,
                    Ok(k) => {
                        out_total += k as u64;
                        match &mut sink {
                            Sink::Capture(c) => c.push(&buf_out[..k]),
                            Sink::File { file, cap, written, truncated } => {
                                let room = cap.saturating_sub(**written) as usize;
                                let take = k.min(room);
                                file.write_all(&buf_out[..take]).map_err(|e| EnvError::Host {
                                    context: "writing a downloaded archive".into(),
                                    message: e.to_string(),
                                })?;
                                **written += take as u64;
                                if take < k {
                                    **truncated = true;
                                    over_limit = true;
                                    break;
                                }
                            }
                        }
                    }
                },
                r = async { err.as_mut().expect("checked").read(&mut buf_err).await }, if err.is_some() => match r {
                    Ok(0) | Err(_) => err = None,
                    Ok(k) => stderr.push(&buf_err[..k]),
                },
                _ = &mut deadline => { timed_out = true; break; }
            }
            if out_total > req.max_output || stderr.total > req.max_output {
                over_limit = true;
                break;
            }
        }
        if let Some(w) = writer {
            w.abort();
        }
        if timed_out || over_limit {
            proc.abort();
            self.kill_tree(&pid_file).await;
            return Ok((None, timed_out, over_limit));
        }
        let status = match status {
            Some(s) => tokio::time::timeout(Duration::from_secs(30), s)
                .await
                .ok()
                .flatten(),
            None => None,
        };
        drop(proc);
        match status {
            Some(s) => match exit_code(&s) {
                Ok(code) => Ok((Some(code), false, false)),
                Err(message) => Err(self
                    .lost_or(EnvError::Api {
                        context: format!("running a command in pod {}", self.name),
                        message,
                    })
                    .await),
            },
            None => Err(self
                .lost_or(EnvError::Api {
                    context: format!("running a command in pod {}", self.name),
                    message: "the exec stream ended without an exit status".into(),
                })
                .await),
        }
    }

    /// Stop and kill the process recorded in `pid_file` and all its descendants.
    async fn kill_tree(&self, pid_file: &str) {
        let script = format!(
            "read p < {pid_file} 2>/dev/null || exit 0; \
             k() {{ kill -STOP $1 2>/dev/null; for c in $(cat /proc/$1/task/*/children 2>/dev/null); do k $c; done; kill -KILL $1 2>/dev/null; }}; \
             k $p; rm -f {pid_file}"
        );
        let run = async {
            let mut p = self
                .attach(vec!["sh".into(), "-c".into(), script], false)
                .await?;
            if let Some(s) = p.take_status() {
                let _ = s.await;
            }
            Ok::<_, EnvError>(())
        };
        match tokio::time::timeout(KILL_TIMEOUT, run).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(pod = %self.name, "could not kill a timed-out command: {e}")
            }
            Err(_) => tracing::warn!(pod = %self.name, "killing a timed-out command timed out"),
        }
    }
}

#[async_trait]
impl Environment for KubeEnvironment {
    fn id(&self) -> &str {
        &self.name
    }

    async fn exec(&self, req: ExecRequest) -> Result<ExecOutput, EnvError> {
        let started = Instant::now();
        let mut stdout = Captured::with_cap(req.output_cap);
        let mut stderr = Captured::with_cap(req.output_cap);
        let (exit_code, timed_out, output_limit_exceeded) = self
            .run(&req, Sink::Capture(&mut stdout), &mut stderr)
            .await?;
        stdout.finish();
        stderr.finish();
        Ok(ExecOutput {
            exit_code,
            timed_out,
            output_limit_exceeded,
            stdout,
            stderr,
            duration: started.elapsed(),
        })
    }

    async fn upload_tar(&self, tar: Vec<u8>) -> Result<(), EnvError> {
        let mut req = ExecRequest::sh("tar -xf - -C /", COPY_TIMEOUT);
        req.user = Some("0".into());
        req.output_cap = 16 * 1024;
        req.stdin = Some(tar);
        let mut stdout = Captured::with_cap(req.output_cap);
        let mut stderr = Captured::with_cap(req.output_cap);
        let (code, timed_out, _) = self
            .run(&req, Sink::Capture(&mut stdout), &mut stderr)
            .await?;
        stderr.finish();
        match (code, timed_out) {
            (Some(0), false) => Ok(()),
            (_, true) => Err(EnvError::Api {
                context: format!("copying files into pod {}", self.name),
                message: format!("no end within {} s", COPY_TIMEOUT.as_secs()),
            }),
            (code, _) => Err(EnvError::Api {
                context: format!("copying files into pod {}", self.name),
                message: format!(
                    "`tar -x` ended with {} (the image needs sh, head and tar): {}",
                    code.map_or("no exit code".into(), |c| format!("exit code {c}")),
                    stderr.to_text().trim()
                ),
            }),
        }
    }

    async fn download_dir(
        &self,
        path: &str,
        dest: &Path,
        cap: u64,
    ) -> Result<DownloadInfo, EnvError> {
        let host = |context: String, e: std::io::Error| EnvError::Host {
            context,
            message: e.to_string(),
        };
        let parent = dest.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .map_err(|e| host(format!("creating {}", parent.display()), e))?;
        let tmp = tempfile::NamedTempFile::new_in(parent).map_err(|e| {
            host(
                format!("creating a temporary file in {}", parent.display()),
                e,
            )
        })?;
        let script = format!(
            "[ -e \"$1\" ] || exit {MISSING}; cd \"$(dirname \"$1\")\" && exec tar -cf - \"$(basename \"$1\")\""
        );
        let mut req = ExecRequest::argv(
            vec![
                "sh".into(),
                "-c".into(),
                script,
                "rollout-download".into(),
                path.to_string(),
            ],
            COPY_TIMEOUT,
        );
        req.user = Some("0".into());
        req.max_output = u64::MAX;
        let mut info = DownloadInfo {
            found: true,
            ..Default::default()
        };
        let mut stderr = Captured::with_cap(16 * 1024);
        let mut file = tmp
            .reopen()
            .map_err(|e| host("opening a temporary file".into(), e))?;
        let (code, timed_out, _) = self
            .run(
                &req,
                Sink::File {
                    file: &mut file,
                    cap,
                    written: &mut info.bytes,
                    truncated: &mut info.truncated,
                },
                &mut stderr,
            )
            .await?;
        drop(file);
        if code == Some(MISSING) {
            info.found = false;
            return Ok(info);
        }
        if timed_out {
            return Err(EnvError::Api {
                context: format!("copying {path} out of pod {}", self.name),
                message: format!("no end within {} s", COPY_TIMEOUT.as_secs()),
            });
        }
        if !info.truncated && code != Some(0) {
            stderr.finish();
            return Err(EnvError::Api {
                context: format!("copying {path} out of pod {}", self.name),
                message: format!(
                    "`tar -c` ended with {}: {}",
                    code.map_or("no exit code".into(), |c| format!("exit code {c}")),
                    stderr.to_text().trim()
                ),
            });
        }
        let dest = dest.to_path_buf();
        let reader = tmp
            .reopen()
            .map_err(|e| host("reading a downloaded archive".into(), e))?;
        let stats = tokio::task::spawn_blocking(move || {
            extract_stripped(std::io::BufReader::new(reader), &dest)
        })
        .await
        .map_err(|e| {
            host(
                "extracting a downloaded archive".into(),
                std::io::Error::other(e),
            )
        })?
        .map_err(|e| host("extracting a downloaded archive".into(), e))?;
        info.files = stats.files;
        info.skipped = stats.skipped;
        info.skipped_entries = stats.skipped_entries;
        info.truncated |= stats.incomplete;
        Ok(info)
    }

    async fn destroy(&self) -> Result<(), EnvError> {
        if self.destroyed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let result = delete_pod_with(
            self.pods.clone(),
            self.policies.clone(),
            self.delete_slots.clone(),
            self.name.clone(),
        )
        .await;
        if result.is_err() {
            self.destroyed.store(false, Ordering::SeqCst);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prelude_quotes_and_switches_user() {
        let mut req = ExecRequest::bash("echo hi", Duration::from_secs(1));
        req.workdir = Some("/app dir".into());
        req.env = vec![("A".into(), "it's".into())];
        req.user = Some("agent".into());
        let p = prelude(&req, "/tmp/p", None);
        assert!(p.contains("cd '/app dir' || exit 126"), "{p}");
        assert!(p.contains("export A='it'\\''s'"), "{p}");
        assert!(
            p.ends_with("exec runuser -u 'agent' -- \"$@\" </dev/null"),
            "{p}"
        );
        let p = prelude(
            &req.clone().user(Some("1000:1000".into())),
            "/tmp/p",
            Some(7),
        );
        assert!(
            p.ends_with(
                "head -c 7 | setpriv --reuid='1000' --regid='1000' --clear-groups -- \"$@\""
            ),
            "{p}"
        );
        assert!(user_prefix(Some("root")).is_none());
    }

    #[test]
    fn exit_codes_come_from_the_status() {
        let ok: Status = serde_json::from_value(serde_json::json!({"status": "Success"})).unwrap();
        assert_eq!(exit_code(&ok), Ok(0));
        let failed: Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "reason": "NonZeroExitCode", "message": "command terminated with non-zero exit code",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}
        }))
        .unwrap();
        assert_eq!(exit_code(&failed), Ok(3));
        let other: Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "reason": "InternalError", "message": "container not found"
        }))
        .unwrap();
        assert!(exit_code(&other)
            .unwrap_err()
            .contains("container not found"));
    }
}
