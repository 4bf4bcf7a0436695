//! Building the OCI runtime spec of a container: rootless defaults, then the user's choices.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxIdMappingBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxSeccomp, Mount, MountBuilder, ProcessBuilder,
    RootBuilder, Spec, UserBuilder,
};

use crate::idmap::{IdMapping, IdRange};

/// The seccomp profile `nook run` applies unless told otherwise (`configs/seccomp.json`).
pub const DEFAULT_SECCOMP_PROFILE: &str = include_str!("../configs/seccomp.json");

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The capabilities a container's root keeps: enough for package managers and servers that
/// switch users, nothing that administers the machine.
pub const DEFAULT_CAPABILITIES: [Capability; 11] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::NetBindService,
    Capability::Setfcap,
    Capability::Setgid,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysChroot,
];

/// Paths of /proc and /sys that would tell the container about the host, hidden entirely.
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Kernel knobs the container may read but never change.
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkMode {
    /// The host's network namespace.
    Host,
    /// A network namespace of its own with only `lo`, up.
    None,
    /// A network namespace of its own joined by a user-mode helper (see `net`).
    Private,
}

impl std::str::FromStr for NetworkMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "host" => Ok(NetworkMode::Host),
            "none" => Ok(NetworkMode::None),
            "private" | "pasta" => Ok(NetworkMode::Private),
            other => bail!("unknown network mode {other:?}: use `host`, `none` or `private`"),
        }
    }
}

/// A `-v HOST:CTR[:ro|:rw]` bind mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub readonly: bool,
}

impl Volume {
    /// Parses the argument of `-v`; the source must exist (it is made absolute here).
    pub fn parse(arg: &str) -> Result<Volume> {
        let parts: Vec<&str> = arg.split(':').collect();
        let (source, destination, readonly) = match parts.as_slice() {
            [s, d] => (*s, *d, false),
            [s, d, "ro"] => (*s, *d, true),
            [s, d, "rw"] => (*s, *d, false),
            [_, _, opt] => bail!("volume {arg:?}: unknown option {opt:?} (use `ro` or `rw`)"),
            _ => bail!("volume {arg:?}: expected HOST:CONTAINER[:ro|:rw]"),
        };
        if source.is_empty() || destination.is_empty() {
            bail!("volume {arg:?}: expected HOST:CONTAINER[:ro|:rw]");
        }
        if !destination.starts_with('/') {
            bail!("volume {arg:?}: the container path {destination:?} must be absolute");
        }
        let normal = normalize_container_path(Path::new(destination));
        if let Some(why) = replaces_kernel_filesystem(&normal) {
            bail!(
                "volume {arg:?}: {} is {why}; a bind mount there would replace it, so nook \
                 refuses it (as runc does). Mount the directory elsewhere, e.g. /mnt{}",
                normal.display(),
                if normal == Path::new("/") {
                    "/host".to_string()
                } else {
                    normal.display().to_string()
                }
            );
        }
        let source = std::fs::canonicalize(source).with_context(|| {
            format!("volume source {source}: cannot use it (does it exist, and can you read it?)")
        })?;
        Ok(Volume {
            source,
            destination: normal,
            readonly,
        })
    }
}

/// An absolute container path with `.`, `..` and repeated slashes resolved as the container's
/// root would (`..` of `/` is `/`).
pub fn normalize_container_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            std::path::Component::Normal(name) => out.push(name),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Files under /proc that runc lets a bind mount cover (lxcfs provides them).
const PROC_FILES_BINDABLE: [&str; 10] = [
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
    "/proc/net/dev",
    "/proc/sys/kernel/ns_last_pid",
];

/// Why a bind mount over `path` (normalized) would take away a filesystem the container's
/// kernel interfaces depend on, if it would.
pub fn replaces_kernel_filesystem(path: &Path) -> Option<&'static str> {
    if path == Path::new("/") {
        return Some("the container's root filesystem (its image and writable layer)");
    }
    if path.starts_with("/proc") && !PROC_FILES_BINDABLE.iter().any(|f| path == Path::new(f)) {
        return Some(
            "inside the container's /proc, the kernel's view of its processes (/proc/self, \
             /proc/sys)",
        );
    }
    if path == Path::new("/dev") || path == Path::new("/dev/pts") {
        return Some("the container's device directory (/dev/null, its terminals)");
    }
    if path == Path::new("/sys") {
        return Some("the container's sysfs");
    }
    None
}

/// A user inside the container, as numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerUser {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// Resolves `-u USER[:GROUP]` (names or numbers) against the image's `/etc/passwd` and
/// `/etc/group`, read without following links out of the image.
pub fn resolve_user(image: &Path, spec: Option<&str>) -> Result<ContainerUser> {
    let (user, group) = match spec {
        None => ("0", None),
        Some(s) => match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        },
    };
    let passwd = read_image_file(image, "/etc/passwd");
    let entry = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 7 && (fields[0] == user || fields[2] == user)).then(|| {
            (
                fields[2].parse::<u32>().ok(),
                fields[3].parse::<u32>().ok(),
                fields[5].to_string(),
            )
        })
    });
    let (uid, primary_gid, home) = match (user.parse::<u32>(), entry) {
        (_, Some((Some(uid), gid, home))) => (uid, gid, home),
        (Ok(uid), _) => (
            uid,
            None,
            if uid == 0 { "/root".into() } else { "/".into() },
        ),
        (Err(_), _) => bail!(
            "user {user:?} is not in the image's /etc/passwd: give a numeric uid or a user the \
             image knows"
        ),
    };
    let gid = match group {
        None => primary_gid.unwrap_or(if uid == 0 { 0 } else { uid }),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => read_image_file(image, "/etc/group")
                .lines()
                .find_map(|line| {
                    let fields: Vec<&str> = line.split(':').collect();
                    (fields.len() >= 3 && fields[0] == g)
                        .then(|| fields[2].parse::<u32>().ok())
                        .flatten()
                })
                .with_context(|| format!("group {g:?} is not in the image's /etc/group"))?,
        },
    };
    Ok(ContainerUser { uid, gid, home })
}

/// Reads a small text file of the image; a missing or unreadable file reads as empty.
pub fn read_image_file(image: &Path, path: &str) -> String {
    let Ok(root) = std::fs::File::open(image) else {
        return String::new();
    };
    let mut text = String::new();
    if let Ok(fd) = crate::sys::open_in_root(root.as_fd(), Path::new(path), libc::O_RDONLY) {
        let _ = std::fs::File::from(fd)
            .take(4 << 20)
            .read_to_string(&mut text);
    }
    text
}

/// Where `path` leads inside the image, its symbolic links followed as the container's root
/// will follow them (the part that does not exist yet is kept as given); `None` when the image
/// cannot be read.
pub fn resolve_in_image(image: &Path, path: &Path) -> Option<PathBuf> {
    let root = std::fs::File::open(image).ok()?;
    let real_root = std::fs::canonicalize(image).ok()?;
    let mut existing = normalize_container_path(path);
    let mut missing = Vec::new();
    loop {
        if let Ok(fd) = crate::sys::open_in_root(root.as_fd(), &existing, libc::O_PATH) {
            let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
            let mut inside = Path::new("/").join(real.strip_prefix(&real_root).ok()?);
            inside.extend(missing.iter().rev());
            return Some(inside);
        }
        missing.push(existing.file_name()?.to_owned());
        existing.pop();
    }
}

/// Everything `nook run` decides about a container, before it becomes a spec.
pub struct RunRequest<'a> {
    pub rootfs: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub user: ContainerUser,
    pub terminal: bool,
    pub hostname: String,
    pub network: NetworkMode,
    pub volumes: &'a [Volume],
    pub idmap: &'a IdMapping,
    /// Whether the seccomp profile fakes root's calls, and what goes to the supervisor (see
    /// `security::root_emulation`).
    pub root_emulation: Option<crate::security::root_emulation::Supervision>,
}

/// Builds the spec of a `nook run` container.
pub fn build_run_spec(req: &RunRequest<'_>) -> Result<Spec> {
    let mut env = vec![
        format!("PATH={DEFAULT_PATH}"),
        format!("HOSTNAME={}", req.hostname),
        format!("HOME={}", req.user.home),
        "container=nook".to_string(),
    ];
    if req.terminal {
        env.push("TERM=xterm".to_string());
    }
    for var in &req.env {
        set_env(&mut env, var);
    }

    let all_caps: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    let user_caps = if req.user.uid == 0 {
        all_caps.clone()
    } else {
        HashSet::new()
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(all_caps)
        .effective(user_caps.clone())
        .permitted(user_caps.clone())
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()?;

    let process = ProcessBuilder::default()
        .terminal(req.terminal)
        .user(
            UserBuilder::default()
                .uid(req.user.uid)
                .gid(req.user.gid)
                .build()?,
        )
        .args(req.args.clone())
        .env(env)
        .cwd(req.cwd.clone().unwrap_or_else(|| "/".to_string()))
        .capabilities(capabilities)
        .no_new_privileges(true)
        .build()?;

    let mut namespaces: Vec<LinuxNamespace> = [
        LinuxNamespaceType::User,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
    ]
    .into_iter()
    .map(namespace)
    .collect::<Result<_>>()?;
    if req.network != NetworkMode::Host {
        namespaces.push(namespace(LinuxNamespaceType::Network)?);
    }

    let mut seccomp: LinuxSeccomp = serde_json::from_str(DEFAULT_SECCOMP_PROFILE)
        .context("parsing the built-in seccomp profile configs/seccomp.json")?;
    if let Some(supervision) = req.root_emulation {
        crate::security::root_emulation::add_to_profile(&mut seccomp, supervision);
    }

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .uid_mappings(oci_mappings(&req.idmap.uids)?)
        .gid_mappings(oci_mappings(&req.idmap.gids)?)
        .masked_paths(DEFAULT_MASKED_PATHS.map(String::from).to_vec())
        .readonly_paths(DEFAULT_READONLY_PATHS.map(String::from).to_vec())
        .seccomp(seccomp)
        .build()?;

    let mut spec = Spec::default();
    spec.set_root(Some(
        RootBuilder::default()
            .path(req.rootfs)
            .readonly(false)
            .build()?,
    ));
    spec.set_hostname(Some(req.hostname.clone()));
    spec.set_process(Some(process));
    spec.set_mounts(Some(run_mounts(req)?));
    spec.set_linux(Some(linux));
    spec.set_annotations(None);
    Ok(spec)
}

/// Sets `var` (`K=V`) in `env`, replacing an earlier value of `K`.
fn set_env(env: &mut Vec<String>, var: &str) {
    let key = var.split_once('=').map_or(var, |(k, _)| k);
    env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
    env.push(var.to_string());
}

fn namespace(typ: LinuxNamespaceType) -> Result<LinuxNamespace> {
    Ok(LinuxNamespaceBuilder::default().typ(typ).build()?)
}

fn oci_mappings(ranges: &[IdRange]) -> Result<Vec<oci_spec::runtime::LinuxIdMapping>> {
    ranges
        .iter()
        .map(|r| {
            Ok(LinuxIdMappingBuilder::default()
                .container_id(r.container)
                .host_id(r.host)
                .size(r.size)
                .build()?)
        })
        .collect()
}

fn mount(
    destination: &str,
    typ: &str,
    source: impl AsRef<OsStr>,
    options: &[&str],
) -> Result<Mount> {
    Ok(MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(PathBuf::from(source.as_ref()))
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()?)
}

fn run_mounts(req: &RunRequest<'_>) -> Result<Vec<Mount>> {
    let tty_gid_mapped = req.idmap.maps_gid(5);
    let mut pts_options = vec![
        "nosuid",
        "noexec",
        "newinstance",
        "ptmxmode=0666",
        "mode=0620",
    ];
    if tty_gid_mapped {
        pts_options.push("gid=5");
    }
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount("/dev/pts", "devpts", "devpts", &pts_options)?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
    ];
    // A new sysfs instance needs a network namespace of our own; otherwise show the host's,
    // read-only, as every rootless runtime does.
    mounts.push(match req.network {
        NetworkMode::None | NetworkMode::Private => mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        NetworkMode::Host => mount(
            "/sys",
            "bind",
            "/sys",
            &["rbind", "nosuid", "noexec", "nodev", "rro"],
        )?,
    });
    for volume in req.volumes {
        let mut options = vec!["rbind"];
        if volume.readonly {
            options.push("rro");
        }
        let mut m = mount("/", "bind", &volume.source, &options)?;
        m.set_destination(volume.destination.clone());
        mounts.push(m);
    }
    Ok(mounts)
}

/// Checks a host name as RFC 1123 and the kernel define it: at most 64 bytes (the kernel's
/// limit for `sethostname`), dot-separated labels of 1-63 letters, digits and `-`, none starting
/// or ending with `-`.
pub fn validate_hostname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 {
        bail!(
            "invalid host name {name:?}: it has {} characters, and a host name has 1 to 64 (the \
             kernel's limit)",
            name.len()
        );
    }
    for label in name.split('.') {
        let bad_char = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'));
        if let Some(c) = bad_char {
            bail!(
                "invalid host name {name:?}: {c:?} is not allowed; use letters, digits, '-' and \
                 dots between labels"
            );
        }
        if label.is_empty() || label.len() > 63 || label.starts_with('-') || label.ends_with('-') {
            bail!(
                "invalid host name {name:?}: each dot-separated part needs 1 to 63 characters \
                 and may not start or end with '-'"
            );
        }
    }
    Ok(())
}

/// An `-e` argument checked as podman checks it: `KEY=VALUE`, or `KEY` alone for the caller's
/// own value; the key is not empty and has no white space.
pub fn validate_env_arg(arg: &str) -> Result<()> {
    let key = arg.split_once('=').map_or(arg, |(k, _)| k);
    if key.is_empty() {
        bail!("invalid environment variable {arg:?} (-e): the name before '=' is empty");
    }
    if key.chars().any(char::is_whitespace) {
        bail!("invalid environment variable {arg:?} (-e): the name {key:?} has white space");
    }
    Ok(())
}

/// The content of `/etc/hosts` for a container named `hostname`.
pub fn hosts_file(hostname: &str, network: NetworkMode) -> String {
    let host_entries = match network {
        NetworkMode::Host => std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
        NetworkMode::None | NetworkMode::Private => String::new(),
    };
    let mut out = String::new();
    if !host_entries
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("localhost"))
    {
        out.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    }
    out.push_str(&host_entries);
    if !out.ends_with('\n') && !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&format!("127.0.1.1\t{hostname}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_parses_modes_and_refuses_bad_forms() {
        let v = Volume::parse("/tmp:/data:ro").unwrap();
        assert_eq!(v.destination, Path::new("/data"));
        assert!(v.readonly);
        assert!(!Volume::parse("/tmp:/data").unwrap().readonly);
        assert!(Volume::parse("/tmp:data").is_err());
        assert!(Volume::parse("/tmp:/data:rx").is_err());
        assert!(Volume::parse("/tmp").is_err());
        let err = Volume::parse("/no/such/dir:/data").unwrap_err();
        assert!(format!("{err:#}").contains("/no/such/dir"));
    }

    #[test]
    fn volumes_over_kernel_filesystems_are_refused() {
        for dest in [
            "/",
            "/proc",
            "/proc/",
            "//proc",
            "/proc/sys",
            "/proc/./sys",
            "/x/../proc",
            "/proc/self",
            "/dev",
            "/dev/",
            "/dev/pts",
            "/sys",
            "/..",
        ] {
            let err = Volume::parse(&format!("/tmp:{dest}")).unwrap_err();
            assert!(format!("{err:#}").contains("refuses"), "{dest}: {err:#}");
        }
        for dest in [
            "/proc/meminfo",
            "/dev/shm",
            "/procfs",
            "/devices",
            "/sys2",
            "/mnt/proc",
        ] {
            assert!(Volume::parse(&format!("/tmp:{dest}")).is_ok(), "{dest}");
        }
        assert_eq!(
            Volume::parse("/tmp:/a/./b//c/../d").unwrap().destination,
            Path::new("/a/b/d")
        );
    }

    #[test]
    fn env_overrides_replace_defaults() {
        let mut env = vec!["PATH=/bin".to_string(), "HOME=/root".to_string()];
        set_env(&mut env, "PATH=/x");
        set_env(&mut env, "NEW=1");
        assert_eq!(env, vec!["HOME=/root", "PATH=/x", "NEW=1"]);
    }

    #[test]
    fn builtin_seccomp_profile_parses_and_denies_by_default() {
        let profile: LinuxSeccomp = serde_json::from_str(DEFAULT_SECCOMP_PROFILE).unwrap();
        assert_eq!(
            profile.default_action(),
            oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
        );
        let allowed: Vec<&String> = profile
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|r| r.action() == oci_spec::runtime::LinuxSeccompAction::ScmpActAllow)
            .flat_map(|r| r.names())
            .collect();
        for needed in ["execve", "openat", "read", "write", "setresuid", "wait4"] {
            assert!(allowed.iter().any(|n| *n == needed), "{needed} not allowed");
        }
        for denied in [
            "mount",
            "unshare",
            "setns",
            "kexec_load",
            "bpf",
            "init_module",
        ] {
            assert!(!allowed.iter().any(|n| *n == denied), "{denied} allowed");
        }
    }

    #[test]
    fn host_names_follow_rfc_1123_and_the_kernel_limit() {
        for good in ["box", "web-1", "a.b.example", &"x".repeat(63)] {
            assert!(validate_hostname(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "1 to 64"),
            (&"x".repeat(300), "300 characters"),
            ("my_host", "'_'"),
            ("-x", "start or end"),
            ("a..b", "1 to 63"),
        ] {
            let err = validate_hostname(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn env_args_need_a_name_without_white_space() {
        for good in ["A=1", "A=", "A", "A=b c", "A==b"] {
            assert!(validate_env_arg(good).is_ok(), "{good}");
        }
        for bad in ["=value", "=", "", "A B=1", " A=1"] {
            assert!(validate_env_arg(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hosts_file_names_the_container() {
        let hosts = hosts_file("box", NetworkMode::None);
        assert!(hosts.contains("127.0.0.1\tlocalhost"));
        assert!(hosts.ends_with("127.0.1.1\tbox\n"));
    }

    #[test]
    fn numeric_users_resolve_without_passwd() {
        let dir = std::env::temp_dir();
        let u = resolve_user(&dir.join("no-such-image"), Some("0:0")).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        let u = resolve_user(&dir.join("no-such-image"), Some("1000")).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert!(resolve_user(&dir.join("no-such-image"), Some("alice")).is_err());
    }
}
