//! Applying tar layers to one plain directory, inside the user namespace of the image's id
//! mapping: regular files, directories, symlinks, hard links and fifos with their owners, modes
//! (setuid included), times and xattrs; OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) remove what
//! earlier layers put there; device nodes are counted and skipped.
//!
//! Nothing an archive says can reach outside the directory: entry names with `..` or a leading
//! `/` are refused, and every parent directory is opened with `sys::open_in_root` (openat2's
//! `RESOLVE_IN_ROOT`, or its walk on older kernels), so a symlink from this or an earlier layer
//! resolves as if the image were `/`. The final component
//! is never followed: whatever is there is removed first and the new entry created with
//! `O_EXCL`.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use crate::idmap::IdMapping;
use crate::sys;

/// OCI whiteout prefix: `.wh.NAME` removes NAME of the layers below.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// OCI opaque marker: `DIR/.wh..wh..opq` hides everything the layers below put in DIR.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What applying layers left out.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Device nodes: a user namespace cannot create them.
    pub skipped_devices: u64,
    /// Entries owned by ids the mapping lacks: they were given to root.
    pub unmapped_owners: u64,
    /// xattrs a user namespace may not set (`trusted.*`, most of `security.*`): left out.
    #[serde(default)]
    pub skipped_xattrs: u64,
}

/// A directory being filled from layers. Runs inside the user namespace.
pub struct Applier {
    root: OwnedFd,
    map: IdMapping,
    summary: Summary,
    /// Directories and their modification times, set once everything is in place (writing
    /// entries into a directory changes its time).
    dir_times: Vec<(PathBuf, i64)>,
}

/// A path inside the image, checked: only normal components, relative to its root. Empty for
/// the root itself.
pub fn confined_path(raw: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Applier {
    /// Creates `root` (which must not exist) to receive the layers.
    pub fn create(root: &Path, map: &IdMapping) -> Result<Applier> {
        std::fs::create_dir(root).with_context(|| format!("creating {}", root.display()))?;
        let root_fd = nix::fcntl::open(
            root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening {}", root.display()))?;
        Ok(Applier {
            root: root_fd,
            map: map.clone(),
            summary: Summary::default(),
            dir_times: Vec::new(),
        })
    }

    /// Applies one tar stream. `what` names it in errors (the archive or the layer). Returns the
    /// reader, for the caller to read to its end (digests cover the whole blob).
    pub fn apply<R: Read>(&mut self, reader: R, what: &str) -> Result<R> {
        let mut archive = tar::Archive::new(reader);
        archive.set_preserve_permissions(false);
        archive.set_preserve_ownerships(false);
        archive.set_preserve_mtime(true);
        archive.set_unpack_xattrs(false);
        archive.set_overwrite(false);
        let mut added: HashSet<PathBuf> = HashSet::new();
        let mut last: Option<PathBuf> = None;
        let entries = archive
            .entries()
            .map_err(|e| stream_error(what, &e, None))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| stream_error(what, &e, last.as_deref()))?;
            let raw = entry
                .path()
                .map_err(|e| stream_error(what, &e, last.as_deref()))?
                .into_owned();
            self.apply_entry(&mut entry, &raw, &mut added)
                .with_context(|| format!("{what}: entry {}", raw.display()))?;
            last = Some(raw);
        }
        Ok(archive.into_inner())
    }

    /// Whether nothing has been written into the image yet.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(list_dir(self.root.as_fd())
            .context("listing the image's root")?
            .is_empty())
    }

    /// Sets directory times and reports what was left out.
    pub fn finish(self) -> Result<Summary> {
        for (path, mtime) in &self.dir_times {
            let (parent, name) = match (path.parent(), path.file_name()) {
                (Some(p), Some(n)) => (p, n),
                _ => (Path::new(""), OsStr::new(".")),
            };
            // A directory a later layer removed is no longer there: nothing to do.
            let Ok(dir) = self.open_dir(parent) else {
                continue;
            };
            let t = TimeSpec::new(*mtime, 0);
            match nix::sys::stat::utimensat(dir, name, &t, &t, UtimensatFlags::NoFollowSymlink) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => {
                    return Err(errno(e))
                        .with_context(|| format!("setting the time of {}", path.display()))
                }
            }
        }
        Ok(self.summary)
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &Path,
        added: &mut HashSet<PathBuf>,
    ) -> Result<()> {
        let path = confined_path(raw).context("the name leaves the image (absolute or `..`)")?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let Some(name) = path.file_name().map(OsStr::to_os_string) else {
            // The image's root itself: only a directory can be it.
            if !kind.is_dir() {
                bail!("it would replace the image's root directory with a non-directory");
            }
            let dir = open_nofollow(self.root.as_fd(), OsStr::new("."), OFlag::O_DIRECTORY)?;
            return self.set_dir_meta(entry, dir.as_fd(), &path);
        };
        let parent_path = path.parent().unwrap_or(Path::new(""));
        if let Some(target) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(parent_path, OsStr::from_bytes(target), added);
        }
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            self.summary.skipped_devices += 1;
            return Ok(());
        }
        let parent = self.open_or_make_dir(parent_path)?;
        added.insert(path.clone());
        if kind.is_dir() {
            return self.make_dir(entry, parent.as_fd(), &name, &path);
        }
        remove_entry(parent.as_fd(), &name)?;
        let header = entry.header();
        let (uid, gid) = self.owner(header.uid()?, header.gid()?);
        let mode = header.mode()? & 0o7777;
        let mtime = header.mtime().unwrap_or(0) as i64;
        match kind {
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .context("a symlink without a target")?
                    .into_owned();
                nix::unistd::symlinkat(&target, parent.as_fd(), name.as_os_str())
                    .map_err(errno)
                    .context("creating the symlink")?;
                chown_at(parent.as_fd(), &name, uid, gid)?;
                let t = TimeSpec::new(mtime, 0);
                nix::sys::stat::utimensat(
                    parent.as_fd(),
                    name.as_os_str(),
                    &t,
                    &t,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(errno)
                .context("setting the symlink's time")?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()?
                    .context("a hard link without a target")?
                    .into_owned();
                let target = confined_path(&target)
                    .filter(|t| t.file_name().is_some())
                    .with_context(|| {
                        format!(
                            "hard link target {} leaves the image (absolute or `..`)",
                            target.display()
                        )
                    })?;
                let tparent = self
                    .open_dir(target.parent().unwrap_or(Path::new("")))
                    .with_context(|| format!("hard link target {}", target.display()))?;
                let tname = target.file_name().expect("checked above");
                nix::unistd::linkat(
                    tparent.as_fd(),
                    tname,
                    parent.as_fd(),
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(errno)
                .with_context(|| format!("linking to {}", target.display()))?;
            }
            tar::EntryType::Fifo => {
                nix::sys::stat::mknodat(
                    parent.as_fd(),
                    name.as_os_str(),
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(0o600),
                    0,
                )
                .map_err(errno)
                .context("creating the fifo")?;
                let fd = open_nofollow(parent.as_fd(), &name, OFlag::O_PATH)?;
                chown_at(parent.as_fd(), &name, uid, gid)?;
                chmod_path_fd(&fd, mode)?;
                let t = TimeSpec::new(mtime, 0);
                nix::sys::stat::utimensat(
                    parent.as_fd(),
                    name.as_os_str(),
                    &t,
                    &t,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(errno)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let xattrs = entry_xattrs(entry)?;
                // The tar crate writes the data (keeping the holes of sparse entries) into a
                // file it creates with O_EXCL through this directory descriptor.
                let dest = fd_path(parent.as_fd()).join(&name);
                let file = match entry.unpack(&dest).map_err(unpack_error)? {
                    tar::Unpacked::File(f) => f,
                    _ => bail!("the tar reader did not create a regular file"),
                };
                nix::unistd::fchown(&file, Some(uid), Some(gid))
                    .map_err(errno)
                    .context("fchown")?;
                // After the chown, which clears setuid and setgid bits.
                nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(mode))
                    .map_err(errno)
                    .context("fchmod")?;
                for (key, value) in xattrs {
                    set_xattr(&mut self.summary, file.as_fd(), &key, &value)?;
                }
            }
            other => bail!("unsupported entry type {other:?}"),
        }
        Ok(())
    }

    fn whiteout(
        &mut self,
        parent_path: &Path,
        target: &OsStr,
        added: &HashSet<PathBuf>,
    ) -> Result<()> {
        // A whiteout only hides what the layers below put there; a missing parent has nothing
        // to hide.
        let parent = match self.open_dir(parent_path) {
            Ok(p) => p,
            Err(_) => return Ok(()),
        };
        if target.as_bytes() == &OPAQUE_MARKER.as_bytes()[WHITEOUT_PREFIX.len()..] {
            for child in list_dir(parent.as_fd())? {
                if !added.contains(&parent_path.join(&child)) {
                    remove_entry(parent.as_fd(), &child)?;
                }
            }
            return Ok(());
        }
        if target.is_empty() || target == "." || target == ".." || target.as_bytes().contains(&b'/')
        {
            bail!("a whiteout of {target:?} names nothing in its directory");
        }
        if !added.contains(&parent_path.join(target)) {
            remove_entry(parent.as_fd(), target)?;
        }
        Ok(())
    }

    fn make_dir<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
    ) -> Result<()> {
        match open_nofollow(parent, name, OFlag::O_DIRECTORY | OFlag::O_RDONLY) {
            Ok(dir) => return self.set_dir_meta(entry, dir.as_fd(), path),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            // Something else is there (a file or a symlink, which is not followed): replace it.
            Err(_) => remove_entry(parent, name)?,
        }
        nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o700))
            .map_err(errno)
            .context("mkdir")?;
        let dir = open_nofollow(parent, name, OFlag::O_DIRECTORY | OFlag::O_RDONLY)?;
        self.set_dir_meta(entry, dir.as_fd(), path)
    }

    fn set_dir_meta<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        dir: BorrowedFd<'_>,
        path: &Path,
    ) -> Result<()> {
        let xattrs = entry_xattrs(entry)?;
        let header = entry.header();
        let (uid, gid) = self.owner(header.uid()?, header.gid()?);
        nix::unistd::fchown(dir, Some(uid), Some(gid))
            .map_err(errno)
            .context("fchown")?;
        nix::sys::stat::fchmod(dir, Mode::from_bits_truncate(header.mode()? & 0o7777))
            .map_err(errno)
            .context("fchmod")?;
        for (key, value) in xattrs {
            set_xattr(&mut self.summary, dir, &key, &value)?;
        }
        self.dir_times
            .push((path.to_path_buf(), header.mtime().unwrap_or(0) as i64));
        Ok(())
    }

    /// The entry's owner as ids this namespace has: ids outside the mapping become root's.
    fn owner(&mut self, uid: u64, gid: u64) -> (Uid, Gid) {
        let uid = u32::try_from(uid).ok().filter(|u| self.map.maps_uid(*u));
        let gid = u32::try_from(gid).ok().filter(|g| self.map.maps_gid(*g));
        if uid.is_none() || gid.is_none() {
            self.summary.unmapped_owners += 1;
        }
        (
            Uid::from_raw(uid.unwrap_or(0)),
            Gid::from_raw(gid.unwrap_or(0)),
        )
    }

    /// Opens a directory of the image, resolving every symlink inside the image.
    fn open_dir(&self, path: &Path) -> Result<OwnedFd> {
        if path.as_os_str().is_empty() {
            return Ok(self.root.try_clone()?);
        }
        sys::open_in_root(self.root.as_fd(), path, libc::O_PATH | libc::O_DIRECTORY)
            .with_context(|| format!("opening directory {} inside the image", path.display()))
    }

    /// Like `open_dir`, creating missing directories (archives may leave parents out).
    fn open_or_make_dir(&self, path: &Path) -> Result<OwnedFd> {
        match self.open_dir(path) {
            Ok(fd) => return Ok(fd),
            Err(e) if is_errno(&e, libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let mut done = PathBuf::new();
        let mut fd = self.root.try_clone()?;
        for c in path.components() {
            let next = done.join(c);
            fd = match self.open_dir(&next) {
                Ok(fd) => fd,
                Err(e) if is_errno(&e, libc::ENOENT) => {
                    nix::sys::stat::mkdirat(
                        fd.as_fd(),
                        c.as_os_str(),
                        Mode::from_bits_truncate(0o755),
                    )
                    .map_err(errno)
                    .with_context(|| format!("creating directory {}", next.display()))?;
                    self.open_dir(&next)?
                }
                Err(e) => return Err(e),
            };
            done = next;
        }
        Ok(fd)
    }
}

fn is_errno(e: &anyhow::Error, code: i32) -> bool {
    e.downcast_ref::<io::Error>()
        .and_then(io::Error::raw_os_error)
        == Some(code)
}

/// A tar stream that cannot be read, said as the user sees it: before the first entry it is not
/// an archive at all; later it is damaged or cut short. The tar crate's own words are kept only
/// when they are plain text (on a non-archive they quote the garbage it read).
fn stream_error(what: &str, e: &io::Error, after: Option<&Path>) -> anyhow::Error {
    let cause = e.to_string();
    // Before the first entry the tar crate's words ("failed to read entire block") add nothing.
    let cause = if after.is_some() && cause.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        format!(" ({cause})")
    } else {
        String::new()
    };
    match after {
        None => anyhow::anyhow!(
            "{what} is not a tar archive (plain, gzip, zstd or xz), an OCI image layout nor a \
             docker save archive{cause}"
        ),
        Some(last) => anyhow::anyhow!(
            "{what}: the archive is damaged or truncated after entry {}{cause}",
            last.display()
        ),
    }
}

/// The tar crate names the file it failed to write by the `/proc/self/fd/N` path nook gave
/// it, which means nothing to the user: keep only the cause (the caller names the entry).
fn unpack_error(e: io::Error) -> anyhow::Error {
    let cause = e
        .get_ref()
        .and_then(|inner| inner.source())
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.kind().to_string());
    let truncated = matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::WriteZero
    ) || cause.contains("entire");
    if truncated {
        anyhow::anyhow!("the archive ends inside this file's data: it is truncated")
    } else if cause.contains("/proc/self/fd/") {
        anyhow::anyhow!("writing its data: {}", e.kind())
    } else {
        anyhow::anyhow!("writing its data: {cause}")
    }
}

/// `/proc/self/fd/N`: the directory open at `fd`, as a path the tar crate can use.
fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn open_nofollow(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlag) -> io::Result<OwnedFd> {
    nix::fcntl::openat(
        dir,
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

fn chown_at(dir: BorrowedFd<'_>, name: &OsStr, uid: Uid, gid: Gid) -> Result<()> {
    nix::unistd::fchownat(
        dir,
        name,
        Some(uid),
        Some(gid),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(errno)
    .context("chown")
}

/// chmod of an `O_PATH` descriptor, through its /proc path (fchmod refuses O_PATH).
fn chmod_path_fd(fd: &OwnedFd, mode: u32) -> Result<()> {
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        &fd_path(fd.as_fd()),
        Mode::from_bits_truncate(mode),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(errno)
    .context("chmod")
}

/// The names in a directory, without `.` and `..`.
fn list_dir(dir: BorrowedFd<'_>) -> Result<Vec<OsString>> {
    let fd = nix::fcntl::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)?;
    let mut d = nix::dir::Dir::from_fd(fd).map_err(errno)?;
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e.map_err(errno)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(names)
}

/// Removes `name` from `dir`, whatever it is, a whole tree included; a missing entry is fine.
pub fn remove_entry(dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    match nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR) | Err(Errno::EPERM) => {
            let sub = open_nofollow(dir, name, OFlag::O_DIRECTORY | OFlag::O_PATH)
                .with_context(|| format!("opening {} to remove it", Path::new(name).display()))?;
            for child in list_dir(sub.as_fd())? {
                remove_entry(sub.as_fd(), &child)?;
            }
            nix::unistd::unlinkat(dir, name, UnlinkatFlags::RemoveDir)
                .map_err(errno)
                .with_context(|| format!("removing {}", Path::new(name).display()))
        }
        Err(e) => Err(errno(e)).with_context(|| format!("removing {}", Path::new(name).display())),
    }
}

/// The `SCHILY.xattr.*` records of an entry (how GNU tar, bsdtar and Go's archive/tar carry
/// xattrs).
fn entry_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<(OsString, Vec<u8>)>> {
    let Some(exts) = entry.pax_extensions()? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for ext in exts {
        let ext = ext?;
        if let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
            out.push((
                OsStr::from_bytes(key).to_os_string(),
                ext.value_bytes().to_vec(),
            ));
        }
    }
    Ok(out)
}

/// Sets an xattr; those a user namespace may not set (`trusted.*`, `security.*` other than
/// file capabilities) are left out and counted, as an unprivileged `tar -x` would leave them.
fn set_xattr(summary: &mut Summary, fd: BorrowedFd<'_>, key: &OsStr, value: &[u8]) -> Result<()> {
    match sys::fsetxattr(fd, key, value) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOTSUP))
                && !key.as_bytes().starts_with(b"user.") =>
        {
            summary.skipped_xattrs += 1;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("setting xattr {}", key.to_string_lossy())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confined_paths_keep_only_normal_components() {
        assert_eq!(
            confined_path(Path::new("./a/b/")),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(confined_path(Path::new(".")), Some(PathBuf::new()));
        assert_eq!(confined_path(Path::new("/etc/passwd")), None);
        assert_eq!(confined_path(Path::new("a/../../b")), None);
        assert_eq!(confined_path(Path::new("/.")), None);
    }
}
