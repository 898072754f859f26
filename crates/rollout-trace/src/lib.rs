//! A file-access tracer for Linux x86_64 and aarch64: runs a command and records which files
//! its whole process tree read, wrote, removed and executed.
//!
//! Where the host allows it (root with `CAP_SYS_ADMIN`, Linux ≥ 5.9), fanotify filesystem marks
//! report the accesses without stopping the program (see [`Mechanism::Fanotify`]); ptrace then
//! only follows the process tree. Otherwise a seccomp-bpf filter installed in the child hands only the file syscalls that name a path
//! (open/openat/openat2/creat, rename*, link*, symlink*, unlink*, truncate, execve*) and
//! chdir/fchdir to the tracer; everything else (read, write, stat, close, mmap …) runs at full
//! speed. The tracer receives them through seccomp user notification where the kernel allows a
//! listener (Linux ≥ 5.5, no enclosing filter with one), else as ptrace seccomp stops (see
//! [`Mechanism`]). Fork, vfork, clone and exec are followed through ptrace options. Paths are
//! resolved against the process's working directory or the `dirfd` (`/proc/<pid>/cwd`,
//! `/proc/<pid>/fd/<n>`) and recorded at syscall entry; whether an opened file really existed is
//! decided afterwards by the caller (a read of a path that is not a regular file when the command
//! ends is not an input).
//!
//! Not for: 32-bit, x32 or arm32 compat tracees (their syscalls are not stopped), other architectures, or a
//! process that has other children of its own while tracing (the tracer waits for any child).

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod fanotify;
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod linux;

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// What to run and how.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// The program and its arguments (`argv[0]` is looked up in `PATH` when it has no `/`).
    pub argv: Vec<OsString>,
    /// Working directory (default: the current one).
    pub cwd: Option<PathBuf>,
    /// Environment (default: the current one).
    pub env: Option<Vec<(OsString, OsString)>>,
    /// Kill the whole traced tree after this long.
    pub timeout: Option<Duration>,
    /// Paths under these prefixes are not recorded (default: `/proc`, `/sys`, `/dev`).
    pub ignore_prefixes: Vec<PathBuf>,
    /// How the file accesses reach the tracer (default: [`Mechanism::Fanotify`], falling back
    /// to seccomp user notification, then to ptrace stops, as far as the host refuses).
    pub mechanism: Mechanism,
    /// Each path the first time it is recorded as read, sent while the command still runs, so
    /// that a caller can start on the inputs (stat, hash) before the command ends. A path sent
    /// here may still be written later (then it is not in [`Trace::reads`]); a receiver that
    /// hangs up does not stop the trace.
    pub on_read: Option<std::sync::mpsc::Sender<PathBuf>>,
}

/// How the traced file accesses reach the tracer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mechanism {
    /// fanotify filesystem marks: the kernel queues an event per file closed, created,
    /// removed, renamed or executed and the program does not wait for the tracer (no stop per
    /// file syscall; ptrace only follows fork, clone and exec). Needs `CAP_SYS_ADMIN` and
    /// filesystems that report file handles; falls back to [`Mechanism::UserNotif`]
    /// otherwise. Differences: paths are where the files really are (symlinked directories
    /// resolved), `truncate(2)` on a path is not seen, a file opened `O_RDWR` counts as
    /// written.
    #[default]
    Fanotify,
    /// seccomp user notification: the caller blocks in the kernel while a supervisor thread
    /// reads its arguments (no ptrace stop, no register fetch); about 60% of the cost of a
    /// ptrace stop. Falls back to [`Mechanism::Ptrace`] when no listener can be created.
    UserNotif,
    /// A ptrace stop per syscall (`SECCOMP_RET_TRACE`).
    Ptrace,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Fanotify => "fanotify",
            Mechanism::UserNotif => "seccomp-notify",
            Mechanism::Ptrace => "ptrace",
        }
    }
}

impl TraceOptions {
    /// Trace `argv` in the current directory and environment with the default filters.
    pub fn new(argv: Vec<OsString>) -> Self {
        TraceOptions {
            argv,
            cwd: None,
            env: None,
            timeout: None,
            ignore_prefixes: DEFAULT_IGNORED.iter().map(PathBuf::from).collect(),
            mechanism: Mechanism::default(),
            on_read: None,
        }
    }
}

/// Pseudo-filesystems never recorded.
pub const DEFAULT_IGNORED: &[&str] = &["/proc", "/sys", "/dev"];

/// How the traced command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The exit status a shell would report (128 + signal for a signal).
    pub fn status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// What a traced command did to files. Paths are absolute and lexically normalised; the sets
/// have no order (sort what you show).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub exit: Exit,
    /// The timeout killed the command.
    pub timed_out: bool,
    /// Paths opened for reading before the command wrote them (may include paths that did not
    /// exist or are directories: filter with the file system).
    pub reads: HashSet<PathBuf>,
    /// Paths created, opened for writing, truncated, or made by rename/link/symlink, and not
    /// removed or renamed away afterwards.
    pub writes: HashSet<PathBuf>,
    /// Paths removed (unlink, or renamed away) that existed before the command wrote them.
    pub removed: HashSet<PathBuf>,
    /// Programs passed to execve (resolved like the others).
    pub execs: HashSet<PathBuf>,
    /// Processes and threads seen, the root included.
    pub processes: u64,
    /// Syscalls handed to the tracer, or with fanotify the events of the traced tree (a
    /// measure of tracing cost).
    pub stops: u64,
    /// Path arguments the tracer could not read from the caller's memory (a bad pointer, or
    /// memory access refused): those syscalls are missing from the sets above.
    pub unresolved: u64,
    /// The mechanism that delivered them.
    pub mechanism: Mechanism,
    /// Why the requested mechanism was not the one used (the host refused it).
    pub fallback: Option<String>,
}

/// Why a command could not be traced.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("nothing to run: give a command after --")]
    NoCommand,
    #[error("{0}: command not found in PATH")]
    NotFound(String),
    #[error("cannot start {program}: {step} failed: {source}")]
    Spawn {
        program: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("tracing {program} failed: {what}: {source} (is ptrace allowed here? check kernel.yama.ptrace_scope and the container's seccomp profile)")]
    Ptrace {
        program: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("tracing is only available on Linux x86_64 and aarch64")]
    Unsupported,
}

/// Run the command under the tracer until it and every process it started have exited.
/// SIGINT and SIGQUIT are ignored by the calling process meanwhile (the command gets them).
/// Calls in one process run one at a time.
pub fn trace(opts: &TraceOptions) -> Result<Trace, TraceError> {
    if opts.argv.is_empty() {
        return Err(TraceError::NoCommand);
    }
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    {
        // The tracer forks the command and waits only for its own thread's children and
        // tracees, on a thread of its own: a child the caller (or any other thread) started
        // keeps its exit status. Traces still take turns: one tracer per process is enough
        // and keeps the fanotify marks simple.
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("rollout-trace".into())
                .spawn_scoped(s, || linux::trace(opts))
                .map_err(|e| TraceError::Spawn {
                    program: opts.argv[0].to_string_lossy().into_owned(),
                    step: "starting the tracer thread",
                    source: e,
                })?
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    {
        Err(TraceError::Unsupported)
    }
}

/// Lexically normalise an absolute path: drop `.`, resolve `..`, collapse slashes.
pub fn normalize(path: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(all(
    test,
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod tests {
    use super::*;
    use std::fs;

    fn sh_with(dir: &std::path::Path, script: &str, mechanism: Mechanism) -> Trace {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut o = TraceOptions::new(vec!["sh".into(), "-c".into(), script.into()]);
        o.cwd = Some(dir.to_path_buf());
        o.timeout = Some(Duration::from_secs(60));
        o.mechanism = mechanism;
        o.on_read = Some(tx);
        let t = trace(&o).unwrap();
        drop(o);
        // Every path recorded as read was also sent, once.
        let sent: Vec<PathBuf> = rx.into_iter().collect();
        let unique: HashSet<PathBuf> = sent.iter().cloned().collect();
        assert_eq!(unique.len(), sent.len(), "a path sent twice: {sent:?}");
        assert_eq!(unique, t.reads, "{mechanism:?}");
        t
    }

    fn sh(dir: &std::path::Path, script: &str) -> Trace {
        sh_with(dir, script, Mechanism::default())
    }

    #[test]
    fn records_reads_writes_renames_and_children() {
        for mechanism in [Mechanism::Fanotify, Mechanism::UserNotif, Mechanism::Ptrace] {
            records_with(mechanism);
        }
    }

    #[test]
    fn the_command_runs_at_the_caller_s_priority_and_the_caller_gets_it_back() {
        let d = tempfile::tempdir().unwrap();
        // SAFETY: plain syscalls on this thread.
        let tid = unsafe { libc::gettid() } as libc::id_t;
        let before = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
        let out = d.path().join("nice");
        let t = sh(
            d.path(),
            &format!("cut -d' ' -f19 /proc/self/stat > {}", out.display()),
        );
        assert_eq!(t.exit, Exit::Code(0));
        // The tracing thread ran raised (this test runs as root here), the command did not.
        let nice: i32 = fs::read_to_string(&out).unwrap().trim().parse().unwrap();
        assert_eq!(nice, before, "the command's nice value");
        assert_eq!(
            unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) },
            before
        );
    }

    fn records_with(mechanism: Mechanism) {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().canonicalize().unwrap();
        fs::write(dir.join("in.txt"), "hello\n").unwrap();
        fs::create_dir(dir.join("sub")).unwrap();
        let t = sh_with(
            &dir,
            "cat in.txt > tmp.txt && (cd sub && cat ../in.txt | tr a-z A-Z > up.txt) && mv tmp.txt out.txt && rm -f gone.txt; exit 3",
            mechanism,
        );
        // This kernel allows a listener (Linux >= 5.5, no enclosing one), so the requested
        // mechanism is the one used.
        assert_eq!(t.mechanism, mechanism);
        assert!(t.stops > 0, "{t:?}");
        assert_eq!(t.unresolved, 0, "{t:?}");
        assert_eq!(t.exit, Exit::Code(3));
        assert!(t.reads.contains(&dir.join("in.txt")), "{t:?}");
        assert!(t.writes.contains(&dir.join("out.txt")), "{t:?}");
        assert!(t.writes.contains(&dir.join("sub/up.txt")), "{t:?}");
        assert!(
            !t.writes.contains(&dir.join("tmp.txt")),
            "renamed away: {t:?}"
        );
        assert!(t.execs.iter().any(|p| p.ends_with("cat")), "{t:?}");
        assert!(t.execs.iter().any(|p| p.ends_with("tr")), "{t:?}");
        assert!(t.processes >= 3, "{t:?}");
        assert!(t
            .reads
            .iter()
            .all(|p| !p.starts_with("/proc") && !p.starts_with("/dev")));
    }

    /// Directory fds are cached by (pid, fd): a closed and reused fd number must resolve to
    /// its new directory, and a non-directory fd passed as dirfd (a pipe) must not be held open
    /// by the tracer (the reader would never see EOF and the test would time out).
    #[test]
    fn dirfd_reuse_and_pipes_as_dirfd() {
        for mechanism in [Mechanism::Fanotify, Mechanism::UserNotif, Mechanism::Ptrace] {
            let d = tempfile::tempdir().unwrap();
            let dir = d.path().canonicalize().unwrap();
            for sub in ["a", "b"] {
                fs::create_dir(dir.join(sub)).unwrap();
                fs::write(dir.join(sub).join("f.txt"), sub).unwrap();
            }
            let script = r#"
import os
fds = []
for sub in ("a", "b"):
    d = os.open(sub, os.O_RDONLY | os.O_DIRECTORY)
    fds.append(d)
    os.close(os.open("f.txt", os.O_RDONLY, dir_fd=d))
    os.close(d)
assert fds[0] == fds[1], fds
r, w = os.pipe()
try:
    os.open("x", os.O_RDONLY, dir_fd=w)
except NotADirectoryError:
    pass
os.close(w)
assert os.read(r, 1) == b""
"#;
            let mut o = TraceOptions::new(vec!["python3".into(), "-c".into(), script.into()]);
            o.cwd = Some(dir.clone());
            o.timeout = Some(Duration::from_secs(60));
            o.mechanism = mechanism;
            let t = trace(&o).unwrap();
            assert!(!t.timed_out, "{mechanism:?}: the pipe was held open");
            assert_eq!(t.exit, Exit::Code(0), "{mechanism:?}: {t:?}");
            assert!(
                t.reads.contains(&dir.join("a/f.txt")),
                "{mechanism:?}: {t:?}"
            );
            assert!(
                t.reads.contains(&dir.join("b/f.txt")),
                "{mechanism:?}: {t:?}"
            );
            assert!(
                t.reads.iter().all(|p| p.is_absolute() && !p.ends_with("x")),
                "{mechanism:?}: {t:?}"
            );
        }
    }

    /// A child the caller started before the trace, exited and not yet waited for, keeps its
    /// exit status: the tracer must not reap it.
    #[test]
    fn the_callers_own_children_keep_their_exit_status() {
        let mut mine = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        // Block until it has exited, without reaping it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                mine.id(),
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        let d = tempfile::tempdir().unwrap();
        for mechanism in [Mechanism::Ptrace, Mechanism::Fanotify] {
            let t = sh_with(d.path(), "true", mechanism);
            assert_eq!(t.exit, Exit::Code(0), "{mechanism:?}: {t:?}");
        }
        let status = mine.wait().expect("the trace reaped the caller's child");
        assert_eq!(status.code(), Some(7));
    }

    /// fanotify sees every filesystem event on the host: only the traced tree's may count. A
    /// process the test starts beside the trace writes into the same directory all along.
    #[test]
    fn fanotify_records_only_the_traced_tree() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().canonicalize().unwrap();
        fs::write(dir.join("old.txt"), "old").unwrap();
        fs::write(dir.join("old2.txt"), "old").unwrap();
        // Stops when `stop` appears, or after 2 minutes if the test failed.
        let started = std::process::Command::new("sh")
            .arg("-c")
            .arg("(timeout 120 sh -c 'i=0; while [ ! -e stop ]; do i=$((i+1)); echo $i > n$((i % 50)).txt; cat old.txt > /dev/null; done'; echo > stopped) &")
            .current_dir(&dir)
            .status()
            .unwrap();
        assert!(started.success());
        // The traced tree: a grandchild in the background, a file made and removed, an old
        // file removed, 2000 files written (the queue must not drop any). It starts once the
        // neighbour is writing.
        let t = sh_with(
            &dir,
            "while [ ! -e n1.txt ]; do :; done; (mkdir -p deep/er && for i in $(seq 1 2000); do echo $i > deep/er/f$i; done) & \
             echo tmp > scratch.txt; rm scratch.txt; rm old2.txt; wait; echo done > out.txt",
            Mechanism::Fanotify,
        );
        fs::write(dir.join("stop"), "").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !dir.join("stopped").exists() && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(t.mechanism, Mechanism::Fanotify, "{:?}", t.fallback);
        assert_eq!(t.exit, Exit::Code(0));
        assert_eq!(t.unresolved, 0);
        let written = t
            .writes
            .iter()
            .filter(|p| p.starts_with(dir.join("deep/er")))
            .count();
        assert_eq!(written, 2000);
        assert!(t.writes.contains(&dir.join("out.txt")));
        for p in t.writes.iter().chain(&t.reads).chain(&t.removed) {
            let name = p.file_name().unwrap().to_string_lossy();
            assert!(
                !(name.starts_with('n') && name.ends_with(".txt")) && name != "old.txt",
                "the neighbour's {p:?} was recorded"
            );
        }
        assert!(!t.writes.contains(&dir.join("scratch.txt")));
        assert!(!t.removed.contains(&dir.join("scratch.txt")));
        assert!(t.removed.contains(&dir.join("old2.txt")), "{:?}", t.removed);
    }

    #[test]
    fn signals_reach_the_command_and_stops_do_not_hold_it() {
        for mechanism in [Mechanism::Fanotify, Mechanism::UserNotif, Mechanism::Ptrace] {
            let d = tempfile::tempdir().unwrap();
            // A handled signal is delivered, in the command and in a child of it; a process
            // that stops itself (job control) goes on, as it always did under the tracer.
            let t = sh_with(
                d.path(),
                "trap 'echo usr1 > got' USR1; kill -USR1 $$; \
                 sh -c 'trap \"echo child > child\" USR2; kill -USR2 $$'; \
                 kill -STOP $$; echo resumed > after",
                mechanism,
            );
            assert_eq!(t.exit, Exit::Code(0), "{mechanism:?}");
            for (f, want) in [("got", "usr1"), ("child", "child"), ("after", "resumed")] {
                assert_eq!(
                    fs::read_to_string(d.path().join(f)).unwrap().trim(),
                    want,
                    "{mechanism:?}: {f}"
                );
            }
            assert!(t.processes >= 2, "{mechanism:?}: {}", t.processes);
        }
    }

    #[test]
    fn exit_by_signal_timeout_and_missing_program() {
        let d = tempfile::tempdir().unwrap();
        let t = sh(d.path(), "kill -TERM $$");
        assert_eq!(t.exit, Exit::Signal(15));
        assert_eq!(t.exit.status(), 143);
        let mut o = TraceOptions::new(vec!["sh".into(), "-c".into(), "sleep 30 & sleep 30".into()]);
        o.timeout = Some(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let t = trace(&o).unwrap();
        assert!(t.timed_out);
        assert!(started.elapsed() < Duration::from_secs(20));
        let e = trace(&TraceOptions::new(vec!["no-such-program-xyz".into()])).unwrap_err();
        assert!(matches!(e, TraceError::NotFound(_)), "{e}");
        let e = trace(&TraceOptions::new(vec![d.path().join("nope").into()])).unwrap_err();
        assert!(e.to_string().contains("execve"), "{e}");
        // A child that fails before the tracer seizes it, or just after, says why.
        let mut o = TraceOptions::new(vec!["true".into()]);
        o.cwd = Some(d.path().join("no-such-dir"));
        let e = trace(&o).unwrap_err();
        assert!(e.to_string().contains("working directory"), "{e}");
    }
}
