//! Content digests: BLAKE3 of files (memory-mapped and multi-threaded for large files, as b3sum
//! does), optional sha256, and a Merkle digest of directory trees.

use sha2::Digest;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

/// The digests of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// BLAKE3, hex.
    pub hash: String,
    pub size: u64,
    /// sha256, hex, when asked for.
    pub sha256: Option<String>,
}

/// Files at least this big are hashed memory-mapped on several threads; smaller ones are read.
const PARALLEL_THRESHOLD: u64 = 1 << 20;

/// BLAKE3 (and optionally sha256) of a file's bytes.
pub fn file_digest(path: &Path, sha256: bool) -> io::Result<FileDigest> {
    let meta = fs::metadata(path)?;
    let mut hasher = blake3::Hasher::new();
    if meta.len() >= PARALLEL_THRESHOLD {
        hasher.update_mmap_rayon(path)?;
    } else {
        let mut f = fs::File::open(path)?;
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    let sha = if sha256 {
        let mut s = sha2::Sha256::new();
        let mut f = fs::File::open(path)?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            s.update(&buf[..n]);
        }
        Some(hex(&s.finalize()))
    } else {
        None
    };
    Ok(FileDigest {
        hash: hasher.finalize().to_hex().to_string(),
        size: hasher.count(),
        sha256: sha,
    })
}

/// A BLAKE3 hasher fed through a fixed buffer: many small pieces cost one `update` per 64 KiB
/// (an update per piece costs more than hashing it), and nothing grows with the input. The
/// digest is that of the pieces concatenated.
pub(crate) struct ChunkedHasher {
    hasher: blake3::Hasher,
    buf: Vec<u8>,
}

impl ChunkedHasher {
    const CAP: usize = 64 * 1024;

    pub(crate) fn new() -> Self {
        ChunkedHasher {
            hasher: blake3::Hasher::new(),
            buf: Vec::with_capacity(Self::CAP),
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.buf.len() + bytes.len() > Self::CAP {
            self.hasher.update(&self.buf);
            self.buf.clear();
            if bytes.len() > Self::CAP {
                self.hasher.update(bytes);
                return;
            }
        }
        self.buf.extend_from_slice(bytes);
    }

    pub(crate) fn finalize_hex(mut self) -> String {
        self.hasher.update(&self.buf);
        self.hasher.finalize().to_hex().to_string()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A Merkle digest of a directory: a file's node is BLAKE3 of its bytes; a directory's node is
/// BLAKE3 over its sorted entries (name, type — file, executable, symlink, directory — and the
/// child's node, or a symlink's target). Location and timestamps do not count. Returns the root
/// digest and the total bytes of its files.
pub fn tree_digest(dir: &Path) -> io::Result<(String, u64)> {
    let mut total = 0;
    let h = tree_node(dir, &mut total)?;
    Ok((h.to_hex().to_string(), total))
}

fn tree_node(dir: &Path, total: &mut u64) -> io::Result<blake3::Hash> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    let mut h = blake3::Hasher::new();
    h.update(b"rollout-tree-v1\0");
    for e in entries {
        let name = e.file_name();
        let name = name.as_encoded_bytes();
        let meta = fs::symlink_metadata(e.path())?;
        let ft = meta.file_type();
        let (tag, child): (&[u8], blake3::Hash) = if ft.is_symlink() {
            let target = fs::read_link(e.path())?;
            (
                &b"L"[..],
                blake3::hash(target.as_os_str().as_encoded_bytes()),
            )
        } else if ft.is_dir() {
            (&b"D"[..], tree_node(&e.path(), total)?)
        } else {
            *total += meta.len();
            let d = file_digest(&e.path(), false)?;
            let exec = is_executable(&meta);
            (
                if exec { &b"X"[..] } else { &b"F"[..] },
                blake3::Hash::from_hex(&d.hash).expect("hex digest"),
            )
        };
        h.update(tag);
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name);
        h.update(child.as_bytes());
    }
    Ok(h.finalize())
}

fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

/// Modification time in nanoseconds, for the hash cache key.
pub(crate) fn mtime_ns(meta: &fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}
