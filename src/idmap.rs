//! User and group id maps of the container's user namespace, and how they get written.

use std::fmt;
use std::fs;
use std::io::Write;

use anyhow::{Context, Result};
use nix::unistd::Pid;

/// `size` ids starting at `container` inside map to ids starting at `host` outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

impl IdRange {
    /// The host id that `id` inside maps to, if this range covers it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        let offset = id.checked_sub(self.container)?;
        (offset < self.size).then(|| self.host + offset)
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.container, self.host, self.size)
    }
}

/// How the parent writes the maps of the child's user namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MapWriter {
    /// Write `/proc/PID/{setgroups,uid_map,gid_map}` ourselves: only the caller's own ids can be
    /// mapped this way, and `setgroups` must be denied first.
    Direct,
}

/// The complete id mapping of one container.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdMapping {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
    pub writer: MapWriter,
}

impl IdMapping {
    /// The caller's own uid and gid as root inside, nothing else.
    pub fn caller_as_root(uid: u32, gid: u32) -> Self {
        IdMapping {
            uids: vec![IdRange {
                container: 0,
                host: uid,
                size: 1,
            }],
            gids: vec![IdRange {
                container: 0,
                host: gid,
                size: 1,
            }],
            writer: MapWriter::Direct,
        }
    }

    pub fn of_current_user() -> Self {
        Self::caller_as_root(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    }

    pub fn maps_uid(&self, uid: u32) -> bool {
        self.uids.iter().any(|r| r.to_host(uid).is_some())
    }

    pub fn maps_gid(&self, gid: u32) -> bool {
        self.gids.iter().any(|r| r.to_host(gid).is_some())
    }

    /// Whether processes inside may call `setgroups(2)`; the kernel forbids it when the maps were
    /// written without privilege.
    pub fn allows_setgroups(&self) -> bool {
        self.writer != MapWriter::Direct
    }

    /// Writes the maps for the user namespace of `pid`, which must still be waiting for them.
    pub fn write_for(&self, pid: Pid) -> Result<()> {
        match self.writer {
            MapWriter::Direct => {
                write_proc_file(pid, "setgroups", "deny")?;
                write_proc_file(pid, "uid_map", &format_map(&self.uids))?;
                write_proc_file(pid, "gid_map", &format_map(&self.gids))?;
            }
        }
        Ok(())
    }
}

fn format_map(ranges: &[IdRange]) -> String {
    ranges.iter().map(|r| format!("{r}\n")).collect()
}

fn write_proc_file(pid: Pid, name: &str, content: &str) -> Result<()> {
    let path = format!("/proc/{pid}/{name}");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {path}"))?;
    file.write_all(content.as_bytes()).with_context(|| {
        format!(
            "writing {:?} to {path}: the kernel refused the id map (are unprivileged user \
             namespaces allowed? see `sysctl user.max_user_namespaces`)",
            content.trim()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_maps_ids_inside_it_only() {
        let r = IdRange {
            container: 1,
            host: 100000,
            size: 65536,
        };
        assert_eq!(r.to_host(0), None);
        assert_eq!(r.to_host(1), Some(100000));
        assert_eq!(r.to_host(65536), Some(165535));
        assert_eq!(r.to_host(65537), None);
    }

    #[test]
    fn caller_as_root_maps_only_zero_and_denies_setgroups() {
        let m = IdMapping::caller_as_root(1000, 1001);
        assert!(m.maps_uid(0));
        assert!(!m.maps_uid(1));
        assert!(m.maps_gid(0));
        assert!(!m.allows_setgroups());
        assert_eq!(format_map(&m.uids), "0 1000 1\n");
        assert_eq!(format_map(&m.gids), "0 1001 1\n");
    }
}
