//! `import`, `images`, `rmi`.

use std::io::Write;

use anyhow::{bail, Result};
use serde_json::json;

use super::mapping_for;
use crate::cli::{Format, ImagesArgs, ImportArgs, RmiArgs};
use crate::container::Store;
use crate::idmap::Caller;
use crate::image::{ImageMeta, ImageStore};
use crate::oci::Found;

pub fn import(args: &ImportArgs) -> Result<i32> {
    let idmap = mapping_for(args.userns, &Caller::current(), args.quiet);
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

/// Apparent size of a tree in bytes, hard links counted once.
fn tree_size(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += meta.len();
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

fn human_size(bytes: u64) -> String {
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
    let store = ImageStore::open()?;
    let images = store.list()?;
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for image in &images {
            writeln!(out, "{}", image.meta.name)?;
        }
        return Ok(0);
    }
    match args.format {
        Format::Json => {
            let rows: Vec<_> = images
                .iter()
                .map(|i| {
                    json!({
                        "name": i.meta.name,
                        "size": tree_size(&i.rootfs()),
                        "created": i.meta.created,
                        "source": i.meta.source,
                        "idmap": i.meta.idmap,
                    })
                })
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        }
        Format::Table => {
            writeln!(
                out,
                "{:<24}  {:>10}  {:<20}  SOURCE",
                "NAME", "SIZE", "CREATED"
            )?;
            for i in &images {
                writeln!(
                    out,
                    "{:<24}  {:>10}  {:<20}  {}",
                    i.meta.name,
                    human_size(tree_size(&i.rootfs())),
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
    let containers = Store::open()?.list()?;
    let mut failed = false;
    for name in &args.images {
        let result = store.get(name).and_then(|image| {
            let users: Vec<&str> = containers
                .iter()
                .filter(|c| c.meta.image == image.rootfs())
                .map(|c| c.meta.name.as_str())
                .collect();
            if !users.is_empty() && !args.force {
                bail!(
                    "image {name} is used by container(s) {}: remove them first, or use \
                     `nook rmi -f`",
                    users.join(", ")
                );
            }
            store.remove(&image)
        });
        match result {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("nook: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}
