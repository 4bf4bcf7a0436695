//! The supervisor of root emulation's tier 2 and of its report: a thread of the nook process
//! that stays with the container answers the calls its seccomp filter sends with
//! `SECCOMP_RET_USER_NOTIF`.
//!
//! - chown family: the intended owner is recorded on the file as a `user.rootlesscontainers`
//!   attribute ([`super::owner_record`]), written through the container's own root so it lands
//!   in its layer. A symlink cannot carry a `user.*` attribute; its chown is faked unrecorded.
//! - stat family: the file is resolved as the caller would (its root, its cwd or dirfd); a file
//!   with a record is stat'ed here and the struct, with the recorded owner, written into the
//!   caller's buffer. Anything else (no record, a path this side cannot resolve, another
//!   architecture's call) is passed on to the kernel unchanged, so a stat never answers
//!   differently from the kernel except in the owner a chown recorded.
//! - set*id, setgroups, capset, device mknod (only sent here for the report): counted and
//!   answered with success, as tier 1's filter does.
//!
//! Nothing here acts with more rights than the container's process: the supervisor is the
//! user, outside, and resolves every path inside the container's root. When nook dies the
//! listener closes and the kernel fails the waiting calls with `ENOSYS`: no process is stuck.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use libseccomp::{notify_id_valid, ScmpArch, ScmpNotifReq, ScmpNotifResp, ScmpNotifRespFlags};
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;
use nix::sys::uio::RemoteIoVec;
use nix::unistd::Pid;

use super::owner_record::{Owner, KEEP, XATTR};
use super::root_emulation::Supervision;
use crate::sys;

/// What the supervisor emulated, for `--root-emulation-report`.
#[derive(Debug, Default)]
pub struct Counts {
    pub chown: AtomicU64,
    /// chowns whose owner could not be recorded (a symlink, a filesystem without `user.*`
    /// attributes).
    pub unrecorded: AtomicU64,
    pub setid: AtomicU64,
    pub capset: AtomicU64,
    pub mknod: AtomicU64,
    /// stats answered with a recorded owner.
    pub stat: AtomicU64,
}

impl Counts {
    /// `312 chown, 4 mknod, 20 set*id calls emulated`: the kinds that occurred, in that order.
    pub fn summary(&self) -> String {
        let kinds = [
            (self.chown.load(Ordering::Relaxed), "chown"),
            (self.mknod.load(Ordering::Relaxed), "mknod"),
            (self.setid.load(Ordering::Relaxed), "set*id/setgroups"),
            (self.capset.load(Ordering::Relaxed), "capset"),
        ];
        let parts: Vec<String> = kinds
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, kind)| format!("{n} {kind}"))
            .collect();
        let mut text = if parts.is_empty() {
            "no calls emulated".to_string()
        } else {
            format!("{} calls emulated", parts.join(", "))
        };
        let unrecorded = self.unrecorded.load(Ordering::Relaxed);
        if unrecorded > 0 {
            text.push_str(&format!(
                " ({unrecorded} chown not recorded: symlinks, or no user xattrs on the storage)"
            ));
        }
        let stat = self.stat.load(Ordering::Relaxed);
        if stat > 0 {
            text.push_str(&format!("; {stat} stat answered with a recorded owner"));
        }
        text
    }
}

/// The supervisor of one launch: a thread per listener (a container with `--init` has two).
pub struct Supervisor {
    supervision: Supervision,
    counts: Arc<Counts>,
    stop_rx: Arc<OwnedFd>,
    stop_tx: OwnedFd,
    threads: Vec<JoinHandle<()>>,
}

impl Supervisor {
    pub fn new(supervision: Supervision) -> Result<Supervisor> {
        let (rx, tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .context("pipe2 for the root emulation supervisor")?;
        Ok(Supervisor {
            supervision,
            counts: Arc::default(),
            stop_rx: Arc::new(rx),
            stop_tx: tx,
            threads: Vec::new(),
        })
    }

    /// Answers the calls of `listener`, the filter of the container whose process is `pid`.
    pub fn watch(&mut self, listener: OwnedFd, pid: i32) -> Result<()> {
        let ids = IdView::of(pid)?;
        let served = Served {
            supervision: self.supervision,
            counts: self.counts.clone(),
            ids,
            names: HashMap::new(),
        };
        let stop = self.stop_rx.clone();
        let thread = std::thread::Builder::new()
            .name("nook-supervisor".into())
            .spawn(move || served.serve(listener, &stop))
            .context("starting the root emulation supervisor's thread")?;
        self.threads.push(thread);
        Ok(())
    }

    pub fn counts(&self) -> Arc<Counts> {
        self.counts.clone()
    }

    /// Stops answering once the container is gone; returns when every thread has ended.
    pub fn finish(self) {
        drop(self.stop_tx);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// The container's id maps, to show a host owner as the container sees it.
struct IdView {
    uids: Vec<(u32, u32, u32)>,
    gids: Vec<(u32, u32, u32)>,
}

impl IdView {
    fn of(pid: i32) -> Result<IdView> {
        let read = |name: &str| -> Result<Vec<(u32, u32, u32)>> {
            let path = format!("/proc/{pid}/{name}");
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            Ok(text
                .lines()
                .filter_map(|line| {
                    let f: Vec<u32> = line
                        .split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect();
                    (f.len() == 3).then(|| (f[0], f[1], f[2]))
                })
                .collect())
        };
        Ok(IdView {
            uids: read("uid_map")?,
            gids: read("gid_map")?,
        })
    }

    fn inside(map: &[(u32, u32, u32)], host: u32) -> u32 {
        map.iter()
            .find(|(_, outside, size)| host >= *outside && host - outside < *size)
            .map(|(inside, outside, _)| inside + (host - outside))
            .unwrap_or(65534)
    }

    fn owner(&self, uid: u32, gid: u32) -> Owner {
        Owner {
            uid: Self::inside(&self.uids, uid),
            gid: Self::inside(&self.gids, gid),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    /// chown, lchown (path in arg 0, ids in 1 and 2).
    ChownPath {
        follow: bool,
    },
    /// fchown(fd, uid, gid).
    Fchown,
    /// fchownat(dirfd, path, uid, gid, flags).
    Fchownat,
    /// stat, lstat (path in arg 0, buffer in 1).
    StatPath {
        follow: bool,
    },
    /// fstat(fd, buf).
    Fstat,
    /// newfstatat(dirfd, path, buf, flags).
    Newfstatat,
    /// statx(dirfd, path, flags, mask, buf).
    Statx,
    Setid,
    Capset,
    Mknod,
    Other,
}

fn call_named(name: &str) -> Call {
    match name {
        "chown" | "chown32" => Call::ChownPath { follow: true },
        "lchown" | "lchown32" => Call::ChownPath { follow: false },
        "fchown" | "fchown32" => Call::Fchown,
        "fchownat" => Call::Fchownat,
        "stat" => Call::StatPath { follow: true },
        "lstat" => Call::StatPath { follow: false },
        "fstat" => Call::Fstat,
        "newfstatat" => Call::Newfstatat,
        "statx" => Call::Statx,
        "capset" => Call::Capset,
        "mknod" | "mknodat" => Call::Mknod,
        n if matches!(
            n.strip_suffix("32").unwrap_or(n),
            "setuid"
                | "setgid"
                | "setreuid"
                | "setregid"
                | "setresuid"
                | "setresgid"
                | "setfsuid"
                | "setfsgid"
                | "setgroups"
        ) =>
        {
            Call::Setid
        }
        _ => Call::Other,
    }
}

/// The file a call names.
enum Target {
    /// A descriptor of the caller's (`AT_FDCWD` is its cwd).
    Fd(i32),
    /// A path, relative to the caller's `dirfd` (or cwd) unless absolute.
    At {
        dirfd: i32,
        path: PathBuf,
        follow: bool,
    },
}

/// A failed call's errno.
type Errno = i32;

fn errno_of(err: &io::Error) -> Errno {
    err.raw_os_error().unwrap_or(libc::EIO)
}

struct Served {
    supervision: Supervision,
    counts: Arc<Counts>,
    ids: IdView,
    names: HashMap<(ScmpArch, i32), Call>,
}

impl Served {
    fn serve(mut self, listener: OwnedFd, stop: &OwnedFd) {
        let fd = listener.as_raw_fd();
        loop {
            let mut fds = [
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(_) => return,
            }
            let listener_events = fds[0].revents().unwrap_or(PollFlags::empty());
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                return;
            }
            if !listener_events.contains(PollFlags::POLLIN) {
                // POLLHUP: every process of the filter is gone.
                if !listener_events.is_empty() {
                    return;
                }
                continue;
            }
            // The caller may have been killed since the poll: nothing to answer then.
            let Ok(req) = ScmpNotifReq::receive(fd) else {
                continue;
            };
            let resp = self.answer(fd, &req);
            let _ = resp.respond(fd);
        }
    }

    fn call_of(&mut self, req: &ScmpNotifReq) -> Call {
        let key = (req.data.arch, req.data.syscall.as_raw_syscall());
        *self.names.entry(key).or_insert_with(|| {
            req.data
                .syscall
                .get_name_by_arch(req.data.arch)
                .map(|n| call_named(&n))
                .unwrap_or(Call::Other)
        })
    }

    fn answer(&mut self, fd: i32, req: &ScmpNotifReq) -> ScmpNotifResp {
        let ok = ScmpNotifResp::new_val(req.id, 0, ScmpNotifRespFlags::empty());
        let pass_on = ScmpNotifResp::new_continue(req.id, ScmpNotifRespFlags::empty());
        let failed =
            |errno: Errno| ScmpNotifResp::new_error(req.id, -errno, ScmpNotifRespFlags::empty());
        let native = req.data.arch == ScmpArch::native();
        let args = req.data.args;
        let count = |counter: &AtomicU64| {
            counter.fetch_add(1, Ordering::Relaxed);
        };
        match self.call_of(req) {
            call @ (Call::ChownPath { .. } | Call::Fchown | Call::Fchownat) => {
                count(&self.counts.chown);
                if !self.supervision.owners {
                    return ok;
                }
                let pid = req.pid as i32;
                let target = match call {
                    Call::ChownPath { follow } => read_path(pid, args[0]).map(|path| Target::At {
                        dirfd: libc::AT_FDCWD,
                        path,
                        follow,
                    }),
                    Call::Fchown => Ok(Target::Fd(args[0] as i32)),
                    _ => read_path(pid, args[1])
                        .map(|path| at_target(args[0] as i32, path, args[4] as i32)),
                };
                let (uid, gid) = match call {
                    Call::Fchownat => (args[2] as u32, args[3] as u32),
                    _ => (args[1] as u32, args[2] as u32),
                };
                let target = match target {
                    Ok(t) => t,
                    Err(e) => return failed(errno_of(&e)),
                };
                // The path was read from the caller's memory: only trust it if the caller
                // still waits on this call (its pid was not reused meanwhile).
                if notify_id_valid(fd, req.id).is_err() {
                    return failed(libc::ENOENT);
                }
                match self.record(pid, &target, uid, gid) {
                    Ok(()) => ok,
                    Err(errno) => failed(errno),
                }
            }
            call @ (Call::StatPath { .. } | Call::Fstat | Call::Newfstatat | Call::Statx) => {
                if !native || !self.supervision.owners {
                    return pass_on;
                }
                match self.stat(fd, req, call) {
                    Ok(true) => {
                        count(&self.counts.stat);
                        ok
                    }
                    Ok(false) => pass_on,
                    Err(errno) => failed(errno),
                }
            }
            Call::Setid => {
                count(&self.counts.setid);
                ok
            }
            Call::Capset => {
                count(&self.counts.capset);
                ok
            }
            Call::Mknod => {
                count(&self.counts.mknod);
                ok
            }
            // Only the calls above are sent here; a profile's own notify rule has no agent.
            Call::Other => failed(libc::ENOSYS),
        }
    }

    /// Records `uid`:`gid` (either `-1`: unchanged) as the owner of `target`.
    fn record(&self, pid: i32, target: &Target, uid: u32, gid: u32) -> Result<(), Errno> {
        let file = open_target(pid, target).map_err(|e| errno_of(&e))?;
        let st = nix::sys::stat::fstat(file.as_fd()).map_err(|e| e as i32)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            self.counts.unrecorded.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let real = self.ids.owner(st.st_uid, st.st_gid);
        let existing = recorded(file.as_fd());
        let current = existing.map_or(real, |r| r.over(real));
        let wanted = Owner {
            uid: if uid == KEEP { current.uid } else { uid },
            gid: if gid == KEEP { current.gid } else { gid },
        };
        if current == wanted && existing.map_or(true, |r| r == wanted) {
            // Already so: a repeated chown writes nothing.
            return Ok(());
        }
        let value = (wanted != real).then(|| wanted.encode());
        match sys::set_xattr_of(file.as_fd(), XATTR, value.as_deref()) {
            Ok(()) => Ok(()),
            // A `user.*` attribute needs write permission, which root inside has over any file
            // (CAP_DAC_OVERRIDE) and the owner outside gets by asking.
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                with_owner_write(file.as_fd(), st.st_mode, || {
                    sys::set_xattr_of(file.as_fd(), XATTR, value.as_deref())
                })
                .map_err(|e| errno_of(&e))
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM)) => {
                self.counts.unrecorded.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(errno_of(&e)),
        }
    }

    /// Answers a stat of a file with a record; `Ok(false)`: let the kernel answer.
    fn stat(&self, fd: i32, req: &ScmpNotifReq, call: Call) -> Result<bool, Errno> {
        let pid = req.pid as i32;
        let args = req.data.args;
        let path_at = |index: usize| read_path(pid, args[index]);
        let (target, buf) = match call {
            Call::StatPath { follow } => match path_at(0) {
                Ok(path) => (
                    Target::At {
                        dirfd: libc::AT_FDCWD,
                        path,
                        follow,
                    },
                    args[1],
                ),
                Err(_) => return Ok(false),
            },
            Call::Fstat => (Target::Fd(args[0] as i32), args[1]),
            Call::Newfstatat => match path_at(1) {
                Ok(path) => (at_target(args[0] as i32, path, args[3] as i32), args[2]),
                Err(_) => return Ok(false),
            },
            _ => match path_at(1) {
                Ok(path) => (at_target(args[0] as i32, path, args[2] as i32), args[4]),
                Err(_) => return Ok(false),
            },
        };
        if notify_id_valid(fd, req.id).is_err() {
            return Ok(false);
        }
        let Ok(file) = open_target(pid, &target) else {
            return Ok(false);
        };
        let Some(record) = recorded(file.as_fd()) else {
            return Ok(false);
        };
        let written = if call == Call::Statx {
            let flags = args[2] as i32 & libc::AT_STATX_SYNC_TYPE;
            let Ok(mut stx) = sys::statx_fd(file.as_fd(), flags, args[3] as u32) else {
                return Ok(false);
            };
            let shown = record.over(self.ids.owner(stx.stx_uid, stx.stx_gid));
            (stx.stx_uid, stx.stx_gid) = (shown.uid, shown.gid);
            write_back(fd, req, buf, sys::abi_bytes(&stx))
        } else {
            let Ok(mut st) = nix::sys::stat::fstat(file.as_fd()) else {
                return Ok(false);
            };
            let shown = record.over(self.ids.owner(st.st_uid, st.st_gid));
            (st.st_uid, st.st_gid) = (shown.uid, shown.gid);
            write_back(fd, req, buf, sys::abi_bytes(&st))
        };
        written.map(|()| true)
    }
}

/// fchownat/newfstatat/statx's `(dirfd, path, flags)`.
fn at_target(dirfd: i32, path: PathBuf, flags: i32) -> Target {
    if path.as_os_str().is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
        Target::Fd(dirfd)
    } else {
        Target::At {
            dirfd,
            path,
            follow: flags & libc::AT_SYMLINK_NOFOLLOW == 0,
        }
    }
}

/// The record of the file open at `fd`, if it has one.
fn recorded(fd: BorrowedFd<'_>) -> Option<Owner> {
    sys::get_xattr_of(fd, XATTR)
        .ok()
        .and_then(|v| Owner::decode(&v))
}

/// Runs `work` with the owner's write bit set on the file, then puts its mode back.
fn with_owner_write(
    fd: BorrowedFd<'_>,
    mode: libc::mode_t,
    work: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let chmod = |bits: libc::mode_t| {
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            path.as_str(),
            Mode::from_bits_truncate(bits),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(io::Error::from)
    };
    chmod((mode & 0o7777) | libc::S_IWUSR)?;
    let result = work();
    chmod(mode & 0o7777)?;
    result
}

/// Opens what `target` names as the caller sees it, `O_PATH`: descriptors through its
/// `/proc/PID/fd`, paths inside its root (never above it, whatever its symlinks say).
fn open_target(pid: i32, target: &Target) -> io::Result<OwnedFd> {
    let proc_link = |link: &str| {
        nix::fcntl::open(
            format!("/proc/{pid}/{link}").as_str(),
            OFlag::O_PATH | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)
    };
    match target {
        Target::Fd(n) if *n == libc::AT_FDCWD => proc_link("cwd"),
        Target::Fd(n) => proc_link(&format!("fd/{n}")),
        Target::At {
            dirfd,
            path,
            follow,
        } => {
            let full = if path.is_absolute() {
                path.clone()
            } else {
                let link = if *dirfd == libc::AT_FDCWD {
                    format!("/proc/{pid}/cwd")
                } else {
                    format!("/proc/{pid}/fd/{dirfd}")
                };
                let base = std::fs::read_link(&link)?;
                // A directory outside the caller's root (or deleted) has no path from it.
                if !base.is_absolute() {
                    return Err(io::Error::from_raw_os_error(libc::EXDEV));
                }
                base.join(path)
            };
            let root = proc_link("root")?;
            let mut flags = libc::O_PATH | libc::O_CLOEXEC;
            if !follow {
                flags |= libc::O_NOFOLLOW;
            }
            sys::open_in_root(root.as_fd(), &full, flags)
        }
    }
}

/// The NUL-terminated path at `addr` in the memory of `pid`.
fn read_path(pid: i32, addr: u64) -> io::Result<PathBuf> {
    const PAGE: usize = 4096;
    let mut out = Vec::new();
    let mut at = addr as usize;
    while out.len() <= libc::PATH_MAX as usize {
        // Page by page: the string may end just before an unmapped page.
        let len = PAGE - at % PAGE;
        let mut buf = vec![0u8; len];
        let read = nix::sys::uio::process_vm_readv(
            Pid::from_raw(pid),
            &mut [IoSliceMut::new(&mut buf)],
            &[RemoteIoVec { base: at, len }],
        )
        .map_err(io::Error::from)?;
        if read == 0 {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        if let Some(end) = buf[..read].iter().position(|b| *b == 0) {
            out.extend_from_slice(&buf[..end]);
            return Ok(PathBuf::from(std::ffi::OsString::from_vec(out)));
        }
        out.extend_from_slice(&buf[..read]);
        at += read;
    }
    Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG))
}

/// Writes `bytes` into the caller's buffer at `addr`, if it still waits on this call.
fn write_back(fd: i32, req: &ScmpNotifReq, addr: u64, bytes: &[u8]) -> Result<(), Errno> {
    if notify_id_valid(fd, req.id).is_err() {
        return Err(libc::ENOENT);
    }
    let written = nix::sys::uio::process_vm_writev(
        Pid::from_raw(req.pid as i32),
        &[IoSlice::new(bytes)],
        &[RemoteIoVec {
            base: addr as usize,
            len: bytes.len(),
        }],
    )
    .map_err(|_| libc::EFAULT)?;
    if written == bytes.len() {
        Ok(())
    } else {
        Err(libc::EFAULT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_told_by_name() {
        assert_eq!(call_named("lchown32"), Call::ChownPath { follow: false });
        assert_eq!(call_named("setresuid"), Call::Setid);
        assert_eq!(call_named("setgroups32"), Call::Setid);
        assert_eq!(call_named("setsid"), Call::Other);
        assert_eq!(call_named("setpgid"), Call::Other);
        assert_eq!(call_named("statx"), Call::Statx);
    }

    #[test]
    fn the_summary_names_what_occurred() {
        let counts = Counts::default();
        assert_eq!(counts.summary(), "no calls emulated");
        counts.chown.store(3, Ordering::Relaxed);
        counts.setid.store(2, Ordering::Relaxed);
        assert_eq!(
            counts.summary(),
            "3 chown, 2 set*id/setgroups calls emulated"
        );
    }

    #[test]
    fn host_owners_show_through_the_map() {
        let ids = IdView {
            uids: vec![(0, 1000, 1)],
            gids: vec![(0, 1000, 1), (1, 100000, 65536)],
        };
        assert_eq!(ids.owner(1000, 100005), Owner { uid: 0, gid: 6 });
        assert_eq!(
            ids.owner(0, 5),
            Owner {
                uid: 65534,
                gid: 65534
            }
        );
    }
}
