//! The container's cgroup (v2 only): created where the caller may write, so `pause`/`resume`
//! (the freezer every v2 cgroup has), `update` and the spec's `linux.resources` work; absent
//! where it may not, and then those verbs say so.
//!
//! A rootless caller may write only a subtree delegated to it (systemd's `Delegate=yes`, or an
//! administrator's `chown` of a cgroup directory and its `cgroup.procs`, `cgroup.subtree_control`,
//! `cgroup.threads`). The kernel moves a process only when the writer may write `cgroup.procs` of
//! the common ancestor of its old and new cgroups, so the container's cgroup is made under
//! nook's own one. Limits need their controller enabled in the parent's `cgroup.subtree_control`;
//! the freezer (`cgroup.freeze`) needs none. cgroup v1 is not used: its hierarchies belong to
//! root, and engines that want it run as root with runc.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::unistd::{access, AccessFlags};
use oci_spec::runtime::LinuxResources;

/// Where a container's cgroup lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub dir: PathBuf,
}

/// The cgroup2 mount point, wherever it is (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn v2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split(' ').next()? == "cgroup2")
            .then(|| left.split(' ').nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// nook's own v2 cgroup, relative to the mount (`/user.slice/...`).
fn own_path() -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_owned())
}

/// nook's own cgroup v2 directory.
pub fn own_dir() -> Option<PathBuf> {
    let mount = v2_mount()?;
    let own = own_path()?;
    let rel = own.trim_start_matches('/');
    Some(if rel.is_empty() {
        mount
    } else {
        mount.join(rel)
    })
}

/// Whether this process may create cgroups under `dir` and move processes into them.
pub fn delegated(dir: &Path) -> bool {
    access(dir, AccessFlags::W_OK).is_ok()
        && access(&dir.join("cgroup.procs"), AccessFlags::W_OK).is_ok()
}

/// Translates a spec's `cgroupsPath` to a path under the v2 mount. The systemd form
/// `slice:prefix:name` becomes `slice/prefix-name.scope`, as runc's cgroupfs reading of it.
fn spec_relative(cgroups_path: &str, own: &str) -> String {
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    if let [slice, prefix, name] = parts.as_slice() {
        let slice = if slice.is_empty() {
            "nook.slice"
        } else {
            slice
        };
        return format!("/{slice}/{prefix}-{name}.scope");
    }
    if cgroups_path.starts_with('/') {
        cgroups_path.to_owned()
    } else {
        format!("{}/{}", own.trim_end_matches('/'), cgroups_path)
    }
}

impl Cgroup {
    /// Makes the container's cgroup, or says why there is none (`Ok(None)` plus the reason).
    /// A spec path is honoured where the caller may write there; otherwise the cgroup is made
    /// under nook's own, if that is delegated.
    pub fn create(
        id: &str,
        cgroups_path: Option<&str>,
    ) -> Result<std::result::Result<Cgroup, String>> {
        let Some(mount) = v2_mount() else {
            return Ok(Err("no cgroup2 filesystem is mounted".into()));
        };
        let own = own_path().unwrap_or_else(|| "/".into());
        let own_dir = mount.join(own.trim_start_matches('/'));
        let mut candidates = Vec::new();
        if let Some(path) = cgroups_path.filter(|p| !p.is_empty()) {
            let rel = spec_relative(path, &own);
            candidates.push(mount.join(rel.trim_start_matches('/')));
            // Rootless: the engine's absolute path is rarely writable; the same leaf under
            // our own delegated cgroup is.
            let leaf = Path::new(&rel).file_name().map_or_else(
                || format!("nook-{id}"),
                |l| l.to_string_lossy().into_owned(),
            );
            candidates.push(own_dir.join(leaf));
        } else {
            candidates.push(own_dir.join(format!("nook-{id}")));
        }
        for dir in &candidates {
            let Some(parent) = dir.parent() else { continue };
            if !writable_ancestor(parent, &mount) {
                continue;
            }
            match fs::create_dir_all(dir) {
                Ok(()) => return Ok(Ok(Cgroup { dir: dir.clone() })),
                Err(e) if e.kind() == ErrorKind::PermissionDenied => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("creating the cgroup {}", dir.display()))
                }
            }
        }
        Ok(Err(format!(
            "nook's cgroup {} is not delegated to this user (it may not create cgroups there: \
             ask for a delegated cgroup v2 subtree, e.g. systemd's Delegate=yes or `systemd-run \
             --user --scope -p Delegate=yes`)",
            own_dir.display()
        )))
    }

    /// Moves `pid` (a process not yet in a cgroup namespace of its own) into the cgroup.
    pub fn add_process(&self, pid: i32) -> Result<()> {
        let procs = self.dir.join("cgroup.procs");
        fs::write(&procs, pid.to_string())
            .with_context(|| format!("moving pid {pid} into the cgroup ({})", procs.display()))
    }

    /// Moves the calling process in, unless the kernel refuses it for want of write access to
    /// the common ancestor (a caller outside the delegated subtree).
    pub fn add_self_if_permitted(&self) -> Result<()> {
        match fs::write(self.dir.join("cgroup.procs"), "0") {
            Err(e) if e.kind() == ErrorKind::PermissionDenied => Ok(()),
            other => other
                .with_context(|| format!("joining the container's cgroup {}", self.dir.display())),
        }
    }

    /// The controllers this cgroup offers for limits.
    pub fn controllers(&self) -> Vec<String> {
        fs::read_to_string(self.dir.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Writes the limits a spec or `update` asks for. Returns the settings that could not be
    /// applied because their controller is not delegated (each named, for the caller to warn or
    /// fail with).
    pub fn apply(&self, res: &LinuxResources) -> Result<Vec<String>> {
        let available = self.controllers();
        let mut missing = Vec::new();
        let mut write = |controller: &str, file: &str, value: String, field: &str| -> Result<()> {
            if !available.iter().any(|c| c == controller) {
                missing.push(format!("{field} (the {controller} controller)"));
                return Ok(());
            }
            let path = self.dir.join(file);
            fs::write(&path, &value).with_context(|| {
                format!("field `{field}`: writing {value:?} to {}", path.display())
            })
        };
        if let Some(pids) = res.pids() {
            let limit = pids.limit();
            let value = if limit <= 0 {
                "max".into()
            } else {
                limit.to_string()
            };
            write("pids", "pids.max", value, "linux.resources.pids.limit")?;
        }
        if let Some(mem) = res.memory() {
            if let Some(limit) = mem.limit() {
                write(
                    "memory",
                    "memory.max",
                    max_or(limit),
                    "linux.resources.memory.limit",
                )?;
                if let Some(swap) = mem.swap() {
                    // v1's swap is memory+swap; v2's memory.swap.max is swap alone.
                    let value = if swap < 0 || limit < 0 {
                        "max".into()
                    } else {
                        (swap - limit).max(0).to_string()
                    };
                    write(
                        "memory",
                        "memory.swap.max",
                        value,
                        "linux.resources.memory.swap",
                    )?;
                }
            }
            if let Some(low) = mem.reservation() {
                write(
                    "memory",
                    "memory.low",
                    max_or(low),
                    "linux.resources.memory.reservation",
                )?;
            }
        }
        if let Some(cpu) = res.cpu() {
            if cpu.quota().is_some() || cpu.period().is_some() {
                let quota = cpu.quota().map_or("max".into(), max_or);
                let period = cpu.period().unwrap_or(100_000);
                write(
                    "cpu",
                    "cpu.max",
                    format!("{quota} {period}"),
                    "linux.resources.cpu.quota",
                )?;
            }
            if let Some(shares) = cpu.shares() {
                write(
                    "cpu",
                    "cpu.weight",
                    shares_to_weight(shares).to_string(),
                    "linux.resources.cpu.shares",
                )?;
            }
            if let Some(cpus) = cpu.cpus() {
                write(
                    "cpuset",
                    "cpuset.cpus",
                    cpus.clone(),
                    "linux.resources.cpu.cpus",
                )?;
            }
            if let Some(mems) = cpu.mems() {
                write(
                    "cpuset",
                    "cpuset.mems",
                    mems.clone(),
                    "linux.resources.cpu.mems",
                )?;
            }
        }
        if let Some(unified) = res.unified() {
            for (key, value) in unified {
                if key.contains('/') || key.starts_with('.') {
                    bail!("field `linux.resources.unified`: {key:?} is not a cgroup file name");
                }
                let controller = key.split('.').next().unwrap_or_default();
                let path = self.dir.join(key);
                if controller == "cgroup" || available.iter().any(|c| c == controller) {
                    fs::write(&path, value).with_context(|| {
                        format!(
                            "field `linux.resources.unified`: writing {value:?} to {}",
                            path.display()
                        )
                    })?;
                } else {
                    missing.push(format!(
                        "linux.resources.unified.{key} (the {controller} controller)"
                    ));
                }
            }
        }
        if res.block_io().is_some() {
            missing.push(
                "linux.resources.blockIO (the io controller is not supported by nook)".into(),
            );
        }
        if res
            .hugepage_limits()
            .as_ref()
            .is_some_and(|h| !h.is_empty())
        {
            missing.push("linux.resources.hugepageLimits (not supported by nook)".into());
        }
        Ok(missing)
    }

    /// Freezes or thaws every process of the container and waits until the kernel says it is
    /// done (`cgroup.events`: `frozen 1` or `0`).
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let file = self.dir.join("cgroup.freeze");
        fs::write(&file, if frozen { "1" } else { "0" })
            .with_context(|| format!("writing {}", file.display()))?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = fs::read_to_string(self.dir.join("cgroup.events")).unwrap_or_default();
            if events.lines().any(|l| l == want) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the cgroup {} did not reach `{want}` within 10 s",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Whether the freezer holds the container.
    pub fn is_frozen(&self) -> bool {
        fs::read_to_string(self.dir.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
    }

    /// Removes the cgroup once its processes are gone; ones left behind (a container's
    /// daemonised children) are killed first, by `cgroup.kill` where the kernel has it.
    pub fn remove(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut killed = false;
        loop {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    if !killed {
                        killed = true;
                        let _ = self.freeze(false);
                        if fs::write(self.dir.join("cgroup.kill"), "1").is_err() {
                            self.kill_listed();
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("removing the cgroup {}", self.dir.display()))
                }
            }
        }
    }

    fn kill_listed(&self) {
        let procs = fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Whether we may create a directory in `dir` or in its nearest existing ancestor below the
/// mount (so a path's missing middle directories can be made).
fn writable_ancestor(dir: &Path, mount: &Path) -> bool {
    let mut dir = dir;
    loop {
        if dir.exists() {
            return delegated(dir);
        }
        match dir.parent() {
            Some(parent) if parent.starts_with(mount) => dir = parent,
            _ => return false,
        }
    }
}

fn max_or(value: i64) -> String {
    if value < 0 {
        "max".into()
    } else {
        value.to_string()
    }
}

/// cgroup v1 shares (2..262144) to v2 weight (1..10000), the conversion runc and crun use.
fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_paths_land_under_the_mount() {
        assert_eq!(spec_relative("/a/b", "/own"), "/a/b");
        assert_eq!(spec_relative("b", "/own"), "/own/b");
        assert_eq!(spec_relative("b", "/"), "/b");
        assert_eq!(
            spec_relative("machine.slice:libpod:abc", "/"),
            "/machine.slice/libpod-abc.scope"
        );
        assert_eq!(
            spec_relative(":nook:abc", "/"),
            "/nook.slice/nook-abc.scope"
        );
    }

    #[test]
    fn shares_convert_as_runc_does() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
    }
}
