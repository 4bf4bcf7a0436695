//! Reading an upper layer: the one place that knows how overlayfs and fuse-overlayfs mark what
//! the container deleted (whiteouts) and which directories hide the image's (opaque).
//!
//! - native overlayfs (`userxattr`): a whiteout is a character device 0/0; an opaque directory
//!   has `user.overlay.opaque=y` (`trusted.overlay.opaque` when mounted by real root).
//! - fuse-overlayfs: the same device when it may create one, else an empty file `.wh.NAME`; an
//!   opaque directory has `user.fuseoverlayfs.opaque` (or the overlay xattrs above), else holds
//!   a file `.wh..wh..opq`.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::sys;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTRS: [&[u8]; 3] = [
    b"user.overlay.opaque",
    b"trusted.overlay.opaque",
    b"user.fuseoverlayfs.opaque",
];

/// One change an upper layer records, relative to the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The path was deleted (or renamed away) in the container.
    Deleted(PathBuf),
    /// The directory replaces the image's directory of the same path entirely.
    Opaque(PathBuf),
    /// The path was created or changed; its content is in the upper layer.
    Written(PathBuf),
}

/// What one entry of an upper directory means.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    /// Hides `name` of the image.
    Whiteout(String),
    /// fuse-overlayfs's marker that its directory is opaque; not a file of the container.
    OpaqueMarker,
    Plain,
}

fn classify(name: &str, meta: &fs::Metadata) -> Entry {
    if meta.file_type().is_char_device() && meta.rdev() == 0 {
        return Entry::Whiteout(name.to_string());
    }
    if name == OPAQUE_MARKER {
        return Entry::OpaqueMarker;
    }
    match name.strip_prefix(WHITEOUT_PREFIX) {
        Some(hidden) if !hidden.is_empty() && meta.is_file() => Entry::Whiteout(hidden.to_string()),
        _ => Entry::Plain,
    }
}

/// Whether the upper directory `dir` hides the image's directory at the same path.
pub fn is_opaque(dir: &Path) -> bool {
    if dir.join(OPAQUE_MARKER).symlink_metadata().is_ok() {
        return true;
    }
    OPAQUE_XATTRS
        .iter()
        .any(|name| sys::get_xattr(dir, name).is_ok_and(|v| v == b"y"))
}

/// Every change recorded in the upper layer `upper`, with paths relative to the container's
/// root, parents before their contents.
pub fn changes(upper: &Path) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    walk(upper, Path::new(""), &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, rel: &Path, out: &mut Vec<Change>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut names: Vec<_> = entries
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let meta =
            fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let name = name.to_string_lossy().into_owned();
        match classify(&name, &meta) {
            Entry::Whiteout(hidden) => out.push(Change::Deleted(rel.join(hidden))),
            Entry::OpaqueMarker => {}
            Entry::Plain => {
                let rel = rel.join(&name);
                if meta.is_dir() && is_opaque(&path) {
                    out.push(Change::Opaque(rel.clone()));
                } else {
                    out.push(Change::Written(rel.clone()));
                }
                if meta.is_dir() {
                    walk(&path, &rel, out)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuse_style_whiteouts_and_opaque_markers_are_understood() {
        let dir = std::env::temp_dir().join(format!("nook-whiteout-{}", std::process::id()));
        let _ = crate::fsutil::remove_tree(&dir);
        fs::create_dir_all(dir.join("etc/opaque")).unwrap();
        fs::write(dir.join("etc/.wh.passwd"), b"").unwrap();
        fs::write(dir.join("etc/opaque/.wh..wh..opq"), b"").unwrap();
        fs::write(dir.join("etc/opaque/new"), b"x").unwrap();
        fs::write(dir.join("etc/hosts"), b"x").unwrap();
        let changes = changes(&dir).unwrap();
        assert_eq!(
            changes,
            vec![
                Change::Written("etc".into()),
                Change::Deleted("etc/passwd".into()),
                Change::Written("etc/hosts".into()),
                Change::Opaque("etc/opaque".into()),
                Change::Written("etc/opaque/new".into()),
            ]
        );
        crate::fsutil::remove_tree(&dir).unwrap();
    }

    #[test]
    fn a_file_named_like_the_prefix_alone_is_plain() {
        let dir = std::env::temp_dir().join(format!("nook-whiteout-p-{}", std::process::id()));
        let _ = crate::fsutil::remove_tree(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(".wh."), b"").unwrap();
        let meta = fs::symlink_metadata(dir.join(".wh.")).unwrap();
        assert_eq!(classify(".wh.", &meta), Entry::Plain);
        crate::fsutil::remove_tree(&dir).unwrap();
    }
}
