//! Thin safe wrappers over the syscalls that `nix` lacks or wraps awkwardly.
//!
//! Every `unsafe` block of nook lives here, each with the reason it is sound.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::unistd::Pid;

fn cstring(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// What `clone_process` returned in the calling process.
pub enum CloneResult {
    Parent(Pid),
    Child,
}

/// A fork-like `clone(2)` that also creates the namespaces in `flags`.
///
/// The caller must be single-threaded: the child continues with a copy of the address space and
/// may only rely on state that a `fork` would keep usable.
pub fn clone_process(flags: libc::c_int) -> io::Result<CloneResult> {
    // SAFETY: without CLONE_VM and with a null stack the raw clone behaves like fork(2): the child
    // gets a private copy of the memory and continues here. nook calls it while single-threaded, so
    // no lock held by another thread can be copied in a locked state.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
            0 as libc::c_ulong,
        )
    };
    match check(ret)? {
        0 => Ok(CloneResult::Child),
        pid => Ok(CloneResult::Parent(Pid::from_raw(pid as i32))),
    }
}

/// Plain `fork(2)` for the few places that need a second process in the same namespaces.
pub fn fork_process() -> io::Result<CloneResult> {
    clone_process(0)
}

/// `openat2(2)` with `RESOLVE_IN_ROOT`: `path` is resolved as if `root` were `/`, so neither `..`
/// nor an absolute symlink can lead outside it.
pub fn open_in_root(root: BorrowedFd<'_>, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let cpath = cstring(path)?;
    let mut how: libc::open_how = open_how_zeroed();
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `cpath` is a valid NUL-terminated string and `how` a fully initialised open_how whose
    // size we pass; the kernel returns a new descriptor that we own.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            cpath.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    let fd = check(ret)? as RawFd;
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_how_zeroed() -> libc::open_how {
    // SAFETY: open_how is a plain struct of integers, for which all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// Sets mount attributes on the mount at `fd` (and every mount below it with `recursive`).
///
/// Unlike a remount, this only adds the flags asked for, so flags the kernel locked on a mount
/// that came from a more privileged namespace are kept rather than refused.
pub fn mount_setattr(fd: BorrowedFd<'_>, recursive: bool, attr_set: u64) -> io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: the path is an empty NUL-terminated string used with AT_EMPTY_PATH, and `attr` is a
    // valid mount_attr whose size we pass.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(drop)
}

/// Marks every descriptor from `first` upwards close-on-exec, so nothing of nook's reaches the
/// container by accident.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range only changes flags of this process's descriptors.
    let ret = unsafe { libc::close_range(first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) };
    check(ret as libc::c_long).map(drop)
}

/// Makes `fd` (a terminal) the controlling terminal of this session.
pub fn set_controlling_terminal(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument and touches no memory of ours.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    check(ret as libc::c_long).map(drop)
}

pub fn window_size(fd: BorrowedFd<'_>) -> io::Result<libc::winsize> {
    // SAFETY: winsize is plain integers; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: we pass a pointer to a live, writable winsize.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    check(ret as libc::c_long).map(|_| ws)
}

pub fn set_window_size(fd: BorrowedFd<'_>, ws: &libc::winsize) -> io::Result<()> {
    // SAFETY: we pass a pointer to a live winsize that TIOCSWINSZ only reads.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws as *const libc::winsize) };
    check(ret as libc::c_long).map(drop)
}

/// Brings the loopback interface up in the current network namespace.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) returns a new descriptor that we own.
    let fd = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }
            as libc::c_long,
    )? as RawFd;
    // SAFETY: the descriptor is fresh and owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of a live ifreq.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } as libc::c_long)?;
    // SAFETY: ifru_flags is the union member SIOCGIFFLAGS just filled.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads a live ifreq.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } as libc::c_long)
        .map(drop)
}

/// `prctl(PR_SET_DUMPABLE, 0)`: other processes of the same user (the container's root among
/// them) can no longer open `/proc/<pid>/exe`, `mem` or `fd` of this one.
pub fn set_not_dumpable() -> io::Result<()> {
    // SAFETY: this prctl takes integer arguments only.
    let ret = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    check(ret as libc::c_long).map(drop)
}

/// Kills this process with `SIGKILL` when its parent dies, so a container never outlives the nook
/// process that watches it.
pub fn die_with_parent() -> io::Result<()> {
    // SAFETY: this prctl takes integer arguments only.
    let ret = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    check(ret as libc::c_long).map(drop)
}

/// Restores the default action of `SIGPIPE`, which the Rust runtime ignores and `execve` would
/// otherwise pass on to the container's command.
pub fn default_sigpipe() {
    // SAFETY: SIG_DFL is a valid disposition and no handler code is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// `kill(2)` with any signal number, realtime ones included (nix's `Signal` has none of them).
pub fn send_signal(pid: i32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes integers only and touches no memory of ours.
    check(unsafe { libc::kill(pid, signal) } as libc::c_long).map(drop)
}

/// `personality(2)`: sets the execution domain the next `execve` keeps (`PER_LINUX32`).
pub fn set_personality(persona: libc::c_ulong) -> io::Result<()> {
    // SAFETY: personality takes an integer and touches no memory of ours.
    check(unsafe { libc::personality(persona) } as libc::c_long).map(drop)
}

/// Whether `SIGHUP` is ignored in this process, as `nohup` leaves it.
pub fn hangup_ignored() -> bool {
    // SAFETY: a zeroed sigaction is a valid out-parameter; a null new action only queries.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: `old` is a live sigaction the call writes into.
    let ret = unsafe { libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) };
    ret == 0 && old.sa_sigaction == libc::SIG_IGN
}

/// Ends the process at once, without running destructors or flushing stdio buffers that the
/// parent may also hold copies of.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Fills `buf` with random bytes from the kernel.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let ret = unsafe {
            libc::getrandom(
                buf[filled..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - filled,
                0,
            )
        };
        filled += check(ret as libc::c_long)? as usize;
    }
    Ok(())
}

/// Closes every descriptor from `first` upwards.
pub fn close_from(first: u32) -> io::Result<()> {
    // SAFETY: closing descriptors cannot break memory safety; callers own none of them past
    // this point.
    let ret = unsafe { libc::close_range(first, u32::MAX, 0) };
    check(ret as libc::c_long).map(drop)
}

/// Whether `path` carries the extended attribute `name` (without following a final symlink).
pub fn has_xattr(path: &std::ffi::CStr, name: &std::ffi::CStr) -> bool {
    // SAFETY: both strings are NUL-terminated; a null buffer of size 0 only asks for the size.
    let ret = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    ret >= 0
}

/// Sets the extended attribute `name` of the file open at `fd`.
pub fn fsetxattr(fd: BorrowedFd<'_>, name: &std::ffi::OsStr, value: &[u8]) -> io::Result<()> {
    let cname = cstring(Path::new(name))?;
    // SAFETY: `cname` is NUL-terminated and `value` is a live buffer of the length we pass.
    let ret = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            cname.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            0,
        )
    };
    check(ret as libc::c_long).map(drop)
}

/// Every extended attribute of `path` (a final symlink is not followed), as (name, value). A
/// filesystem without xattr support reads as none; an attribute removed meanwhile is skipped.
pub fn xattrs(path: &Path) -> io::Result<Vec<(std::ffi::OsString, Vec<u8>)>> {
    use std::os::unix::ffi::OsStringExt;
    let names = match list_xattrs(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        match get_xattr(path, &name) {
            Ok(value) => out.push((std::ffi::OsString::from_vec(name), value)),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Installs a classic BPF seccomp program (`SECCOMP_SET_MODE_FILTER`). The caller must already
/// have set no_new_privs or hold CAP_SYS_ADMIN.
pub fn seccomp_set_filter(program: &[libc::sock_filter]) -> io::Result<()> {
    let len =
        u16::try_from(program.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `program`, which outlives the call; the kernel copies it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    check(ret).map(drop)
}

/// Closes every descriptor from 3 upwards except those in `keep`: descriptors a careless caller
/// left open must not reach the container (a directory among them would be a way out).
pub fn close_inherited_fds(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter(|fd| **fd > 2)
        .map(|fd| *fd as u32)
        .collect();
    keep.sort_unstable();
    let mut first = 3u32;
    for fd in keep {
        if fd > first {
            // SAFETY: the range holds no descriptor this process still uses; those are in `keep`.
            let ret = unsafe { libc::close_range(first, fd - 1, 0) };
            check(ret as libc::c_long)?;
        }
        first = fd + 1;
    }
    // SAFETY: as above, for the range past the last kept descriptor.
    let ret = unsafe { libc::close_range(first, u32::MAX, 0) };
    check(ret as libc::c_long).map(drop)
}

/// `ioctl(FICLONE)`: makes `dst` share all of `src`'s blocks (a reflink). Fails with
/// `EOPNOTSUPP`, `EXDEV` or `EINVAL` where the filesystem cannot share blocks.
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> io::Result<()> {
    // FICLONE is _IOW(0x94, 9, int).
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE takes the source descriptor as an integer argument and touches no memory
    // of ours.
    let ret = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) };
    check(ret as libc::c_long).map(drop)
}

/// `copy_file_range(2)` of up to `len` bytes from `*off_in` in `src` to `*off_out` in `dst`;
/// advances both offsets and returns how many bytes were copied (0 at end of file).
pub fn copy_file_range(
    src: BorrowedFd<'_>,
    off_in: &mut i64,
    dst: BorrowedFd<'_>,
    off_out: &mut i64,
    len: usize,
) -> io::Result<usize> {
    // SAFETY: both offsets point to live i64s (loff_t) that the kernel reads and updates.
    let ret = unsafe {
        libc::copy_file_range(
            src.as_raw_fd(),
            off_in as *mut i64,
            dst.as_raw_fd(),
            off_out as *mut i64,
            len,
            0,
        )
    };
    check(ret as libc::c_long).map(|n| n as usize)
}

/// The names of the extended attributes of `path` (not following a final symlink).
pub fn list_xattrs(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let cpath = cstring(path)?;
    loop {
        // SAFETY: a null buffer of size 0 asks only for the size needed.
        let size = check(
            unsafe { libc::llistxattr(cpath.as_ptr(), std::ptr::null_mut(), 0) } as libc::c_long,
        )? as usize;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        // SAFETY: the pointer and length describe `buf`, which the kernel fills.
        let ret = unsafe {
            libc::llistxattr(cpath.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, size)
        };
        match check(ret as libc::c_long) {
            Ok(n) => {
                buf.truncate(n as usize);
                return Ok(buf
                    .split(|b| *b == 0)
                    .filter(|n| !n.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect());
            }
            // The list grew between the two calls: ask again.
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The value of the extended attribute `name` of `path` (not following a final symlink).
pub fn get_xattr(path: &Path, name: &[u8]) -> io::Result<Vec<u8>> {
    let cpath = cstring(path)?;
    let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    loop {
        // SAFETY: a null buffer of size 0 asks only for the size needed.
        let size = check(unsafe {
            libc::lgetxattr(cpath.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0)
        } as libc::c_long)? as usize;
        let mut buf = vec![0u8; size];
        // SAFETY: the pointer and length describe `buf`, which the kernel fills.
        let ret = unsafe {
            libc::lgetxattr(
                cpath.as_ptr(),
                cname.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_void,
                size,
            )
        };
        match check(ret as libc::c_long) {
            Ok(n) => {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Sets the extended attribute `name` of `path` (not following a final symlink).
pub fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let cpath = cstring(path)?;
    let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the strings are NUL-terminated and the pointer and length describe `value`.
    let ret = unsafe {
        libc::lsetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            0,
        )
    };
    check(ret as libc::c_long).map(drop)
}

/// Makes the program `cmd` will run get `SIGKILL` when the process that spawned it ends, so a
/// helper such as fuse-overlayfs never outlives the nook process watching it; it starts with no
/// signal blocked.
pub fn kill_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (sigemptyset, sigprocmask, prctl, getppid, _exit); it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            // nook blocks the signals it forwards; the helper must get them (SIGTERM ends it).
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then nobody would kill us later.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}
