//! Root emulation for containers whose user namespace maps one id (no subordinate range).
//!
//! There, root inside owns every file but cannot give a file to anyone else, switch to another
//! user or make a device node: the ids do not exist. Package managers and build recipes do all
//! three as a matter of course (`dpkg` chowns what it unpacks, apt drops to `_apt`, `useradd`
//! chowns the new home) and die on the first EPERM or EINVAL. Tier 1, here, adds rules to the
//! container's seccomp profile that make those calls return success without acting, as
//! Charliecloud's `--seccomp` mode does. Nothing faked acts, so nothing faked grants anything:
//! after a faked `setuid(1000)` the process is still the caller, with the caller's rights.
//!
//! apt checks that its drop to `_apt` took effect, so a container with emulation gets an apt
//! drop-in (one of nook's generated files, never written into the image) that keeps apt's
//! sandbox as root.
//!
//! Tier 2 (`--root-emulation notify`) sends the chown family and the stat family to a
//! supervisor in the nook process instead ([`super::supervisor`], seccomp user notification):
//! a chown is recorded on the file as a `user.rootlesscontainers` attribute, a stat of a file
//! with a record answers with the recorded owner, and `commit` and `export` write it. With
//! `--root-emulation-report`, every faked call goes to the supervisor, which counts it.

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

use crate::idmap::IdMapping;

/// `--root-emulation` and the config key `root_emulation`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// On when the container maps one id and runs as root inside.
    #[default]
    Auto,
    /// On whatever the mapping.
    Seccomp,
    /// On whatever the mapping, with a supervisor that records chown's owners (tier 2).
    Notify,
    /// Never.
    Off,
}

impl Mode {
    pub fn parse(text: &str) -> Result<Mode> {
        Ok(match text {
            "auto" => Mode::Auto,
            "seccomp" => Mode::Seccomp,
            "notify" => Mode::Notify,
            "off" => Mode::Off,
            other => bail!("root emulation must be auto, seccomp, notify or off, not {other:?}"),
        })
    }
}

/// Whether a container gets root emulation, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub on: bool,
    pub reason: String,
    /// What the supervisor does; nothing without tier 2 or the report.
    pub supervision: Supervision,
}

/// The supervisor's part of the emulation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Supervision {
    /// Tier 2: chown's owners are recorded, and stat answers with them.
    #[serde(default)]
    pub owners: bool,
    /// `--root-emulation-report`: every faked call is counted.
    #[serde(default)]
    pub count: bool,
}

impl Supervision {
    pub fn any(self) -> bool {
        self.owners || self.count
    }
}

/// Decides for a container that runs as `uid` inside with `idmap`.
pub fn decide(mode: Mode, idmap: &IdMapping, uid: u32) -> Verdict {
    let one_id = idmap.uids.iter().map(|r| r.size as u64).sum::<u64>() <= 1;
    let (on, reason) = match mode {
        Mode::Off => (false, "turned off (--root-emulation off)".to_string()),
        Mode::Seccomp => (true, "asked for (--root-emulation seccomp)".to_string()),
        Mode::Notify => (
            true,
            "asked for (--root-emulation notify): chown is recorded and stat shows the recorded \
             owner; set*id, setgroups, capset and device mknod succeed without acting"
                .to_string(),
        ),
        Mode::Auto if !one_id => (
            false,
            if idmap.writer == crate::idmap::MapWriter::Privileged {
                "not needed: the container maps the ids the namespace nook runs in holds, so \
                 they are real"
                    .to_string()
            } else {
                "not needed: the container maps a subordinate range, so its ids are real"
                    .to_string()
            },
        ),
        Mode::Auto if uid != 0 => (
            false,
            format!("not needed: the container runs as uid {uid}, not as root"),
        ),
        Mode::Auto => (
            true,
            "the container maps only your own id: chown, set*id, setgroups, capset and device \
             mknod succeed without acting"
                .to_string(),
        ),
    };
    Verdict {
        on,
        reason,
        supervision: Supervision {
            owners: on && mode == Mode::Notify,
            count: false,
        },
    }
}

/// The chown family: recorded by the supervisor in tier 2.
pub const CHOWN: &[&str] = &[
    "chown", "chown32", "fchown", "fchown32", "fchownat", "lchown", "lchown32",
];

/// The stat family of x86_64 and aarch64: answered by the supervisor in tier 2, so that a
/// recorded owner shows. Calls of other architectures are passed on to the kernel.
pub const STAT: &[&str] = &["stat", "lstat", "fstat", "newfstatat", "statx"];

/// Calls that succeed without acting. The 32-bit names cover x86 programs on x86_64, as the
/// profile's own architectures do; libseccomp skips a name an architecture lacks.
const FAKED: &[&str] = &[
    "chown",
    "chown32",
    "fchown",
    "fchown32",
    "fchownat",
    "lchown",
    "lchown32",
    "setuid",
    "setuid32",
    "setgid",
    "setgid32",
    "setreuid",
    "setreuid32",
    "setregid",
    "setregid32",
    "setresuid",
    "setresuid32",
    "setresgid",
    "setresgid32",
    "setfsuid",
    "setfsuid32",
    "setfsgid",
    "setfsgid32",
    "setgroups",
    "setgroups32",
    "capset",
];

/// `mknod(path, mode, dev)` and `mknodat(dirfd, path, mode, dev)`: the index of `mode`.
const MKNOD: &[(&str, usize)] = &[("mknod", 1), ("mknodat", 2)];

const S_IFMT: u64 = libc::S_IFMT as u64;

/// Adds the emulation to `profile`: the faked calls leave the profile's own rules and return
/// 0; `mknod` of a character or block device returns 0 and makes nothing, while regular
/// files, fifos and sockets are still made for real. Every other rule stays as it was. With
/// `supervision`, the calls it needs go to the supervisor instead (`SCMP_ACT_NOTIFY`).
pub fn add_to_profile(profile: &mut LinuxSeccomp, supervision: Supervision) {
    let mknod_names: Vec<&str> = MKNOD.iter().map(|(name, _)| *name).collect();
    // A stat the profile denies stays denied.
    let allowed = |name: &str| {
        profile.syscalls().iter().flatten().any(|r| {
            r.action() == LinuxSeccompAction::ScmpActAllow
                && r.args().is_none()
                && r.names().iter().any(|a| a == name)
        })
    };
    let stat: Vec<&str> = STAT
        .iter()
        .copied()
        .filter(|n| {
            supervision.owners
                && (profile.default_action() == LinuxSeccompAction::ScmpActAllow || allowed(n))
        })
        .collect();
    let moved = |n: &String| {
        FAKED.contains(&n.as_str())
            || mknod_names.contains(&n.as_str())
            || stat.contains(&n.as_str())
    };
    // Most rules name none of the moved calls: those are cloned once, as they are.
    let mut syscalls: Vec<LinuxSyscall> = profile
        .syscalls()
        .iter()
        .flatten()
        .filter_map(|rule| {
            if !rule.names().iter().any(moved) {
                return Some(rule.clone());
            }
            let names: Vec<String> = rule.names().iter().filter(|n| !moved(n)).cloned().collect();
            (!names.is_empty()).then(|| {
                let mut rule = rule.clone();
                rule.set_names(names);
                rule
            })
        })
        .collect();
    let faked = |notified: bool| {
        if notified {
            (LinuxSeccompAction::ScmpActNotify, None)
        } else {
            (LinuxSeccompAction::ScmpActErrno, Some(0))
        }
    };
    let (chown, others): (Vec<&str>, Vec<&str>) = FAKED.iter().partition(|n| CHOWN.contains(n));
    let (action, errno) = faked(supervision.any());
    syscalls.push(rule(&chown, action, errno, None));
    let (action, errno) = faked(supervision.count);
    syscalls.push(rule(&others, action, errno, None));
    if !stat.is_empty() {
        syscalls.push(rule(&stat, LinuxSeccompAction::ScmpActNotify, None, None));
    }
    for (name, index) in MKNOD {
        for kind in [libc::S_IFCHR, libc::S_IFBLK] {
            syscalls.push(rule(
                &[name],
                action,
                errno,
                Some(file_kind(*index, kind as u64)),
            ));
        }
        // A mode without a file type makes a regular file, as S_IFREG does.
        for kind in [0, libc::S_IFREG, libc::S_IFIFO, libc::S_IFSOCK] {
            syscalls.push(rule(
                &[name],
                LinuxSeccompAction::ScmpActAllow,
                None,
                Some(file_kind(*index, kind as u64)),
            ));
        }
    }
    profile.set_syscalls(Some(syscalls));
}

/// The supervisor answers with `SECCOMP_USER_NOTIF_FLAG_CONTINUE` (Linux 5.5); on an older
/// kernel a call it passes on would fail, so tier 2 and the report are refused there.
pub fn check_kernel_supports_supervisor() -> Result<()> {
    let uname = nix::sys::utsname::uname().context("uname")?;
    let release = uname.release().to_string_lossy().into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version < (5, 5) {
        bail!(
            "--root-emulation notify and --root-emulation-report need seccomp user notification \
             with SECCOMP_USER_NOTIF_FLAG_CONTINUE (Linux 5.5 or later); this kernel is \
             {release}. Use --root-emulation seccomp"
        );
    }
    Ok(())
}

/// The supervision a profile made by [`add_to_profile`] asks for, read back from its rules
/// (`nook exec` has the container's spec, not its flags).
pub fn supervision_of(profile: &LinuxSeccomp) -> Supervision {
    let notified = |name: &str| {
        profile.syscalls().iter().flatten().any(|r| {
            r.action() == LinuxSeccompAction::ScmpActNotify && r.names().iter().any(|n| n == name)
        })
    };
    Supervision {
        owners: notified("statx"),
        count: notified("setuid"),
    }
}

fn rule(
    names: &[&str],
    action: LinuxSeccompAction,
    errno: Option<u32>,
    arg: Option<LinuxSeccompArg>,
) -> LinuxSyscall {
    let mut rule = LinuxSyscall::default();
    rule.set_names(names.iter().map(|n| n.to_string()).collect());
    rule.set_action(action);
    rule.set_errno_ret(errno);
    rule.set_args(arg.map(|a| vec![a]));
    rule
}

/// Argument `index`, masked with S_IFMT, equals `kind`.
fn file_kind(index: usize, kind: u64) -> LinuxSeccompArg {
    // OCI's masked comparison: `value` is the mask, `valueTwo` the operand.
    LinuxSeccompArgBuilder::default()
        .index(index)
        .value(S_IFMT)
        .value_two(kind)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .build()
        .expect("every field of the argument is set")
}

/// Where apt finds the drop-in, if the image has apt.
pub const APT_DROP_IN: &str = "/etc/apt/apt.conf.d/99nook-root-emulation";

/// Its text: apt's sandbox user stays root, because the drop to `_apt` is faked and apt checks it.
pub const APT_DROP_IN_TEXT: &str = "// Written by nook: root is emulated in this container (its \
user namespace maps one id), so apt's\n// switch to the _apt user would be faked, and apt checks \
it. Its downloads run as root instead.\nAPT::Sandbox::User \"root\";\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idmap::{IdRange, MapWriter};

    fn mapping(sizes: &[u32]) -> IdMapping {
        let ranges: Vec<IdRange> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| IdRange {
                container: i as u32,
                host: 1000 + 100_000 * i as u32,
                size,
            })
            .collect();
        IdMapping {
            uids: ranges.clone(),
            gids: ranges,
            writer: MapWriter::Direct,
        }
    }

    #[test]
    fn auto_is_on_only_for_root_in_a_one_id_map() {
        assert!(decide(Mode::Auto, &mapping(&[1]), 0).on);
        assert!(!decide(Mode::Auto, &mapping(&[1, 65536]), 0).on);
        assert!(!decide(Mode::Auto, &mapping(&[1]), 1000).on);
        assert!(decide(Mode::Seccomp, &mapping(&[1, 65536]), 0).on);
        let tier2 = decide(Mode::Notify, &mapping(&[1]), 0);
        assert!(tier2.on && tier2.supervision.owners);
        assert!(!decide(Mode::Auto, &mapping(&[1]), 0).supervision.any());
        assert!(!decide(Mode::Off, &mapping(&[1]), 0).on);
    }

    #[test]
    fn modes_parse_and_mistakes_name_the_choices() {
        assert_eq!(Mode::parse("seccomp").unwrap(), Mode::Seccomp);
        let err = Mode::parse("fakeroot").unwrap_err().to_string();
        assert!(err.contains("auto, seccomp, notify or off"), "{err}");
        assert_eq!(Mode::parse("notify").unwrap(), Mode::Notify);
    }

    /// Each (name, action, errno, arguments) of a profile, for the names emulation leaves alone.
    fn untouched_rules(profile: &LinuxSeccomp) -> Vec<String> {
        let mut out: Vec<String> = profile
            .syscalls()
            .iter()
            .flatten()
            .flat_map(|r| {
                r.names()
                    .iter()
                    .filter(|n| !FAKED.contains(&n.as_str()) && !n.starts_with("mknod"))
                    .map(move |n| {
                        format!("{n} {:?} {:?} {:?}", r.action(), r.errno_ret(), r.args())
                    })
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_builtin_profile_with_emulation_keeps_its_other_rules_and_compiles() {
        let mut profile: LinuxSeccomp =
            serde_json::from_str(crate::spec::DEFAULT_SECCOMP_PROFILE).unwrap();
        let before = untouched_rules(&profile);
        add_to_profile(&mut profile, Supervision::default());
        assert_eq!(untouched_rules(&profile), before);
        let rules = profile.syscalls().clone().unwrap();
        for name in ["setuid", "setgroups", "fchownat", "capset"] {
            let matching: Vec<_> = rules
                .iter()
                .filter(|r| r.names().iter().any(|n| n == name))
                .collect();
            assert_eq!(matching.len(), 1, "{name}");
            assert_eq!(matching[0].action(), LinuxSeccompAction::ScmpActErrno);
            assert_eq!(matching[0].errno_ret(), Some(0));
        }
        crate::security::seccomp_program(&profile).expect("the emulating profile compiles");
    }

    fn action_of(profile: &LinuxSeccomp, name: &str) -> Vec<LinuxSeccompAction> {
        let rules = profile.syscalls().clone().unwrap();
        rules
            .iter()
            .filter(|r| r.names().iter().any(|n| n == name))
            .map(|r| r.action())
            .collect()
    }

    #[test]
    fn tier_2_and_the_report_send_what_they_need_to_the_supervisor() {
        let base: LinuxSeccomp =
            serde_json::from_str(crate::spec::DEFAULT_SECCOMP_PROFILE).unwrap();
        let notify = LinuxSeccompAction::ScmpActNotify;
        let mut tier2 = base.clone();
        add_to_profile(
            &mut tier2,
            Supervision {
                owners: true,
                count: false,
            },
        );
        assert_eq!(action_of(&tier2, "fchownat"), [notify]);
        assert_eq!(action_of(&tier2, "statx"), [notify]);
        assert_eq!(
            action_of(&tier2, "setuid"),
            [LinuxSeccompAction::ScmpActErrno]
        );
        let mut counted = base.clone();
        add_to_profile(
            &mut counted,
            Supervision {
                owners: false,
                count: true,
            },
        );
        assert_eq!(action_of(&counted, "setuid"), [notify]);
        assert_eq!(action_of(&counted, "lchown"), [notify]);
        assert!(action_of(&counted, "statx")
            .iter()
            .all(|a| *a == LinuxSeccompAction::ScmpActAllow));
        assert!(action_of(&counted, "mknodat").contains(&notify));
        for (profile, owners, count) in [(&tier2, true, false), (&counted, false, true)] {
            crate::security::seccomp_program(profile).expect("compiles");
            assert_eq!(supervision_of(profile), Supervision { owners, count });
        }
    }
}
