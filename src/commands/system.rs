//! `system df` and `system prune`: the whole store at once.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Result};
use serde_json::json;

use super::images::human_size;
use crate::cli::{DfArgs, Format, PruneArgs};
use crate::storage::container::{Container, Status, Store};
use crate::storage::image::{Image, ImageStore};
use crate::storage::usage::{measure, Measured};

/// Sizes of listed images, measured together: an image's several names (tags) are one tree,
/// and a file hard linked into several images is counted once in totals and shows as shared.
pub(super) struct ImageUsage {
    measured: Measured,
    /// For each listed image, its tree in `measured`.
    tree_of: Vec<usize>,
    /// The distinct image directories, in tree order.
    dirs: Vec<PathBuf>,
}

impl ImageUsage {
    pub(super) fn of(images: &[Image]) -> ImageUsage {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let tree_of = images
            .iter()
            .map(|i| match dirs.iter().position(|d| *d == i.dir) {
                Some(n) => n,
                None => {
                    dirs.push(i.dir.clone());
                    dirs.len() - 1
                }
            })
            .collect();
        let roots: Vec<PathBuf> = dirs.iter().map(|d| d.join("rootfs")).collect();
        ImageUsage {
            measured: measure(&roots),
            tree_of,
            dirs,
        }
    }

    pub(super) fn size(&self, image: usize) -> u64 {
        self.measured.size(self.tree_of[image])
    }

    pub(super) fn shared(&self, image: usize) -> u64 {
        self.measured.shared(self.tree_of[image])
    }
}

/// The writable layer of a container: what removing it frees.
fn layer_dir(c: &Container) -> PathBuf {
    if c.meta.backend == "copy" {
        c.rootfs()
    } else {
        c.upper()
    }
}

fn running(c: &Container) -> bool {
    c.state().effective_status() == Status::Running
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0%".to_string();
    }
    format!("{}%", part * 100 / whole)
}

pub fn df(args: &DfArgs) -> Result<i32> {
    let images = ImageStore::open()?;
    let store = Store::open()?;
    let listed = images.list()?;
    let containers = store.list()?;
    let usage = ImageUsage::of(&listed);
    let trees = usage.dirs.len();
    let used: Vec<bool> = usage
        .dirs
        .iter()
        .map(|d| containers.iter().any(|c| c.meta.image == d.join("rootfs")))
        .collect();
    let images_size = usage.measured.total();
    let kept = usage.measured.union((0..trees).filter(|&t| used[t]));
    let layers = measure(&containers.iter().map(layer_dir).collect::<Vec<_>>());
    let is_running: Vec<bool> = containers.iter().map(running).collect();
    let containers_size = layers.total();
    let stopped_size = layers.union((0..containers.len()).filter(|&n| !is_running[n]));
    let names = |t: usize| -> Vec<&str> {
        listed
            .iter()
            .zip(&usage.tree_of)
            .filter(|(_, &tree)| tree == t)
            .map(|(i, _)| i.meta.name.as_str())
            .collect()
    };
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => {
            let image_rows: Vec<_> = (0..trees)
                .map(|t| {
                    json!({
                        "names": names(t),
                        "size": usage.measured.size(t),
                        "shared": usage.measured.shared(t),
                        "unique": usage.measured.size(t) - usage.measured.shared(t),
                        "containers": containers.iter()
                            .filter(|c| c.meta.image == usage.dirs[t].join("rootfs")).count(),
                    })
                })
                .collect();
            let container_rows: Vec<_> = containers
                .iter()
                .enumerate()
                .map(|(n, c)| {
                    json!({
                        "name": c.meta.name,
                        "id": c.meta.id,
                        "size": layers.size(n),
                        "running": is_running[n],
                    })
                })
                .collect();
            let report = json!({
                "images": {
                    "total": trees,
                    "active": used.iter().filter(|u| **u).count(),
                    "size": images_size,
                    "reclaimable": images_size - kept,
                    "items": image_rows,
                },
                "containers": {
                    "total": containers.len(),
                    "active": is_running.iter().filter(|r| **r).count(),
                    "size": containers_size,
                    "reclaimable": stopped_size,
                    "items": container_rows,
                },
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        }
        Format::Table => {
            let row = |kind: &str, total: usize, active: usize, size: u64, free: u64| {
                format!(
                    "{kind:<12}{total:<8}{active:<8}{:<12}{} ({})",
                    human_size(size),
                    human_size(free),
                    percent(free, size)
                )
            };
            writeln!(
                out,
                "{:<12}{:<8}{:<8}{:<12}RECLAIMABLE",
                "TYPE", "TOTAL", "ACTIVE", "SIZE"
            )?;
            writeln!(
                out,
                "{}",
                row(
                    "Images",
                    trees,
                    used.iter().filter(|u| **u).count(),
                    images_size,
                    images_size - kept
                )
            )?;
            writeln!(
                out,
                "{}",
                row(
                    "Containers",
                    containers.len(),
                    is_running.iter().filter(|r| **r).count(),
                    containers_size,
                    stopped_size
                )
            )?;
            if args.verbose {
                writeln!(out, "\nImages space usage:\n")?;
                writeln!(
                    out,
                    "{:<32}  {:>10}  {:>10}  {:>10}  CONTAINERS",
                    "NAMES", "SIZE", "SHARED", "UNIQUE"
                )?;
                for t in 0..trees {
                    let (size, shared) = (usage.measured.size(t), usage.measured.shared(t));
                    let users = containers
                        .iter()
                        .filter(|c| c.meta.image == usage.dirs[t].join("rootfs"))
                        .count();
                    writeln!(
                        out,
                        "{:<32}  {:>10}  {:>10}  {:>10}  {users}",
                        names(t).join(", "),
                        human_size(size),
                        human_size(shared),
                        human_size(size - shared)
                    )?;
                }
                writeln!(out, "\nContainers space usage:\n")?;
                writeln!(out, "{:<32}  {:>10}  STATUS", "NAME", "SIZE")?;
                for (n, c) in containers.iter().enumerate() {
                    writeln!(
                        out,
                        "{:<32}  {:>10}  {}",
                        c.meta.name,
                        human_size(layers.size(n)),
                        if is_running[n] { "running" } else { "stopped" }
                    )?;
                }
            }
        }
    }
    Ok(0)
}

/// Asks on the terminal whether to go on; off a terminal only `-f` says yes.
fn confirmed(what: &str) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "nook system prune would remove {what}; stdin is not a terminal to ask on: give -f \
             (--force) to go ahead"
        );
    }
    eprint!("WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes"))
}

pub fn prune(args: &PruneArgs) -> Result<i32> {
    let what = if args.all {
        "every stopped container, the build step cache and every image no container uses"
    } else {
        "every stopped container and the build step cache"
    };
    if !args.force && !confirmed(what)? {
        eprintln!("nook: nothing removed");
        return Ok(1);
    }
    let mut failed = false;
    let mut freed = 0;
    let store = Store::open()?;
    let stopped: Vec<Container> = store
        .list()?
        .into_iter()
        .filter(|c| {
            let state = c.state();
            state.effective_status() != Status::Running
                && !(state.status.is_none() && c.meta.creator_alive())
        })
        .collect();
    let layers = measure(&stopped.iter().map(layer_dir).collect::<Vec<_>>());
    let mut header = false;
    for (n, c) in stopped.iter().enumerate() {
        match super::containers::remove_container(&store, c, false) {
            Ok(()) => {
                if !std::mem::replace(&mut header, true) {
                    println!("Deleted Containers");
                }
                println!("{}", c.meta.name);
                freed += layers.size(n);
            }
            Err(e) => {
                eprintln!("nook: {e:#}");
                failed = true;
            }
        }
    }
    if args.all {
        let images = ImageStore::open()?;
        let listed = images.list()?;
        let before = ImageUsage::of(&listed);
        let in_use: Vec<PathBuf> = store.list()?.into_iter().map(|c| c.meta.image).collect();
        let mut removed = Vec::new();
        let mut header = false;
        for image in &listed {
            if in_use.contains(&image.rootfs()) {
                continue;
            }
            match super::images::remove_image(&images, &store, &image.meta.name, false) {
                Ok(()) => {
                    if !std::mem::replace(&mut header, true) {
                        println!("Deleted Images");
                    }
                    println!("{}", image.meta.name);
                    removed.push(image.dir.clone());
                }
                Err(e) => {
                    eprintln!("nook: {e:#}");
                    failed = true;
                }
            }
        }
        let kept = (0..before.dirs.len()).filter(|&t| !removed.contains(&before.dirs[t]));
        freed += before.measured.total() - before.measured.union(kept);
    }
    // Build steps no container is running over: what `nook build` keeps to reuse.
    let cache_root = crate::storage::container::storage_root()?.join("build-cache");
    if cache_root.is_dir() {
        let cache = ImageStore::at(cache_root);
        let steps = cache.list()?;
        let before = ImageUsage::of(&steps);
        let in_use: Vec<PathBuf> = store.list()?.into_iter().map(|c| c.meta.image).collect();
        let mut removed = Vec::new();
        for step in &steps {
            if in_use.contains(&step.rootfs()) {
                continue;
            }
            match cache.remove_unless_used(step, || Ok(Vec::new())) {
                Ok(()) => removed.push(step.dir.clone()),
                Err(e) => {
                    eprintln!("nook: {e:#}");
                    failed = true;
                }
            }
        }
        if !removed.is_empty() {
            println!("Deleted Build Cache\n{} step(s)", removed.len());
        }
        let kept = (0..before.dirs.len()).filter(|&t| !removed.contains(&before.dirs[t]));
        freed += before.measured.total() - before.measured.union(kept);
    }
    // The registry's blob cache joins here once pulls exist: after the images, which are what
    // keeps a blob worth its space.
    println!("Total reclaimed space: {}", human_size(freed));
    Ok(if failed { 1 } else { 0 })
}
