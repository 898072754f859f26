use super::*;
use std::fs;

fn file(dir: &Path, name: &str, body: &str) -> FileRef {
    let p = dir.join(name);
    fs::write(&p, body).unwrap();
    let d = file_digest(&p, false).unwrap();
    FileRef {
        path: p.to_string_lossy().into(),
        hash: d.hash,
        size: d.size,
        kind: ArtifactKind::File,
        sha256: None,
    }
}

fn job(cmd: &str, started: &str, inputs: Vec<FileRef>, outputs: Vec<FileRef>) -> Job {
    Job {
        uid: Job::new_uid(),
        session: "s1".into(),
        kind: JobKind::Trace,
        command: cmd.into(),
        argv: cmd.split(' ').map(String::from).collect(),
        cwd: "/w".into(),
        git: None,
        started_at: started.into(),
        duration_sec: 0.1,
        exit_code: Some(0),
        env: [("API_TOKEN".to_string(), "hunter2-secret".to_string())].into(),
        metadata: serde_json::json!({}),
        host: "h".into(),
        inputs,
        outputs,
    }
}

#[test]
fn lineage_follows_producers_and_bundle_round_trips() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(&d.path().join("db/rollout.db")).unwrap();
    let raw = file(d.path(), "raw", "1 2 3");
    let mid = file(d.path(), "mid", "6");
    let out = file(d.path(), "out", "36");
    s.record_job(&job(
        "step1",
        "2026-01-01T00:00:01.000000Z",
        vec![raw.clone()],
        vec![mid.clone()],
    ))
    .unwrap();
    s.record_job(&job(
        "step2",
        "2026-01-01T00:00:02.000000Z",
        vec![mid.clone()],
        vec![out.clone()],
    ))
    .unwrap();
    let l = s.lineage(&out.hash[..8], 10).unwrap();
    let j2 = l.produced_by.as_ref().unwrap();
    assert_eq!(j2.job.command, "step2");
    let j1 = j2.inputs[0].produced_by.as_ref().unwrap();
    assert_eq!(j1.job.command, "step1");
    assert_eq!(j1.inputs[0].hash, raw.hash);
    assert!(j1.inputs[0].produced_by.is_none());
    // depth 1 stops after the first job and says so.
    let short = s.lineage(&out.hash, 1).unwrap();
    assert!(short.produced_by.as_ref().unwrap().inputs[0].truncated);

    let b = s.export_bundle(&out.hash).unwrap();
    assert_eq!(b.jobs.len(), 2);
    assert_eq!(b.jobs[0].command, "step1");
    assert_eq!(b.artifacts.len(), 3);
    let mut other = Store::open(&d.path().join("other.db")).unwrap();
    let st = other.import_bundle(&b).unwrap();
    assert_eq!((st.jobs, st.artifacts), (2, 3));
    assert_eq!(other.import_bundle(&b).unwrap().jobs, 0);
    assert_eq!(other.lineage(&out.hash, 10).unwrap(), l);
    let info = other.artifact_info(&mid.hash).unwrap();
    assert_eq!(info.produced_by[0].command, "step1");
    assert_eq!(info.consumed_by[0].command, "step2");
}

#[test]
fn rerunning_a_producer_makes_its_consumers_stale() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(&d.path().join("rollout.db")).unwrap();
    let raw = file(d.path(), "raw", "1");
    let mid = file(d.path(), "mid", "a");
    let out = file(d.path(), "out", "b");
    let fin = file(d.path(), "fin", "c");
    s.record_job(&job(
        "one",
        "2026-01-01T00:00:01.000000Z",
        vec![raw.clone()],
        vec![mid.clone()],
    ))
    .unwrap();
    s.record_job(&job(
        "two",
        "2026-01-01T00:00:02.000000Z",
        vec![mid.clone()],
        vec![out.clone()],
    ))
    .unwrap();
    s.record_job(&job(
        "three",
        "2026-01-01T00:00:03.000000Z",
        vec![out.clone()],
        vec![fin.clone()],
    ))
    .unwrap();
    let st = s.status(None).unwrap();
    assert!(st.stale.is_empty() && st.changed.is_empty(), "{st:?}");
    let mid2 = file(d.path(), "mid", "A");
    s.record_job(&job(
        "one",
        "2026-01-01T00:00:04.000000Z",
        vec![raw.clone()],
        vec![mid2.clone()],
    ))
    .unwrap();
    let st = s.status(None).unwrap();
    let names: Vec<(&str, bool)> = st
        .stale
        .iter()
        .map(|j| (j.job.command.as_str(), j.upstream))
        .collect();
    assert_eq!(names, [("two", false), ("three", true)]);
    assert_eq!(
        st.stale[0].current_hash.as_deref(),
        Some(mid2.hash.as_str())
    );
    assert!(st.changed.is_empty(), "{:?}", st.changed);
    fs::write(d.path().join("fin"), "edited").unwrap();
    let st = s.status(None).unwrap();
    assert_eq!(st.changed.len(), 1);
    assert!(st.changed[0].path.ends_with("fin"));
}

#[test]
fn hash_cache_notices_changes() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(&d.path().join("rollout.db")).unwrap();
    let p = d.path().join("f");
    fs::write(&p, "one").unwrap();
    let a = s.hash_file(&p, true).unwrap();
    assert_eq!(a.hash, blake3::hash(b"one").to_hex().to_string());
    assert_eq!(
        a.sha256.as_deref(),
        Some("7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed")
    );
    assert_eq!(s.hash_file(&p, false).unwrap().hash, a.hash);
    fs::write(&p, "two!").unwrap();
    assert_eq!(
        s.hash_file(&p, false).unwrap().hash,
        blake3::hash(b"two!").to_hex().to_string()
    );
}

#[test]
fn tree_digest_is_content_addressed() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for d in [a.path(), b.path()] {
        fs::create_dir_all(d.join("tests")).unwrap();
        fs::write(d.join("task.toml"), "x").unwrap();
        fs::write(d.join("tests/test.sh"), "echo").unwrap();
    }
    assert_eq!(
        tree_digest(a.path()).unwrap(),
        tree_digest(b.path()).unwrap()
    );
    fs::write(b.path().join("tests/test.sh"), "echo 2").unwrap();
    assert_ne!(
        tree_digest(a.path()).unwrap().0,
        tree_digest(b.path()).unwrap().0
    );
}

#[test]
fn redaction_hides_secrets_and_keeps_the_rest() {
    let r = Redactor::new(&["hunter[0-9]".to_string()]).unwrap();
    assert_eq!(
        r.text(
            "curl --token abc123 https://u:pw@host/x?q=1 OPENAI_API_KEY=sk-aaaaaaaaaaaaaaaaaaaa ok"
        ),
        "curl --token [REDACTED] https://u:[REDACTED]@host/x?q=1 OPENAI_API_KEY=[REDACTED] ok"
    );
    assert_eq!(r.text("echo hunter2"), "echo [REDACTED]");
    assert_eq!(r.env_value("GITHUB_TOKEN", "x"), REDACTED);
    assert_eq!(r.env_value("HOME", "/root"), "/root");
    assert!(Redactor::new(&["(".to_string()]).is_err());
}

#[test]
fn two_connections_write_at_once() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("rollout.db");
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let db = db.clone();
            let dir = d.path().to_path_buf();
            std::thread::spawn(move || {
                let mut s = Store::open(&db).unwrap();
                for i in 0..25 {
                    let f = file(&dir, &format!("f{t}-{i}"), &format!("{t} {i}"));
                    s.record_job(&job(&format!("w{t} {i}"), &now(), vec![], vec![f]))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = Store::open(&db).unwrap();
    assert_eq!(s.recent_jobs(100, None).unwrap().len(), 50);
    assert_eq!(s.recent_jobs(100, Some("w1")).unwrap().len(), 25);
}

fn count(s: &Store, table: &str) -> i64 {
    s.conn
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_command_traced_again_over_the_same_files_stores_its_inputs_once() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(&d.path().join("rollout.db")).unwrap();
    let a = file(d.path(), "a", "1");
    let b = file(d.path(), "b", "2");
    let o = file(d.path(), "o", "12");
    let j1 = job(
        "cat a b",
        "2026-01-01T00:00:01.000000Z",
        vec![a.clone(), b.clone()],
        vec![o.clone()],
    );
    // The same files in another order, one of them listed twice.
    let j2 = job(
        "cat a b",
        "2026-01-01T00:00:02.000000Z",
        vec![b.clone(), a.clone(), b.clone()],
        vec![o.clone()],
    );
    s.record_job(&j1).unwrap();
    s.record_job(&j2).unwrap();
    assert_eq!(count(&s, "file_sets"), 2, "one input set, one output set");
    assert_eq!(count(&s, "file_set_members"), 3);
    for uid in [&j1.uid, &j2.uid] {
        let j = s.job(uid).unwrap();
        assert_eq!(j.inputs, vec![a.clone(), b.clone()]);
        assert_eq!(j.outputs, vec![o.clone()]);
    }
    // One changed input makes a set of its own; the earlier jobs keep what they read.
    let a2 = file(d.path(), "a", "changed");
    let j3 = job(
        "cat a b",
        "2026-01-01T00:00:03.000000Z",
        vec![a2.clone(), b.clone()],
        vec![],
    );
    s.record_job(&j3).unwrap();
    assert_eq!(count(&s, "file_sets"), 3);
    assert_eq!(s.job(&j1.uid).unwrap().inputs[0].hash, a.hash);
    assert_eq!(s.job(&j3.uid).unwrap().inputs[0].hash, a2.hash);
    let consumers: Vec<String> = s
        .artifact_info(&b.hash)
        .unwrap()
        .consumed_by
        .into_iter()
        .map(|j| j.uid)
        .collect();
    assert_eq!(consumers.len(), 3, "{consumers:?}");
    assert_eq!(
        s.hash_of_path(Path::new(&a.path)).unwrap(),
        Some(a2.hash.clone())
    );
    assert_eq!(s.producer(&o.hash, None).unwrap().unwrap().0.uid, j2.uid);

    // Removing a job removes the sets only it used.
    assert_eq!(s.pop_job().unwrap().unwrap().uid, j3.uid);
    assert_eq!(count(&s, "file_sets"), 2);
    assert_eq!(s.job(&j1.uid).unwrap().inputs, vec![a.clone(), b.clone()]);
    assert_eq!(s.pop_job().unwrap().unwrap().uid, j2.uid);
    assert_eq!(s.job(&j1.uid).unwrap().outputs, vec![o.clone()]);
    assert_eq!(s.pop_job().unwrap().unwrap().uid, j1.uid);
    assert_eq!(count(&s, "file_sets"), 0);
    assert_eq!(count(&s, "file_set_members"), 0);
    // Replacing a job by uid keeps one copy of its files.
    s.record_job(&j1).unwrap();
    s.record_job(&j1).unwrap();
    assert_eq!(count(&s, "jobs"), 1);
    assert_eq!(count(&s, "file_sets"), 2);
}

#[test]
fn a_store_written_before_file_sets_keeps_every_job_s_files() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("rollout.db");
    let a = file(d.path(), "a", "1");
    let b = file(d.path(), "b", "2");
    let o = file(d.path(), "o", "12");
    {
        // A store as rollout wrote it at schema version 2.
        let c = Connection::open(&db).unwrap();
        c.execute_batch(schema::MIGRATIONS[0]).unwrap();
        c.execute_batch(schema::MIGRATIONS[1]).unwrap();
        c.execute_batch(
            "CREATE TABLE schema_version (version INTEGER NOT NULL);
             INSERT INTO schema_version (version) VALUES (2);
             INSERT INTO sessions (uid, kind, created_at) VALUES ('s1', 'trace', '2026-01-01T00:00:00.000000Z');",
        )
        .unwrap();
        for f in [&a, &b, &o] {
            c.execute(
                "INSERT INTO artifacts (hash, size, kind, first_seen) VALUES (?1, ?2, 'file', '2026-01-01T00:00:00.000000Z')",
                params![f.hash, f.size as i64],
            )
            .unwrap();
        }
        for (id, uid, cmd) in [(1, "u1", "make o"), (2, "u2", "wc o")] {
            c.execute(
                "INSERT INTO jobs (id, uid, session_uid, kind, command, argv, cwd, started_at, duration_sec, exit_code, step_hash, env, metadata, host)
                 VALUES (?1, ?2, 's1', 'trace', ?3, '[]', '/w', ?4, 0.1, 0, 'x', '{}', '{}', 'h')",
                params![id, uid, cmd, format!("2026-01-01T00:00:0{id}.000000Z")],
            )
            .unwrap();
        }
        for (table, job, f) in [
            ("job_inputs", 1, &a),
            ("job_inputs", 1, &b),
            ("job_outputs", 1, &o),
            ("job_inputs", 2, &o),
        ] {
            c.execute(
                &format!("INSERT INTO {table} (job_id, path, artifact_hash) VALUES (?1, ?2, ?3)"),
                params![job, f.path, f.hash],
            )
            .unwrap();
        }
        // A hash cache entry for `a` as it is now, with a digest that can only come from it.
        let meta = fs::metadata(&a.path).unwrap();
        c.execute(
            "INSERT INTO hash_cache (path, size, mtime_ns, hash) VALUES (?1, ?2, ?3, 'cached')",
            params![a.path, meta.len() as i64, hash::mtime_ns(&meta)],
        )
        .unwrap();
    }
    let mut s = Store::open(&db).unwrap();
    let version: i64 = s
        .conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, schema::SCHEMA_VERSION);
    let j1 = s.job("u1").unwrap();
    assert_eq!(
        (j1.inputs, j1.outputs),
        (vec![a.clone(), b.clone()], vec![o.clone()])
    );
    let j2 = s.job("u2").unwrap();
    assert_eq!((j2.inputs, j2.outputs), (vec![o.clone()], vec![]));
    let l = s.lineage(&o.hash, 5).unwrap();
    assert_eq!(l.produced_by.unwrap().job.uid, "u1");
    let cached = s.hash_file(Path::new(&a.path), false).unwrap();
    assert_eq!(cached.hash, "cached", "the hash cache is carried over");
    // New jobs go on beside the carried-over ones.
    s.record_job(&job(
        "make o",
        "2026-01-01T00:00:03.000000Z",
        vec![a.clone(), b.clone()],
        vec![o.clone()],
    ))
    .unwrap();
    assert_eq!(s.artifact_info(&a.hash).unwrap().consumed_by.len(), 2);
    assert_eq!(s.pop_job().unwrap().unwrap().command, "make o");
    assert_eq!(s.job("u1").unwrap().inputs.len(), 2);
}

/// Feed `paths` to a second connection's `hash_ahead`, as the tracer does while a command runs.
fn ahead_of(db: &Path, paths: &[PathBuf]) -> HashedAhead {
    let second = Store::open(db).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for p in paths {
        tx.send(p.clone()).unwrap();
    }
    drop(tx);
    second.hash_ahead(&rx, false)
}

fn names(v: &[(PathBuf, FileDigest)]) -> Vec<String> {
    v.iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn inputs_hashed_ahead_come_out_in_byte_order_without_what_was_written_or_removed() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("rollout.db");
    let mut s = Store::open(&db).unwrap();
    // Byte order (the store's order of a job's files) puts "B" before "a" before "a-b".
    for (name, body) in [
        ("a", "1"),
        ("B", "2"),
        ("a-b", "3"),
        ("out", "4"),
        ("gone", "5"),
    ] {
        fs::write(d.path().join(name), body).unwrap();
    }
    let path = |n: &str| d.path().join(n);
    let reads: std::collections::HashSet<PathBuf> =
        ["a", "B", "a-b", "out", "gone", "missing"].map(path).into();
    let sent: Vec<PathBuf> = reads.iter().cloned().collect();
    let ahead = ahead_of(&db, &sent);
    assert_eq!(ahead.received, 6);
    assert_eq!(
        ahead.len(),
        5,
        "the missing path is kept to be looked at again"
    );
    // Created after it was received: looked at again, so it is an input.
    fs::write(path("missing"), "6").unwrap();
    let (out, gone) = (path("out"), path("gone"));
    let got = s
        .hash_reads(&reads, &[out.as_path(), gone.as_path()], false, ahead)
        .unwrap();
    assert_eq!(names(&got), ["B", "a", "a-b", "missing"]);
    assert_eq!(got[1].1.hash, blake3::hash(b"1").to_hex().to_string());
    assert_eq!(got[3].1.hash, blake3::hash(b"6").to_hex().to_string());

    // A digest taken ahead is the file as it was then; without `ahead` every path is looked
    // up, and the result is the same set in the same order.
    let slow = s
        .hash_reads(
            &reads,
            &[out.as_path(), gone.as_path()],
            false,
            HashedAhead::default(),
        )
        .unwrap();
    assert_eq!(slow, got);
}

#[test]
fn inputs_are_looked_up_again_when_ahead_did_not_receive_every_read() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("rollout.db");
    let mut s = Store::open(&db).unwrap();
    for n in ["x", "y", "z"] {
        fs::write(d.path().join(n), n).unwrap();
    }
    let reads: std::collections::HashSet<PathBuf> =
        ["z", "y", "x"].map(|n| d.path().join(n)).into();
    // Only one path reached the second connection; one it received is not a read at all.
    let ahead = ahead_of(&db, &[d.path().join("y"), d.path().join("not-read")]);
    let got = s.hash_reads(&reads, &[], false, ahead).unwrap();
    assert_eq!(names(&got), ["x", "y", "z"]);
    // sha256 asked for after the fact: a digest taken without it is taken again.
    let ahead = ahead_of(&db, &reads.iter().cloned().collect::<Vec<_>>());
    let got = s.hash_reads(&reads, &[], true, ahead).unwrap();
    assert!(got.iter().all(|(_, d)| d.sha256.is_some()), "{got:?}");
}

#[test]
fn outputs_hashed_without_a_connection_are_cached_once_recorded() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(&d.path().join("rollout.db")).unwrap();
    let big = d.path().join("big.bin");
    // Above the size hashed memory-mapped on several threads.
    let body: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(&big, &body).unwrap();
    let small = d.path().join("small.txt");
    fs::write(&small, "out").unwrap();
    let paths = vec![
        big.clone(),
        d.path().join("missing"),
        d.path().to_path_buf(),
        small,
    ];
    let hashed = hash_uncached(&paths, false);
    assert_eq!(count(&s, "hash_cache"), 0);
    let got = s.cache_hashed(hashed).unwrap();
    assert_eq!(
        names(&got),
        ["big.bin", "small.txt"],
        "missing and directory left out"
    );
    assert_eq!(got[0].1.hash, blake3::hash(&body).to_hex().to_string());
    assert_eq!(got[0].1.size, body.len() as u64);
    assert_eq!(count(&s, "hash_cache"), 2);
    // The cache now answers for the unchanged file without reading it.
    let (cached, update) = s.digest_with_cache(&big, false).unwrap();
    assert_eq!(cached, got[0].1);
    assert!(update.is_none());
}

#[test]
fn step_and_file_set_digests_hash_the_documented_bytes() {
    // Enough files that the bytes span several of the hasher's 64 KiB buffers.
    let refs: Vec<FileRef> = (0..3000u64)
        .map(|i| FileRef {
            path: format!("/w/dir{}/file-{i:05}.txt", i % 7),
            hash: blake3::hash(&i.to_le_bytes()).to_hex().to_string(),
            size: i,
            kind: ArtifactKind::File,
            sha256: None,
        })
        .collect();
    let mut sorted: Vec<&FileRef> = refs.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut set = b"rollout-file-set-v1\0".to_vec();
    for f in &sorted {
        set.extend_from_slice(&(f.path.len() as u64).to_le_bytes());
        set.extend_from_slice(f.path.as_bytes());
        set.extend_from_slice(&(f.hash.len() as u64).to_le_bytes());
        set.extend_from_slice(f.hash.as_bytes());
    }
    assert_eq!(
        file_set_digest(&sorted),
        blake3::hash(&set).to_hex().to_string()
    );
    let mut step = Vec::new();
    for (tag, list) in [(b"I", &sorted), (b"O", &sorted[..1].to_vec())] {
        for f in list.iter() {
            step.extend_from_slice(tag);
            step.extend_from_slice(&(f.path.len() as u64).to_le_bytes());
            step.extend_from_slice(f.path.as_bytes());
            step.extend_from_slice(f.hash.as_bytes());
        }
    }
    let want = blake3::hash(&step).to_hex().to_string();
    // Given in any order, the step hash is that of the sorted files.
    let j = job(
        "c",
        "2026-01-01T00:00:00Z",
        refs.clone(),
        vec![sorted[0].clone()],
    );
    assert_eq!(j.step_hash(), want);
    let j = job(
        "c",
        "2026-01-01T00:00:00Z",
        sorted.iter().map(|f| (*f).clone()).collect(),
        vec![sorted[0].clone()],
    );
    assert_eq!(j.step_hash(), want);
}

#[test]
fn outputs_hashed_beside_the_recording_connection_reuse_the_cache_for_unchanged_files() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("rollout.db");
    let mut s = Store::open(&db).unwrap();
    let (same, changed) = (d.path().join("same"), d.path().join("changed"));
    fs::write(&same, "kept").unwrap();
    fs::write(&changed, "old").unwrap();
    s.hash_file(&same, false).unwrap();
    s.hash_file(&changed, false).unwrap();
    fs::write(&changed, "new!").unwrap();
    let second = Store::open(&db).unwrap();
    let hashed = second.hash_detached(
        &[same.clone(), changed.clone(), d.path().join("gone")],
        false,
    );
    let updates: Vec<bool> = hashed.files.iter().map(|(_, _, u)| u.is_some()).collect();
    // The unchanged file came from the cache (nothing to write); the changed one was read.
    assert_eq!(updates, [false, true]);
    let got = s.cache_hashed(hashed).unwrap();
    assert_eq!(names(&got), ["same", "changed"]);
    assert_eq!(got[1].1.hash, blake3::hash(b"new!").to_hex().to_string());
    let (_, update) = s.digest_with_cache(&changed, false).unwrap();
    assert!(update.is_none(), "the new digest is cached");
}
