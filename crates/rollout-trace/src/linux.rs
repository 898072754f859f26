//! The seccomp + ptrace implementation (Linux x86_64 and aarch64). Raw libc.
//!
//! Two mechanisms share one seccomp-bpf filter (the file syscalls in [`TRACED`]):
//!
//! - **User notification** (preferred, Linux ≥ 5.5): the filter returns `SECCOMP_RET_USER_NOTIF`;
//!   the calling thread blocks in the kernel while a supervisor thread here receives the syscall
//!   number and arguments with one ioctl, reads the path with `process_vm_readv`, and lets the
//!   syscall run with `SECCOMP_USER_NOTIF_FLAG_CONTINUE`. No ptrace stop, no register fetch, and
//!   the bookkeeping happens after the tracee is resumed.
//! - **ptrace stops** (fallback, when the kernel or an enclosing sandbox refuses a listener, or
//!   on request): the filter returns `SECCOMP_RET_TRACE` and the ptrace loop handles each stop
//!   with `PTRACE_GETREGSET` (`NT_PRSTATUS`).
//!
//! In both, ptrace (the command is seized, `PTRACE_SEIZE`) follows fork/vfork/clone and collects
//! exit statuses, so the whole process tree is seen and killed on timeout (and if the tracer
//! dies, `PTRACE_O_EXITKILL`). A seized process does not stop at exec.

use crate::{normalize, Exit, Mechanism, Trace, TraceError, TraceOptions};
use libc::{c_int, c_void, pid_t};
use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const PTRACE_O_TRACEFORK: c_int = 0x02;
const PTRACE_O_TRACEVFORK: c_int = 0x04;
const PTRACE_O_TRACECLONE: c_int = 0x08;
const PTRACE_O_TRACESECCOMP: c_int = 0x80;
const PTRACE_O_EXITKILL: c_int = 0x0010_0000;
const EVENT_FORK: c_int = 1;
const EVENT_VFORK: c_int = 2;
const EVENT_CLONE: c_int = 3;
const EVENT_SECCOMP: c_int = 7;
/// A seized tracee's job-control stop, or a new child's first stop (`PTRACE_EVENT_STOP`).
const EVENT_STOP: c_int = 128;
/// `__WALL | __WNOTHREAD`: every traced process, clone children included, but only the calling
/// thread's children and tracees, never a child another thread of the process started (its
/// owner would lose the exit status: `wait` fails with ECHILD).
const WALL: c_int = 0x4000_0000 | 0x2000_0000;

/// `SECCOMP_IOCTL_NOTIF_SET_FLAGS` value: wake the supervisor on the notifying CPU (Linux ≥ 6.6;
/// older kernels refuse it and the notification still works).
const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: libc::c_ulong = 1;

/// What the child tells the tracer over the socket before it execs.
const MSG_LISTENER: u8 = b'N';
const MSG_PTRACE: u8 = b'P';

// Syscall numbers of the architecture. aarch64 (the asm-generic table) has no `open`, `creat`,
// `rename`, `link`, `symlink` or `unlink`: its libc calls the `*at` forms, so those constants get
// values no syscall has and stay out of [`TRACED`].
#[cfg(target_arch = "x86_64")]
mod nr {
    pub const AUDIT_ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
    pub const OPEN: u64 = libc::SYS_open as u64;
    pub const CREAT: u64 = libc::SYS_creat as u64;
    pub const RENAME: u64 = libc::SYS_rename as u64;
    pub const LINK: u64 = libc::SYS_link as u64;
    pub const SYMLINK: u64 = libc::SYS_symlink as u64;
    pub const UNLINK: u64 = libc::SYS_unlink as u64;
}
#[cfg(target_arch = "aarch64")]
mod nr {
    pub const AUDIT_ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64
    pub const OPEN: u64 = u64::MAX;
    pub const CREAT: u64 = u64::MAX - 1;
    pub const RENAME: u64 = u64::MAX - 2;
    pub const LINK: u64 = u64::MAX - 3;
    pub const SYMLINK: u64 = u64::MAX - 4;
    pub const UNLINK: u64 = u64::MAX - 5;
}
use nr::{AUDIT_ARCH, CREAT, LINK, OPEN, RENAME, SYMLINK, UNLINK};
const TRUNCATE: u64 = libc::SYS_truncate as u64;
const CHDIR: u64 = libc::SYS_chdir as u64;
const FCHDIR: u64 = libc::SYS_fchdir as u64;
const EXECVE: u64 = libc::SYS_execve as u64;
const OPENAT: u64 = libc::SYS_openat as u64;
const UNLINKAT: u64 = libc::SYS_unlinkat as u64;
const RENAMEAT: u64 = libc::SYS_renameat as u64;
const LINKAT: u64 = libc::SYS_linkat as u64;
const SYMLINKAT: u64 = libc::SYS_symlinkat as u64;
const RENAMEAT2: u64 = libc::SYS_renameat2 as u64;
const EXECVEAT: u64 = libc::SYS_execveat as u64;
const OPENAT2: u64 = libc::SYS_openat2 as u64;

/// The syscalls the tracer sees; every other one runs untraced.
#[cfg(target_arch = "x86_64")]
const TRACED: &[u64] = &[
    OPEN, CREAT, OPENAT, OPENAT2, RENAME, RENAMEAT, RENAMEAT2, LINK, LINKAT, SYMLINK, SYMLINKAT,
    UNLINK, UNLINKAT, TRUNCATE, EXECVE, EXECVEAT, CHDIR, FCHDIR,
];
#[cfg(target_arch = "aarch64")]
const TRACED: &[u64] = &[
    OPENAT, OPENAT2, RENAMEAT, RENAMEAT2, LINKAT, SYMLINKAT, UNLINKAT, TRUNCATE, EXECVE, EXECVEAT,
    CHDIR, FCHDIR,
];

/// Open flags that make an open uninteresting (no file content is read or written).
const OPEN_SKIP_FLAGS: u32 = (libc::O_PATH | libc::O_DIRECTORY) as u32;

/// The BPF program: the native architecture's syscalls in [`TRACED`] → `action`, the rest → ALLOW; `open` and
/// `openat` with `O_PATH` or `O_DIRECTORY` (directory walks) are allowed without a round trip.
fn filter(action: u32) -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    /// Offset of the low 32 bits of `seccomp_data.args[i]` (little-endian).
    const fn arg(i: u32) -> u32 {
        16 + 8 * i
    }
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    // Layout: header (4) · one JEQ per syscall · ALLOW · open flags (2) · openat flags (2) ·
    // ACTION · ALLOW.
    let first_jeq = 4;
    let allow = first_jeq + TRACED.len();
    let open_flags = allow + 1;
    let openat_flags = open_flags + 2;
    let act = openat_flags + 2;
    let allow2 = act + 1;
    let mut f = vec![
        ins(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        ins(JEQ_K, 1, 0, AUDIT_ARCH),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        ins(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
    ];
    for &nr in TRACED {
        let target = match nr {
            OPEN => open_flags,
            OPENAT => openat_flags,
            _ => act,
        };
        let here = f.len();
        f.push(ins(JEQ_K, (target - here - 1) as u8, 0, nr as u32));
    }
    f.push(ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW));
    for (i, argn) in [(open_flags, 1), (openat_flags, 2)] {
        debug_assert_eq!(f.len(), i);
        f.push(ins(LD_W_ABS, 0, 0, arg(argn)));
        let here = f.len();
        f.push(ins(
            JSET_K,
            (allow2 - here - 1) as u8,
            (act - here - 1) as u8,
            OPEN_SKIP_FLAGS,
        ));
    }
    debug_assert_eq!(f.len(), act);
    f.push(ins(RET_K, 0, 0, action));
    f.push(ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW));
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

/// Room for one `SCM_RIGHTS` control message carrying one fd (`CMSG_SPACE(4)` is 24 on 64-bit Linux).
#[repr(C, align(8))]
struct CmsgBuf([u8; 32]);

/// Chooses between synchronous and ordinary wake-ups of the listener
/// (`SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`, Linux ≥ 6.6). Synchronous: the supervisor runs on the
/// notifying CPU and hands it straight back, the cheapest round trip when one process at a time
/// makes the traced syscalls. But when several do (`make -j`), a supervisor busy with one
/// caller would pull the next caller onto its own CPU and serialise a parallel build; so the
/// mode follows how often consecutive notifications come from different processes.
struct SyncWake {
    fd: c_int,
    /// The kernel accepted the flag.
    supported: bool,
    on: bool,
    last: pid_t,
    seen: u32,
    switches: u32,
}

impl SyncWake {
    /// Notifications per decision.
    const WINDOW: u32 = 64;
    /// At most this many caller changes per window keep synchronous wake-ups.
    const MAX_SWITCHES: u32 = 4;

    fn new(fd: c_int) -> Self {
        let mut w = SyncWake {
            fd,
            supported: true,
            on: false,
            last: 0,
            seen: 0,
            switches: 0,
        };
        w.supported = w.set(true);
        w
    }

    fn set(&mut self, on: bool) -> bool {
        let flags = if on {
            SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
        } else {
            0
        };
        // SAFETY: an ioctl on our listener fd; older kernels refuse it (EINVAL), which is fine.
        let ok = unsafe { libc::ioctl(self.fd, libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS, flags) } == 0;
        if ok {
            self.on = on;
        }
        ok
    }

    fn observe(&mut self, pid: pid_t) {
        if !self.supported {
            return;
        }
        if pid != self.last {
            self.switches += 1;
            self.last = pid;
        }
        self.seen += 1;
        if self.seen == Self::WINDOW {
            let want = self.switches <= Self::MAX_SWITCHES;
            if want != self.on {
                self.set(want);
            }
            self.seen = 0;
            self.switches = 0;
        }
    }
}

/// The supervisor side of user notification: receive the listener (or word that the child fell
/// back to ptrace stops), then answer notifications until told to stop or the filter is orphaned.
/// Returns the tracer state when it handled the syscalls, `None` otherwise.
fn supervise(sock: OwnedFd, stop: OwnedFd, mut tracer: Tracer) -> Option<Tracer> {
    let mut byte = 0u8;
    let mut iov = libc::iovec {
        iov_base: &mut byte as *mut u8 as *mut c_void,
        iov_len: 1,
    };
    let mut cmsg = CmsgBuf([0; 32]);
    // SAFETY: a zeroed msghdr pointing at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr() as *mut c_void;
    msg.msg_controllen = cmsg.0.len();
    let n = loop {
        // SAFETY: recvmsg into the buffers above; the child's end is close-on-exec, so this
        // returns 0 if the child dies or execs without sending.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        break n;
    };
    if n != 1 || byte != MSG_LISTENER {
        return None;
    }
    // SAFETY: the control buffer was filled by recvmsg; CMSG_* walk it within msg_controllen.
    let listener = unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_level != libc::SOL_SOCKET || (*c).cmsg_type != libc::SCM_RIGHTS
        {
            return None;
        }
        OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const c_int))
    };
    drop(sock);
    let lfd = listener.as_raw_fd();
    let mut wake = SyncWake::new(lfd);
    let mut fds = [
        libc::pollfd {
            fd: lfd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: poll on two fds we own.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // SAFETY: the kernel wants a zeroed seccomp_notif.
            let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
            // SAFETY: RECV fills `n`; ENOENT (the caller was killed or interrupted meanwhile)
            // and EINTR just mean there is nothing to answer.
            if unsafe { libc::ioctl(lfd, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut n) } != 0 {
                continue;
            }
            tracer.stops += 1;
            wake.observe(n.pid as pid_t);
            let event = tracer
                .resolver
                .event(n.pid as pid_t, n.data.nr as u64, &n.data.args);
            let mut resp = libc::seccomp_notif_resp {
                id: n.id,
                val: 0,
                error: 0,
                flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
            };
            // SAFETY: SEND with the id just received; ENOENT (the caller is gone) is harmless.
            unsafe { libc::ioctl(lfd, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
            if let Some(e) = event {
                tracer.apply(e);
            }
            continue;
        }
        // Told to stop (every traced process has exited, so nothing is pending), or the
        // filter has no task left (POLLHUP).
        if fds[1].revents != 0 || fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            break;
        }
    }
    Some(tracer)
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
    let mut notify_bpf = filter(libc::SECCOMP_RET_USER_NOTIF);
    let notify_prog = libc::sock_fprog {
        len: notify_bpf.len() as u16,
        filter: notify_bpf.as_mut_ptr(),
    };
    let mut trace_bpf = filter(libc::SECCOMP_RET_TRACE);
    let trace_prog = libc::sock_fprog {
        len: trace_bpf.len() as u16,
        filter: trace_bpf.as_mut_ptr(),
    };
    let ignore = ignore_list(&opts.ignore_prefixes);
    // fanotify when asked for and the host allows it; the seccomp mechanisms otherwise.
    let mut fallback = None;
    let fan = if opts.mechanism == Mechanism::Fanotify {
        crate::fanotify::Fan::new(&ignore)
            .map_err(|why| fallback = Some(format!("fanotify unavailable: {why}")))
            .ok()
    } else {
        None
    };
    let use_seccomp = fan.is_none();
    let try_notify = opts.mechanism != Mechanism::Ptrace;
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
    // SAFETY: fresh fds owned from here on.
    let (err_r, err_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The socket over which the child hands over the seccomp listener.
    // SAFETY: a fresh socket pair, both ends close-on-exec.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(spawn_err("socketpair", io::Error::last_os_error()));
    }
    // SAFETY: fresh fds owned from here on.
    let (sock_parent, sock_child) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: a fresh pipe, both ends close-on-exec.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(spawn_err("pipe", io::Error::last_os_error()));
    }
    // SAFETY: fresh fds owned from here on.
    let (stop_r, stop_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The child waits on this pipe until the tracer has seized it.
    // SAFETY: a fresh pipe, both ends close-on-exec.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(spawn_err("pipe", io::Error::last_os_error()));
    }
    // SAFETY: fresh fds owned from here on.
    let (go_r, go_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The messages the child may send, built before fork.
    let mut msg_byte = [MSG_LISTENER];
    let mut ptrace_byte = [MSG_PTRACE];
    let mut cmsg = CmsgBuf([0; 32]);
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
        let err_w = err_w.as_raw_fd();
        let sock = sock_child.as_raw_fd();
        unsafe {
            libc::signal(libc::SIGINT, child_int);
            libc::signal(libc::SIGQUIT, child_quit);
            if libc::chdir(c_cwd.as_ptr()) != 0 {
                fail(err_w, 1);
            }
            // Wait until the tracer has seized this process with its options: the fork
            // events and the fallback's SECCOMP_RET_TRACE need them. End of file: the tracer
            // gave up (or died), so nothing runs untraced.
            libc::close(go_w.as_raw_fd());
            let mut go = 0u8;
            if libc::read(go_r.as_raw_fd(), &mut go as *mut u8 as *mut c_void, 1) != 1 {
                fail(err_w, 2);
            }
            // Installing a filter needs CAP_SYS_ADMIN or no_new_privs. Root keeps setuid
            // programs working when it can; root without CAP_SYS_ADMIN (a container) gets
            // EACCES and takes no_new_privs too.
            let no_new_privs = || {
                libc::prctl(
                    libc::PR_SET_NO_NEW_PRIVS,
                    1 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                ) == 0
            };
            let mut nnp = false;
            if !root_is_root {
                if !no_new_privs() {
                    fail(err_w, 3);
                }
                nnp = true;
            }
            let mut install = |flags: libc::c_ulong, prog: *const libc::sock_fprog| {
                let r = libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    flags,
                    prog,
                );
                if r < 0 && !nnp && *libc::__errno_location() == libc::EACCES {
                    if !no_new_privs() {
                        fail(err_w, 3);
                    }
                    nnp = true;
                    return libc::syscall(
                        libc::SYS_seccomp,
                        libc::SECCOMP_SET_MODE_FILTER,
                        flags,
                        prog,
                    );
                }
                r
            };
            let listener = if use_seccomp && try_notify {
                install(libc::SECCOMP_FILTER_FLAG_NEW_LISTENER, &notify_prog)
            } else {
                -1
            };
            if use_seccomp && listener < 0 && install(0, &trace_prog) != 0 {
                fail(err_w, 4);
            }
            let byte = if listener >= 0 {
                msg_byte.as_mut_ptr()
            } else {
                ptrace_byte.as_mut_ptr()
            };
            let mut iov = libc::iovec {
                iov_base: byte as *mut c_void,
                iov_len: 1,
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            if listener >= 0 {
                msg.msg_control = cmsg.0.as_mut_ptr() as *mut c_void;
                msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut c_int, listener as c_int);
            }
            if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) != 1 {
                fail(err_w, 6);
            }
            if listener >= 0 {
                libc::close(listener as c_int);
            }
            libc::execve(c_program.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr());
            fail(err_w, 5);
        }
    }
    // Parent.
    drop(err_w);
    drop(sock_child);
    let child_error = || -> Option<TraceError> {
        let mut msg = [0u8; 5];
        let n = unsafe { libc::read(err_r.as_raw_fd(), msg.as_mut_ptr() as *mut c_void, 5) };
        if n != 5 {
            return None;
        }
        let errno = i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]);
        let step = match msg[0] {
            1 => "changing to the working directory",
            2 => "waiting for the tracer",
            3 => "PR_SET_NO_NEW_PRIVS",
            4 => "installing the seccomp filter",
            6 => "handing the seccomp listener to the tracer",
            _ => "execve",
        };
        Some(spawn_err(step, io::Error::from_raw_os_error(errno)))
    };
    let mut status: c_int = 0;
    // Seized, not PTRACE_TRACEME: a seized process stops at no exec (nothing here needs one;
    // exec stops were a third of all stops of a build) and its children start in an event
    // stop instead of a SIGSTOP.
    let options = PTRACE_O_TRACEFORK
        | PTRACE_O_TRACEVFORK
        | PTRACE_O_TRACECLONE
        | PTRACE_O_TRACESECCOMP
        | PTRACE_O_EXITKILL;
    // SAFETY: the child waits on `go` for this.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_SEIZE,
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
        }
        restore();
        return Err(child_error().unwrap_or(TraceError::Ptrace {
            program: program_name.clone(),
            what: "PTRACE_SEIZE",
            source,
        }));
    }
    // The supervisor runs before the child goes on: the child's execve already waits for it.
    let lifecycle = Arc::new(Lifecycle::default());
    let supervisor = {
        let tracer = Tracer::new(ignore.clone(), lifecycle.clone(), opts.on_read.clone());
        std::thread::Builder::new()
            .name("rollout-trace-notify".into())
            .spawn(move || supervise(sock_parent, stop_r, tracer))
    };
    let supervisor = match supervisor {
        Ok(s) => s,
        Err(source) => {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, WALL);
            }
            restore();
            return Err(spawn_err("starting the supervisor thread", source));
        }
    };
    // Every pid of the traced tree, dead ones included, for the fanotify reader's filter: a
    // process is added before it runs (at its fork event or first stop), so before it can
    // cause an event.
    let seen = Arc::new(Mutex::new(HashSet::from([pid])));
    let fan_reader = match fan {
        None => None,
        Some(fan) => {
            let reader = crate::fanotify::Reader::new(
                fan,
                seen.clone(),
                Tracer::new(ignore.clone(), lifecycle.clone(), opts.on_read.clone()),
            );
            // SAFETY: a fresh pipe, both ends close-on-exec.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                let source = io::Error::last_os_error();
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, WALL);
                }
                restore();
                return Err(spawn_err("pipe", source));
            }
            // SAFETY: fresh fds owned from here on.
            let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            match std::thread::Builder::new()
                .name("rollout-trace-fanotify".into())
                .spawn(move || reader.run(r))
            {
                Ok(h) => Some((h, w)),
                Err(source) => {
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                        libc::waitpid(pid, &mut status, WALL);
                    }
                    restore();
                    return Err(spawn_err("starting the fanotify reader thread", source));
                }
            }
        }
    };
    // A traced process waits in each of its stops (fork, exec) until this thread runs: on a
    // machine whose every core is busy with the command (`make -j`), a thread of ordinary
    // priority waits its turn, and the command with it. This one uses little CPU, so it is
    // raised above the command for the loop (the command was forked at the old priority;
    // without CAP_SYS_NICE nothing changes).
    let boost = Priority::raise();
    // SAFETY: a one-byte write to our own pipe (its read end still open here, so a child
    // that is already gone costs no SIGPIPE); if it fails the child reads end of file and
    // exits without running the command (reported as a spawn failure below).
    unsafe { libc::write(go_w.as_raw_fd(), b"x".as_ptr() as *const c_void, 1) };
    drop((go_r, go_w));

    let alive = Arc::new(Mutex::new(HashSet::from([pid])));
    let timed_out = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = opts.timeout.map(|t| {
        let alive = alive.clone();
        let timed_out = timed_out.clone();
        // Not joined: once the loop has emptied `alive` (under its lock) this thread kills
        // nothing and reports no timeout, so the trace does not wait for it to end.
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(t) {
                let alive = alive.lock().expect("alive set");
                if alive.is_empty() {
                    return;
                }
                timed_out.store(true, Ordering::SeqCst);
                for p in alive.iter() {
                    unsafe { libc::kill(*p, libc::SIGKILL) };
                }
            }
        })
    });

    // Handles the syscalls when the child fell back to SECCOMP_RET_TRACE.
    let mut tracer = Tracer::new(ignore, lifecycle.clone(), opts.on_read.clone());
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
            lifecycle.post(p);
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
        if started.insert(p) {
            // A new process's first stop (its fork event may come before or after): seized,
            // it has not run yet.
            seen.lock().expect("seen set").insert(p);
            if alive.lock().expect("alive set").insert(p) {
                processes += 1;
                lifecycle.post(p);
            }
        }
        if event == EVENT_STOP {
            // That first stop, or a job-control stop, which the traced tree does not keep
            // (as a traced process never did here): it goes on.
            ptrace_cont(p, 0);
            continue;
        }
        if sig == libc::SIGTRAP && event != 0 {
            match event {
                EVENT_SECCOMP => {
                    tracer.stops += 1;
                    let e =
                        syscall_regs(p).and_then(|(nr, args)| tracer.resolver.event(p, nr, &args));
                    ptrace_cont(p, 0);
                    if let Some(e) = e {
                        tracer.apply(e);
                    }
                    continue;
                }
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
                    seen.lock().expect("seen set").insert(child as pid_t);
                    if alive.lock().expect("alive set").insert(child as pid_t) {
                        processes += 1;
                        lifecycle.post(child as pid_t);
                    }
                }
                _ => {}
            }
            ptrace_cont(p, 0);
            continue;
        }
        // A signal for the tracee: delivered (a seized process reports its job-control stops
        // as the event above, so every other stop here is a signal's).
        ptrace_cont(p, sig);
    }
    // The tree is gone (ids left over, of threads that exec'd, are dropped too): the watchdog
    // can no longer kill a process that reused one of its pids.
    alive.lock().expect("alive set").clear();
    let _ = stop_tx.send(());
    drop(watchdog);
    // Every traced process has exited, so no notification is pending: stop the supervisor.
    // SAFETY: a one-byte write to our own pipe.
    unsafe { libc::write(stop_w.as_raw_fd(), b"x".as_ptr() as *const c_void, 1) };
    let notified = supervisor.join().ok().flatten();
    // Every event of the tree is queued by now: the reader drains the rest and stops.
    let fanotified = fan_reader.and_then(|(h, w)| {
        // SAFETY: a one-byte write to our own pipe.
        unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr() as *const c_void, 1) };
        h.join().ok()
    });
    restore();
    drop(boost);
    let spawn_failure = child_error();
    drop(notify_bpf);
    drop(trace_bpf);
    if let Some(e) = spawn_failure {
        return Err(e);
    }
    let mut fan_unresolved = 0;
    let (mechanism, tracer) = match (fanotified, notified) {
        (Some((t, events, unresolved)), _) => {
            fan_unresolved = unresolved;
            let mut t = t;
            // Nothing stopped: count the events instead, as the measure of tracing work.
            t.stops = events;
            (Mechanism::Fanotify, t)
        }
        (None, Some(t)) => (Mechanism::UserNotif, t),
        (None, None) => (Mechanism::Ptrace, tracer),
    };
    let Tracer {
        reads,
        writes,
        removed,
        execs,
        stops,
        resolver,
        ..
    } = tracer;
    // The sets are handed over as they are: sorting 8000 paths cost 3 ms after the command,
    // and a caller that wants an order picks its own (the store wants byte order).
    Ok(Trace {
        exit,
        timed_out: timed_out.load(Ordering::SeqCst),
        reads,
        writes,
        removed,
        execs,
        processes,
        stops,
        unresolved: resolver.unresolved + fan_unresolved,
        fallback,
        mechanism,
    })
}

/// The calling thread's scheduling priority, raised while this lives.
struct Priority {
    tid: libc::id_t,
    old: libc::c_int,
}

impl Priority {
    /// How far above the command the tracing thread runs.
    const BOOST: libc::c_int = 10;

    fn raise() -> Option<Priority> {
        // SAFETY: plain syscalls on the calling thread.
        let tid = unsafe { libc::gettid() } as libc::id_t;
        unsafe { *libc::__errno_location() = 0 };
        let old = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
        if old == -1 && io::Error::last_os_error().raw_os_error() != Some(0) {
            return None;
        }
        let new = (old - Self::BOOST).max(-20);
        (unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, new) } == 0)
            .then_some(Priority { tid, old })
    }
}

impl Drop for Priority {
    fn drop(&mut self) {
        // SAFETY: plain syscall on the thread that raised it (the loop ends where it began).
        unsafe { libc::setpriority(libc::PRIO_PROCESS, self.tid, self.old) };
    }
}

/// The syscall number and arguments of a tracee in a seccomp stop.
fn syscall_regs(pid: pid_t) -> Option<(u64, [u64; 6])> {
    // SAFETY: user_regs_struct is plain integers.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: &mut regs as *mut libc::user_regs_struct as *mut c_void,
        iov_len: std::mem::size_of::<libc::user_regs_struct>(),
    };
    // SAFETY: the tracee is in a seccomp stop; iov describes a valid buffer of the
    // architecture's general-purpose register set (NT_PRSTATUS).
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGSET,
            pid,
            libc::NT_PRSTATUS as usize as *mut c_void,
            &mut iov as *mut libc::iovec as *mut c_void,
        )
    };
    if r != 0 {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    let out = (
        regs.orig_rax,
        [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9],
    );
    // At a seccomp stop x8 holds the syscall number and x0–x5 the arguments.
    #[cfg(target_arch = "aarch64")]
    let out = (
        regs.regs[8],
        [
            regs.regs[0],
            regs.regs[1],
            regs.regs[2],
            regs.regs[3],
            regs.regs[4],
            regs.regs[5],
        ],
    );
    Some(out)
}

fn ignore_list(prefixes: &[PathBuf]) -> Vec<Vec<u8>> {
    prefixes
        .iter()
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .collect()
}

/// What one syscall did to a path, resolved while the caller was still blocked.
enum Event {
    One(Op, PathBuf),
    Rename(PathBuf, PathBuf),
}

/// The recorded sets, updated in syscall order (hash sets: cheaper than component-wise path
/// comparisons).
pub(crate) struct Tracer {
    ignore: Vec<Vec<u8>>,
    resolver: Resolver,
    reads: HashSet<PathBuf>,
    writes: HashSet<PathBuf>,
    removed: HashSet<PathBuf>,
    execs: HashSet<PathBuf>,
    stops: u64,
    /// Where each path newly recorded as read is also sent (see `TraceOptions::on_read`).
    on_read: Option<std::sync::mpsc::Sender<PathBuf>>,
}

const PATH_MAX: usize = 4096;
const AT_FDCWD: i32 = -100;

impl Tracer {
    pub(crate) fn new(
        ignore: Vec<Vec<u8>>,
        lifecycle: Arc<Lifecycle>,
        on_read: Option<std::sync::mpsc::Sender<PathBuf>>,
    ) -> Self {
        Tracer {
            on_read,
            ignore,
            resolver: Resolver::new(lifecycle),
            reads: HashSet::new(),
            writes: HashSet::new(),
            removed: HashSet::new(),
            execs: HashSet::new(),
            stops: 0,
        }
    }

    fn apply(&mut self, e: Event) {
        match e {
            Event::One(op, p) => self.record(p, op),
            Event::Rename(old, new) => {
                if !self.writes.remove(&old) && !self.ignored(&old) {
                    self.removed.insert(old);
                }
                self.record(new, Op::Write);
            }
        }
    }

    fn ignored(&self, p: &Path) -> bool {
        let b = p.as_os_str().as_bytes();
        self.ignore.iter().any(|pre| {
            b.starts_with(pre)
                && (b.len() == pre.len() || b[pre.len()] == b'/' || pre.ends_with(b"/"))
        })
    }

    pub(crate) fn record(&mut self, p: PathBuf, op: Op) {
        if op == Op::Exec {
            self.execs.insert(p.clone());
        }
        if self.ignored(&p) {
            return;
        }
        match op {
            Op::Read | Op::Exec => {
                if !self.writes.contains(&p) && !self.reads.contains(&p) {
                    if let Some(tx) = &self.on_read {
                        // A receiver that hung up only stops listening: tracing goes on.
                        let _ = tx.send(p.clone());
                    }
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
}

/// Processes that started or ended, posted by the ptrace loop so that the resolver drops what
/// it cached under a pid that may now name another process.
#[derive(Default)]
pub(crate) struct Lifecycle {
    dirty: AtomicBool,
    pids: Mutex<Vec<pid_t>>,
}

impl Lifecycle {
    fn post(&self, pid: pid_t) {
        self.pids.lock().expect("lifecycle").push(pid);
        self.dirty.store(true, Ordering::Release);
    }

    fn take(&self) -> Vec<pid_t> {
        if !self.dirty.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.pids.lock().expect("lifecycle"))
    }
}

/// A directory fd of a tracee, duplicated into the tracer so that later uses of the same fd
/// are recognised with one `kcmp` instead of a `/proc/<pid>/fd/<n>` readlink.
struct DirFd {
    dup: OwnedFd,
    path: Vec<u8>,
}

/// At most this many fds are held per cache (tracee directories, `/proc/<pid>/mem`); a full
/// cache starts over.
const FD_CACHE_MAX: usize = 256;

/// Turns a syscall's number and arguments into the absolute paths it names, reading the
/// caller's memory and `/proc`; must run while the caller is blocked in the syscall.
struct Resolver {
    lifecycle: Arc<Lifecycle>,
    /// Working directory per pid, dropped on any chdir (threads share it).
    cwd: HashMap<pid_t, Vec<u8>>,
    /// Directory fds per (pid, fd), checked with kcmp before use.
    dirs: HashMap<(pid_t, i32), DirFd>,
    pidfds: HashMap<pid_t, OwnedFd>,
    /// `/proc/<pid>/mem` per pid, used where `process_vm_readv` is refused.
    mems: HashMap<pid_t, OwnedFd>,
    /// `process_vm_readv` works here (Docker's default seccomp profile refuses it without
    /// CAP_SYS_PTRACE; reading `/proc/<pid>/mem` is then allowed).
    vm_ok: bool,
    /// Path arguments that could not be read from the caller's memory.
    unresolved: u64,
    /// pidfd_getfd and kcmp work here (Linux ≥ 5.6 with kcmp); else every dirfd is a readlink.
    dup_ok: bool,
    me: pid_t,
    buf: Vec<u8>,
}

impl Resolver {
    fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Resolver {
            lifecycle,
            cwd: HashMap::new(),
            dirs: HashMap::new(),
            pidfds: HashMap::new(),
            mems: HashMap::new(),
            vm_ok: true,
            unresolved: 0,
            dup_ok: true,
            // SAFETY: getpid cannot fail.
            me: unsafe { libc::getpid() },
            buf: vec![0; PATH_MAX + 1],
        }
    }

    /// Forget what was cached for processes that started or ended.
    fn refresh(&mut self) {
        let pids = self.lifecycle.take();
        if pids.is_empty() {
            return;
        }
        for p in &pids {
            self.cwd.remove(p);
            self.pidfds.remove(p);
            self.mems.remove(p);
        }
        self.dirs.retain(|(p, _), _| !pids.contains(p));
    }

    fn event(&mut self, pid: pid_t, nr: u64, a: &[u64; 6]) -> Option<Event> {
        self.refresh();
        let one = |r: &mut Self, dirfd: i32, addr: u64, op: Op| {
            r.resolve(pid, dirfd, addr).map(|p| Event::One(op, p))
        };
        match nr {
            OPEN => self.open(pid, AT_FDCWD, a[0], a[1]),
            OPENAT => self.open(pid, a[0] as i32, a[1], a[2]),
            OPENAT2 => {
                let mut flags = [0u8; 8];
                if self.read_mem(pid, a[2], &mut flags) != 8 {
                    self.unresolved += 1;
                    return None;
                }
                let flags = u64::from_ne_bytes(flags);
                self.open(pid, a[0] as i32, a[1], flags)
            }
            CREAT | TRUNCATE => one(self, AT_FDCWD, a[0], Op::Write),
            RENAME => self.rename(pid, AT_FDCWD, a[0], AT_FDCWD, a[1]),
            RENAMEAT | RENAMEAT2 => self.rename(pid, a[0] as i32, a[1], a[2] as i32, a[3]),
            LINK | SYMLINK => one(self, AT_FDCWD, a[1], Op::Write),
            LINKAT => one(self, a[2] as i32, a[3], Op::Write),
            SYMLINKAT => one(self, a[1] as i32, a[2], Op::Write),
            UNLINK => one(self, AT_FDCWD, a[0], Op::Remove),
            UNLINKAT if a[2] & libc::AT_REMOVEDIR as u64 == 0 => {
                one(self, a[0] as i32, a[1], Op::Remove)
            }
            EXECVE => one(self, AT_FDCWD, a[0], Op::Exec),
            EXECVEAT => {
                if a[4] & libc::AT_EMPTY_PATH as u64 != 0 {
                    let mut out = Vec::new();
                    readlink_proc(pid, "fd", a[0] as i32, &mut out)?;
                    Some(Event::One(Op::Exec, PathBuf::from(OsString::from_vec(out))))
                } else {
                    one(self, a[0] as i32, a[1], Op::Exec)
                }
            }
            CHDIR | FCHDIR => {
                self.cwd.clear();
                None
            }
            _ => None,
        }
    }

    fn open(&mut self, pid: pid_t, dirfd: i32, addr: u64, flags: u64) -> Option<Event> {
        let flags = flags as i32;
        if flags & (libc::O_PATH | libc::O_DIRECTORY) != 0 {
            return None;
        }
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY
            || flags & (libc::O_CREAT | libc::O_TRUNC) != 0;
        let p = self.resolve(pid, dirfd, addr)?;
        Some(Event::One(if write { Op::Write } else { Op::Read }, p))
    }

    fn rename(&mut self, pid: pid_t, ofd: i32, old: u64, nfd: i32, new: u64) -> Option<Event> {
        let old = self.resolve(pid, ofd, old)?;
        let new = self.resolve(pid, nfd, new)?;
        Some(Event::Rename(old, new))
    }

    /// The absolute, normalised path a syscall argument names, or None when it cannot be read.
    fn resolve(&mut self, pid: pid_t, dirfd: i32, addr: u64) -> Option<PathBuf> {
        let Some(n) = self.read_cstr(pid, addr) else {
            self.unresolved += 1;
            return None;
        };
        if n == 0 {
            return None;
        }
        let mut out = Vec::with_capacity(n + 128);
        if self.buf[0] != b'/' {
            if dirfd == AT_FDCWD {
                if let Some(c) = self.cwd.get(&pid) {
                    out.extend_from_slice(c);
                } else {
                    readlink_proc(pid, "cwd", -1, &mut out)?;
                    self.cwd.insert(pid, out.clone());
                }
            } else {
                self.dir_path(pid, dirfd, &mut out)?;
            }
            out.push(b'/');
        }
        out.extend_from_slice(&self.buf[..n]);
        Some(normalize_bytes(out))
    }

    /// Append the path of the tracee's directory fd to `out`.
    fn dir_path(&mut self, pid: pid_t, fd: i32, out: &mut Vec<u8>) -> Option<()> {
        if let Some(d) = self.dirs.get(&(pid, fd)) {
            // SAFETY: kcmp compares the two file descriptions; 0 means the same one.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_kcmp,
                    pid,
                    self.me,
                    KCMP_FILE,
                    fd as libc::c_ulong,
                    d.dup.as_raw_fd() as libc::c_ulong,
                )
            };
            if r == 0 {
                out.extend_from_slice(&d.path);
                return Some(());
            }
            if r < 0
                && matches!(
                    io::Error::last_os_error().raw_os_error(),
                    Some(libc::ENOSYS | libc::EPERM)
                )
            {
                // No kcmp here (a container's seccomp profile, a kernel without it): stop
                // caching rather than pay for a useless duplicate per lookup.
                self.dup_ok = false;
                self.dirs.clear();
            } else {
                self.dirs.remove(&(pid, fd));
            }
        }
        let start = out.len();
        readlink_proc(pid, "fd", fd, out)?;
        if out.get(start) != Some(&b'/') {
            // Not a file system object (a pipe, a socket): the syscall fails with ENOTDIR.
            out.truncate(start);
            return None;
        }
        if self.dup_ok {
            match self.dup_dir(pid, fd) {
                Ok(Some(dup)) => {
                    if self.dirs.len() >= FD_CACHE_MAX {
                        self.dirs.clear();
                    }
                    let path = out[start..].to_vec();
                    self.dirs.insert((pid, fd), DirFd { dup, path });
                }
                Ok(None) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                    self.dup_ok = false;
                }
                Err(_) => {}
            }
        }
        Some(())
    }

    /// A duplicate of the tracee's fd when it is a directory (holding any other kind of file
    /// open, a pipe say, could change what the tracee sees).
    fn dup_dir(&mut self, pid: pid_t, fd: i32) -> io::Result<Option<OwnedFd>> {
        let pidfd = match self.pidfds.get(&pid) {
            Some(p) => p.as_raw_fd(),
            None => {
                // SAFETY: pidfd_open returns a new fd or -1.
                let p = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
                if p < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: a fresh fd we own.
                let p = unsafe { OwnedFd::from_raw_fd(p as c_int) };
                let raw = p.as_raw_fd();
                self.pidfds.insert(pid, p);
                raw
            }
        };
        // SAFETY: pidfd_getfd returns a new close-on-exec fd or -1.
        let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let dup = unsafe { OwnedFd::from_raw_fd(dup as c_int) };
        // SAFETY: fstat into a zeroed stat buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(dup.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((st.st_mode & libc::S_IFMT == libc::S_IFDIR).then_some(dup))
    }
}

impl Resolver {
    /// Read the tracee's memory at `addr` into `buf`: the number of bytes read, or -1.
    fn read_mem(&mut self, pid: pid_t, addr: u64, buf: &mut [u8]) -> isize {
        if self.vm_ok {
            let local = libc::iovec {
                iov_base: buf.as_mut_ptr() as *mut c_void,
                iov_len: buf.len(),
            };
            let remote = libc::iovec {
                iov_base: addr as *mut c_void,
                iov_len: buf.len(),
            };
            // SAFETY: `local` is `buf`, writable for its length.
            let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
            if n >= 0 {
                return n;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EPERM | libc::ENOSYS) => self.vm_ok = false,
                _ => return -1,
            }
        }
        // A cached fd reads the memory of the program the pid ran when it was opened: after
        // an exec it fails, and a fresh one is opened.
        for fresh in [false, true] {
            if fresh {
                self.mems.remove(&pid);
            }
            let fd = match self.mems.get(&pid) {
                Some(fd) => fd.as_raw_fd(),
                None => {
                    let Ok(path) = CString::new(format!("/proc/{pid}/mem")) else {
                        return -1;
                    };
                    // SAFETY: open returns a new fd or -1.
                    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                    if fd < 0 {
                        return -1;
                    }
                    if self.mems.len() >= FD_CACHE_MAX {
                        self.mems.clear();
                    }
                    // SAFETY: a fresh fd we own.
                    self.mems.insert(pid, unsafe { OwnedFd::from_raw_fd(fd) });
                    fd
                }
            };
            // SAFETY: pread into `buf`, writable for its length.
            let n = unsafe {
                libc::pread(
                    fd,
                    buf.as_mut_ptr() as *mut c_void,
                    buf.len(),
                    addr as libc::off_t,
                )
            };
            if n > 0 {
                return n;
            }
        }
        -1
    }

    /// Read a NUL-terminated string from the tracee into `self.buf` (PATH_MAX + 1 bytes) and
    /// return its length. Reads 256 bytes at a time, never across a page boundary in one call
    /// (a string may end right before an unmapped page).
    fn read_cstr(&mut self, pid: pid_t, mut addr: u64) -> Option<usize> {
        let mut buf = std::mem::take(&mut self.buf);
        let mut len = 0;
        let mut found = None;
        while len < PATH_MAX {
            let page_left = 4096 - (addr as usize % 4096);
            let want = page_left.min(256).min(PATH_MAX + 1 - len);
            let n = self.read_mem(pid, addr, &mut buf[len..len + want]);
            if n <= 0 {
                break;
            }
            let n = n as usize;
            if let Some(z) = buf[len..len + n].iter().position(|&b| b == 0) {
                found = Some(len + z);
                break;
            }
            len += n;
            addr += n as u64;
        }
        self.buf = buf;
        found
    }
}

/// `kcmp` type: compare two file descriptions.
const KCMP_FILE: libc::c_ulong = 0;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Read,
    Write,
    Remove,
    Exec,
}

/// Append the target of `/proc/<pid>/<what>` (or `/proc/<pid>/fd/<fd>` when `fd` ≥ 0) to `out`.
fn readlink_proc(pid: pid_t, what: &str, fd: i32, out: &mut Vec<u8>) -> Option<()> {
    use std::io::Write;
    let mut name = [0u8; 64];
    let mut w = &mut name[..];
    if fd >= 0 {
        write!(w, "/proc/{pid}/{what}/{fd}\0").ok()?;
    } else {
        write!(w, "/proc/{pid}/{what}\0").ok()?;
    }
    let start = out.len();
    out.resize(start + PATH_MAX, 0);
    // SAFETY: `name` is NUL-terminated; `out` has PATH_MAX bytes free at `start`.
    let n = unsafe {
        libc::readlink(
            name.as_ptr() as *const libc::c_char,
            out[start..].as_mut_ptr() as *mut libc::c_char,
            PATH_MAX,
        )
    };
    if n <= 0 || n as usize >= PATH_MAX {
        out.truncate(start);
        return None;
    }
    out.truncate(start + n as usize);
    Some(())
}

/// Lexically normalise an absolute path given as bytes; returns it untouched (no copy) when it
/// already is (no `//`, `/./`, `/../`, trailing `/` or `/.`).
fn normalize_bytes(p: Vec<u8>) -> PathBuf {
    let clean = p.len() > 1
        && p[p.len() - 1] != b'/'
        && !p.windows(2).any(|w| w == b"//")
        && !p.split(|&b| b == b'/').any(|c| c == b"." || c == b"..");
    if clean || p == b"/" {
        PathBuf::from(OsString::from_vec(p))
    } else {
        normalize(Path::new(OsStr::from_bytes(&p)))
    }
}
