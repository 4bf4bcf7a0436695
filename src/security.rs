//! The last steps before `execve`: user switch, capabilities, no_new_privs and seccomp.

pub mod outer;
pub mod owner_record;
pub mod root_emulation;
pub mod supervisor;

use std::collections::HashSet;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use caps::{CapSet, Capability as Cap, CapsHashSet};
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{
    Arch, Capability, LinuxCapabilities, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator,
    PosixRlimit, PosixRlimitType,
};

fn to_caps(set: &Option<HashSet<Capability>>) -> Result<CapsHashSet> {
    let mut out = CapsHashSet::new();
    for cap in set.iter().flatten() {
        let name = format!("CAP_{cap}");
        out.insert(Cap::from_str(&name).with_context(|| format!("unknown capability {name}"))?);
    }
    Ok(out)
}

/// Drops every capability not in the spec's bounding set. Must run while we still hold
/// CAP_SETPCAP, i.e. before the user switch.
pub fn limit_bounding_set(spec: &LinuxCapabilities) -> Result<()> {
    let keep = to_caps(spec.bounding())?;
    for cap in caps::runtime::thread_all_supported() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .with_context(|| format!("dropping {cap} from the bounding set"))?;
        }
    }
    Ok(())
}

/// Becomes `uid`/`gid` inside the container, keeping the permitted capabilities across the switch
/// so `apply_capabilities` can then set exactly what the spec asks.
pub fn switch_user(uid: u32, gid: u32, extra_gids: &[u32], may_setgroups: bool) -> Result<()> {
    nix::sys::prctl::set_keepcaps(true).context("prctl(PR_SET_KEEPCAPS)")?;
    if may_setgroups {
        let groups: Vec<Gid> = extra_gids.iter().map(|g| Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&groups).context("setgroups")?;
    } else if !extra_gids.is_empty() {
        bail!(
            "additional groups {extra_gids:?} need a user namespace whose maps were written by \
             newgidmap; setgroups is denied in this one"
        );
    }
    let g = Gid::from_raw(gid);
    nix::unistd::setresgid(g, g, g).map_err(|e| not_mapped(e, "gid", gid))?;
    let u = Uid::from_raw(uid);
    nix::unistd::setresuid(u, u, u).map_err(|e| not_mapped(e, "uid", uid))?;
    nix::sys::prctl::set_keepcaps(false).context("prctl(PR_SET_KEEPCAPS)")?;
    Ok(())
}

fn not_mapped(err: nix::Error, kind: &str, id: u32) -> anyhow::Error {
    if err == nix::Error::EINVAL {
        anyhow::anyhow!(
            "{kind} {id} is not mapped in the container's user namespace; map a range of \
             subordinate ids (see /etc/subuid and /etc/subgid) or run as {kind} 0"
        )
    } else {
        anyhow::Error::new(err).context(format!("switching to {kind} {id}"))
    }
}

/// Becomes uid and gid 0 of the new user namespace once its maps are written, as runc and crun
/// do. A creator whose own ids the map does not hold (podman's `--userns=auto` or `nomap`)
/// is nobody there otherwise, and every file it creates fails with EOVERFLOW. A map without
/// a 0 leaves the ids as they are.
pub fn become_namespace_root() -> Result<()> {
    let root_g = Gid::from_raw(0);
    if nix::unistd::getgid() != root_g {
        match nix::unistd::setresgid(root_g, root_g, root_g) {
            Ok(()) | Err(nix::Error::EINVAL) => {}
            Err(e) => return Err(e).context("setresgid(0) in the new user namespace"),
        }
    }
    let root_u = Uid::from_raw(0);
    if nix::unistd::getuid() != root_u {
        match nix::unistd::setresuid(root_u, root_u, root_u) {
            Ok(()) | Err(nix::Error::EINVAL) => {}
            Err(e) => return Err(e).context("setresuid(0) in the new user namespace"),
        }
    }
    Ok(())
}

/// `linux.sysctl`: written through /proc/sys by a process already in the container's
/// namespaces, so only the keys those namespaces own (net.* with a network namespace of its
/// own, the IPC ones, ...) take; any other is an error naming it.
pub fn apply_sysctls(sysctls: &std::collections::HashMap<String, String>) -> Result<()> {
    let mut keys: Vec<&String> = sysctls.keys().collect();
    keys.sort();
    for key in keys {
        let rel = key.replace('.', "/");
        if rel.split('/').any(|c| c.is_empty() || c == "..") {
            bail!("field `linux.sysctl`: {key:?} is not a sysctl name");
        }
        let path = format!("/proc/sys/{rel}");
        std::fs::write(&path, &sysctls[key]).with_context(|| {
            format!(
                "field `linux.sysctl`: setting {key} = {:?} through {path} (only sysctls of \
                 the container's own namespaces can be set: net.* needs a network namespace of \
                 its own, kernel.* ones outside the IPC and UTS namespaces need the host's root)",
                sysctls[key]
            )
        })?;
    }
    Ok(())
}

/// `process.oomScoreAdj`: without privilege the kernel only lets it rise.
pub fn set_oom_score_adj(value: i32) -> Result<()> {
    let path = "/proc/self/oom_score_adj";
    let current = std::fs::read_to_string(path).unwrap_or_default();
    std::fs::write(path, value.to_string()).with_context(|| {
        format!(
            "field `process.oomScoreAdj`: setting {value} (the current score adjustment is {}; \
             without privilege it can only be raised)",
            current.trim()
        )
    })
}

/// `linux.personality`: the execution domain; the spec defines no flags yet.
pub fn set_personality(personality: &oci_spec::runtime::LinuxPersonality) -> Result<()> {
    use oci_spec::runtime::LinuxPersonalityDomain;
    if let Some(flags) = personality.flags().as_ref().filter(|f| !f.is_empty()) {
        bail!("field `linux.personality.flags`: {flags:?}: the runtime spec defines no flags yet");
    }
    const PER_LINUX: libc::c_ulong = 0x0000;
    const PER_LINUX32: libc::c_ulong = 0x0008;
    let persona = match personality.domain() {
        LinuxPersonalityDomain::PerLinux => PER_LINUX,
        LinuxPersonalityDomain::PerLinux32 => PER_LINUX32,
    };
    crate::sys::set_personality(persona).with_context(|| {
        format!(
            "field `linux.personality`: personality({})",
            personality.domain()
        )
    })
}

/// Sets the effective, permitted, inheritable and ambient sets as the spec says.
pub fn apply_capabilities(spec: &LinuxCapabilities) -> Result<()> {
    let permitted = to_caps(spec.permitted())?;
    let effective = to_caps(spec.effective())?;
    let inheritable = to_caps(spec.inheritable())?;
    let ambient = to_caps(spec.ambient())?;
    // Order matters: effective must stay a subset of permitted at every step.
    caps::set(
        None,
        CapSet::Effective,
        &effective.intersection(&permitted).copied().collect(),
    )
    .context("setting effective capabilities")?;
    caps::set(None, CapSet::Permitted, &permitted).context("setting permitted capabilities")?;
    caps::set(None, CapSet::Effective, &effective).context("setting effective capabilities")?;
    caps::set(None, CapSet::Inheritable, &inheritable)
        .context("setting inheritable capabilities")?;
    caps::clear(None, CapSet::Ambient).context("clearing ambient capabilities")?;
    // The kernel keeps the ambient set within permitted ∩ inheritable. Bundles often list
    // ambient capabilities without inheritable ones (runc's own `spec --rootless` does); like
    // runc, those are left out rather than failing the container.
    for cap in ambient
        .iter()
        .filter(|c| permitted.contains(c) && inheritable.contains(c))
    {
        caps::raise(None, CapSet::Ambient, *cap)
            .with_context(|| format!("raising ambient capability {cap}"))?;
    }
    Ok(())
}

fn resource(typ: PosixRlimitType) -> (Resource, &'static str) {
    match typ {
        PosixRlimitType::RlimitCpu => (Resource::RLIMIT_CPU, "RLIMIT_CPU"),
        PosixRlimitType::RlimitFsize => (Resource::RLIMIT_FSIZE, "RLIMIT_FSIZE"),
        PosixRlimitType::RlimitData => (Resource::RLIMIT_DATA, "RLIMIT_DATA"),
        PosixRlimitType::RlimitStack => (Resource::RLIMIT_STACK, "RLIMIT_STACK"),
        PosixRlimitType::RlimitCore => (Resource::RLIMIT_CORE, "RLIMIT_CORE"),
        PosixRlimitType::RlimitRss => (Resource::RLIMIT_RSS, "RLIMIT_RSS"),
        PosixRlimitType::RlimitNproc => (Resource::RLIMIT_NPROC, "RLIMIT_NPROC"),
        PosixRlimitType::RlimitNofile => (Resource::RLIMIT_NOFILE, "RLIMIT_NOFILE"),
        PosixRlimitType::RlimitMemlock => (Resource::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK"),
        PosixRlimitType::RlimitAs => (Resource::RLIMIT_AS, "RLIMIT_AS"),
        PosixRlimitType::RlimitLocks => (Resource::RLIMIT_LOCKS, "RLIMIT_LOCKS"),
        PosixRlimitType::RlimitSigpending => (Resource::RLIMIT_SIGPENDING, "RLIMIT_SIGPENDING"),
        PosixRlimitType::RlimitMsgqueue => (Resource::RLIMIT_MSGQUEUE, "RLIMIT_MSGQUEUE"),
        PosixRlimitType::RlimitNice => (Resource::RLIMIT_NICE, "RLIMIT_NICE"),
        PosixRlimitType::RlimitRtprio => (Resource::RLIMIT_RTPRIO, "RLIMIT_RTPRIO"),
        PosixRlimitType::RlimitRttime => (Resource::RLIMIT_RTTIME, "RLIMIT_RTTIME"),
    }
}

/// Sets the process's resource limits (`process.rlimits`). A hard limit above the one nook runs
/// with needs privilege outside the user namespace, so it is refused with that explanation.
pub fn set_rlimits(rlimits: &[PosixRlimit]) -> Result<()> {
    for limit in rlimits {
        let (res, name) = resource(limit.typ());
        setrlimit(res, limit.soft(), limit.hard()).with_context(|| {
            format!(
                "process.rlimits: setting {name} to soft {} hard {} (a rootless container cannot \
                 raise a hard limit above the caller's; check `ulimit -H`)",
                limit.soft(),
                limit.hard()
            )
        })?;
    }
    Ok(())
}

pub fn set_no_new_privs() -> Result<()> {
    nix::sys::prctl::set_no_new_privs().context("prctl(PR_SET_NO_NEW_PRIVS)")
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> ScmpAction {
    match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => {
            ScmpAction::Errno(errno.unwrap_or(libc::EPERM as u32) as i32)
        }
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno.unwrap_or(0) as u16),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
    }
}

fn arch(arch: Arch) -> Option<ScmpArch> {
    Some(match arch {
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        _ => return None,
    })
}

fn compare(arg: &oci_spec::runtime::LinuxSeccompArg) -> ScmpArgCompare {
    let index = arg.index() as u32;
    let value = arg.value();
    let op = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // OCI puts the mask in `value` and the operand in `valueTwo`, as libseccomp's C API does.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            return ScmpArgCompare::new(
                index,
                ScmpCompareOp::MaskedEqual(value),
                arg.value_two().unwrap_or(0),
            )
        }
    };
    ScmpArgCompare::new(index, op, value)
}

/// Compiles the spec's seccomp profile for this machine. Names libseccomp does not know (newer
/// than the installed library) are skipped: they fall to the default action.
/// libseccomp's binary-tree layout. The kernel walks the filter once per syscall number when it
/// loads it (to cache the always-allowed ones), so a linear filter of several hundred rules
/// costs about a millisecond per container start; the tree costs a quarter of that, and each
/// syscall then also runs fewer instructions.
const OPTIMIZE_LEVEL: u32 = 2;

fn compile_seccomp(profile: &LinuxSeccomp) -> Result<ScmpFilterContext> {
    let default = action(profile.default_action(), profile.default_errno_ret());
    let mut filter = ScmpFilterContext::new(default).context("seccomp_init")?;
    filter
        .set_ctl_optimize(OPTIMIZE_LEVEL)
        .context("asking libseccomp for a binary-tree filter (SCMP_FLTATR_CTL_OPTIMIZE)")?;
    let native = ScmpArch::native();
    for a in profile
        .architectures()
        .iter()
        .flatten()
        .filter_map(|a| arch(*a))
    {
        let compatible = matches!(
            (native, a),
            (ScmpArch::X8664, ScmpArch::X86 | ScmpArch::X32) | (ScmpArch::Aarch64, ScmpArch::Arm)
        );
        if a != native && compatible {
            filter
                .add_arch(a)
                .with_context(|| format!("adding seccomp architecture {a:?}"))?;
        }
    }
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret());
        if act == default {
            continue;
        }
        let conditions: Vec<ScmpArgCompare> = rule.args().iter().flatten().map(compare).collect();
        for name in rule.names() {
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let added = if conditions.is_empty() {
                filter.add_rule(act, syscall)
            } else {
                filter.add_rule_conditional(act, syscall, &conditions)
            };
            added.with_context(|| format!("adding the seccomp rule for {name}"))?;
        }
    }
    Ok(filter)
}

/// A seccomp profile compiled to the kernel's BPF, ready to load.
pub struct SeccompProgram {
    instructions: Vec<libc::sock_filter>,
    /// `SECCOMP_FILTER_FLAG_*` from the profile's `flags`.
    flags: libc::c_ulong,
}

impl SeccompProgram {
    fn from_bytes(bytes: &[u8]) -> Option<SeccompProgram> {
        if bytes.is_empty() || bytes.len() % 8 != 0 {
            return None;
        }
        let instructions = bytes
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Some(SeccompProgram {
            instructions,
            flags: 0,
        })
    }
}

/// The profile's `flags`, as the kernel numbers them. TSYNC is accepted and changes nothing:
/// the filter is loaded while the process has one thread.
fn seccomp_flags(profile: &LinuxSeccomp) -> Result<libc::c_ulong> {
    let mut bits = 0;
    for flag in profile.flags().iter().flatten() {
        let name = serde_json::to_value(flag)?;
        let name = name.as_str().unwrap_or_default();
        bits |= match name {
            "SECCOMP_FILTER_FLAG_TSYNC" => 0,
            "SECCOMP_FILTER_FLAG_LOG" => libc::SECCOMP_FILTER_FLAG_LOG,
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            other => bail!("field `linux.seccomp.flags`: {other:?} is not a flag nook knows"),
        };
    }
    Ok(bits)
}

/// The flags `nook features` lists as known and supported.
pub const SECCOMP_FLAGS: [&str; 3] = [
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
];

/// FNV-1a: a stable hash for cache keys (std's hasher may change between releases).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash = 0xcbf29ce484222325u64;
    for part in parts {
        for byte in *part {
            hash ^= *byte as u64;
            hash = hash.wrapping_mul(0x100000001b3);
        }
        hash = (hash ^ 0xff).wrapping_mul(0x100000001b3);
    }
    hash
}

fn seccomp_cache_dir() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|d| !d.is_empty())
                .map(|h| std::path::PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("nook/seccomp"))
}

/// The BPF program of `profile`. Compiling a profile of several hundred rules costs
/// milliseconds, so the result is cached per profile, libseccomp version and nook version.
pub fn seccomp_program(profile: &LinuxSeccomp) -> Result<SeccompProgram> {
    let flags = seccomp_flags(profile)?;
    let mut program = compiled_program(profile)?;
    program.flags = flags;
    Ok(program)
}

fn compiled_program(profile: &LinuxSeccomp) -> Result<SeccompProgram> {
    let json = serde_json::to_vec(profile)?;
    let version = libseccomp::ScmpVersion::current()
        .map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro))
        .unwrap_or_default();
    let key = fnv1a(&[
        &json,
        version.as_bytes(),
        env!("CARGO_PKG_VERSION").as_bytes(),
        std::env::consts::ARCH.as_bytes(),
        OPTIMIZE_LEVEL.to_string().as_bytes(),
    ]);
    let cached = seccomp_cache_dir().map(|d| d.join(format!("{key:016x}.bpf")));
    if let Some(program) = cached
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|bytes| SeccompProgram::from_bytes(&bytes))
    {
        return Ok(program);
    }
    let filter = compile_seccomp(profile)?;
    let memfd =
        nix::sys::memfd::memfd_create(c"nook-seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .context("memfd_create")?;
    filter
        .export_bpf(&memfd)
        .context("generating the seccomp BPF program (seccomp_export_bpf)")?;
    let mut file = std::fs::File::from(memfd);
    use std::io::{Read, Seek};
    file.rewind()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let program = SeccompProgram::from_bytes(&bytes)
        .context("libseccomp produced an empty or malformed program")?;
    if let Some(path) = cached {
        // A cache that cannot be written only costs the next run the compile.
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = crate::fsutil::write_atomic(&path, &bytes, false);
    }
    Ok(program)
}

impl SeccompProgram {
    /// Whether some rule answers with `SECCOMP_RET_USER_NOTIF`: the program then needs a
    /// supervisor ([`load_seccomp_supervised`]).
    pub fn notifies(&self) -> bool {
        const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
        const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
        self.instructions
            .iter()
            .any(|i| i.code == BPF_RET_K && i.k & 0xffff_0000 == SECCOMP_RET_USER_NOTIF)
    }
}

/// Loads the program with a listener for its notified calls, which the caller hands to the
/// supervisor.
pub fn load_seccomp_supervised(program: &SeccompProgram) -> Result<std::os::fd::OwnedFd> {
    crate::sys::seccomp_set_filter_listener(&program.instructions).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EINVAL) {
            " (root emulation's supervisor needs seccomp user notification, Linux 5.5 or later; \
             use --root-emulation seccomp here)"
        } else {
            ""
        };
        anyhow::anyhow!(
            "loading the seccomp filter with a listener (seccomp(SECCOMP_SET_MODE_FILTER, \
             SECCOMP_FILTER_FLAG_NEW_LISTENER)): {e}{hint}"
        )
    })
}

/// Loads the program into this process; everything it execs keeps it.
pub fn load_seccomp(program: &SeccompProgram) -> Result<()> {
    crate::sys::seccomp_set_filter(&program.instructions, program.flags)
        .context("loading the seccomp filter (seccomp(SECCOMP_SET_MODE_FILTER))")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_capability_names_convert_to_kernel_capabilities() {
        let set: HashSet<Capability> = crate::spec::DEFAULT_CAPABILITIES.into_iter().collect();
        let caps = to_caps(&Some(set)).unwrap();
        assert_eq!(caps.len(), 11);
        assert!(caps.contains(&Cap::CAP_SYS_CHROOT));
        assert!(caps.contains(&Cap::CAP_NET_BIND_SERVICE));
        assert!(!caps.contains(&Cap::CAP_SYS_ADMIN));
    }

    #[test]
    fn builtin_profile_compiles_to_bpf() {
        let profile: LinuxSeccomp =
            serde_json::from_str(crate::spec::DEFAULT_SECCOMP_PROFILE).unwrap();
        compile_seccomp(&profile).unwrap();
        let program = seccomp_program(&profile).unwrap();
        // Several hundred rules make a program far longer than a trivial filter.
        assert!(
            program.instructions.len() > 100,
            "{}",
            program.instructions.len()
        );
    }

    #[test]
    fn cache_keys_change_with_any_part() {
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_eq!(fnv1a(&[b"x"]), fnv1a(&[b"x"]));
    }
}
