//! The image store: `<storage>/images/<name>/rootfs/` (a plain directory nothing writes to once
//! it is there) and `image.json` (the image config, where it came from, and the id mapping its
//! files' owners follow).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil::{create_private_dir, write_atomic};
use crate::idmap::IdMapping;
use crate::launch::run_in_userns;
use crate::storage::archive::{import_source, Found};
use crate::storage::container::{now_rfc3339, remove_owned_tree, storage_root};
use crate::storage::layer::{Applier, Summary};
use crate::storage::tree::{Copier, Share};
use crate::storage::upper::{Change, ChangeKind, Layer};

/// What the image asks of a container (the part of the OCI image config nook applies).
pub type ImageConfig = crate::storage::archive::RunConfig;

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
    /// For a pulled image: the reference it was pulled by, fully qualified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// For a pulled image: the digest of the manifest (or list) the reference named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
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
        let storage = storage_root()?;
        let root = storage.join("images");
        create_private_dir(&root)
            .map_err(|e| crate::storage::container::store_unwritable(&storage, e))?;
        let store = ImageStore { root };
        store.clean_leftovers();
        Ok(store)
    }

    /// The store for the verbs that only read it (`images`, `inspect`, finding an image): it
    /// creates nothing, so they work on a read-only store (where the cleaning of what crashed
    /// imports left, as `open` does it, fails quietly).
    pub fn open_read() -> Result<ImageStore> {
        let store = ImageStore {
            root: storage_root()?.join("images"),
        };
        store.clean_leftovers();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store at `root`, as it is (nothing created or cleaned).
    pub(crate) fn at(root: PathBuf) -> ImageStore {
        ImageStore { root }
    }

    /// The image `name` names; `dir` is the directory of its files even when `name` is a tag
    /// (see `storage::tags`), and `meta.name` is `name`.
    pub fn get(&self, name: &str) -> Result<Image> {
        validate_image_name(name)?;
        let Some(dir) = crate::storage::tags::locate(&self.root, name) else {
            bail!("no such image: {name} (see `nook images`)")
        };
        let path = dir.join("image.json");
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                bail!("no such image: {name} (see `nook images`)")
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut meta: ImageMeta =
            serde_json::from_slice(&data).with_context(|| format!("parsing {}", path.display()))?;
        meta.name = name.to_string();
        Ok(Image { dir, meta })
    }

    pub fn exists(&self, name: &str) -> bool {
        validate_image_name(name).is_ok()
            && crate::storage::tags::locate(&self.root, name)
                .is_some_and(|dir| dir.join("image.json").exists())
    }

    pub fn list(&self) -> Result<Vec<Image>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            other => other.with_context(|| format!("reading {}", self.root.display()))?,
        };
        for entry in entries {
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
        let source_path = match source {
            "-" => None,
            s => Some(
                fs::canonicalize(s).with_context(|| format!("{s}: no such file or directory"))?,
            ),
        };
        let (meta, found) = self.build(name, idmap, source, |tmp| {
            let rootfs = tmp.join("rootfs");
            match &source_path {
                Some(dir)
                    if dir.is_dir() && !crate::storage::archive::is_image_archive_dir(dir) =>
                {
                    let skipped = copy_directory(dir, &rootfs, idmap)?;
                    Ok(Built {
                        found: Found {
                            kind: "directory".into(),
                            ..Found::default()
                        },
                        summary: Summary {
                            skipped_devices: skipped,
                            ..Summary::default()
                        },
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
        if let Some(why) = crate::storage::tags::name_taken(&self.root, name) {
            bail!(why);
        }
        let tmp = self.root.join(format!(
            ".import-{}-{}",
            name.replace(':', "_"),
            std::process::id()
        ));
        create_private_dir(&tmp).map_err(|e| {
            crate::storage::container::store_unwritable(self.root.parent().unwrap_or(&self.root), e)
        })?;
        let result = (|| -> Result<(ImageMeta, Found)> {
            // Written first, so that whoever cleans up a build cut short knows the owners.
            write_atomic(&tmp.join(IDMAP_FILE), &serde_json::to_vec(idmap)?, true)?;
            let built = fill(&tmp)?;
            let meta = ImageMeta {
                name: name.to_string(),
                created: now_rfc3339(),
                source: source.to_string(),
                config: built.found.config.clone(),
                idmap: idmap.clone(),
                skipped_devices: built.summary.skipped_devices,
                unmapped_owners: built.summary.unmapped_owners,
                reference: built.found.reference.clone(),
                digest: built.found.digest.clone(),
            };
            write_atomic(
                &tmp.join("image.json"),
                &serde_json::to_vec_pretty(&meta)?,
                true,
            )?;
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

    /// Removes the image unless `users` (asked once the image is out of sight, so that no new
    /// container can start from it) names containers made from it meanwhile: then the image
    /// is put back and the error names them.
    pub fn remove_unless_used(
        &self,
        image: &Image,
        users: impl FnOnce() -> Result<Vec<String>>,
    ) -> Result<()> {
        let trash = self.root.join(format!(
            ".removing-{}-{}",
            image.meta.name.replace(':', "_"),
            std::process::id()
        ));
        fs::rename(&image.dir, &trash)
            .with_context(|| format!("removing {}", image.dir.display()))?;
        let late = match users() {
            Ok(late) if late.is_empty() => {
                return remove_owned_tree(&trash, Some(&image.meta.idmap));
            }
            Ok(late) => anyhow::anyhow!(
                "container(s) {} started from image {} while it was being removed; it is kept",
                late.join(", "),
                image.meta.name
            ),
            Err(e) => e.context(format!("image {} is kept", image.meta.name)),
        };
        fs::rename(&trash, &image.dir).with_context(|| {
            format!(
                "putting image {} back from {}",
                image.meta.name,
                trash.display()
            )
        })?;
        Err(late)
    }
}

/// A container's layer, read as a change set: what `commit`, `diff` and `export` of a container
/// start from.
#[derive(Clone, Debug)]
pub struct ContainerLayer {
    pub layer: Layer,
    /// The container's id mapping: its layer's files belong to these ids.
    pub idmap: IdMapping,
    /// Whether the base is a stored image with the same mapping (its files may be hard linked).
    pub base_is_image: bool,
}

impl ImageStore {
    /// `nook commit`: a new image `name` made of the container's base with its changes
    /// applied. Unchanged files are hard links to the base image's (never written, so sharing
    /// is safe); changed ones are reflinked or copied. Returns the image and how many changes
    /// it took.
    pub fn commit(
        &self,
        name: &str,
        from: &ContainerLayer,
        config: ImageConfig,
        source: &str,
    ) -> Result<(ImageMeta, usize)> {
        let mut changes = 0;
        let (meta, _) = self.build(name, &from.idmap, source, |tmp| {
            changes = flatten_in_userns(from, &tmp.join("rootfs"))?;
            Ok(Built {
                found: Found {
                    config,
                    kind: "commit".into(),
                    ..Found::default()
                },
                summary: Summary::default(),
            })
        })?;
        Ok((meta, changes))
    }

    /// The changes of a container's layer, read inside its user namespace.
    pub fn changes(&self, from: &ContainerLayer) -> Result<Vec<Change>> {
        let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut tx = fs::File::from(tx);
        let layer = from.layer.clone();
        run_in_userns(&from.idmap, move || {
            let changes = crate::storage::upper::changes(&layer)?;
            serde_json::to_writer(&mut tx, &changes).context("reporting the changes")?;
            Ok(())
        })?;
        let mut report = String::new();
        fs::File::from(rx)
            .read_to_string(&mut report)
            .context("reading the changes")?;
        serde_json::from_str(&report).context("parsing the changes")
    }

    /// `nook export`: writes the tree of an image, or of a container (its layer over its image,
    /// read together as the container sees them, with no copy first), to `out` as a tar stream
    /// or an OCI image layout archive.
    pub fn export(&self, what: &Exportable<'_>, out: fs::File, format: ExportFormat) -> Result<()> {
        match what {
            // An image's export says when the image was made: the same image exports (and
            // pushes) to the same digest.
            Exportable::Image(image) => write_export(
                Tree::Dir(image.rootfs()),
                &image.meta.idmap,
                out,
                format,
                (&image.meta.config, &image.meta.name, &image.meta.created),
            ),
            Exportable::Container { from, config, name } => write_export(
                Tree::Layer(from.layer.clone()),
                &from.idmap,
                out,
                format,
                (config, name, &now_rfc3339()),
            ),
        }
    }
}

/// The tree an export writes.
enum Tree {
    /// A plain directory: an image's root.
    Dir(PathBuf),
    /// A container's layer over its image.
    Layer(Layer),
}

impl Tree {
    /// A directory beside the tree, for scratch files of the same filesystem.
    fn near(&self) -> &Path {
        match self {
            Tree::Dir(dir) => dir,
            Tree::Layer(layer) => &layer.top,
        }
    }

    fn write<W: io::Write>(&self, out: W, bar: &indicatif::ProgressBar) -> Result<W> {
        match self {
            Tree::Dir(dir) => crate::storage::archive::write_tree(dir, out, bar),
            Tree::Layer(layer) => {
                let mut list = |rel: &Path, side| {
                    Ok(crate::storage::upper::view_dir(layer, rel, side)?
                        .into_iter()
                        .map(|e| (e.name, e.path, e.side))
                        .collect())
                };
                let root = crate::storage::upper::view_root(layer);
                crate::storage::archive::write_view(out, bar, root, &mut list)
            }
        }
    }
}

/// What `export` writes.
pub enum Exportable<'a> {
    Image(&'a Image),
    Container {
        from: Box<ContainerLayer>,
        config: Box<ImageConfig>,
        name: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Tar,
    Oci,
}

/// Base plus changes into `rootfs`, inside the container's user namespace; returns the number of
/// changes applied.
fn flatten_in_userns(from: &ContainerLayer, rootfs: &Path) -> Result<usize> {
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut tx = fs::File::from(tx);
    let (layer, rootfs) = (from.layer.clone(), rootfs.to_path_buf());
    let share = if from.base_is_image {
        Share::Link
    } else {
        Share::Copy
    };
    run_in_userns(&from.idmap, move || {
        let changes = crate::storage::upper::changes(&layer)?;
        let bar = crate::storage::archive::progress_bar(None, "committing");
        let mut copier = Copier::default();
        copier.copy_tree(&layer.base, &rootfs, share)?;
        for change in &changes {
            let dest = rootfs.join(&change.path);
            match change.kind {
                ChangeKind::Deleted => crate::storage::tree::remove(&dest)?,
                ChangeKind::Added | ChangeKind::Changed => {
                    let src = layer.top.join(&change.path);
                    let meta = fs::symlink_metadata(&src)
                        .with_context(|| format!("reading {}", src.display()))?;
                    if meta.is_dir() {
                        copier.make_dir(&src, &meta, &dest)?;
                    } else {
                        copier.copy_entry(&src, &meta, &dest, Share::Copy)?;
                        bar.inc(meta.len());
                    }
                }
            }
        }
        copier.finish()?;
        bar.finish_and_clear();
        write!(tx, "{}", changes.len()).context("reporting the commit")?;
        Ok(())
    })?;
    let mut report = String::new();
    fs::File::from(rx).read_to_string(&mut report)?;
    report.trim().parse().context("reading the commit's report")
}

/// Writes `rootfs` to `out` from inside the user namespace of its owners (so every file is
/// readable and owners come out as the image's own ids).
fn write_export(
    tree: Tree,
    idmap: &IdMapping,
    out: fs::File,
    format: ExportFormat,
    (config, name, created): (&ImageConfig, &str, &str),
) -> Result<()> {
    let (config, name, created) = (config.clone(), name.to_string(), created.to_string());
    // The layer of an OCI export goes to an unnamed temporary file first: its digest and size
    // come before its data in the archive.
    let scratch = match format {
        ExportFormat::Oci => Some(tempfile_near(tree.near())?),
        ExportFormat::Tar => None,
    };
    run_in_userns(idmap, move || {
        let bar = crate::storage::archive::progress_bar(None, "exporting");
        let out = io::BufWriter::with_capacity(1 << 20, out);
        match scratch {
            None => {
                let mut out = tree.write(out, &bar)?;
                io::Write::flush(&mut out).context("writing the archive")?;
            }
            Some(layer) => {
                let writer = crate::storage::archive::HashingWriter::new(
                    io::BufWriter::with_capacity(1 << 20, layer),
                );
                let writer = tree.write(writer, &bar)?;
                let (layer, digest, size) = writer.finish().context("writing the layer")?;
                let layer = layer
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .context("writing the layer")?;
                let mut out = crate::storage::archive::write_oci_archive(
                    out, layer, &digest, size, &config, &name, &created,
                )?;
                io::Write::flush(&mut out).context("writing the archive")?;
            }
        }
        bar.finish_and_clear();
        Ok(())
    })
}

/// An unnamed file (`O_TMPFILE`) in the directory of `path`, for scratch data that vanishes
/// with the process.
fn tempfile_near(path: &Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |dir: &Path| {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(dir)
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    match open(dir) {
        // A read-only store: an export only reads it, so the scratch file goes elsewhere.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS | libc::EACCES)) => {
            let tmp = std::env::temp_dir();
            open(&tmp).with_context(|| {
                format!(
                    "creating a scratch file in {} ({} is not writable: {e})",
                    tmp.display(),
                    dir.display()
                )
            })
        }
        other => other.with_context(|| format!("creating a scratch file in {}", dir.display())),
    }
}

/// Applies `--change` instructions (Dockerfile syntax: `CMD`, `ENTRYPOINT`, `ENV`, `WORKDIR`,
/// `USER`, `LABEL`, `EXPOSE`) to an image config.
pub fn apply_changes(config: &mut ImageConfig, changes: &[String]) -> Result<()> {
    for change in changes {
        let (word, rest) = change
            .trim()
            .split_once(char::is_whitespace)
            .map(|(w, r)| (w, r.trim()))
            .unwrap_or((change.trim(), ""));
        let command = || -> Result<Vec<String>> {
            if rest.starts_with('[') {
                serde_json::from_str(rest)
                    .with_context(|| format!("--change {change:?}: not a JSON array of strings"))
            } else {
                Ok(vec!["/bin/sh".into(), "-c".into(), rest.to_string()])
            }
        };
        match word.to_ascii_uppercase().as_str() {
            "CMD" => config.cmd = Some(command()?),
            "ENTRYPOINT" => config.entrypoint = Some(command()?),
            "WORKDIR" if rest.starts_with('/') => config.working_dir = Some(rest.to_string()),
            "WORKDIR" => bail!("--change {change:?}: WORKDIR needs an absolute path"),
            "USER" if !rest.is_empty() => config.user = Some(rest.to_string()),
            "EXPOSE" if !rest.is_empty() => {
                for port in rest.split_whitespace() {
                    let key = if port.contains('/') {
                        port.to_string()
                    } else {
                        format!("{port}/tcp")
                    };
                    config
                        .exposed_ports
                        .get_or_insert_with(Default::default)
                        .insert(key, serde_json::json!({}));
                }
            }
            "ENV" | "LABEL" => {
                let (key, value) = rest
                    .split_once('=')
                    .or_else(|| rest.split_once(char::is_whitespace))
                    .map(|(k, v)| (k.trim(), v.trim()))
                    .filter(|(k, _)| !k.is_empty())
                    .with_context(|| format!("--change {change:?}: expected KEY=VALUE"))?;
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value);
                if word.eq_ignore_ascii_case("ENV") {
                    let env = config.env.get_or_insert_with(Vec::new);
                    env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
                    env.push(format!("{key}={value}"));
                } else {
                    config
                        .labels
                        .get_or_insert_with(Default::default)
                        .insert(key.to_string(), value.to_string());
                }
            }
            _ => bail!(
                "--change {change:?}: use CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL or EXPOSE, \
                 as in a Dockerfile"
            ),
        }
    }
    Ok(())
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
        let mut found = import_source(&source, &mut applier, &tmp)?;
        let summary = applier.finish()?;
        if summary.skipped_xattrs > 0 {
            found.notes.push(format!(
                "left out {} extended attribute(s) a user namespace may not set (trusted.*, \
                 security.* other than file capabilities)",
                summary.skipped_xattrs
            ));
        }
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
/// Returns how many device nodes and sockets were left out.
fn copy_directory(src: &Path, dest: &Path, idmap: &IdMapping) -> Result<u64> {
    let (src, dest) = (src.to_path_buf(), dest.to_path_buf());
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut tx = fs::File::from(tx);
    run_in_userns(idmap, move || {
        let mut copier = Copier::default();
        copier.copy_tree(&src, &dest, Share::Copy)?;
        let skipped = copier.finish()?;
        write!(tx, "{skipped}").context("reporting the copy")?;
        Ok(())
    })?;
    let mut report = String::new();
    fs::File::from(rx).read_to_string(&mut report)?;
    report.trim().parse().context("reading the copy's report")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_follow_dockerfile_syntax() {
        let mut config = ImageConfig {
            env: Some(vec!["PATH=/bin".into(), "A=1".into()]),
            cmd: Some(vec!["old".into()]),
            ..ImageConfig::default()
        };
        apply_changes(
            &mut config,
            &[
                r#"CMD ["/bin/app", "--flag"]"#.into(),
                "ENV A=2".into(),
                "env B \"two words\"".into(),
                "WORKDIR /srv".into(),
                "ENTRYPOINT exec app".into(),
                "LABEL org.example=yes".into(),
            ],
        )
        .unwrap();
        assert_eq!(config.cmd.unwrap(), ["/bin/app", "--flag"]);
        assert_eq!(config.env.unwrap(), ["PATH=/bin", "A=2", "B=two words"]);
        assert_eq!(config.working_dir.as_deref(), Some("/srv"));
        assert_eq!(config.entrypoint.unwrap(), ["/bin/sh", "-c", "exec app"]);
        assert_eq!(config.labels.unwrap()["org.example"], "yes");
        let mut config = ImageConfig::default();
        assert!(apply_changes(&mut config, &["WORKDIR relative".into()]).is_err());
        assert!(apply_changes(&mut config, &["RUN make".into()]).is_err());
        assert!(apply_changes(&mut config, &["CMD [not json".into()]).is_err());
    }
}
