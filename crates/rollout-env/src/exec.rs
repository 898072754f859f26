//! Commands run in an environment, and their capped output.

use std::time::Duration;

/// Default cap on each captured output stream: 1 MiB, tail kept.
pub const DEFAULT_OUTPUT_CAP: usize = 1 << 20;

/// A command to run in an environment.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecRequest {
    /// argv; use `["bash", "-c", script]` for scripts.
    pub argv: Vec<String>,
    /// Run as this user (name or uid[:gid]); default the image's user.
    pub user: Option<String>,
    /// Working directory; default the environment's.
    pub workdir: Option<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Kill the command (and its children) after this long.
    pub timeout: Duration,
    /// Keep at most this many bytes of each stream (the tail).
    pub output_cap: usize,
    /// Bytes written to the command's stdin, then closed (None: no stdin).
    pub stdin: Option<Vec<u8>>,
    /// Kill the command once it has written more than this many bytes to either stream.
    pub max_output: u64,
}

/// Default bound on what one command may write per stream before it is killed: 1 GiB.
pub const DEFAULT_MAX_OUTPUT: u64 = 1 << 30;

impl ExecRequest {
    /// `bash -c script` with the default cap.
    pub fn bash(script: impl Into<String>, timeout: Duration) -> Self {
        Self::argv(
            ["bash", "-c"]
                .into_iter()
                .map(String::from)
                .chain([script.into()])
                .collect(),
            timeout,
        )
    }

    /// `sh -c script` with the default cap (for images without bash).
    pub fn sh(script: impl Into<String>, timeout: Duration) -> Self {
        Self::argv(
            ["sh", "-c"]
                .into_iter()
                .map(String::from)
                .chain([script.into()])
                .collect(),
            timeout,
        )
    }

    /// A plain argv with the default cap.
    pub fn argv(argv: Vec<String>, timeout: Duration) -> Self {
        Self {
            argv,
            user: None,
            workdir: None,
            env: Vec::new(),
            timeout,
            output_cap: DEFAULT_OUTPUT_CAP,
            stdin: None,
            max_output: DEFAULT_MAX_OUTPUT,
        }
    }

    pub fn user(mut self, user: Option<String>) -> Self {
        self.user = user;
        self
    }

    pub fn env(mut self, env: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env.extend(env);
        self
    }
}

/// Captured tail of one output stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Captured {
    /// The last `cap` bytes written (all of them when not truncated).
    pub bytes: Vec<u8>,
    /// Total bytes written.
    pub total: u64,
    cap: usize,
}

impl Captured {
    /// An empty capture keeping at most `cap` bytes.
    pub fn with_cap(cap: usize) -> Self {
        Self {
            bytes: Vec::new(),
            total: 0,
            cap,
        }
    }

    /// Append a chunk, dropping the oldest bytes beyond the cap. Amortised O(chunk).
    pub fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        if chunk.len() >= self.cap {
            self.bytes.clear();
            self.bytes
                .extend_from_slice(&chunk[chunk.len() - self.cap..]);
            return;
        }
        self.bytes.extend_from_slice(chunk);
        // Compact only when twice over, so that a stream of small chunks costs O(1) per byte.
        if self.bytes.len() > self.cap.saturating_mul(2).max(self.cap + 4096) {
            let excess = self.bytes.len() - self.cap;
            self.bytes.drain(..excess);
        }
    }

    /// Finish: trim to the cap.
    pub fn finish(&mut self) {
        if self.bytes.len() > self.cap {
            let excess = self.bytes.len() - self.cap;
            self.bytes.drain(..excess);
        }
    }

    /// Whether bytes were dropped.
    pub fn truncated(&self) -> bool {
        self.total > self.bytes.len() as u64
    }

    /// The kept bytes as text, with a first line noting the cap when output was dropped.
    pub fn to_text(&self) -> String {
        let body = String::from_utf8_lossy(&self.bytes);
        if self.truncated() {
            format!(
                "[rollout: output capped: showing the last {} of {} bytes]\n{body}",
                self.bytes.len(),
                self.total
            )
        } else {
            body.into_owned()
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOutput {
    /// Exit code; None when killed at the timeout before an exit code was known.
    pub exit_code: Option<i64>,
    /// Whether the timeout fired.
    pub timed_out: bool,
    /// Whether the command was killed for writing more than `max_output`.
    pub output_limit_exceeded: bool,
    pub stdout: Captured,
    pub stderr: Captured,
    pub duration: Duration,
}

impl ExecOutput {
    /// Exit 0 and no timeout.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out && !self.output_limit_exceeded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_and_counts_everything() {
        let mut c = Captured::with_cap(10);
        for i in 0..1000u32 {
            c.push(format!("{i};").as_bytes());
        }
        c.finish();
        assert_eq!(c.bytes.len(), 10);
        assert!(c.truncated());
        assert!(String::from_utf8_lossy(&c.bytes).ends_with("998;999;"));
        let expected_total: usize = (0..1000u32).map(|i| format!("{i};").len()).sum();
        assert_eq!(c.total, expected_total as u64);
        assert!(c.to_text().starts_with("[rollout: output capped"));
    }

    #[test]
    fn big_chunk_keeps_its_tail() {
        let mut c = Captured::with_cap(4);
        c.push(b"abcdefgh");
        c.finish();
        assert_eq!(c.bytes, b"efgh");
        assert_eq!(c.total, 8);
    }

    #[test]
    fn small_output_is_untouched() {
        let mut c = Captured::with_cap(100);
        c.push(b"hello");
        c.finish();
        assert!(!c.truncated());
        assert_eq!(c.to_text(), "hello");
    }
}
