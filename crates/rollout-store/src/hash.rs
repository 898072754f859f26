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
    let mut f = fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    if f.metadata()?.len() >= PARALLEL_THRESHOLD {
        hash_mapped(&mut hasher, &f)?;
    } else {
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

/// Hash a large file memory-mapped, on every core (as b3sum does), then let the map go off the
/// caller's path: unmapping a file of a few hundred MB unmaps every page, which takes
/// milliseconds that the digest need not wait for.
fn hash_mapped(hasher: &mut blake3::Hasher, file: &fs::File) -> io::Result<()> {
    // SAFETY: a read-only map. A file changed while it is hashed gives a digest of mixed
    // content; callers compare its size and mtime before and after and do not cache that
    // digest (`digest_fresh`).
    let map = unsafe { memmap2::Mmap::map(file)? };
    hasher.update_rayon(&map);
    if map.len() <= RELEASE_PIECE {
        // Unmapped here: that costs less than starting a thread.
        return Ok(());
    }
    // On failure the closure is dropped here, and the map unmapped with it.
    let _ = std::thread::Builder::new()
        .name("rollout-unmap".into())
        .spawn(move || release(map));
    Ok(())
}

/// How much of a map [`release`] drops at a time.
const RELEASE_PIECE: usize = 8 << 20;

/// Unmap a large map a piece at a time. One `munmap` of the whole map would hold the process's
/// memory-map lock until every page is unmapped (4 ms for 130 MB), and every thread that maps
/// or unmaps anything meanwhile (one that ends unmaps its signal stack) would wait for it;
/// dropping the pages a few MB at a time lets them in between.
fn release(map: memmap2::Mmap) {
    let mut at = 0;
    while at < map.len() {
        let len = RELEASE_PIECE.min(map.len() - at);
        // SAFETY: nothing reads the map any more (it was moved here). Its pages belong to a
        // read-only shared file map: dropping them only means that they would be read from the
        // page cache again.
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, at, len) };
        at += len;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_files_hash_as_their_bytes_across_several_release_pieces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big.bin");
        // Three pieces of `release`, the last one short.
        let body: Vec<u8> = (0..(17u32 << 20) + 5).map(|i| (i % 253) as u8).collect();
        fs::write(&p, &body).unwrap();
        let got = file_digest(&p, true).unwrap();
        assert_eq!(got.hash, blake3::hash(&body).to_hex().to_string());
        assert_eq!(got.size, body.len() as u64);
        assert_eq!(got.sha256, Some(hex(&sha2::Sha256::digest(&body))));
    }

    #[test]
    fn a_released_map_is_unmapped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("mapped.bin");
        fs::write(&p, vec![7u8; (9 << 20) + 1]).unwrap();
        let mapped = || {
            std::fs::read_to_string("/proc/self/maps")
                .unwrap()
                .contains(p.to_str().unwrap())
        };
        // SAFETY: a read-only map of a file nothing else writes.
        let map = unsafe { memmap2::Mmap::map(&fs::File::open(&p).unwrap()).unwrap() };
        assert!(mapped());
        release(map);
        assert!(!mapped(), "the map outlived its release");
    }
}
