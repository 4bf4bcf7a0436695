//! Which backend makes a container's writable root, and why.
//!
//! `auto` probes overlay → fuse → copy with real trial mounts on the storage filesystem (a
//! kernel version proves nothing), after ruling out by `statfs` the filesystems that cannot hold
//! an overlay upper layer. The verdict is cached per storage filesystem in
//! `<storage>/backend-probe.json`, keyed by device, filesystem type, kernel release and whether
//! fuse-overlayfs is usable, so a change to any of them probes again.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{copy, fuse};
use crate::fsutil::{remove_tree, write_atomic};
use crate::idmap::IdMapping;
use crate::launch::run_in_userns;
use crate::{rootfs, sys};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Overlay,
    Fuse,
    Copy,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Overlay => "overlay",
            Backend::Fuse => "fuse",
            Backend::Copy => "copy",
        }
    }

    pub fn parse(text: &str) -> Option<Backend> {
        match text {
            "overlay" => Some(Backend::Overlay),
            "fuse" => Some(Backend::Fuse),
            "copy" => Some(Backend::Copy),
            _ => None,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Auto,
    Forced(Backend),
}

/// The backend a container gets and the reason, as recorded in its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub backend: Backend,
    pub reason: String,
}

/// A storage filesystem as `statfs` and `stat` see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageFs {
    pub path: PathBuf,
    pub dev: u64,
    pub magic: i64,
}

impl StorageFs {
    pub fn of(path: &Path) -> Result<StorageFs> {
        let meta = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
        let stat =
            nix::sys::statfs::statfs(path).with_context(|| format!("statfs {}", path.display()))?;
        Ok(StorageFs {
            path: path.to_path_buf(),
            dev: meta.dev(),
            magic: stat.filesystem_type().0,
        })
    }

    pub fn type_name(&self) -> String {
        fs_type_name(self.magic)
    }

    /// Why this filesystem cannot hold an overlay upper layer, if `statfs` already tells.
    pub fn refuses_overlay_upper(&self) -> Option<String> {
        NO_UPPER.contains(&self.magic).then(|| {
            format!(
                "the storage {} is on {}, which cannot hold an overlay upper layer",
                self.path.display(),
                self.type_name()
            )
        })
    }
}

const BTRFS: i64 = 0x9123_683e;
const BCACHEFS: i64 = 0xca45_1a4e;
const NFS: i64 = 0x6969;
const OVERLAYFS: i64 = 0x794c_7630;
const SMB: i64 = 0x517b;
const CIFS: i64 = 0xff53_4d42_u32 as i64;
const SMB2: i64 = 0xfe53_4d42_u32 as i64;
const CEPH: i64 = 0x00c3_6400;
const AFS: i64 = 0x5346_414f;
const V9FS: i64 = 0x0102_1997;
const ECRYPTFS: i64 = 0xf15f;
const SQUASHFS: i64 = 0x7371_7368;
/// Filesystems an overlay upper layer cannot live on (network, FUSE, stacked, read-only ones).
const NO_UPPER: [i64; 11] = [
    NFS,
    fuse::FUSE_SUPER_MAGIC,
    OVERLAYFS,
    SMB,
    CIFS,
    SMB2,
    CEPH,
    AFS,
    V9FS,
    ECRYPTFS,
    SQUASHFS,
];

/// A readable name for a `statfs` filesystem type.
pub fn fs_type_name(magic: i64) -> String {
    let name = match magic {
        0xef53 => "ext4",
        0x5846_5342 => "xfs",
        BTRFS => "btrfs",
        BCACHEFS => "bcachefs",
        0x0102_1994 => "tmpfs",
        0x2fc1_2fc1 => "zfs",
        0x6165_6673 => "f2fs",
        NFS => "nfs",
        f if f == fuse::FUSE_SUPER_MAGIC => "fuse",
        OVERLAYFS => "overlayfs",
        SMB | CIFS | SMB2 => "smb/cifs",
        CEPH => "ceph",
        AFS => "afs",
        V9FS => "9p",
        ECRYPTFS => "ecryptfs",
        SQUASHFS => "squashfs",
        _ => return format!("filesystem type {magic:#x}"),
    };
    name.to_string()
}

/// Decides the backend of a new container whose layers live in `storage` (a directory on the
/// storage filesystem nook may create probe directories in).
pub fn decide(choice: Choice, storage: &Path, mapping: &IdMapping) -> Result<Decision> {
    let fs = StorageFs::of(storage)?;
    match choice {
        Choice::Forced(backend) => {
            check_forced(backend, &fs)?;
            Ok(Decision {
                backend,
                reason: format!("requested with --backend {backend} (or the config file)"),
            })
        }
        Choice::Auto => auto(&fs, mapping),
    }
}

/// A forced backend that cannot work fails now, saying why and what to do.
fn check_forced(backend: Backend, fs: &StorageFs) -> Result<()> {
    match backend {
        Backend::Overlay => {
            if let Some(why) = fs.refuses_overlay_upper() {
                bail!(
                    "--backend overlay cannot work here: {why}. Use --backend fuse or copy (or \
                     auto), or move the storage to a local filesystem with NOOK_STORAGE"
                );
            }
        }
        Backend::Fuse => {
            fuse::find_program().with_context(|| {
                format!(
                    "--backend fuse cannot work here: {} is not on PATH (fix: `sudo apt-get \
                     install fuse-overlayfs`, or use --backend copy)",
                    fuse::PROGRAM
                )
            })?;
            fuse::check_device().context("--backend fuse cannot work here")?;
        }
        Backend::Copy => {}
    }
    Ok(())
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ProbeCache {
    entries: BTreeMap<String, Decision>,
}

fn cache_path(storage: &Path) -> PathBuf {
    storage.join("backend-probe.json")
}

fn fuse_usable() -> bool {
    fuse::find_program().is_some() && fuse::check_device().is_ok()
}

fn cache_key(fs: &StorageFs) -> String {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(
        "dev={} fs={:#x} kernel={} fuse={}",
        fs.dev,
        fs.magic,
        release,
        if fuse_usable() { "yes" } else { "no" }
    )
}

/// The auto verdict for `fs`: from the cache if this filesystem was probed in the same
/// conditions, else probed now and cached.
pub fn auto(fs: &StorageFs, mapping: &IdMapping) -> Result<Decision> {
    let key = cache_key(fs);
    let path = cache_path(&fs.path);
    let mut cache: ProbeCache = fs::read(&path)
        .ok()
        .and_then(|data| serde_json::from_slice(&data).ok())
        .unwrap_or_default();
    if let Some(hit) = cache.entries.get(&key) {
        return Ok(hit.clone());
    }
    let decision = probe(fs, mapping)?;
    cache.entries.insert(key, decision.clone());
    // Not fsynced: a cache lost in a crash is probed again.
    write_atomic(&path, &serde_json::to_vec_pretty(&cache)?, false)
        .context("caching the backend probe")?;
    Ok(decision)
}

/// Trial mounts, in order: native overlayfs, then fuse-overlayfs; else copy.
pub fn probe(fs: &StorageFs, mapping: &IdMapping) -> Result<Decision> {
    let overlay = match fs.refuses_overlay_upper() {
        Some(why) => Err(why),
        None => trial(fs, mapping, Backend::Overlay).map_err(|e| {
            format!(
                "overlayfs could not be mounted in a user namespace with its upper layer on {} \
                 ({}): {e:#}",
                fs.path.display(),
                fs.type_name()
            )
        }),
    };
    let overlay_failed = match overlay {
        Ok(()) => {
            return Ok(Decision {
                backend: Backend::Overlay,
                reason: format!(
                    "auto: a trial overlayfs mount in a user namespace worked on {} ({})",
                    fs.path.display(),
                    fs.type_name()
                ),
            })
        }
        Err(why) => why,
    };
    let fuse = match (fuse::find_program(), fuse::check_device()) {
        (None, _) => Err(format!("{} is not on PATH", fuse::PROGRAM)),
        (_, Err(e)) => Err(format!("{e:#}")),
        (Some(_), Ok(())) => trial(fs, mapping, Backend::Fuse)
            .map_err(|e| format!("a trial fuse-overlayfs mount failed: {e:#}")),
    };
    let fuse_failed = match fuse {
        Ok(()) => {
            return Ok(Decision {
                backend: Backend::Fuse,
                reason: format!("auto: {overlay_failed}; a trial fuse-overlayfs mount worked"),
            })
        }
        Err(why) => why,
    };
    let how = if trial(fs, mapping, Backend::Copy).is_ok() {
        "with reflinks"
    } else {
        "without reflinks (plain copies)"
    };
    Ok(Decision {
        backend: Backend::Copy,
        reason: format!(
            "auto: {overlay_failed}; fuse unusable: {fuse_failed}; a private copy of the image \
             per container, {how}"
        ),
    })
}

/// One trial in a scratch directory on the storage filesystem, inside a user namespace: mount,
/// write through the mount, check the write landed in the upper layer. For copy: whether a
/// reflink works there.
fn trial(fs: &StorageFs, mapping: &IdMapping, backend: Backend) -> Result<()> {
    let mut rand = [0u8; 6];
    sys::random_bytes(&mut rand).context("random bytes for a probe directory")?;
    let name: String = rand.iter().map(|b| format!("{b:02x}")).collect();
    let dir = fs.path.join(format!(".probe-{}-{name}", backend.name()));
    let result = (|| -> Result<()> {
        let (lower, upper, work, merged) = (
            dir.join("lower"),
            dir.join("upper"),
            dir.join("work"),
            dir.join("merged"),
        );
        for d in [&lower, &upper, &work, &merged] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        fs::write(lower.join("file"), b"probe")
            .with_context(|| format!("writing {}", lower.display()))?;
        let log = dir.join("fuse-overlayfs.log");
        run_in_userns(mapping, || match backend {
            Backend::Overlay => {
                rootfs::mount_overlay(&lower, &upper, &work, &merged, true)?;
                write_through(&merged, &upper)
            }
            Backend::Fuse => {
                let mounted = fuse::mount(&fuse::Layers {
                    lower: &lower,
                    upper: &upper,
                    work: &work,
                    target: &merged,
                    log: &log,
                })?;
                let wrote = write_through(&merged, &upper);
                mounted.unmount()?;
                wrote
            }
            Backend::Copy => {
                let summary = copy::copy_tree(&lower, &merged.join("copy"))?;
                if summary.reflinked == 0 {
                    bail!("no reflink");
                }
                Ok(())
            }
        })
    })();
    // The trial's files belong to the container's root, the caller itself: removable from here.
    if remove_tree(&dir).is_err() {
        let _ = run_in_userns(mapping, || remove_tree(&dir));
    }
    result
}

fn write_through(merged: &Path, upper: &Path) -> Result<()> {
    fs::write(merged.join("file"), b"changed")
        .with_context(|| format!("writing through the trial mount {}", merged.display()))?;
    match fs::read(upper.join("file")) {
        Ok(data) if data == b"changed" => Ok(()),
        _ => bail!("a write through the trial mount did not reach the upper layer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_and_stacked_filesystems_cannot_hold_an_upper_layer() {
        let on = |magic| StorageFs {
            path: "/s".into(),
            dev: 1,
            magic,
        };
        let why = on(NFS).refuses_overlay_upper().unwrap();
        assert!(why.contains("/s is on nfs"), "{why}");
        assert!(on(fuse::FUSE_SUPER_MAGIC)
            .refuses_overlay_upper()
            .unwrap()
            .contains("fuse"));
        assert!(on(OVERLAYFS).refuses_overlay_upper().is_some());
        assert!(on(0xef53).refuses_overlay_upper().is_none());
        assert!(on(0x0102_1994).refuses_overlay_upper().is_none());
    }

    #[test]
    fn backend_names_round_trip() {
        for b in [Backend::Overlay, Backend::Fuse, Backend::Copy] {
            assert_eq!(Backend::parse(b.name()), Some(b));
        }
        assert_eq!(Backend::parse("auto"), None);
        assert_eq!(fs_type_name(0x5846_5342), "xfs");
        assert_eq!(fs_type_name(0x1234), "filesystem type 0x1234");
    }

    #[test]
    fn forced_overlay_on_fuse_says_why_and_what_to_do() {
        let fs = StorageFs {
            path: "/mnt/fuse".into(),
            dev: 1,
            magic: fuse::FUSE_SUPER_MAGIC,
        };
        let err = check_forced(Backend::Overlay, &fs).unwrap_err().to_string();
        assert!(err.contains("/mnt/fuse is on fuse"), "{err}");
        assert!(err.contains("--backend fuse or copy"), "{err}");
        assert!(check_forced(Backend::Copy, &fs).is_ok());
    }
}
