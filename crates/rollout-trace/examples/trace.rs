//! The tracer alone, without recording: `trace CMD ARGS…` runs CMD traced and prints on stderr
//! how many files it read and wrote and how many syscall stops that took (for
//! `scripts/bench-trace`). `ROLLOUT_TRACE_MECHANISM=fanotify|seccomp-notify|ptrace` picks the
//! mechanism (default: fanotify where the host allows it).

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut opts = rollout_trace::TraceOptions::new(argv);
    match std::env::var("ROLLOUT_TRACE_MECHANISM").as_deref() {
        Ok("ptrace") => opts.mechanism = rollout_trace::Mechanism::Ptrace,
        Ok("seccomp-notify") => opts.mechanism = rollout_trace::Mechanism::UserNotif,
        _ => {}
    }
    match rollout_trace::trace(&opts) {
        Ok(t) => {
            eprintln!(
                "reads {} writes {} execs {} processes {} stops {} unresolved {} via {}",
                t.reads.len(),
                t.writes.len(),
                t.execs.len(),
                t.processes,
                t.stops,
                t.unresolved,
                t.mechanism.as_str()
            );
            if let Some(why) = &t.fallback {
                eprintln!("({why})");
            }
            std::process::exit(t.exit.status());
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(127);
        }
    }
}
