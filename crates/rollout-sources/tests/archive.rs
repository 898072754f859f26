//! Uploaded archives as a user (or an attacker) would send them: good ones unpack as they are,
//! hostile ones are refused with the right error and leave nothing behind.

use rollout_sources::archive::{extract, extract_file, ArchiveError, ExtractReport, Limits};
use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A tar written header by header: names and link targets go in exactly as given.
fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, ty, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*ty);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        if !link.is_empty() {
            h.set_link_name_literal(link).unwrap();
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in files {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Bytes that do not compress (so byte caps trip before the ratio does).
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Case {
    _tmp: tempfile::TempDir,
    dest: PathBuf,
}

fn extract_with(bytes: &[u8], limits: &Limits) -> (Case, Result<ExtractReport, ArchiveError>) {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("extracted");
    let r = extract(bytes, &dest, limits);
    (Case { _tmp: tmp, dest }, r)
}

/// Extract expecting an error; the destination must not exist afterwards.
fn refused(bytes: &[u8], limits: &Limits) -> ArchiveError {
    let (case, r) = extract_with(bytes, limits);
    let err = r.expect_err("a hostile archive was accepted");
    assert!(
        !case.dest.exists(),
        "{} was left behind after: {err}",
        case.dest.display()
    );
    err
}

fn read(dest: &Path, rel: &str) -> String {
    fs::read_to_string(dest.join(rel)).unwrap()
}

#[test]
fn a_good_zip_extracts_with_paths_kept() {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    w.add_directory("tasks/", opts).unwrap();
    w.start_file("tasks/t1/prompt.md", opts).unwrap();
    w.write_all(b"fix the bug").unwrap();
    w.start_file("tasks/t1/tests/test_a.sh", opts.unix_permissions(0o755))
        .unwrap();
    w.write_all(b"#!/bin/sh\nexit 0\n").unwrap();
    w.start_file("agent_code/agent.py", opts).unwrap();
    w.write_all(b"print('hi')").unwrap();
    w.add_symlink("tasks/t1/alias.md", "prompt.md", opts)
        .unwrap();
    let bytes = w.finish().unwrap().into_inner();

    let (case, r) = extract_with(&bytes, &Limits::default());
    let report = r.unwrap();
    assert_eq!(
        report,
        ExtractReport {
            files: 4,
            dirs: 4,
            bytes: 11 + 17 + 11
        }
    );
    assert_eq!(read(&case.dest, "tasks/t1/prompt.md"), "fix the bug");
    assert_eq!(read(&case.dest, "agent_code/agent.py"), "print('hi')");
    assert_eq!(
        fs::read_link(case.dest.join("tasks/t1/alias.md")).unwrap(),
        Path::new("prompt.md")
    );
    assert_eq!(read(&case.dest, "tasks/t1/alias.md"), "fix the bug");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(case.dest.join("tasks/t1/tests/test_a.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
    }
}

#[test]
fn a_good_tar_gz_extracts_and_so_does_the_same_tar_from_a_file() {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data).unwrap();
    };
    add("project/tasks/t1/prompt.md", b"hello");
    add("project/tasks/t1/workspace.yaml", b"repo: x\nversion: 1\n");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "project/latest", "tasks/t1").unwrap();
    let tar = b.into_inner().unwrap();

    let (case, r) = extract_with(&gz(&tar), &Limits::default());
    assert_eq!(
        r.unwrap(),
        ExtractReport {
            files: 3,
            dirs: 3,
            bytes: 5 + 19
        }
    );
    // No top-level directory is stripped.
    assert_eq!(read(&case.dest, "project/tasks/t1/prompt.md"), "hello");
    assert_eq!(read(&case.dest, "project/latest/prompt.md"), "hello");

    // Plain tar, from a file whose name says nothing (detection is by content).
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("upload.bin");
    fs::write(&path, &tar).unwrap();
    let report = extract_file(&path, &tmp.path().join("out"), &Limits::default()).unwrap();
    assert_eq!(report.files, 3);
    assert_eq!(
        read(&tmp.path().join("out"), "project/tasks/t1/workspace.yaml"),
        "repo: x\nversion: 1\n"
    );
}

#[test]
fn a_parent_directory_path_is_refused() {
    let tar = raw_tar(&[
        ("ok.txt", tar::EntryType::Regular, "", b"fine"),
        ("../x", tar::EntryType::Regular, "", b"evil"),
    ]);
    match refused(&gz(&tar), &Limits::default()) {
        ArchiveError::PathEscape { path } => assert_eq!(path, "../x"),
        e => panic!("{e:?}"),
    }
    match refused(&zip_of(&[("a/../../x", b"evil")]), &Limits::default()) {
        ArchiveError::PathEscape { path } => assert_eq!(path, "a/../../x"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn an_absolute_path_is_refused() {
    let tar = raw_tar(&[("/abs", tar::EntryType::Regular, "", b"evil")]);
    let err = refused(&tar, &Limits::default());
    assert!(
        matches!(&err, ArchiveError::AbsolutePath { path } if path == "/abs"),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "entry '/abs' has an absolute path");
    let err = refused(&zip_of(&[("/abs", b"evil")]), &Limits::default());
    assert!(matches!(err, ArchiveError::AbsolutePath { .. }), "{err:?}");
}

#[test]
fn a_symlink_to_etc_then_a_file_through_it_is_refused() {
    let tar = raw_tar(&[
        ("etc", tar::EntryType::Symlink, "/etc", b""),
        (
            "etc/rollout-test-evil",
            tar::EntryType::Regular,
            "",
            b"evil",
        ),
    ]);
    let err = refused(&gz(&tar), &Limits::default());
    match &err {
        ArchiveError::LinkEscape { path, target } => {
            assert_eq!((path.as_str(), target.as_str()), ("etc", "/etc"))
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(
        err.to_string(),
        "link 'etc' -> '/etc' points outside the destination"
    );
    assert!(!Path::new("/etc/rollout-test-evil").exists());

    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    w.add_symlink("etc", "/etc", opts).unwrap();
    w.start_file("etc/rollout-test-evil", opts).unwrap();
    w.write_all(b"evil").unwrap();
    let err = refused(&w.finish().unwrap().into_inner(), &Limits::default());
    assert!(matches!(err, ArchiveError::LinkEscape { .. }), "{err:?}");
}

#[test]
fn a_symlink_climbing_out_is_refused() {
    let tar = raw_tar(&[("a", tar::EntryType::Symlink, "../../x", b"")]);
    match refused(&tar, &Limits::default()) {
        ArchiveError::LinkEscape { path, target } => {
            assert_eq!((path.as_str(), target.as_str()), ("a", "../../x"))
        }
        e => panic!("{e:?}"),
    }
    // One level deeper, one `..` is fine; two are not.
    let ok = raw_tar(&[("d/a", tar::EntryType::Symlink, "../x", b"")]);
    extract_with(&ok, &Limits::default()).1.unwrap();
    let bad = raw_tar(&[("d/a", tar::EntryType::Symlink, "../../x", b"")]);
    assert!(matches!(
        refused(&bad, &Limits::default()),
        ArchiveError::LinkEscape { .. }
    ));
}

#[test]
fn a_zip_bomb_is_stopped_by_the_ratio() {
    // 40 MiB of zeros in 20 entries: about 40 KiB compressed.
    let zeros = vec![0u8; 2 << 20];
    let files: Vec<(String, &[u8])> = (0..20).map(|i| (format!("z{i}"), &zeros[..])).collect();
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    let bomb = zip_of(&files);
    assert!(bomb.len() < 200 << 10, "{}", bomb.len());
    match refused(&bomb, &Limits::default()) {
        ArchiveError::RatioExceeded { ratio, limit } => {
            assert!(ratio > 200.0, "{ratio}");
            assert_eq!(limit, 200.0);
        }
        e => panic!("{e:?}"),
    }
    // The same bytes as a tar.gz.
    let tar = raw_tar(&[("z", tar::EntryType::Regular, "", &vec![0u8; 40 << 20])]);
    assert!(matches!(
        refused(&gz(&tar), &Limits::default()),
        ArchiveError::RatioExceeded { .. }
    ));
}

#[test]
fn too_many_files_are_refused() {
    let limits = Limits {
        max_files: 10,
        ..Limits::default()
    };
    let names: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    let err = refused(&zip_of(&files), &limits);
    assert!(
        matches!(err, ArchiveError::TooManyFiles { limit: 10 }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "archive has more entries (files, directories and links) than the limit max_files = 10"
    );

    let entries: Vec<(&str, tar::EntryType, &str, &[u8])> = names
        .iter()
        .map(|n| (n.as_str(), tar::EntryType::Regular, "", &b"x"[..]))
        .collect();
    assert!(matches!(
        refused(&gz(&raw_tar(&entries)), &limits),
        ArchiveError::TooManyFiles { limit: 10 }
    ));
    // Exactly at the limit is fine.
    extract_with(&gz(&raw_tar(&entries[..10])), &limits)
        .1
        .unwrap();
}

#[test]
fn too_many_bytes_are_refused() {
    let limits = Limits {
        max_total_bytes: 1 << 20,
        ..Limits::default()
    };
    let data = noise(700 << 10);
    let tar = raw_tar(&[
        ("a", tar::EntryType::Regular, "", &data),
        ("b", tar::EntryType::Regular, "", &data),
    ]);
    let err = refused(&gz(&tar), &limits);
    assert!(
        matches!(
            err,
            ArchiveError::TooLarge {
                name: "max_total_bytes",
                limit: 1048576,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "extracted data is over the limit max_total_bytes = 1048576 bytes"
    );
    let err = refused(&zip_of(&[("a", &data), ("b", &data)]), &limits);
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
fn a_zip_that_lies_about_its_sizes_is_still_capped() {
    // Claim 1 byte for an entry that inflates to 3 MiB: the cap counts what is written.
    let mut bytes = zip_of(&[("big", &vec![b'z'; 3 << 20])]);
    for sig in [&b"PK\x03\x04"[..], b"PK\x01\x02"] {
        let at = bytes.windows(4).position(|w| w == sig).unwrap();
        let size_at = if sig == b"PK\x03\x04" {
            at + 22
        } else {
            at + 24
        };
        bytes[size_at..size_at + 4].copy_from_slice(&1u32.to_le_bytes());
    }
    let limits = Limits {
        max_total_bytes: 1 << 20,
        max_ratio: f64::INFINITY,
        ..Limits::default()
    };
    let err = refused(&bytes, &limits);
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
fn corrupt_data_is_refused() {
    let tar = raw_tar(&[("a", tar::EntryType::Regular, "", &noise(64 << 10))]);
    let good = gz(&tar);
    let truncated = &good[..good.len() / 2];
    assert!(matches!(
        refused(truncated, &Limits::default()),
        ArchiveError::Corrupt(_)
    ));

    let mut garbage = b"PK\x03\x04".to_vec();
    garbage.extend(noise(1000));
    assert!(matches!(
        refused(&garbage, &Limits::default()),
        ArchiveError::Corrupt(_)
    ));

    // Flip a byte of a stored entry's data: the CRC check fails while reading.
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    w.start_file(
        "a",
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored),
    )
    .unwrap();
    w.write_all(b"hello hello hello").unwrap();
    let mut zip = w.finish().unwrap().into_inner();
    let at = zip.windows(5).position(|w| w == b"hello").unwrap();
    zip[at] = b'j';
    match refused(&zip, &Limits::default()) {
        ArchiveError::Corrupt(m) => assert!(m.contains("'a'"), "{m}"),
        e => panic!("{e:?}"),
    }

    // A gzip that holds something other than a tar.
    assert!(matches!(
        refused(&gz(&noise(4096)), &Limits::default()),
        ArchiveError::Corrupt(_)
    ));
}

#[test]
fn an_unknown_format_is_refused() {
    let err = refused(
        b"#!/bin/sh\necho this is not an archive\n",
        &Limits::default(),
    );
    assert!(matches!(err, ArchiveError::UnknownFormat), "{err:?}");
    assert!(matches!(
        refused(b"", &Limits::default()),
        ArchiveError::UnknownFormat
    ));
    // A name ending in .zip changes nothing.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("fake.zip");
    fs::write(&path, "plain text").unwrap();
    assert!(matches!(
        extract_file(&path, &tmp.path().join("out"), &Limits::default()),
        Err(ArchiveError::UnknownFormat)
    ));
    assert!(!tmp.path().join("out").exists());
}
