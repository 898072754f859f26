//! Hardened extraction of uploaded archives: zip, tar.gz and plain tar.
//!
//! The format is detected from the content (magic bytes), never from the file name. Archives come
//! from users, so every entry is checked before anything is written:
//!
//! - paths must be relative, free of `..`, and no longer than [`Limits::max_path_len`];
//! - symlinks must point inside the destination (resolved from the link's directory, never
//!   absolute); their targets are written normalised so no later link can change where they lead;
//! - hard links must name a regular file extracted before, inside the destination;
//! - devices, fifos, sockets and sparse files are rejected;
//! - nothing is written through a symlink: no ancestor of a written path may be one;
//! - the byte, entry and compression-ratio caps are enforced while streaming, on the bytes
//!   actually decompressed (header sizes are never trusted).
//!
//! Any violation is an error, not a skipped entry, and on any error everything extracted so far
//! is removed, so a hostile archive leaves nothing behind. Paths are kept as they are: no common
//! top-level directory is stripped.
//!
//! Not here: what the extracted files mean (see [`crate::executor`]).

use std::cell::Cell;
use std::fs;
use std::io::{self, Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Below this many decompressed bytes the compression ratio is not checked: small archives of
/// very repetitive text are legitimate and harmless, whatever their ratio.
pub const RATIO_FLOOR_BYTES: u64 = 1 << 20;

/// Caps on what an archive may unpack to.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Size of the archive itself.
    pub max_archive_bytes: u64,
    /// Bytes written to extracted files, all together.
    pub max_total_bytes: u64,
    /// Entries created: files, directories (also implied ones) and links.
    pub max_files: u64,
    /// Decompressed bytes / archive bytes (checked past [`RATIO_FLOOR_BYTES`]).
    pub max_ratio: f64,
    /// Length in bytes of an entry's path or a link's target.
    pub max_path_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_archive_bytes: 500 << 20,
            max_total_bytes: 2 << 30,
            max_files: 10_000,
            max_ratio: 200.0,
            max_path_len: 4096,
        }
    }
}

/// What an extraction created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractReport {
    /// Regular files, symlinks and hard links.
    pub files: u64,
    /// Directories, including those only implied by a file's path.
    pub dirs: u64,
    /// Bytes written to regular files.
    pub bytes: u64,
}

/// Why an archive was refused. On every error the destination is left empty or absent.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("unknown archive format: expected zip, tar.gz or tar (detected from the content, not the name)")]
    UnknownFormat,
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    #[error("entry '{path}' escapes the destination: its path contains '..'")]
    PathEscape { path: String },
    #[error("entry '{path}' has an absolute path")]
    AbsolutePath { path: String },
    #[error("link '{path}' -> '{target}' points outside the destination")]
    LinkEscape { path: String, target: String },
    #[error("entry '{path}' would be written through the symlink '{link}'")]
    ThroughSymlink { path: String, link: String },
    #[error("entry '{path}' is a {kind}, which archives may not contain")]
    UnsupportedEntry { path: String, kind: String },
    #[error("entry path '{path}' is {len} bytes, over the limit max_path_len = {limit}")]
    PathTooLong {
        path: String,
        len: usize,
        limit: usize,
    },
    #[error("{what} is over the limit {name} = {limit} bytes")]
    TooLarge {
        what: &'static str,
        name: &'static str,
        limit: u64,
    },
    #[error("archive has more entries (files, directories and links) than the limit max_files = {limit}")]
    TooManyFiles { limit: u64 },
    #[error("compression ratio {ratio:.1} is over the limit max_ratio = {limit} (a zip bomb?)")]
    RatioExceeded { ratio: f64, limit: f64 },
    #[error("destination {} exists and is not an empty directory", path.display())]
    DestNotEmpty { path: PathBuf },
    #[error("i/o error while extracting: {0}")]
    Io(#[from] io::Error),
}

/// Extract `archive` (zip, tar.gz or tar, detected from its bytes) into `dest`, which must be
/// absent or an empty directory. On error, `dest` is left as it was found (absent or empty).
pub fn extract(
    archive: &[u8],
    dest: &Path,
    limits: &Limits,
) -> Result<ExtractReport, ArchiveError> {
    let archive_len = archive.len() as u64;
    if archive_len > limits.max_archive_bytes {
        return Err(too_large_archive(limits));
    }
    let format = detect(archive).ok_or(ArchiveError::UnknownFormat)?;
    let created = prepare_dest(dest)?;
    let mut x = Extractor::new(dest, limits, archive_len);
    let result = match format {
        Format::Zip => x.zip(archive),
        Format::TarGz => x.tar(flate2::read::MultiGzDecoder::new(archive)),
        Format::Tar => x.tar(archive),
    };
    match result {
        Ok(()) => Ok(x.report),
        Err(e) => {
            clean_up(dest, created);
            Err(e)
        }
    }
}

/// [`extract`] the archive file at `path`, refusing it before reading when it is too large.
pub fn extract_file(
    path: &Path,
    dest: &Path,
    limits: &Limits,
) -> Result<ExtractReport, ArchiveError> {
    let file = fs::File::open(path).map_err(io_at(path))?;
    let len = file.metadata().map_err(io_at(path))?.len();
    if len > limits.max_archive_bytes {
        return Err(too_large_archive(limits));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // The file may grow between the size check and the read; never read past the cap.
    file.take(limits.max_archive_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_at(path))?;
    extract(&bytes, dest, limits)
}

fn too_large_archive(limits: &Limits) -> ArchiveError {
    ArchiveError::TooLarge {
        what: "archive",
        name: "max_archive_bytes",
        limit: limits.max_archive_bytes,
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |e| ArchiveError::Io(io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Zip,
    TarGz,
    Tar,
}

fn detect(b: &[u8]) -> Option<Format> {
    if b.starts_with(b"PK\x03\x04") || b.starts_with(b"PK\x05\x06") || b.starts_with(b"PK\x07\x08")
    {
        Some(Format::Zip)
    } else if b.starts_with(&[0x1f, 0x8b]) {
        Some(Format::TarGz)
    } else if is_tar_header(b) {
        Some(Format::Tar)
    } else {
        None
    }
}

/// A ustar/GNU header by its magic, or a pre-POSIX (v7) one by its checksum.
fn is_tar_header(b: &[u8]) -> bool {
    let Some(h) = b.get(..512) else { return false };
    if &h[257..262] == b"ustar" {
        return true;
    }
    let field = String::from_utf8_lossy(&h[148..156]);
    let Ok(expected) = u32::from_str_radix(field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
    else {
        return false;
    };
    let sum: u32 = h
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(c)
            }
        })
        .sum();
    h[0] != 0 && sum == expected
}

/// Create `dest` if absent (returns true) or check that it is an empty directory (false).
fn prepare_dest(dest: &Path) -> Result<bool, ArchiveError> {
    match fs::metadata(dest) {
        Ok(m) if m.is_dir() => {
            if fs::read_dir(dest).map_err(io_at(dest))?.next().is_some() {
                return Err(ArchiveError::DestNotEmpty {
                    path: dest.to_path_buf(),
                });
            }
            Ok(false)
        }
        Ok(_) => Err(ArchiveError::DestNotEmpty {
            path: dest.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dest).map_err(io_at(dest))?;
            Ok(true)
        }
        Err(e) => Err(io_at(dest)(e)),
    }
}

/// Remove what a failed extraction left. `remove_dir_all` never follows symlinks.
fn clean_up(dest: &Path, created: bool) {
    let result = if created {
        fs::remove_dir_all(dest)
    } else {
        fs::read_dir(dest).and_then(|entries| {
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    fs::remove_dir_all(entry.path())?;
                } else {
                    fs::remove_file(entry.path())?;
                }
            }
            Ok(())
        })
    };
    if let Err(e) = result {
        tracing::warn!(
            "could not remove the partial extraction in {}: {e}",
            dest.display()
        );
    }
}

/// Which cap the decompressed stream hit.
#[derive(Debug, Clone, Copy)]
enum Trip {
    Bytes,
    Ratio(f64),
}

/// Shared between the metered reader (owned by the tar parser) and the extractor.
#[derive(Debug, Default)]
struct StreamState {
    tripped: Cell<Option<Trip>>,
}

/// Counts the decompressed bytes a tar parser reads, so that headers, long names and pax records
/// (which the parser buffers in memory) are capped as well as file contents.
struct Meter<R> {
    inner: R,
    read: u64,
    cap: u64,
    archive_len: u64,
    max_ratio: f64,
    state: Rc<StreamState>,
}

impl<R: Read> Read for Meter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.state.tripped.get().is_some() {
            return Err(io::Error::other("decompressed stream over its limit"));
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        let trip = if self.read > self.cap {
            Some(Trip::Bytes)
        } else {
            ratio_over(self.read, self.archive_len, self.max_ratio).map(Trip::Ratio)
        };
        if let Some(t) = trip {
            self.state.tripped.set(Some(t));
            return Err(io::Error::other("decompressed stream over its limit"));
        }
        Ok(n)
    }
}

fn ratio_over(produced: u64, archive_len: u64, max_ratio: f64) -> Option<f64> {
    if produced <= RATIO_FLOOR_BYTES {
        return None;
    }
    let ratio = produced as f64 / archive_len.max(1) as f64;
    (ratio > max_ratio).then_some(ratio)
}

/// What an entry is, once the format's own notion of it has been mapped.
enum Kind {
    File { executable: bool },
    Dir,
    Symlink,
    HardLink,
    Skip,
    Unsupported(String),
}

struct Extractor<'a> {
    dest: PathBuf,
    limits: &'a Limits,
    archive_len: u64,
    report: ExtractReport,
    stream: Rc<StreamState>,
    /// Zip names may use `\` (Windows tools) and drive letters; tar names are Unix paths.
    zip: bool,
}

impl<'a> Extractor<'a> {
    fn new(dest: &Path, limits: &'a Limits, archive_len: u64) -> Self {
        Extractor {
            dest: dest.to_path_buf(),
            limits,
            archive_len,
            report: ExtractReport::default(),
            stream: Rc::default(),
            zip: false,
        }
    }

    /// An error reading the archive: a cap the stream hit, or else corrupt data.
    fn read_error(&self, e: impl std::fmt::Display) -> ArchiveError {
        match self.stream.tripped.get() {
            Some(Trip::Bytes) => ArchiveError::TooLarge {
                what: "decompressed tar stream (contents and headers)",
                name: "max_total_bytes",
                limit: self.limits.max_total_bytes,
            },
            Some(Trip::Ratio(ratio)) => ArchiveError::RatioExceeded {
                ratio,
                limit: self.limits.max_ratio,
            },
            None => ArchiveError::Corrupt(e.to_string()),
        }
    }

    fn tar<R: Read>(&mut self, reader: R) -> Result<(), ArchiveError> {
        // Headers (512 bytes each, plus padding), long names and pax records on top of the data.
        let per_entry = 4 * 512 + 2 * self.limits.max_path_len as u64;
        let overhead = self
            .limits
            .max_files
            .saturating_add(2)
            .saturating_mul(per_entry)
            .saturating_add(1 << 20);
        let meter = Meter {
            inner: reader,
            read: 0,
            cap: self.limits.max_total_bytes.saturating_add(overhead),
            archive_len: self.archive_len,
            max_ratio: self.limits.max_ratio,
            state: self.stream.clone(),
        };
        let mut archive = tar::Archive::new(meter);
        let entries = archive.entries().map_err(|e| self.read_error(e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.read_error(e))?;
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let ty = entry.header().entry_type();
            let kind = match ty {
                tar::EntryType::Regular | tar::EntryType::Continuous if raw.ends_with(b"/") => {
                    Kind::Dir
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mode = entry.header().mode().unwrap_or(0o644);
                    Kind::File {
                        executable: mode & 0o111 != 0,
                    }
                }
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Symlink => Kind::Symlink,
                tar::EntryType::Link => Kind::HardLink,
                // Pax and GNU extension records are normally consumed by the parser.
                tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink => Kind::Skip,
                tar::EntryType::Char => Kind::Unsupported("character device".into()),
                tar::EntryType::Block => Kind::Unsupported("block device".into()),
                tar::EntryType::Fifo => Kind::Unsupported("fifo".into()),
                tar::EntryType::GNUSparse => Kind::Unsupported("sparse file".into()),
                other => {
                    Kind::Unsupported(format!("tar entry of type {:?}", other.as_byte() as char))
                }
            };
            match kind {
                Kind::Skip => {}
                Kind::Unsupported(kind) => {
                    return Err(ArchiveError::UnsupportedEntry { path: shown, kind })
                }
                Kind::Dir => {
                    let comps = self.components(&raw)?;
                    self.make_dir(&comps, &shown)?;
                }
                Kind::File { executable } => {
                    let comps = self.components(&raw)?;
                    self.write_file(&comps, &shown, &mut entry, executable)?;
                }
                Kind::Symlink | Kind::HardLink => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    let comps = self.components(&raw)?;
                    if matches!(kind, Kind::Symlink) {
                        self.make_symlink(&comps, &shown, &target)?;
                    } else {
                        self.make_hard_link(&comps, &shown, &target)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn zip(&mut self, archive: &[u8]) -> Result<(), ArchiveError> {
        self.zip = true;
        let mut zip = zip::ZipArchive::new(Cursor::new(archive))
            .map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
        if zip.len() as u64 > self.limits.max_files {
            return Err(ArchiveError::TooManyFiles {
                limit: self.limits.max_files,
            });
        }
        for i in 0..zip.len() {
            let shown = zip.name_for_index(i).unwrap_or_default().to_string();
            let mut file = zip.by_index(i).map_err(|e| match e {
                zip::result::ZipError::UnsupportedArchive(what) => ArchiveError::UnsupportedEntry {
                    path: shown.clone(),
                    kind: what.to_string(),
                },
                zip::result::ZipError::InvalidPassword => ArchiveError::UnsupportedEntry {
                    path: shown.clone(),
                    kind: "encrypted entry".into(),
                },
                e => ArchiveError::Corrupt(e.to_string()),
            })?;
            let raw = file.name().as_bytes().to_vec();
            let shown = file.name().to_string();
            let mode = file.unix_mode().unwrap_or(0);
            let kind = match mode & 0o170000 {
                0o120000 => Kind::Symlink,
                0o040000 => Kind::Dir,
                0 | 0o100000 if file.is_dir() => Kind::Dir,
                0 | 0o100000 => Kind::File {
                    executable: mode & 0o111 != 0,
                },
                0o020000 => Kind::Unsupported("character device".into()),
                0o060000 => Kind::Unsupported("block device".into()),
                0o010000 => Kind::Unsupported("fifo".into()),
                0o140000 => Kind::Unsupported("socket".into()),
                t => Kind::Unsupported(format!("zip entry of file type {t:#o}")),
            };
            let comps = self.components(&raw)?;
            match kind {
                Kind::Dir => self.make_dir(&comps, &shown)?,
                Kind::File { executable } => {
                    self.write_file(&comps, &shown, &mut file, executable)?
                }
                Kind::Symlink => {
                    // The target is the entry's content; read no more than a path can be.
                    let mut target = Vec::new();
                    (&mut file)
                        .take(self.limits.max_path_len as u64 + 1)
                        .read_to_end(&mut target)
                        .map_err(|e| self.read_error(e))?;
                    self.make_symlink(&comps, &shown, &target)?;
                }
                Kind::Unsupported(kind) => {
                    return Err(ArchiveError::UnsupportedEntry { path: shown, kind })
                }
                Kind::HardLink | Kind::Skip => {
                    unreachable!("zip entries are never hard links or extension records")
                }
            }
        }
        Ok(())
    }

    /// Check a path (an entry's name or a hard link's target) and split it into its normal
    /// components; `.` and empty components are dropped.
    fn components<'b>(&self, raw: &'b [u8]) -> Result<Vec<&'b [u8]>, ArchiveError> {
        let shown = || String::from_utf8_lossy(raw).into_owned();
        if raw.contains(&0) {
            return Err(ArchiveError::Corrupt(format!(
                "entry name {:?} contains a NUL byte",
                shown()
            )));
        }
        if raw.len() > self.limits.max_path_len {
            return Err(ArchiveError::PathTooLong {
                path: shorten(&shown()),
                len: raw.len(),
                limit: self.limits.max_path_len,
            });
        }
        if self.is_absolute(raw) {
            return Err(ArchiveError::AbsolutePath { path: shown() });
        }
        let mut out = Vec::new();
        for c in self.split(raw) {
            match c {
                b"" | b"." => {}
                b".." => return Err(ArchiveError::PathEscape { path: shown() }),
                c => out.push(c),
            }
        }
        Ok(out)
    }

    fn is_absolute(&self, raw: &[u8]) -> bool {
        raw.first() == Some(&b'/')
            || (self.zip
                && (raw.first() == Some(&b'\\')
                    || (raw.len() >= 2 && raw[0].is_ascii_alphabetic() && raw[1] == b':')))
    }

    fn split<'b>(&self, raw: &'b [u8]) -> impl Iterator<Item = &'b [u8]> {
        let zip = self.zip;
        raw.split(move |&c| c == b'/' || (zip && c == b'\\'))
    }

    /// Count one more created entry against `max_files`.
    fn count_entry(&self) -> Result<(), ArchiveError> {
        if self.report.files + self.report.dirs >= self.limits.max_files {
            return Err(ArchiveError::TooManyFiles {
                limit: self.limits.max_files,
            });
        }
        Ok(())
    }

    /// Create the real directories above `comps` (never passing through a symlink) and return
    /// the path of `comps` itself.
    fn parent_dirs(&mut self, comps: &[&[u8]], shown: &str) -> Result<PathBuf, ArchiveError> {
        let mut dir = self.dest.clone();
        let Some((last, parents)) = comps.split_last() else {
            return Ok(dir);
        };
        for (i, c) in parents.iter().enumerate() {
            dir.push(os_path(c));
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(ArchiveError::ThroughSymlink {
                        path: shown.into(),
                        link: joined(&comps[..=i]),
                    })
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(conflict(shown, &joined(&comps[..=i]), "a file")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.count_entry()?;
                    fs::create_dir(&dir).map_err(io_at(&dir))?;
                    self.report.dirs += 1;
                }
                Err(e) => return Err(io_at(&dir)(e)),
            }
        }
        dir.push(os_path(last));
        Ok(dir)
    }

    /// Prepare to create a file or link at `comps`: an earlier file or symlink of that name is
    /// replaced (unlinked, never written through); a directory of that name is a conflict.
    fn leaf(&mut self, comps: &[&[u8]], shown: &str) -> Result<PathBuf, ArchiveError> {
        if comps.is_empty() {
            return Err(ArchiveError::Corrupt(format!(
                "entry '{shown}' has an empty path"
            )));
        }
        let path = self.parent_dirs(comps, shown)?;
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => return Err(conflict(shown, shown, "a directory")),
            Ok(_) => fs::remove_file(&path).map_err(io_at(&path))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&path)(e)),
        }
        self.count_entry()?;
        Ok(path)
    }

    fn make_dir(&mut self, comps: &[&[u8]], shown: &str) -> Result<(), ArchiveError> {
        if comps.is_empty() {
            return Ok(()); // `./`: the destination itself
        }
        let path = self.parent_dirs(comps, shown)?;
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => Err(ArchiveError::ThroughSymlink {
                path: shown.into(),
                link: joined(comps),
            }),
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(conflict(shown, shown, "a file")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.count_entry()?;
                fs::create_dir(&path).map_err(io_at(&path))?;
                self.report.dirs += 1;
                Ok(())
            }
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    fn write_file(
        &mut self,
        comps: &[&[u8]],
        shown: &str,
        src: &mut dyn Read,
        executable: bool,
    ) -> Result<(), ArchiveError> {
        let path = self.leaf(comps, shown)?;
        let mut out = create_new(&path, executable).map_err(io_at(&path))?;
        self.report.files += 1;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(format_args!("reading '{shown}': {e}"))),
            };
            // Count before writing, so no byte past a cap ever reaches the disk.
            self.report.bytes += n as u64;
            if self.report.bytes > self.limits.max_total_bytes {
                return Err(ArchiveError::TooLarge {
                    what: "extracted data",
                    name: "max_total_bytes",
                    limit: self.limits.max_total_bytes,
                });
            }
            if let Some(ratio) =
                ratio_over(self.report.bytes, self.archive_len, self.limits.max_ratio)
            {
                return Err(ArchiveError::RatioExceeded {
                    ratio,
                    limit: self.limits.max_ratio,
                });
            }
            out.write_all(&buf[..n]).map_err(io_at(&path))?;
        }
        Ok(())
    }

    fn make_symlink(
        &mut self,
        comps: &[&[u8]],
        shown: &str,
        target: &[u8],
    ) -> Result<(), ArchiveError> {
        let target_shown = String::from_utf8_lossy(target).into_owned();
        let escape = || ArchiveError::LinkEscape {
            path: shown.into(),
            target: target_shown.clone(),
        };
        if target.is_empty() || target.contains(&0) {
            return Err(ArchiveError::Corrupt(format!(
                "symlink '{shown}' has an empty or NUL-containing target"
            )));
        }
        if target.len() > self.limits.max_path_len {
            return Err(ArchiveError::PathTooLong {
                path: shorten(&target_shown),
                len: target.len(),
                limit: self.limits.max_path_len,
            });
        }
        if self.is_absolute(target) {
            return Err(escape());
        }
        if comps.is_empty() {
            return Err(ArchiveError::Corrupt(format!(
                "entry '{shown}' has an empty path"
            )));
        }
        // Resolve from the link's directory. The target is rewritten as `../`* then plain names:
        // the `..`s climb real directories (nothing is written through a symlink), and plain names
        // can only descend, so every link stays inside whatever links it passes through.
        let depth = comps.len() - 1;
        let mut ups = 0usize;
        let mut downs: Vec<&[u8]> = Vec::new();
        for c in self.split(target) {
            match c {
                b"" | b"." => {}
                b".." => {
                    if downs.pop().is_none() {
                        ups += 1;
                    }
                }
                c => downs.push(c),
            }
        }
        if ups > depth {
            return Err(escape());
        }
        let mut normalised: Vec<&[u8]> = vec![b".."; ups];
        normalised.extend(downs);
        let normalised = if normalised.is_empty() {
            PathBuf::from(".")
        } else {
            os_path(&normalised.join(&b'/'))
        };
        let path = self.leaf(comps, shown)?;
        make_symlink(&normalised, &path).map_err(|e| match e.kind() {
            io::ErrorKind::Unsupported => ArchiveError::UnsupportedEntry {
                path: shown.into(),
                kind: "symlink (not supported on this platform)".into(),
            },
            _ => io_at(&path)(e),
        })?;
        self.report.files += 1;
        Ok(())
    }

    fn make_hard_link(
        &mut self,
        comps: &[&[u8]],
        shown: &str,
        target: &[u8],
    ) -> Result<(), ArchiveError> {
        let target_shown = String::from_utf8_lossy(target).into_owned();
        // A hard link's target is an archive path, relative to the archive's root.
        let target_comps = self.components(target).map_err(|e| match e {
            ArchiveError::PathEscape { .. } | ArchiveError::AbsolutePath { .. } => {
                ArchiveError::LinkEscape {
                    path: shown.into(),
                    target: target_shown.clone(),
                }
            }
            e => e,
        })?;
        if target_comps.is_empty() {
            return Err(ArchiveError::Corrupt(format!(
                "hard link '{shown}' has an empty target"
            )));
        }
        let mut source = self.dest.clone();
        for (i, c) in target_comps.iter().enumerate() {
            source.push(os_path(c));
            let last = i + 1 == target_comps.len();
            match fs::symlink_metadata(&source) {
                Ok(m) if m.file_type().is_symlink() && !last => {
                    return Err(ArchiveError::ThroughSymlink {
                        path: shown.into(),
                        link: joined(&target_comps[..=i]),
                    })
                }
                Ok(m) if last && !m.is_file() => {
                    return Err(ArchiveError::UnsupportedEntry {
                        path: shown.into(),
                        kind: "hard link to something other than a regular file".into(),
                    })
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(ArchiveError::Corrupt(format!(
                    "hard link '{shown}' names '{target_shown}', which was not extracted before it"
                )))
                }
            }
        }
        let path = self.leaf(comps, shown)?;
        fs::hard_link(&source, &path).map_err(io_at(&path))?;
        self.report.files += 1;
        Ok(())
    }
}

fn conflict(shown: &str, at: &str, existing: &str) -> ArchiveError {
    ArchiveError::Corrupt(format!(
        "entry '{shown}' conflicts with {existing} extracted before at '{at}'"
    ))
}

fn joined(comps: &[&[u8]]) -> String {
    String::from_utf8_lossy(&comps.join(&b'/')).into_owned()
}

/// Long paths in messages: the first 100 characters are enough to find the entry.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(unix)]
fn os_path(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

#[cfg(not(unix))]
fn os_path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
}

/// Create a file that did not exist (`O_EXCL`: never opens through a symlink).
fn create_new(path: &Path, executable: bool) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if executable { 0o755 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = executable;
    options.open(path)
}

#[cfg(unix)]
fn make_symlink(target: &Path, path: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, path)
}

#[cfg(not(unix))]
fn make_symlink(_target: &Path, _path: &Path) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, type, link target, data)
    type RawEntry<'a> = (&'a [u8], tar::EntryType, &'a [u8], &'a [u8]);

    /// A tar built header by header, so hostile names and links can be written as they are.
    fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, ty, link, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.as_mut_bytes()[..name.len()].copy_from_slice(name);
            h.set_entry_type(*ty);
            h.set_mode(if name.ends_with(b".sh") { 0o755 } else { 0o644 });
            h.set_size(data.len() as u64);
            if !link.is_empty() {
                h.set_link_name_literal(link).unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zip_with(names: &[&str]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for n in names {
            w.start_file(*n, zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(b"x").unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    const FILE: tar::EntryType = tar::EntryType::Regular;
    const DIR: tar::EntryType = tar::EntryType::Directory;
    const SYMLINK: tar::EntryType = tar::EntryType::Symlink;
    const LINK: tar::EntryType = tar::EntryType::Link;

    fn run(
        bytes: &[u8],
    ) -> (
        tempfile::TempDir,
        PathBuf,
        Result<ExtractReport, ArchiveError>,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        let r = extract(bytes, &dest, &Limits::default());
        (tmp, dest, r)
    }

    #[test]
    fn detects_the_format_from_magic_bytes() {
        let tar = raw_tar(&[(b"a", FILE, b"", b"hi")]);
        assert_eq!(detect(&tar), Some(Format::Tar));
        assert_eq!(detect(&gz(&tar)), Some(Format::TarGz));
        assert_eq!(detect(&zip_with(&["a"])), Some(Format::Zip));
        assert_eq!(detect(b"PK\x05\x06"), Some(Format::Zip));
        assert_eq!(detect(b"hello, world"), None);
        assert_eq!(detect(&[0u8; 1024]), None);
    }

    #[test]
    fn a_v7_tar_without_magic_is_recognised_by_its_checksum() {
        let mut tar = raw_tar(&[(b"old.txt", FILE, b"", b"v7")]);
        tar[257..265].fill(0); // no "ustar" magic or version
        let mut h = [0u8; 512];
        h.copy_from_slice(&tar[..512]);
        let mut header = tar::Header::from_byte_slice(&h).clone();
        header.set_cksum();
        tar[..512].copy_from_slice(header.as_bytes());
        assert_eq!(detect(&tar), Some(Format::Tar));
        tar[0] ^= 1; // checksum now wrong
        assert_eq!(detect(&tar), None);
    }

    #[test]
    fn symlink_targets_are_written_normalised() {
        let tar = raw_tar(&[
            (b"d/", DIR, b"", b""),
            (b"d/x/", DIR, b"", b""),
            (b"d/l", SYMLINK, b"../d/./x/../y//", b""),
        ]);
        let (_tmp, dest, r) = run(&tar);
        r.unwrap();
        assert_eq!(
            fs::read_link(dest.join("d/l")).unwrap(),
            Path::new("../d/y")
        );
    }

    #[test]
    fn a_link_through_a_climbing_link_cannot_leave_the_destination() {
        // `up` resolves to the destination's root; `z -> d1/d2/up/..` would be its parent if
        // written as is. Written normalised it is `d1/d2`.
        let tar = raw_tar(&[
            (b"d1/d2/up", SYMLINK, b"../..", b""),
            (b"z", SYMLINK, b"d1/d2/up/..", b""),
        ]);
        let (_tmp, dest, r) = run(&tar);
        r.unwrap();
        assert_eq!(fs::read_link(dest.join("z")).unwrap(), Path::new("d1/d2"));
        let real = fs::canonicalize(dest.join("z")).unwrap();
        assert!(
            real.starts_with(fs::canonicalize(&dest).unwrap()),
            "{}",
            real.display()
        );
    }

    #[test]
    fn nothing_is_written_through_a_symlink_even_one_inside() {
        let tar = raw_tar(&[
            (b"sub/", DIR, b"", b""),
            (b"l", SYMLINK, b"sub", b""),
            (b"l/f", FILE, b"", b"x"),
        ]);
        let (_tmp, dest, r) = run(&tar);
        match r {
            Err(ArchiveError::ThroughSymlink { path, link }) => {
                assert_eq!((path.as_str(), link.as_str()), ("l/f", "l"))
            }
            other => panic!("{other:?}"),
        }
        assert!(!dest.exists());
    }

    #[test]
    fn a_directory_entry_through_a_symlink_is_refused() {
        let tar = raw_tar(&[
            (b"sub/", DIR, b"", b""),
            (b"l", SYMLINK, b"sub", b""),
            (b"l/", DIR, b"", b""),
        ]);
        assert!(matches!(
            run(&tar).2,
            Err(ArchiveError::ThroughSymlink { .. })
        ));
    }

    #[test]
    fn a_later_file_replaces_a_symlink_without_following_it() {
        let tar = raw_tar(&[
            (b"f", FILE, b"", b"orig"),
            (b"l", SYMLINK, b"f", b""),
            (b"l", FILE, b"", b"new"),
        ]);
        let (_tmp, dest, r) = run(&tar);
        r.unwrap();
        assert_eq!(fs::read_to_string(dest.join("f")).unwrap(), "orig");
        assert!(fs::symlink_metadata(dest.join("l")).unwrap().is_file());
        assert_eq!(fs::read_to_string(dest.join("l")).unwrap(), "new");
    }

    #[test]
    fn hard_links_must_name_a_file_extracted_before_inside() {
        let ok = raw_tar(&[(b"a/f", FILE, b"", b"data"), (b"h", LINK, b"a/f", b"")]);
        let (_tmp, dest, r) = run(&ok);
        assert_eq!(
            r.unwrap(),
            ExtractReport {
                files: 2,
                dirs: 1,
                bytes: 4
            }
        );
        assert_eq!(fs::read_to_string(dest.join("h")).unwrap(), "data");

        for target in [&b"../x"[..], b"/etc/passwd", b"a/../../x"] {
            let bad = raw_tar(&[(b"a/f", FILE, b"", b"data"), (b"h", LINK, target, b"")]);
            let (_tmp, dest, r) = run(&bad);
            assert!(
                matches!(r, Err(ArchiveError::LinkEscape { .. })),
                "{target:?}: {r:?}"
            );
            assert!(!dest.exists());
        }
        let missing = raw_tar(&[(b"h", LINK, b"nowhere", b"")]);
        assert!(
            matches!(run(&missing).2, Err(ArchiveError::Corrupt(m)) if m.contains("not extracted before"))
        );
        let to_link = raw_tar(&[
            (b"f", FILE, b"", b"x"),
            (b"s", SYMLINK, b"f", b""),
            (b"h", LINK, b"s", b""),
        ]);
        assert!(matches!(
            run(&to_link).2,
            Err(ArchiveError::UnsupportedEntry { .. })
        ));
    }

    #[test]
    fn devices_and_fifos_are_refused() {
        for (ty, kind) in [
            (tar::EntryType::Char, "character device"),
            (tar::EntryType::Block, "block device"),
            (tar::EntryType::Fifo, "fifo"),
        ] {
            let tar = raw_tar(&[(b"ok", FILE, b"", b"x"), (b"dev", ty, b"", b"")]);
            let (_tmp, dest, r) = run(&tar);
            match r {
                Err(ArchiveError::UnsupportedEntry { path, kind: k }) => {
                    assert_eq!((path.as_str(), k.as_str()), ("dev", kind))
                }
                other => panic!("{other:?}"),
            }
            assert!(!dest.exists());
        }
    }

    #[test]
    fn an_existing_empty_destination_is_emptied_again_on_error() {
        let tmp = tempfile::tempdir().unwrap();
        let tar = raw_tar(&[(b"a/b/c", FILE, b"", b"x"), (b"../x", FILE, b"", b"x")]);
        let err = extract(&tar, tmp.path(), &Limits::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::PathEscape { .. }));
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_non_empty_destination_is_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("keep"), "mine").unwrap();
        let tar = raw_tar(&[(b"a", FILE, b"", b"x")]);
        assert!(matches!(
            extract(&tar, tmp.path(), &Limits::default()),
            Err(ArchiveError::DestNotEmpty { .. })
        ));
        assert_eq!(fs::read_to_string(tmp.path().join("keep")).unwrap(), "mine");
    }

    #[test]
    fn unknown_format_leaves_no_destination() {
        let (_tmp, dest, r) = run(b"not an archive at all");
        assert!(matches!(r, Err(ArchiveError::UnknownFormat)));
        assert!(!dest.exists());
    }

    #[test]
    fn too_long_paths_and_link_targets_are_refused() {
        let limits = Limits {
            max_path_len: 10,
            ..Limits::default()
        };
        let tmp = tempfile::tempdir().unwrap();
        let long = raw_tar(&[(b"abcdefghijk", FILE, b"", b"x")]);
        let err = extract(&long, &tmp.path().join("a"), &limits).unwrap_err();
        assert!(
            matches!(
                err,
                ArchiveError::PathTooLong {
                    len: 11,
                    limit: 10,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "entry path 'abcdefghijk' is 11 bytes, over the limit max_path_len = 10"
        );
        let link = raw_tar(&[(b"l", SYMLINK, b"aaaaaaaaaaaaaaaa", b"")]);
        assert!(matches!(
            extract(&link, &tmp.path().join("b"), &limits),
            Err(ArchiveError::PathTooLong { len: 16, .. })
        ));
    }

    #[test]
    fn zip_names_with_backslashes_or_drive_letters_are_checked() {
        let (_t, _d, r) = run(&zip_with(&["..\\evil"]));
        assert!(matches!(r, Err(ArchiveError::PathEscape { .. })), "{r:?}");
        let (_t, _d, r) = run(&zip_with(&["C:\\Windows\\evil"]));
        assert!(matches!(r, Err(ArchiveError::AbsolutePath { .. })), "{r:?}");
        let (_t, dest, r) = run(&zip_with(&["dir\\file.txt"]));
        r.unwrap();
        assert!(dest.join("dir/file.txt").is_file());
    }

    #[test]
    fn an_oversized_archive_is_refused_before_it_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let tar = raw_tar(&[(b"a", FILE, b"", &[7u8; 4096])]);
        let path = tmp.path().join("big.tar");
        fs::write(&path, &tar).unwrap();
        let limits = Limits {
            max_archive_bytes: 1000,
            ..Limits::default()
        };
        for r in [
            extract(&tar, &tmp.path().join("x"), &limits),
            extract_file(&path, &tmp.path().join("y"), &limits),
        ] {
            let err = r.unwrap_err();
            assert_eq!(
                err.to_string(),
                "archive is over the limit max_archive_bytes = 1000 bytes"
            );
        }
        assert!(!tmp.path().join("x").exists() && !tmp.path().join("y").exists());
    }

    #[test]
    fn small_compressible_archives_pass_the_ratio_check() {
        // 512 KiB of zeros compress ~1000:1, but stay under RATIO_FLOOR_BYTES.
        let tar = gz(&raw_tar(&[(b"zeros", FILE, b"", &vec![0u8; 512 << 10])]));
        let (_tmp, dest, r) = run(&tar);
        assert_eq!(r.unwrap().bytes, 512 << 10);
        assert_eq!(fs::metadata(dest.join("zeros")).unwrap().len(), 512 << 10);
    }

    #[test]
    fn a_long_name_bomb_is_capped_while_streaming() {
        // A GNU long-name record the parser would buffer in memory: 64 MiB of 'a', gzipped.
        let mut h = tar::Header::new_gnu();
        h.as_mut_bytes()[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(64 << 20);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.resize(512 + (64 << 20), b'a');
        let (_tmp, dest, r) = run(&gz(&raw));
        assert!(
            matches!(r, Err(ArchiveError::RatioExceeded { .. })),
            "{r:?}"
        );
        assert!(!dest.exists());

        // Without the ratio, the stream cap still holds.
        let tmp = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_ratio: f64::INFINITY,
            max_total_bytes: 1 << 20,
            max_files: 10,
            ..Limits::default()
        };
        let err = extract(&gz(&raw), &tmp.path().join("out"), &limits).unwrap_err();
        assert!(
            matches!(
                err,
                ArchiveError::TooLarge {
                    name: "max_total_bytes",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn error_messages_name_the_limit_and_its_value() {
        let e = ArchiveError::TooManyFiles { limit: 3 };
        assert_eq!(
            e.to_string(),
            "archive has more entries (files, directories and links) than the limit max_files = 3"
        );
        let e = ArchiveError::RatioExceeded {
            ratio: 1234.56,
            limit: 200.0,
        };
        assert_eq!(
            e.to_string(),
            "compression ratio 1234.6 is over the limit max_ratio = 200 (a zip bomb?)"
        );
        let e = ArchiveError::TooLarge {
            what: "extracted data",
            name: "max_total_bytes",
            limit: 10,
        };
        assert_eq!(
            e.to_string(),
            "extracted data is over the limit max_total_bytes = 10 bytes"
        );
    }

    #[test]
    fn implied_directories_count_against_max_files() {
        let tmp = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_files: 3,
            ..Limits::default()
        };
        let tar = raw_tar(&[(b"a/b/c/d", FILE, b"", b"x")]);
        assert!(matches!(
            extract(&tar, &tmp.path().join("o"), &limits),
            Err(ArchiveError::TooManyFiles { limit: 3 })
        ));
        assert!(!tmp.path().join("o").exists());
    }

    #[test]
    fn dot_prefixes_and_modes_are_kept() {
        let tar = raw_tar(&[
            (b"./", DIR, b"", b""),
            (b"./tasks/t/run.sh", FILE, b"", b"echo"),
            (b"./tasks/t/prompt.md", FILE, b"", b"hi"),
        ]);
        let (_tmp, dest, r) = run(&gz(&tar));
        assert_eq!(
            r.unwrap(),
            ExtractReport {
                files: 2,
                dirs: 2,
                bytes: 6
            }
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(dest.join("tasks/t/run.sh"))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o111,
                0o111
            );
            assert_eq!(
                fs::metadata(dest.join("tasks/t/prompt.md"))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o111,
                0
            );
        }
    }

    #[test]
    fn a_file_where_a_directory_was_is_a_conflict() {
        let tar = raw_tar(&[(b"a/", DIR, b"", b""), (b"a", FILE, b"", b"x")]);
        assert!(
            matches!(run(&tar).2, Err(ArchiveError::Corrupt(m)) if m.contains("conflicts with a directory"))
        );
        let tar = raw_tar(&[(b"a", FILE, b"", b"x"), (b"a/b", FILE, b"", b"x")]);
        assert!(
            matches!(run(&tar).2, Err(ArchiveError::Corrupt(m)) if m.contains("conflicts with a file"))
        );
    }
}
