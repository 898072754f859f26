//! `rollout report`: the HTML is self-contained (no network reference), survives hostile job
//! content, and renders in a real browser to the expected structure.

mod support;

use rollout_view::{report, synth};
use std::path::Path;

fn job(tmp: &Path, n: usize) -> std::path::PathBuf {
    let dir = tmp.join("synthetic-job");
    synth::write_job(&dir, "synthetic-job", n, 3, 7).unwrap();
    dir
}

#[test]
fn the_report_has_no_external_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = job(tmp.path(), 12);
    let (html, w) = report::render(&dir);
    assert_eq!((w.trials, w.detailed), (12, 12));
    let lower = html.to_ascii_lowercase();
    for bad in [
        "http://",
        "https://",
        "@import",
        "url(",
        " src=",
        " href=\"/",
        "//cdn",
    ] {
        assert!(!lower.contains(bad), "the report contains {bad:?}");
    }
    // One inline style, one data block, one inline script: nothing else is loaded.
    assert_eq!(lower.matches("<script").count(), 2);
    assert_eq!(lower.matches("<link").count(), 0);
    assert_eq!(lower.matches("<style").count(), 1);
}

#[test]
fn hostile_job_content_stays_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = job(tmp.path(), 2);
    // A trial whose result, log and trajectory carry markup meant to escape the data block.
    let evil = dir.join("task-0000__llm__1");
    let mut r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(evil.join("result.json")).unwrap()).unwrap();
    r["task_name"] = "</script><script>alert(1)</script><!--".into();
    r["error"] =
        serde_json::json!({"type": "agent_error", "message": "<img src=https://evil.invalid/x>"});
    std::fs::write(evil.join("result.json"), serde_json::to_vec(&r).unwrap()).unwrap();
    std::fs::write(
        evil.join("agent/stdout.txt"),
        "</SCRIPT><script src=//evil.invalid/a.js></script>",
    )
    .unwrap();
    let (html, _) = report::render(&dir);
    let lower = html.to_ascii_lowercase();
    assert_eq!(
        lower.matches("</script>").count(),
        2,
        "job content closed a script element"
    );
    assert!(!lower.contains("<!--"));
    assert!(!lower.contains("<img"));
    // The content is still there, as text.
    assert!(html.contains("\\u003c/script>\\u003cscript>alert(1)"));
}

#[test]
fn the_report_renders_the_job_and_its_trials_in_a_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = job(tmp.path(), 12);
    let out = support::artifacts_dir("report").join("report.html");
    let w = report::write_report(&dir, &out).unwrap();
    assert!(w.bytes > 0 && std::fs::metadata(&out).unwrap().len() == w.bytes as u64);
    let url = format!("file://{}", out.canonicalize().unwrap().display());

    let dom = support::dump_dom(&url);
    assert!(
        dom.contains("data-ready=\"1\""),
        "the app did not finish:\n{dom}"
    );
    assert_eq!(dom.matches("class=\"trial-row\"").count(), 12, "{dom}");
    assert!(dom.contains("task-0002__llm__2"));
    insta::assert_snapshot!("report_job_page", support::outline(&dom));

    let trial = format!("{url}#/trials/task-0001__llm__1");
    let dom = support::dump_dom(&trial);
    assert!(
        dom.contains("Solve task-0001"),
        "instruction missing:\n{dom}"
    );
    assert!(
        dom.contains("echo 42 &gt; /app/answer.txt"),
        "tool call missing"
    );
    assert_eq!(dom.matches("class=\"step source-").count(), 3);
    insta::assert_snapshot!("report_trial_page", support::outline(&dom));
    support::screenshot(
        &url,
        &support::artifacts_dir("report").join("report.png"),
        1400,
        1000,
    );
}
