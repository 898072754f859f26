//! Environment images against the real Docker engine: an image is reused only when everything
//! that decides its content matches (the context after `.dockerignore`, and the engine id of
//! every base image), a changed base rebuilds and the trial log says why, `--pull` refreshes
//! bases from a registry, and `rollout gc --images` keeps a bounded set.
//!
//! Every base image here is made by the test under a test-only name (never a re-tag of
//! `debian:bookworm-slim`, which other runs use), and removed at the end.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn unique() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Images and tags the test made; removed on drop, whatever happened.
#[derive(Default)]
struct Cleanup {
    refs: Vec<String>,
    env_hashes: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for h in &self.env_hashes {
            let out = Command::new("docker")
                .args([
                    "images",
                    "-q",
                    "--filter",
                    &format!("label=io.rollout.env-hash={h}"),
                ])
                .output();
            if let Ok(out) = out {
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("docker").args(["rmi", "-f", id]).output();
                }
            }
        }
        for r in self.refs.iter().rev() {
            let _ = Command::new("docker").args(["rmi", r]).output();
        }
    }
}

/// A base image: debian:bookworm-slim plus `/base-marker` holding `marker`, tagged `tag`.
/// Returns its engine id.
fn make_base(tag: &str, marker: &str, cleanup: &mut Cleanup) -> String {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("marker"), marker).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM debian:bookworm-slim\nCOPY marker /base-marker\nLABEL io.rollout.test=envid\n",
    )
    .unwrap();
    docker(&["build", "-q", "-t", tag, ctx.path().to_str().unwrap()]);
    cleanup.refs.push(tag.to_string());
    docker(&["image", "inspect", "-f", "{{.Id}}", tag])
}

fn set_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A task built FROM `base` whose verifier copies `/base-marker` and a listing of `/ctx` (the
/// build context as the image got it) into the verifier logs.
fn make_task(root: &Path, name: &str, base: &str) -> PathBuf {
    let d = root.join(name);
    for sub in ["environment", "tests", "solution"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::write(d.join("instruction.md"), "Nothing to do.\n").unwrap();
    std::fs::write(
        d.join("task.toml"),
        "version = \"1.0\"\n[verifier]\ntimeout_sec = 60\n",
    )
    .unwrap();
    std::fs::write(
        d.join("environment/Dockerfile"),
        format!("FROM {base}\nCOPY . /ctx/\n"),
    )
    .unwrap();
    std::fs::write(d.join("environment/app.txt"), "app\n").unwrap();
    let test = d.join("tests/test.sh");
    std::fs::write(
        &test,
        "#!/bin/bash\ncat /base-marker > /logs/verifier/marker.txt\n\
         (cd /ctx && find . | sort) > /logs/verifier/ctx.txt\necho 1 > /logs/verifier/reward.txt\n",
    )
    .unwrap();
    set_executable(&test);
    std::fs::write(d.join("solution/solve.sh"), "#!/bin/bash\ntrue\n").unwrap();
    d
}

fn rollout_json(args: &[&str]) -> Value {
    let out = rollout_cmd().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "rollout {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Outcome {
    run: Run,
    result: Value,
    dir: PathBuf,
}

impl Outcome {
    fn env(&self) -> &Value {
        &self.result["environment"]
    }
    fn built(&self) -> bool {
        self.env()["built"].as_bool().unwrap()
    }
    fn image_id(&self) -> String {
        self.env()["image_id"].as_str().unwrap().to_string()
    }
    fn verifier(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join("verifier").join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}; stderr:\n{}", self.run.stderr()))
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("trial.log")).unwrap_or_default()
    }
}

fn run_it(task: &Path, extra: &[&str], cleanup: &mut Cleanup) -> Outcome {
    let run = run_task(task, "oracle", extra);
    let result = run.trial();
    assert_eq!(result["reward"], 1.0, "{result}\nstderr:\n{}", run.stderr());
    let name = result["trial_name"].as_str().unwrap().to_string();
    let dir = run.trial_dir(&name);
    // Remember what was built, for the cleanup.
    let image = result["environment"]["image"].as_str().unwrap().to_string();
    let hash = docker(&[
        "image",
        "inspect",
        "-f",
        "{{index .Config.Labels \"io.rollout.env-hash\"}}",
        &image,
    ]);
    if !cleanup.env_hashes.contains(&hash) {
        cleanup.env_hashes.push(hash);
    }
    Outcome { run, result, dir }
}

#[test]
fn a_changed_base_rebuilds_and_says_why_and_an_unchanged_base_reuses() {
    require_docker();
    let mut cleanup = Cleanup::default();
    let u = unique();
    let base = format!("rollout-envid-test-base:{u}");
    let other = format!("rollout-envid-test-other:{u}");
    let id_a = make_base(&base, &format!("A-{u}"), &mut cleanup);
    let id_b = make_base(&other, &format!("B-{u}"), &mut cleanup);
    assert_ne!(id_a, id_b);
    let tmp = tempfile::tempdir().unwrap();
    let task = make_task(tmp.path(), "rebase", &base);

    let first = run_it(&task, &[], &mut cleanup);
    assert!(first.built(), "{}", first.result);
    assert_eq!(first.verifier("marker.txt"), format!("A-{u}"));
    assert_eq!(first.env()["base_images"][&base], id_a.as_str());

    let same = run_it(&task, &[], &mut cleanup);
    assert!(!same.built(), "an unchanged base must reuse the image");
    assert_eq!(same.image_id(), first.image_id());
    assert!(!same.dir.join("environment/build.log").exists());

    // The provenance record names the base as an input, and reproduce sees it unchanged.
    let show = rollout_json(&["show", first.dir.to_str().unwrap(), "--json"]);
    let input = show["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["path"] == format!("base-image:{base}"))
        .unwrap_or_else(|| panic!("no base-image input: {show:#}"))
        .clone();
    assert_eq!(
        input["hash"].as_str().unwrap(),
        blake3::hash(id_a.as_bytes()).to_hex().as_str()
    );
    let result_json = first.dir.join("result.json");
    let plan = rollout_json(&["reproduce", result_json.to_str().unwrap(), "--json"]);
    assert_eq!(
        plan["base_images_changed"],
        serde_json::json!([]),
        "{plan:#}"
    );

    // Re-tag the (test-only) base name to another image: reproduce says a re-run would use
    // another base, and the next run rebuilds on it.
    docker(&["tag", &other, &base]);
    let plan = rollout_json(&["reproduce", result_json.to_str().unwrap(), "--json"]);
    assert_eq!(
        plan["base_images_changed"],
        serde_json::json!([base]),
        "{plan:#}"
    );
    assert_eq!(plan["base_images_now"][&base], id_b.as_str());
    let text = rollout_cmd()
        .args(["reproduce", result_json.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("a re-run would build on a different base"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    let rebased = run_it(&task, &[], &mut cleanup);
    assert!(
        rebased.built(),
        "a changed base must rebuild: {}",
        rebased.result
    );
    assert_ne!(rebased.image_id(), first.image_id());
    assert_eq!(rebased.verifier("marker.txt"), format!("B-{u}"));
    assert_eq!(rebased.env()["base_images"][&base], id_b.as_str());
    let log = rebased.log();
    assert!(
        log.contains(&format!("base image {base} changed")),
        "trial.log does not say why it rebuilt:\n{log}"
    );
    let build_log = std::fs::read_to_string(rebased.dir.join("environment/build.log")).unwrap();
    assert!(
        build_log.lines().next().unwrap_or("").contains("changed"),
        "{build_log}"
    );

    // Back to the first base: its image is still there and is reused, not rebuilt.
    docker(&["tag", &id_a, &base]);
    let back = run_it(&task, &[], &mut cleanup);
    assert!(!back.built());
    assert_eq!(back.image_id(), first.image_id());

    // gc --images keeps the newest image of this environment (the one built on B) and would
    // remove the older; --keep-images 2 keeps both. Dry runs: the engine is shared, and a real
    // collection would take other runs' images too.
    let short = |id: &str| id.trim_start_matches("sha256:")[..12].to_string();
    let gc = |extra: &[&str]| {
        let out = rollout_cmd()
            .args(["gc", "--images", "--dry-run"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = gc(&[]);
    let line = listed
        .lines()
        .find(|l| l.contains(&short(&first.image_id())))
        .unwrap_or_else(|| panic!("the older image is not collected:\n{listed}"));
    assert!(
        line.contains("would remove") && line.contains("newest 1"),
        "{line}"
    );
    assert!(
        !listed.contains(&short(&rebased.image_id())),
        "the newest image of the environment must be kept:\n{listed}"
    );
    let listed = gc(&["--keep-images", "2"]);
    assert!(!listed.contains(&short(&first.image_id())), "{listed}");
    let listed = gc(&["--keep-images", "2", "--images-budget", "1"]);
    assert!(
        listed.contains(&short(&first.image_id())) && listed.contains(&short(&rebased.image_id())),
        "over budget both go:\n{listed}"
    );
}

#[test]
fn a_dockerignored_file_changes_neither_the_digest_nor_the_context() {
    require_docker();
    let mut cleanup = Cleanup::default();
    let tmp = tempfile::tempdir().unwrap();
    let task = make_task(tmp.path(), "ignoring", "debian:bookworm-slim");
    let env = task.join("environment");
    std::fs::write(
        env.join(".dockerignore"),
        "# build junk\n*.log\n/cache/\nsecret*\n!secret-but-public.txt\n",
    )
    .unwrap();
    std::fs::write(env.join("debug.log"), "one\n").unwrap();
    std::fs::create_dir_all(env.join("cache/deep")).unwrap();
    std::fs::write(env.join("cache/deep/blob"), "x\n").unwrap();
    std::fs::write(env.join("secret.txt"), "s3cret\n").unwrap();
    std::fs::write(env.join("secret-but-public.txt"), "public\n").unwrap();
    let digest = rollout_env::buildctx::context_digest(&env).unwrap();

    let first = run_it(&task, &[], &mut cleanup);
    assert!(first.built());
    assert_eq!(
        first.verifier("ctx.txt"),
        ".\n./.dockerignore\n./Dockerfile\n./app.txt\n./secret-but-public.txt\n",
        "the context sent to the engine"
    );

    // Change and add only ignored files: same digest, same image, no rebuild.
    std::fs::write(env.join("debug.log"), "two\n").unwrap();
    std::fs::write(env.join("cache/new"), "y\n").unwrap();
    std::fs::write(env.join("secret.txt"), "changed\n").unwrap();
    assert_eq!(rollout_env::buildctx::context_digest(&env).unwrap(), digest);
    let second = run_it(&task, &[], &mut cleanup);
    assert!(!second.built(), "{}", second.result);
    assert_eq!(second.image_id(), first.image_id());

    // A file that is sent does change it.
    std::fs::write(env.join("secret-but-public.txt"), "public 2\n").unwrap();
    assert_ne!(rollout_env::buildctx::context_digest(&env).unwrap(), digest);
    let third = run_it(&task, &[], &mut cleanup);
    assert!(third.built());
}

/// A registry of the test's own on a free loopback port (the engine treats 127.0.0.0/8 as an
/// insecure registry), stopped on drop. Needs Debian's `docker-registry` (scripts/setup
/// installs it); fails loudly without it.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let found = Command::new("sh")
            .args(["-c", "command -v docker-registry"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "this test needs Debian's docker-registry (apt-get install docker-registry; scripts/setup installs it)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp: {{addr: {addr}}}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut reg = Registry {
            child,
            addr,
            _dir: dir,
        };
        wait_for("the test registry to listen", 30, || {
            if let Ok(Some(status)) = reg.child.try_wait() {
                panic!("docker-registry exited early: {status}");
            }
            std::net::TcpStream::connect(&reg.addr).is_ok()
        });
        reg
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pull_picks_up_a_new_base_pushed_to_the_registry() {
    require_docker();
    let mut cleanup = Cleanup::default();
    let registry = Registry::start();
    let u = unique();
    let base = format!("{}/rollout-envid-test/base:{}", registry.addr, u);
    let first_base = format!("rollout-envid-test-first:{u}");
    let newer_base = format!("rollout-envid-test-newer:{u}");
    let id_a = make_base(&first_base, &format!("A-{u}"), &mut cleanup);
    let id_b = make_base(&newer_base, &format!("B-{u}"), &mut cleanup);
    docker(&["tag", &first_base, &base]);
    cleanup.refs.push(base.clone());
    docker(&["push", "-q", &base]);
    let tmp = tempfile::tempdir().unwrap();
    let task = make_task(tmp.path(), "pulled", &base);

    let first = run_it(&task, &[], &mut cleanup);
    assert!(first.built());
    assert_eq!(first.verifier("marker.txt"), format!("A-{u}"));

    // A newer base is pushed under the same name; this engine still has the old one.
    docker(&["tag", &newer_base, &base]);
    docker(&["push", "-q", &base]);
    docker(&["tag", &first_base, &base]);
    assert_eq!(docker(&["image", "inspect", "-f", "{{.Id}}", &base]), id_a);

    // Without --pull the local base is used: the image is reused.
    let local = run_it(&task, &[], &mut cleanup);
    assert!(!local.built());
    assert_eq!(local.verifier("marker.txt"), format!("A-{u}"));

    // With --pull the registry's base is fetched first, and the environment rebuilt on it.
    let pulled = run_it(&task, &["--pull"], &mut cleanup);
    assert!(pulled.built(), "{}", pulled.result);
    assert_eq!(pulled.verifier("marker.txt"), format!("B-{u}"));
    assert_eq!(pulled.env()["base_images"][&base], id_b.as_str());
    assert!(
        pulled.log().contains(&format!("base image {base} changed")),
        "{}",
        pulled.log()
    );
}
