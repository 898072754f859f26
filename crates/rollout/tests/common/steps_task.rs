//! Multi-step tasks written by the tests (shared by multi_step.rs and kubernetes.rs).

use std::path::{Path, PathBuf};

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    if rel.ends_with(".sh") {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// A three-step task in `parent/<name>`:
/// - `one`: write /app/one.txt; its own test.sh checks the step verifier env over the task's
///   (`MODE`) and the task's (`SHARED`); `min_reward = 1.0`; artifact `/app/one.txt`.
/// - `two`: `workdir/` brings config.txt and a `setup.sh` (which marks the environment ready
///   and deletes itself); a step healthcheck waits for the mark; the agent copies config.txt.
/// - `three`: no test.sh of its own: the task's `tests/test.sh` runs the step's `check.sh`
///   (the merge of `tests/` under the step's tests); its verifier leaves a file in
///   /logs/artifacts.
///
/// Each step's instruction is a shell script, so a command agent that runs its instruction
/// solves a step only when it was given that step's instruction.
pub fn three_step_task(parent: &Path, name: &str, extra_toml: &str) -> PathBuf {
    let d = parent.join(name);
    write(
        &d,
        "task.toml",
        &format!(
            r#"schema_version = "1.1"
{extra_toml}
[environment]
workdir = "/app"

[verifier]
timeout_sec = 60
[verifier.env]
MODE = "task"
SHARED = "from-task"

[[steps]]
name = "one"
min_reward = 1.0
artifacts = ["/app/one.txt"]
[steps.agent]
timeout_sec = 60
[steps.verifier.env]
MODE = "step-one"

[[steps]]
name = "two"
min_reward = {{ reward = 0.5 }}
[steps.healthcheck]
command = "test -f /app/ready"
interval_sec = 0.2
retries = 20

[[steps]]
name = "three"
[steps.verifier]
timeout_sec = 30
"#
        ),
    );
    write(
        &d,
        "environment/Dockerfile",
        "FROM debian:bookworm-slim\nWORKDIR /app\n",
    );
    write(
        &d,
        "tests/helpers.sh",
        "pass() { echo 1 > /logs/verifier/reward.txt; exit 0; }\nfail() { echo 0 > /logs/verifier/reward.txt; exit 0; }\n",
    );
    write(
        &d,
        "tests/test.sh",
        "#!/bin/bash\nsource /tests/helpers.sh\n[ -f /tests/check.sh ] && bash /tests/check.sh && pass\nfail\n",
    );
    // one
    write(
        &d,
        "steps/one/instruction.md",
        "# Write the word one to /app/one.txt\necho one > /app/one.txt\n",
    );
    write(
        &d,
        "steps/one/solution/solve.sh",
        "#!/bin/bash\necho one > /app/one.txt\n",
    );
    write(&d, "steps/one/tests/one-only.txt", "only in step one\n");
    write(
        &d,
        "steps/one/tests/test.sh",
        "#!/bin/bash\nsource /tests/helpers.sh\n[ \"$MODE\" = step-one ] || fail\n[ \"$SHARED\" = from-task ] || fail\n[ -f /tests/one-only.txt ] || fail\n[ \"$(cat /app/one.txt 2>/dev/null)\" = one ] && pass\nfail\n",
    );
    // two
    write(
        &d,
        "steps/two/instruction.md",
        "# Copy /app/config.txt to /app/two.txt\ncp /app/config.txt /app/two.txt\n",
    );
    write(&d, "steps/two/workdir/config.txt", "two\n");
    write(
        &d,
        "steps/two/workdir/setup.sh",
        "#!/bin/bash\nset -e\n[ \"$(pwd)\" = /app ]\ntouch /app/ready\necho ran > /app/setup-marker\nrm -- \"$0\"\n",
    );
    write(
        &d,
        "steps/two/solution/solve.sh",
        "#!/bin/bash\ncp /app/config.txt /app/two.txt\n",
    );
    write(
        &d,
        "steps/two/tests/test.sh",
        "#!/bin/bash\nsource /tests/helpers.sh\n[ \"$MODE\" = task ] || fail\n[ -f /app/setup-marker ] || fail\n[ ! -e /app/setup.sh ] || fail\n[ \"$(cat /app/one.txt)\" = one ] || fail\n[ \"$(cat /app/two.txt 2>/dev/null)\" = two ] && pass\nfail\n",
    );
    // three
    write(
        &d,
        "steps/three/instruction.md",
        "# Write the word three to /app/three.txt\necho three > /app/three.txt\n",
    );
    write(
        &d,
        "steps/three/solution/solve.sh",
        "#!/bin/bash\necho three > /app/three.txt\n",
    );
    write(
        &d,
        "steps/three/tests/check.sh",
        "#!/bin/bash\necho verified-three > /logs/artifacts/three-log.txt\n[ ! -e /tests/one-only.txt ] || exit 1\n[ \"$(cat /app/two.txt)\" = two ] || exit 1\n[ \"$(cat /app/three.txt 2>/dev/null)\" = three ]\n",
    );
    d
}

/// A two-step task whose tests write fixed keyed rewards: step `a` {reward 1, style 1}, step
/// `b` {reward 0.25}. Mean gives reward 0.625 and style 0.5; final gives reward 0.25.
pub fn fixed_reward_task(parent: &Path, name: &str, strategy: Option<&str>) -> PathBuf {
    let d = parent.join(name);
    let strategy = strategy.map_or(String::new(), |s| {
        format!("multi_step_reward_strategy = \"{s}\"\n")
    });
    write(
        &d,
        "task.toml",
        &format!("{strategy}[[steps]]\nname = \"a\"\n[[steps]]\nname = \"b\"\n"),
    );
    write(&d, "environment/Dockerfile", "FROM debian:bookworm-slim\n");
    for (step, json) in [
        ("a", r#"{"reward": 1, "style": 1}"#),
        ("b", r#"{"reward": 0.25}"#),
    ] {
        write(&d, &format!("steps/{step}/instruction.md"), "do nothing\n");
        write(
            &d,
            &format!("steps/{step}/tests/test.sh"),
            &format!("#!/bin/bash\necho '{json}' > /logs/verifier/reward.json\n"),
        );
    }
    d
}
