//! Keeping the agent out of its own score: what happens between the agent and the verifier.
//!
//! - [`mark`] runs before the agent: it records the kernel start time of a fresh process, so
//!   that every process started afterwards (the agent's, daemonised or not) can be told apart
//!   from the environment's own (its ENTRYPOINT's services), and the OOM-kill count so far.
//! - [`end_agent`] runs before the verifier: it stops (SIGSTOP) then kills every process started
//!   since the mark; when that cannot work (a fork bomb has used up the pids limit, the command
//!   cannot start), every process of the environment is stopped by the provider
//!   ([`Environment::stop_all`]: the cgroup freezer, then a kill and a restart that keeps the
//!   filesystem). Then `/logs/verifier` is emptied and recreated by root, owned by the verifier's
//!   user, so nothing the agent planted there can be read as a reward.
//! - [`read_reward_files`] reads `reward.json`/`reward.txt` from the copy made through the
//!   archive API (links and FIFOs arrive as tar headers and are never materialised): regular
//!   files only, opened without following links, at most [`MAX_REWARD_BYTES`], text only.

use rollout_core::result::ErrorInfo;
use rollout_core::ErrorKind;
use rollout_env::{DownloadInfo, Environment, ExecRequest};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bound on each helper command rollout runs in the environment here.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest reward file read.
pub const MAX_REWARD_BYTES: u64 = 1 << 20;

/// Where the agent's processes begin.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Mark {
    /// Kernel start time (clock ticks since boot) of the marking process; `None` when it could
    /// not be read (then every process but PID 1 is the agent's).
    start: Option<u64>,
    /// The container's OOM-kill count at the mark.
    pub oom_kills: Option<u64>,
    /// [`Environment::restarts`] at the mark: after a restart every process is new, and none
    /// is the agent's any more.
    restarts: u64,
}

/// What ending the agent found.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ended {
    /// Processes of the agent that were still there and were killed.
    pub killed: u64,
    /// Whether the provider had to stop every process of the environment.
    pub hard_stopped: bool,
    /// OOM kills since the mark (when the counter is readable).
    pub oom_kills: Option<u64>,
    /// The environment's OOM-kill count when the agent ended.
    pub oom_total: Option<u64>,
}

/// Shell function printing `oom N` from the memory cgroup (v2 `memory.events`, v1
/// `memory.oom_control`), read-only inside the container.
const OOM_FN: &str = r#"oom() { for f in /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control; do [ -r "$f" ] || continue; while read -r k v; do [ "$k" = oom_kill ] && { echo "oom $v"; return; }; done < "$f"; done; }"#;

fn parse_field(out: &str, key: &str) -> Option<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .next_back()
}

fn root(script: String) -> ExecRequest {
    ExecRequest::sh(script, HELPER_TIMEOUT).user(Some("0".into()))
}

/// Record where the agent's processes begin (see the module docs).
pub(crate) async fn mark(env: &dyn Environment) -> Mark {
    let script = format!(
        "{OOM_FN}; read -r s < /proc/self/stat; s=${{s##*\") \"}}; set -- $s; echo \"start ${{20}}\"; oom"
    );
    match tokio::time::timeout(HELPER_TIMEOUT * 2, env.exec(root(script))).await {
        Ok(Ok(out)) if out.success() => {
            let text = out.stdout.to_text();
            Mark {
                start: parse_field(&text, "start "),
                oom_kills: parse_field(&text, "oom "),
                restarts: env.restarts(),
            }
        }
        _ => Mark {
            restarts: env.restarts(),
            ..Mark::default()
        },
    }
}

/// The OOM-kill count of the environment now, if readable.
pub(crate) async fn oom_kills(env: &dyn Environment) -> Option<u64> {
    let script = format!("{OOM_FN}; oom");
    match tokio::time::timeout(HELPER_TIMEOUT * 2, env.exec(root(script))).await {
        Ok(Ok(out)) if out.success() => parse_field(&out.stdout.to_text(), "oom "),
        _ => None,
    }
}

/// The script of [`end_agent`]: `$1` is the mark (`-` to skip the kill), `$2` the verifier's
/// user (empty for root). Only shell built-ins run until the agent is gone, so that it works
/// when no process can be created. Exit 3: processes survived; 4: /logs/verifier could not be
/// reset.
fn end_script() -> String {
    format!(
        r#"{OOM_FN}
m=$1; u=$2; me=$$; killed=0
scan() {{ # $1: stop|kill|count; sets n
  n=0
  for d in /proc/[0-9]*; do
    p=${{d#/proc/}}
    [ "$p" = 1 ] && continue
    [ "$p" = "$me" ] && continue
    s=; read -r s < "$d/stat" 2>/dev/null
    [ -n "$s" ] || continue
    s=${{s##*") "}}
    set -- $s
    case "$1" in Z|X|x) continue ;; esac
    [ "${{20:-0}}" -ge "$m" ] 2>/dev/null || continue
    case "$op" in
      stop) [ "$1" = T ] || {{ kill -STOP "$p" 2>/dev/null; n=$((n+1)); }} ;;
      kill) kill -KILL "$p" 2>/dev/null; n=$((n+1)) ;;
      *) n=$((n+1)) ;;
    esac
  done
}}
if [ "$m" != - ]; then
  i=0; op=stop
  while [ $i -lt 50 ]; do scan; [ $n = 0 ] && break; i=$((i+1)); done
  op=kill; scan; killed=$n
  i=0; op=count
  while [ $i -lt 100 ]; do scan; [ $n = 0 ] && break; op=kill; scan; op=count; i=$((i+1)); done
  [ $n = 0 ] || {{ echo "left $n"; exit 3; }}
fi
echo "killed $killed"
oom
[ -L /logs ] && rm -f /logs
rm -rf /logs/verifier && mkdir -p /logs/verifier && chmod 0755 /logs/verifier || exit 4
if [ -n "$u" ]; then chown "$u" /logs/verifier 2>/dev/null || chmod 0777 /logs/verifier; fi
exit 0
"#
    )
}

fn end_request(mark: &str, verifier_user: Option<&str>) -> ExecRequest {
    let argv = vec![
        "sh".to_string(),
        "-c".to_string(),
        end_script(),
        "rollout-end-agent".to_string(),
        mark.to_string(),
        verifier_user.unwrap_or("").to_string(),
    ];
    ExecRequest::argv(argv, HELPER_TIMEOUT).user(Some("0".into()))
}

/// End every process the agent left and reset `/logs/verifier` (see the module docs).
pub(crate) async fn end_agent(
    env: &dyn Environment,
    mark: &Mark,
    verifier_user: Option<&str>,
) -> Result<Ended, ErrorInfo> {
    let verifier_user = verifier_user.filter(|u| !matches!(u.trim(), "" | "root" | "0" | "0:0"));
    let mut ended = Ended::default();
    // Restarted since the mark (a runaway command was stopped that way): no process of the
    // agent is left, and a kill would take the environment's own processes for the agent's.
    let from = if env.restarts() != mark.restarts {
        Some("-".to_string())
    } else {
        mark.start.map(|s| s.to_string())
    };
    let first = match from {
        Some(from) => tokio::time::timeout(
            HELPER_TIMEOUT * 2,
            env.exec(end_request(&from, verifier_user)),
        )
        .await
        .ok()
        .and_then(Result::ok),
        None => None,
    };
    let out = match first {
        Some(out) if out.success() => out,
        Some(out) if out.exit_code == Some(4) => return Err(reset_failed(&out)),
        _ => {
            // The agent's processes could not be ended from inside: stop them all.
            env.stop_all().await.map_err(|e| {
                ErrorInfo::new(
                    e.kind(),
                    format!("could not stop the agent's processes before verification: {e}"),
                )
            })?;
            ended.hard_stopped = true;
            let out = tokio::time::timeout(
                HELPER_TIMEOUT * 2,
                env.exec(end_request("-", verifier_user)),
            )
            .await
            .map_err(|_| {
                ErrorInfo::new(
                    ErrorKind::EnvironmentApiError,
                    "resetting /logs/verifier took too long",
                )
            })?
            .map_err(|e| ErrorInfo::new(e.kind(), e.to_string()))?;
            if !out.success() {
                return Err(reset_failed(&out));
            }
            out
        }
    };
    let text = out.stdout.to_text();
    ended.killed = parse_field(&text, "killed ").unwrap_or(0);
    ended.oom_total = parse_field(&text, "oom ");
    ended.oom_kills = match (ended.oom_total, mark.oom_kills) {
        (Some(now), Some(before)) => Some(now.saturating_sub(before)),
        _ => None,
    };
    Ok(ended)
}

fn reset_failed(out: &rollout_env::ExecOutput) -> ErrorInfo {
    ErrorInfo::new(
        ErrorKind::VerifierFailed,
        format!(
            "could not empty /logs/verifier before the verifier ran: {}",
            out.stderr.to_text().trim()
        ),
    )
}

/// Read `reward.json` and `reward.txt` from `dir` (the host copy of `/logs/verifier` that
/// `download` made). A name that was a link, FIFO, device or directory in the environment,
/// a binary or oversized file, is `verifier_reward_invalid` saying what it was.
pub(crate) async fn read_reward_files(
    dir: PathBuf,
    download: &DownloadInfo,
) -> Result<(Option<String>, Option<String>), ErrorInfo> {
    for name in ["reward.json", "reward.txt"] {
        if let Some((_, what)) = download.skipped_entries.iter().find(|(p, _)| p == name) {
            return Err(ErrorInfo::new(
                ErrorKind::VerifierRewardInvalid,
                format!(
                    "/logs/verifier/{name} is {what}, not a regular file: it was not read (test.sh must write the reward into a plain file)"
                ),
            ));
        }
    }
    tokio::task::spawn_blocking(move || {
        Ok((
            read_capped(&dir, "reward.json")?,
            read_capped(&dir, "reward.txt")?,
        ))
    })
    .await
    .map_err(|e| ErrorInfo::new(ErrorKind::InternalError, e.to_string()))?
}

/// Read `dir/name`: not following a link, a regular file only, at most [`MAX_REWARD_BYTES`],
/// UTF-8 text without NUL bytes. `Ok(None)` when there is nothing at that name.
fn read_capped(dir: &Path, name: &str) -> Result<Option<String>, ErrorInfo> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let invalid = |why: String| {
        ErrorInfo::new(
            ErrorKind::VerifierRewardInvalid,
            format!("/logs/verifier/{name} {why}"),
        )
    };
    let path = dir.join(name);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(invalid(format!("cannot be read: {e}"))),
    };
    if meta.is_dir() {
        return Err(invalid(
            "is a directory, not a file: test.sh must write the reward into a plain file".into(),
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| invalid(format!("cannot be read without following links: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| invalid(format!("cannot be read: {e}")))?;
    if !meta.is_file() {
        return Err(invalid("is not a regular file".into()));
    }
    if meta.len() > MAX_REWARD_BYTES {
        return Err(invalid(format!(
            "is {} bytes; a reward file holds at most {} KiB",
            meta.len(),
            MAX_REWARD_BYTES >> 10
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_REWARD_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| invalid(format!("cannot be read: {e}")))?;
    if bytes.len() as u64 > MAX_REWARD_BYTES {
        return Err(invalid(format!(
            "holds more than {} KiB",
            MAX_REWARD_BYTES >> 10
        )));
    }
    if bytes.contains(&0) {
        return Err(invalid(format!(
            "is binary ({} bytes, with NUL bytes), not a number written as text",
            bytes.len()
        )));
    }
    String::from_utf8(bytes).map(Some).map_err(|e| {
        invalid(format!(
            "is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_parsed_from_the_last_line() {
        assert_eq!(parse_field("start 12\noom 3\n", "oom "), Some(3));
        assert_eq!(parse_field("start 12\n", "start "), Some(12));
        assert_eq!(parse_field("nothing", "oom "), None);
    }

    #[tokio::test]
    async fn reward_files_are_read_as_plain_text_only() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let none = DownloadInfo::default();
        assert_eq!(
            read_reward_files(dir.clone(), &none).await.unwrap(),
            (None, None)
        );
        std::fs::write(dir.join("reward.txt"), b"1\n").unwrap();
        assert_eq!(
            read_reward_files(dir.clone(), &none).await.unwrap().1,
            Some("1\n".to_string())
        );
        std::fs::write(dir.join("reward.txt"), b"\x7fELF\x00\x01").unwrap();
        let e = read_reward_files(dir.clone(), &none).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::VerifierRewardInvalid);
        assert!(e.message.contains("binary"), "{}", e.message);
        std::fs::remove_file(dir.join("reward.txt")).unwrap();
        std::fs::create_dir(dir.join("reward.txt")).unwrap();
        let e = read_reward_files(dir.clone(), &none).await.unwrap_err();
        assert!(e.message.contains("is a directory"), "{}", e.message);
        std::fs::remove_dir(dir.join("reward.txt")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("reward.txt")).unwrap();
        let e = read_reward_files(dir.clone(), &none).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::VerifierRewardInvalid);
        std::fs::remove_file(dir.join("reward.txt")).unwrap();
        let fifo = DownloadInfo {
            skipped_entries: vec![("reward.txt".into(), "a FIFO (named pipe)".into())],
            ..Default::default()
        };
        let e = read_reward_files(dir.clone(), &fifo).await.unwrap_err();
        assert!(e.message.contains("FIFO"), "{}", e.message);
    }
}
