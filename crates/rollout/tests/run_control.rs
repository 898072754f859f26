//! Run control from another terminal: pause, resume, kill, list, show.

mod common;

use common::*;
use std::path::Path;
use std::process::Stdio;

fn jobs(args: &[&str]) -> std::process::Output {
    rollout_cmd().arg("jobs").args(args).output().unwrap()
}

fn trial_dirs(job: &Path) -> usize {
    std::fs::read_dir(job).map_or(0, |d| d.flatten().filter(|e| e.path().is_dir()).count())
}

#[test]
fn pause_stops_new_trials_and_resume_finishes_the_job() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job");
    let child = rollout_cmd()
        .args([
            "run",
            "-p",
            fixture("slow-solve").to_str().unwrap(),
            "-a",
            "oracle",
            "-k",
            "3",
            "-n",
            "1",
        ])
        .args(["-o", tmp.path().to_str().unwrap(), "--job-name", "job"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the first trial to start its agent", 180, || {
        std::fs::read_to_string(job.join("slow-solve__oracle__1/trial.log"))
            .is_ok_and(|l| l.contains("agent_run started"))
    });
    let out = jobs(&["pause", job.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read_json(&job.join("run_control.json"))["status"], "paused");
    // The running trial finishes; nothing new starts while paused.
    wait_for("the running trial to finish", 120, || {
        job.join("slow-solve__oracle__1/result.json").is_file()
    });
    wait_for("no active trial", 30, || {
        read_json(&job.join("run_control.json"))["active_trials"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    assert_eq!(
        trial_dirs(&job),
        1,
        "a trial started while the job was paused"
    );
    let show = jobs(&["show", job.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&show.stdout).contains("paused"),
        "{}",
        String::from_utf8_lossy(&show.stdout)
    );

    let out = jobs(&["resume", job.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read_json(&job.join("result.json"))["stats"]["n_trials"], 3);
    assert_eq!(
        read_json(&job.join("run_control.json"))["status"],
        "completed"
    );
    let list = jobs(&["list", "-o", tmp.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("job") && text.contains("completed") && text.contains("3/3"),
        "{text}"
    );
}

#[test]
fn kill_cancels_a_running_job_from_another_terminal() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job");
    let child = rollout_cmd()
        .args([
            "run",
            "-p",
            fixture("agent-hangs").to_str().unwrap(),
            "-a",
            "oracle",
            "-k",
            "2",
            "-n",
            "2",
            "--timeout-multiplier",
            "100",
        ])
        .args(["-o", tmp.path().to_str().unwrap(), "--job-name", "job"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the agents to start", 180, || {
        (1..=2).all(|i| {
            std::fs::read_to_string(job.join(format!("agent-hangs__oracle__{i}/trial.log")))
                .is_ok_and(|l| l.contains("agent_run started"))
        })
    });
    let out = jobs(&["kill", job.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let control = read_json(&job.join("run_control.json"));
    assert_eq!(control["status"], "killed");
    assert_eq!(
        read_json(&job.join("result.json"))["stats"]["n_cancelled"],
        2
    );
    assert_no_containers(control["run_id"].as_str().unwrap());
    let again = jobs(&["pause", job.to_str().unwrap()]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "a finished job cannot be paused"
    );
}
