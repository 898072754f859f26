//! Tar archives going into and out of environments.
//!
//! Going in, [`TarBuilder`] assembles files, directories and links at absolute paths of the
//! environment. Coming out, [`extract_stripped`] unpacks what an (untrusted) environment sent:
//! only regular files and directories, never outside the destination, never through a link.

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

/// Builds an in-memory tar whose paths are absolute paths inside the environment.
pub struct TarBuilder {
    inner: tar::Builder<Vec<u8>>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn rel(path: &str) -> &str {
    path.trim_start_matches('/')
}

impl TarBuilder {
    pub fn new() -> Self {
        let mut inner = tar::Builder::new(Vec::new());
        inner.mode(tar::HeaderMode::Deterministic);
        inner.follow_symlinks(false);
        Self { inner }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    /// A directory at `path` with `mode` (e.g. 0o777 for log directories any user may write).
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<&mut Self> {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.inner
            .append_data(&mut h, format!("{}/", rel(path)), io::empty())?;
        Ok(self)
    }

    /// A file at `path` with `content`.
    pub fn file(&mut self, path: &str, mode: u32, content: &[u8]) -> io::Result<&mut Self> {
        let mut h = Self::header(tar::EntryType::Regular, mode, content.len() as u64);
        self.inner.append_data(&mut h, rel(path), content)?;
        Ok(self)
    }

    /// A symlink at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<&mut Self> {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.inner.append_link(&mut h, rel(path), target)?;
        Ok(self)
    }

    /// The host directory `src`, recursively, at `path` (modes kept, owner root; symlinks kept
    /// as symlinks).
    pub fn host_dir(&mut self, path: &str, src: &Path) -> io::Result<&mut Self> {
        self.inner.append_dir_all(rel(path), src)?;
        Ok(self)
    }

    /// The finished archive.
    pub fn finish(self) -> io::Result<Vec<u8>> {
        self.inner.into_inner()
    }
}

/// Copy a host directory tree: files with their modes, symlinks as symlinks.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let to = dst.join(entry.file_name());
        if ft.is_dir() {
            copy_tree(&entry.path(), &to)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &to)?;
        } else {
            fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

/// What [`extract_stripped`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExtractStats {
    pub files: u64,
    pub skipped: u64,
    /// True when the archive ended early (e.g. it was cut at a size cap).
    pub incomplete: bool,
    /// The first [`MAX_SKIPPED_LISTED`] entries not materialised: (path below the destination,
    /// what it was, e.g. "a symbolic link").
    pub skipped_entries: Vec<(String, String)>,
}

/// How many skipped entries [`ExtractStats::skipped_entries`] names at most.
pub const MAX_SKIPPED_LISTED: usize = 64;

/// Mode of every directory materialised from an environment.
pub const DIR_MODE: u32 = 0o755;

/// A file's mode as materialised on the host: no setuid/setgid/sticky bit, no group or world
/// write, always readable and writable by the owner.
pub fn masked_file_mode(mode: u32) -> u32 {
    mode & 0o755 | 0o600
}

/// What a tar entry type is, in words.
fn describe(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Symlink => "a symbolic link",
        tar::EntryType::Link => "a hard link",
        tar::EntryType::Fifo => "a FIFO (named pipe)",
        tar::EntryType::Char => "a character device",
        tar::EntryType::Block => "a block device",
        tar::EntryType::Directory => "a directory",
        _ => "a special file",
    }
}

impl ExtractStats {
    fn skip(&mut self, path: &Path, what: &str) {
        self.skipped += 1;
        if self.skipped_entries.len() < MAX_SKIPPED_LISTED {
            self.skipped_entries
                .push((path.to_string_lossy().into_owned(), what.to_string()));
        }
    }
}

/// Create `dir` and its missing parents with mode [`DIR_MODE`].
fn create_dirs(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
}

/// Unpack `archive` into `dest`, dropping the first path component of every entry (the Engine
/// API's archive of `/logs/verifier` holds `verifier/...`). Regular files and directories only;
/// a path that would leave `dest`, or pass through something that is not a real directory, is
/// skipped.
pub fn extract_stripped(archive: impl Read, dest: &Path) -> io::Result<ExtractStats> {
    create_dirs(dest)?;
    let mut stats = ExtractStats::default();
    let mut ar = tar::Archive::new(archive);
    let entries = match ar.entries() {
        Ok(e) => e,
        Err(_) => {
            stats.incomplete = true;
            return Ok(stats);
        }
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(_) => {
                stats.incomplete = true;
                break;
            }
        };
        let Ok(path) = entry.path().map(|p| p.into_owned()) else {
            stats.skip(Path::new("?"), "an entry with an unreadable name");
            continue;
        };
        let Some(relative) = safe_stripped(&path) else {
            if path.components().count() > 1 {
                stats.skip(&path, "a path leaving the directory");
            }
            continue;
        };
        let target = dest.join(&relative);
        if !parents_are_real_dirs(dest, &relative) {
            stats.skip(&relative, "below something that is not a directory");
            continue;
        }
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                if fs::symlink_metadata(&target).is_ok_and(|m| !m.is_dir()) {
                    stats.skip(&relative, "a directory where a file already is");
                    continue;
                }
                create_dirs(&target)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                if let Some(parent) = target.parent() {
                    create_dirs(parent)?;
                }
                if fs::symlink_metadata(&target).is_ok_and(|m| !m.is_file()) {
                    stats.skip(&relative, "a file where a directory already is");
                    continue;
                }
                // O_NOFOLLOW: never write through a link, whoever made it.
                use std::os::unix::fs::OpenOptionsExt;
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)?;
                if io::copy(&mut entry, &mut out).is_err() {
                    stats.incomplete = true;
                    break;
                }
                use std::os::unix::fs::PermissionsExt;
                let mode = masked_file_mode(entry.header().mode().unwrap_or(0o644));
                out.set_permissions(fs::Permissions::from_mode(mode))?;
                stats.files += 1;
            }
            other => stats.skip(&relative, describe(other)),
        }
    }
    Ok(stats)
}

/// The path without its first component, if every remaining component is a plain name.
fn safe_stripped(path: &Path) -> Option<PathBuf> {
    let mut comps = path.components();
    match comps.next()? {
        Component::Normal(_) => {}
        _ => return None,
    }
    let mut out = PathBuf::new();
    for c in comps {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Every existing ancestor of `dest/relative` below `dest` is a real directory (not a link).
fn parents_are_real_dirs(dest: &Path, relative: &Path) -> bool {
    let mut cur = dest.to_path_buf();
    let n = relative.components().count();
    for (i, c) in relative.components().enumerate() {
        if i + 1 == n {
            break;
        }
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return false,
            Err(_) => return true,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, content: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses "..", so write the name bytes directly to test hostile archives
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, content).unwrap();
    }

    #[test]
    fn strips_the_first_component() {
        let data = archive(|b| {
            add_file(b, "verifier/reward.txt", b"1");
            add_file(b, "verifier/sub/x.txt", b"x");
        });
        let d = tempfile::tempdir().unwrap();
        let s = extract_stripped(&data[..], d.path()).unwrap();
        assert_eq!(s.files, 2);
        assert_eq!(
            fs::read_to_string(d.path().join("reward.txt")).unwrap(),
            "1"
        );
        assert_eq!(fs::read_to_string(d.path().join("sub/x.txt")).unwrap(), "x");
    }

    #[test]
    fn refuses_escapes_and_links() {
        let outside = tempfile::tempdir().unwrap();
        let data = archive(|b| {
            add_file(b, "verifier/../../escape.txt", b"bad");
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "verifier/link", outside.path())
                .unwrap();
            add_file(b, "verifier/link/owned.txt", b"bad");
            add_file(b, "verifier/ok.txt", b"ok");
        });
        let d = tempfile::tempdir().unwrap();
        let s = extract_stripped(&data[..], &d.path().join("out")).unwrap();
        // The link is not materialised, so "link/owned.txt" lands in a real directory inside
        // the destination instead of following the link out.
        assert_eq!(s.files, 2);
        assert_eq!(s.skipped, 2, "{s:?}");
        assert!(!outside.path().join("owned.txt").exists());
        assert!(!d.path().join("escape.txt").exists());
        assert!(fs::symlink_metadata(d.path().join("out/link"))
            .unwrap()
            .is_dir());
    }

    #[test]
    fn modes_are_masked_and_special_files_named() {
        use std::os::unix::fs::PermissionsExt;
        let data = archive(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o1777);
            h.set_size(0);
            b.append_data(&mut h, "logs/open/", io::empty()).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o6777);
            h.set_size(2);
            b.append_data(&mut h, "logs/open/suid", &b"#!"[..]).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Fifo);
            h.set_size(0);
            b.append_data(&mut h, "logs/reward.txt", io::empty())
                .unwrap();
        });
        let d = tempfile::tempdir().unwrap();
        let s = extract_stripped(&data[..], &d.path().join("out")).unwrap();
        let mode = |p: &str| {
            fs::symlink_metadata(d.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("out"), 0o755);
        assert_eq!(mode("out/open"), 0o755);
        assert_eq!(mode("out/open/suid"), 0o755);
        assert!(!d.path().join("out/reward.txt").exists());
        assert_eq!(
            s.skipped_entries,
            [("reward.txt".to_string(), "a FIFO (named pipe)".to_string())]
        );
    }

    #[test]
    fn truncated_archive_keeps_what_arrived() {
        let data = archive(|b| {
            add_file(b, "a/one.txt", b"1");
            add_file(b, "a/two.txt", &vec![b'x'; 4096]);
        });
        let cut = &data[..512 + 512 + 512 + 100];
        let d = tempfile::tempdir().unwrap();
        let s = extract_stripped(cut, d.path()).unwrap();
        assert_eq!(fs::read_to_string(d.path().join("one.txt")).unwrap(), "1");
        assert!(s.incomplete);
    }

    #[test]
    fn builder_writes_absolute_paths_relative() {
        let mut b = TarBuilder::new();
        b.dir("/logs/agent", 0o777).unwrap();
        b.file("/rollout/instruction.md", 0o644, b"hi").unwrap();
        b.symlink("/oracle", "/solution").unwrap();
        let data = b.finish().unwrap();
        let mut ar = tar::Archive::new(&data[..]);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["logs/agent/", "rollout/instruction.md", "oracle"]);
    }
}
