//! More than one name for an image (`nook tag`), without a copy.
//!
//! In `<storage>/images/`, an image's files live in the directory it was imported or committed
//! as. Another name for it is a symbolic link beside it, holding that directory's name. A
//! container records the directory, so it keeps its image whatever happens to the names.
//! Removing one name of several (`nook rmi`) removes a link; removing the directory's own name
//! while links remain leaves an `untagged` marker in it: the name is gone, the files stay until
//! the last name goes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::image::{validate_image_name, Image, ImageStore};

/// In an image directory: its own name was removed while other names still point to it.
const UNTAGGED: &str = "untagged";

/// The directory `name` names in the store at `root`, or `None` when nothing does (no entry, a
/// link that leads nowhere valid, or a directory whose own name was removed).
pub(crate) fn locate(root: &Path, name: &str) -> Option<PathBuf> {
    let entry = root.join(name);
    match fs::read_link(&entry) {
        // A link holds a sibling's name and nothing else: no path can lead out of the store.
        Ok(target) => {
            let target = target.to_str()?;
            validate_image_name(target).ok()?;
            let dir = root.join(target);
            dir.is_dir().then_some(dir)
        }
        Err(_) => (entry.is_dir() && !entry.join(UNTAGGED).exists()).then_some(entry),
    }
}

/// Why `name` cannot be given to a new image, if it cannot.
pub(crate) fn name_taken(root: &Path, name: &str) -> Option<String> {
    let entry = root.join(name);
    fs::symlink_metadata(&entry).ok()?;
    if entry.join(UNTAGGED).exists() && fs::read_link(&entry).is_err() {
        let store = ImageStore::at(root.to_path_buf());
        let others = store.names_of_dir(&entry).unwrap_or_default();
        return Some(format!(
            "the name {name} still holds the files of image {} (tagged from {name} before \
             {name} was removed): choose another name, or remove {} first",
            others.join(", "),
            others.join(" and ")
        ));
    }
    Some(format!(
        "image {name} already exists; remove it first with `nook rmi {name}`"
    ))
}

impl ImageStore {
    /// Every name of the image whose files are in `dir`, sorted.
    fn names_of_dir(&self, dir: &Path) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(self.root())
            .with_context(|| format!("reading {}", self.root().display()))?
        {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if locate(self.root(), &name).as_deref() == Some(dir) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Every name of `image`, its own included.
    pub fn names_of(&self, image: &Image) -> Result<Vec<String>> {
        self.names_of_dir(&image.dir)
    }

    /// `nook tag`: `new` becomes another name of `image`. A name that already names another
    /// image through a tag moves to this one, as in podman; an image's own name is refused.
    pub fn tag(&self, image: &Image, new: &str) -> Result<()> {
        validate_image_name(new)?;
        let entry = self.root().join(new);
        let target = image
            .dir
            .file_name()
            .context("an image directory without a name")?;
        match fs::symlink_metadata(&entry) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::os::unix::fs::symlink(target, &entry)
                    .with_context(|| format!("tagging image {} as {new}", image.meta.name))
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", entry.display())),
            Ok(meta) if meta.file_type().is_symlink() => {
                // Replaced in one rename, so the name never names nothing meanwhile.
                let tmp = self.root().join(format!(
                    ".tag-{}-{}",
                    new.replace(':', "_"),
                    std::process::id()
                ));
                let _ = fs::remove_file(&tmp);
                std::os::unix::fs::symlink(target, &tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?;
                fs::rename(&tmp, &entry).with_context(|| {
                    let _ = fs::remove_file(&tmp);
                    format!("moving the name {new} to image {}", image.meta.name)
                })
            }
            // The directory's own name, removed while tagged: naming it again brings it back.
            Ok(_) if entry == image.dir && entry.join(UNTAGGED).exists() => {
                fs::remove_file(entry.join(UNTAGGED))
                    .with_context(|| format!("naming image {} {new} again", image.meta.name))
            }
            Ok(_) if entry == image.dir => {
                bail!("{new} is already a name of image {}", image.meta.name)
            }
            Ok(_) => bail!(
                "image {new} already exists (an image of its own, not a tag): remove it first \
                 with `nook rmi {new}`, or choose another name"
            ),
        }
    }

    /// Removes the name `name` of `image` alone when another name keeps the image (true);
    /// false when it is the image's last name, whose removal is the image's.
    pub fn untag(&self, name: &str, image: &Image) -> Result<bool> {
        if self.names_of(image)?.len() < 2 {
            return Ok(false);
        }
        let entry = self.root().join(name);
        if fs::read_link(&entry).is_ok() {
            fs::remove_file(&entry).with_context(|| format!("removing the name {name}"))?;
        } else {
            crate::fsutil::write_atomic(&entry.join(UNTAGGED), b"", true)
                .with_context(|| format!("removing the name {name}"))?;
        }
        Ok(true)
    }

    /// After the image is removed: its last name, if a tag, goes with it.
    pub fn forget_tag(&self, name: &str) {
        let entry = self.root().join(name);
        if fs::read_link(&entry).is_ok() {
            let _ = fs::remove_file(entry);
        }
    }
}
