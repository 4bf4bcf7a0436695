//! OCI runtime state: one directory per container under `--root`, holding the record of the
//! container, a copy of its spec, the exec fifo and the waiting fifo while it waits for `start`, and
//! a lock file.
//!
//! Every command that reads or changes a container holds its lock (a POSIX record lock, which a
//! forked child does not inherit, so the container's process never keeps it held).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::fcntl::FcntlArg;
use oci_spec::runtime::{ContainerState, Spec};
use serde::{Deserialize, Serialize};

use crate::fsutil::{create_private_dir, remove_tree, write_atomic};

/// `--root` when none is given: `$XDG_RUNTIME_DIR/nook`, else `/tmp/nook-UID` (mode 0700, and
/// it must be ours: a directory someone else made there is refused).
pub fn default_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("nook"));
    }
    let uid = nix::unistd::getuid().as_raw();
    let dir = std::env::temp_dir().join(format!("nook-{uid}"));
    create_private_dir(&dir)?;
    let meta = fs::symlink_metadata(&dir).with_context(|| format!("reading {}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        bail!(
            "{} is not a private directory of uid {uid}; remove it, or set XDG_RUNTIME_DIR or \
             --root",
            dir.display()
        );
    }
    Ok(dir)
}

/// Container ids as runc accepts them: letters, digits, `_ + - .`, not `.` or `..`.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if !ok {
        bail!("invalid container id {id:?}: use letters, digits, '_', '+', '-' and '.'");
    }
    Ok(())
}

/// What `create` records about a container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// Host pid of the container's first process.
    pub pid: i32,
    /// Its start time in clock ticks since boot, so a reused pid is not mistaken for it.
    pub pid_start: u64,
    pub bundle: PathBuf,
    pub created: String,
    pub annotations: Option<HashMap<String, String>>,
    /// The container's cgroup v2 directory, where nook could make one (see `crate::cgroup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
}

/// The state directory of all containers (`--root`).
pub struct StateRoot {
    dir: PathBuf,
}

/// One container's state directory, locked for as long as this lives.
pub struct Entry {
    pub id: String,
    pub dir: PathBuf,
    _lock: fs::File,
}

impl StateRoot {
    pub fn open(dir: &Path) -> Result<StateRoot> {
        create_private_dir(dir)?;
        let root = StateRoot {
            dir: dir.to_path_buf(),
        };
        root.remove_abandoned_claims();
        Ok(root)
    }

    /// Removes the hidden claims of `create`s that were killed before renaming them into
    /// place (their creator's pid is in the name).
    fn remove_abandoned_claims(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let creator = name
                .strip_prefix(".creating-")
                .and_then(|rest| rest.rsplit_once('-'))
                .and_then(|(_, pid)| pid.parse::<i32>().ok());
            if creator.is_some_and(|pid| fs::metadata(format!("/proc/{pid}")).is_err()) {
                let _ = remove_tree(&entry.path());
            }
        }
    }

    /// Claims the state directory of a new container. The directory is made under a hidden
    /// name with its lock already held, then renamed into place: whoever finds it there can
    /// trust that a free lock and no record mean its creator died (it is then cleaned up and
    /// claimed).
    pub fn create(&self, id: &str) -> Result<Entry> {
        validate_id(id)?;
        let dir = self.dir.join(id);
        let tmp = self
            .dir
            .join(format!(".creating-{id}-{}", std::process::id()));
        let _ = remove_tree(&tmp);
        fs::DirBuilder::new()
            .mode_private()
            .create(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let mut entry = match Entry::lock(id, tmp.clone()) {
            Ok(entry) => entry,
            Err(e) => {
                let _ = remove_tree(&tmp);
                return Err(e);
            }
        };
        for _ in 0..3 {
            match fs::rename(&tmp, &dir) {
                Ok(()) => {
                    entry.dir = dir;
                    return Ok(entry);
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
                    // Waits while its creator holds the lock.
                    let stale = Entry::lock(id, dir.clone())
                        .ok()
                        .filter(|other| other.record().is_err());
                    match stale {
                        Some(other) => other.remove()?,
                        None => {
                            let _ = remove_tree(&tmp);
                            bail!(
                                "container {id} already exists (state in {}); delete it first",
                                dir.display()
                            );
                        }
                    }
                }
                Err(e) => {
                    let _ = remove_tree(&tmp);
                    return Err(e).with_context(|| format!("creating {}", dir.display()));
                }
            }
        }
        let _ = remove_tree(&tmp);
        bail!("container {id} is being created by another nook process")
    }

    /// The container `id`, locked.
    pub fn get(&self, id: &str) -> Result<Entry> {
        validate_id(id)?;
        let dir = self.dir.join(id);
        if !dir.is_dir() {
            bail!(
                "container {id} does not exist (no state in {}; see `nook --root {} list`)",
                dir.display(),
                self.dir.display()
            );
        }
        Entry::lock(id, dir)
    }

    /// The container `id`, or `None` when it does not exist (any more: one that another nook
    /// deleted while we waited for its lock is gone too).
    pub fn find(&self, id: &str) -> Result<Option<Entry>> {
        validate_id(id)?;
        let dir = self.dir.join(id);
        if !dir.is_dir() {
            return Ok(None);
        }
        match Entry::lock(id, dir.clone()) {
            Ok(entry) if entry.dir.join("lock").exists() => Ok(Some(entry)),
            Ok(_) => Ok(None),
            Err(_) if !dir.is_dir() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The ids of every container, sorted.
    pub fn ids(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in
            fs::read_dir(&self.dir).with_context(|| format!("reading {}", self.dir.display()))?
        {
            let name = entry?.file_name().to_string_lossy().into_owned();
            // Hidden: claims still being made.
            if !name.starts_with('.') && validate_id(&name).is_ok() {
                ids.push(name);
            }
        }
        ids.sort();
        Ok(ids)
    }
}

trait PrivateDir {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateDir for fs::DirBuilder {
    fn mode_private(&mut self) -> &mut Self {
        use std::os::unix::fs::DirBuilderExt;
        self.mode(0o700)
    }
}

impl Entry {
    fn lock(id: &str, dir: PathBuf) -> Result<Entry> {
        let path = dir.join("lock");
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .with_context(|| format!("opening the lock {}", path.display()))?;
        let lock = libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        loop {
            match nix::fcntl::fcntl(&file, FcntlArg::F_SETLKW(&lock)) {
                Ok(_) => break,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e).with_context(|| format!("locking {}", path.display())),
            }
        }
        Ok(Entry {
            id: id.to_string(),
            dir,
            _lock: file,
        })
    }

    fn record_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The container's spec as `create` saw it (root path made absolute).
    pub fn spec_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// The exec fifo: present from `create` until `start`.
    pub fn fifo_path(&self) -> PathBuf {
        self.dir.join("exec.fifo")
    }

    pub fn record(&self) -> Result<Record> {
        let path = self.record_path();
        let data = fs::read(&path).with_context(|| {
            format!(
                "container {} has no state record ({}): its create did not finish",
                self.id,
                path.display()
            )
        })?;
        serde_json::from_slice(&data).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn save(&self, record: &Record) -> Result<()> {
        // Runtime state does not outlive a reboot: no fsync.
        write_atomic(
            &self.record_path(),
            &serde_json::to_vec_pretty(record)?,
            false,
        )
    }

    pub fn spec(&self) -> Result<Spec> {
        let path = self.spec_path();
        Spec::load(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// The fifo the process holds open for reading while it waits at the exec fifo.
    pub fn waiting_path(&self) -> PathBuf {
        self.dir.join("waiting.fifo")
    }

    /// created while the process waits at the exec fifo, running once it passed, stopped once
    /// it is gone (or a zombie).
    pub fn status(&self, record: &Record) -> ContainerState {
        if !process_alive(record.pid, record.pid_start) {
            ContainerState::Stopped
        } else if self.fifo_path().exists() && self.waits_at_gate() {
            ContainerState::Created
        } else {
            ContainerState::Running
        }
    }

    /// Whether the cgroup freezer holds the container (`pause`). The runtime spec's states have
    /// no `paused`; runc and crun report it as the status all the same, and engines expect it.
    pub fn paused(&self, record: &Record) -> bool {
        record
            .cgroup
            .as_ref()
            .is_some_and(|dir| crate::cgroup::Cgroup { dir: dir.clone() }.is_frozen())
    }

    /// Whether the process still holds the waiting fifo open: opening it for writing without
    /// blocking succeeds only while it has a reader. The exec fifo alone cannot tell: a `start`
    /// killed after opening it (so the process went on) leaves it in place.
    pub fn waits_at_gate(&self) -> bool {
        match nix::fcntl::open(
            &self.waiting_path(),
            nix::fcntl::OFlag::O_WRONLY
                | nix::fcntl::OFlag::O_NONBLOCK
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) {
            Ok(_) => true,
            // Created by a nook without the waiting fifo.
            Err(nix::Error::ENOENT) => true,
            Err(_) => false,
        }
    }

    /// Removes the state directory (the lock goes with it).
    pub fn remove(self) -> Result<()> {
        remove_tree(&self.dir)
    }
}

/// Whether process `pid`, started at `start` (clock ticks since boot), still runs: exists, is
/// the same process, and is not a zombie waiting to be reaped.
pub fn process_alive(pid: i32, start: u64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let state = fields.first().copied().unwrap_or("");
    let started = fields.get(19).and_then(|s| s.parse::<u64>().ok());
    state != "Z" && state != "X" && started == Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nook-oci-{name}-{}", std::process::id()));
        let _ = remove_tree(&dir);
        dir
    }

    #[test]
    fn ids_are_validated_like_runc() {
        assert!(validate_id("abc-1.2_x+y").is_ok());
        assert!(validate_id(&"f".repeat(64)).is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "x\n"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn create_claims_once_and_stale_claims_are_taken_over() {
        let root = StateRoot::open(&scratch("claim")).unwrap();
        let entry = root.create("c1").unwrap();
        entry
            .save(&Record {
                id: "c1".into(),
                pid: std::process::id() as i32,
                pid_start: 0,
                bundle: "/b".into(),
                created: "now".into(),
                annotations: None,
                cgroup: None,
            })
            .unwrap();
        drop(entry);
        let err = root.create("c1").err().unwrap();
        assert!(err.to_string().contains("already exists"), "{err}");
        // A claim without a record whose creator is gone.
        fs::create_dir(root.dir.join("c2")).unwrap();
        root.create("c2").unwrap().remove().unwrap();
        assert_eq!(root.ids().unwrap(), vec!["c1"]);
        let entry = root.get("c1").unwrap();
        assert_eq!(
            entry.status(&entry.record().unwrap()),
            ContainerState::Stopped
        );
        entry.remove().unwrap();
        assert!(root.get("c1").is_err());
        remove_tree(&root.dir).unwrap();
    }

    #[test]
    fn this_process_is_alive_only_with_its_start_time() {
        let me = std::process::id() as i32;
        let start = crate::storage::container::process_start_time(me).unwrap();
        assert!(process_alive(me, start));
        assert!(!process_alive(me, start + 1));
        assert!(!process_alive(i32::MAX, start));
    }
}
