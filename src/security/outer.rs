//! The container nook itself may run in (a CI job's): what its engine took away — a seccomp
//! filter, capabilities, /proc paths masked, devices and helpers missing — and the flag of the
//! outer engine that gives each back. Read by the launch for its errors and by `nook info`.

use std::fs;
use std::path::Path;

use crate::idmap::Standing;

/// One thing the outer environment withholds, and how to lift it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Restriction {
    pub name: &'static str,
    /// What nook does about it.
    pub effect: String,
    /// The outer engine's flag (or the host's change) that lifts it.
    pub lift: String,
}

/// The `Seccomp:` mode of this process: 2 when a filter is in force.
pub fn seccomp_filtered() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .is_some_and(status_has_filter)
}

fn status_has_filter(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .is_some_and(|mode| mode.trim() == "2")
}

/// Whether nook runs inside an engine's container: root only in a nested user namespace, or
/// the marker files podman and docker leave.
pub fn in_container(standing: &Standing) -> bool {
    matches!(standing, Standing::NestedRoot(_))
        || Path::new("/run/.containerenv").exists()
        || Path::new("/.dockerenv").exists()
        || fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| !crate::idmap::is_initial_map(&m))
}

/// The mounts over paths inside /proc, from a mountinfo text: what keeps the kernel from
/// giving a user namespace a new procfs. binfmt_misc sits on a permanently empty directory,
/// which the kernel does not count.
pub fn masked_proc_paths(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with("/proc/") && *point != "/proc/sys/fs/binfmt_misc")
        .map(String::from)
        .collect()
}

/// Why `clone`/`unshare` of a user namespace answered `errno`, told apart as far as the
/// system shows: the sysctls that disable user namespaces, else an outer seccomp filter.
pub fn userns_refusal(errno: i32) -> String {
    let read = |p: &str| fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    let max = read("/proc/sys/user/max_user_namespaces");
    if errno == libc::ENOSPC || errno == libc::EUSERS || max.as_deref() == Some("0") {
        return format!(
            "the user namespace limit is reached (user.max_user_namespaces = {}): an \
             administrator can raise it with `sysctl -w user.max_user_namespaces=15000`",
            max.as_deref().unwrap_or("?")
        );
    }
    if errno != libc::EPERM {
        return String::new();
    }
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0")
        && !nix::unistd::getuid().is_root()
    {
        return "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = \
                0): an administrator can enable them with `sysctl -w \
                kernel.unprivileged_userns_clone=1`"
            .into();
    }
    if seccomp_filtered() {
        return "the seccomp profile of the container nook runs in refuses new user namespaces \
                (Docker's default profile does unless the container has CAP_SYS_ADMIN): run \
                the outer container with `--security-opt seccomp=unconfined`, with a profile \
                that allows clone/unshare of user namespaces, or (Docker) with `--cap-add \
                SYS_ADMIN`"
            .into();
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        return "AppArmor restricts unprivileged user namespaces \
                (kernel.apparmor_restrict_unprivileged_userns = 1): an administrator can allow \
                them for nook with an AppArmor profile granting `userns`"
            .into();
    }
    "user namespaces seem disabled here; an administrator can enable them with `sysctl -w \
     user.max_user_namespaces=15000` (and on Debian kernels `kernel.unprivileged_userns_clone=1`)"
        .into()
}

/// What an EPERM from a call the container's own namespaces permit means: with a filter in
/// force, the outer seccomp profile refused it.
pub fn seccomp_refused(call: &str) -> Option<String> {
    seccomp_filtered().then(|| {
        format!(
            "the seccomp profile of the container nook runs in refuses {call} (podman's and \
             Docker's default profiles do without CAP_SYS_ADMIN); run the outer container with \
             `--cap-add SYS_ADMIN` or `--security-opt seccomp=unconfined`, or a profile that \
             allows {call}"
        )
    })
}

/// Every restriction of the outer container nook can see from inside it; outside a container
/// only a masked /proc, the one that changes what containers get.
pub fn restrictions(standing: &Standing, fuse_problem: Option<&str>) -> Vec<Restriction> {
    let mut found = Vec::new();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let masked = masked_proc_paths(&mountinfo);
    if !masked.is_empty() {
        found.push(Restriction {
            name: "outer /proc",
            effect: format!(
                "{} path(s) of /proc are masked ({}…): the kernel refuses a new procfs, so \
                 containers get the outer /proc read-only, masks kept, and see the outer pid \
                 namespace's processes",
                masked.len(),
                masked
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            lift: "`--security-opt unmask=/proc/*` (podman), `--security-opt \
                   systempaths=unconfined` (docker)"
                .into(),
        });
    }
    if !in_container(standing) {
        return found;
    }
    if let Some(problem) = fuse_problem {
        found.push(Restriction {
            name: "outer /dev/fuse",
            effect: format!("{problem}: the fuse backend cannot run"),
            lift: "`--device /dev/fuse` (and fuse-overlayfs in the outer image)".into(),
        });
    }
    // The outer container's root maps the ids it holds without the helper.
    if *standing == Standing::User && crate::idmap::find_in_path("newuidmap").is_none() {
        found.push(Restriction {
            name: "outer newuidmap",
            effect: "only your own uid and gid are mapped (root emulated)".into(),
            lift: "run as the outer container's root, or install `uidmap` in its image with \
                   a range in /etc/subuid and /etc/subgid"
                .into(),
        });
    }
    if seccomp_filtered() {
        found.push(Restriction {
            name: "outer seccomp",
            effect: "a filter decides which calls nook may make: podman's default profile \
                     refuses sethostname without CAP_SYS_ADMIN (containers keep the outer \
                     hostname, with a warning); Docker's refuses setns and new user namespaces \
                     too"
            .into(),
            lift: "`--security-opt seccomp=unconfined`, a profile allowing \
                   unshare/clone/mount/setns/sethostname, or `--cap-add SYS_ADMIN`"
                .into(),
        });
    }
    if let Standing::NestedRoot(n) = standing {
        if !n.sys_admin {
            found.push(Restriction {
                name: "outer CAP_SYS_ADMIN",
                effect: "nook makes a user namespace of its own and mounts there".into(),
                lift: "nothing needed; `--cap-add SYS_ADMIN` also relaxes the engines' \
                       default seccomp profiles"
                    .into(),
            });
        }
        if !n.can_map {
            found.push(Restriction {
                name: "outer CAP_SETUID",
                effect: "only uid 0 and gid 0 are mapped (root emulated)".into(),
                lift: "`--cap-add SETUID --cap-add SETGID`".into(),
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_proc_paths_are_mounts_below_proc_but_binfmt_misc() {
        let mountinfo = "\
22 1 0:5 / /proc rw,nosuid shared:12 - proc proc rw
23 22 0:20 / /proc/sys/fs/binfmt_misc rw - autofs systemd-1 rw
30 22 0:31 / /proc/acpi ro - tmpfs tmpfs ro
31 22 0:6 /null /proc/kcore ro - devtmpfs udev ro
40 1 0:32 / /sys ro - sysfs sysfs ro
";
        assert_eq!(masked_proc_paths(mountinfo), ["/proc/acpi", "/proc/kcore"]);
        assert!(masked_proc_paths("22 1 0:5 / /proc rw - proc proc rw\n").is_empty());
    }

    #[test]
    fn a_filter_shows_as_seccomp_mode_two() {
        assert!(status_has_filter(
            "Name:\tsh\nSeccomp:\t2\nSeccomp_filters:\t1\n"
        ));
        assert!(!status_has_filter("Name:\tsh\nSeccomp:\t0\n"));
        assert!(!status_has_filter(""));
    }
}
