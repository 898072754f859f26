//! Benchmark of `rollout view` and `rollout report` on a synthetic job (run by
//! `scripts/bench-view`, built in release there). Prints one `name value unit` line per number.

use rollout_view::{index, report, server, synth};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn get(addr: &str, path: &str) -> (Duration, usize) {
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    assert!(buf.starts_with(b"HTTP/1.1 200"), "GET {path} failed");
    (t.elapsed(), buf.len())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut trials = 10_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--trials" => {
                trials = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--trials N")
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bench-job");
    let t = Instant::now();
    synth::write_job(&dir, "bench-job", trials, trials / 20, 42).unwrap();
    println!("generate_job {:.0} ms ({trials} trials)", ms(t.elapsed()));
    // A job is viewed after it ran, not while the kernel still writes its files out: flush
    // them first, so the cold read measures the viewer and not the generator's write-back.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };

    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let catalog = Arc::new(index::Catalog::new(vec![tmp.path().to_path_buf()]));
    rt.spawn(async move { axum::serve(listener, server::router(catalog)).await });

    let (cold, bytes) = get(&addr, "/api/jobs/bench-job");
    println!(
        "job_page_cold {:.1} ms (first read of {trials} trials, {bytes} bytes)  goal <= 200 ms: {}",
        ms(cold),
        verdict(ms(cold) <= 200.0)
    );
    let cached = median(
        (0..20)
            .map(|_| ms(get(&addr, "/api/jobs/bench-job").0))
            .collect(),
    );
    println!(
        "job_page_cached_p50 {cached:.1} ms  goal <= 200 ms: {}",
        verdict(cached <= 200.0)
    );
    let mut refreshed = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(index::REFRESH_EVERY + Duration::from_millis(50));
        refreshed.push(ms(get(&addr, "/api/jobs/bench-job").0));
    }
    let refreshed = median(refreshed);
    println!(
        "job_page_refreshed_p50 {refreshed:.1} ms (one stat per trial, nothing changed)  goal <= 200 ms: {}",
        verdict(refreshed <= 200.0)
    );
    let (shell, _) = get(&addr, "/jobs/bench-job");
    println!("job_page_html {:.1} ms", ms(shell));
    let (list, _) = get(&addr, "/api/jobs");
    println!("job_list {:.1} ms", ms(list));

    let out = tmp.path().join("report.html");
    let t = Instant::now();
    let w = report::write_report(&dir, &out).unwrap();
    let took = t.elapsed();
    println!(
        "report_write {:.0} ms ({} trials, {} with details)  goal <= 2 s: {}",
        ms(took),
        w.trials,
        w.detailed,
        verdict(took <= Duration::from_secs(2))
    );
    println!(
        "report_size {:.2} MB  goal <= 10 MB: {}",
        w.bytes as f64 / 1e6,
        verdict(w.bytes <= 10_000_000)
    );
    let all = ms(cold).max(refreshed).max(cached) <= 200.0
        && took <= Duration::from_secs(2)
        && w.bytes <= 10_000_000;
    println!("all goals: {}", verdict(all));
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}
