//! The tracer alone, without recording: `trace CMD ARGS…` runs CMD traced and prints on stderr
//! how many files it read and wrote and how many syscall stops that took (for
//! `scripts/bench-trace`).

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let opts = rollout_trace::TraceOptions::new(argv);
    match rollout_trace::trace(&opts) {
        Ok(t) => {
            eprintln!(
                "reads {} writes {} execs {} processes {} stops {}",
                t.reads.len(),
                t.writes.len(),
                t.execs.len(),
                t.processes,
                t.stops
            );
            std::process::exit(t.exit.status());
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(127);
        }
    }
}
