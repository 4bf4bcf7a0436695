//! The copy backend's private copy of an image: the whole tree, once, at container creation.
//!
//! Data is shared with `FICLONE` where the filesystem can (btrfs, xfs with reflink, bcachefs),
//! else copied with `copy_file_range` extent by extent so holes stay holes. Owners, modes,
//! timestamps, symlinks, hard links (as links), FIFOs, sockets and the extended attributes the
//! namespace may set are kept. Run it inside the container's user namespace
//! ([`crate::launch::run_in_userns`]) so the owners it sets are the container's ids.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{
    DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::sys::stat::{utimensat, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::sys;

/// What a copy did besides copying, for the user to hear about.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CopySummary {
    pub files: u64,
    /// Regular files whose data is shared with the image (reflinks).
    pub reflinked: u64,
    /// Device nodes left out: a user namespace cannot create them.
    pub devices_skipped: u64,
    /// Entries whose owner is not mapped where the copy ran; their copies belong to the copier.
    pub owners_unmapped: u64,
    /// Extended attributes the namespace or the target filesystem refused.
    pub xattrs_skipped: u64,
}

impl CopySummary {
    /// One line for the user about what was not kept, if anything was not.
    pub fn warning(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.devices_skipped > 0 {
            parts.push(format!(
                "{} device node(s) left out (a user namespace cannot create them; the container \
                 gets its own /dev)",
                self.devices_skipped
            ));
        }
        if self.owners_unmapped > 0 {
            parts.push(format!(
                "{} entr(y/ies) owned by ids not mapped in the container now belong to its root \
                 (configure subordinate ids in /etc/subuid and /etc/subgid)",
                self.owners_unmapped
            ));
        }
        if self.xattrs_skipped > 0 {
            parts.push(format!(
                "{} extended attribute(s) the user namespace or the storage filesystem refused",
                self.xattrs_skipped
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Copies the tree at `src` to `dst`, which must not exist yet.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<CopySummary> {
    let meta = fs::symlink_metadata(src)
        .with_context(|| format!("reading the image {}", src.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", src.display());
    }
    let mut copier = Copier {
        links: HashMap::new(),
        reflink: true,
        summary: CopySummary::default(),
    };
    copier.copy_dir(src, dst, &meta)?;
    Ok(copier.summary)
}

/// Copies what the directory `src` holds into the existing directory `dst` (a fresh tmpfs for
/// `tmpcopyup`). `dst` itself keeps its mode and owner: a tmpfs has them from its options.
pub fn copy_contents(src: &Path, dst: &Path) -> Result<CopySummary> {
    let mut copier = Copier {
        links: HashMap::new(),
        reflink: false,
        summary: CopySummary::default(),
    };
    let entries = fs::read_dir(src).with_context(|| format!("listing {}", src.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", src.display()))?;
        let from = entry.path();
        let meta =
            fs::symlink_metadata(&from).with_context(|| format!("reading {}", from.display()))?;
        copier.copy_entry(&from, &dst.join(entry.file_name()), &meta)?;
    }
    Ok(copier.summary)
}

struct Copier {
    /// First copy of each multiply-linked file, by the source's (device, inode).
    links: HashMap<(u64, u64), PathBuf>,
    /// Whether FICLONE may still work on this pair of filesystems.
    reflink: bool,
    summary: CopySummary,
}

impl Copier {
    fn copy_dir(&mut self, src: &Path, dst: &Path, meta: &Metadata) -> Result<()> {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(dst)
            .with_context(|| format!("creating directory {}", dst.display()))?;
        let entries = fs::read_dir(src).with_context(|| format!("listing {}", src.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", src.display()))?;
            let from = entry.path();
            let to = dst.join(entry.file_name());
            let meta = fs::symlink_metadata(&from)
                .with_context(|| format!("reading {}", from.display()))?;
            self.copy_entry(&from, &to, &meta)?;
        }
        // After the contents: a read-only directory can still be filled, and its times stay.
        self.apply_metadata(src, dst, meta)
    }

    fn copy_entry(&mut self, src: &Path, dst: &Path, meta: &Metadata) -> Result<()> {
        let kind = meta.file_type();
        if kind.is_dir() {
            return self.copy_dir(src, dst, meta);
        }
        if !kind.is_dir() && meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                return fs::hard_link(first, dst)
                    .with_context(|| format!("linking {} to {}", dst.display(), first.display()));
            }
        }
        if kind.is_file() {
            self.copy_file(src, dst, meta)?;
            self.summary.files += 1;
        } else if kind.is_symlink() {
            let target =
                fs::read_link(src).with_context(|| format!("reading link {}", src.display()))?;
            std::os::unix::fs::symlink(&target, dst)
                .with_context(|| format!("creating symlink {}", dst.display()))?;
        } else if kind.is_fifo()
            || kind.is_socket()
            || kind.is_char_device()
            || kind.is_block_device()
        {
            let sflag = if kind.is_fifo() {
                SFlag::S_IFIFO
            } else if kind.is_socket() {
                SFlag::S_IFSOCK
            } else if kind.is_char_device() {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
            match nix::sys::stat::mknod(dst, sflag, mode, meta.rdev()) {
                Ok(()) => {}
                Err(nix::Error::EPERM) if kind.is_char_device() || kind.is_block_device() => {
                    self.summary.devices_skipped += 1;
                    return Ok(());
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("mknod {}", dst.display()));
                }
            }
        }
        if meta.nlink() > 1 {
            self.links
                .insert((meta.dev(), meta.ino()), dst.to_path_buf());
        }
        self.apply_metadata(src, dst, meta)
    }

    fn copy_file(&mut self, src: &Path, dst: &Path, meta: &Metadata) -> Result<()> {
        let from = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(src)
            .with_context(|| format!("opening {}", src.display()))?;
        let to = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dst)
            .with_context(|| format!("creating {}", dst.display()))?;
        if self.reflink && meta.len() > 0 {
            match sys::ficlone(to.as_fd(), from.as_fd()) {
                Ok(()) => {
                    self.summary.reflinked += 1;
                    return Ok(());
                }
                Err(e) if reflink_unsupported(&e) => self.reflink = false,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("ioctl(FICLONE) {} to {}", src.display(), dst.display())
                    })
                }
            }
        }
        copy_data(&from, &to, meta.len())
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))
    }

    /// Owner, then mode (a chown clears set-id bits), then extended attributes (a chown also
    /// clears `security.capability`), then times (every change above touches them).
    fn apply_metadata(&mut self, src: &Path, dst: &Path, meta: &Metadata) -> Result<()> {
        match std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid())) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.summary.owners_unmapped += 1,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("chown {}:{} {}", meta.uid(), meta.gid(), dst.display())
                })
            }
        }
        let symlink = meta.file_type().is_symlink();
        if !symlink {
            fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .with_context(|| format!("chmod {:o} {}", meta.mode() & 0o7777, dst.display()))?;
        }
        self.copy_xattrs(src, dst)?;
        let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
        let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
        utimensat(
            nix::fcntl::AT_FDCWD,
            dst,
            &atime,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .with_context(|| format!("setting the times of {}", dst.display()))
    }

    fn copy_xattrs(&mut self, src: &Path, dst: &Path) -> Result<()> {
        let names = match sys::list_xattrs(src) {
            Ok(names) => names,
            Err(e) if xattr_refused(&e) => return Ok(()),
            Err(e) => {
                return Err(e).with_context(|| format!("listing xattrs of {}", src.display()))
            }
        };
        for name in names {
            let value = match sys::get_xattr(src, &name) {
                Ok(v) => v,
                Err(e) if xattr_refused(&e) || e.raw_os_error() == Some(libc::ENODATA) => {
                    self.summary.xattrs_skipped += 1;
                    continue;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "reading xattr {} of {}",
                            String::from_utf8_lossy(&name),
                            src.display()
                        )
                    })
                }
            };
            match sys::set_xattr(dst, &name, &value) {
                Ok(()) => {}
                Err(e) if xattr_refused(&e) => self.summary.xattrs_skipped += 1,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "setting xattr {} on {}",
                            String::from_utf8_lossy(&name),
                            dst.display()
                        )
                    })
                }
            }
        }
        Ok(())
    }
}

fn reflink_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY | libc::ENOSYS)
    )
}

fn xattr_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM | libc::EOPNOTSUPP | libc::EACCES)
    )
}

/// Copies the data extents of `from` (found with `SEEK_DATA`/`SEEK_HOLE`) and sets the length,
/// so holes stay holes.
fn copy_data(from: &File, to: &File, len: u64) -> io::Result<()> {
    use nix::unistd::{lseek, Whence};
    let len = len as i64;
    let mut pos = 0i64;
    while pos < len {
        let data = match lseek(from, pos, Whence::SeekData) {
            Ok(off) => off,
            // No data after `pos`: the rest is a hole.
            Err(nix::Error::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(from, data, Whence::SeekHole).map_err(io::Error::from)?;
        copy_range(from, to, data, hole.min(len) - data)?;
        pos = hole;
    }
    to.set_len(len as u64)
}

fn copy_range(from: &File, to: &File, start: i64, count: i64) -> io::Result<()> {
    let (mut off_in, mut off_out) = (start, start);
    let end = start + count;
    while off_in < end {
        let want = (end - off_in).min(1 << 30) as usize;
        match sys::copy_file_range(from.as_fd(), &mut off_in, to.as_fd(), &mut off_out, want) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)
                ) =>
            {
                return copy_range_by_reading(from, to, off_in, end - off_in);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn copy_range_by_reading(from: &File, to: &File, start: i64, count: i64) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = start as u64;
    let end = (start + count) as u64;
    while off < end {
        let want = ((end - off) as usize).min(buf.len());
        let n = from.read_at(&mut buf[..want], off)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nook-copy-{name}-{}", std::process::id()));
        let _ = crate::fsutil::remove_tree(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn copy_keeps_links_modes_times_holes_and_fifos() {
        let dir = scratch("tree");
        let src = dir.join("src");
        fs::create_dir_all(src.join("sub/deeper")).unwrap();
        fs::write(src.join("sub/file"), b"hello").unwrap();
        fs::hard_link(src.join("sub/file"), src.join("link")).unwrap();
        std::os::unix::fs::symlink("sub/file", src.join("sym")).unwrap();
        std::os::unix::fs::symlink("/nowhere", src.join("dangling")).unwrap();
        nix::unistd::mkfifo(
            &src.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .unwrap();
        let sparse = File::create(src.join("sparse")).unwrap();
        sparse.write_all_at(b"end", 64 << 20).unwrap();
        drop(sparse);
        fs::set_permissions(src.join("sub/file"), fs::Permissions::from_mode(0o4751)).unwrap();
        fs::set_permissions(src.join("sub/deeper"), fs::Permissions::from_mode(0o500)).unwrap();
        let old = TimeSpec::new(1_000_000, 5);
        utimensat(
            nix::fcntl::AT_FDCWD,
            &src.join("sub"),
            &old,
            &old,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        let user_xattr = sys::set_xattr(&src.join("sub/file"), b"user.nook", b"v").is_ok();

        let dst = dir.join("dst");
        let summary = copy_tree(&src, &dst).unwrap();

        assert_eq!(fs::read(dst.join("link")).unwrap(), b"hello");
        let a = fs::metadata(dst.join("sub/file")).unwrap();
        let b = fs::metadata(dst.join("link")).unwrap();
        assert_eq!(a.ino(), b.ino(), "hard links must stay links");
        assert_eq!(a.mode() & 0o7777, 0o4751);
        assert_eq!(
            fs::read_link(dst.join("sym")).unwrap(),
            Path::new("sub/file")
        );
        assert_eq!(
            fs::read_link(dst.join("dangling")).unwrap(),
            Path::new("/nowhere")
        );
        assert!(fs::symlink_metadata(dst.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        let deeper = fs::metadata(dst.join("sub/deeper")).unwrap();
        assert_eq!(deeper.mode() & 0o7777, 0o500);
        let sub = fs::metadata(dst.join("sub")).unwrap();
        assert_eq!((sub.mtime(), sub.mtime_nsec()), (1_000_000, 5));
        let sparse = fs::metadata(dst.join("sparse")).unwrap();
        assert_eq!(sparse.len(), (64 << 20) + 3);
        assert!(
            sparse.blocks() * 512 < 1 << 20,
            "the hole was filled: {} blocks",
            sparse.blocks()
        );
        if user_xattr {
            assert_eq!(
                sys::get_xattr(&dst.join("sub/file"), b"user.nook").unwrap(),
                b"v"
            );
        }
        assert_eq!(summary.files, 2);
        fs::set_permissions(src.join("sub/deeper"), fs::Permissions::from_mode(0o700)).unwrap();
        crate::fsutil::remove_tree(&dir).unwrap();
    }

    #[test]
    fn copy_into_an_existing_directory_is_refused() {
        let dir = scratch("exists");
        fs::create_dir(dir.join("dst")).unwrap();
        let err = copy_tree(&dir, &dir.join("dst")).unwrap_err();
        assert!(format!("{err:#}").contains("creating directory"), "{err:#}");
        crate::fsutil::remove_tree(&dir).unwrap();
    }
}
