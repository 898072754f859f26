//! `rollout view` in a real browser (headless Chromium) over real jobs run against the Docker
//! engine: the job list, a job page, a trial page with the built-in agent's trajectory (driven
//! by the scripted model server), a comparison; the file API's guards; live refresh.

#[path = "../../rollout-view/tests/support/mod.rs"]
mod browser;
mod common;

use common::fake_llm::{final_answer, serve, tool_call, Script};
use common::*;
use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::{Child, Stdio};

/// `rollout view` on a free port, stopped when dropped.
struct Viewer {
    child: Child,
    base: String,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_viewer(dirs: &[&Path]) -> Viewer {
    let mut child = rollout_cmd()
        .arg("view")
        .args(dirs)
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        if let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("rollout view printed no address within 60 s");
    let start = line.find("http://").expect("address in the first line");
    let base = line[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    Viewer { child, base }
}

/// A plain HTTP/1.1 GET; returns (status, body).
fn get(base: &str, path: &str) -> (u16, Vec<u8>) {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("http head");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = buf[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
    out
}

fn get_json(base: &str, path: &str) -> serde_json::Value {
    let (status, body) = get(base, path);
    assert_eq!(
        status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap()
}

fn run_jobs(jobs: &Path, llm: &str) {
    require_docker();
    let hello = example("hello-world");
    for (name, agents) in [
        ("job-a", vec!["oracle"]),
        ("job-b", vec!["oracle", "nop", "rollout-agent"]),
    ] {
        let mut c = rollout_cmd();
        c.env("OPENAI_BASE_URL", llm)
            .env("OPENAI_API_KEY", "test-key")
            .args(["run", "-p", hello.to_str().unwrap(), "-m", "fake-model"]);
        for a in agents {
            c.args(["-a", a]);
        }
        let out = c
            .args(["-o", jobs.to_str().unwrap(), "--job-name", name])
            .output()
            .unwrap();
        assert!(
            jobs.join(name).join("result.json").is_file(),
            "job {name} wrote no result.json; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_viewer_shows_real_jobs_in_a_browser() {
    let script = Script::default();
    *script.replies.lock().unwrap() = vec![
        (
            200,
            tool_call(
                "call-1",
                "printf 'Hello, world!' > /app/hello.txt && cat /app/hello.txt",
            ),
        ),
        (200, final_answer("Created /app/hello.txt.")),
    ];
    let llm = serve(script);
    let tmp = tempfile::tempdir().unwrap();
    let jobs = tmp.path().join("jobs");
    run_jobs(&jobs, &llm);
    // An artifact link planted by an agent pointing out of the job directory.
    let agent_trial = "hello-world__rollout-agent__1";
    let art = jobs.join("job-b").join(agent_trial).join("artifacts");
    std::fs::create_dir_all(&art).unwrap();
    std::fs::write(art.join("report.txt"), "artifact body").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", art.join("passwd")).unwrap();

    let v = start_viewer(&[&jobs]);
    let shots = browser::artifacts_dir("viewer");

    // The API the pages read.
    let list = get_json(&v.base, "/api/jobs");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["job-a", "job-b"]);
    let job = get_json(&v.base, "/api/jobs/job-b");
    let rewards: Vec<(String, serde_json::Value)> = job["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["agent"].as_str().unwrap().to_string(),
                t["reward"].clone(),
            )
        })
        .collect();
    assert_eq!(
        rewards,
        [
            ("nop".to_string(), serde_json::json!(0.0)),
            ("oracle".to_string(), serde_json::json!(1.0)),
            ("rollout-agent".to_string(), serde_json::json!(1.0)),
        ]
    );

    // The job list.
    let dom = browser::dump_dom(&format!("{}/", v.base));
    assert!(dom.contains("data-ready=\"1\""), "{dom}");
    assert!(
        dom.contains("data-job=\"job-a\"") && dom.contains("data-job=\"job-b\""),
        "{dom}"
    );
    assert!(
        dom.contains(">rollout-agent<") && dom.contains(">100.0%<"),
        "{dom}"
    );
    browser::screenshot(&format!("{}/", v.base), &shots.join("jobs.png"), 1400, 700);

    // The job page: one row per trial with its reward.
    let url = format!("{}/jobs/job-b", v.base);
    let dom = browser::dump_dom(&url);
    assert_eq!(dom.matches("class=\"trial-row\"").count(), 3, "{dom}");
    for (trial, reward) in [
        ("hello-world__nop__1", "0.000"),
        ("hello-world__oracle__1", "1.000"),
        (agent_trial, "1.000"),
    ] {
        let row = dom
            .split(&format!("data-trial=\"{trial}\""))
            .nth(1)
            .unwrap_or_else(|| panic!("no row {trial}"));
        let row = &row[..row.find("</tr>").unwrap()];
        assert!(
            row.contains(&format!("class=\"num reward\">{reward}<")),
            "{trial}: {row}"
        );
    }
    assert!(dom.contains("id=\"reward-hist\"") && dom.contains("id=\"phase-bars\""));
    // Bar lengths are set through the CSSOM, which the page's CSP allows.
    assert!(
        dom.contains("class=\"bar\" style=\"width: "),
        "bars have no length: {dom}"
    );
    browser::screenshot(&url, &shots.join("job.png"), 1400, 1100);

    // The trial page of the built-in agent: its trajectory step by step.
    let url = format!("{}/jobs/job-b/trials/{agent_trial}", v.base);
    let dom = browser::dump_dom(&url);
    assert!(dom.contains("class=\"tool-name\">bash<"), "{dom}");
    assert!(
        dom.contains("printf 'Hello, world!' &gt; /app/hello.txt"),
        "{dom}"
    );
    assert!(dom.contains("class=\"tool-output\"") && dom.contains("Hello, world!"));
    assert!(
        dom.contains("Created /app/hello.txt."),
        "final answer missing"
    );
    assert!(dom.matches("class=\"step source-").count() >= 2);
    assert!(dom.contains("id=\"instruction\""), "instruction missing");
    assert!(dom.contains("/artifacts/report.txt"));
    assert!(
        !dom.contains("/artifacts/passwd"),
        "a link out of the job is listed"
    );
    browser::screenshot(&url, &shots.join("trial.png"), 1400, 1400);

    // Compare the two jobs.
    let url = format!("{}/compare?a=job-a&b=job-b", v.base);
    let dom = browser::dump_dom(&url);
    assert!(
        dom.contains("id=\"compare-tasks\"") && dom.contains(">hello-world<"),
        "{dom}"
    );
    assert!(
        dom.contains("100.0% (1/1)") && dom.contains("66.7% (2/3)"),
        "{dom}"
    );
    browser::screenshot(&url, &shots.join("compare.png"), 1400, 700);

    // Files: inside the job only, never through a link.
    let base = format!("/api/jobs/job-b/files/{agent_trial}/artifacts");
    let (s, body) = get(&v.base, &format!("{base}/report.txt"));
    assert_eq!((s, body.as_slice()), (200, b"artifact body".as_slice()));
    for bad in [
        format!("{base}/passwd"),
        "/api/jobs/job-b/files/..%2F..%2F..%2Fetc%2Fpasswd".to_string(),
        "/api/jobs/job-b/files/%2Fetc%2Fpasswd".to_string(),
        "/api/jobs/job-b/files/../../etc/passwd".to_string(),
    ] {
        let (s, body) = get(&v.base, &bad);
        assert_eq!(s, 404, "{bad} served: {}", String::from_utf8_lossy(&body));
        assert!(!String::from_utf8_lossy(&body).contains("root:"));
    }
}

#[test]
fn the_viewer_picks_up_trials_of_a_running_job() {
    let tmp = tempfile::tempdir().unwrap();
    let jobs = tmp.path().join("jobs");
    let job = jobs.join("live");
    rollout_view::synth::write_job(&job, "live", 2, 1, 1).unwrap();
    // Make it a running job: no job result yet, a run_control.json owned by a live rollout
    // process (the viewer itself), one trial still running.
    std::fs::remove_file(job.join("result.json")).unwrap();
    let later = job.join("task-0000__nop__1");
    let done = std::fs::read(later.join("result.json")).unwrap();
    std::fs::remove_file(later.join("result.json")).unwrap();
    std::fs::write(
        later.join("config.json"),
        r#"{"trial_name":"task-0000__nop__1","task_name":"task-0000","agent":{"name":"nop"}}"#,
    )
    .unwrap();
    let v = start_viewer(&[&jobs]);
    let control = serde_json::json!({"schema_version": "1.0", "run_id": "live", "job_name": "live", "status": "running",
        "pid": v.child.id(), "host": std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim(),
        "active_trials": ["task-0000__nop__1"], "started_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"});
    std::fs::write(job.join("run_control.json"), control.to_string()).unwrap();

    let status = |v: &Viewer| {
        let j = get_json(&v.base, "/api/jobs/live");
        let statuses: Vec<String> = j["trials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["status"].as_str().unwrap().to_string())
            .collect();
        (
            j["summary"]["status"].as_str().unwrap().to_string(),
            statuses,
        )
    };
    wait_for("the job to show as running", 30, || {
        status(&v) == ("running".into(), vec!["ok".into(), "running".into()])
    });
    std::fs::write(later.join("result.json"), done).unwrap();
    wait_for("the finished trial to show", 30, || {
        status(&v).1 == ["ok", "ok"]
    });
    let dom = browser::dump_dom(&format!("{}/jobs/live", v.base));
    assert_eq!(dom.matches("class=\"trial-row\"").count(), 2);
    assert!(
        dom.contains("status status-running"),
        "the job's running state is shown: {dom}"
    );
}
