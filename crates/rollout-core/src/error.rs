//! Configuration errors that point at the file, line and field at fault.

use std::fmt;
use std::path::{Path, PathBuf};

/// A file the user wrote could not be read or is not valid.
///
/// The message says what was expected; `line`/`column` are 1-based where known.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigError {
    /// The file at fault.
    pub file: PathBuf,
    /// 1-based line, where the parser knows it.
    pub line: Option<usize>,
    /// 1-based column, where the parser knows it.
    pub column: Option<usize>,
    /// Dotted path of the field at fault (`environment.memory_mb`), where known.
    pub field: Option<String>,
    /// What is wrong and what is expected.
    pub message: String,
}

impl ConfigError {
    /// An error about a whole file (missing, unreadable, no task source …).
    pub fn file(file: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Self {
            file: file.as_ref().to_path_buf(),
            line: None,
            column: None,
            field: None,
            message: message.into(),
        }
    }

    /// An error about one field whose position in the file is unknown.
    pub fn field(
        file: impl AsRef<Path>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::file(file, message)
        }
    }

    /// Build from a `toml` deserialisation error, using the source text to turn the byte
    /// span into a line and column.
    pub fn from_toml(file: &Path, text: &str, err: &toml::de::Error) -> Self {
        let (line, column) = match err.span() {
            Some(span) => {
                let (l, c) = line_col(text, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        let raw = err.message().trim().to_string();
        let (field, message) = split_field(&raw);
        Self {
            file: file.to_path_buf(),
            line,
            column,
            field: field.or_else(|| line.and_then(|l| key_on_line(text, l))),
            message,
        }
    }

    /// Build from a YAML (or JSON, parsed as YAML) deserialisation error.
    pub fn from_yaml(file: &Path, err: &serde_norway::Error) -> Self {
        let (line, column) = match err.location() {
            Some(loc) => (Some(loc.line()), Some(loc.column())),
            None => (None, None),
        };
        // serde_norway renders "path.to.field: message at line L column C".
        let mut raw = err.to_string();
        if let Some(idx) = raw.find(" at line ") {
            raw.truncate(idx);
        }
        let (field, message) = split_yaml_path(&raw);
        Self {
            file: file.to_path_buf(),
            line,
            column,
            field,
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// 1-based (line, column) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

/// Our own validation messages carry the field as "`a.b`: message".
fn split_field(raw: &str) -> (Option<String>, String) {
    if let Some(rest) = raw.strip_prefix('`') {
        if let Some(end) = rest.find("`: ") {
            return (Some(rest[..end].to_string()), rest[end + 3..].to_string());
        }
    }
    (None, raw.to_string())
}

fn split_yaml_path(raw: &str) -> (Option<String>, String) {
    // A YAML path looks like `agents[0].name`; a message never starts with one followed by ": ".
    if let Some((head, tail)) = raw.split_once(": ") {
        let looks_like_path = !head.is_empty()
            && !head.contains(' ')
            && head
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '-'));
        if looks_like_path && head != "." {
            return (Some(head.to_string()), tail.to_string());
        }
    }
    (None, raw.to_string())
}

/// The TOML key (with its table prefix) defined on a given line, for errors whose message
/// does not name the field.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') && !t.starts_with("[[") {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
        if i + 1 == line {
            if t.starts_with('[') {
                return Some(table);
            }
            let key = t.split('=').next()?.trim().trim_matches('"');
            if key.is_empty() {
                return None;
            }
            return Some(if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc\n", 0), (1, 1));
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
    }

    #[test]
    fn key_on_line_includes_table() {
        let text = "version = \"1\"\n[environment]\ncpus = \"x\"\n";
        assert_eq!(key_on_line(text, 3).as_deref(), Some("environment.cpus"));
        assert_eq!(key_on_line(text, 1).as_deref(), Some("version"));
    }

    #[test]
    fn display_names_file_line_field() {
        let e = ConfigError {
            file: "t/task.toml".into(),
            line: Some(3),
            column: Some(8),
            field: Some("environment.cpus".into()),
            message: "expected a number".into(),
        };
        assert_eq!(
            e.to_string(),
            "t/task.toml:3:8: field `environment.cpus`: expected a number"
        );
    }
}
