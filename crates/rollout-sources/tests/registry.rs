//! Registry datasets resolved through the git cache, against local repositories reached by
//! `file://` URLs (no network).

use rollout_sources::git::{GitCache, SourceError};
use rollout_sources::registry::{parse_dataset_ref, resolve_dataset, Registry};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An empty repository with its own identity.
fn init_repo(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["config", "user.name", "Rollout Test"]);
    git(dir, &["config", "user.email", "test@example.invalid"]);
}

/// Write a Harbor task directory at `dir` whose instruction is `instruction`.
fn write_task(dir: &Path, instruction: &str) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir.join("environment")).unwrap();
    fs::create_dir_all(dir.join("tests")).unwrap();
    fs::create_dir_all(dir.join("solution")).unwrap();
    fs::write(dir.join("instruction.md"), instruction).unwrap();
    fs::write(
        dir.join("task.toml"),
        "version = \"1.0\"\n\n[verifier]\ntimeout_sec = 60.0\n",
    )
    .unwrap();
    fs::write(
        dir.join("environment/Dockerfile"),
        "FROM debian:bookworm-slim\n",
    )
    .unwrap();
    for (rel, body) in [
        (
            "tests/test.sh",
            "#!/bin/bash\necho 1 > /logs/verifier/reward.txt\n",
        ),
        ("solution/solve.sh", "#!/bin/bash\ntrue\n"),
    ] {
        fs::write(dir.join(rel), body).unwrap();
        fs::set_permissions(dir.join(rel), fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn commit_all(repo: &Path, message: &str) -> String {
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-qm", message]);
    git(repo, &["rev-parse", "HEAD"])
}

fn file_url(p: &Path) -> String {
    format!("file://{}", p.display())
}

fn registry_task(name: &str, url: &str, commit: Option<&str>, path: Option<&str>) -> String {
    let mut fields = vec![
        format!("\"name\": {name:?}"),
        format!("\"git_url\": {url:?}"),
    ];
    if let Some(c) = commit {
        fields.push(format!("\"git_commit_id\": {c:?}"));
    }
    if let Some(p) = path {
        fields.push(format!("\"path\": {p:?}"));
    }
    format!("{{{}}}", fields.join(", "))
}

fn dataset(name: &str, version: &str, tasks: &[String]) -> String {
    format!(
        "{{\"name\": {name:?}, \"version\": {version:?}, \"description\": \"test\", \"tasks\": [{}]}}",
        tasks.join(",\n")
    )
}

/// Everything two tests share: repo A (two commits, tasks under tasks/), repo B (a task at the root).
struct Fixture {
    tmp: tempfile::TempDir,
    repo_a: PathBuf,
    repo_b: PathBuf,
    a_first: String,
    a_second: String,
    b_head: String,
    registry_path: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let repo_a = tmp.path().join("repo-a");
        init_repo(&repo_a);
        write_task(&repo_a.join("tasks/hello"), "first: say hello");
        write_task(&repo_a.join("tasks/count"), "first: count to ten");
        let a_first = commit_all(&repo_a, "first");
        write_task(&repo_a.join("tasks/hello"), "second: say hello loudly");
        write_task(&repo_a.join("tasks/count"), "second: count to twenty");
        let a_second = commit_all(&repo_a, "second");

        let repo_b = tmp.path().join("repo-b");
        init_repo(&repo_b);
        write_task(&repo_b, "root task of b");
        let b_head = commit_all(&repo_b, "only");

        let (ua, ub) = (file_url(&repo_a), file_url(&repo_b));
        let registry = format!(
            "[\n{},\n{}\n]\n",
            dataset(
                "alpha",
                "1.0",
                &[
                    registry_task("hello", &ua, Some(&a_first), Some("tasks/hello")),
                    registry_task("count", &ua, Some(&a_first), Some("tasks/count")),
                    registry_task("root-b", &ub, Some(&b_head), Some("")),
                ]
            ),
            dataset(
                "beta",
                "2.0",
                &[registry_task(
                    "hello",
                    &ua,
                    Some(&a_second),
                    Some("tasks/hello")
                )]
            ),
        );
        let registry_path = tmp.path().join("registry.json");
        fs::write(&registry_path, registry).unwrap();
        Self {
            tmp,
            repo_a,
            repo_b,
            a_first,
            a_second,
            b_head,
            registry_path,
        }
    }

    fn cache(&self) -> GitCache {
        GitCache::new(self.tmp.path().join("cache"))
    }

    fn registry(&self) -> Registry {
        Registry::load(self.registry_path.to_str().unwrap()).unwrap()
    }
}

fn requests(reg: &Registry) -> Vec<(String, Option<String>)> {
    reg.datasets
        .iter()
        .flat_map(|d| &d.tasks)
        .map(|t| (t.git_url.clone(), t.git_commit_id.clone()))
        .collect()
}

#[test]
fn pinned_datasets_resolve_once_and_then_offline() {
    let fx = Fixture::new();
    let cache = fx.cache();
    let reg = fx.registry();
    assert_eq!(reg.datasets.len(), 2);

    let alpha = resolve_dataset(reg.find("alpha", None).unwrap(), &cache, 4).unwrap();
    let names: Vec<&str> = alpha.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["count", "hello", "root-b"]);
    for t in &alpha {
        assert_eq!(t.dataset.as_deref(), Some("alpha"));
        assert!(t.dir.starts_with(cache.root().canonicalize().unwrap()));
    }
    // The first commit's content, although the repository has moved on.
    assert_eq!(alpha[1].instruction, "first: say hello");
    assert_eq!(alpha[0].instruction, "first: count to ten");
    assert_eq!(alpha[2].instruction, "root task of b");
    // A task at the repository root has no .git inside it.
    assert!(!alpha[2].dir.join(".git").exists());
    assert!(alpha[2].dir.ends_with(&fx.b_head));

    let (name, version) = parse_dataset_ref("beta@2.0");
    let beta = resolve_dataset(reg.find(&name, version.as_deref()).unwrap(), &cache, 4).unwrap();
    assert_eq!(beta.len(), 1);
    assert_eq!(beta[0].instruction, "second: say hello loudly");
    assert_eq!(beta[0].dataset.as_deref(), Some("beta"));

    // Three distinct (url, commit) pairs, each cloned once.
    let entries = cache.list().unwrap();
    let mut got: Vec<(String, String)> = entries
        .iter()
        .map(|e| (e.url.clone(), e.commit.clone()))
        .collect();
    got.sort();
    let mut want = vec![
        (file_url(&fx.repo_a), fx.a_first.clone()),
        (file_url(&fx.repo_a), fx.a_second.clone()),
        (file_url(&fx.repo_b), fx.b_head.clone()),
    ];
    want.sort();
    assert_eq!(got, want);
    assert!(entries.iter().all(|e| e.bytes > 0));

    // The sources disappear: everything still resolves from the cache, nothing is fresh.
    fs::rename(&fx.repo_a, fx.tmp.path().join("moved-a")).unwrap();
    fs::remove_dir_all(&fx.repo_b).unwrap();
    for r in cache.checkout_many(&requests(&reg), 4) {
        let c = r.unwrap();
        assert!(!c.fresh, "{c:?}");
    }
    let again = resolve_dataset(reg.find("alpha", Some("1.0")).unwrap(), &cache, 2).unwrap();
    assert_eq!(again, alpha);
    let again = resolve_dataset(reg.find("beta", None).unwrap(), &cache, 2).unwrap();
    assert_eq!(again, beta);
    assert_eq!(cache.list().unwrap().len(), 3);
}

#[test]
fn first_resolve_clones_fresh_then_reuses() {
    let fx = Fixture::new();
    let cache = fx.cache();
    let reg = fx.registry();
    let reqs = requests(&reg);
    let first = cache.checkout_many(&reqs, 3);
    let fresh: Vec<bool> = first.iter().map(|r| r.as_ref().unwrap().fresh).collect();
    // alpha: hello (A@1, cloned), count (A@1, duplicate), root-b (B, cloned); beta: hello (A@2, cloned)
    assert_eq!(fresh, [true, false, true, true]);
    let second = cache.checkout_many(&reqs, 3);
    assert!(second.iter().all(|r| !r.as_ref().unwrap().fresh));
    let dirs = |rs: &[Result<_, SourceError>]| -> Vec<PathBuf> {
        rs.iter()
            .map(|r: &Result<rollout_sources::git::Checkout, _>| r.as_ref().unwrap().dir.clone())
            .collect()
    };
    assert_eq!(dirs(&first), dirs(&second));
}

#[test]
fn default_branch_head_is_resolved_to_a_commit() {
    let fx = Fixture::new();
    let cache = fx.cache();
    let url = file_url(&fx.repo_a);
    let co = cache.checkout(&url, None).unwrap();
    assert_eq!(co.commit, fx.a_second);
    assert!(co.fresh);
    assert_eq!(
        fs::read_to_string(co.dir.join("tasks/count/instruction.md")).unwrap(),
        "second: count to twenty"
    );
    // An empty commit is the default branch too, and it is cached now.
    let same = cache.checkout(&url, Some("")).unwrap();
    assert_eq!(
        (same.commit.as_str(), same.fresh),
        (fx.a_second.as_str(), false)
    );

    // The branch moves: the default now resolves to the new commit.
    write_task(&fx.repo_a.join("tasks/count"), "third");
    let third = commit_all(&fx.repo_a, "third");
    let moved = cache.checkout(&url, None).unwrap();
    assert_eq!((moved.commit.as_str(), moved.fresh), (third.as_str(), true));
    assert_eq!(cache.list().unwrap().len(), 2);

    // A registry task without git_commit_id uses the default branch.
    let reg = Registry::parse(
        &format!(
            "[{}]",
            dataset(
                "d",
                "1",
                &[registry_task("count", &url, None, Some("tasks/count"))]
            )
        ),
        "inline",
    )
    .unwrap();
    let tasks = resolve_dataset(&reg.datasets[0], &cache, 1).unwrap();
    assert_eq!(tasks[0].instruction, "third");
    assert!(tasks[0].dir.starts_with(
        cache
            .root()
            .canonicalize()
            .unwrap()
            .join(moved.dir.parent().unwrap().file_name().unwrap())
    ));
}

#[test]
fn many_tasks_of_one_repo_clone_once() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("many");
    init_repo(&repo);
    for i in 0..16 {
        write_task(&repo.join(format!("t{i:02}")), &format!("task {i}"));
    }
    let head = commit_all(&repo, "many");
    let url = file_url(&repo);
    let tasks: Vec<String> = (0..16)
        .map(|i| {
            let n = format!("t{i:02}");
            registry_task(&n, &url, Some(&head), Some(&n))
        })
        .collect();
    let reg = Registry::parse(&format!("[{}]", dataset("many", "1", &tasks)), "inline").unwrap();
    let cache = GitCache::new(tmp.path().join("cache"));

    let reqs: Vec<(String, Option<String>)> =
        (0..16).map(|_| (url.clone(), Some(head.clone()))).collect();
    let results = cache.checkout_many(&reqs, 8);
    assert_eq!(
        results.iter().filter(|r| r.as_ref().unwrap().fresh).count(),
        1
    );
    let resolved = resolve_dataset(&reg.datasets[0], &cache, 8).unwrap();
    assert_eq!(resolved.len(), 16);
    assert_eq!(resolved[3].name, "t03");
    assert_eq!(resolved[3].instruction, "task 3");
    assert_eq!(cache.list().unwrap().len(), 1);
}

#[test]
fn concurrent_callers_share_one_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("race");
    init_repo(&repo);
    write_task(&repo.join("t"), "race");
    let head = commit_all(&repo, "race");
    let url = file_url(&repo);
    let root = tmp.path().join("cache");
    // Separate cache values (as separate processes would have), no deduplication between them.
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (root, url, head) = (root.clone(), url.clone(), head.clone());
                s.spawn(move || GitCache::new(root).checkout(&url, Some(&head)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let dirs: Vec<PathBuf> = results
        .iter()
        .map(|r| r.as_ref().unwrap().dir.clone())
        .collect();
    assert!(dirs.iter().all(|d| d == &dirs[0]));
    assert!(results.iter().any(|r| r.as_ref().unwrap().fresh));
    assert_eq!(
        fs::read_to_string(dirs[0].join("t/instruction.md")).unwrap(),
        "race"
    );
    // No temporary clone is left behind.
    let url_dir = dirs[0].parent().unwrap();
    let leftovers: Vec<_> = fs::read_dir(url_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(GitCache::new(root).list().unwrap().len(), 1);
}

#[test]
fn bad_commit_is_a_clear_error_naming_url_and_commit() {
    let fx = Fixture::new();
    let cache = fx.cache();
    let url = file_url(&fx.repo_a);
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let e = cache.checkout(&url, Some(missing)).unwrap_err();
    assert!(matches!(e, SourceError::CommitNotFound { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&url) && msg.contains(missing), "{msg}");
    assert!(msg.contains("git_commit_id"), "{msg}");

    // In a dataset, every failing task is listed, by name.
    let reg = Registry::parse(
        &format!(
            "[{}]",
            dataset(
                "d",
                "1",
                &[
                    registry_task("ok", &url, Some(&fx.a_first), Some("tasks/hello")),
                    registry_task("bad-commit", &url, Some(missing), Some("tasks/hello")),
                    registry_task("bad-path", &url, Some(&fx.a_first), Some("tasks/nope")),
                    registry_task(
                        "bad-url",
                        &file_url(&fx.tmp.path().join("no-such-repo")),
                        None,
                        None
                    ),
                ]
            )
        ),
        "inline",
    )
    .unwrap();
    let errs = resolve_dataset(&reg.datasets[0], &cache, 4).unwrap_err();
    let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(msgs.len(), 3, "{msgs:#?}");
    assert!(
        msgs[0].contains("task bad-commit") && msgs[0].contains(missing),
        "{}",
        msgs[0]
    );
    assert!(
        msgs[1].contains("task bad-path") && msgs[1].contains("tasks/nope"),
        "{}",
        msgs[1]
    );
    assert!(
        msgs[2].contains("task bad-url") && msgs[2].contains("no-such-repo"),
        "{}",
        msgs[2]
    );
    // Nothing half-done was kept.
    assert_eq!(cache.list().unwrap().len(), 1);
}

#[test]
fn invalid_task_in_checkout_is_marked_invalid_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("broken");
    init_repo(&repo);
    write_task(&repo.join("t"), "x");
    fs::remove_file(repo.join("t/tests/test.sh")).unwrap();
    let head = commit_all(&repo, "broken");
    let reg = Registry::parse(
        &format!(
            "[{}]",
            dataset(
                "d",
                "1",
                &[registry_task("t", &file_url(&repo), Some(&head), Some("t"))]
            )
        ),
        "inline",
    )
    .unwrap();
    // One broken task fails its own trials (task_invalid), not the whole job: it is loaded,
    // marked with the reason.
    let tasks = resolve_dataset(&reg.datasets[0], &GitCache::new(tmp.path().join("c")), 1).unwrap();
    assert_eq!(tasks.len(), 1);
    let why = tasks[0]
        .invalid
        .as_deref()
        .expect("the task is marked invalid");
    assert!(why.contains("tests/test.sh"), "{why}");
}

#[test]
fn registry_parse_errors_name_origin_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("registry.json");
    fs::write(
        &path,
        "[\n  {\n    \"name\": \"d\",\n    \"version\": \"1\",\n    \"tasks\": [\n      {\"name\": \"a\", \"git_url\": 7}\n    ]\n  }\n]\n",
    )
    .unwrap();
    let e = Registry::load(path.to_str().unwrap()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(path.to_str().unwrap()), "{msg}");
    assert!(msg.contains("line 6"), "{msg}");
    assert!(msg.contains("field `[0].tasks[0].git_url`"), "{msg}");

    let e = Registry::parse(r#"[{"name": "d", "tasks": []}]"#, "r.json").unwrap_err();
    assert!(e.to_string().contains("field `[0].version`"), "{e}");
    let e =
        Registry::parse(r#"[{"name": "", "version": "1", "tasks": []}]"#, "r.json").unwrap_err();
    assert!(e.to_string().contains("field `[0].name`"), "{e}");
    let e =
        Registry::parse(r#"[{"name": "d", "version": "1", "tasks": {}}]"#, "r.json").unwrap_err();
    assert!(e.to_string().contains("field `[0].tasks`"), "{e}");
    let e = Registry::parse("[{", "r.json").unwrap_err();
    assert!(e.to_string().starts_with("registry r.json, line 1"), "{e}");

    let e = Registry::load(tmp.path().join("absent.json").to_str().unwrap()).unwrap_err();
    assert!(e.to_string().contains("absent.json"), "{e}");
}

#[test]
fn an_empty_dataset_is_an_error() {
    let reg = Registry::parse(r#"[{"name": "d", "version": "1", "tasks": []}]"#, "r").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let errs = resolve_dataset(&reg.datasets[0], &GitCache::new(tmp.path().into()), 1).unwrap_err();
    assert!(errs[0].to_string().contains("no tasks"), "{}", errs[0]);
}

#[test]
fn list_and_clean() {
    let fx = Fixture::new();
    let cache = fx.cache();
    assert!(cache.list().unwrap().is_empty());
    assert_eq!(cache.clean().unwrap(), 0);
    let a = cache
        .checkout(&file_url(&fx.repo_a), Some(&fx.a_first))
        .unwrap();
    let b = cache
        .checkout(&fx.repo_b.display().to_string(), None)
        .unwrap();
    let entries = cache.list().unwrap();
    assert_eq!(entries.len(), 2);
    let ea = entries.iter().find(|e| e.dir == a.dir).unwrap();
    assert_eq!(
        (ea.url.as_str(), ea.commit.as_str()),
        (file_url(&fx.repo_a).as_str(), fx.a_first.as_str())
    );
    let eb = entries.iter().find(|e| e.dir == b.dir).unwrap();
    assert_eq!(eb.url, fx.repo_b.display().to_string());
    assert_eq!(eb.commit, fx.b_head);
    let listed: u64 = entries.iter().map(|e| e.bytes).sum();
    assert!(listed > 0);
    let freed = cache.clean().unwrap();
    assert!(freed >= listed, "{freed} < {listed}");
    assert!(cache.list().unwrap().is_empty());
    assert!(!a.dir.exists());
    // Usable again after a clean.
    assert!(
        cache
            .checkout(&file_url(&fx.repo_a), Some(&fx.a_first))
            .unwrap()
            .fresh
    );
}

/// Serve one HTTP response per connection: the registry at /registry.json, 404 elsewhere.
fn serve(body: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&req);
            let (status, body) = if head.starts_with("GET /registry.json ") {
                ("200 OK", body.as_str())
            } else {
                ("404 Not Found", "nope")
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn registry_over_http() {
    let body = format!(
        "[{}]",
        dataset(
            "web",
            "3.1",
            &[registry_task(
                "a",
                "https://example.invalid/r.git",
                None,
                None
            )]
        )
    );
    let base = serve(body);
    let reg = Registry::load(&format!("{base}/registry.json")).unwrap();
    assert_eq!(reg.find("web", None).unwrap().version, "3.1");
    let e = Registry::load(&format!("{base}/missing.json")).unwrap_err();
    assert!(matches!(e, SourceError::Fetch { .. }), "{e:?}");
    assert!(e.to_string().contains("404"), "{e}");
}
