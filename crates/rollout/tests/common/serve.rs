//! Start `rollout serve` for a test: one helper for every test that talks to a server.

use super::{require_docker, rollout_cmd};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A `rollout serve` process on a free loopback port (killed when dropped).
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The server's stderr.
    pub log: PathBuf,
    /// Its `--data-dir`.
    pub data: PathBuf,
    /// The Authorization header tests send, for a server whose reads need one.
    pub auth: Option<String>,
}

impl Server {
    /// `rollout serve --port 0 --data-dir DATA` with archive tasks on the local base image and no
    /// extra CAs, the git cache in `cache`, stderr in `log`, then `extra` flags and `env`.
    /// Waits (bounded) for its "listening on" line.
    pub fn spawn(
        data: &Path,
        cache: &Path,
        log: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        require_docker();
        std::fs::create_dir_all(data).unwrap();
        let mut cmd = rollout_cmd();
        cmd.args(["serve", "--port", "0", "--data-dir"])
            .arg(data)
            .args([
                "--executor-image",
                "debian:bookworm-slim",
                "--ca-certs",
                "none",
            ])
            .args(extra)
            .env("ROLLOUT_CACHE_DIR", cache)
            .env("ROLLOUT_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "server did not start: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            });
        let base = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://"))
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .to_string();
        Server {
            child,
            base,
            log: log.to_path_buf(),
            data: data.to_path_buf(),
            auth: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("{}{path}", self.base.replacen("http://", "ws://", 1))
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the child this test started.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Wait (bounded) for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {secs} s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client for test requests (a generous timeout: a request may wait for a build).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// A multipart/form-data body: (field, file name, bytes); returns the content type and body.
pub fn multipart(fields: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "rollout-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, file, data) in fields {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let disposition = match file {
            Some(f) => format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n"),
            None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n"),
        };
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
