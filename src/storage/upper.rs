//! What a container changed, read from its writable layer: the one place that knows how each
//! backend records changes. `diff`, `commit` and `export` of a container all go through
//! `changes`.
//!
//! - native overlayfs (`userxattr`): a deleted entry is a character device 0/0 (or, on newer
//!   kernels, a file with `user.overlay.whiteout`); a directory that hides the image's is marked
//!   with `user.overlay.opaque` (`trusted.overlay.opaque` when mounted with privilege);
//! - fuse-overlayfs: the same devices or `.wh.NAME` files, and `.wh..wh..opq` files or the
//!   `trusted.overlay.opaque` / `user.fuseoverlayfs.opaque` xattrs;
//! - copy: no layer, a whole private tree, compared with the image.
//!
//! Reading a layer needs the container's user namespace (its files belong to subordinate ids
//! with modes that keep the caller out); callers run `changes` there.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::storage::layer::{OPAQUE_MARKER, WHITEOUT_PREFIX};

/// How a container's writable layer records changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerKind {
    /// Native overlayfs.
    Overlay,
    /// fuse-overlayfs.
    Fuse,
    /// A full private copy of the image.
    Copy,
}

impl LayerKind {
    /// The kind for a container's recorded backend name.
    pub fn for_backend(backend: &str) -> LayerKind {
        match backend {
            "copy" => LayerKind::Copy,
            b if b.contains("fuse") => LayerKind::Fuse,
            _ => LayerKind::Overlay,
        }
    }
}

/// Where to read a container's changes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Layer {
    pub kind: LayerKind,
    /// `upper/` (overlay, fuse) or `rootfs/` (copy).
    pub top: PathBuf,
    /// The image the container started from.
    pub base: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ChangeKind {
    Added,
    Changed,
    Deleted,
}

impl ChangeKind {
    /// The letter `docker diff` prints.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One changed path, relative to the container's root. For Added and Changed, the new entry is
/// at `Layer::top` joined with `path`. A deleted directory is one change, not one per entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Change {
    pub path: PathBuf,
    pub kind: ChangeKind,
}

/// Mount points a container's runtime creates when the image lacks them (`nook run` binds its
/// own /etc/hostname, /etc/hosts and /etc/resolv.conf, root emulation's apt drop-in, and mounts
/// /proc, /sys and /dev): empty leftovers in the layer, not changes the container made.
const RUNTIME_FILES: [&str; 3] = ["etc/hostname", "etc/hosts", "etc/resolv.conf"];
const RUNTIME_DIRS: [&str; 3] = ["proc", "sys", "dev"];

fn is_runtime_mount_point(top: &Path, change: &Change) -> bool {
    if change.kind != ChangeKind::Added {
        return false;
    }
    let Some(meta) = lstat(&top.join(&change.path)) else {
        return false;
    };
    let p = change.path.as_path();
    let runtime_file = RUNTIME_FILES.iter().any(|f| p == Path::new(f))
        || Path::new("/").join(p) == Path::new(crate::security::root_emulation::APT_DROP_IN);
    (meta.is_file() && meta.len() == 0 && runtime_file)
        || (meta.is_dir()
            && RUNTIME_DIRS.iter().any(|d| p == Path::new(d))
            && fs::read_dir(top.join(p)).is_ok_and(|mut r| r.next().is_none()))
}

/// Every change of the layer, sorted by path (a directory before its entries).
pub fn changes(layer: &Layer) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    match layer.kind {
        LayerKind::Copy => compare(&layer.top, &layer.base, Path::new(""), &mut out)?,
        kind => walk_upper(kind, &layer.top, &layer.base, Path::new(""), &mut out)?,
    }
    out.retain(|c| !is_runtime_mount_point(&layer.top, c));
    out.sort();
    Ok(drop_untouched_dirs(layer, out))
}

/// Drops the directories listed as changed only because the runtime made its mount points in
/// them (`/etc` for /etc/hosts): a directory in the layer that keeps the image's type, mode and
/// owner and has no change left below it is no change. Its modification time does not count:
/// creating a mount point changes it, as any entry's creation does.
fn drop_untouched_dirs(layer: &Layer, sorted: Vec<Change>) -> Vec<Change> {
    let mut kept: Vec<Change> = Vec::with_capacity(sorted.len());
    // From the end: what is below a directory comes right after it in sorted order, so the
    // last kept change tells whether anything below survived.
    for change in sorted.into_iter().rev() {
        let has_kept_below = kept
            .last()
            .is_some_and(|next| next.path.starts_with(&change.path));
        if change.kind == ChangeKind::Changed
            && !has_kept_below
            && same_dir(
                &layer.top.join(&change.path),
                &layer.base.join(&change.path),
            )
        {
            continue;
        }
        kept.push(change);
    }
    kept.reverse();
    kept
}

/// Whether both are directories with the same mode and owner.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (lstat(a), lstat(b)) {
        (Some(a), Some(b)) => {
            a.is_dir()
                && b.is_dir()
                && a.mode() == b.mode()
                && (a.uid(), a.gid()) == (b.uid(), b.gid())
        }
        _ => false,
    }
}

/// Where a directory of a container's view lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// In the layer only (or the private copy): nothing of the image shows through.
    Top,
    /// In the image only: the layer never touched it.
    Base,
    /// A directory of the layer over one of the image: their entries merge.
    Both,
}

/// One entry of a directory of the container's view: its name, the path it is read from, and
/// (for a directory) where its own entries come from.
pub struct ViewEntry {
    pub name: OsString,
    pub path: PathBuf,
    pub side: Side,
}

/// The root of the container's view, for [`view_dir`].
pub fn view_root(layer: &Layer) -> Side {
    match layer.kind {
        LayerKind::Copy => Side::Top,
        _ => Side::Both,
    }
}

/// The entries of directory `rel` of the container's view, sorted by name, as the container
/// sees them: the layer's whiteouts hide the image's entries, an opaque directory hides all of
/// the image's directory, and the runtime's empty mount points are left out (as `changes`
/// leaves them out). `side` is where `rel` lives. `export` streams a container with this, with
/// no flattened copy first.
pub fn view_dir(layer: &Layer, rel: &Path, side: Side) -> Result<Vec<ViewEntry>> {
    let (top, base) = (layer.top.join(rel), layer.base.join(rel));
    let entry = |name: OsString, path: PathBuf, side| ViewEntry { name, path, side };
    if side == Side::Base {
        return Ok(sorted_entries(&base)?
            .into_iter()
            .map(|name| entry(name.clone(), base.join(&name), Side::Base))
            .collect());
    }
    let merge = side == Side::Both;
    let opaque = merge && is_opaque(layer.kind, &top);
    let mut hidden = BTreeSet::new();
    let mut out = Vec::new();
    for name in sorted_entries(&top)? {
        let path = top.join(&name);
        if layer.kind == LayerKind::Fuse {
            if name.as_bytes() == OPAQUE_MARKER.as_bytes() {
                continue;
            }
            if let Some(target) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
                hidden.insert(OsStr::from_bytes(target).to_os_string());
                continue;
            }
        }
        let meta =
            fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        if layer.kind != LayerKind::Copy
            && (is_whiteout_device(&meta)
                || (meta.is_file() && has_xattr(&path, "user.overlay.whiteout")))
        {
            hidden.insert(name);
            continue;
        }
        let in_base = (merge && !opaque)
            .then(|| lstat(&base.join(&name)))
            .flatten();
        let runtime_name = RUNTIME_FILES
            .iter()
            .chain(RUNTIME_DIRS.iter())
            .any(|f| rel.join(&name) == Path::new(f))
            || Path::new("/").join(rel).join(&name)
                == Path::new(crate::security::root_emulation::APT_DROP_IN);
        if runtime_name && lstat(&layer.base.join(rel).join(&name)).is_none() {
            let change = Change {
                path: rel.join(&name),
                kind: ChangeKind::Added,
            };
            if is_runtime_mount_point(&layer.top, &change) {
                continue;
            }
        }
        let side = match in_base {
            Some(b) if b.is_dir() && meta.is_dir() => Side::Both,
            _ => Side::Top,
        };
        hidden.insert(name.clone());
        out.push(entry(name, path, side));
    }
    if merge && !opaque && lstat(&base).is_some_and(|m| m.is_dir()) {
        for name in sorted_entries(&base)? {
            if !hidden.contains(&name) {
                out.push(entry(name.clone(), base.join(&name), Side::Base));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(out)
}

fn lstat(path: &Path) -> Option<fs::Metadata> {
    fs::symlink_metadata(path).ok()
}

fn is_whiteout_device(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn has_xattr(path: &Path, name: &str) -> bool {
    let (Ok(p), Ok(n)) = (
        std::ffi::CString::new(path.as_os_str().as_bytes()),
        std::ffi::CString::new(name),
    ) else {
        return false;
    };
    crate::sys::has_xattr(&p, &n)
}

/// Whether the upper directory `dir` hides the image's directory of the same path.
fn is_opaque(kind: LayerKind, dir: &Path) -> bool {
    let names: &[&str] = match kind {
        LayerKind::Overlay => &["user.overlay.opaque", "trusted.overlay.opaque"],
        _ => &[
            "user.fuseoverlayfs.opaque",
            "trusted.overlay.opaque",
            "user.overlay.opaque",
        ],
    };
    names.iter().any(|n| has_xattr(dir, n))
        || (kind == LayerKind::Fuse && dir.join(OPAQUE_MARKER).exists())
}

fn sorted_entries(dir: &Path) -> Result<Vec<OsString>> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    names.sort();
    Ok(names)
}

fn walk_upper(
    kind: LayerKind,
    upper: &Path,
    base: &Path,
    rel: &Path,
    out: &mut Vec<Change>,
) -> Result<()> {
    let dir = upper.join(rel);
    let base_dir = base.join(rel);
    let base_is_dir = lstat(&base_dir).is_some_and(|m| m.is_dir());
    let opaque = is_opaque(kind, &dir);
    let mut present = BTreeSet::new();
    for name in sorted_entries(&dir)? {
        let path = rel.join(&name);
        let meta = fs::symlink_metadata(upper.join(&path))
            .with_context(|| format!("reading {}", upper.join(&path).display()))?;
        if kind == LayerKind::Fuse {
            if name.as_bytes() == OPAQUE_MARKER.as_bytes() {
                continue;
            }
            if let Some(target) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
                let target = OsStr::from_bytes(target);
                if base_is_dir && lstat(&base_dir.join(target)).is_some() {
                    out.push(Change {
                        path: rel.join(target),
                        kind: ChangeKind::Deleted,
                    });
                }
                continue;
            }
        }
        let whiteout = is_whiteout_device(&meta)
            || (meta.is_file() && has_xattr(&upper.join(&path), "user.overlay.whiteout"));
        if whiteout {
            // A whiteout of something the image does not have (created and deleted in the
            // container) is no change.
            if base_is_dir && lstat(&base_dir.join(&name)).is_some() {
                out.push(Change {
                    path,
                    kind: ChangeKind::Deleted,
                });
            }
            continue;
        }
        present.insert(name.clone());
        let in_base = if base_is_dir && !opaque {
            lstat(&base_dir.join(&name))
        } else {
            None
        };
        let change = match &in_base {
            None => ChangeKind::Added,
            Some(_) => ChangeKind::Changed,
        };
        out.push(Change {
            path: path.clone(),
            kind: change,
        });
        if meta.is_dir() {
            if in_base.as_ref().is_some_and(|m| m.is_dir()) {
                walk_upper(kind, upper, base, &path, out)?;
            } else {
                // A new directory (or one that replaced a file): all of it is new.
                added_tree(&upper.join(&path), &path, out)?;
            }
        }
    }
    if opaque && base_is_dir {
        for name in sorted_entries(&base_dir)? {
            if !present.contains(&name) {
                out.push(Change {
                    path: rel.join(&name),
                    kind: ChangeKind::Deleted,
                });
            }
        }
    }
    Ok(())
}

fn added_tree(dir: &Path, rel: &Path, out: &mut Vec<Change>) -> Result<()> {
    for name in sorted_entries(dir)? {
        let path = rel.join(&name);
        out.push(Change {
            path: path.clone(),
            kind: ChangeKind::Added,
        });
        if lstat(&dir.join(&name)).is_some_and(|m| m.is_dir()) {
            added_tree(&dir.join(&name), &path, out)?;
        }
    }
    Ok(())
}

/// Whether an entry of a private copy differs from the image's: type, owner, mode, size,
/// modification time, or symlink target. Content is not read: a copy keeps times, and any write
/// changes them.
fn differs(a: &fs::Metadata, b: &fs::Metadata, a_path: &Path, b_path: &Path) -> bool {
    if a.dev() == b.dev() && a.ino() == b.ino() {
        return false;
    }
    if a.file_type() != b.file_type()
        || a.mode() != b.mode()
        || a.uid() != b.uid()
        || a.gid() != b.gid()
    {
        return true;
    }
    if a.is_dir() {
        return false;
    }
    if a.is_symlink() {
        return fs::read_link(a_path).ok() != fs::read_link(b_path).ok();
    }
    a.len() != b.len() || a.mtime() != b.mtime() || a.mtime_nsec() != b.mtime_nsec()
}

fn compare(top: &Path, base: &Path, rel: &Path, out: &mut Vec<Change>) -> Result<()> {
    let dir = top.join(rel);
    let base_dir = base.join(rel);
    let names = sorted_entries(&dir)?;
    let base_names: BTreeSet<OsString> = sorted_entries(&base_dir)?.into_iter().collect();
    for name in &names {
        let path = rel.join(name);
        let meta = fs::symlink_metadata(top.join(&path))
            .with_context(|| format!("reading {}", top.join(&path).display()))?;
        let in_base = if base_names.contains(name) {
            lstat(&base.join(&path))
        } else {
            None
        };
        match in_base {
            None => {
                out.push(Change {
                    path: path.clone(),
                    kind: ChangeKind::Added,
                });
                if meta.is_dir() {
                    added_tree(&top.join(&path), &path, out)?;
                }
            }
            Some(b) => {
                let both_dirs = meta.is_dir() && b.is_dir();
                if differs(&meta, &b, &top.join(&path), &base.join(&path)) {
                    out.push(Change {
                        path: path.clone(),
                        kind: ChangeKind::Changed,
                    });
                }
                if both_dirs {
                    let before = out.len();
                    compare(top, base, &path, out)?;
                    // A directory whose entries changed counts as changed, as docker shows it.
                    let listed = out[..before].last().is_some_and(|c| c.path == path);
                    if out.len() > before && !listed {
                        out.push(Change {
                            path: path.clone(),
                            kind: ChangeKind::Changed,
                        });
                    }
                } else if meta.is_dir() {
                    added_tree(&top.join(&path), &path, out)?;
                }
            }
        }
    }
    let present: BTreeSet<&OsString> = names.iter().collect();
    for name in &base_names {
        if !present.contains(name) {
            out.push(Change {
                path: rel.join(name),
                kind: ChangeKind::Deleted,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nook-upper-{name}-{}", std::process::id()));
        let _ = crate::fsutil::remove_tree(&dir);
        fs::create_dir_all(dir.join("base")).unwrap();
        fs::create_dir_all(dir.join("top")).unwrap();
        dir
    }

    fn lines(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| format!("{} {}", c.kind.letter(), c.path.display()))
            .collect()
    }

    #[test]
    fn fuse_whiteout_files_and_opaque_markers_are_understood() {
        let dir = scratch("fuse");
        let (base, top) = (dir.join("base"), dir.join("top"));
        fs::create_dir_all(base.join("etc")).unwrap();
        fs::write(base.join("etc/gone"), "x").unwrap();
        fs::write(base.join("etc/kept"), "x").unwrap();
        fs::create_dir_all(base.join("var/cache")).unwrap();
        fs::write(base.join("var/cache/old"), "x").unwrap();
        fs::create_dir_all(top.join("etc")).unwrap();
        fs::write(top.join("etc/.wh.gone"), "").unwrap();
        fs::write(top.join("etc/.wh.never-there"), "").unwrap();
        fs::write(top.join("etc/new"), "y").unwrap();
        fs::create_dir_all(top.join("var/cache")).unwrap();
        fs::write(top.join("var/cache").join(OPAQUE_MARKER), "").unwrap();
        fs::write(top.join("var/cache/fresh"), "y").unwrap();
        let got = changes(&Layer {
            kind: LayerKind::Fuse,
            top,
            base,
        })
        .unwrap();
        assert_eq!(
            lines(&got),
            [
                "C etc",
                "D etc/gone",
                "A etc/new",
                "C var",
                "C var/cache",
                "A var/cache/fresh",
                "D var/cache/old"
            ]
        );
        crate::fsutil::remove_tree(&dir).unwrap();
    }

    #[test]
    fn a_directory_holding_only_runtime_mount_points_is_no_change() {
        for kind in [LayerKind::Overlay, LayerKind::Copy] {
            let dir = scratch(&format!("mountpoints-{kind:?}"));
            let (base, top) = (dir.join("base"), dir.join("top"));
            fs::create_dir_all(base.join("etc/apt")).unwrap();
            fs::write(base.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
            if kind == LayerKind::Copy {
                fs::create_dir_all(top.join("etc/apt")).unwrap();
                fs::copy(base.join("etc/passwd"), top.join("etc/passwd")).unwrap();
                let t = fs::metadata(base.join("etc/passwd"))
                    .unwrap()
                    .modified()
                    .unwrap();
                fs::File::options()
                    .write(true)
                    .open(top.join("etc/passwd"))
                    .unwrap()
                    .set_modified(t)
                    .unwrap();
            } else {
                fs::create_dir_all(top.join("etc")).unwrap();
            }
            // The empty files nook bind-mounts its generated /etc files onto.
            fs::write(top.join("etc/hostname"), "").unwrap();
            fs::write(top.join("etc/hosts"), "").unwrap();
            fs::create_dir(top.join("proc")).unwrap();
            let layer = Layer {
                kind,
                top: top.clone(),
                base: base.clone(),
            };
            assert!(lines(&changes(&layer).unwrap()).is_empty(), "{kind:?}");
            // A real change below keeps the directory, and a changed mode is a change itself.
            fs::write(top.join("etc/motd"), "hi").unwrap();
            assert_eq!(lines(&changes(&layer).unwrap()), ["C etc", "A etc/motd"]);
            fs::remove_file(top.join("etc/motd")).unwrap();
            fs::set_permissions(top.join("etc"), fs::Permissions::from_mode(0o700)).unwrap();
            assert_eq!(lines(&changes(&layer).unwrap()), ["C etc"], "{kind:?}");
            crate::fsutil::remove_tree(&dir).unwrap();
        }
    }

    #[test]
    fn a_private_copy_is_compared_with_the_image() {
        let dir = scratch("copy");
        let (base, top) = (dir.join("base"), dir.join("top"));
        for root in [&base, &top] {
            fs::create_dir_all(root.join("bin")).unwrap();
            fs::write(root.join("bin/same"), "x").unwrap();
        }
        // Same content and time: unchanged.
        let t = fs::metadata(base.join("bin/same"))
            .unwrap()
            .modified()
            .unwrap();
        fs::File::options()
            .write(true)
            .open(top.join("bin/same"))
            .unwrap()
            .set_modified(t)
            .unwrap();
        fs::write(base.join("bin/removed"), "x").unwrap();
        fs::write(top.join("added"), "x").unwrap();
        let got = changes(&Layer {
            kind: LayerKind::Copy,
            top,
            base,
        })
        .unwrap();
        assert_eq!(lines(&got), ["A added", "C bin", "D bin/removed"]);
        crate::fsutil::remove_tree(&dir).unwrap();
    }
}
