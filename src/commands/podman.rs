//! The `nook run` options people bring from podman and docker: checked with the rest of the
//! input (so that a bad one leaves nothing behind), then applied to the container's spec.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use oci_spec::runtime::{
    Capability, LinuxSeccomp, LinuxSeccompAction, Mount, MountBuilder, PosixRlimit,
    PosixRlimitBuilder, PosixRlimitType, Spec,
};

use crate::cli::RunArgs;
use crate::spec::{self, Volume};

/// Every capability the kernel knows today, for `ALL`.
const ALL_CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// How the seccomp filter changes.
#[derive(Debug, Default)]
enum Seccomp {
    #[default]
    Default,
    Unconfined,
    Profile(LinuxSeccomp),
}

/// The podman options of one `nook run`, checked.
#[derive(Debug, Default)]
pub struct Options {
    /// Bind mounts from `--mount type=bind`, checked as `-v` ones are.
    pub volumes: Vec<Volume>,
    tmpfs: Vec<Mount>,
    read_only: bool,
    cap_add: Vec<Capability>,
    cap_drop: Vec<Capability>,
    seccomp: Seccomp,
    privileged: bool,
    devices: Vec<Mount>,
    rlimits: Vec<PosixRlimit>,
    shm_size: Option<u64>,
    pub cidfile: Option<PathBuf>,
}

/// The options nook cannot honour, each with what to do instead.
fn refuse_unsupported(args: &RunArgs) -> Result<()> {
    if !args.label.is_empty() {
        bail!(
            "--label: nook keeps no labels on containers yet; name the container (--name) instead"
        );
    }
    if args.stop_signal.is_some() {
        bail!(
            "--stop-signal: nook records no stop signal yet; `nook stop` sends SIGTERM, and `nook \
             kill -s SIGNAL NAME` sends another"
        );
    }
    if args.stop_timeout.is_some() {
        bail!(
            "--stop-timeout: nook records no stop timeout yet; give it to `nook stop -t SECONDS`"
        );
    }
    if args.sig_proxy == Some(false) {
        bail!(
            "--sig-proxy=false: nook always passes the signals it receives to the container; \
             run it detached (-d) to keep them apart"
        );
    }
    Ok(())
}

/// Reads `--env-file` files: `KEY=VALUE` lines, `KEY` alone for nook's own value, blank lines
/// and `#` comments skipped, as podman reads them.
pub fn env_file_vars(paths: &[PathBuf]) -> Result<Vec<String>> {
    let mut vars = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--env-file {}: reading it", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            spec::validate_env_arg(line)
                .with_context(|| format!("--env-file {} line {}", path.display(), n + 1))?;
            match line.split_once('=') {
                Some(_) => vars.push(line.to_string()),
                None => {
                    if let Ok(v) = std::env::var(line) {
                        vars.push(format!("{line}={v}"));
                    }
                }
            }
        }
    }
    Ok(vars)
}

pub fn check(args: &RunArgs) -> Result<Options> {
    refuse_unsupported(args)?;
    let mut options = Options {
        read_only: args.read_only,
        privileged: args.privileged,
        cidfile: args.cidfile.clone(),
        ..Options::default()
    };
    if let Some(file) = &args.cidfile {
        if file.symlink_metadata().is_ok() {
            bail!(
                "--cidfile {}: the file exists; remove it or give another",
                file.display()
            );
        }
    }
    for m in &args.mount {
        parse_mount(m, &mut options).with_context(|| format!("--mount {m}"))?;
    }
    for t in &args.tmpfs {
        let (path, opts) = t.split_once(':').unwrap_or((t, ""));
        let mount = tmpfs_mount(path, opts.split(',').filter(|o| !o.is_empty()))
            .with_context(|| format!("--tmpfs {t}"))?;
        options.tmpfs.push(mount);
    }
    options.cap_add = capabilities(&args.cap_add, "--cap-add")?;
    options.cap_drop = capabilities(&args.cap_drop, "--cap-drop")?;
    for opt in &args.security_opt {
        match opt.split_once(['=', ':']) {
            Some(("seccomp", "unconfined")) => options.seccomp = Seccomp::Unconfined,
            Some(("seccomp", file)) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("--security-opt seccomp={file}: reading it"))?;
                let mut de = serde_json::Deserializer::from_str(&text);
                let profile: LinuxSeccomp =
                    serde_path_to_error::deserialize(&mut de).map_err(|e| {
                        anyhow!(
                            "--security-opt seccomp={file}: not an OCI seccomp profile: field \
                             `{}`: {}",
                            e.path(),
                            e.inner()
                        )
                    })?;
                options.seccomp = Seccomp::Profile(profile);
            }
            // Already on for every nook container.
            None if opt == "no-new-privileges" => {}
            Some(("no-new-privileges", "true")) => {}
            // nook uses neither SELinux nor AppArmor: there is nothing to disable.
            Some(("label", "disable")) | Some(("apparmor", "unconfined")) => {}
            _ => bail!(
                "--security-opt {opt}: nook knows seccomp=unconfined, seccomp=PROFILE.json, \
                 no-new-privileges, label=disable and apparmor=unconfined"
            ),
        }
    }
    for d in &args.device {
        options
            .devices
            .push(device_mount(d).with_context(|| format!("--device {d}"))?);
    }
    for u in &args.ulimit {
        options
            .rlimits
            .push(rlimit(u).with_context(|| format!("--ulimit {u}"))?);
    }
    if let Some(size) = &args.shm_size {
        options.shm_size = Some(parse_size(size).context("--shm-size")?);
    }
    Ok(options)
}

fn parse_mount(text: &str, options: &mut Options) -> Result<()> {
    let mut typ = None;
    let (mut source, mut target, mut readonly) = (None, None, false);
    let mut tmpfs_options = Vec::new();
    for field in text.split(',') {
        let (key, value) = field.split_once('=').unwrap_or((field, ""));
        match (key, value) {
            ("type", v) => typ = Some(v),
            ("source" | "src", v) => source = Some(v),
            ("target" | "destination" | "dst", v) => target = Some(v),
            ("readonly" | "ro", "" | "true") => readonly = true,
            ("readonly" | "ro", "false") => readonly = false,
            ("tmpfs-size", v) => tmpfs_options.push(format!("size={}", parse_size(v)?)),
            ("tmpfs-mode", v) => {
                u32::from_str_radix(v, 8).map_err(|_| anyhow!("tmpfs-mode={v}: not octal"))?;
                tmpfs_options.push(format!("mode={v}"));
            }
            _ => bail!(
                "unknown field {field:?}: nook knows type, source, target, readonly, tmpfs-size \
                 and tmpfs-mode"
            ),
        }
    }
    let target = target.ok_or_else(|| anyhow!("give target=PATH"))?;
    match typ {
        Some("bind") => {
            let source = source.ok_or_else(|| anyhow!("give source=HOST_PATH"))?;
            if source.contains(':') || target.contains(':') {
                bail!("paths with ':' cannot be mounted yet");
            }
            let mode = if readonly { ":ro" } else { "" };
            options
                .volumes
                .push(Volume::parse(&format!("{source}:{target}{mode}"))?);
        }
        Some("tmpfs") => {
            if source.is_some() {
                bail!("a tmpfs has no source");
            }
            let mut mount = tmpfs_mount(target, tmpfs_options.iter().map(String::as_str))?;
            if readonly {
                let mut opts = mount.options().clone().unwrap_or_default();
                opts.push("ro".into());
                mount.set_options(Some(opts));
            }
            options.tmpfs.push(mount);
        }
        Some("volume") => bail!(
            "nook has no named volumes: bind a host directory instead (-v HOST_DIR:{target} or \
             --mount type=bind,source=HOST_DIR,target={target})"
        ),
        Some(other) => bail!("type={other}: nook knows type=bind and type=tmpfs"),
        None => bail!("give type=bind or type=tmpfs"),
    }
    Ok(())
}

fn checked_destination(path: &str) -> Result<PathBuf> {
    let dest = PathBuf::from(path);
    if !dest.is_absolute() {
        bail!("{path}: give an absolute path inside the container");
    }
    let normal = spec::normalize_container_path(&dest);
    if let Some(why) = spec::replaces_kernel_filesystem(&normal) {
        bail!("{path} is {why}; a mount there would replace it, so nook refuses it");
    }
    Ok(normal)
}

fn tmpfs_mount<'a>(path: &str, extra: impl Iterator<Item = &'a str>) -> Result<Mount> {
    let dest = checked_destination(path)?;
    // podman's defaults, which the given options override.
    let mut options: Vec<String> = vec!["nosuid".into(), "nodev".into(), "mode=1777".into()];
    for o in extra {
        let key = o.split_once('=').map_or(o, |(k, _)| k);
        options.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        options.push(o.to_string());
    }
    Ok(MountBuilder::default()
        .destination(dest)
        .typ("tmpfs")
        .source(PathBuf::from("tmpfs"))
        .options(options)
        .build()?)
}

fn device_mount(text: &str) -> Result<Mount> {
    let mut parts = text.split(':');
    let host = parts.next().unwrap_or_default();
    let inside = parts
        .next()
        .filter(|p| !p.starts_with(['r', 'w', 'm']) || p.starts_with('/'));
    let host_path = Path::new(host);
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(host_path)
        .with_context(|| format!("{host}: no such device on the host"))?;
    if !meta.file_type().is_char_device() && !meta.file_type().is_block_device() {
        bail!("{host} is not a device node");
    }
    // A rootless container cannot create device nodes: the host's node is bind-mounted, so
    // only a device the caller may open works inside.
    std::fs::OpenOptions::new()
        .read(true)
        .open(host_path)
        .with_context(|| {
            format!("{host}: you cannot open it on the host, so the container could not either")
        })?;
    let dest = inside.unwrap_or(host);
    let dest = PathBuf::from(dest);
    if !dest.starts_with("/dev/") {
        bail!("{}: give a path under /dev", dest.display());
    }
    Ok(MountBuilder::default()
        .destination(spec::normalize_container_path(&dest))
        .typ("bind")
        .source(host_path.to_path_buf())
        .options(vec!["bind".into(), "nosuid".into(), "noexec".into()])
        .build()?)
}

fn capabilities(names: &[String], flag: &str) -> Result<Vec<Capability>> {
    let mut caps = Vec::new();
    for name in names {
        let upper = name.to_ascii_uppercase();
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        if bare == "ALL" {
            for c in ALL_CAPABILITIES {
                if let Some(cap) = capability(c) {
                    caps.push(cap);
                }
            }
            continue;
        }
        let cap = capability(bare).ok_or_else(|| {
            anyhow!("{flag} {name}: unknown capability (e.g. NET_RAW, SYS_PTRACE)")
        })?;
        caps.push(cap);
    }
    Ok(caps)
}

/// A capability by its bare name (`NET_RAW`); oci-spec spells some with and some without
/// the `CAP_` prefix.
fn capability(bare: &str) -> Option<Capability> {
    Capability::from_str(&format!("CAP_{bare}"))
        .or_else(|_| Capability::from_str(bare))
        .ok()
}

fn rlimit(text: &str) -> Result<PosixRlimit> {
    let (name, values) = text
        .split_once('=')
        .ok_or_else(|| anyhow!("give NAME=SOFT[:HARD]"))?;
    let typ: PosixRlimitType = serde_json::from_value(serde_json::Value::String(format!(
        "RLIMIT_{}",
        name.to_ascii_uppercase()
    )))
    .map_err(|_| anyhow!("{name}: unknown limit (nofile, nproc, core, memlock, stack, …)"))?;
    let parse = |v: &str| -> Result<u64> {
        match v {
            "-1" | "unlimited" => Ok(u64::MAX),
            v => v.parse().map_err(|_| anyhow!("{v}: not a number")),
        }
    };
    let (soft, hard) = match values.split_once(':') {
        Some((s, h)) => (parse(s)?, parse(h)?),
        None => (parse(values)?, parse(values)?),
    };
    if soft > hard {
        bail!("the soft limit {soft} is above the hard limit {hard}");
    }
    Ok(PosixRlimitBuilder::default()
        .typ(typ)
        .soft(soft)
        .hard(hard)
        .build()?)
}

/// Bytes, or a number with `b`, `k`, `m` or `g` (powers of 1024, as podman).
fn parse_size(text: &str) -> Result<u64> {
    let lower = text.to_ascii_lowercase();
    let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => lower.split_at(i),
        None => (lower.as_str(), ""),
    };
    let factor: u64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => bail!("{text}: give bytes, or a number with k, m or g"),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .filter(|n| *n > 0)
        .ok_or_else(|| anyhow!("{text}: give bytes, or a number with k, m or g"))
}

/// Applies the options to a spec `spec::build_run_spec` made.
pub fn apply(
    spec: &mut Spec,
    options: &Options,
    image: &Path,
    root_emulation: Option<crate::security::root_emulation::Supervision>,
    uid: u32,
) -> Result<()> {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    if let Some(size) = options.shm_size {
        for m in mounts.iter_mut() {
            if m.destination() == Path::new("/dev/shm") {
                let mut opts = m.options().clone().unwrap_or_default();
                opts.retain(|o| !o.starts_with("size="));
                opts.push(format!("size={size}"));
                m.set_options(Some(opts));
            }
        }
    }
    if options.read_only {
        if let Some(root) = spec.root_mut() {
            root.set_readonly(Some(true));
        }
        for dir in ["/tmp", "/var/tmp", "/run"] {
            let taken = options
                .tmpfs
                .iter()
                .any(|m| m.destination() == Path::new(dir));
            let in_image = spec::resolve_in_image(image, Path::new(dir))
                .is_some_and(|real| image.join(real.strip_prefix("/").unwrap_or(&real)).is_dir());
            if !taken && in_image {
                mounts.push(tmpfs_mount(dir, std::iter::empty())?);
            }
        }
    }
    mounts.extend(options.tmpfs.iter().cloned());
    mounts.extend(options.devices.iter().cloned());
    spec.set_mounts(Some(mounts));

    let mut process = spec.process().clone().unwrap_or_default();
    if !options.rlimits.is_empty() {
        process.set_rlimits(Some(options.rlimits.clone()));
    }
    let mut caps = process.capabilities().clone().unwrap_or_default();
    let mut add: Vec<Capability> = options.cap_add.clone();
    if options.privileged {
        add.extend(capabilities(&["ALL".into()], "--privileged")?);
    }
    let change = |set: &Option<HashSet<Capability>>, grant: bool| {
        let mut s = set.clone().unwrap_or_default();
        if grant {
            s.extend(add.iter().copied());
        }
        for c in &options.cap_drop {
            s.remove(c);
        }
        Some(s)
    };
    // As podman: a capability added reaches root's sets; another user's only through the
    // bounding set (file capabilities, setuid programs).
    let root = uid == 0;
    caps.set_bounding(change(caps.bounding(), true));
    caps.set_effective(change(caps.effective(), root));
    caps.set_permitted(change(caps.permitted(), root));
    caps.set_inheritable(change(caps.inheritable(), false));
    caps.set_ambient(change(caps.ambient(), false));
    process.set_capabilities(Some(caps));
    spec.set_process(Some(process));

    let Some(linux) = spec.linux_mut() else {
        return Ok(());
    };
    if options.privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    }
    let unconfined = options.privileged || matches!(options.seccomp, Seccomp::Unconfined);
    let profile = match &options.seccomp {
        Seccomp::Profile(p) if !options.privileged => Some(p.clone()),
        _ if unconfined => {
            // Root emulation is a seccomp filter of its own: it stays, over an allow-all one.
            root_emulation.map(|_| {
                let mut p = linux.seccomp().clone().unwrap_or_default();
                p.set_default_action(LinuxSeccompAction::ScmpActAllow);
                p.set_default_errno_ret(None);
                p.set_syscalls(None);
                p
            })
        }
        _ => return Ok(()),
    };
    let profile = profile.map(|mut p| {
        if let Some(supervision) = root_emulation {
            crate::security::root_emulation::add_to_profile(&mut p, supervision);
        }
        p
    });
    linux.set_seccomp(profile);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_podman_writes_them() {
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("2kb").unwrap(), 2048);
        assert!(parse_size("x").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn every_capability_has_a_name() {
        for c in ALL_CAPABILITIES {
            assert!(capability(c).is_some(), "{c}");
        }
        assert!(capability("NOSUCH").is_none());
    }

    #[test]
    fn ulimits_name_the_limit() {
        let r = rlimit("nofile=1024:2048").unwrap();
        assert_eq!((r.soft(), r.hard()), (1024, 2048));
        assert!(rlimit("nosuch=1").is_err());
        assert!(rlimit("nofile=10:5").is_err());
    }
}
