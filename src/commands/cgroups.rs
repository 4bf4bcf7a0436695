//! The OCI verbs that act on a container's cgroup (`pause`, `resume`, `update`) and the
//! cgroup `create` makes, with the spec's limits applied there (see `crate::cgroup`).

use std::fs;

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{ContainerState, LinuxResources, Spec};

use super::log;
use super::oci::state_root;
use crate::cgroup::Cgroup;
use crate::cli::{GlobalArgs, IdArg, UpdateArgs};
use crate::storage::oci_state::Record;

/// Whether a spec asks for limits that need a cgroup.
fn asks_limits(res: &LinuxResources) -> bool {
    res.memory().is_some()
        || res.cpu().is_some()
        || res.pids().is_some()
        || res.block_io().is_some()
        || res
            .hugepage_limits()
            .as_ref()
            .is_some_and(|h| !h.is_empty())
        || res.unified().as_ref().is_some_and(|u| !u.is_empty())
}

/// Makes the container's cgroup where the caller may (a delegated cgroup v2 subtree, or
/// anywhere as root) and applies the spec's limits in it. A limit that cannot be applied is
/// named in a warning, as crun does rootless: engines set defaults that must not stop a
/// container.
pub(super) fn container_cgroup(id: &str, spec: &Spec) -> Result<Option<Cgroup>> {
    let linux = spec.linux().as_ref();
    let resources = linux.and_then(|l| l.resources().as_ref());
    let path = linux
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned());
    match Cgroup::create(id, path.as_deref())? {
        Ok(cgroup) => {
            if let Some(res) = resources {
                match cgroup.apply(res) {
                    Ok(missing) if !missing.is_empty() => log::warn(&format!(
                        "field `linux.resources`: not applied, as the cgroup {} does not offer \
                         them: {}",
                        cgroup.dir.display(),
                        missing.join(", ")
                    )),
                    Ok(_) => {}
                    Err(e) => {
                        let _ = cgroup.remove();
                        return Err(e);
                    }
                }
            }
            Ok(Some(cgroup))
        }
        Err(reason) => {
            if resources.is_some_and(asks_limits) {
                log::warn(&format!(
                    "field `linux.resources`: cgroup limits are not applied: {reason}"
                ));
            }
            log::debug(&format!(
                "container {id} has no cgroup of its own: {reason}"
            ));
            Ok(None)
        }
    }
}

fn cgroup_of(id: &str, record: &Record, verb: &str) -> Result<Cgroup> {
    let dir = record.cgroup.clone().with_context(|| {
        format!(
            "container {id} has no cgroup of its own, so `{verb}` cannot act on it: nook makes \
             one only in a cgroup v2 subtree this user may write (a delegated one: systemd's \
             Delegate=yes, or a directory an administrator chowned to you); `nook info` shows \
             whether yours is"
        )
    })?;
    Ok(Cgroup { dir })
}

/// `pause` and `resume`: the cgroup v2 freezer.
pub fn pause(global: &GlobalArgs, args: &IdArg, freeze: bool) -> Result<i32> {
    let root = state_root(global)?;
    let entry = root.get(&args.id)?;
    let record = entry.record()?;
    let status = entry.status(&record);
    let verb = if freeze { "pause" } else { "resume" };
    match (freeze, status, entry.paused(&record)) {
        (true, ContainerState::Running, false) | (false, ContainerState::Running, true) => {}
        (true, ContainerState::Running, true) => {
            bail!("container {} is paused already", args.id)
        }
        (false, ContainerState::Running, false) => bail!("container {} is not paused", args.id),
        (_, status, _) => bail!(
            "container {} is {status}: only a running container can be paused",
            args.id
        ),
    }
    cgroup_of(&args.id, &record, verb)?.freeze(freeze)?;
    Ok(0)
}

/// `update`: new limits for a running container, from `--resources` and the flags (the flags
/// win), written to its cgroup. Unlike `create`, a limit that cannot be applied is an error:
/// the caller asked for exactly this.
pub fn update(global: &GlobalArgs, args: &UpdateArgs) -> Result<i32> {
    let root = state_root(global)?;
    let entry = root.get(&args.id)?;
    let record = entry.record()?;
    let mut res: LinuxResources = match &args.resources {
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                    .context("reading --resources from stdin")?;
                text
            } else {
                fs::read_to_string(path)
                    .with_context(|| format!("reading --resources {}", path.display()))?
            };
            serde_json::from_str(&text)
                .context("--resources: not a runtime-spec linux.resources object")?
        }
        None => LinuxResources::default(),
    };
    if let Some(limit) = args.pids_limit {
        res.set_pids(Some(
            oci_spec::runtime::LinuxPidsBuilder::default()
                .limit(limit)
                .build()?,
        ));
    }
    if args.memory.is_some() || args.memory_swap.is_some() || args.memory_reservation.is_some() {
        let mut mem = (*res.memory()).unwrap_or_default();
        if let Some(v) = args.memory {
            mem.set_limit(Some(v));
        }
        if let Some(v) = args.memory_swap {
            mem.set_swap(Some(v));
        }
        if let Some(v) = args.memory_reservation {
            mem.set_reservation(Some(v));
        }
        res.set_memory(Some(mem));
    }
    if args.cpu_quota.is_some()
        || args.cpu_period.is_some()
        || args.cpu_share.is_some()
        || args.cpuset_cpus.is_some()
        || args.cpuset_mems.is_some()
    {
        let mut cpu = res.cpu().clone().unwrap_or_default();
        if let Some(v) = args.cpu_quota {
            cpu.set_quota(Some(v));
        }
        if let Some(v) = args.cpu_period {
            cpu.set_period(Some(v));
        }
        if let Some(v) = args.cpu_share {
            cpu.set_shares(Some(v));
        }
        if let Some(v) = &args.cpuset_cpus {
            cpu.set_cpus(Some(v.clone()));
        }
        if let Some(v) = &args.cpuset_mems {
            cpu.set_mems(Some(v.clone()));
        }
        res.set_cpu(Some(cpu));
    }
    if entry.status(&record) == ContainerState::Stopped {
        bail!("container {} is stopped: nothing to update", args.id);
    }
    let cgroup = cgroup_of(&args.id, &record, "update")?;
    let missing = cgroup.apply(&res)?;
    if !missing.is_empty() {
        bail!(
            "container {}: cannot apply {}: the cgroup {} offers only the controllers [{}] \
             (the parent's cgroup.subtree_control must enable them)",
            args.id,
            missing.join(", "),
            cgroup.dir.display(),
            cgroup.controllers().join(" ")
        );
    }
    Ok(0)
}
