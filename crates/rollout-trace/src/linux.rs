//! The ptrace + seccomp-bpf implementation (Linux x86_64). Raw libc: the hot loop handles every
//! stop with one `waitpid`, one `PTRACE_GETREGS`, one `process_vm_readv` per path (plus a
//! `readlink` for a relative path the first time a process is seen or after a `chdir`) and one
//! `PTRACE_CONT`, and never allocates for a syscall it does not record.

use crate::{normalize, Exit, Trace, TraceError, TraceOptions};
use libc::{c_int, c_void, pid_t};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const PTRACE_O_TRACEFORK: c_int = 0x02;
const PTRACE_O_TRACEVFORK: c_int = 0x04;
const PTRACE_O_TRACECLONE: c_int = 0x08;
const PTRACE_O_TRACEEXEC: c_int = 0x10;
const PTRACE_O_TRACESECCOMP: c_int = 0x80;
const PTRACE_O_EXITKILL: c_int = 0x0010_0000;
const EVENT_FORK: c_int = 1;
const EVENT_VFORK: c_int = 2;
const EVENT_CLONE: c_int = 3;
const EVENT_SECCOMP: c_int = 7;
const WALL: c_int = 0x4000_0000;

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_TRACE: u32 = 0x7ff0_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SYS_SECCOMP: libc::c_long = 317;
const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;

// x86_64 syscall numbers.
const OPEN: u64 = 2;
const TRUNCATE: u64 = 76;
const CHDIR: u64 = 80;
const FCHDIR: u64 = 81;
const RENAME: u64 = 82;
const CREAT: u64 = 85;
const LINK: u64 = 86;
const UNLINK: u64 = 87;
const SYMLINK: u64 = 88;
const EXECVE: u64 = 59;
const OPENAT: u64 = 257;
const UNLINKAT: u64 = 263;
const RENAMEAT: u64 = 264;
const LINKAT: u64 = 265;
const SYMLINKAT: u64 = 266;
const RENAMEAT2: u64 = 316;
const EXECVEAT: u64 = 322;
const OPENAT2: u64 = 437;

/// The syscalls that stop the tracee; every other one runs untraced.
const TRACED: [u64; 18] = [
    OPEN, CREAT, OPENAT, OPENAT2, RENAME, RENAMEAT, RENAMEAT2, LINK, LINKAT, SYMLINK, SYMLINKAT,
    UNLINK, UNLINKAT, TRUNCATE, EXECVE, EXECVEAT, CHDIR, FCHDIR,
];

/// The BPF program: x86_64 syscalls in [`TRACED`] → SECCOMP_RET_TRACE, the rest → ALLOW.
fn filter() -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let n = TRACED.len();
    let mut f = vec![
        ins(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        ins(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        ins(RET_K, 0, 0, SECCOMP_RET_ALLOW),
        ins(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
    ];
    for (i, nr) in TRACED.iter().enumerate() {
        f.push(ins(JEQ_K, (n - i) as u8, 0, *nr as u32));
    }
    f.push(ins(RET_K, 0, 0, SECCOMP_RET_ALLOW));
    f.push(ins(RET_K, 0, 0, SECCOMP_RET_TRACE));
    f
}

fn cstr(s: &OsStr) -> Result<CString, TraceError> {
    CString::new(s.as_bytes()).map_err(|_| TraceError::Spawn {
        program: s.to_string_lossy().into_owned(),
        step: "argument check",
        source: io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"),
    })
}

/// `argv[0]` as an executable path, searched in `PATH` when it has no slash.
fn resolve_program(prog: &OsStr, env: &[(OsString, OsString)], cwd: &Path) -> Option<PathBuf> {
    if prog.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(prog));
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let cand = cwd.join(dir).join(prog);
        if let Ok(m) = std::fs::metadata(&cand) {
            use std::os::unix::fs::PermissionsExt;
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Some(cand);
            }
        }
    }
    None
}

fn ptrace_cont(pid: pid_t, sig: c_int) {
    // SAFETY: PTRACE_CONT on a tracee in a ptrace-stop; errors (ESRCH: killed meanwhile) are
    // harmless and show up as an exit in waitpid.
    unsafe {
        libc::ptrace(
            libc::PTRACE_CONT,
            pid,
            std::ptr::null_mut::<c_void>(),
            sig as usize as *mut c_void,
        );
    }
}

pub(crate) fn trace(opts: &TraceOptions) -> Result<Trace, TraceError> {
    let program_name = opts.argv[0].to_string_lossy().into_owned();
    let env: Vec<(OsString, OsString)> = match &opts.env {
        Some(e) => e.clone(),
        None => std::env::vars_os().collect(),
    };
    let cwd = match &opts.cwd {
        Some(c) => c.clone(),
        None => std::env::current_dir().map_err(|source| TraceError::Spawn {
            program: program_name.clone(),
            step: "reading the current directory",
            source,
        })?,
    };
    let program = resolve_program(&opts.argv[0], &env, &cwd)
        .ok_or_else(|| TraceError::NotFound(program_name.clone()))?;
    // Everything the child needs is prepared before fork: after it, only async-signal-safe calls.
    let c_program = cstr(program.as_os_str())?;
    let c_args: Vec<CString> = opts
        .argv
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<_, _>>()?;
    let c_env: Vec<CString> = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            cstr(&kv)
        })
        .collect::<Result<_, _>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = c_args.iter().map(|c| c.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = c_env.iter().map(|c| c.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let c_cwd = cstr(cwd.as_os_str())?;
    let mut bpf = filter();
    let prog = libc::sock_fprog {
        len: bpf.len() as u16,
        filter: bpf.as_mut_ptr(),
    };
    let spawn_err = |step: &'static str, source: io::Error| TraceError::Spawn {
        program: program_name.clone(),
        step,
        source,
    };
    let mut fds = [0 as c_int; 2];
    // SAFETY: a fresh pipe, both ends close-on-exec.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(spawn_err("pipe", io::Error::last_os_error()));
    }
    let (err_r, err_w) = (fds[0], fds[1]);
    let root_is_root = unsafe { libc::geteuid() } == 0;
    // The command gets Ctrl-C; the tracer must survive it to collect and record.
    // SAFETY: plain signal-disposition changes, restored below.
    let old_int = unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let old_quit = unsafe { libc::signal(libc::SIGQUIT, libc::SIG_IGN) };
    let restore = move || unsafe {
        libc::signal(libc::SIGINT, old_int);
        libc::signal(libc::SIGQUIT, old_quit);
    };
    let child_int = if old_int == libc::SIG_IGN {
        libc::SIG_IGN
    } else {
        libc::SIG_DFL
    };
    let child_quit = if old_quit == libc::SIG_IGN {
        libc::SIG_IGN
    } else {
        libc::SIG_DFL
    };

    // SAFETY: fork; the child branch only makes async-signal-safe calls on memory prepared above.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        restore();
        return Err(spawn_err("fork", io::Error::last_os_error()));
    }
    if pid == 0 {
        // Child.
        /// Report the failed step and errno to the parent, and exit.
        unsafe fn fail(err_w: c_int, stage: u8) -> ! {
            unsafe {
                let e = *libc::__errno_location();
                let mut msg = [0u8; 5];
                msg[0] = stage;
                msg[1..].copy_from_slice(&e.to_le_bytes());
                libc::write(err_w, msg.as_ptr() as *const c_void, 5);
                libc::_exit(127);
            }
        }
        unsafe {
            libc::close(err_r);
            libc::signal(libc::SIGINT, child_int);
            libc::signal(libc::SIGQUIT, child_quit);
            if libc::chdir(c_cwd.as_ptr()) != 0 {
                fail(err_w, 1);
            }
            if libc::ptrace(
                libc::PTRACE_TRACEME,
                0,
                std::ptr::null_mut::<c_void>(),
                std::ptr::null_mut::<c_void>(),
            ) != 0
            {
                fail(err_w, 2);
            }
            // Wait for the tracer to set its options: the filter's TRACE needs them.
            libc::raise(libc::SIGSTOP);
            if !root_is_root
                && libc::prctl(
                    libc::PR_SET_NO_NEW_PRIVS,
                    1 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                ) != 0
            {
                fail(err_w, 3);
            }
            if libc::syscall(
                SYS_SECCOMP,
                SECCOMP_SET_MODE_FILTER,
                0 as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            ) != 0
            {
                fail(err_w, 4);
            }
            libc::execve(c_program.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr());
            fail(err_w, 5);
        }
    }
    // Parent.
    unsafe { libc::close(err_w) };
    let child_error = || -> Option<TraceError> {
        let mut msg = [0u8; 5];
        let n = unsafe { libc::read(err_r, msg.as_mut_ptr() as *mut c_void, 5) };
        if n != 5 {
            return None;
        }
        let errno = i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]);
        let step = match msg[0] {
            1 => "changing to the working directory",
            2 => "PTRACE_TRACEME",
            3 => "PR_SET_NO_NEW_PRIVS",
            4 => "installing the seccomp filter",
            _ => "execve",
        };
        Some(spawn_err(step, io::Error::from_raw_os_error(errno)))
    };
    let mut status: c_int = 0;
    let r = unsafe { libc::waitpid(pid, &mut status, WALL) };
    if r != pid || !libc::WIFSTOPPED(status) {
        let e = child_error().unwrap_or_else(|| {
            spawn_err(
                "waiting for the child",
                io::Error::other("the child did not stop"),
            )
        });
        unsafe { libc::close(err_r) };
        restore();
        return Err(e);
    }
    let options = PTRACE_O_TRACEFORK
        | PTRACE_O_TRACEVFORK
        | PTRACE_O_TRACECLONE
        | PTRACE_O_TRACEEXEC
        | PTRACE_O_TRACESECCOMP
        | PTRACE_O_EXITKILL;
    // SAFETY: the child is in a ptrace-stop.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_SETOPTIONS,
            pid,
            std::ptr::null_mut::<c_void>(),
            options as usize as *mut c_void,
        )
    };
    if r != 0 {
        let source = io::Error::last_os_error();
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, WALL);
            libc::close(err_r);
        }
        restore();
        return Err(TraceError::Ptrace {
            program: program_name.clone(),
            what: "PTRACE_SETOPTIONS",
            source,
        });
    }
    ptrace_cont(pid, 0);

    let alive = Arc::new(Mutex::new(HashSet::from([pid])));
    let timed_out = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = opts.timeout.map(|t| {
        let alive = alive.clone();
        let timed_out = timed_out.clone();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(t) {
                timed_out.store(true, Ordering::SeqCst);
                for p in alive.lock().expect("alive set").iter() {
                    unsafe { libc::kill(*p, libc::SIGKILL) };
                }
            }
        })
    });

    let mut tracer = Tracer::new(&opts.ignore_prefixes);
    let mut started: HashSet<pid_t> = HashSet::from([pid]);
    let mut exit = Exit::Code(0);
    let mut processes = 1u64;
    loop {
        let p = unsafe { libc::waitpid(-1, &mut status, WALL) };
        if p < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break; // ECHILD: nothing left.
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            if p == pid {
                exit = if libc::WIFEXITED(status) {
                    Exit::Code(libc::WEXITSTATUS(status))
                } else {
                    Exit::Signal(libc::WTERMSIG(status))
                };
            }
            let mut a = alive.lock().expect("alive set");
            a.remove(&p);
            if a.is_empty() {
                break;
            }
            continue;
        }
        if !libc::WIFSTOPPED(status) {
            continue;
        }
        let sig = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        if sig == libc::SIGTRAP && event != 0 {
            match event {
                EVENT_SECCOMP => tracer.on_syscall(p),
                EVENT_FORK | EVENT_VFORK | EVENT_CLONE => {
                    let mut child: libc::c_ulong = 0;
                    unsafe {
                        libc::ptrace(
                            libc::PTRACE_GETEVENTMSG,
                            p,
                            std::ptr::null_mut::<c_void>(),
                            &mut child as *mut libc::c_ulong as *mut c_void,
                        )
                    };
                    if alive.lock().expect("alive set").insert(child as pid_t) {
                        processes += 1;
                    }
                }
                _ => {}
            }
            ptrace_cont(p, 0);
            continue;
        }
        if started.insert(p) {
            // A new process's first stop (its fork event may come before or after).
            if alive.lock().expect("alive set").insert(p) {
                processes += 1;
            }
            if sig == libc::SIGSTOP {
                ptrace_cont(p, 0);
                continue;
            }
        }
        // A signal for the tracee: deliver it, unless this is a group-stop (no siginfo).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let group_stop = unsafe {
            libc::ptrace(
                libc::PTRACE_GETSIGINFO,
                p,
                std::ptr::null_mut::<c_void>(),
                &mut info as *mut libc::siginfo_t as *mut c_void,
            )
        } != 0;
        ptrace_cont(p, if group_stop { 0 } else { sig });
    }
    let _ = stop_tx.send(());
    if let Some(w) = watchdog {
        let _ = w.join();
    }
    restore();
    let spawn_failure = child_error();
    unsafe { libc::close(err_r) };
    drop(bpf);
    if let Some(e) = spawn_failure {
        return Err(e);
    }
    let Tracer {
        reads,
        writes,
        removed,
        execs,
        stops,
        ..
    } = tracer;
    Ok(Trace {
        exit,
        timed_out: timed_out.load(Ordering::SeqCst),
        reads,
        writes,
        removed,
        execs,
        processes,
        stops,
    })
}

struct Tracer {
    ignore: Vec<Vec<u8>>,
    /// Working directory per pid, dropped on any chdir (threads share it).
    cwd: HashMap<pid_t, Vec<u8>>,
    buf: Vec<u8>,
    reads: BTreeSet<PathBuf>,
    writes: BTreeSet<PathBuf>,
    removed: BTreeSet<PathBuf>,
    execs: BTreeSet<PathBuf>,
    stops: u64,
}

const PATH_MAX: usize = 4096;
const AT_FDCWD: i32 = -100;

impl Tracer {
    fn new(ignore: &[PathBuf]) -> Self {
        Tracer {
            ignore: ignore
                .iter()
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .collect(),
            cwd: HashMap::new(),
            buf: Vec::with_capacity(PATH_MAX + 1),
            reads: BTreeSet::new(),
            writes: BTreeSet::new(),
            removed: BTreeSet::new(),
            execs: BTreeSet::new(),
            stops: 0,
        }
    }

    fn on_syscall(&mut self, pid: pid_t) {
        self.stops += 1;
        let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        // SAFETY: the tracee is in a seccomp stop; regs is a valid buffer.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_GETREGS,
                pid,
                std::ptr::null_mut::<c_void>(),
                &mut regs as *mut libc::user_regs_struct as *mut c_void,
            )
        };
        if r != 0 {
            return;
        }
        let a = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8];
        match regs.orig_rax {
            OPEN => self.open(pid, AT_FDCWD, a[0], a[1]),
            OPENAT => self.open(pid, a[0] as i32, a[1], a[2]),
            OPENAT2 => {
                if let Some(flags) = read_u64(pid, a[2]) {
                    self.open(pid, a[0] as i32, a[1], flags)
                }
            }
            CREAT => self.with_path(pid, AT_FDCWD, a[0], Op::Write),
            TRUNCATE => self.with_path(pid, AT_FDCWD, a[0], Op::Write),
            RENAME => self.rename(pid, AT_FDCWD, a[0], AT_FDCWD, a[1]),
            RENAMEAT | RENAMEAT2 => self.rename(pid, a[0] as i32, a[1], a[2] as i32, a[3]),
            LINK => self.with_path(pid, AT_FDCWD, a[1], Op::Write),
            LINKAT => self.with_path(pid, a[2] as i32, a[3], Op::Write),
            SYMLINK => self.with_path(pid, AT_FDCWD, a[1], Op::Write),
            SYMLINKAT => self.with_path(pid, a[1] as i32, a[2], Op::Write),
            UNLINK => self.with_path(pid, AT_FDCWD, a[0], Op::Remove),
            UNLINKAT if a[2] & libc::AT_REMOVEDIR as u64 == 0 => {
                self.with_path(pid, a[0] as i32, a[1], Op::Remove)
            }
            EXECVE => self.with_path(pid, AT_FDCWD, a[0], Op::Exec),
            EXECVEAT => {
                if a[4] & libc::AT_EMPTY_PATH as u64 != 0 {
                    if let Some(p) = fd_path(pid, a[0] as i32) {
                        self.record(p, Op::Exec);
                    }
                } else {
                    self.with_path(pid, a[0] as i32, a[1], Op::Exec)
                }
            }
            CHDIR | FCHDIR => self.cwd.clear(),
            _ => {}
        }
    }

    fn open(&mut self, pid: pid_t, dirfd: i32, addr: u64, flags: u64) {
        let flags = flags as i32;
        if flags & (libc::O_PATH | libc::O_DIRECTORY) != 0 {
            return;
        }
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY
            || flags & (libc::O_CREAT | libc::O_TRUNC) != 0;
        self.with_path(pid, dirfd, addr, if write { Op::Write } else { Op::Read });
    }

    fn rename(&mut self, pid: pid_t, ofd: i32, old: u64, nfd: i32, new: u64) {
        let Some(old) = self.resolve(pid, ofd, old) else {
            return;
        };
        let Some(new) = self.resolve(pid, nfd, new) else {
            return;
        };
        if !self.writes.remove(&old) && !self.ignored(&old) {
            self.removed.insert(old);
        }
        self.record(new, Op::Write);
    }

    fn with_path(&mut self, pid: pid_t, dirfd: i32, addr: u64, op: Op) {
        if let Some(p) = self.resolve(pid, dirfd, addr) {
            self.record(p, op);
        }
    }

    fn ignored(&self, p: &Path) -> bool {
        let b = p.as_os_str().as_bytes();
        self.ignore.iter().any(|pre| {
            b.starts_with(pre)
                && (b.len() == pre.len() || b[pre.len()] == b'/' || pre.ends_with(b"/"))
        })
    }

    fn record(&mut self, p: PathBuf, op: Op) {
        if op == Op::Exec {
            self.execs.insert(p.clone());
        }
        if self.ignored(&p) {
            return;
        }
        match op {
            Op::Read | Op::Exec => {
                if !self.writes.contains(&p) {
                    self.reads.insert(p);
                }
            }
            Op::Write => {
                self.removed.remove(&p);
                self.writes.insert(p);
            }
            Op::Remove => {
                if !self.writes.remove(&p) {
                    self.removed.insert(p);
                }
            }
        }
    }

    /// The absolute path a syscall argument names, or None when it cannot be read.
    fn resolve(&mut self, pid: pid_t, dirfd: i32, addr: u64) -> Option<PathBuf> {
        if !read_cstr(pid, addr, &mut self.buf) || self.buf.is_empty() {
            return None;
        }
        if self.buf[0] == b'/' {
            return Some(normalize(Path::new(OsStr::from_bytes(&self.buf))));
        }
        let base = if dirfd == AT_FDCWD {
            match self.cwd.get(&pid) {
                Some(c) => PathBuf::from(OsStr::from_bytes(c)),
                None => {
                    let c = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
                    self.cwd.insert(pid, c.as_os_str().as_bytes().to_vec());
                    c
                }
            }
        } else {
            fd_path(pid, dirfd)?
        };
        Some(normalize(&base.join(OsStr::from_bytes(&self.buf))))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Remove,
    Exec,
}

fn fd_path(pid: pid_t, fd: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()
}

/// Read a NUL-terminated string from the tracee, a page at a time (a string may end right
/// before an unmapped page).
fn read_cstr(pid: pid_t, mut addr: u64, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    while buf.len() < PATH_MAX {
        let page_left = 4096 - (addr as usize % 4096);
        let want = page_left.min(PATH_MAX - buf.len() + 1);
        let start = buf.len();
        buf.resize(start + want, 0);
        let local = libc::iovec {
            iov_base: buf[start..].as_mut_ptr() as *mut c_void,
            iov_len: want,
        };
        let remote = libc::iovec {
            iov_base: addr as *mut c_void,
            iov_len: want,
        };
        // SAFETY: local points into buf with `want` bytes available.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            buf.truncate(start);
            return false;
        }
        let n = n as usize;
        if let Some(z) = buf[start..start + n].iter().position(|&b| b == 0) {
            buf.truncate(start + z);
            return true;
        }
        buf.truncate(start + n);
        addr += n as u64;
    }
    false
}

fn read_u64(pid: pid_t, addr: u64) -> Option<u64> {
    let mut v = 0u64;
    let local = libc::iovec {
        iov_base: &mut v as *mut u64 as *mut c_void,
        iov_len: 8,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut c_void,
        iov_len: 8,
    };
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    (n == 8).then_some(v)
}
