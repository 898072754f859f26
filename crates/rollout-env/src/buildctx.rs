//! What an environment image is built from, and so what identifies it.
//!
//! A built environment is decided by four things: the build context (the task's `environment/`
//! directory less what its `.dockerignore` leaves out), the build arguments, the target platform,
//! and the engine id of every base image the Dockerfile names (each `FROM` and each
//! `COPY --from=<image>`). [`Identity`] hashes all four; the image tag is derived from that hash,
//! so an image is reused only when every input matches, and a base image that changed (a new
//! pull, a re-tag) gives a new tag and a rebuild.
//!
//! This module holds the pure parts: the `.dockerignore` matcher (Docker's semantics, see
//! [`DockerIgnore`]), the context walk shared by the digest and the tar sent to the engine, and
//! the Dockerfile scan for base images (see [`base_images`]).

use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Label on a built image: the engine ids of its base images, as JSON `{reference: id}`.
pub const LABEL_BASES: &str = "io.rollout.env-bases";
/// Label on a built image: the full identity hash (the tag holds its first 24 hex digits).
pub const LABEL_IDENTITY: &str = "io.rollout.env-identity";
/// Label on a built image: the platform it was built for (`linux/amd64`).
pub const LABEL_PLATFORM: &str = "io.rollout.env-platform";

/// When to refresh base images from their registry before a build.
pub use rollout_core::job_config::PullPolicy;

// ---------------------------------------------------------------------------------------------
// .dockerignore

/// How one pattern matches (the shortcuts moby's patternmatcher takes; they are part of its
/// observable behaviour, e.g. `**foo` matching `barfoo`).
#[derive(Debug, Clone)]
enum Matcher {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
struct Rule {
    exception: bool,
    matcher: Matcher,
}

impl Rule {
    fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Exact(p) => path == p,
            Matcher::Prefix(p) => path.starts_with(p.as_str()),
            Matcher::Suffix(s) => {
                path.ends_with(s.as_str()) || (s.starts_with('/') && path == &s[1..])
            }
            Matcher::Regex(r) => r.is_match(path),
        }
    }
}

/// The patterns of a `.dockerignore`, applied as Docker applies them.
///
/// A line starting with `#` is a comment; other lines are trimmed, blank ones skipped; a leading
/// `!` makes an exception. Each pattern is cleaned like Go's `filepath.Clean` and a leading `/`
/// dropped, so `/foo`, `./foo` and `foo/` all mean `foo` at the root of the context. Globs are
/// Go's `filepath.Match` (`*` and `?` stop at `/`, `[…]` classes, `\` escapes) plus `**`, which
/// matches any number of directories including none. A pattern excludes a path when it matches
/// the path or one of its parent directories; the last matching line decides, so a later `!`
/// line re-includes.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    rules: Vec<Rule>,
}

impl DockerIgnore {
    /// Parse the text of a `.dockerignore`; an invalid pattern is an error naming its line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (n, line) in text.lines().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            let mut pattern = line.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
            }
            let mut cleaned = if pattern.is_empty() {
                String::new()
            } else {
                go_clean(pattern)
            };
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            if exception && cleaned.is_empty() {
                return Err(format!("line {}: illegal exclusion pattern \"!\"", n + 1));
            }
            let matcher = compile(&cleaned)
                .map_err(|e| format!("line {}: bad pattern {line:?}: {e}", n + 1))?;
            rules.push(Rule { exception, matcher });
        }
        Ok(Self { rules })
    }

    /// Whether `path` (relative to the context root, `/`-separated) is left out of the context.
    pub fn excludes(&self, path: &str) -> bool {
        let parents: Vec<&str> = match path.rfind('/') {
            Some(i) => path[..i].split('/').collect(),
            None => Vec::new(),
        };
        let mut matched = false;
        for rule in &self.rules {
            // An exclusion cannot change an excluded path, nor an exception an included one.
            if rule.exception != matched {
                continue;
            }
            let mut hit = rule.matches(path);
            if !hit {
                let mut prefix = String::new();
                for dir in &parents {
                    if !prefix.is_empty() {
                        prefix.push('/');
                    }
                    prefix.push_str(dir);
                    if rule.matches(&prefix) {
                        hit = true;
                        break;
                    }
                }
            }
            if hit {
                matched = !rule.exception;
            }
        }
        matched
    }

    /// Whether any line is an exception (`!…`): then an excluded directory must still be walked.
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.exception)
    }

    /// Whether there are no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Go's `filepath.Clean` for `/`-separated paths.
fn go_clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|p| *p != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            p => out.push(p),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// Translate one cleaned pattern the way moby's patternmatcher does.
fn compile(pattern: &str) -> Result<Matcher, String> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut re = String::from("^");
    let mut kind = Kind::Exact;
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    let mut step = 0;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        if ch == '*' {
            if chars.get(i) == Some(&'*') {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= chars.len() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        re.push_str(".*");
                        kind = Kind::Regex;
                    }
                } else {
                    re.push_str("(.*/)?");
                    kind = Kind::Regex;
                }
                if step == 0 {
                    kind = Kind::Suffix;
                }
            } else {
                re.push_str("[^/]*");
                kind = Kind::Regex;
            }
        } else if ch == '?' {
            re.push_str("[^/]");
            kind = Kind::Regex;
        } else if ".+()|{}$".contains(ch) {
            re.push('\\');
            re.push(ch);
        } else if ch == '\\' {
            match chars.get(i) {
                Some(next) => {
                    re.push('\\');
                    re.push(*next);
                    i += 1;
                }
                None => re.push_str("\\\\"),
            }
        } else if ch == '[' || ch == ']' {
            re.push(ch);
            kind = Kind::Regex;
        } else {
            re.push(ch);
        }
        step += 1;
    }
    Ok(match kind {
        Kind::Exact => Matcher::Exact(pattern.to_string()),
        Kind::Prefix => Matcher::Prefix(pattern[..pattern.len() - 2].to_string()),
        Kind::Suffix => Matcher::Suffix(pattern[2..].to_string()),
        Kind::Regex => {
            re.push('$');
            Matcher::Regex(Regex::new(&re).map_err(|e| e.to_string())?)
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The build context

/// One entry of a build context.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
}

/// The build context of an environment: what Docker would send, after `.dockerignore`.
#[derive(Debug, Clone)]
pub struct BuildContext {
    pub root: PathBuf,
    /// Included entries, sorted by relative path (`/`-separated).
    pub entries: Vec<(String, EntryKind)>,
    /// Entries `.dockerignore` left out (files and directories; below a left-out directory
    /// only those walked).
    pub ignored: usize,
}

/// Why a context cannot be used.
#[derive(Debug)]
pub enum ContextError {
    Io(io::Error),
    /// `.dockerignore` has a line Docker would refuse.
    Ignore(String),
}

impl std::fmt::Display for ContextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContextError::Io(e) => write!(f, "{e}"),
            ContextError::Ignore(e) => write!(f, ".dockerignore {e}"),
        }
    }
}

impl From<io::Error> for ContextError {
    fn from(e: io::Error) -> Self {
        ContextError::Io(e)
    }
}

/// Files Docker always sends, whatever `.dockerignore` says (the daemon needs them).
const ALWAYS_SENT: [&str; 2] = ["Dockerfile", ".dockerignore"];

impl BuildContext {
    /// Walk `root`, applying its `.dockerignore` (if any).
    pub fn read(root: &Path) -> Result<Self, ContextError> {
        let ignore = match fs::read_to_string(root.join(".dockerignore")) {
            Ok(text) => DockerIgnore::parse(&text).map_err(ContextError::Ignore)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => DockerIgnore::default(),
            Err(e) => return Err(e.into()),
        };
        let mut ctx = BuildContext {
            root: root.to_path_buf(),
            entries: Vec::new(),
            ignored: 0,
        };
        walk(root, "", &ignore, &mut ctx)?;
        ctx.entries.sort();
        // An excluded directory walked for its exceptions is sent when something inside is.
        let mut dirs: BTreeSet<String> = BTreeSet::new();
        for (rel, _) in &ctx.entries {
            let mut p = rel.as_str();
            while let Some(i) = p.rfind('/') {
                p = &p[..i];
                dirs.insert(p.to_string());
            }
        }
        let have: BTreeSet<String> = ctx
            .entries
            .iter()
            .filter(|(_, k)| *k == EntryKind::Dir)
            .map(|(r, _)| r.clone())
            .collect();
        for d in dirs.difference(&have) {
            ctx.entries.push((d.clone(), EntryKind::Dir));
        }
        ctx.entries.sort();
        Ok(ctx)
    }

    /// BLAKE3 over the context: each entry's path, kind, executable bit or link target, and
    /// content. Identical contexts hash alike whatever their location, timestamps or ignored
    /// files.
    pub fn digest(&self) -> io::Result<blake3::Hash> {
        let mut hasher = blake3::Hasher::new();
        for (rel, kind) in &self.entries {
            let path = self.root.join(rel);
            hasher.update(&(rel.len() as u64).to_le_bytes());
            hasher.update(rel.as_bytes());
            match kind {
                EntryKind::Dir => {
                    hasher.update(b"D");
                }
                EntryKind::Symlink => {
                    let target = fs::read_link(&path)?;
                    hasher.update(b"L");
                    hasher.update(target.to_string_lossy().as_bytes());
                    hasher.update(b"\0");
                }
                EntryKind::File => {
                    let meta = fs::metadata(&path)?;
                    hasher.update(if is_executable(&meta) { b"X" } else { b"F" });
                    hasher.update(&meta.len().to_le_bytes());
                    io::copy(&mut fs::File::open(&path)?, &mut hasher)?;
                }
            }
        }
        Ok(hasher.finalize())
    }

    /// The context as the tar sent to the engine: exactly the included entries (modes kept,
    /// owner root, timestamps zeroed, links kept as links).
    pub fn tar(&self) -> io::Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Deterministic);
        b.follow_symlinks(false);
        for (rel, _) in &self.entries {
            b.append_path_with_name(self.root.join(rel), rel)?;
        }
        b.into_inner()
    }

    /// Relative paths of the included regular files and links (for tests and messages).
    pub fn files(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(_, k)| *k != EntryKind::Dir)
            .map(|(r, _)| r.as_str())
            .collect()
    }
}

/// Digest of the build context of `dir` (after its `.dockerignore`): the `io.rollout.env-hash`
/// label of every image built from it.
pub fn context_digest(dir: &Path) -> Result<blake3::Hash, ContextError> {
    Ok(BuildContext::read(dir)?.digest()?)
}

fn walk(
    root: &Path,
    rel: &str,
    ignore: &DockerIgnore,
    ctx: &mut BuildContext,
) -> Result<(), ContextError> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let ft = entry.file_type()?;
        let always = rel.is_empty() && ALWAYS_SENT.contains(&name.as_str());
        let excluded = !always && ignore.excludes(&child);
        if ft.is_dir() {
            if excluded {
                ctx.ignored += 1;
                if ignore.has_exceptions() {
                    walk(root, &child, ignore, ctx)?;
                }
                continue;
            }
            ctx.entries.push((child.clone(), EntryKind::Dir));
            walk(root, &child, ignore, ctx)?;
        } else if excluded {
            ctx.ignored += 1;
        } else if ft.is_symlink() {
            ctx.entries.push((child, EntryKind::Symlink));
        } else if ft.is_file() {
            ctx.entries.push((child, EntryKind::File));
        }
        // Sockets, fifos and devices are not sent (Docker refuses to archive them too).
    }
    Ok(())
}

#[cfg(unix)]
fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_: &fs::Metadata) -> bool {
    false
}

// ---------------------------------------------------------------------------------------------
// Base images of a Dockerfile

/// Join continuation lines (`\` or the `# escape=` character at the end of a line) and drop
/// comments, giving the Dockerfile's instructions.
fn instructions(dockerfile: &str) -> Vec<String> {
    let mut escape = '\\';
    // Parser directives: `# escape=`` ` among the leading comment lines.
    for line in dockerfile.lines() {
        let t = line.trim();
        let Some(body) = t.strip_prefix('#') else {
            break;
        };
        if let Some((k, v)) = body.split_once('=') {
            if k.trim().eq_ignore_ascii_case("escape") {
                if let Some(c) = v.trim().chars().next() {
                    escape = c;
                }
                continue;
            }
        }
        if !body.trim().is_empty() {
            break;
        }
    }
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let t = line.trim_start();
        if t.starts_with('#') {
            continue; // comments, also inside a continued instruction
        }
        let trimmed = line.trim_end();
        if let Some(body) = trimmed.strip_suffix(escape) {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        if !current.trim().is_empty() {
            out.push(current.trim().to_string());
        }
        current.clear();
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// Substitute `$NAME`, `${NAME}`, `${NAME:-word}` and `${NAME:+word}` from `vars` (an unset
/// name gives the empty string, as in Docker).
fn substitute(s: &str, vars: &BTreeMap<String, String>) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && chars.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
            continue;
        }
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        if chars.get(i + 1) == Some(&'{') {
            let Some(end) = chars[i + 2..].iter().position(|&c| c == '}') else {
                out.extend(&chars[i..]);
                break;
            };
            let inner: String = chars[i + 2..i + 2 + end].iter().collect();
            i += 3 + end;
            let value = if let Some((name, word)) = inner.split_once(":-") {
                match vars.get(name).filter(|v| !v.is_empty()) {
                    Some(v) => v.clone(),
                    None => substitute(word, vars),
                }
            } else if let Some((name, word)) = inner.split_once(":+") {
                match vars.get(name).filter(|v| !v.is_empty()) {
                    Some(_) => substitute(word, vars),
                    None => String::new(),
                }
            } else {
                vars.get(&inner).cloned().unwrap_or_default()
            };
            out.push_str(&value);
            continue;
        }
        let name: String = chars[i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
            .collect();
        if name.is_empty() {
            out.push('$');
            i += 1;
            continue;
        }
        i += 1 + name.chars().count();
        out.push_str(&vars.get(&name).cloned().unwrap_or_default());
    }
    out
}

/// Split an instruction's arguments into words (quotes are kept simple: a quoted word loses its
/// quotes).
fn words(s: &str) -> Vec<String> {
    s.split_whitespace()
        .map(|w| w.trim_matches(|c| c == '"' || c == '\'').to_string())
        .collect()
}

/// The images a Dockerfile builds from: each `FROM` that is not an earlier stage or `scratch`,
/// and each `COPY --from=` that is not a stage name or index, in order of first appearance,
/// after substituting the global `ARG`s (defaults overridden by `build_args`).
pub fn base_images(
    dockerfile: &str,
    build_args: &BTreeMap<String, String>,
) -> Result<Vec<String>, String> {
    let mut global: BTreeMap<String, String> = BTreeMap::new();
    let mut seen_from = false;
    let mut stages: Vec<Option<String>> = Vec::new();
    let mut out: Vec<String> = Vec::new();
    let add = |image: String, out: &mut Vec<String>| {
        if !out.contains(&image) {
            out.push(image);
        }
    };
    for inst in instructions(dockerfile) {
        let (cmd, rest) = match inst.split_once(char::is_whitespace) {
            Some((c, r)) => (c.to_ascii_uppercase(), r.trim()),
            None => (inst.to_ascii_uppercase(), ""),
        };
        match cmd.as_str() {
            "ARG" if !seen_from => {
                for w in words(rest) {
                    let (name, default) = match w.split_once('=') {
                        Some((n, d)) => (n.to_string(), Some(substitute(d, &global))),
                        None => (w.clone(), None),
                    };
                    let value = build_args.get(&name).cloned().or(default);
                    if let Some(v) = value {
                        global.insert(name, v);
                    }
                }
            }
            "FROM" => {
                seen_from = true;
                let args: Vec<String> = words(rest)
                    .into_iter()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let Some(raw) = args.first() else {
                    return Err(format!("`{inst}` names no image"));
                };
                let image = substitute(raw, &global);
                if image.is_empty() {
                    return Err(format!(
                        "`{inst}`: the image is empty once ARGs are substituted (give the ARG a default)"
                    ));
                }
                let lower = image.to_ascii_lowercase();
                let is_stage = stages.iter().flatten().any(|s| *s == lower);
                if lower != "scratch" && !is_stage {
                    add(image, &mut out);
                }
                let name = (args.len() >= 3 && args[1].eq_ignore_ascii_case("AS"))
                    .then(|| args[2].to_ascii_lowercase());
                stages.push(name);
            }
            "COPY" | "ADD" => {
                for w in words(rest) {
                    let Some(from) = w
                        .strip_prefix("--from=")
                        .or_else(|| w.strip_prefix("--FROM="))
                    else {
                        if !w.starts_with("--") {
                            break;
                        }
                        continue;
                    };
                    let lower = from.to_ascii_lowercase();
                    let is_stage = stages.iter().flatten().any(|s| *s == lower)
                        || from
                            .parse::<usize>()
                            .is_ok_and(|i| i < stages.len().saturating_sub(1));
                    if !is_stage && lower != "scratch" {
                        add(from.to_string(), &mut out);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Identity

/// Everything that decides a built environment's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Digest of the build context after `.dockerignore`.
    pub context: blake3::Hash,
    /// Dockerfile path inside the context.
    pub dockerfile: String,
    pub build_args: BTreeMap<String, String>,
    /// Target platform, `os/arch`.
    pub platform: String,
    /// Base image reference → engine id.
    pub bases: BTreeMap<String, String>,
}

impl Identity {
    /// Hash of every input.
    pub fn hash(&self) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        let mut field = |tag: &str, value: &str| {
            h.update(tag.as_bytes());
            h.update(&(value.len() as u64).to_le_bytes());
            h.update(value.as_bytes());
        };
        field("context", &self.context.to_hex());
        field("dockerfile", &self.dockerfile);
        for (k, v) in &self.build_args {
            field("arg", k);
            field("=", v);
        }
        field("platform", &self.platform);
        for (k, v) in &self.bases {
            field("base", k);
            field("=", v);
        }
        h.finalize()
    }

    /// Tag of the image built for this identity.
    pub fn tag(&self) -> String {
        format!("rollout-env:{}", &self.hash().to_hex()[..24])
    }

    /// The bases as the JSON kept in the [`LABEL_BASES`] label.
    pub fn bases_label(&self) -> String {
        serde_json::to_string(&self.bases).unwrap_or_default()
    }
}

/// Why an environment is built although images of the same context exist: which bases changed
/// (`reference: old → new`), which appeared or went away, or that the platform or build
/// arguments differ. `previous` is the [`LABEL_BASES`] JSON of the most recent such image.
pub fn rebuild_reason(
    now: &Identity,
    previous_bases: Option<&str>,
    previous_platform: Option<&str>,
) -> String {
    let Some(prev) = previous_bases else {
        return "no image of this environment yet".into();
    };
    let prev: BTreeMap<String, String> = serde_json::from_str(prev).unwrap_or_default();
    let mut changes = Vec::new();
    for (r, id) in &now.bases {
        match prev.get(r) {
            Some(old) if old != id => changes.push(format!(
                "base image {r} changed ({} → {})",
                short_id(old),
                short_id(id)
            )),
            None => changes.push(format!("base image {r} is new ({})", short_id(id))),
            _ => {}
        }
    }
    for r in prev.keys().filter(|r| !now.bases.contains_key(*r)) {
        changes.push(format!("base image {r} is no longer used"));
    }
    if let Some(p) = previous_platform.filter(|p| *p != now.platform) {
        changes.push(format!("platform changed ({p} → {})", now.platform));
    }
    if changes.is_empty() {
        "an image of this context exists for other build inputs".into()
    } else {
        changes.join("; ")
    }
}

/// `sha256:0123456789ab…` → `sha256:0123456789ab`.
pub fn short_id(id: &str) -> &str {
    let end = id.find(':').map_or(0, |i| i + 1) + 12;
    &id[..end.min(id.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ig(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).unwrap()
    }

    #[test]
    fn docker_documented_examples() {
        // The example of Docker's .dockerignore reference.
        let d = ig("# comment\n*/temp*\n*/*/temp*\ntemp?\n");
        assert!(d.excludes("somedir/temporary.txt"));
        assert!(d.excludes("somedir/temp"));
        assert!(d.excludes("somedir/subdir/temporary.txt"));
        assert!(d.excludes("tempa"));
        assert!(d.excludes("tempb"));
        assert!(
            !d.excludes("temporary.txt"),
            "*/temp* is one level down only"
        );
        assert!(!d.excludes("a/b/c/temp"));
        assert!(!d.excludes("tempab"));
        // `**` matches any number of directories, including none.
        let d = ig("**/*.go\n");
        assert!(d.excludes("main.go"));
        assert!(d.excludes("a/b/c/main.go"));
        assert!(!d.excludes("main.rs"));
        // Exceptions, the last matching line deciding.
        let d = ig("*.md\n!README.md\n");
        assert!(d.excludes("CHANGES.md"));
        assert!(!d.excludes("README.md"));
        assert!(!d.excludes("docs/CHANGES.md"), "*.md is the root only");
        let d = ig("*.md\n!README*.md\nREADME-secret.md\n");
        assert!(d.excludes("CHANGES.md"));
        assert!(!d.excludes("README-public.md"));
        assert!(d.excludes("README-secret.md"));
        let d = ig("*.md\nREADME-secret.md\n!README*.md\n");
        assert!(!d.excludes("README-secret.md"));
        // Leading and trailing slashes, `.` and `..` are cleaned away.
        for p in [
            "/foo/bar",
            "foo/bar",
            "./foo/bar",
            "foo/bar/",
            "foo/x/../bar",
        ] {
            let d = ig(p);
            assert!(d.excludes("foo/bar"), "{p}");
            assert!(d.excludes("foo/bar/inside.txt"), "{p}");
            assert!(!d.excludes("foo/barn"), "{p}");
            assert!(!d.excludes("x/foo/bar"), "{p}");
        }
    }

    #[test]
    fn comments_blank_lines_and_bad_patterns() {
        let d = ig("\n   \n#secret\n # not a comment\n");
        assert!(!d.excludes("secret"));
        assert!(d.excludes("# not a comment"));
        assert!(DockerIgnore::parse("!\n").unwrap_err().contains("line 1"));
        assert!(DockerIgnore::parse("ok\n[z-\n")
            .unwrap_err()
            .contains("line 2"));
        assert!(ig("").is_empty());
    }

    #[test]
    fn globs_follow_go_filepath_match() {
        // An escape takes effect in a pattern that has a wildcard; a pattern with none is
        // compared as written (moby's exact-match shortcut), so `\*lit` matches only `\*lit`.
        let d = ig("a?c\n[xy]z\n[^q]w\n\\*li?\n");
        assert!(d.excludes("abc"));
        assert!(!d.excludes("a/c"));
        assert!(d.excludes("xz") && d.excludes("yz") && !d.excludes("zz"));
        assert!(d.excludes("rw") && !d.excludes("qw"));
        assert!(d.excludes("*lit") && !d.excludes("xlit"));
        let d = ig("dir/**\n");
        assert!(d.excludes("dir/a") && d.excludes("dir/a/b"));
        assert!(!d.excludes("dir"));
        let d = ig("**\n!keep\n");
        assert!(d.excludes("anything/at/all") && !d.excludes("keep"));
        // moby's shortcut: a leading ** with a literal rest is a suffix test.
        assert!(ig("**foo").excludes("barfoo"));
        let d = ig("a/**/b\n");
        assert!(d.excludes("a/b") && d.excludes("a/x/y/b") && !d.excludes("a/xb"));
    }

    #[test]
    fn exceptions_reach_inside_excluded_directories() {
        let d = ig("docs\n!docs/README.md\n");
        assert!(d.excludes("docs/a.md"));
        assert!(!d.excludes("docs/README.md"));
        assert!(d.has_exceptions());
    }

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    #[test]
    fn context_leaves_out_ignored_files_but_keeps_dockerfile_and_dockerignore() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "Dockerfile", "FROM x\n");
        write(
            d.path(),
            ".dockerignore",
            "Dockerfile\n.dockerignore\n*.log\nnode_modules\ndocs\n!docs/keep.md\n",
        );
        write(d.path(), "app.py", "print(1)\n");
        write(d.path(), "debug.log", "noise\n");
        write(d.path(), "node_modules/x/index.js", "x\n");
        write(d.path(), "docs/keep.md", "k\n");
        write(d.path(), "docs/drop.md", "d\n");
        let ctx = BuildContext::read(d.path()).unwrap();
        assert_eq!(
            ctx.files(),
            [".dockerignore", "Dockerfile", "app.py", "docs/keep.md"]
        );
        let tar = ctx.tar().unwrap();
        let mut ar = tar::Archive::new(&tar[..]);
        let mut names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ".dockerignore",
                "Dockerfile",
                "app.py",
                "docs",
                "docs/keep.md"
            ]
        );
        // An ignored file changes neither digest nor tar.
        let before = (ctx.digest().unwrap(), tar.clone());
        write(d.path(), "debug.log", "other noise\n");
        write(d.path(), "node_modules/y.js", "y\n");
        let again = BuildContext::read(d.path()).unwrap();
        assert_eq!(again.digest().unwrap(), before.0);
        assert_eq!(again.tar().unwrap(), before.1);
        // A sent file changes the digest.
        write(d.path(), "app.py", "print(2)\n");
        let changed = BuildContext::read(d.path()).unwrap();
        assert_ne!(changed.digest().unwrap(), before.0);
    }

    #[test]
    fn a_bad_dockerignore_is_refused() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "Dockerfile", "FROM x\n");
        write(d.path(), ".dockerignore", "a\n!\n");
        let e = BuildContext::read(d.path()).unwrap_err().to_string();
        assert!(e.contains(".dockerignore line 2"), "{e}");
    }

    fn bases(text: &str) -> Vec<String> {
        base_images(text, &BTreeMap::new()).unwrap()
    }

    #[test]
    fn base_images_of_dockerfiles() {
        assert_eq!(
            bases("FROM debian:bookworm-slim\nRUN x\n"),
            ["debian:bookworm-slim"]
        );
        // Stages, scratch, COPY --from of a stage, a stage index and an image.
        let text = "FROM golang:1.22 AS build\nRUN go build\n\
                    FROM scratch AS empty\n\
                    from build as again\n\
                    FROM debian:bookworm-slim\n\
                    COPY --from=build /out /out\n\
                    COPY --from=0 /x /x\n\
                    COPY --chown=1:1 --from=busybox:1.36 /bin/sh /sh\n\
                    COPY --from=BUILD /y /y\n";
        assert_eq!(
            bases(text),
            ["golang:1.22", "debian:bookworm-slim", "busybox:1.36"]
        );
        // Global ARGs, defaults and build-arg overrides; flags; continuations; comments.
        let text = "# syntax=docker/dockerfile:1\nARG REG=localhost:5000\nARG TAG=1\n\
                    FROM --platform=linux/amd64 ${REG}/base:$TAG \\\n  AS b\n\
                    # a comment\nFROM ${MISSING:-debian}:${TAG:+bookworm}\n";
        assert_eq!(bases(text), ["localhost:5000/base:1", "debian:bookworm"]);
        let args = BTreeMap::from([("TAG".to_string(), "2".to_string())]);
        assert_eq!(
            base_images(text, &args).unwrap(),
            ["localhost:5000/base:2", "debian:bookworm"]
        );
        // An ARG that resolves to nothing is refused, not built from "".
        assert!(base_images("ARG B\nFROM $B\n", &BTreeMap::new()).is_err());
        // The escape directive.
        assert_eq!(
            bases("# escape=`\nFROM `\n  debian:bookworm-slim\n"),
            ["debian:bookworm-slim"]
        );
    }

    #[test]
    fn identity_covers_every_input() {
        let base = Identity {
            context: blake3::hash(b"ctx"),
            dockerfile: "Dockerfile".into(),
            build_args: BTreeMap::new(),
            platform: "linux/amd64".into(),
            bases: BTreeMap::from([("debian:bookworm-slim".into(), "sha256:aaa".into())]),
        };
        let mut other = base.clone();
        other
            .bases
            .insert("debian:bookworm-slim".into(), "sha256:bbb".into());
        assert_ne!(base.tag(), other.tag());
        let mut other = base.clone();
        other.platform = "linux/arm64".into();
        assert_ne!(base.tag(), other.tag());
        let mut other = base.clone();
        other.build_args.insert("A".into(), "1".into());
        assert_ne!(base.tag(), other.tag());
        let mut other = base.clone();
        other.context = blake3::hash(b"ctx2");
        assert_ne!(base.tag(), other.tag());
        assert_eq!(base.tag(), base.clone().tag());
        assert!(base.tag().starts_with("rollout-env:"));
        let reason = rebuild_reason(
            &base,
            Some(r#"{"debian:bookworm-slim":"sha256:bbbbbbbbbbbbbbbbbbbb"}"#),
            Some("linux/amd64"),
        );
        assert_eq!(
            reason,
            "base image debian:bookworm-slim changed (sha256:bbbbbbbbbbbb → sha256:aaa)"
        );
    }
}
