//! Copying file trees between images and containers with owners, modes, times and xattrs kept,
//! sharing data where that is safe: hard links to an image's files (images are never written),
//! else reflinks (`FICLONE`), else a plain copy. Runs inside the user namespace whose ids own the
//! files.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::sys::stat::UtimensatFlags;
use nix::sys::time::TimeSpec;

use crate::sys;

/// How a regular file reaches the new tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Share {
    /// Hard link to the source (the source is an image: never written).
    Link,
    /// A reflink where the filesystem has them, else a copy.
    Copy,
}

/// Copies trees and entries, keeping hard links between the files it copies.
#[derive(Default)]
pub struct Copier {
    links: HashMap<(u64, u64), PathBuf>,
    /// Directories and the times to give them at the end.
    dir_times: Vec<(PathBuf, fs::Metadata)>,
    /// Entries that cannot be made in a user namespace (device nodes, sockets).
    pub skipped: u64,
}

/// xattrs that belong to an overlay's bookkeeping, not to the file.
fn private_xattr(name: &OsStr) -> bool {
    let n = name.as_bytes();
    n.starts_with(b"trusted.overlay.")
        || n.starts_with(b"user.overlay.")
        || n.starts_with(b"user.fuseoverlayfs.")
}

impl Copier {
    /// Copies the tree at `src` to `dest` (which must not exist).
    pub fn copy_tree(&mut self, src: &Path, dest: &Path, share: Share) -> Result<()> {
        let meta =
            fs::symlink_metadata(src).with_context(|| format!("reading {}", src.display()))?;
        if !meta.is_dir() {
            return self.copy_entry(src, &meta, dest, share);
        }
        self.make_dir(src, &meta, dest)?;
        let mut names: Vec<_> = fs::read_dir(src)
            .with_context(|| format!("reading {}", src.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .with_context(|| format!("reading {}", src.display()))?;
        names.sort();
        for name in names {
            self.copy_tree(&src.join(&name), &dest.join(&name), share)?;
        }
        Ok(())
    }

    /// Makes `dest` a directory like `src` (replacing a non-directory there; an existing
    /// directory keeps its entries and takes `src`'s owner, mode and xattrs).
    pub fn make_dir(&mut self, src: &Path, meta: &fs::Metadata, dest: &Path) -> Result<()> {
        match fs::symlink_metadata(dest) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => remove(dest)?,
            Err(_) => {
                fs::create_dir(dest).with_context(|| format!("creating {}", dest.display()))?
            }
        }
        set_owner_mode_xattrs(src, meta, dest)?;
        self.dir_times.push((dest.to_path_buf(), meta.clone()));
        Ok(())
    }

    /// Copies one non-directory entry, replacing whatever is at `dest`.
    pub fn copy_entry(
        &mut self,
        src: &Path,
        meta: &fs::Metadata,
        dest: &Path,
        share: Share,
    ) -> Result<()> {
        remove(dest)?;
        let kind = meta.file_type();
        if kind.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = self.links.get(&key) {
                    if fs::hard_link(first, dest).is_ok() {
                        return Ok(());
                    }
                }
            }
            let linked = share == Share::Link && fs::hard_link(src, dest).is_ok();
            if !linked {
                copy_file(src, meta, dest)?;
            }
            if meta.nlink() > 1 {
                self.links.insert(key, dest.to_path_buf());
            }
            return Ok(());
        }
        if kind.is_symlink() {
            let target =
                fs::read_link(src).with_context(|| format!("reading {}", src.display()))?;
            std::os::unix::fs::symlink(&target, dest)
                .with_context(|| format!("creating {}", dest.display()))?;
        } else if kind.is_fifo() {
            nix::unistd::mkfifo(dest, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .with_context(|| format!("creating {}", dest.display()))?;
        } else {
            self.skipped += 1;
            return Ok(());
        }
        set_owner_mode_xattrs(src, meta, dest)?;
        set_times(dest, meta)
    }

    /// Gives the directories their times, once nothing more is written into them.
    pub fn finish(self) -> Result<u64> {
        for (dir, meta) in self.dir_times.iter().rev() {
            if fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
                set_times(dir, meta)?;
            }
        }
        Ok(self.skipped)
    }
}

/// Removes whatever is at `path` (a whole tree for a directory); nothing there is fine.
pub fn remove(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))
        }
        Ok(_) => fs::remove_file(path).with_context(|| format!("removing {}", path.display())),
    }
}

/// A regular file's data: a reflink where possible, else a copy (copy_file_range underneath).
fn copy_file(src: &Path, meta: &fs::Metadata, dest: &Path) -> Result<()> {
    let mut input = fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut output = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(dest)
        .with_context(|| format!("creating {}", dest.display()))?;
    if sys::ficlone(output.as_fd(), input.as_fd()).is_err() {
        io::copy(&mut input, &mut output)
            .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
    }
    drop(output);
    set_owner_mode_xattrs(src, meta, dest)?;
    set_times(dest, meta)
}

/// Owner (where this namespace maps it; else root's), mode (after the owner: chown clears
/// setuid) and xattrs (not an overlay's own).
fn set_owner_mode_xattrs(src: &Path, meta: &fs::Metadata, dest: &Path) -> Result<()> {
    let chown = |uid: u32, gid: u32| {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            dest,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
    };
    if chown(meta.uid(), meta.gid()).is_err() {
        chown(0, 0).with_context(|| format!("chown {}", dest.display()))?;
    }
    if !meta.file_type().is_symlink() {
        fs::set_permissions(
            dest,
            std::os::unix::fs::PermissionsExt::from_mode(meta.mode() & 0o7777),
        )
        .with_context(|| format!("chmod {}", dest.display()))?;
    }
    for (name, value) in
        sys::xattrs(src).with_context(|| format!("reading xattrs of {}", src.display()))?
    {
        if private_xattr(&name) {
            continue;
        }
        if let Err(e) = sys::set_xattr(dest, name.as_bytes(), &value) {
            // What a user namespace may not set (trusted.*, security.* but capabilities) is
            // left out, as an unprivileged copy would.
            if !name.as_bytes().starts_with(b"user.") {
                continue;
            }
            return Err(e).with_context(|| {
                format!(
                    "setting xattr {} of {}",
                    name.to_string_lossy(),
                    dest.display()
                )
            });
        }
    }
    Ok(())
}

fn set_times(dest: &Path, meta: &fs::Metadata) -> Result<()> {
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        dest,
        &TimeSpec::new(meta.atime(), meta.atime_nsec()),
        &TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
        UtimensatFlags::NoFollowSymlink,
    )
    .with_context(|| format!("setting times of {}", dest.display()))
}
