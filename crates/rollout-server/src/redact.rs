//! What a response may not carry: secrets a submitter sent (agent environment values, key-like
//! options) and the server's own paths (data directory, caches, home).
//!
//! Every job, trial and task object, every stream event and every error body goes through a
//! [`Redactor`]: values under an `env` map and under key-like names (`api_key`, `token`,
//! `secret`, `password` …) become [`REDACTED`], any other string containing one of the run's
//! secret values has it replaced, and host paths become relative or opaque names
//! (`<data-dir>`, `<cache>`, `<repo>`, `~`).

use regex::Regex;
use serde_json::Value;
use std::path::Path;

/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";

/// Secret values shorter than this are not searched for inside other strings (they would
/// match by accident); they are still redacted where they stand.
const MIN_SECRET_LEN: usize = 6;

/// Host paths of one server, and how each is shown.
#[derive(Debug)]
pub struct PathScrubber {
    rules: Vec<(Regex, &'static str)>,
}

fn path_forms(p: &Path) -> Vec<String> {
    let mut out = vec![p.display().to_string()];
    if let Ok(c) = p.canonicalize() {
        let c = c.display().to_string();
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out.retain(|s| s.len() > 1);
    out
}

impl PathScrubber {
    /// Rules for a server with this data directory (and the process's cache root and home).
    pub fn new(data_dir: &Path) -> Self {
        let seg = r#"[^/\s"':]+"#;
        let mut rules = Vec::new();
        let mut add = |dir: &Path, tail: String, with: &'static str| {
            for form in path_forms(dir) {
                if let Ok(re) = Regex::new(&format!("{}{tail}", regex::escape(&form))) {
                    rules.push((re, with));
                }
            }
        };
        // An upload: paths inside it are shown relative to the archive's root.
        add(
            &data_dir.join("runs"),
            format!(r"/{seg}/(?:archives/{seg}/(?:extracted/)?|tasks/)?"),
            "",
        );
        add(&data_dir.join("jobs"), format!("/{seg}"), "<job>");
        let cache = rollout_core::cache_root();
        add(
            &cache.join("archives"),
            format!(r"/{seg}/(?:extracted/)?"),
            "",
        );
        add(&cache.join("git"), format!("/{seg}/{seg}"), "<repo>");
        add(&cache, String::new(), "<cache>");
        add(data_dir, String::new(), "<data-dir>");
        if let Some(home) = std::env::var_os("HOME").filter(|h| h.len() > 1) {
            add(Path::new(&home), String::new(), "~");
        }
        Self { rules }
    }

    pub fn scrub(&self, s: &str) -> String {
        let mut out = s.to_string();
        for (re, with) in &self.rules {
            if re.is_match(&out) {
                out = re.replace_all(&out, *with).into_owned();
            }
        }
        out
    }
}

/// Whether a JSON key names a secret: one of its `_`/`-`-separated words is key-like.
pub fn key_like(key: &str) -> bool {
    key.to_ascii_lowercase()
        .split(['_', '-', '.', ' '])
        .any(|w| {
            matches!(
                w,
                "key"
                    | "apikey"
                    | "token"
                    | "secret"
                    | "password"
                    | "passwd"
                    | "pwd"
                    | "credential"
                    | "credentials"
                    | "auth"
                    | "authorization"
                    | "cookie"
                    | "session"
                    | "private"
            )
        })
}

/// The secret values of a submitted job configuration: agents' environment values and
/// key-like options (`kwargs`).
pub fn secrets_of(config: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, under_secret: bool, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    walk(v, under_secret || k == "env" || key_like(k), out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, under_secret, out)),
            Value::String(s) if under_secret && !s.is_empty() => out.push(s.clone()),
            _ => {}
        }
    }
    walk(config, false, &mut out);
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

/// Redaction for one response.
pub struct Redactor<'a> {
    pub paths: &'a PathScrubber,
    pub secrets: Vec<String>,
}

impl Redactor<'_> {
    /// A string with the run's secrets and the server's paths removed.
    pub fn text(&self, s: &str) -> String {
        let mut out = s.to_string();
        for secret in &self.secrets {
            if secret.len() >= MIN_SECRET_LEN && out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        self.paths.scrub(&out)
    }

    /// Redact `v` in place.
    pub fn value(&self, v: &mut Value) {
        self.walk(v, false);
    }

    fn walk(&self, v: &mut Value, secret: bool) {
        match v {
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    let is_env_map = k == "env" && v.is_object();
                    self.walk(v, secret || is_env_map || key_like(k));
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|v| self.walk(v, secret)),
            Value::String(s) => {
                *s = if secret && !s.is_empty() {
                    REDACTED.to_string()
                } else {
                    self.text(s)
                };
            }
            Value::Number(_) if secret => *v = Value::String(REDACTED.into()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn env_values_key_like_options_and_their_echoes_are_redacted() {
        let config = json!({
            "agents": [{"name": "x", "env": {"OPENAI_API_KEY": "sk-live-123456", "MODE": "fast-mode"},
                        "kwargs": {"api_key": "kw-secret-99", "keywords": ["a"], "temperature": 0.5}}],
            "n_attempts": 2
        });
        let paths = PathScrubber::new(Path::new("/srv/rollout-data"));
        let r = Redactor {
            paths: &paths,
            secrets: secrets_of(&config),
        };
        let mut v =
            json!({"config": config, "error": "agent said sk-live-123456 and kw-secret-99"});
        r.value(&mut v);
        let a = &v["config"]["agents"][0];
        assert_eq!(a["env"]["OPENAI_API_KEY"], REDACTED);
        assert_eq!(a["env"]["MODE"], REDACTED);
        assert_eq!(a["kwargs"]["api_key"], REDACTED);
        assert_eq!(a["kwargs"]["keywords"][0], "a");
        assert_eq!(a["kwargs"]["temperature"], 0.5);
        assert_eq!(v["config"]["n_attempts"], 2);
        assert_eq!(v["error"], "agent said [redacted] and [redacted]");
    }

    #[test]
    fn host_paths_become_relative_or_opaque() {
        let p = PathScrubber::new(Path::new("/srv/rollout-data"));
        assert_eq!(
            p.scrub("/srv/rollout-data/runs/0b6c-11/tasks/tasks/t1/task.toml: bad"),
            "tasks/t1/task.toml: bad"
        );
        assert_eq!(
            p.scrub("archive /srv/rollout-data/runs/0b6c-11/archive.bin: not gzip"),
            "archive archive.bin: not gzip"
        );
        assert_eq!(
            p.scrub("/srv/rollout-data/runs/x/archives/abc/extracted/tasks/a/workspace.yaml"),
            "tasks/a/workspace.yaml"
        );
        assert_eq!(
            p.scrub("in /srv/rollout-data/jobs/x/t__oracle__1/agent"),
            "in <job>/t__oracle__1/agent"
        );
        assert_eq!(
            p.scrub("creating /srv/rollout-data/serve.db"),
            "creating <data-dir>/serve.db"
        );
        let cache = rollout_core::cache_root();
        assert_eq!(
            p.scrub(&format!("{}/git/0123/abcd/task.toml", cache.display())),
            "<repo>/task.toml"
        );
    }

    #[test]
    fn key_like_names() {
        for k in [
            "api_key",
            "OPENAI_API_KEY",
            "token",
            "access-token",
            "password",
            "Authorization",
        ] {
            assert!(key_like(k), "{k}");
        }
        for k in ["keywords", "n_kept", "monkey", "name", "model_name"] {
            assert!(!key_like(k), "{k}");
        }
    }
}
