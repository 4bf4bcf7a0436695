//! `import`, `images`, `rmi`, `commit`, `diff`, `export`.

use std::io::Write;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::mapping_for;
use crate::cli::{
    CommitArgs, DiffArgs, ExportArgs, ExportFormatArg, Format, ImagesArgs, ImportArgs, RmiArgs,
};
use crate::idmap::Caller;
use crate::storage::archive::Found;
use crate::storage::container::{Container, Store};
use crate::storage::image::{
    apply_changes, ContainerLayer, ExportFormat, Exportable, Image, ImageConfig, ImageMeta,
    ImageStore,
};
use crate::storage::upper::{Layer, LayerKind};

pub fn import(args: &ImportArgs) -> Result<i32> {
    let caller = Caller::current();
    if let (crate::cli::UsernsArg::KeepId, Some(why)) = (args.userns, caller.range_problem()) {
        // Root and the image's other owners would have no id to be: every chown of the
        // extraction would fail.
        bail!(
            "--userns keep-id needs a subordinate id range to import {}: the image's files \
             belong to root and other users, which keep-id maps to your range ({why}). Without \
             one, import with the default map (`nook import {} {}`): `nook run --userns \
             keep-id` then shows its files as yours",
            args.source,
            args.source,
            args.name
        );
    }
    let idmap = mapping_for(args.userns, &caller, args.quiet);
    let store = ImageStore::open()?;
    let imported = store.import(&args.source, &args.name, &idmap)?;
    if !args.quiet {
        report_build(&imported.meta, &imported.found);
    }
    println!("{}", imported.meta.name);
    Ok(0)
}

/// Notes on what a new image left out, on stderr.
fn report_build(meta: &ImageMeta, found: &Found) {
    for note in &found.notes {
        eprintln!("nook: note: {note}");
    }
    if meta.skipped_devices > 0 {
        eprintln!(
            "nook: note: skipped {} device node(s): a user namespace cannot create them (the \
             container's /dev provides the usual ones)",
            meta.skipped_devices
        );
    }
    if meta.unmapped_owners > 0 {
        eprintln!(
            "nook: note: {} file(s) belong to users outside the id map [{}]: they were given to \
             root (import with a subordinate id range to keep their owners)",
            meta.unmapped_owners,
            meta.idmap.describe()
        );
    }
}

pub(super) fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

pub fn images(args: &ImagesArgs) -> Result<i32> {
    let store = ImageStore::open_read()?;
    let images = store.list()?;
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for image in &images {
            writeln!(out, "{}", image.meta.name)?;
        }
        return Ok(0);
    }
    let usage = super::system::ImageUsage::of(&images);
    match args.format {
        Format::Json => {
            let rows: Vec<_> = images
                .iter()
                .enumerate()
                .map(|(n, i)| {
                    json!({
                        "name": i.meta.name,
                        "size": usage.size(n),
                        "shared": usage.shared(n),
                        "created": i.meta.created,
                        "source": i.meta.source,
                        "reference": i.meta.reference,
                        "digest": i.meta.digest,
                        "idmap": i.meta.idmap,
                    })
                })
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        }
        Format::Table => {
            let digest_head = if args.digests {
                format!("{:<71}  ", "DIGEST")
            } else {
                String::new()
            };
            writeln!(
                out,
                "{:<24}  {digest_head}{:>10}  {:>10}  {:<20}  SOURCE",
                "NAME", "SIZE", "SHARED", "CREATED"
            )?;
            for (n, i) in images.iter().enumerate() {
                let digest = if args.digests {
                    format!("{:<71}  ", i.meta.digest.as_deref().unwrap_or("<none>"))
                } else {
                    String::new()
                };
                writeln!(
                    out,
                    "{:<24}  {digest}{:>10}  {:>10}  {:<20}  {}",
                    i.meta.name,
                    human_size(usage.size(n)),
                    human_size(usage.shared(n)),
                    i.meta.created,
                    i.meta.source
                )?;
            }
        }
    }
    Ok(0)
}

pub fn rmi(args: &RmiArgs) -> Result<i32> {
    let store = ImageStore::open()?;
    let containers = Store::open()?;
    let mut failed = false;
    for name in &args.images {
        match remove_image(&store, &containers, name, args.force) {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("nook: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

/// `nook rmi NAME`: one name of several goes alone; an image's last name takes the image with
/// it, unless containers use it (with `force`, they go first, as podman's `rmi -f`).
pub(super) fn remove_image(
    store: &ImageStore,
    containers: &Store,
    name: &str,
    force: bool,
) -> Result<()> {
    store.get(name).and_then(|image| {
        // One name of several: the image stays, under the others, for its containers too.
        if store.untag(name, &image)? {
            return Ok(());
        }
        // Every container made from the image, running or not: none may lose its image.
        let users: Vec<Container> = containers
            .list()?
            .into_iter()
            .filter(|c| c.meta.image == image.rootfs())
            .collect();
        if !users.is_empty() && !force {
            let names: Vec<&str> = users.iter().map(|c| c.meta.name.as_str()).collect();
            bail!(
                "image {name} is used by container(s) {}: remove them first (`nook rm`), or \
                     use `nook rmi -f` to remove them with the image",
                names.join(", ")
            );
        }
        // As podman's `rmi -f`: the containers go first (running ones are stopped), so that
        // no container is left without its image.
        for c in &users {
            super::containers::remove_container(containers, c, true)
                .with_context(|| format!("removing container {} of image {name}", c.meta.name))?;
            eprintln!(
                "nook: removed container {} (it used image {name})",
                c.meta.name
            );
        }
        let rootfs = image.rootfs();
        store.remove_unless_used(&image, || {
            Ok(containers
                .list()?
                .into_iter()
                .filter(|c| c.meta.image == rootfs)
                .map(|c| c.meta.name)
                .collect())
        })?;
        store.forget_tag(name);
        Ok(())
    })
}

/// A container's layer and the image it started from (if that is a stored image).
fn container_layer(images: &ImageStore, c: &Container) -> Result<(ContainerLayer, Option<Image>)> {
    let kind = LayerKind::for_backend(&c.meta.backend);
    let top = match kind {
        LayerKind::Copy => c.dir.join("rootfs"),
        _ => c.upper(),
    };
    let Some(idmap) = c.meta.idmap.clone() else {
        bail!(
            "container {} was made by an older nook that did not record its id mapping; \
             its changes cannot be read",
            c.meta.name
        );
    };
    if !c.meta.image.is_dir() {
        bail!(
            "the image of container {} ({}) is gone; its changes have nothing to apply to",
            c.meta.name,
            c.meta.image.display()
        );
    }
    let image = images
        .list()?
        .into_iter()
        .find(|i| i.rootfs() == c.meta.image);
    let base_is_image = image.as_ref().is_some_and(|i| i.meta.idmap == idmap);
    Ok((
        ContainerLayer {
            layer: Layer {
                kind,
                top,
                base: c.meta.image.clone(),
            },
            idmap,
            base_is_image,
        },
        image,
    ))
}

pub fn commit(args: &CommitArgs) -> Result<i32> {
    let images = ImageStore::open()?;
    let container = Store::open()?.get(&args.container)?;
    let (layer, base) = container_layer(&images, &container)?;
    let mut config = base.map(|i| i.meta.config).unwrap_or_default();
    apply_changes(&mut config, &args.change)?;
    let source = format!("commit of container {}", container.meta.name);
    let (meta, changes) = images.commit(&args.name, &layer, config, &source)?;
    if !args.quiet {
        eprintln!(
            "nook: note: {changes} change(s) of container {} applied",
            container.meta.name
        );
    }
    println!("{}", meta.name);
    Ok(0)
}

pub fn diff(args: &DiffArgs) -> Result<i32> {
    let images = ImageStore::open_read()?;
    let container = Store::open_read()?.get(&args.container)?;
    let (layer, _) = container_layer(&images, &container)?;
    let mut out = std::io::stdout().lock();
    for change in images.changes(&layer)? {
        writeln!(out, "{} /{}", change.kind.letter(), change.path.display())?;
    }
    Ok(0)
}

pub fn export(args: &ExportArgs) -> Result<i32> {
    let images = ImageStore::open_read()?;
    let format = match args.format {
        ExportFormatArg::Tar => ExportFormat::Tar,
        ExportFormatArg::Oci => ExportFormat::Oci,
    };
    let image = if images.exists(&args.target) {
        Some(images.get(&args.target)?)
    } else {
        None
    };
    let what = match &image {
        Some(image) => Exportable::Image(image),
        None => {
            let container = Store::open_read()?.get(&args.target).map_err(|_| {
                anyhow::anyhow!(
                    "no image or container named {} (see `nook images` and `nook ps`)",
                    args.target
                )
            })?;
            let (from, base) = container_layer(&images, &container)?;
            Exportable::Container {
                from: Box::new(from),
                config: Box::new(
                    base.map(|i| i.meta.config)
                        .unwrap_or_else(ImageConfig::default),
                ),
                name: container.meta.name.clone(),
            }
        }
    };
    if args.output == "-" {
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            bail!("refusing to write an archive to a terminal: redirect stdout or give -o FILE");
        }
        let stdout = std::os::fd::AsFd::as_fd(&std::io::stdout()).try_clone_to_owned()?;
        images.export(&what, std::fs::File::from(stdout), format)?;
        return Ok(0);
    }
    // Written beside the destination and renamed: a cut-short export leaves no partial file
    // under the name.
    let dest = std::path::Path::new(&args.output);
    let file_name = dest
        .file_name()
        .with_context(|| format!("-o {}: not a file name", args.output))?
        .to_string_lossy()
        .into_owned();
    let tmp = dest.with_file_name(format!(".{file_name}.nook-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let result = images.export(&what, file, format).and_then(|()| {
        std::fs::rename(&tmp, dest).with_context(|| format!("writing {}", dest.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| 0)
}
