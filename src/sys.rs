//! Thin safe wrappers over the syscalls that `nix` lacks or wraps awkwardly.
//!
//! Every `unsafe` block of nook lives here, each with the reason it is sound.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};

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

/// Opens `path` as if `root` were `/`: neither `..` nor an absolute symlink can lead outside it,
/// and a magic link (`/proc/PID/fd/N`, `/proc/PID/root`, ...) is refused with `ELOOP`.
///
/// This is `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` where the kernel has it (5.6 and
/// later) and [`walk_in_root`] where it answers `ENOSYS`; both give the same results and the same
/// error kinds. `flags` are those of `open(2)` without `O_CREAT`.
pub fn open_in_root(root: BorrowedFd<'_>, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    if Support::of(&OPENAT2) != Some(false) {
        match openat2_in_root(root, path, flags) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => OPENAT2.set(false),
            result => {
                OPENAT2.set(true);
                return result;
            }
        }
    }
    walk_in_root(root, path, flags)
}

/// What this process has learnt about one system call the running kernel may lack: asked once,
/// remembered for the life of the process.
pub struct Support(AtomicU8);

const UNKNOWN: u8 = 0;
const PRESENT: u8 = 1;
const MISSING: u8 = 2;

impl Support {
    const fn new() -> Support {
        Support(AtomicU8::new(UNKNOWN))
    }

    /// `None` until a call told.
    fn of(&self) -> Option<bool> {
        match self.0.load(Ordering::Relaxed) {
            PRESENT => Some(true),
            MISSING => Some(false),
            _ => None,
        }
    }

    fn set(&self, present: bool) {
        self.0
            .store(if present { PRESENT } else { MISSING }, Ordering::Relaxed);
    }

    /// Whether a call that failed with `err` says the kernel lacks it; remembers that.
    fn missing_after(&self, err: &io::Error) -> bool {
        let missing = err.raw_os_error() == Some(libc::ENOSYS);
        if missing {
            self.set(false);
        }
        missing
    }
}

static OPENAT2: Support = Support::new();
static CLOSE_RANGE: Support = Support::new();
static CLOSE_RANGE_CLOEXEC: Support = Support::new();
static MOUNT_SETATTR: Support = Support::new();

/// Retries of an `openat2` that a concurrent rename or mount interrupted (`EAGAIN`), as the
/// kernel asks callers of `RESOLVE_IN_ROOT` to do.
const OPENAT2_RETRIES: usize = 32;

fn openat2_in_root(root: BorrowedFd<'_>, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let cpath = cstring(path)?;
    let mut how: libc::open_how = open_how_zeroed();
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    let mut tries = 0;
    loop {
        // SAFETY: `cpath` is a valid NUL-terminated string and `how` a fully initialised
        // open_how whose size we pass; the kernel returns a new descriptor that we own.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                cpath.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        match check(ret) {
            Ok(fd) => {
                // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && tries < OPENAT2_RETRIES => {
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Symlinks one resolution may follow, as the kernel's `MAXSYMLINKS`.
pub const MAX_SYMLINKS: u32 = 40;

/// procfs's `statfs` type and the inode number of its root directory.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;
const PROC_ROOT_INO: u64 = 1;

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// The resolver for kernels without `openat2`: one component at a time, each opened with
/// `O_PATH | O_NOFOLLOW` below a directory already reached, symlinks read and expanded here.
/// An absolute target restarts at `root`; `..` goes back to the directory it came from and stays
/// at `root` at the top, so no name and no symlink can lead above it. Magic links are refused
/// (`ELOOP`), as is a chain of more than [`MAX_SYMLINKS`] symlinks.
pub fn walk_in_root(root: BorrowedFd<'_>, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStrExt;

    if flags & libc::O_CREAT != 0 {
        return Err(errno(libc::EINVAL));
    }
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err(errno(libc::ENOENT));
    }
    let follow_last = flags & libc::O_NOFOLLOW == 0;
    let mut rest: VecDeque<OsString> = components(bytes).collect();
    // A trailing `/` or `.` asks for a directory, reached through a final symlink if need be.
    let mut want_dir = ends_as_directory(bytes);
    // The directories walked through, each below the previous one: `..` pops.
    let mut dirs: Vec<OwnedFd> = vec![root.try_clone_to_owned()?];
    let mut followed = 0u32;
    while let Some(name) = rest.pop_front() {
        if name == ".." {
            if dirs.len() > 1 {
                dirs.pop();
            }
            continue;
        }
        let last = rest.is_empty() && !want_dir;
        let here = dirs.last().expect("the root is never popped");
        let fd = open_path_nofollow(here.as_fd(), &name)?;
        let st = nix::sys::stat::fstat(&fd).map_err(io::Error::from)?;
        let kind = st.st_mode & libc::S_IFMT;
        if kind == libc::S_IFLNK && (follow_last || !last) {
            followed += 1;
            if followed > MAX_SYMLINKS || is_magic_link(here.as_fd(), fd.as_fd())? {
                return Err(errno(libc::ELOOP));
            }
            let target = nix::fcntl::readlinkat(&fd, Path::new("")).map_err(io::Error::from)?;
            let target = target.as_bytes();
            if target.is_empty() {
                return Err(errno(libc::ENOENT));
            }
            if rest.is_empty() && ends_as_directory(target) {
                want_dir = true;
            }
            if target.first() == Some(&b'/') {
                dirs.truncate(1);
            }
            for c in components(target).collect::<Vec<_>>().into_iter().rev() {
                rest.push_front(c);
            }
            continue;
        }
        if last {
            return open_final(here.as_fd(), &name, fd, kind, flags);
        }
        if kind != libc::S_IFDIR {
            return Err(errno(libc::ENOTDIR));
        }
        dirs.push(fd);
    }
    let here = dirs.pop().expect("the root is never popped");
    if flags & libc::O_PATH != 0 {
        return Ok(here);
    }
    nix::fcntl::openat(
        &here,
        ".",
        nix::fcntl::OFlag::from_bits_retain(flags | libc::O_CLOEXEC),
        nix::sys::stat::Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// The names of a path, without empty ones and `.`.
fn components(bytes: &[u8]) -> impl Iterator<Item = std::ffi::OsString> + '_ {
    use std::os::unix::ffi::OsStrExt;
    bytes
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| std::ffi::OsStr::from_bytes(c).to_os_string())
}

fn ends_as_directory(bytes: &[u8]) -> bool {
    bytes.ends_with(b"/") || bytes == b"." || bytes.ends_with(b"/.")
}

fn open_path_nofollow(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> io::Result<OwnedFd> {
    nix::fcntl::openat(
        dir,
        name,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// Opens the last component, already open as `found` (`O_PATH`), with the caller's flags. It is
/// opened again by name with `O_NOFOLLOW`, below a directory already reached, so a symlink put
/// there meanwhile is not followed.
fn open_final(
    dir: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    found: OwnedFd,
    kind: libc::mode_t,
    flags: libc::c_int,
) -> io::Result<OwnedFd> {
    // As the kernel: a directory is checked for before a symlink is refused.
    if flags & libc::O_DIRECTORY != 0 && kind != libc::S_IFDIR {
        return Err(errno(libc::ENOTDIR));
    }
    if flags & libc::O_PATH != 0 {
        return Ok(found);
    }
    if kind == libc::S_IFLNK {
        return Err(errno(libc::ELOOP));
    }
    nix::fcntl::openat(
        dir,
        name,
        nix::fcntl::OFlag::from_bits_retain(flags | libc::O_NOFOLLOW | libc::O_CLOEXEC),
        nix::sys::stat::Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// Whether the symlink `link` (found in `dir`) is one of procfs's magic links, which jump to
/// the object they name instead of a path. The only plain symlinks of procfs sit in its root
/// (`self`, `thread-self`, `mounts`, `net`); every one below (`PID/fd/N`, `PID/root`, `PID/exe`,
/// `PID/ns/*`, `PID/map_files/*`) is magic.
fn is_magic_link(dir: BorrowedFd<'_>, link: BorrowedFd<'_>) -> io::Result<bool> {
    let fs = nix::sys::statfs::fstatfs(link).map_err(io::Error::from)?;
    if fs.filesystem_type().0 != PROC_SUPER_MAGIC {
        return Ok(false);
    }
    let parent = nix::sys::stat::fstat(dir).map_err(io::Error::from)?;
    Ok(parent.st_ino != PROC_ROOT_INO)
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
/// Unlike a plain remount, this only adds the flags asked for, so flags the kernel locked on a
/// mount that came from a more privileged namespace are kept rather than refused. Kernels before
/// 5.12 lack `mount_setattr(2)`: there each mount is remounted (`MS_REMOUNT | MS_BIND`) with the
/// flags it already has plus the new ones, which keeps the locked ones too.
pub fn mount_setattr(fd: BorrowedFd<'_>, recursive: bool, attr_set: u64) -> io::Result<()> {
    if Support::of(&MOUNT_SETATTR) != Some(false) {
        match raw_mount_setattr(fd, recursive, attr_set) {
            Err(e) if MOUNT_SETATTR.missing_after(&e) => {}
            result => {
                MOUNT_SETATTR.set(true);
                return result;
            }
        }
    }
    remount_adding(fd, recursive, attr_set)
}

fn raw_mount_setattr(fd: BorrowedFd<'_>, recursive: bool, attr_set: u64) -> io::Result<()> {
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

/// The `mount_setattr` of old kernels: a bind remount of the mount at `fd` (and, with
/// `recursive`, of every mount below it, found in `/proc/self/mountinfo`).
fn remount_adding(fd: BorrowedFd<'_>, recursive: bool, attr_set: u64) -> io::Result<()> {
    use nix::mount::MsFlags;
    let mut add = MsFlags::empty();
    for (attr, flag) in [
        (MOUNT_ATTR_RDONLY, MsFlags::MS_RDONLY),
        (MOUNT_ATTR_NOSUID, MsFlags::MS_NOSUID),
        (MOUNT_ATTR_NODEV, MsFlags::MS_NODEV),
        (MOUNT_ATTR_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if attr_set & attr != 0 {
            add |= flag;
        }
    }
    let own = format!("/proc/self/fd/{}", fd.as_raw_fd());
    remount_one(Path::new(&own), add)?;
    if !recursive {
        return Ok(());
    }
    let top = std::fs::read_link(&own)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    for point in mount_points_below(&mountinfo, &top) {
        remount_one(&point, add)?;
    }
    Ok(())
}

fn remount_one(path: &Path, add: nix::mount::MsFlags) -> io::Result<()> {
    use nix::mount::MsFlags;
    use nix::sys::statvfs::FsFlags;
    let kept = nix::sys::statvfs::statvfs(path)
        .map_err(io::Error::from)?
        .flags();
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | add;
    for (have, flag) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if kept.contains(have) {
            flags |= flag;
        }
    }
    nix::mount::mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
        .map_err(io::Error::from)
}

/// The mount points strictly below `top`, from a `/proc/PID/mountinfo` text (whose octal escapes
/// of space, tab, newline and backslash are undone).
fn mount_points_below(mountinfo: &str, top: &Path) -> Vec<std::path::PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| std::path::PathBuf::from(std::ffi::OsString::from_vec(unescape(field))))
        .filter(|point| point != top && point.starts_with(top))
        .collect()
}

fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Marks every descriptor from `first` upwards close-on-exec, so nothing of nook's reaches the
/// container by accident. `CLOSE_RANGE_CLOEXEC` needs Linux 5.11; before, each open descriptor
/// gets `FD_CLOEXEC` by `fcntl`.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    if Support::of(&CLOSE_RANGE_CLOEXEC) != Some(false) {
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes flags of this process's
        // descriptors.
        let ret = unsafe { raw_close_range(first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
        match check(ret) {
            // 5.9 and 5.10 have close_range but not this flag: EINVAL.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) => {
                CLOSE_RANGE_CLOEXEC.set(false)
            }
            result => {
                CLOSE_RANGE_CLOEXEC.set(true);
                return result.map(drop);
            }
        }
    }
    for fd in open_fds_from(first)? {
        // SAFETY: F_SETFD only changes a flag of a descriptor; one closed meanwhile is EBADF.
        let ret = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        match check(ret as libc::c_long) {
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => {}
            other => other.map(drop)?,
        }
    }
    Ok(())
}

/// This process's open descriptors from `first` upwards: listed in `/proc/self/fd`, or, where
/// /proc is not there, every number below the descriptor limit.
fn open_fds_from(first: u32) -> io::Result<Vec<RawFd>> {
    let first = first.min(i32::MAX as u32) as RawFd;
    match nix::dir::Dir::open(
        "/proc/self/fd",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(mut dir) => {
            let own = dir.as_raw_fd();
            let mut fds = Vec::new();
            for entry in dir.iter() {
                let entry = entry.map_err(io::Error::from)?;
                let Some(fd) = entry.file_name().to_str().ok().and_then(|n| n.parse().ok()) else {
                    continue;
                };
                if fd >= first && fd != own {
                    fds.push(fd);
                }
            }
            Ok(fds)
        }
        Err(_) => {
            let (soft, _) =
                nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                    .map_err(io::Error::from)?;
            let limit = soft.min(i32::MAX as u64) as RawFd;
            Ok((first..limit).collect())
        }
    }
}

/// `close_range(2)` by its number: glibc has a wrapper only from 2.34 on, and nook must start
/// where the C library is older too.
///
/// # Safety
/// Closing descriptors another part of the process still uses would make it use freed numbers;
/// the caller owns every descriptor in the range.
unsafe fn raw_close_range(first: u32, last: u32, flags: libc::c_uint) -> libc::c_long {
    libc::syscall(libc::SYS_close_range, first, last, flags)
}

/// Closes the descriptors from `first` to `last` (both included); `close_range(2)` where the
/// kernel has it (5.9), else one `close` per open descriptor.
fn close_fds(first: u32, last: u32) -> io::Result<()> {
    if Support::of(&CLOSE_RANGE) != Some(false) {
        // SAFETY: closing descriptors cannot break memory safety; callers own none in the range.
        let ret = unsafe { raw_close_range(first, last, 0) };
        match check(ret) {
            Err(e) if CLOSE_RANGE.missing_after(&e) => {}
            result => {
                CLOSE_RANGE.set(true);
                return result.map(drop);
            }
        }
    }
    for fd in open_fds_from(first)? {
        if fd as u32 > last {
            continue;
        }
        // SAFETY: as above; a descriptor already closed answers EBADF, which changes nothing.
        unsafe { libc::close(fd) };
    }
    Ok(())
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
/// Clock ticks per second, the unit of the times in `/proc/PID/stat`.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf reads a constant of the C library and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

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
    close_fds(first, u32::MAX)
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
pub fn seccomp_set_filter(program: &[libc::sock_filter], flags: libc::c_ulong) -> io::Result<()> {
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
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    check(ret).map(drop)
}

/// Like [`seccomp_set_filter`], asking the kernel for a listener
/// (`SECCOMP_FILTER_FLAG_NEW_LISTENER`, Linux 5.0): the returned descriptor receives the calls
/// the program answers with `SECCOMP_RET_USER_NOTIF`.
pub fn seccomp_set_filter_listener(program: &[libc::sock_filter]) -> io::Result<OwnedFd> {
    let len =
        u16::try_from(program.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
    // SAFETY: `fprog` points at `program`, which outlives the call; the kernel copies it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &fprog as *const libc::sock_fprog,
        )
    };
    let fd = check(ret)? as RawFd;
    // SAFETY: the kernel just installed this descriptor (close-on-exec) for us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `statx(2)` of the file open at `fd` (`AT_EMPTY_PATH`; an `O_PATH` descriptor will do).
pub fn statx_fd(fd: BorrowedFd<'_>, flags: libc::c_int, mask: u32) -> io::Result<libc::statx> {
    let mut out = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: the path is a NUL-terminated empty string and `out` is a buffer of the struct's
    // size, which the kernel fills on success.
    let ret = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags | libc::AT_EMPTY_PATH,
            mask,
            out.as_mut_ptr(),
        )
    };
    check(ret as libc::c_long)?;
    // SAFETY: zeroed, then filled by the kernel: every byte is initialized.
    Ok(unsafe { out.assume_init() })
}

/// The bytes of a plain C struct of the kernel ABI (`stat`, `statx`), to hand to another
/// process's memory.
pub fn abi_bytes<T: AbiStruct>(value: &T) -> &[u8] {
    // SAFETY: `AbiStruct` types are plain C structs whose padding is spelled out as fields, so
    // every byte of the value is initialized; the slice borrows `value`.
    unsafe { std::slice::from_raw_parts(value as *const T as *const u8, std::mem::size_of::<T>()) }
}

/// Structs the kernel fills completely, padding included.
pub trait AbiStruct: Copy {}
impl AbiStruct for libc::stat {}
impl AbiStruct for libc::statx {}

/// The extended attribute `name` of the file open at `fd` (any descriptor, `O_PATH` too: it
/// goes through `/proc/self/fd`).
pub fn get_xattr_of(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<u8>> {
    let path = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; 64];
    // SAFETY: the strings are NUL-terminated and the pointer and length describe `buf`.
    let ret = unsafe {
        libc::getxattr(
            path.as_ptr(),
            cname.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    buf.truncate(check(ret as libc::c_long)? as usize);
    Ok(buf)
}

/// Sets (`Some`) or removes (`None`) the extended attribute `name` of the file open at `fd`,
/// through `/proc/self/fd` as [`get_xattr_of`] does.
pub fn set_xattr_of(fd: BorrowedFd<'_>, name: &[u8], value: Option<&[u8]>) -> io::Result<()> {
    let path = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the strings are NUL-terminated and the pointer and length describe `value`.
    let ret = unsafe {
        match value {
            Some(v) => libc::setxattr(
                path.as_ptr(),
                cname.as_ptr(),
                v.as_ptr() as *const libc::c_void,
                v.len(),
                0,
            ),
            None => libc::removexattr(path.as_ptr(), cname.as_ptr()),
        }
    };
    match check(ret as libc::c_long) {
        Err(e) if value.is_none() && e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
        other => other.map(drop),
    }
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
            close_fds(first, fd - 1)?;
        }
        first = fd + 1;
    }
    close_fds(first, u32::MAX)
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

/// One system call newer than Linux 4.18 that nook (or the C library under it) uses, and
/// whether the running kernel has it.
pub struct KernelCall {
    pub name: &'static str,
    /// The first Linux version with the call.
    pub since: &'static str,
    pub present: bool,
    /// What nook does where the kernel lacks it.
    pub without: &'static str,
}

/// Asks the kernel about each call nook relies on, with arguments that change nothing: an
/// absent call answers `ENOSYS`, a present one another error or success.
pub fn kernel_calls() -> Vec<KernelCall> {
    let answers = |ret: libc::c_long| {
        ret >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
    };
    let openat2 = match std::fs::File::open("/") {
        Ok(root) => match openat2_in_root(root.as_fd(), Path::new("."), libc::O_PATH) {
            Ok(_) => true,
            Err(e) => e.raw_os_error() != Some(libc::ENOSYS),
        },
        Err(_) => false,
    };
    // SAFETY: an empty range (first > last) closes nothing and is EINVAL where the call exists.
    let close_range = answers(unsafe { raw_close_range(1, 0, 0) });
    // SAFETY: the range from u32::MAX holds no descriptor; only its flag is checked.
    let cloexec = unsafe { raw_close_range(u32::MAX, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) } == 0;
    // SAFETY: descriptor -1 and a null attribute pointer are refused (EBADF or EINVAL) before
    // anything is read.
    let mount_setattr = answers(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            std::ptr::null::<MountAttr>(),
            0usize,
        )
    });
    // SAFETY: a null clone_args of size 0 is refused with EINVAL before any process is made.
    let clone3 = answers(unsafe {
        libc::syscall(libc::SYS_clone3, std::ptr::null::<libc::c_void>(), 0usize)
    });
    vec![
        KernelCall {
            name: "openat2",
            since: "5.6",
            present: openat2,
            without: "paths in a container root are resolved one component at a time (O_PATH|O_NOFOLLOW), with the same confinement",
        },
        KernelCall {
            name: "mount_setattr",
            since: "5.12",
            present: mount_setattr,
            without: "read-only and nosuid/nodev/noexec binds are made by bind remounts that keep each mount's locked flags",
        },
        KernelCall {
            name: "close_range",
            since: "5.9",
            present: close_range,
            without: "inherited descriptors are closed one by one, as listed in /proc/self/fd",
        },
        KernelCall {
            name: "close_range(CLOSE_RANGE_CLOEXEC)",
            since: "5.11",
            present: cloexec,
            without: "descriptors are marked close-on-exec one by one with fcntl",
        },
        KernelCall {
            name: "clone3",
            since: "5.3",
            present: clone3,
            without: "nook clones with clone(2) and the C library falls back by itself",
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("nook-sys-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// What a resolution gave, comparable across resolvers: the file reached, or the errno.
    fn outcome(result: io::Result<OwnedFd>) -> Result<(u64, u64), i32> {
        match result {
            Ok(fd) => {
                let st = nix::sys::stat::fstat(&fd).unwrap();
                Ok((st.st_dev, st.st_ino))
            }
            Err(e) => Err(e.raw_os_error().unwrap()),
        }
    }

    fn id_of(path: &Path) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path).unwrap();
        (m.dev(), m.ino())
    }

    /// A tree with every kind of hostile or awkward symlink a container image can hold.
    fn hostile_tree(name: &str) -> std::path::PathBuf {
        let root = scratch(name);
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("a/b/file"), b"x").unwrap();
        std::fs::write(root.join("etc/passwd"), b"root").unwrap();
        symlink("../../..", root.join("a/b/up")).unwrap();
        symlink("/a/b", root.join("abs")).unwrap();
        symlink("../../../../../etc", root.join("a/escape")).unwrap();
        symlink("/../../etc/passwd", root.join("passwd")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        symlink("/nowhere", root.join("dangling")).unwrap();
        symlink("a/b/file", root.join("file_link")).unwrap();
        symlink("a", root.join("dir_link")).unwrap();
        symlink("a/", root.join("dir_link_slash")).unwrap();
        symlink("/proc/self/root", root.join("proc_root")).unwrap();
        // l0 → l1 → … → l40 → a: l1 takes 40 links to resolve, l0 one too many.
        for i in 0..=MAX_SYMLINKS {
            let target = if i == MAX_SYMLINKS {
                "a".to_string()
            } else {
                format!("l{}", i + 1)
            };
            symlink(target, root.join(format!("l{i}"))).unwrap();
        }
        root
    }

    const CASES: &[&str] = &[
        "",
        ".",
        "/",
        "..",
        "/../..",
        "a",
        "a/",
        "a/.",
        "a/b/file",
        "/a/b/file",
        "a/../../a/b",
        "a/b/up",
        "a/b/up/etc/passwd",
        "a/b/up/../../..",
        "abs",
        "abs/file",
        "a/escape",
        "a/escape/passwd",
        "passwd",
        "loop1",
        "loop1/x",
        "dangling",
        "dangling/x",
        "file_link",
        "file_link/",
        "dir_link",
        "dir_link/",
        "dir_link_slash",
        "dir_link/b/file",
        "a/b/file/x",
        "a/b/file/",
        "missing",
        "missing/x",
        "proc_root",
        "proc_root/etc",
        "l0",
        "l1",
        "l1/b",
    ];

    const FLAGS: &[libc::c_int] = &[
        libc::O_PATH,
        libc::O_PATH | libc::O_NOFOLLOW,
        libc::O_PATH | libc::O_DIRECTORY,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        libc::O_RDONLY,
        libc::O_RDONLY | libc::O_NOFOLLOW,
        libc::O_RDONLY | libc::O_DIRECTORY,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
    ];

    #[test]
    fn the_walk_gives_what_openat2_gives_on_every_case() {
        let root = hostile_tree("table");
        let fd = std::fs::File::open(&root).unwrap();
        let mut differ = Vec::new();
        for path in CASES {
            for flags in FLAGS {
                let kernel = outcome(openat2_in_root(fd.as_fd(), Path::new(path), *flags));
                let walk = outcome(walk_in_root(fd.as_fd(), Path::new(path), *flags));
                if kernel != walk {
                    differ.push(format!(
                        "{path:?} flags {flags:#o}: openat2 {kernel:?}, walk {walk:?}"
                    ));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&root);
        assert!(differ.is_empty(), "{}", differ.join("\n"));
    }

    #[test]
    fn the_walk_stays_in_the_root() {
        let root = hostile_tree("confined");
        let fd = std::fs::File::open(&root).unwrap();
        let walk = |p: &str, flags| outcome(walk_in_root(fd.as_fd(), Path::new(p), flags));
        // `..` climbing, by name and through a relative symlink, stops at the root.
        assert_eq!(walk("/../..", libc::O_PATH), Ok(id_of(&root)));
        assert_eq!(walk("a/b/up", libc::O_PATH), Ok(id_of(&root)));
        assert_eq!(
            walk("a/escape/passwd", libc::O_PATH),
            Ok(id_of(&root.join("etc/passwd")))
        );
        // An absolute symlink restarts at the root, not at the host's `/`.
        assert_eq!(
            walk("abs/file", libc::O_PATH),
            Ok(id_of(&root.join("a/b/file")))
        );
        assert_eq!(
            walk("passwd", libc::O_PATH),
            Ok(id_of(&root.join("etc/passwd")))
        );
        assert_eq!(walk("proc_root", libc::O_PATH), Err(libc::ENOENT));
        // Loops and over-long chains.
        assert_eq!(walk("loop1", libc::O_PATH), Err(libc::ELOOP));
        assert_eq!(walk("l0", libc::O_PATH), Err(libc::ELOOP));
        assert_eq!(walk("l1", libc::O_PATH), Ok(id_of(&root.join("a"))));
        // A trailing symlink is followed, unless O_NOFOLLOW asks for the link itself.
        assert_eq!(
            walk("file_link", libc::O_PATH),
            Ok(id_of(&root.join("a/b/file")))
        );
        assert_eq!(
            walk("file_link", libc::O_PATH | libc::O_NOFOLLOW),
            Ok(id_of(&root.join("file_link")))
        );
        assert_eq!(
            walk("file_link", libc::O_RDONLY | libc::O_NOFOLLOW),
            Err(libc::ELOOP)
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn magic_links_of_proc_are_refused_and_plain_ones_followed() {
        let host = std::fs::File::open("/").unwrap();
        for path in [
            "/proc/self/root",
            "/proc/self/root/etc",
            "/proc/self/fd/0",
            "/proc/self/exe",
            "/proc/self/ns/mnt",
        ] {
            for resolve in [openat2_in_root, walk_in_root] {
                assert_eq!(
                    outcome(resolve(host.as_fd(), Path::new(path), libc::O_PATH)),
                    Err(libc::ELOOP),
                    "{path}"
                );
            }
        }
        for path in [
            "/proc/self",
            "/proc/self/status",
            "/proc/thread-self/status",
            "/proc/mounts",
        ] {
            let kernel = outcome(openat2_in_root(
                host.as_fd(),
                Path::new(path),
                libc::O_RDONLY,
            ));
            assert!(kernel.is_ok(), "{path}: {kernel:?}");
            assert_eq!(
                outcome(walk_in_root(host.as_fd(), Path::new(path), libc::O_RDONLY)),
                kernel,
                "{path}"
            );
        }
    }

    #[test]
    fn mountinfo_points_below_a_mount_are_found_and_unescaped() {
        let info = "22 1 0:21 / /r rw - tmpfs t rw\n\
                    23 22 0:22 / /r/proc rw - proc proc rw\n\
                    24 23 0:23 / /r/proc/sys rw - proc proc rw\n\
                    25 22 0:24 / /r/with\\040space rw - tmpfs t rw\n\
                    26 1 0:25 / /rx rw - tmpfs t rw\n";
        let below = mount_points_below(info, Path::new("/r"));
        assert_eq!(
            below,
            vec![
                std::path::PathBuf::from("/r/proc"),
                "/r/proc/sys".into(),
                "/r/with space".into()
            ]
        );
    }

    #[test]
    fn the_fd_fallbacks_list_and_mark_descriptors() {
        let file = std::fs::File::open("/").unwrap();
        let fd = file.as_raw_fd();
        assert!(open_fds_from(0).unwrap().contains(&fd));
        assert!(!open_fds_from(fd as u32 + 1).unwrap().contains(&fd));
    }

    #[test]
    fn this_kernel_is_asked_about_each_call() {
        let calls = kernel_calls();
        let openat2 = calls.iter().find(|c| c.name == "openat2").unwrap();
        assert_eq!(openat2.present, Support::of(&OPENAT2) != Some(false));
        assert!(calls.iter().all(|c| !c.without.is_empty()));
    }
}
