//! The fanotify mechanism: file events without stopping the traced program.
//!
//! One fanotify group (notification class, unlimited queue, events reported as the parent
//! directory's file handle plus the entry's name) marks every real filesystem mounted on the
//! host. The kernel queues an event when a file is closed, created, removed, renamed or
//! executed, and the traced program goes on without waiting: there is no stop and no context
//! switch per file syscall. A reader thread drains the queue at most every 2 ms while the
//! command runs (between drains it sleeps, then waits for the next event: a reader always
//! waiting on the queue would be woken, inside the traced program's syscall, for every event),
//! keeps only the events of the traced process tree (its pids are known before they run:
//! ptrace still follows fork and clone, at two stops per process, the parent's fork event and
//! the child's first stop, and none per file), resolves each directory handle once
//! (`open_by_handle_at`, cached) and folds the events in queue order into the same sets the
//! other mechanisms fill.
//!
//! Needs `CAP_SYS_ADMIN` (filesystem marks, unlimited queue) and filesystems that report file
//! handles; [`Fan::new`] says why not otherwise, and the caller falls back to seccomp.
//!
//! What differs from the syscall mechanisms, by construction:
//! - paths are where the files really are (a directory reached through a symlink is recorded
//!   under its target);
//! - a file is a read when it was closed unwritten and a write when it was closed after being
//!   opened for writing (`O_RDWR` counts as a write), created, linked or renamed to;
//!   `truncate(2)` on a path is not seen;
//! - the kernel merges identical queued events: when one merged event both created and removed
//!   an entry, whether it exists when the event is read decides the order.

use crate::linux::{Op, Tracer};
use libc::{c_void, pid_t};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The events asked for: enough to tell reads, writes, removals and execs apart.
const MASK: u64 = libc::FAN_CLOSE_WRITE
    | libc::FAN_CLOSE_NOWRITE
    | libc::FAN_OPEN_EXEC
    | libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_MOVED_FROM
    | libc::FAN_MOVED_TO;

/// The shortest time between two drains of the queue, in milliseconds.
const DRAIN_PERIOD_MS: libc::c_int = 2;

/// Filesystem types that hold no files a command reads or writes as content.
const PSEUDO: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "binfmt_misc",
    "autofs",
    "nsfs",
    "efivarfs",
    "hugetlbfs",
    "rpc_pipefs",
    "selinuxfs",
    "devtmpfs",
];

/// Where container runtimes mount their containers' root filesystems (overlayfs, which cannot
/// report file handles): a host command does not work through these paths, so a mount below
/// one that cannot be marked is left unobserved instead of ruling fanotify out.
const RUNTIME_STATE: &[&[u8]] = &[
    b"/var/lib/docker",
    b"/var/lib/containerd",
    b"/run/containerd",
    b"/run/docker",
    b"/var/lib/kubelet",
    b"/var/lib/containers",
    b"/run/containers",
];

/// A fanotify group with every real filesystem marked.
pub(crate) struct Fan {
    fd: OwnedFd,
    /// A directory of each marked filesystem, by fsid: `open_by_handle_at` needs one.
    mounts: HashMap<u64, OwnedFd>,
}

/// A mount from `/proc/self/mountinfo`.
struct Mount {
    dev: String,
    point: PathBuf,
    fstype: String,
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn mounts() -> io::Result<Vec<Mount>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.len() < 5 || sep + 1 >= f.len() {
            continue;
        }
        out.push(Mount {
            dev: f[2].to_string(),
            point: PathBuf::from(OsStr::from_bytes(&unescape(f[4]))),
            fstype: f[sep + 1].to_string(),
        });
    }
    Ok(out)
}

fn fsid_key(fsid: [i32; 2]) -> u64 {
    (fsid[0] as u32 as u64) << 32 | fsid[1] as u32 as u64
}

fn under(p: &[u8], prefixes: &[Vec<u8>]) -> bool {
    prefixes.iter().any(|pre| {
        p.starts_with(pre) && (p.len() == pre.len() || p[pre.len()] == b'/' || pre.ends_with(b"/"))
    })
}

impl Fan {
    /// A group marking every filesystem mounted outside the ignored prefixes, or the reason
    /// there cannot be one here (no `CAP_SYS_ADMIN`, a kernel before 5.9, a filesystem that
    /// cannot report file handles: its events would be lost, so none is better).
    pub(crate) fn new(ignore: &[Vec<u8>]) -> Result<Fan, String> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe {
            libc::fanotify_init(
                libc::FAN_CLASS_NOTIF
                    | libc::FAN_CLOEXEC
                    | libc::FAN_NONBLOCK
                    | libc::FAN_UNLIMITED_QUEUE
                    | libc::FAN_REPORT_DFID_NAME,
                (libc::O_RDONLY | libc::O_LARGEFILE) as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(format!("fanotify_init: {}", io::Error::last_os_error()));
        }
        // SAFETY: a fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut fan = Fan {
            fd,
            mounts: HashMap::new(),
        };
        let mut devs = HashSet::new();
        for m in mounts().map_err(|e| format!("reading /proc/self/mountinfo: {e}"))? {
            if PSEUDO.contains(&m.fstype.as_str())
                || under(m.point.as_os_str().as_bytes(), ignore)
                || !devs.insert(m.dev.clone())
            {
                continue;
            }
            let Ok(c) = std::ffi::CString::new(m.point.as_os_str().as_bytes()) else {
                continue;
            };
            // SAFETY: plain syscall on a NUL-terminated path.
            let dir = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            if dir < 0 {
                // Over-mounted or gone since mountinfo was read: nothing reachable to mark.
                devs.remove(&m.dev);
                continue;
            }
            // SAFETY: a fresh fd.
            let dir = unsafe { OwnedFd::from_raw_fd(dir) };
            // SAFETY: statfs into a zeroed struct.
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut st) } != 0 {
                return Err(format!(
                    "statfs {}: {}",
                    m.point.display(),
                    io::Error::last_os_error()
                ));
            }
            // SAFETY: fsid_t is two ints.
            let fsid: [i32; 2] = unsafe { std::mem::transmute(st.f_fsid) };
            // SAFETY: marks the filesystem of the open directory (null path = dirfd itself).
            let r = unsafe {
                libc::fanotify_mark(
                    fan.fd.as_raw_fd(),
                    libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
                    MASK,
                    dir.as_raw_fd(),
                    std::ptr::null(),
                )
            };
            if r != 0 {
                let runtimes: Vec<Vec<u8>> = RUNTIME_STATE.iter().map(|p| p.to_vec()).collect();
                if under(m.point.as_os_str().as_bytes(), &runtimes) {
                    continue;
                }
                return Err(format!(
                    "marking {} ({}): {}",
                    m.point.display(),
                    m.fstype,
                    io::Error::last_os_error()
                ));
            }
            fan.mounts.entry(fsid_key(fsid)).or_insert(dir);
        }
        if fan.mounts.is_empty() {
            return Err("no filesystem to mark".into());
        }
        Ok(fan)
    }
}

impl Fan {
    /// Close the group on a thread of its own, so that the caller never waits for the kernel
    /// to tear marks down (closing a group that still has filesystem marks waits for an SRCU
    /// grace period: about 20 ms on the development VM, more than tracing a short command
    /// costs; the reader flushes the marks first, which makes the close itself quick). Where
    /// no thread can be started, the group is closed here.
    pub(crate) fn close_detached(self) {
        // On failure the closure, and the group with it, is dropped here.
        let _ = std::thread::Builder::new()
            .name("rollout-trace-close".into())
            .spawn(move || drop(self));
    }
}

/// A resolved directory: its fsid, its handle, its path (`None` when it was gone).
type CachedDir = (u64, Box<[u8]>, Option<PathBuf>);

/// The reader: folds the traced tree's events into a [`Tracer`] until told to stop.
pub(crate) struct Reader {
    fan: Fan,
    seen: Arc<Mutex<HashSet<pid_t>>>,
    tracer: Tracer,
    /// Directory paths by a hash of (fsid, handle); the handle is kept to rule out collisions.
    dirs: HashMap<u64, Vec<CachedDir>>,
    /// Events the traced tree caused (after the pid filter).
    events: u64,
    /// Events that could not be turned into a path (a directory removed before its handle
    /// was resolved, a queue overflow).
    unresolved: u64,
}

impl Reader {
    pub(crate) fn new(fan: Fan, seen: Arc<Mutex<HashSet<pid_t>>>, tracer: Tracer) -> Self {
        Reader {
            fan,
            seen,
            tracer,
            dirs: HashMap::new(),
            events: 0,
            unresolved: 0,
        }
    }

    /// Read events until `stop` becomes readable, then drain what is left and return the
    /// recorded sets. Every event of the traced tree is queued by the time the ptrace loop has
    /// seen the last process exit (events are queued inside the syscall, exit's closes
    /// included), so the final drain misses none.
    pub(crate) fn run(mut self, stop: OwnedFd) -> (Tracer, u64, u64) {
        let mut buf = vec![0u8; 256 * 1024];
        let poll = |fds: &mut [libc::pollfd], timeout: libc::c_int| -> bool {
            // SAFETY: poll on live fds; true when told to stop (or poll fails).
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if r < 0 {
                return io::Error::last_os_error().kind() != io::ErrorKind::Interrupted;
            }
            r > 0
                && fds
                    .iter()
                    .any(|f| f.fd == stop.as_raw_fd() && f.revents != 0)
        };
        let pollfd = |fd: libc::c_int| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            self.drain(&mut buf);
            // At most one drain per period: a waiter on the queue is woken inside the traced
            // program's syscall for every event, which cost `tar` about a tenth of its time.
            // So the reader first sleeps (the queue is unlimited: nothing is lost), then waits
            // for the next event, so that a quiet command costs no wake-ups at all.
            if poll(&mut [pollfd(stop.as_raw_fd())], DRAIN_PERIOD_MS) {
                break;
            }
            if poll(
                &mut [pollfd(stop.as_raw_fd()), pollfd(self.fan.fd.as_raw_fd())],
                -1,
            ) {
                break;
            }
        }
        // Every event of the tree is queued: drop the marks now, so that the kernel tears them
        // down (an SRCU grace period) while the caller works, not when the group is closed.
        // Queued events stay readable.
        // SAFETY: plain syscall on our group.
        unsafe {
            libc::fanotify_mark(
                self.fan.fd.as_raw_fd(),
                libc::FAN_MARK_FLUSH | libc::FAN_MARK_FILESYSTEM,
                0,
                libc::AT_FDCWD,
                std::ptr::null(),
            )
        };
        self.drain(&mut buf);
        let Reader {
            fan,
            tracer,
            events,
            unresolved,
            ..
        } = self;
        fan.close_detached();
        (tracer, events, unresolved)
    }

    /// Read until the queue is empty.
    fn drain(&mut self, buf: &mut [u8]) {
        loop {
            // SAFETY: read into our buffer.
            let n = unsafe {
                libc::read(
                    self.fan.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut c_void,
                    buf.len(),
                )
            };
            if n <= 0 {
                // EAGAIN: the queue is empty (the fd is non-blocking).
                return;
            }
            self.parse(&buf[..n as usize]);
        }
    }

    fn parse(&mut self, mut b: &[u8]) {
        // The pid set is locked per event, never across the resolving below: the ptrace loop
        // adds each new process to it before letting it run, and must not wait for a batch.
        let seen = self.seen.clone();
        let u16_at = |b: &[u8], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().unwrap());
        let i32_at = |b: &[u8], i: usize| i32::from_ne_bytes(b[i..i + 4].try_into().unwrap());
        while b.len() >= 24 {
            let len = u32_at(b, 0) as usize;
            if len < 24 || len > b.len() {
                break;
            }
            let (event, rest) = b.split_at(len);
            b = rest;
            let meta_len = u16_at(event, 6) as usize;
            let mask = u64::from_ne_bytes(event[8..16].try_into().unwrap());
            let fd = i32_at(event, 16);
            let pid = i32_at(event, 20);
            if fd >= 0 {
                // Not in fid mode (cannot happen with the flags above); never leak it.
                // SAFETY: the kernel gave us this fd.
                unsafe { libc::close(fd) };
            }
            if mask & libc::FAN_Q_OVERFLOW != 0 {
                self.unresolved += 1;
                continue;
            }
            let traced = seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&pid);
            if !traced {
                continue;
            }
            self.events += 1;
            // The first info record: the directory's handle and the entry's name.
            let info = &event[meta_len.min(len)..];
            if info.len() < 20 || info[0] != libc::FAN_EVENT_INFO_TYPE_DFID_NAME {
                self.unresolved += 1;
                continue;
            }
            let info_len = (u16_at(info, 2) as usize).min(info.len());
            let fsid = [i32_at(info, 4), i32_at(info, 8)];
            let handle_bytes = u32_at(info, 12) as usize;
            let handle_end = 20 + handle_bytes;
            if handle_end > info_len {
                self.unresolved += 1;
                continue;
            }
            let handle = &info[12..handle_end];
            let name = &info[handle_end..info_len];
            let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
            if name.is_empty() || name == b"." {
                continue;
            }
            let Some(dir) = self.dir(fsid_key(fsid), handle) else {
                self.unresolved += 1;
                continue;
            };
            let path = dir.join(OsStr::from_bytes(name));
            self.apply(mask, path);
        }
    }

    /// The path of a directory from its handle (cached; `None` when it is gone).
    fn dir(&mut self, fsid: u64, handle: &[u8]) -> Option<PathBuf> {
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            fsid.hash(&mut h);
            handle.hash(&mut h);
            h.finish()
        };
        if let Some(bucket) = self.dirs.get(&key) {
            if let Some((_, _, p)) = bucket.iter().find(|(f, h, _)| *f == fsid && **h == *handle) {
                return p.clone();
            }
        }
        let mount = self.fan.mounts.get(&fsid)?;
        // struct file_handle { u32 handle_bytes; int handle_type; unsigned char f_handle[]; }
        // copied into an aligned buffer.
        let mut h = vec![0u32; handle.len().div_ceil(4)];
        // SAFETY: h holds at least handle.len() bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(handle.as_ptr(), h.as_mut_ptr() as *mut u8, handle.len())
        };
        // SAFETY: a file_handle laid out as the kernel reported it.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount.as_raw_fd(),
                h.as_mut_ptr() as *mut libc::file_handle,
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        let path = if fd < 0 {
            None
        } else {
            // SAFETY: a fresh fd.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .ok()
                .filter(|p| p.is_absolute() && !p.as_os_str().as_bytes().ends_with(b" (deleted)"))
        };
        self.dirs
            .entry(key)
            .or_default()
            .push((fsid, handle.into(), path.clone()));
        path
    }

    fn apply(&mut self, mask: u64, path: PathBuf) {
        let made = mask & (libc::FAN_CREATE | libc::FAN_MOVED_TO) != 0;
        let gone = mask & (libc::FAN_DELETE | libc::FAN_MOVED_FROM) != 0;
        if made && gone {
            // Merged: the entry's existence now tells which came last.
            let exists = std::fs::symlink_metadata(&path).is_ok();
            if exists {
                self.tracer.record(path.clone(), Op::Remove);
                self.tracer.record(path, Op::Write);
            } else {
                self.tracer.record(path.clone(), Op::Write);
                self.tracer.record(path, Op::Remove);
            }
            return;
        }
        // A merged event keeps no order: creation first (a file the command made is not an
        // input), then the closes, a read before a write.
        if made {
            self.tracer.record(path.clone(), Op::Write);
        }
        if mask & libc::FAN_OPEN_EXEC != 0 {
            self.tracer.record(path.clone(), Op::Exec);
        }
        if mask & libc::FAN_CLOSE_NOWRITE != 0 {
            self.tracer.record(path.clone(), Op::Read);
        }
        if mask & libc::FAN_CLOSE_WRITE != 0 {
            self.tracer.record(path.clone(), Op::Write);
        }
        if gone {
            self.tracer.record(path, Op::Remove);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/mnt/a\040b"), b"/mnt/a b");
        assert_eq!(unescape(r"/plain"), b"/plain");
        assert_eq!(unescape(r"/odd\04"), br"/odd\04");
    }
}
