//! Serving files out of a job directory without leaving it: the job directory's content is
//! written by agents and tasks, which are untrusted. A requested path must be relative, made of
//! plain components only, and no component (the file included) may be a symbolic link; the file
//! is opened with `O_NOFOLLOW` so a link swapped in after the check is refused too.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GuardError {
    #[error("path {0:?} is not a plain relative path inside the job directory")]
    NotRelative(String),
    #[error("path {0:?} goes through a symbolic link; links are never followed")]
    Symlink(String),
    #[error("path {0:?} does not exist in the job directory")]
    Missing(String),
    #[error("path {0:?} is not a regular file")]
    NotFile(String),
}

/// Resolve `rel` under `root` (a job directory) to a path whose every component is a real
/// directory or, for the last, a regular file.
pub fn resolve(root: &Path, rel: &str) -> Result<PathBuf, GuardError> {
    let rel_path = Path::new(rel);
    if rel.is_empty() || rel.contains('\0') {
        return Err(GuardError::NotRelative(rel.into()));
    }
    let mut cur = root.to_path_buf();
    let comps: Vec<Component> = rel_path.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let Component::Normal(name) = c else {
            return Err(GuardError::NotRelative(rel.into()));
        };
        cur.push(name);
        let meta = std::fs::symlink_metadata(&cur).map_err(|_| GuardError::Missing(rel.into()))?;
        if meta.file_type().is_symlink() {
            return Err(GuardError::Symlink(rel.into()));
        }
        let last = i + 1 == comps.len();
        if !last && !meta.is_dir() {
            return Err(GuardError::Missing(rel.into()));
        }
        if last && !meta.is_file() {
            return Err(GuardError::NotFile(rel.into()));
        }
    }
    Ok(cur)
}

/// Open a file resolved by [`resolve`], refusing a symbolic link in its place.
pub fn open(root: &Path, rel: &str) -> Result<File, GuardError> {
    let path = resolve(root, rel)?;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|_| GuardError::Symlink(rel.into()))
}

/// Read at most `cap` bytes from the end of a file inside the job directory; returns the text
/// (lossy UTF-8), the file size and whether it was cut.
pub fn read_tail(root: &Path, rel: &str, cap: u64) -> Result<(String, u64, bool), GuardError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = open(root, rel)?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let cut = len > cap;
    if cut {
        let _ = f.seek(SeekFrom::Start(len - cap));
    }
    let mut buf = Vec::new();
    let _ = f.take(cap).read_to_end(&mut buf);
    Ok((String::from_utf8_lossy(&buf).into_owned(), len, cut))
}

/// A file listed for download.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct FileEntry {
    /// Path relative to the job directory.
    pub path: String,
    pub bytes: u64,
}

/// The regular files under `root/rel` (recursively, links skipped), at most `limit`, sorted.
pub fn list_files(root: &Path, rel: &str, limit: usize) -> Vec<FileEntry> {
    let mut out = Vec::new();
    let Ok(start) = resolve_dir(root, rel) else {
        return out;
    };
    let mut stack = vec![(start, rel.to_string())];
    while let Some((dir, prefix)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Ok(ft) = e.file_type() else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            let p = format!("{prefix}/{name}");
            if ft.is_dir() {
                stack.push((e.path(), p));
            } else if ft.is_file() {
                if out.len() >= limit {
                    return out;
                }
                let bytes = e.metadata().map(|m| m.len()).unwrap_or(0);
                out.push(FileEntry { path: p, bytes });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn resolve_dir(root: &Path, rel: &str) -> Result<PathBuf, GuardError> {
    let mut cur = root.to_path_buf();
    for c in Path::new(rel).components() {
        let Component::Normal(name) = c else {
            return Err(GuardError::NotRelative(rel.into()));
        };
        cur.push(name);
        let meta = std::fs::symlink_metadata(&cur).map_err(|_| GuardError::Missing(rel.into()))?;
        if !meta.is_dir() {
            return Err(GuardError::Missing(rel.into()));
        }
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_links_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let job = tmp.path().join("job");
        std::fs::create_dir_all(job.join("t1/artifacts")).unwrap();
        std::fs::write(job.join("t1/artifacts/out.txt"), "ok").unwrap();
        std::fs::write(tmp.path().join("secret"), "no").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), job.join("t1/artifacts/link"))
            .unwrap();
        std::os::unix::fs::symlink(tmp.path(), job.join("t1/up")).unwrap();
        assert!(resolve(&job, "t1/artifacts/out.txt").is_ok());
        for bad in ["../secret", "t1/../../secret", "/etc/passwd", "", "t1/./x"] {
            assert!(resolve(&job, bad).is_err(), "{bad} accepted");
        }
        assert!(matches!(
            resolve(&job, "t1/artifacts/link"),
            Err(GuardError::Symlink(_))
        ));
        assert!(matches!(
            resolve(&job, "t1/up/secret"),
            Err(GuardError::Symlink(_))
        ));
        assert!(matches!(resolve(&job, "t1"), Err(GuardError::NotFile(_))));
        let listed = list_files(&job, "t1", 100);
        assert_eq!(
            listed,
            vec![FileEntry {
                path: "t1/artifacts/out.txt".into(),
                bytes: 2
            }]
        );
        let (text, len, cut) = read_tail(&job, "t1/artifacts/out.txt", 1).unwrap();
        assert_eq!((text.as_str(), len, cut), ("k", 2, true));
    }
}
