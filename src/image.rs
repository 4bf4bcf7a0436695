//! The image store: `<storage>/images/<name>/rootfs/` (a plain directory nothing writes to once
//! it is there) and `image.json` (the image config, where it came from, and the id mapping its
//! files' owners follow).

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::container::{now_rfc3339, remove_owned_tree, storage_root};
use crate::fsutil::{create_private_dir, write_atomic};
use crate::idmap::IdMapping;
use crate::launch::run_in_userns;

/// What the image asks of a container (the part of the OCI image config nook applies).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageMeta {
    pub name: String,
    pub created: String,
    pub source: String,
    #[serde(default)]
    pub config: ImageConfig,
    /// The mapping in force when the files were written: container ids in the archive became
    /// host ids through it.
    pub idmap: IdMapping,
    /// Entries left out because a user namespace cannot create them (device nodes).
    #[serde(default)]
    pub skipped_devices: u64,
}

pub struct Image {
    pub dir: PathBuf,
    pub meta: ImageMeta,
}

impl Image {
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
}

pub struct ImageStore {
    root: PathBuf,
}

/// Image names: letters, digits and `-_.:`, starting with a letter or digit.
pub fn validate_image_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if !ok {
        bail!(
            "invalid image name {name:?}: use letters, digits, '-', '_', '.' or ':', starting with \
             a letter or digit"
        );
    }
    Ok(())
}

impl ImageStore {
    pub fn open() -> Result<ImageStore> {
        let root = storage_root()?.join("images");
        create_private_dir(&root)?;
        Ok(ImageStore { root })
    }

    pub fn get(&self, name: &str) -> Result<Image> {
        validate_image_name(name)?;
        let dir = self.root.join(name);
        let path = dir.join("image.json");
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                bail!("no such image: {name} (see `nook images`)")
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let meta =
            serde_json::from_slice(&data).with_context(|| format!("parsing {}", path.display()))?;
        Ok(Image { dir, meta })
    }

    pub fn exists(&self, name: &str) -> bool {
        validate_image_name(name).is_ok() && self.root.join(name).join("image.json").exists()
    }

    pub fn list(&self) -> Result<Vec<Image>> {
        let mut out = Vec::new();
        for entry in
            fs::read_dir(&self.root).with_context(|| format!("reading {}", self.root.display()))?
        {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if let Ok(image) = self.get(&name) {
                out.push(image);
            }
        }
        out.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        Ok(out)
    }

    /// Imports `source` (a directory or a tar archive, `-` for stdin) as image `name`. Files are
    /// written inside a user namespace with `idmap`, so their owners inside the archive become
    /// the matching host ids. The image appears under its name only once complete.
    pub fn import(&self, source: &str, name: &str, idmap: &IdMapping) -> Result<ImageMeta> {
        validate_image_name(name)?;
        if self.root.join(name).exists() {
            bail!("image {name} already exists; remove it first with `nook rmi {name}`");
        }
        self.clean_leftovers();
        let tmp = self
            .root
            .join(format!(".import-{}-{}", name, std::process::id()));
        create_private_dir(&tmp)?;
        let rootfs = tmp.join("rootfs");
        let result = (|| -> Result<ImageMeta> {
            let skipped = if source != "-" && Path::new(source).is_dir() {
                let src =
                    fs::canonicalize(source).with_context(|| format!("resolving {source}"))?;
                copy_directory(&src, &rootfs, idmap)?;
                0
            } else {
                unpack_archive(source, &rootfs, idmap)?
            };
            let meta = ImageMeta {
                name: name.to_string(),
                created: now_rfc3339(),
                source: source.to_string(),
                config: ImageConfig::default(),
                idmap: idmap.clone(),
                skipped_devices: skipped,
            };
            write_atomic(
                &tmp.join("image.json"),
                &serde_json::to_vec_pretty(&meta)?,
                true,
            )?;
            fs::rename(&tmp, self.root.join(name))
                .with_context(|| format!("moving the new image into place as {name}"))?;
            Ok(meta)
        })();
        if result.is_err() {
            let _ = remove_owned_tree(&tmp, Some(idmap));
        }
        result
    }

    /// Removes what an import or removal cut short left behind.
    fn clean_leftovers(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(".import-")
                .or_else(|| name.strip_prefix(".removing-"))
                .and_then(|rest| rest.rsplit('-').next())
                .and_then(|pid| pid.parse::<i32>().ok())
            else {
                continue;
            };
            if fs::metadata(format!("/proc/{pid}")).is_err() {
                let idmap = fs::read(entry.path().join("image.json"))
                    .ok()
                    .and_then(|d| serde_json::from_slice::<ImageMeta>(&d).ok())
                    .map(|m| m.idmap)
                    .unwrap_or_else(IdMapping::of_current_user);
                let _ = remove_owned_tree(&entry.path(), Some(&idmap));
            }
        }
    }

    pub fn remove(&self, image: &Image) -> Result<()> {
        let trash = self.root.join(format!(
            ".removing-{}-{}",
            image.meta.name.replace(':', "_"),
            std::process::id()
        ));
        fs::rename(&image.dir, &trash)
            .with_context(|| format!("removing {}", image.dir.display()))?;
        remove_owned_tree(&trash, Some(&image.meta.idmap))
    }
}

/// Unpacks a tar archive into `dest`, inside the user namespace. Returns how many device nodes
/// were skipped.
fn unpack_archive(source: &str, dest: &Path, idmap: &IdMapping) -> Result<u64> {
    let reader: Box<dyn Read> = if source == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(fs::File::open(source).with_context(|| format!("opening archive {source}"))?)
    };
    let dest = dest.to_path_buf();
    let (report_rx, report_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut report_tx = fs::File::from(report_tx);
    let source_name = source.to_string();
    run_in_userns(idmap, move || {
        let skipped = unpack_inside(reader, &dest, &source_name)?;
        use std::io::Write;
        write!(report_tx, "{skipped}").context("reporting the unpack")?;
        Ok(())
    })?;
    let mut report = String::new();
    fs::File::from(report_rx).read_to_string(&mut report)?;
    Ok(report.trim().parse().unwrap_or(0))
}

/// Refuses entry names that would leave the image: absolute, or climbing with `..`.
fn confined(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn unpack_inside(reader: Box<dyn Read>, dest: &Path, source: &str) -> Result<u64> {
    fs::create_dir(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let mut skipped = 0;
    let mut directories = Vec::new();
    for entry in archive
        .entries()
        .with_context(|| format!("reading archive {source}"))?
    {
        let mut entry = entry.with_context(|| format!("reading archive {source}"))?;
        let path = entry.path()?.into_owned();
        if !confined(&path) {
            bail!(
                "archive {source}: entry {} points outside the image; refusing it",
                path.display()
            );
        }
        match entry.header().entry_type() {
            tar::EntryType::Char | tar::EntryType::Block => {
                skipped += 1;
                continue;
            }
            // Directory modes and times are applied last, so a read-only directory can still
            // receive its entries.
            tar::EntryType::Directory => {
                directories.push(entry);
                continue;
            }
            _ => {}
        }
        let unpacked = entry
            .unpack_in(dest)
            .with_context(|| format!("archive {source}: unpacking {}", path.display()))?;
        if !unpacked {
            bail!(
                "archive {source}: entry {} points outside the image; refusing it",
                path.display()
            );
        }
    }
    for mut dir in directories {
        let path = dir.path()?.into_owned();
        dir.unpack_in(dest)
            .with_context(|| format!("archive {source}: unpacking {}", path.display()))?;
    }
    Ok(skipped)
}

/// Copies a directory tree into the store, inside the user namespace so owners are kept: the
/// caller's files become root's, other owners stay where the mapping covers them (else root).
fn copy_directory(src: &Path, dest: &Path, idmap: &IdMapping) -> Result<()> {
    let (src, dest, map) = (src.to_path_buf(), dest.to_path_buf(), idmap.clone());
    run_in_userns(idmap, move || {
        let mut links = std::collections::HashMap::new();
        copy_tree(&src, &dest, &map, &mut links)
    })
}

fn copy_tree(
    src: &Path,
    dest: &Path,
    map: &IdMapping,
    links: &mut std::collections::HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let meta = fs::symlink_metadata(src).with_context(|| format!("reading {}", src.display()))?;
    let kind = meta.file_type();
    if kind.is_dir() {
        fs::create_dir(dest).with_context(|| format!("creating {}", dest.display()))?;
        for entry in fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
            let entry = entry?;
            copy_tree(&entry.path(), &dest.join(entry.file_name()), map, links)?;
        }
    } else if kind.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dest)
            .with_context(|| format!("creating {}", dest.display()))?;
    } else if kind.is_file() {
        let key = (meta.dev(), meta.ino());
        if meta.nlink() > 1 {
            if let Some(first) = links.get(&key) {
                fs::hard_link(first, dest)
                    .with_context(|| format!("linking {}", dest.display()))?;
                return Ok(());
            }
            links.insert(key, dest.to_path_buf());
        }
        fs::copy(src, dest).with_context(|| format!("copying {}", src.display()))?;
    } else if kind.is_fifo() {
        nix::unistd::mkfifo(dest, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .with_context(|| format!("creating {}", dest.display()))?;
    } else {
        // Device nodes and sockets cannot be created in a user namespace, nor are they image
        // content.
        return Ok(());
    }
    let owner = |id: u32, mapped: bool| if mapped { id } else { 0 };
    let uid = owner(meta.uid(), map.maps_uid(meta.uid()));
    let gid = owner(meta.gid(), map.maps_gid(meta.gid()));
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        dest,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .with_context(|| format!("chown {}", dest.display()))?;
    if !kind.is_symlink() {
        fs::set_permissions(dest, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .with_context(|| format!("chmod {}", dest.display()))?;
    }
    let times = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        dest,
        &times(meta.atime(), meta.atime_nsec()),
        &times(meta.mtime(), meta.mtime_nsec()),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .with_context(|| format!("setting times of {}", dest.display()))?;
    Ok(())
}
