//! The JSON Schemas of `rollout schema …` (docs/schemas/): the committed copies are what the
//! code generates, and the schemas accept the files rollout and Harbor users actually have
//! (every task.toml under examples/ and tests/fixtures/, every recipe of Harbor's cookbook,
//! the example job files, result.json files old and new) and refuse what rollout refuses.

use rollout_core::schema::Document;
use rollout_core::{JobResult, TrialResult};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn validator(doc: Document) -> jsonschema::Validator {
    let schema = serde_json::to_value(doc.schema()).unwrap();
    jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("`rollout schema {}` is not a valid schema: {e}", doc.name()))
}

fn assert_valid(v: &jsonschema::Validator, doc: &Value, what: &str) {
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not validate:\n{}",
        errors.join("\n")
    );
}

fn toml_json(text: &str, what: &str) -> Value {
    let table: toml::Table = toml::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}"));
    serde_json::to_value(table).unwrap()
}

#[test]
fn committed_schemas_are_what_the_code_generates() {
    for doc in Document::ALL {
        let path = repo().join("docs/schemas").join(doc.file_name());
        if std::env::var_os("ROLLOUT_UPDATE_SCHEMAS").is_some() {
            std::fs::write(&path, doc.to_pretty_json()).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == doc.to_pretty_json(),
            "{} differs from `rollout schema {}`; regenerate the committed schemas with\n  \
             ROLLOUT_UPDATE_SCHEMAS=1 cargo test -p rollout-core --test schemas, or\n  \
             for s in job task result job-result; do cargo run -q -p rollout -- schema $s > docs/schemas/$s.schema.json; done",
            path.display(),
            doc.name()
        );
    }
}

fn task_tomls(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            task_tomls(&p, out);
        } else if p.file_name().is_some_and(|n| n == "task.toml") {
            out.push(p);
        }
    }
}

#[test]
fn task_schema_accepts_every_task_toml_of_the_repository() {
    let v = validator(Document::Task);
    let mut files = Vec::new();
    task_tomls(&repo().join("examples"), &mut files);
    let examples = files.len();
    task_tomls(&repo().join("tests/fixtures"), &mut files);
    assert!(examples >= 2 && files.len() > examples + 5, "{files:?}");
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        // Fixtures meant to be refused by the parser are not what the schema must accept.
        if rollout_core::TaskConfig::parse(&text, f).is_err() {
            continue;
        }
        assert_valid(
            &v,
            &toml_json(&text, &f.display().to_string()),
            &f.display().to_string(),
        );
    }
}

#[test]
fn task_schema_accepts_every_harbor_cookbook_recipe() {
    // A git directory or work tree of github.com/harbor-framework/harbor-cookbook (see
    // docs/testing.md): the recipes are read from it, never copied into this repository.
    let repo = std::env::var_os("ROLLOUT_HARBOR_COOKBOOK")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/work/.mirror/harbor-framework+harbor-cookbook/repo".into());
    assert!(
        repo.is_dir(),
        "this test reads Harbor's cookbook recipes from a clone of github.com/harbor-framework/harbor-cookbook at {} (set ROLLOUT_HARBOR_COOKBOOK to a clone's path)",
        repo.display()
    );
    let repo = repo.as_path();
    let list = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["ls-tree", "-r", "HEAD", "--name-only"])
        .output()
        .unwrap();
    assert!(list.status.success());
    let v = validator(Document::Task);
    let names: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|l| l.ends_with("/task.toml") || *l == "task.toml")
        .map(str::to_string)
        .collect();
    assert!(names.len() >= 5, "few task.toml in the cookbook: {names:?}");
    for name in &names {
        let show = Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["show", &format!("HEAD:{name}")])
            .output()
            .unwrap();
        assert!(show.status.success());
        let text = String::from_utf8(show.stdout).unwrap();
        assert_valid(&v, &toml_json(&text, name), &format!("cookbook {name}"));
    }
}

#[test]
fn task_schema_refuses_what_the_parser_refuses_by_type() {
    let v = validator(Document::Task);
    for bad in [
        "[verifier]\ntimeout_sec = -1\n",
        "[agent]\ntimeout_sec = \"long\"\n",
        "[environment]\nnetwork_mode = \"sometimes\"\n",
        "[environment]\nmemory = \"lots\"\n",
        "[[steps]]\nagent = {}\n",
    ] {
        let doc = toml_json(bad, bad);
        assert!(!v.is_valid(&doc), "the task schema accepts {bad:?}");
        assert!(
            rollout_core::TaskConfig::parse(bad, Path::new("task.toml")).is_err(),
            "the parser accepts {bad:?}"
        );
    }
    // Legacy spellings and both forms of a healthcheck command are accepted.
    let ok = "version = 1.0\n[environment]\nmemory = \"2G\"\nallow_internet = false\n\
              [environment.healthcheck]\ncmd = [\"true\"]\n[agent]\nsetup_timeout_sec = 5\nuser = 1000\n";
    assert_valid(&v, &toml_json(ok, ok), ok);
    for hc in ["command = \"true\"", "test = \"true\"", "cmd = \"true\""] {
        let t = format!("[environment.healthcheck]\n{hc}\n");
        assert_valid(&v, &toml_json(&t, &t), &t);
    }
    let none = "[environment.healthcheck]\nretries = 2\n";
    assert!(
        !v.is_valid(&toml_json(none, none)),
        "a healthcheck needs its command"
    );
    rollout_core::TaskConfig::parse(ok, Path::new("task.toml")).unwrap();
}

#[test]
fn job_schema_accepts_the_example_job_files_and_refuses_unknown_keys() {
    let v = validator(Document::Job);
    for f in ["examples/job.yaml", "examples/command-agent.yaml"] {
        let text = std::fs::read_to_string(repo().join(f)).unwrap();
        let doc: Value = serde_norway::from_str(&text).unwrap();
        assert_valid(&v, &doc, f);
    }
    let aliases = serde_json::json!({
        "agents": [{"name": "oracle", "model": "m", "override_setup_timeout_sec": 5}],
        "agent_setup_timeout_multiplier": 2.0,
        "retry": {"max_attempts": 2, "initial_delay_ms": 100},
        "environment": {"type": "docker", "namespace": "extra keys go to the provider"},
    });
    assert_valid(
        &v,
        &aliases,
        "a job file with Harbor's and the seed's spellings",
    );
    let typo = serde_json::json!({"n_concurent_trials": 2});
    assert!(!v.is_valid(&typo), "the job schema accepts an unknown key");
}

#[test]
fn result_schemas_accept_old_and_new_result_files() {
    let trial_v = validator(Document::Result);
    let job_v = validator(Document::JobResult);
    let job = repo().join("tests/fixtures/results/v1-job");
    let mut trials = 0;
    for e in std::fs::read_dir(&job).unwrap() {
        let p = e.unwrap().path().join("result.json");
        if !p.is_file() {
            continue;
        }
        trials += 1;
        let old: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_valid(&trial_v, &old, &p.display().to_string());
        // Read and written again: the current shape, with Harbor's fields next to rollout's.
        let parsed: TrialResult = serde_json::from_value(old).unwrap();
        let new = serde_json::to_value(&parsed).unwrap();
        assert!(new.get("verifier_result").is_some() || new.get("agent_info").is_some());
        assert_valid(&trial_v, &new, "a rewritten trial result");
        assert!(!trial_v.is_valid(&serde_json::json!({"trial_name": 3})));
    }
    assert!(trials >= 2);
    let old: Value =
        serde_json::from_slice(&std::fs::read(job.join("result.json")).unwrap()).unwrap();
    assert_valid(&job_v, &old, "the v1 job result.json");
    let parsed: JobResult = serde_json::from_value(old).unwrap();
    assert_valid(
        &job_v,
        &serde_json::to_value(&parsed).unwrap(),
        "a rewritten job result",
    );
}

/// Every name or value anywhere in `v`: property names, `const` and `enum` values.
fn names(v: &Value, out: &mut std::collections::BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "properties" {
                    if let Some(p) = x.as_object() {
                        out.extend(p.keys().cloned());
                    }
                }
                if k == "const" || k == "enum" {
                    for c in std::iter::once(x).chain(x.as_array().into_iter().flatten()) {
                        if let Some(s) = c.as_str() {
                            out.insert(s.to_string());
                        }
                    }
                }
                names(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| names(x, out)),
        _ => {}
    }
}

#[test]
fn every_serde_alias_of_the_parser_is_in_a_schema() {
    let mut known = std::collections::BTreeSet::new();
    for doc in Document::ALL {
        names(&serde_json::to_value(doc.schema()).unwrap(), &mut known);
    }
    let src = repo().join("crates/rollout-core/src");
    let mut checked = 0;
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("#[serde("))
        {
            for part in line.split("alias = \"").skip(1) {
                let alias = part.split('"').next().unwrap();
                checked += 1;
                assert!(
                    known.contains(alias),
                    "{}: `alias = \"{alias}\"` is accepted by the parser but missing from the \
                     schemas: add it to ALIASES in crates/rollout-core/src/schema.rs",
                    p.display()
                );
            }
        }
    }
    assert!(checked >= 10, "only {checked} aliases found");
}
