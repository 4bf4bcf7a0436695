//! `nook restart`: stop a container (if it runs) and start it again over the same writable
//! layer, in the background, as podman does. The spec `run` saved is reused as it is, with the
//! files nook generated for it (hostname, hosts, resolv.conf, …) kept beside it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::containers::{settled_state, stop_container, wait_for_runner};
use crate::cli::RestartArgs;
use crate::launch::{Launch, Target};
use crate::rootfs::{GeneratedFile, RootfsPlan};
use crate::storage::container::{Container, Status, Store};
use crate::storage::upper::LayerKind;

const FILE: &str = "relaunch.json";

/// What a start needs beyond the spec, as `run` first prepared it.
#[derive(Serialize, Deserialize)]
struct Relaunch {
    files: Vec<(PathBuf, Vec<u8>)>,
    init: bool,
}

/// Written by `run` for every container that outlives its run (not `--rm`).
pub(super) fn save(container: &Container, files: &[GeneratedFile], init: bool) -> Result<()> {
    let relaunch = Relaunch {
        files: files
            .iter()
            .map(|f| (f.destination.clone(), f.content.clone()))
            .collect(),
        init,
    };
    crate::fsutil::write_atomic(
        &container.dir.join(FILE),
        &serde_json::to_vec(&relaunch)?,
        false,
    )
}

pub fn restart(args: &RestartArgs) -> Result<i32> {
    let store = Store::open()?;
    let mut failed = false;
    for name in &args.containers {
        let result = store
            .get(name)
            .and_then(|c| restart_one(&store, &c, Duration::from_secs(args.time)));
        if let Err(e) = result {
            eprintln!("nook: {e:#}");
            failed = true;
        }
    }
    Ok(if failed { 1 } else { 0 })
}

fn restart_one(store: &Store, c: &Container, grace: Duration) -> Result<()> {
    let name = &c.meta.name;
    if c.meta.auto_remove {
        bail!("container {name} was run with --rm: it is removed when it stops, so it cannot be restarted; run a new one");
    }
    if c.meta.network.is_some() {
        bail!(
            "container {name} has a private network (-p or --network private): nook restart \
             cannot start its network helper again yet; run a new container"
        );
    }
    let data = std::fs::read(c.dir.join(FILE)).with_context(|| {
        format!(
            "container {name} was made by an older nook that did not keep what a restart needs; \
             run a new container"
        )
    })?;
    let relaunch: Relaunch = serde_json::from_slice(&data)
        .with_context(|| format!("parsing {}", c.dir.join(FILE).display()))?;
    let spec_path = c.dir.join("config.json");
    let spec = oci_spec::runtime::Spec::load(&spec_path)
        .with_context(|| format!("reading {}", spec_path.display()))?;
    if spec.process().as_ref().and_then(|p| p.terminal()) == Some(true) {
        bail!(
            "container {name} was run with -t: a restarted container runs in the background, \
             without a terminal; run a new one"
        );
    }
    let Some(idmap) = c.meta.idmap.clone() else {
        bail!("container {name} was made by an older nook that did not record its id mapping")
    };
    let kind = LayerKind::for_backend(&c.meta.backend);
    if kind != LayerKind::Copy && !c.meta.image.is_dir() {
        bail!(
            "the image of container {name} ({}) is gone; it cannot start again",
            c.meta.image.display()
        );
    }
    let state = settled_state(c);
    if state.status.is_none() && c.meta.creator_alive() {
        bail!("container {name} is still being started: try again once it runs");
    }
    if state.effective_status() == Status::Running {
        stop_container(c, grace)?;
        wait_for_runner(c, &state)?;
    }
    let plan = match kind {
        LayerKind::Overlay => RootfsPlan::Overlay {
            lower: c.meta.image.clone(),
            upper: c.upper(),
            work: c.work(),
            volatile: false,
        },
        LayerKind::Fuse => RootfsPlan::Fuse {
            lower: c.meta.image.clone(),
            upper: c.upper(),
            work: c.work(),
            log: c.dir.join("fuse-overlayfs.log"),
        },
        // Its private copy is the container: it is used again as it is.
        LayerKind::Copy => RootfsPlan::Copy { tree: c.rootfs() },
    };
    let files: Vec<GeneratedFile> = relaunch
        .files
        .into_iter()
        .map(|(destination, content)| GeneratedFile {
            destination,
            content,
        })
        .collect();
    let launch = Launch {
        spec: &spec,
        target: Target::New {
            rootfs: &plan,
            files: &files,
            idmap: Some(&idmap),
        },
        start_gate: None,
        preserve_fds: 0,
        hooks: None,
        init: relaunch.init,
        keep_stdin: false,
        die_with_parent: true,
        meanwhile: None,
        network: None,
        cgroup: None,
        // The filter saved with the container decides, as for `exec`: tier 2 gets its
        // supervisor again.
        supervision: spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().as_ref())
            .map(crate::security::root_emulation::supervision_of)
            .unwrap_or_default(),
    };
    super::run::run_detached(store, c, &launch, false).map(|_| ())
}
