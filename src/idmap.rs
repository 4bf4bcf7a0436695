//! User and group id maps of the container's user namespace: which mapping a container gets
//! (`--userns`), the subordinate ranges it is built from, and how the maps get written.

use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use nix::unistd::{Pid, Uid};

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

    fn container_end(&self) -> u64 {
        self.container as u64 + self.size as u64
    }

    fn host_end(&self) -> u64 {
        self.host as u64 + self.size as u64
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
    /// The setuid helpers `newuidmap`/`newgidmap` (package `uidmap`), which may map the ranges
    /// `/etc/subuid` and `/etc/subgid` grant the caller.
    Helpers,
    /// We are root with CAP_SETUID/CAP_SETGID in our own user namespace (as under a rootless
    /// podman): any mapping of ids that exist here is written directly, and `setgroups` stays
    /// allowed.
    Privileged,
}

/// The complete id mapping of one container.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdMapping {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
    pub writer: MapWriter,
}

/// `--userns`: how the container's ids relate to the caller's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsernsMode {
    /// The caller is root inside; the caller's subordinate ids are 1…N when available.
    Auto,
    /// Only the caller's own uid/gid, as root inside, even when subordinate ids exist.
    Single,
    /// The caller keeps its own uid/gid inside (root and the rest from subordinate ids).
    KeepId,
}

impl std::str::FromStr for UsernsMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(UsernsMode::Auto),
            "single" => Ok(UsernsMode::Single),
            "keep-id" => Ok(UsernsMode::KeepId),
            other => bail!("unknown --userns mode {other:?}: use auto, single or keep-id"),
        }
    }
}

/// A range of `/etc/subuid` or `/etc/subgid` granted to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubRange {
    pub start: u32,
    pub count: u32,
}

/// Parses `/etc/subuid`-style text: the ranges of the user named `name` or numbered `id`.
pub fn parse_subids(text: &str, name: Option<&str>, id: u32) -> Vec<SubRange> {
    let id = id.to_string();
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let mut fields = line.split(':');
            let owner = fields.next()?;
            let start = fields.next()?.trim().parse::<u32>().ok()?;
            let count = fields.next()?.trim().parse::<u32>().ok()?;
            if fields.next().is_some() || count == 0 || start.checked_add(count - 1).is_none() {
                return None;
            }
            (owner == id || Some(owner) == name).then_some(SubRange { start, count })
        })
        .collect()
}

/// A 65536-id range no line of the subid files `texts` gives out, as `useradd` picks one: past
/// the end of every range there, rounded up to a multiple of 65536, and at least 100000.
pub fn free_subordinate_range(texts: &[&str]) -> SubRange {
    const SIZE: u64 = 65536;
    let end = texts
        .iter()
        .flat_map(|text| text.lines())
        .filter_map(|line| {
            let mut fields = line.trim().split(':');
            let _owner = fields.next()?;
            let start = fields.next()?.trim().parse::<u64>().ok()?;
            let count = fields.next()?.trim().parse::<u64>().ok()?;
            Some(start + count)
        })
        .max()
        .unwrap_or(0);
    let start = if end <= 100_000 {
        100_000
    } else {
        end.div_ceil(SIZE) * SIZE
    };
    SubRange {
        start: u32::try_from(start).unwrap_or(u32::MAX - SIZE as u32),
        count: SIZE as u32,
    }
}

/// The `usermod` line that gives `who` a free range, from this machine's subid files.
pub fn add_range_command(who: &str) -> String {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let (uids, gids) = (read("/etc/subuid"), read("/etc/subgid"));
    let range = free_subordinate_range(&[&uids, &gids]);
    let last = range.start as u64 + range.count as u64 - 1;
    format!(
        "sudo usermod --add-subuids {start}-{last} --add-subgids {start}-{last} {who}",
        start = range.start
    )
}

/// Where nook runs, as far as it decides the container's mapping: the host's root, root only
/// inside somebody else's user namespace (a CI job's container), or an ordinary user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// uid 0 of the initial user namespace (`0 0 4294967295`) holding CAP_SYS_ADMIN.
    HostRoot,
    /// uid 0 in a user namespace that is not the initial one, or without CAP_SYS_ADMIN: root
    /// only by name, so nook makes a user namespace of its own as any rootless user does.
    NestedRoot(NestedRoot),
    /// Any other uid.
    User,
}

/// The root of an outer container's user namespace, and what it holds there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NestedRoot {
    /// The ids the current namespace maps (the first column of `/proc/self/uid_map`), as an
    /// identity: a child namespace can map exactly these.
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
    /// CAP_SETUID and CAP_SETGID, which writing a child's maps beyond one's own id takes.
    pub can_map: bool,
    pub sys_admin: bool,
    /// The user namespace is the host's (a rootful container without CAP_SYS_ADMIN).
    pub initial: bool,
}

/// The identity over the ids a `/proc/self/uid_map` text maps in this namespace.
pub fn held_ids(map: &str) -> Vec<IdRange> {
    map.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().map(|f| f.parse::<u32>().ok());
            let (inside, _outside, size) = (fields.next()??, fields.next()??, fields.next()??);
            // The initial namespace holds every id; a container of 65536 ids is what a
            // subordinate range gives, and keeps the container from mapping the host's root
            // range whole.
            let size = if size == u32::MAX { 65536 } else { size };
            Some(IdRange {
                container: inside,
                host: inside,
                size,
            })
        })
        .collect()
}

/// Whether a `/proc/self/uid_map` text is the initial user namespace's.
pub fn is_initial_map(map: &str) -> bool {
    let fields: Vec<&str> = map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

impl Standing {
    pub fn current() -> Standing {
        if !nix::unistd::getuid().is_root() {
            return Standing::User;
        }
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let uid_map = read("/proc/self/uid_map");
        let has = |cap| caps::has_cap(None, caps::CapSet::Effective, cap).unwrap_or(false);
        let sys_admin = has(caps::Capability::CAP_SYS_ADMIN);
        let initial = is_initial_map(&uid_map);
        if initial && sys_admin {
            return Standing::HostRoot;
        }
        Standing::NestedRoot(NestedRoot {
            uids: held_ids(&uid_map),
            gids: held_ids(&read("/proc/self/gid_map")),
            can_map: has(caps::Capability::CAP_SETUID) && has(caps::Capability::CAP_SETGID),
            sys_admin,
            initial,
        })
    }

    /// One line for `nook info` and notes.
    pub fn describe(&self) -> String {
        match self {
            Standing::HostRoot => "root of the host (the initial user namespace)".into(),
            Standing::User => "an unprivileged user".into(),
            Standing::NestedRoot(n) => {
                let total: u64 = n.uids.iter().map(|r| r.size as u64).sum();
                let place = if n.initial {
                    "root of the host's user namespace without CAP_SYS_ADMIN (a container's root)"
                } else {
                    "root of a user namespace nested in the host's (a container's root)"
                };
                format!("{place}, holding {total} uid(s)")
            }
        }
    }
}

/// Where root's containers get their ids 1…65536 on the host when /etc/subuid and /etc/subgid
/// give root no range: above every range `useradd` hands out by default (`SUB_UID_MAX` of
/// login.defs is 600100000) and past the ranges systemd gives containers (they end at
/// 1879048191), below 2^31 for tools that keep ids in a signed 32-bit integer.
pub const ROOT_RANGE_START: u32 = 0x7000_0000;

/// The ids root's containers use above root itself, as the texts of /etc/subuid and
/// /etc/subgid leave them: [`ROOT_RANGE_START`] and 65536 ids on, moved past any line that
/// overlaps it (one given to a user must never also be root's containers').
pub fn root_default_range(texts: &[&str]) -> SubRange {
    const SIZE: u64 = 65536;
    let taken: Vec<(u64, u64)> = texts
        .iter()
        .flat_map(|text| text.lines())
        .filter_map(|line| {
            let mut fields = line.trim().split(':');
            let _owner = fields.next()?;
            let start = fields.next()?.trim().parse::<u64>().ok()?;
            let count = fields.next()?.trim().parse::<u64>().ok()?;
            Some((start, start + count))
        })
        .collect();
    let mut start = ROOT_RANGE_START as u64;
    while let Some(&(_, end)) = taken.iter().find(|&&(s, e)| s < start + SIZE && start < e) {
        start = end.div_ceil(SIZE) * SIZE;
    }
    SubRange {
        start: u32::try_from(start).unwrap_or(u32::MAX - SIZE as u32),
        count: SIZE as u32,
    }
}

/// The ranges root's containers get above root (uids, gids): root's own lines of /etc/subuid
/// and /etc/subgid when both have one, else [`root_default_range`]. (Root of a nested user
/// namespace is not the host's root: see [`Standing`].)
fn root_ranges(subuid: &str, subgid: &str) -> RootRanges {
    let own = |text| parse_subids(text, Some("root"), 0);
    let (uids, gids) = (own(subuid), own(subgid));
    if !uids.is_empty() && !gids.is_empty() {
        return (uids, gids, "root's lines of /etc/subuid and /etc/subgid");
    }
    let range = root_default_range(&[subuid, subgid]);
    (
        vec![range],
        vec![range],
        "nook's range for root: root has no line in /etc/subuid and /etc/subgid, and no user's \
         line overlaps it",
    )
}

/// Root's uid ranges, gid ranges, and where they come from.
type RootRanges = (Vec<SubRange>, Vec<SubRange>, &'static str);

/// Everything about the caller that decides its mappings, read once.
#[derive(Clone, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub name: Option<String>,
    pub home: Option<PathBuf>,
    pub subuids: Vec<SubRange>,
    pub subgids: Vec<SubRange>,
    /// Why the helpers cannot be used, if they cannot.
    pub helpers_unusable: Option<String>,
    pub standing: Standing,
    /// The host's root, who writes any map itself: its ranges are those of [`root_ranges`], no
    /// helper runs.
    pub privileged: bool,
    /// Where root's ranges come from, for `nook info`.
    pub ranges_origin: &'static str,
}

impl Caller {
    pub fn current() -> Caller {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let user = nix::unistd::User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten();
        let name = user.as_ref().map(|u| u.name.clone());
        let home = user.map(|u| u.dir);
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let (subuid, subgid) = (read("/etc/subuid"), read("/etc/subgid"));
        let standing = Standing::current();
        // Root only inside somebody else's user namespace maps what that namespace holds
        // (`IdMapping::for_mode`); the host's root writes a full range of its own.
        if standing == Standing::HostRoot {
            let (subuids, subgids, ranges_origin) = root_ranges(&subuid, &subgid);
            return Caller {
                uid,
                gid,
                name,
                home,
                subuids,
                subgids,
                helpers_unusable: None,
                standing,
                privileged: true,
                ranges_origin,
            };
        }
        Caller {
            uid,
            gid,
            subuids: parse_subids(&subuid, name.as_deref(), uid),
            subgids: parse_subids(&subgid, name.as_deref(), uid),
            name,
            home,
            helpers_unusable: helpers_problem(),
            standing,
            privileged: false,
            ranges_origin: "/etc/subuid and /etc/subgid",
        }
    }

    /// How the maps of this caller's full range get written.
    fn range_writer(&self) -> MapWriter {
        if self.privileged {
            MapWriter::Privileged
        } else {
            MapWriter::Helpers
        }
    }

    fn has_ranges(&self) -> bool {
        !self.subuids.is_empty() && !self.subgids.is_empty()
    }

    /// Why a full range cannot be mapped, with the fix; `None` when it can.
    pub fn range_problem(&self) -> Option<String> {
        if !self.has_ranges() {
            let who = self.name.clone().unwrap_or_else(|| self.uid.to_string());
            return Some(format!(
                "no subordinate id range for user {who} in /etc/subuid and /etc/subgid; an \
                 administrator can add a range no other user has with `{}`",
                add_range_command(&who)
            ));
        }
        self.helpers_unusable.clone()
    }
}

/// Checks that `newuidmap`/`newgidmap` exist and can do their job.
fn helpers_problem() -> Option<String> {
    for helper in ["newuidmap", "newgidmap"] {
        let Some(path) = find_in_path(helper) else {
            return Some(format!(
                "{helper} is not installed; install the `uidmap` package (apt-get install uidmap)"
            ));
        };
        let Ok(meta) = fs::metadata(&path) else {
            return Some(format!("cannot read {}", path.display()));
        };
        let setuid_root = meta.permissions().mode() & 0o4000 != 0 && {
            use std::os::unix::fs::MetadataExt;
            meta.uid() == 0
        };
        if !setuid_root && !has_file_capabilities(&path) {
            return Some(format!(
                "{} is neither setuid root nor has file capabilities; fix it with `chmod u+s {}` \
                 or `setcap cap_setuid+ep {}` (cap_setgid for newgidmap)",
                path.display(),
                path.display(),
                path.display()
            ));
        }
    }
    None
}

fn has_file_capabilities(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(cpath) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    crate::sys::has_xattr(&cpath, c"security.capability")
}

pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Lays `ranges` out contiguously from container id `first`.
fn sub_ranges_from(first: u32, ranges: &[SubRange]) -> Vec<IdRange> {
    let mut next = first;
    ranges
        .iter()
        .map(|r| {
            let range = IdRange {
                container: next,
                host: r.start,
                size: r.count,
            };
            next = next.saturating_add(r.count);
            range
        })
        .collect()
}

/// Container ids `0..own` and `own+1..` from the subordinate ranges, with `own` being the caller.
fn around(own: u32, host: u32, ranges: &[SubRange]) -> Vec<IdRange> {
    let mut out = Vec::new();
    let mut container = 0u32;
    let place = |out: &mut Vec<IdRange>, container: &mut u32, hst: u32, size: u32| {
        if size > 0 {
            out.push(IdRange {
                container: *container,
                host: hst,
                size,
            });
            *container += size;
        }
    };
    let mut own_placed = false;
    for r in ranges {
        let (mut start, mut count) = (r.start, r.count);
        if !own_placed && container as u64 + count as u64 > own as u64 {
            let before = own - container;
            place(&mut out, &mut container, start, before);
            place(&mut out, &mut container, host, 1);
            own_placed = true;
            start += before;
            count -= before;
        }
        place(&mut out, &mut container, start, count);
    }
    if !own_placed {
        out.push(IdRange {
            container: own,
            host,
            size: 1,
        });
    }
    out
}

impl IdMapping {
    /// The caller's own uid and gid as root inside, nothing else.
    pub fn caller_as_root(uid: u32, gid: u32) -> Self {
        let single = |id| {
            vec![IdRange {
                container: 0,
                host: id,
                size: 1,
            }]
        };
        IdMapping {
            uids: single(uid),
            gids: single(gid),
            writer: MapWriter::Direct,
        }
    }

    /// Every id the current namespace holds, as itself: what the root of an outer container
    /// can map into a namespace of its own without newuidmap.
    fn held(nested: &NestedRoot) -> Self {
        IdMapping {
            uids: nested.uids.clone(),
            gids: nested.gids.clone(),
            writer: MapWriter::Privileged,
        }
    }

    /// The mapping `mode` gives `caller`, and a notice when it had to settle for less than asked.
    pub fn for_mode(mode: UsernsMode, caller: &Caller) -> (IdMapping, Option<String>) {
        if let (Standing::NestedRoot(nested), UsernsMode::Auto | UsernsMode::KeepId) =
            (&caller.standing, mode)
        {
            // Root keeps its uid either way: keep-id is auto here.
            if nested.can_map && !nested.uids.is_empty() && !nested.gids.is_empty() {
                return (Self::held(nested), None);
            }
            if !nested.can_map {
                return (
                    Self::caller_as_root(caller.uid, caller.gid),
                    Some(
                        "only uid 0 and gid 0 are mapped (as root) in the container: the \
                         container nook runs in took CAP_SETUID or CAP_SETGID away, which \
                         mapping the other ids it holds takes; run it with `--cap-add SETUID \
                         --cap-add SETGID`"
                            .into(),
                    ),
                );
            }
        }
        let problem = caller.range_problem();
        match (mode, problem) {
            (UsernsMode::Single, _) => (Self::caller_as_root(caller.uid, caller.gid), None),
            (UsernsMode::Auto, None) => {
                let mut uids = Self::caller_as_root(caller.uid, caller.gid);
                uids.uids.extend(sub_ranges_from(1, &caller.subuids));
                uids.gids.extend(sub_ranges_from(1, &caller.subgids));
                uids.writer = caller.range_writer();
                (uids, None)
            }
            (UsernsMode::Auto, Some(why)) => (
                Self::caller_as_root(caller.uid, caller.gid),
                Some(format!(
                    "only your own uid and gid are mapped (as root) in the container: {why}"
                )),
            ),
            (UsernsMode::KeepId, None) => (
                IdMapping {
                    uids: around(caller.uid, caller.uid, &caller.subuids),
                    gids: around(caller.gid, caller.gid, &caller.subgids),
                    writer: caller.range_writer(),
                },
                None,
            ),
            (UsernsMode::KeepId, Some(why)) => (
                IdMapping {
                    uids: vec![IdRange {
                        container: caller.uid,
                        host: caller.uid,
                        size: 1,
                    }],
                    gids: vec![IdRange {
                        container: caller.gid,
                        host: caller.gid,
                        size: 1,
                    }],
                    writer: MapWriter::Direct,
                },
                Some(format!(
                    "keep-id without subordinate ids: only your own uid and gid exist in the \
                     container (files owned by any other id show as nobody): {why}"
                )),
            ),
        }
    }

    /// A mapping given by an OCI bundle, checked against what the caller may map.
    pub fn from_oci(uids: Vec<IdRange>, gids: Vec<IdRange>, caller: &Caller) -> Result<IdMapping> {
        validate_ranges("uidMappings", &uids)?;
        validate_ranges("gidMappings", &gids)?;
        let own_only = |ranges: &[IdRange], own: u32| {
            ranges.len() == 1 && ranges[0].size == 1 && ranges[0].host == own
        };
        if own_only(&uids, caller.uid) && own_only(&gids, caller.gid) {
            return Ok(IdMapping {
                uids,
                gids,
                writer: MapWriter::Direct,
            });
        }
        for (kind, ranges, own, subs) in [
            ("uidMappings", &uids, caller.uid, &caller.subuids),
            ("gidMappings", &gids, caller.gid, &caller.subgids),
        ] {
            for r in ranges.iter() {
                let allowed = (r.size == 1 && r.host == own)
                    || subs.iter().any(|s| {
                        r.host >= s.start && r.host_end() <= s.start as u64 + s.count as u64
                    });
                if !allowed {
                    bail!(
                        "linux.{kind}: host ids {}-{} are neither yours nor in your subordinate \
                         ranges (/etc/subuid, /etc/subgid)",
                        r.host,
                        r.host_end() - 1
                    );
                }
            }
        }
        if let Some(why) = &caller.helpers_unusable {
            bail!("the bundle maps subordinate ids, but {why}");
        }
        Ok(IdMapping {
            uids,
            gids,
            writer: MapWriter::Helpers,
        })
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

    /// The host uid that container uid `uid` is, if mapped.
    pub fn host_uid(&self, uid: u32) -> Option<u32> {
        self.uids.iter().find_map(|r| r.to_host(uid))
    }

    /// The container uid that host uid `host` appears as, if mapped.
    pub fn container_uid(&self, host: u32) -> Option<u32> {
        self.uids.iter().find_map(|r| {
            let offset = host.checked_sub(r.host)?;
            (offset < r.size).then(|| r.container + offset)
        })
    }

    /// Whether processes inside may call `setgroups(2)`; the kernel forbids it when the maps were
    /// written without privilege.
    pub fn allows_setgroups(&self) -> bool {
        match self.writer {
            MapWriter::Direct => false,
            MapWriter::Helpers => true,
            // A child namespace inherits `deny` from ours (`unshare -r`, some CI containers).
            MapWriter::Privileged => {
                fs::read_to_string("/proc/self/setgroups").map_or(true, |s| s.trim() != "deny")
            }
        }
    }

    /// A short description for messages and `nook info`.
    pub fn describe(&self) -> String {
        let total: u64 = self.uids.iter().map(|r| r.size as u64).sum();
        format!(
            "{total} uid(s): {}",
            self.uids
                .iter()
                .map(|r| format!("{}->{}+{}", r.container, r.host, r.size))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// Writes the maps for the user namespace of `pid`, which must still be waiting for them.
    pub fn write_for(&self, pid: Pid) -> Result<()> {
        self.write_for_while(pid, &|| Ok(()))
    }

    /// [`IdMapping::write_for`], doing `meanwhile` on this thread while the helpers run: each is
    /// a fork and exec of a setuid binary, a millisecond or more that other work can use.
    pub fn write_for_while(&self, pid: Pid, meanwhile: &dyn Fn() -> Result<()>) -> Result<()> {
        match self.writer {
            MapWriter::Direct => {
                write_proc_file(pid, "setgroups", "deny")?;
                write_proc_file(pid, "uid_map", &format_map(&self.uids))?;
                write_proc_file(pid, "gid_map", &format_map(&self.gids))?;
                meanwhile()
            }
            MapWriter::Helpers => {
                // One thread per helper: spawning blocks until the binary has been exec'd.
                let (uids, gids, ours) = std::thread::scope(|scope| {
                    let uids = scope.spawn(|| run_helper("newuidmap", pid, &self.uids));
                    let gids = scope.spawn(|| run_helper("newgidmap", pid, &self.gids));
                    let ours = meanwhile();
                    let joined = |t: std::thread::ScopedJoinHandle<'_, Result<()>>| {
                        t.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("an id-map thread panicked")))
                    };
                    (joined(uids), joined(gids), ours)
                });
                uids.and(gids).and(ours)
            }
            MapWriter::Privileged => {
                write_proc_file(pid, "uid_map", &format_map(&self.uids))?;
                write_proc_file(pid, "gid_map", &format_map(&self.gids))?;
                meanwhile()
            }
        }
    }
}

fn validate_ranges(kind: &str, ranges: &[IdRange]) -> Result<()> {
    if ranges.is_empty() {
        bail!("linux.{kind} is empty: map at least one id");
    }
    if ranges.len() > 340 {
        bail!(
            "linux.{kind} has {} ranges; the kernel allows 340",
            ranges.len()
        );
    }
    for (i, a) in ranges.iter().enumerate() {
        if a.size == 0 {
            bail!("linux.{kind}[{i}] has size 0");
        }
        if a.container_end() > u32::MAX as u64 || a.host_end() > u32::MAX as u64 {
            bail!("linux.{kind}[{i}] ({a}) runs past the largest id");
        }
        for (j, b) in ranges.iter().enumerate().skip(i + 1) {
            let overlap = |s1: u64, e1: u64, s2: u64, e2: u64| s1 < e2 && s2 < e1;
            if overlap(
                a.container as u64,
                a.container_end(),
                b.container as u64,
                b.container_end(),
            ) {
                bail!("linux.{kind}[{i}] ({a}) and [{j}] ({b}) overlap inside the container");
            }
            if overlap(a.host as u64, a.host_end(), b.host as u64, b.host_end()) {
                bail!("linux.{kind}[{i}] ({a}) and [{j}] ({b}) overlap on the host");
            }
        }
    }
    Ok(())
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
            "writing {:?} to {path}: the kernel refused the id map (unprivileged user namespaces \
             may be restricted: see `sysctl user.max_user_namespaces`, and on Ubuntu \
             `kernel.apparmor_restrict_unprivileged_userns`)",
            content.trim()
        )
    })
}

fn run_helper(helper: &str, pid: Pid, ranges: &[IdRange]) -> Result<()> {
    finish_helper(helper, spawn_helper(helper, pid, ranges)?, ranges)
}

fn spawn_helper(helper: &str, pid: Pid, ranges: &[IdRange]) -> Result<std::process::Child> {
    // The checked path: a search of PATH would run in the spawned child, one failed execve
    // per directory.
    let mut cmd = Command::new(find_in_path(helper).unwrap_or_else(|| PathBuf::from(helper)));
    cmd.arg(pid.to_string());
    for r in ranges {
        cmd.args([
            r.container.to_string(),
            r.host.to_string(),
            r.size.to_string(),
        ]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("running {helper}: is the `uidmap` package installed (apt-get install uidmap)?")
        })
}

fn finish_helper(helper: &str, child: std::process::Child, ranges: &[IdRange]) -> Result<()> {
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {helper}"))?;
    if !out.status.success() {
        bail!(
            "{helper} refused the map {:?}: {}. Check /etc/sub{}id for your user, and that \
             {helper} is setuid root (package `uidmap`)",
            format_map(ranges).trim().replace('\n', ", "),
            String::from_utf8_lossy(&out.stderr).trim(),
            if helper == "newuidmap" { "u" } else { "g" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_range_starts_past_every_range_given_out() {
        assert_eq!(free_subordinate_range(&["", ""]).start, 100_000);
        let uids = "alice:100000:65536\nbob:165536:65536\n# comment\n";
        let gids = "alice:100000:65536\ncarol:400000:1000\n";
        let free = free_subordinate_range(&[uids, gids]);
        assert_eq!((free.start, free.count), (458_752, 65536));
        assert!(free.start >= 401_000);
        assert_eq!(free_subordinate_range(&["x:1:10\n"]).start, 100_000);
    }

    #[test]
    fn root_gets_its_own_lines_else_a_range_no_user_has() {
        let none = root_ranges("alice:100000:65536\n", "");
        assert_eq!(none.0, vec![root_default_range(&[""])]);
        assert_eq!(none.0[0].start, ROOT_RANGE_START);
        let own = root_ranges("root:300000:65536\n", "0:400000:65536\n");
        assert_eq!((own.0[0].start, own.1[0].start), (300000, 400000));
        // A line someone gave out across the fixed range pushes it past that line.
        let taken = format!("bob:{}:70000\n", ROOT_RANGE_START as u64 + 10);
        let moved = root_default_range(&[&taken, ""]);
        assert!(
            moved.start as u64 >= ROOT_RANGE_START as u64 + 70010,
            "{moved:?}"
        );
        assert_eq!(moved.start % 65536, 0);
    }

    #[test]
    fn root_writes_its_full_range_itself() {
        let mut c = caller(vec![root_default_range(&[""])]);
        (c.uid, c.gid, c.privileged) = (0, 0, true);
        let (m, notice) = IdMapping::for_mode(UsernsMode::Auto, &c);
        assert!(notice.is_none());
        assert_eq!(m.writer, MapWriter::Privileged);
        assert!(m.allows_setgroups());
        assert_eq!(
            format_map(&m.uids),
            format!("0 0 1\n1 {ROOT_RANGE_START} 65536\n")
        );
    }

    fn caller(subuids: Vec<SubRange>) -> Caller {
        Caller {
            uid: 1000,
            gid: 1000,
            name: Some("alice".into()),
            home: None,
            subgids: subuids.clone(),
            subuids,
            helpers_unusable: None,
            standing: Standing::User,
            privileged: false,
            ranges_origin: "",
        }
    }

    #[test]
    fn nested_root_maps_every_id_its_namespace_holds_directly() {
        let podman = "         0       1007          1\n         1     296608      65536\n";
        assert!(!is_initial_map(podman));
        assert!(is_initial_map("         0          0 4294967295\n"));
        let held = held_ids(podman);
        assert_eq!(format_map(&held), "0 0 1\n1 1 65536\n");
        assert_eq!(format_map(&held_ids("0 0 4294967295\n")), "0 0 65536\n");
        let mut c = caller(vec![]);
        c.uid = 0;
        c.gid = 0;
        let nested = NestedRoot {
            uids: held.clone(),
            gids: held.clone(),
            can_map: true,
            sys_admin: true,
            initial: false,
        };
        c.standing = Standing::NestedRoot(nested.clone());
        let (m, notice) = IdMapping::for_mode(UsernsMode::Auto, &c);
        assert!(notice.is_none());
        assert_eq!(m.writer, MapWriter::Privileged);
        assert!(m.allows_setgroups());
        assert_eq!(m.uids, held);
        assert_eq!(m.host_uid(42), Some(42));
        // Without CAP_SETUID only the own id can be written: as a user without subids.
        c.standing = Standing::NestedRoot(NestedRoot {
            can_map: false,
            ..nested
        });
        let (m, notice) = IdMapping::for_mode(UsernsMode::Auto, &c);
        assert_eq!(m, IdMapping::caller_as_root(0, 0));
        assert!(notice.unwrap().contains("--cap-add SETUID"));
    }

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

    #[test]
    fn subids_match_by_name_or_number_and_skip_garbage() {
        let text = "# comment\nalice:100000:65536\nbob:165536:65536\n1000:300000:10\n\
                    alice:x:1\nalice:5:0\nalice:4294967295:2\n";
        assert_eq!(
            parse_subids(text, Some("alice"), 1000),
            vec![
                SubRange {
                    start: 100000,
                    count: 65536
                },
                SubRange {
                    start: 300000,
                    count: 10
                }
            ]
        );
        assert!(parse_subids(text, Some("carol"), 1002).is_empty());
    }

    #[test]
    fn auto_maps_caller_as_root_then_every_range() {
        let c = caller(vec![
            SubRange {
                start: 100000,
                count: 65536,
            },
            SubRange {
                start: 300000,
                count: 10,
            },
        ]);
        let (m, notice) = IdMapping::for_mode(UsernsMode::Auto, &c);
        assert!(notice.is_none());
        assert_eq!(m.writer, MapWriter::Helpers);
        assert_eq!(
            format_map(&m.uids),
            "0 1000 1\n1 100000 65536\n65537 300000 10\n"
        );
        assert_eq!(m.host_uid(42), Some(100041));
        assert_eq!(m.container_uid(100041), Some(42));
    }

    #[test]
    fn auto_without_ranges_falls_back_and_says_how_to_fix() {
        let (m, notice) = IdMapping::for_mode(UsernsMode::Auto, &caller(vec![]));
        assert_eq!(m, IdMapping::caller_as_root(1000, 1000));
        let notice = notice.unwrap();
        assert!(notice.contains("usermod --add-subuids"), "{notice}");
    }

    #[test]
    fn keep_id_places_the_caller_at_its_own_id() {
        let c = caller(vec![SubRange {
            start: 100000,
            count: 65536,
        }]);
        let (m, _) = IdMapping::for_mode(UsernsMode::KeepId, &c);
        assert_eq!(
            format_map(&m.uids),
            "0 100000 1000\n1000 1000 1\n1001 101000 64536\n"
        );
        assert_eq!(m.host_uid(1000), Some(1000));
        assert_eq!(m.host_uid(0), Some(100000));
        let (single, notice) = IdMapping::for_mode(UsernsMode::KeepId, &caller(vec![]));
        assert_eq!(format_map(&single.uids), "1000 1000 1\n");
        assert!(notice.is_some());
    }

    #[test]
    fn oci_mappings_are_validated() {
        let c = caller(vec![SubRange {
            start: 100000,
            count: 65536,
        }]);
        let r = |container, host, size| IdRange {
            container,
            host,
            size,
        };
        assert!(IdMapping::from_oci(vec![r(0, 1000, 1)], vec![r(0, 1000, 1)], &c).is_ok());
        let full = vec![r(0, 1000, 1), r(1, 100000, 65536)];
        assert_eq!(
            IdMapping::from_oci(full.clone(), full, &c).unwrap().writer,
            MapWriter::Helpers
        );
        let err = IdMapping::from_oci(vec![r(0, 0, 1)], vec![r(0, 1000, 1)], &c).unwrap_err();
        assert!(err.to_string().contains("host ids 0-0"), "{err}");
        let overlap = vec![r(0, 100000, 10), r(5, 100100, 10)];
        let err = IdMapping::from_oci(overlap, vec![r(0, 1000, 1)], &c).unwrap_err();
        assert!(err.to_string().contains("overlap inside"), "{err}");
        assert!(IdMapping::from_oci(vec![], vec![r(0, 1000, 1)], &c).is_err());
    }
}
