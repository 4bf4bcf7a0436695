//! The image store: `<storage>/images/<name>/rootfs/` (a plain directory nothing writes to once
//! it is there) and `image.json` (the image config, where it came from, and the id mapping its
//! files' owners follow).

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::container::{now_rfc3339, remove_owned_tree, storage_root};
use crate::fsutil::{create_private_dir, write_atomic};
use crate::idmap::IdMapping;
use crate::launch::run_in_userns;
use crate::layer::{Applier, Summary};
use crate::oci::{import_source, Found};

/// What the image asks of a container (the part of the OCI image config nook applies).
pub type ImageConfig = crate::oci::RunConfig;

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
    /// Entries whose owner the mapping lacks: they were given to root.
    #[serde(default)]
    pub unmapped_owners: u64,
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
    /// Opens the store, removing what builds cut short left behind.
    pub fn open() -> Result<ImageStore> {
        let root = storage_root()?.join("images");
        create_private_dir(&root)?;
        let store = ImageStore { root };
        store.clean_leftovers();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
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

    /// Imports `source` (a directory, a tarball, an OCI image layout or a `docker save`
    /// archive; `-` for stdin) as image `name`. Files are written inside a user namespace with
    /// `idmap`, so their owners inside the archive become the matching host ids. The image
    /// appears under its name only once complete.
    pub fn import(&self, source: &str, name: &str, idmap: &IdMapping) -> Result<Imported> {
        validate_image_name(name)?;
        if self.root.join(name).exists() {
            bail!("image {name} already exists; remove it first with `nook rmi {name}`");
        }
        let source_path = match source {
            "-" => None,
            s => Some(
                fs::canonicalize(s).with_context(|| format!("{s}: no such file or directory"))?,
            ),
        };
        let (meta, found) = self.build(name, idmap, source, |tmp| {
            let rootfs = tmp.join("rootfs");
            match &source_path {
                Some(dir) if dir.is_dir() && !dir.join("index.json").is_file() => {
                    copy_directory(dir, &rootfs, idmap)?;
                    Ok(Built {
                        found: Found {
                            kind: "directory".into(),
                            ..Found::default()
                        },
                        summary: Summary::default(),
                    })
                }
                Some(path) => unpack_source(&path.to_string_lossy(), tmp, idmap),
                None => unpack_source("-", tmp, idmap),
            }
        })?;
        Ok(Imported { meta, found })
    }

    /// Builds a new image in `.import-NAME-PID/` with `fill` (which makes `rootfs/` and says what
    /// it found), records it, and renames it into place. On failure nothing is left; a build
    /// cut short (killed) is removed by the next nook command that opens the store.
    pub fn build(
        &self,
        name: &str,
        idmap: &IdMapping,
        source: &str,
        fill: impl FnOnce(&Path) -> Result<Built>,
    ) -> Result<(ImageMeta, Found)> {
        validate_image_name(name)?;
        if self.root.join(name).exists() {
            bail!("image {name} already exists; remove it first with `nook rmi {name}`");
        }
        let tmp = self.root.join(format!(
            ".import-{}-{}",
            name.replace(':', "_"),
            std::process::id()
        ));
        create_private_dir(&tmp)?;
        let result = (|| -> Result<(ImageMeta, Found)> {
            // Written first, so that whoever cleans up a build cut short knows the owners.
            write_atomic(&tmp.join(IDMAP_FILE), &serde_json::to_vec(idmap)?)?;
            let built = fill(&tmp)?;
            let meta = ImageMeta {
                name: name.to_string(),
                created: now_rfc3339(),
                source: source.to_string(),
                config: built.found.config.clone(),
                idmap: idmap.clone(),
                skipped_devices: built.summary.skipped_devices,
                unmapped_owners: built.summary.unmapped_owners,
            };
            write_atomic(&tmp.join("image.json"), &serde_json::to_vec_pretty(&meta)?)?;
            fs::remove_file(tmp.join(IDMAP_FILE))
                .with_context(|| format!("removing {}", tmp.join(IDMAP_FILE).display()))?;
            fs::rename(&tmp, self.root.join(name)).with_context(|| {
                if self.root.join(name).exists() {
                    format!("image {name} was created meanwhile by another nook process")
                } else {
                    format!("moving the new image into place as {name}")
                }
            })?;
            Ok((meta, built.found))
        })();
        if result.is_err() {
            let _ = remove_owned_tree(&tmp, Some(idmap));
        }
        result
    }

    /// Removes what an import, commit or removal cut short left behind (its process is gone).
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
                let dir = entry.path();
                let idmap = fs::read(dir.join("image.json"))
                    .ok()
                    .and_then(|d| serde_json::from_slice::<ImageMeta>(&d).ok())
                    .map(|m| m.idmap)
                    .or_else(|| {
                        fs::read(dir.join(IDMAP_FILE))
                            .ok()
                            .and_then(|d| serde_json::from_slice::<IdMapping>(&d).ok())
                    })
                    .unwrap_or_else(IdMapping::of_current_user);
                let _ = remove_owned_tree(&dir, Some(&idmap));
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

/// Where a build in progress records its id mapping.
const IDMAP_FILE: &str = "idmap.json";

/// What a finished import says.
pub struct Imported {
    pub meta: ImageMeta,
    pub found: Found,
}

/// What filling a new image produced besides its files.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Built {
    pub found: Found,
    pub summary: Summary,
}

/// Unpacks an archive source into `tmp/rootfs`, inside the user namespace; the child reports
/// what it found over a pipe.
fn unpack_source(source: &str, tmp: &Path, idmap: &IdMapping) -> Result<Built> {
    let tmp = tmp.to_path_buf();
    let (report_rx, report_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut report_tx = fs::File::from(report_tx);
    let source = source.to_string();
    let map = idmap.clone();
    run_in_userns(idmap, move || {
        let mut applier = Applier::create(&tmp.join("rootfs"), &map)?;
        let found = import_source(&source, &mut applier, &tmp)?;
        let summary = applier.finish()?;
        serde_json::to_writer(&mut report_tx, &Built { found, summary })
            .context("reporting the unpack")?;
        Ok(())
    })?;
    let mut report = String::new();
    fs::File::from(report_rx)
        .read_to_string(&mut report)
        .context("reading the unpack's report")?;
    serde_json::from_str(&report).context("parsing the unpack's report")
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
