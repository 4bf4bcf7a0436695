//! The container store: one directory per container under `<storage>/containers/<id>/`, names
//! claimed atomically under `<storage>/names/`, metadata and run state as JSON files.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil::{create_private_dir, remove_tree, write_atomic};
use crate::idmap::{IdMapping, MapWriter};
use crate::launch::run_in_userns;

/// Where nook keeps images and containers: `$NOOK_STORAGE`, else `$XDG_DATA_HOME/nook`, else
/// `~/.local/share/nook`.
pub fn storage_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("NOOK_STORAGE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("nook"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/nook")),
        None => bail!("no storage directory: set NOOK_STORAGE or HOME"),
    }
}

/// Static facts about a container, written once when it is created.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    pub name: String,
    /// The image directory, absolute.
    pub image: PathBuf,
    /// The image's name as `run` was given it (`None` for a directory): what `ps` shows while
    /// that name still names the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    pub created: String,
    pub backend: String,
    pub backend_reason: String,
    /// Whether root's calls are emulated in the container, and why (see
    /// `security::root_emulation`).
    #[serde(default)]
    pub root_emulation: bool,
    #[serde(default)]
    pub root_emulation_reason: String,
    pub command: Vec<String>,
    pub auto_remove: bool,
    /// The id mapping the container runs with: its upper layer's owners follow it.
    #[serde(default)]
    pub idmap: Option<IdMapping>,
    /// The nook process that created the container, with its start time: while it lives, a
    /// container without state is being set up, not abandoned.
    #[serde(default)]
    pub creator_pid: Option<i32>,
    #[serde(default)]
    pub creator_start: Option<u64>,
    /// A private network: its helper, why, and the published ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkMeta>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkMeta {
    pub helper: crate::net::Helper,
    pub reason: String,
    pub ports: Vec<String>,
}

impl Meta {
    pub fn creator_alive(&self) -> bool {
        match (self.creator_pid, self.creator_start) {
            (Some(pid), Some(start)) => process_start_time(pid) == Some(start),
            _ => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
}

/// What the container is doing, rewritten at each change.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub status: Option<Status>,
    /// Host pid of the container's first process.
    pub pid: Option<i32>,
    /// The nook process that waits for the container (the foreground `run` or a detached
    /// monitor), with its start time so a reused pid is not mistaken for it.
    pub runner_pid: Option<i32>,
    pub runner_start: Option<u64>,
    pub exit_code: Option<i32>,
    pub started: Option<String>,
    pub finished: Option<String>,
}

impl State {
    /// The status as it really is: a container whose runner died without recording an exit is
    /// reported as exited, with no code.
    pub fn effective_status(&self) -> Status {
        match self.status {
            Some(Status::Running) => match (self.runner_pid, self.runner_start) {
                (Some(pid), Some(start)) if process_start_time(pid) == Some(start) => {
                    Status::Running
                }
                _ => Status::Exited,
            },
            Some(status) => status,
            None => Status::Created,
        }
    }
}

/// The start time of process `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`);
/// `None` once it has exited, even while it waits as a zombie for its parent to reap it.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past its last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

pub struct Container {
    pub dir: PathBuf,
    pub meta: Meta,
}

impl Container {
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    /// The copy backend's private copy of the image.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }
    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn state(&self) -> State {
        fs::read(self.state_path())
            .ok()
            .and_then(|data| serde_json::from_slice(&data).ok())
            .unwrap_or_default()
    }

    /// A `--rm` container whose nook process died before removing it: nobody will.
    fn is_abandoned(&self) -> bool {
        if !self.meta.auto_remove {
            return false;
        }
        let state = self.state();
        match state.status {
            None | Some(Status::Created) => !self.meta.creator_alive(),
            Some(_) => state.effective_status() != Status::Running,
        }
    }

    pub fn save_state(&self, state: &State) -> Result<()> {
        // Not fsynced: a state lost in a crash is recomputed from the runner's pid.
        write_atomic(&self.state_path(), &serde_json::to_vec(state)?, false)
    }
}

/// What `create` needs to know about a new container.
pub struct NewContainer<'a> {
    pub name: Option<&'a str>,
    pub image: &'a Path,
    pub image_name: Option<&'a str>,
    pub backend: &'a str,
    pub backend_reason: &'a str,
    pub root_emulation: &'a crate::security::root_emulation::Verdict,
    pub command: &'a [String],
    pub auto_remove: bool,
    pub idmap: &'a IdMapping,
}

pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn open() -> Result<Store> {
        Self::at(storage_root()?)
    }

    pub fn at(root: PathBuf) -> Result<Store> {
        let store = Store { root };
        for dir in [store.containers_dir(), store.names_dir()] {
            create_private_dir(&dir).map_err(|e| store_unwritable(&store.root, e))?;
        }
        Ok(store)
    }

    /// The store for the verbs that only read it (`ps`, `inspect`, finding a container): it
    /// creates nothing, so they work on a read-only store, and one never made is empty.
    pub fn open_read() -> Result<Store> {
        Ok(Store {
            root: storage_root()?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    fn names_dir(&self) -> PathBuf {
        self.root.join("names")
    }

    /// Creates the container's directory and claims its name. Two concurrent creates of the same
    /// name: exactly one wins, because the claim is a single `symlink(2)`.
    pub fn create(&self, new: NewContainer<'_>) -> Result<Container> {
        let container = self.plan(new)?;
        self.materialize(&container)?;
        Ok(container)
    }

    /// The container `create` would make, decided but not yet on disk (but for the claim of a
    /// generated name): its id, name, directory and metadata. `run` plans first so the disk work can overlap the id-map helpers.
    pub fn plan(&self, new: NewContainer<'_>) -> Result<Container> {
        let id = random_id()?;
        let name = match new.name {
            Some(name) => {
                validate_name(name)?;
                name.to_string()
            }
            None => self.free_random_name(&id)?,
        };
        let dir = self.containers_dir().join(&id);
        let meta = Meta {
            id: id.clone(),
            name: name.clone(),
            image: new.image.to_path_buf(),
            image_name: new.image_name.map(str::to_string),
            created: now_rfc3339(),
            backend: new.backend.to_string(),
            backend_reason: new.backend_reason.to_string(),
            root_emulation: new.root_emulation.on,
            root_emulation_reason: new.root_emulation.reason.clone(),
            command: new.command.to_vec(),
            auto_remove: new.auto_remove,
            idmap: Some(new.idmap.clone()),
            creator_pid: Some(std::process::id() as i32),
            creator_start: process_start_time(std::process::id() as i32),
            network: None,
        };
        Ok(Container { dir, meta })
    }

    /// Puts a planned container on disk and claims its name; on failure nothing is left.
    pub fn materialize(&self, container: &Container) -> Result<()> {
        let (id, name) = (&container.meta.id, &container.meta.name);
        // Built under a temporary name and renamed into place, so a create cut short leaves
        // nothing that looks like a container, only a `.creating-` directory the next listing
        // removes once its creator is gone.
        let staging = self.staging_dir(id);
        let made = (|| -> Result<()> {
            create_private_dir(&staging).map_err(|e| store_unwritable(&self.root, e))?;
            // The copy backend's `rootfs/` is made by the copy itself.
            let layers: &[&str] = if container.meta.backend == "copy" {
                &[]
            } else {
                &["upper", "work"]
            };
            for sub in layers {
                let path = staging.join(sub);
                fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
            }
            // A container removed on exit needs no crash-safe metadata.
            write_atomic(
                &staging.join("meta.json"),
                &serde_json::to_vec_pretty(&container.meta)?,
                !container.meta.auto_remove,
            )?;
            fs::rename(&staging, &container.dir)
                .with_context(|| format!("moving {} into place", staging.display()))
        })();
        if made.is_err() {
            let _ = remove_tree(&staging);
        }
        // The name is claimed last, so whoever finds a claim finds the container behind it.
        if let Err(e) = made.and_then(|()| self.claim_name(name, id)) {
            let _ = self.remove(container);
            return Err(e);
        }
        Ok(())
    }

    /// A podman-style `adjective_noun`, claimed for `id` at once: two containers planned at
    /// the same moment never draw the same one (the claim is one `symlink(2)`). After a run of
    /// taken ones, one with a few characters of the id added, claimed with the container.
    fn free_random_name(&self, id: &str) -> Result<String> {
        // The staging directory exists before the claim: a claim whose container is neither
        // staged nor in place is then known to be stale (its planner was killed), and
        // [`Store::list`] drops it.
        create_private_dir(&self.staging_dir(id)).map_err(|e| store_unwritable(&self.root, e))?;
        for _ in 0..32 {
            let name = super::names::random_name()?;
            let link = self.names_dir().join(&name);
            match std::os::unix::fs::symlink(id, &link) {
                Ok(()) => return Ok(name),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("claiming name at {}", link.display()))
                }
            }
        }
        Ok(format!("{}_{}", super::names::random_name()?, &id[..6]))
    }

    /// Where this process builds container `id` before renaming it into place.
    fn staging_dir(&self, id: &str) -> PathBuf {
        self.containers_dir()
            .join(format!(".creating-{}-{id}", std::process::id()))
    }

    /// Removes name claims whose container is neither in place, staged nor being removed: what a
    /// planner killed between drawing a name and building its container leaves. The claims are
    /// read before the containers, and a planner stages before it claims, so a live one's
    /// staging directory is always seen.
    fn drop_dangling_claims(&self) {
        let Ok(claims) = fs::read_dir(self.names_dir()) else {
            return;
        };
        let claims: Vec<(PathBuf, String)> = claims
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let id = fs::read_link(e.path()).ok()?;
                Some((e.path(), id.to_string_lossy().into_owned()))
            })
            .collect();
        if claims.is_empty() {
            return;
        }
        let Ok(entries) = fs::read_dir(self.containers_dir()) else {
            return;
        };
        let present: std::collections::HashSet<String> = entries
            .flatten()
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_prefix(".removing-") {
                    id.to_string()
                } else if let Some(rest) = name.strip_prefix(".creating-") {
                    rest.split_once('-').map_or(rest, |(_, id)| id).to_string()
                } else {
                    name
                }
            })
            .collect();
        for (link, id) in claims {
            if !present.contains(&id) {
                let _ = fs::remove_file(link);
            }
        }
    }

    fn claim_name(&self, name: &str, id: &str) -> Result<()> {
        let link = self.names_dir().join(name);
        let claim = || std::os::unix::fs::symlink(id, &link);
        match claim() {
            Ok(()) => return Ok(()),
            // Claimed already by `plan` (a generated name).
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists
                    && fs::read_link(&link).is_ok_and(|owner| owner == Path::new(id)) =>
            {
                return Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(e).with_context(|| format!("claiming name at {}", link.display()))
            }
        }
        // Taken, perhaps by a container that no longer exists or was abandoned: decide under a
        // lock, so two processes never both take over the same stale claim.
        let lock_file = fs::File::create(self.names_dir().join(".lock"))
            .with_context(|| format!("locking {}", self.names_dir().display()))?;
        let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .context("flock on the names directory")?;
        let owner = fs::read_link(&link)
            .ok()
            .and_then(|owner| self.load(&self.containers_dir().join(owner)).ok());
        match owner {
            Some(owner) if !owner.is_abandoned() => bail!(
                "the container name {name:?} is already in use; remove that container with \
                 `nook rm {name}` or choose another --name"
            ),
            Some(owner) => self.remove(&owner)?,
            None => {}
        }
        let _ = fs::remove_file(&link);
        claim().with_context(|| format!("claiming name at {}", link.display()))
    }

    /// Finds a container by name, full id or unique id prefix.
    pub fn get(&self, name_or_id: &str) -> Result<Container> {
        if validate_name(name_or_id).is_ok() {
            if let Ok(id) = fs::read_link(self.names_dir().join(name_or_id)) {
                if let Ok(c) = self.load(&self.containers_dir().join(id)) {
                    return Ok(c);
                }
            }
        }
        let matches: Vec<Container> = self
            .list()?
            .into_iter()
            .filter(|c| c.meta.id.starts_with(name_or_id) && name_or_id.len() >= 4)
            .collect();
        match matches.len() {
            1 => Ok(matches.into_iter().next().expect("one match")),
            0 => bail!("no such container: {name_or_id} (see `nook ps`)"),
            _ => bail!("{name_or_id} matches several containers: give more of the id"),
        }
    }

    fn load(&self, dir: &Path) -> Result<Container> {
        let path = dir.join("meta.json");
        let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let meta: Meta =
            serde_json::from_slice(&data).with_context(|| format!("parsing {}", path.display()))?;
        Ok(Container {
            dir: dir.to_path_buf(),
            meta,
        })
    }

    /// Every container, oldest first. What crashed nook processes left behind is cleaned on the
    /// way: removals cut short, and `--rm` containers whose nook process died.
    pub fn list(&self) -> Result<Vec<Container>> {
        let dir = self.containers_dir();
        let mut out = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            other => other.with_context(|| format!("reading {}", dir.display()))?,
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_prefix(".removing-") {
                self.finish_removal(&entry.path(), id);
                continue;
            }
            if let Some(rest) = name.strip_prefix(".creating-") {
                let creator = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
                if creator.is_some_and(|pid| fs::metadata(format!("/proc/{pid}")).is_err()) {
                    let _ = remove_tree(&entry.path());
                }
                continue;
            }
            if name.starts_with('.') {
                continue;
            }
            if let Ok(c) = self.load(&entry.path()) {
                if !self.owns_its_name(&c) {
                    // Still being created, or a create that crashed before claiming its name.
                    if !c.meta.creator_alive() {
                        let _ = remove_owned_tree(&c.dir, c.meta.idmap.as_ref());
                    }
                    continue;
                }
                if c.is_abandoned() {
                    let _ = self.remove(&c);
                    continue;
                }
                out.push(c);
            }
        }
        self.drop_dangling_claims();
        out.sort_by(|a, b| a.meta.created.cmp(&b.meta.created));
        Ok(out)
    }

    fn owns_its_name(&self, c: &Container) -> bool {
        fs::read_link(self.names_dir().join(&c.meta.name))
            .is_ok_and(|id| id == Path::new(&c.meta.id))
    }

    /// Completes a removal that a killed nook process left half done.
    fn finish_removal(&self, path: &Path, id: &str) {
        let idmap = self
            .load(path)
            .ok()
            .and_then(|c| c.meta.idmap)
            .unwrap_or_else(IdMapping::of_current_user);
        if remove_owned_tree(path, Some(&idmap)).is_ok() {
            // The name may still point at the removed id.
            if let Ok(names) = fs::read_dir(self.names_dir()) {
                for link in names.flatten() {
                    if fs::read_link(link.path()).is_ok_and(|target| target == Path::new(id)) {
                        let _ = fs::remove_file(link.path());
                    }
                }
            }
        }
    }

    /// Removes the container's directory, upper layer included, and releases its name.
    pub fn remove(&self, container: &Container) -> Result<()> {
        // Move it out of sight first, so a removal cut short never leaves a half container that
        // `ps` would show.
        let trash = self
            .containers_dir()
            .join(format!(".removing-{}", container.meta.id));
        let moved = match fs::rename(&container.dir, &trash) {
            Ok(()) => true,
            // Never made, or another nook process (the runner of a `--rm` container) moved it
            // first: the tree is that process's to remove.
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                let e =
                    anyhow::Error::from(e).context(format!("removing {}", container.dir.display()));
                return Err(store_unwritable(&self.root, e));
            }
        };
        let link = self.names_dir().join(&container.meta.name);
        if fs::read_link(&link).is_ok_and(|id| id == Path::new(&container.meta.id)) {
            let _ = fs::remove_file(&link);
        }
        if !moved {
            return Ok(());
        }
        remove_owned_tree(&trash, container.meta.idmap.as_ref())
    }
}

/// A store directory that cannot be made: the error names the store, and says it is read-only
/// when that is why.
pub fn store_unwritable(root: &Path, e: anyhow::Error) -> anyhow::Error {
    let read_only = e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
            .is_some_and(|code| code == libc::EROFS || code == libc::EACCES || code == libc::EPERM)
    });
    if read_only {
        e.context(format!(
            "the nook store {} is not writable (read-only, or not yours): this verb must write \
             it; set NOOK_STORAGE to a writable directory",
            root.display()
        ))
    } else {
        e.context(format!("opening the nook store {}", root.display()))
    }
}

/// Removes a tree whose files may belong to subordinate ids: from outside when it can, else
/// from inside a user namespace with the mapping that made those files.
pub fn remove_owned_tree(path: &Path, idmap: Option<&IdMapping>) -> Result<()> {
    let outside = remove_tree(path);
    match (outside, idmap) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(map)) if map.writer == MapWriter::Helpers => {
            let target = path.to_path_buf();
            run_in_userns(map, move || remove_tree(&target))
                .with_context(|| format!("removing {} inside its user namespace", path.display()))
        }
        (Err(e), _) => Err(e),
    }
}

fn random_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    crate::sys::random_bytes(&mut bytes).context("reading random bytes for a container id")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Names are what hostnames and file names can both hold.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!(
            "invalid container name {name:?}: use 1-63 letters, digits, '-', '_' or '.', starting \
             with a letter or digit"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("build1").is_ok());
        assert!(validate_name("a.b-c_d").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("..").is_err());
        assert!(validate_name(&"x".repeat(64)).is_err());
    }

    #[test]
    fn start_time_of_this_process_is_known() {
        assert!(process_start_time(std::process::id() as i32).is_some());
        assert!(process_start_time(i32::MAX).is_none());
    }

    fn scratch_store(name: &str) -> (PathBuf, Store) {
        let root = std::env::temp_dir().join(format!("nook-{name}-{}", std::process::id()));
        let _ = remove_tree(&root);
        let store = Store::at(root.clone()).unwrap();
        (root, store)
    }

    fn new_container<'a>(
        name: Option<&'a str>,
        auto_remove: bool,
        idmap: &'a IdMapping,
    ) -> NewContainer<'a> {
        static NO_EMULATION: crate::security::root_emulation::Verdict =
            crate::security::root_emulation::Verdict {
                on: false,
                reason: String::new(),
                supervision: crate::security::root_emulation::Supervision {
                    owners: false,
                    count: false,
                },
            };
        NewContainer {
            name,
            image: Path::new("/img"),
            image_name: None,
            backend: "overlay",
            backend_reason: "test",
            root_emulation: &NO_EMULATION,
            command: &[],
            auto_remove,
            idmap,
        }
    }

    #[test]
    fn store_claims_names_once_and_removes_everything() {
        let (root, store) = scratch_store("store-test");
        let idmap = IdMapping::caller_as_root(1000, 1000);
        let new = |name| new_container(name, false, &idmap);
        let c = store.create(new(Some("x"))).unwrap();
        let err = store.create(new(Some("x"))).err().unwrap();
        assert!(err.to_string().contains("already in use"), "{err}");
        assert_eq!(store.get("x").unwrap().meta.id, c.meta.id);
        assert_eq!(store.list().unwrap().len(), 1);
        store.remove(&c).unwrap();
        assert!(store.get("x").is_err());
        assert_eq!(fs::read_dir(root.join("containers")).unwrap().count(), 0);
        let claims = fs::read_dir(root.join("names"))
            .unwrap()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count();
        assert_eq!(claims, 0);
        remove_tree(&root).unwrap();
    }

    #[test]
    fn generated_names_are_claimed_when_planned_and_never_shared() {
        let (root, store) = scratch_store("names-test");
        let idmap = IdMapping::caller_as_root(1000, 1000);
        let plans: Vec<Container> = (0..300)
            .map(|_| store.plan(new_container(None, true, &idmap)).unwrap())
            .collect();
        let names: std::collections::HashSet<&str> =
            plans.iter().map(|c| c.meta.name.as_str()).collect();
        assert_eq!(names.len(), plans.len(), "a name drawn twice");
        store.materialize(&plans[0]).unwrap();
        assert_eq!(
            store.get(&plans[0].meta.name).unwrap().meta.id,
            plans[0].meta.id
        );
        for plan in &plans {
            store.remove(plan).unwrap();
        }
        let claims = fs::read_dir(root.join("names"))
            .unwrap()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count();
        assert_eq!(claims, 0);
        remove_tree(&root).unwrap();
    }

    #[test]
    fn a_planned_container_is_nothing_on_disk_until_materialized() {
        let (root, store) = scratch_store("plan-test");
        let idmap = IdMapping::caller_as_root(1000, 1000);
        let new = |name| new_container(name, true, &idmap);
        let taken = store.create(new(Some("y"))).unwrap();
        let planned = store.plan(new(Some("y"))).unwrap();
        assert!(!planned.dir.exists());
        assert_eq!(store.list().unwrap().len(), 1);
        // Removing a plan that never reached the disk (the clean-up after a failed start) must
        // not take the name from the container that holds it.
        store.remove(&planned).unwrap();
        assert_eq!(store.get("y").unwrap().meta.id, taken.meta.id);
        let err = store.materialize(&planned).err().unwrap();
        assert!(err.to_string().contains("already in use"), "{err}");
        assert!(!planned.dir.exists());
        store.remove(&taken).unwrap();
        let fresh = store.plan(new(Some("y"))).unwrap();
        store.materialize(&fresh).unwrap();
        assert!(fresh.upper().is_dir() && fresh.work().is_dir());
        assert_eq!(store.get("y").unwrap().meta.id, fresh.meta.id);
        remove_tree(&root).unwrap();
    }
}
