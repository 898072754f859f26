//! Content digests of directories (BLAKE3), used for task checksums and image tags.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// BLAKE3 of some bytes, as hex.
pub fn bytes_digest(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Bytes of the regular files under `dir` (symlinks not followed); 0 when unreadable.
pub fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// Every regular file and symlink under `root`, as sorted relative paths.
pub fn list_files(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(root.join(&rel))? {
            let entry = entry?;
            let rel_child = rel.join(entry.file_name());
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(rel_child);
            } else {
                out.push(rel_child);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A BLAKE3 digest over the directory's files: each file contributes its relative path, whether
/// it is executable (or a symlink, with its target), and its content. Identical trees give
/// identical digests whatever their location or timestamps.
pub fn dir_digest(root: &Path) -> io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    for rel in list_files(root)? {
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path)?;
        let rel_str = rel.to_string_lossy();
        hasher.update(&(rel_str.len() as u64).to_le_bytes());
        hasher.update(rel_str.as_bytes());
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path)?;
            hasher.update(b"L");
            hasher.update(target.to_string_lossy().as_bytes());
            hasher.update(b"\0");
            continue;
        }
        hasher.update(if is_executable(&meta) { b"X" } else { b"F" });
        hasher.update(&meta.len().to_le_bytes());
        let mut file = fs::File::open(&path)?;
        io::copy(&mut file, &mut hasher)?;
    }
    Ok(hasher.finalize())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_depends_on_content_and_names_not_location() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            fs::create_dir_all(d.join("sub")).unwrap();
            fs::write(d.join("Dockerfile"), "FROM x\n").unwrap();
            fs::write(d.join("sub/f"), "1").unwrap();
        }
        assert_eq!(dir_digest(a.path()).unwrap(), dir_digest(b.path()).unwrap());
        fs::write(b.path().join("sub/f"), "2").unwrap();
        assert_ne!(dir_digest(a.path()).unwrap(), dir_digest(b.path()).unwrap());
        fs::write(b.path().join("sub/f"), "1").unwrap();
        fs::rename(b.path().join("sub/f"), b.path().join("sub/g")).unwrap();
        assert_ne!(dir_digest(a.path()).unwrap(), dir_digest(b.path()).unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn executable_bit_counts() {
        use std::os::unix::fs::PermissionsExt;
        let a = tempfile::tempdir().unwrap();
        fs::write(a.path().join("run.sh"), "x").unwrap();
        let before = dir_digest(a.path()).unwrap();
        fs::set_permissions(a.path().join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_ne!(before, dir_digest(a.path()).unwrap());
    }
}
