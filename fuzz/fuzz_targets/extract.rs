//! Arbitrary bytes as an uploaded archive: whatever happens, nothing may be written outside the
//! destination, a refused archive leaves nothing behind, and an accepted one respects the limits.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rollout_sources::archive::{extract, Limits};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const LIMITS: Limits = Limits {
    max_archive_bytes: 1 << 20,
    max_total_bytes: 256 << 10,
    max_files: 64,
    max_ratio: 50.0,
    max_path_len: 256,
};

/// A private directory for all runs: an escape two levels up from a destination lands here.
fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("rollout-fuzz-")
            .tempdir()
            .unwrap()
            .keep()
    })
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every entry under `dir`, without following symlinks.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = fs::symlink_metadata(&p).unwrap();
        out.push(p.clone());
        if m.is_dir() {
            walk(&p, out);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let root = tempfile::tempdir_in(base()).unwrap();
    let root_name = root
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let fence = root.path().join("fence");
    fs::create_dir(&fence).unwrap();
    fs::write(fence.join("canary"), "canary").unwrap();
    let dest = root.path().join("out");

    let result = extract(data, &dest, &LIMITS);

    // Nothing appeared beside the destination, one or two levels up, and the canary is intact.
    assert_eq!(names(base()), vec![root_name]);
    let beside = names(root.path());
    assert!(
        beside == ["fence"] || beside == ["fence", "out"],
        "{beside:?}"
    );
    assert_eq!(names(&fence), ["canary"]);
    assert_eq!(fs::read_to_string(fence.join("canary")).unwrap(), "canary");

    match result {
        Err(_) => assert!(!dest.exists(), "a refused archive left {}", dest.display()),
        Ok(report) => {
            let real_dest = fs::canonicalize(&dest).unwrap();
            let mut entries = Vec::new();
            walk(&dest, &mut entries);
            assert!(
                entries.len() as u64 <= LIMITS.max_files,
                "{} entries",
                entries.len()
            );
            // A file replaced by a later entry of the same name is counted twice in the report.
            assert!(entries.len() as u64 <= report.files + report.dirs);
            let mut bytes = 0;
            let mut inodes = std::collections::HashSet::new();
            for p in &entries {
                let m = fs::symlink_metadata(p).unwrap();
                if m.file_type().is_symlink() {
                    let target = fs::read_link(p).unwrap();
                    assert!(
                        target.is_relative(),
                        "{} -> {}",
                        p.display(),
                        target.display()
                    );
                    // A link that resolves must resolve inside (a dangling or looping one is harmless).
                    if let Ok(real) = fs::canonicalize(p) {
                        assert!(
                            real.starts_with(&real_dest),
                            "{} -> {}",
                            p.display(),
                            real.display()
                        );
                    }
                } else if m.is_file() && inodes.insert(std::os::unix::fs::MetadataExt::ino(&m)) {
                    bytes += m.len(); // hard links share their content: count it once
                }
            }
            assert!(
                bytes <= LIMITS.max_total_bytes && bytes <= report.bytes,
                "{bytes} bytes"
            );
        }
    }
});
