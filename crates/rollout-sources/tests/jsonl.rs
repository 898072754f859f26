//! `task_boundary_v2` row files as a user has them: the fixtures in `tests/fixtures/jsonl/`.

use rollout_sources::jsonl::{load_rows, materialize, require_images, LineError, RowError};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/jsonl")
        .join(name)
}

#[test]
fn good_rows_load_and_become_runnable_task_directories() {
    let rows = load_rows(&fixture("good.jsonl")).unwrap();
    let ids: Vec<(usize, &str)> = rows.iter().map(|r| (r.line, r.id.as_str())).collect();
    assert_eq!(
        ids,
        [(1, "hello-image"), (3, "hello-files"), (4, "no-grader")]
    );
    assert_eq!(require_images(&rows), Ok(()));

    let tmp = tempfile::tempdir().unwrap();
    for row in &rows {
        let dir = materialize(row, tmp.path()).unwrap();
        let task = rollout_core::Task::load_or_invalid(&dir).unwrap();
        assert_eq!(task.name, row.id);
        // Only the row without a grader cannot run: nothing would score it.
        assert_eq!(
            task.invalid.is_some(),
            row.id == "no-grader",
            "{:?}",
            task.invalid
        );
    }
    let files = tmp.path().join("hello-files");
    assert_eq!(
        std::fs::read_to_string(files.join("environment/workspace/calc.py")).unwrap(),
        "def add(a, b):\n    return a - b\n"
    );
    assert!(
        std::fs::read_to_string(files.join("environment/Dockerfile"))
            .unwrap()
            .starts_with("FROM python:3.12-slim\n")
    );
    let row_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(files.join("row.json")).unwrap()).unwrap();
    assert_eq!(row_json["limits"]["max_steps"], 20);
    assert!(!tmp.path().join("no-grader/tests/test.sh").exists());
}

#[test]
fn one_bad_row_is_reported_exactly() {
    let path = fixture("one_bad_row.jsonl");
    let err = load_rows(&path).unwrap_err();
    let RowError::Invalid { origin, errors } = &err else {
        panic!("{err}")
    };
    assert_eq!(origin, &path);
    assert_eq!(
        errors,
        &[LineError {
            line: 2,
            message: "mount_references[0] must be read-only (read_only: false is not allowed)"
                .into()
        }]
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{}:2: mount_references[0] must be read-only (read_only: false is not allowed)",
            path.display()
        )
    );
}

#[test]
fn per_task_mode_names_the_row_without_an_image() {
    let text = std::fs::read_to_string(fixture("one_bad_row.jsonl")).unwrap();
    // Without the bad row, the file is valid; its last row has no image.
    let good: String = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    let rows = rollout_sources::jsonl::parse_rows(&good, &fixture("one_bad_row.jsonl")).unwrap();
    assert_eq!(
        require_images(&rows).unwrap_err(),
        "task.image is required for task 'also-fine' when runtime.agent.image_source='per_task'"
    );
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() {
    let err = load_rows(&fixture("absent.jsonl")).unwrap_err();
    assert!(matches!(err, RowError::Io { .. }));
    assert!(
        err.to_string()
            .starts_with(&format!("reading {}: ", fixture("absent.jsonl").display())),
        "{err}"
    );
}
