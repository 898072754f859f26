//! Redaction of secrets in what leaves the machine (registration bundles): environment values
//! whose names look secret, and every match of the secret patterns in commands and values.

use crate::model::Bundle;
use crate::StoreError;
use regex::Regex;

/// What a redacted secret is replaced by.
pub const REDACTED: &str = "[REDACTED]";

/// Built-in patterns (Rust regex syntax). Capture groups named `keep` and `after` are kept (a
/// flag name before the secret, a delimiter after it); the rest of the match is redacted.
pub const DEFAULT_REDACT_PATTERNS: &[&str] = &[
    // --token X, --password=X, -p X style flags with secret-looking names.
    r"(?i)(?P<keep>--?[a-z0-9_-]*(?:token|secret|password|passwd|api[_-]?key|access[_-]?key|credential)s?[= ])\S+",
    // NAME=value assignments with secret-looking names, inside commands.
    r"(?i)(?P<keep>\b[a-z0-9_]*(?:token|secret|password|passwd|api_?key|access_?key|credential)s?=)\S+",
    // user:password@ in URLs.
    r"(?P<keep>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:)[^/\s@]+(?P<after>@)",
    // Well-known token shapes.
    r"\bsk-[A-Za-z0-9_-]{16,}",
    r"\bgh[pousr]_[A-Za-z0-9]{20,}",
    r"\bAKIA[0-9A-Z]{16}\b",
    r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
    r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{16,}=*",
];

/// Environment variable names whose values are always redacted.
const SECRET_NAME: &str = r"(?i)(token|secret|password|passwd|api_?key|access_?key|credential|private_?key|authorization)";

/// Applies the secret patterns.
pub struct Redactor {
    patterns: Vec<Regex>,
    secret_name: Regex,
}

impl Redactor {
    /// The built-in patterns plus `extra` ones.
    pub fn new(extra: &[String]) -> Result<Self, StoreError> {
        let mut patterns = Vec::new();
        for p in DEFAULT_REDACT_PATTERNS
            .iter()
            .map(|s| s.to_string())
            .chain(extra.iter().cloned())
        {
            patterns.push(Regex::new(&p).map_err(|source| StoreError::Pattern {
                pattern: p.clone(),
                source,
            })?);
        }
        Ok(Redactor {
            patterns,
            secret_name: Regex::new(SECRET_NAME).expect("built-in pattern"),
        })
    }

    /// `text` with every secret replaced.
    pub fn text(&self, text: &str) -> String {
        let mut out = text.to_string();
        for re in &self.patterns {
            if !re.is_match(&out) {
                continue;
            }
            out = re
                .replace_all(&out, |c: &regex::Captures<'_>| {
                    let keep = c.name("keep").map_or("", |m| m.as_str());
                    let after = c.name("after").map_or("", |m| m.as_str());
                    format!("{keep}{REDACTED}{after}")
                })
                .into_owned();
        }
        out
    }

    /// The value of environment variable `name`, redacted.
    pub fn env_value(&self, name: &str, value: &str) -> String {
        if self.secret_name.is_match(name) && !value.is_empty() {
            REDACTED.to_string()
        } else {
            self.text(value)
        }
    }

    /// Redact a bundle's commands, arguments, environments and metadata strings.
    pub fn bundle(&self, b: &mut Bundle) {
        for j in &mut b.jobs {
            j.command = self.text(&j.command);
            j.argv = j.argv.iter().map(|a| self.text(a)).collect();
            for (k, v) in j.env.iter_mut() {
                *v = self.env_value(k, v);
            }
            self.json(&mut j.metadata, None);
        }
    }

    fn json(&self, v: &mut serde_json::Value, key: Option<&str>) {
        match v {
            serde_json::Value::String(s) => {
                *s = match key {
                    Some(k) => self.env_value(k, s),
                    None => self.text(s),
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| self.json(x, None)),
            serde_json::Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    self.json(x, Some(k));
                }
            }
            _ => {}
        }
    }
}
