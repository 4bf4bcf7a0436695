//! `nook info`: what this machine offers nook, each missing piece with the command that fixes it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

use crate::cli::{InfoArgs, InfoFormat};
use crate::idmap::{find_in_path, Caller, IdMapping, MapWriter, SubRange, UsernsMode};
use crate::launch::run_in_userns;
use crate::rootfs::backend::{self, Choice, StorageFs};
use crate::security::root_emulation;
use crate::storage::container::storage_root;
use crate::{config, rootfs::fuse};

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Level {
    Ok,
    /// Missing, but nook works without it here (it falls back, and says how).
    Warn,
    /// Missing, and nook needs it: `nook info` exits 1.
    Fail,
}

/// One fact about the machine; `fix` is set when the check did not pass.
#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    level: Level,
    value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

fn good(name: &'static str, value: impl Into<String>) -> Check {
    Check {
        name,
        ok: true,
        level: Level::Ok,
        value: value.into(),
        fix: None,
    }
}

fn bad(name: &'static str, value: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        ok: false,
        level: Level::Fail,
        value: value.into(),
        fix: Some(fix.into()),
    }
}

/// A check nook can do without: what is missing, what nook does instead, and the fix.
fn warn(name: &'static str, value: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        level: Level::Warn,
        ..bad(name, value, fix)
    }
}

pub fn info(args: &InfoArgs) -> Result<i32> {
    let caller = Caller::current();
    let (mapping, _) = IdMapping::for_mode(UsernsMode::Auto, &caller);
    let user = caller
        .name
        .clone()
        .unwrap_or_else(|| caller.uid.to_string());
    let mut checks = vec![kernel(), user_namespaces(&mapping)];
    if caller.privileged {
        checks.extend(root_ids(&caller));
    } else if mapping.writer == MapWriter::Privileged {
        // The root of an outer container maps the ids it holds itself.
        let held = "not needed: nook maps the ids the outer container holds directly";
        checks.extend([good("subordinate ids", held), good("newuidmap", held)]);
    } else {
        checks.extend([
            subordinate_ids("/etc/subuid", "subordinate uids", &user, &caller.subuids),
            subordinate_ids("/etc/subgid", "subordinate gids", &user, &caller.subgids),
            id_map_helper("newuidmap"),
            id_map_helper("newgidmap"),
        ]);
    }
    checks.extend([
        id_mapping(&mapping, &caller),
        root_emulation(&mapping),
        fuse_device(),
        fuse_program(),
        network_helper(),
        tun_device(),
    ]);
    let storage = storage_root();
    let (storage_check, storage_fs) = storage_dir(storage.as_ref().ok());
    checks.push(storage_check);
    checks.push(runtime_dir());
    let (backend_check, config_source) = auto_backend(storage_fs.as_ref(), &mapping);
    checks.push(backend_check);
    checks.push(cgroup_delegation());
    checks.push(seccomp());
    checks.push(standing(&caller));
    checks.extend(outer_restrictions(&caller));
    checks.extend(kernel_calls());

    match args.format {
        InfoFormat::Json => {
            let out = json!({
                "version": env!("CARGO_PKG_VERSION"),
                "config": config_source,
                "checks": checks,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        InfoFormat::Text => {
            println!("nook {}", env!("CARGO_PKG_VERSION"));
            println!(
                "config: {}",
                config_source.as_deref().unwrap_or("built-in defaults")
            );
            let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
            for c in &checks {
                let mark = match c.level {
                    Level::Ok => "ok  ",
                    Level::Warn => "warn",
                    Level::Fail => "FAIL",
                };
                println!("{mark} {:<width$}  {}", c.name, c.value);
                if let Some(fix) = &c.fix {
                    println!("     {:<width$}  fix: {fix}", "");
                }
            }
        }
    }
    let failed = checks.iter().any(|c| c.level == Level::Fail);
    Ok(if failed { 1 } else { 0 })
}

fn kernel() -> Check {
    match nix::sys::utsname::uname() {
        Ok(u) => good(
            "kernel",
            format!(
                "{} {}",
                u.sysname().to_string_lossy(),
                u.release().to_string_lossy()
            ),
        ),
        Err(e) => bad("kernel", format!("uname: {e}"), "check /proc is mounted"),
    }
}

/// Each newer system call nook uses: present, or missing (a warning) and what nook does
/// instead. None is a failure: each has a fallback for kernels down to 4.18.
fn kernel_calls() -> Vec<Check> {
    crate::sys::kernel_calls()
        .into_iter()
        .map(|call| {
            if call.present {
                good(call.name, format!("yes (Linux {}+)", call.since))
            } else {
                warn(
                    call.name,
                    format!(
                        "no (fallback; the kernel predates Linux {}): {}",
                        call.since, call.without
                    ),
                    format!(
                        "none needed; on Linux {} or later nook uses the call itself",
                        call.since
                    ),
                )
            }
        })
        .collect()
}

fn user_namespaces(mapping: &IdMapping) -> Check {
    let max = fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    match run_in_userns(mapping, || Ok(())) {
        Ok(()) => good(
            "user namespaces",
            format!("usable (user.max_user_namespaces = {max})"),
        ),
        Err(e) => bad(
            "user namespaces",
            format!("{e:#}"),
            if crate::security::outer::seccomp_filtered() {
                "outer engine: `--security-opt seccomp=unconfined`, a profile allowing \
                 clone/unshare of user namespaces, or (Docker) `--cap-add SYS_ADMIN`"
            } else {
                "sudo sysctl -w user.max_user_namespaces=15000 kernel.unprivileged_userns_clone=1"
            },
        ),
    }
}

/// Who nook runs as: the host's root, an outer container's root, or a user.
fn standing(caller: &Caller) -> Check {
    good("running as", caller.standing.describe())
}

/// What the container nook runs in withholds, each with the outer engine's flag that lifts it.
fn outer_restrictions(caller: &Caller) -> Vec<Check> {
    let fuse = fuse::check_device()
        .err()
        .map(|_| "/dev/fuse cannot be opened");
    crate::security::outer::restrictions(&caller.standing, fuse)
        .into_iter()
        .map(|r| warn(r.name, r.effect, format!("outer engine: {}", r.lift)))
        .collect()
}

fn subordinate_ids(file: &str, name: &'static str, user: &str, ranges: &[SubRange]) -> Check {
    if ranges.is_empty() {
        warn(
            name,
            format!(
                "none for {user} in {file}: containers map only your own id, with root emulation"
            ),
            format!(
                "{} (a range no other user has)",
                crate::idmap::add_range_command(user)
            ),
        )
    } else {
        let list: Vec<String> = ranges
            .iter()
            .map(|r| format!("{}+{}", r.start, r.count))
            .collect();
        good(name, format!("{} ({file})", list.join(", ")))
    }
}

/// Root's ranges and why no helper is needed: root writes any map itself.
fn root_ids(caller: &Caller) -> [Check; 2] {
    let list = |ranges: &[SubRange]| {
        ranges
            .iter()
            .map(|r| format!("{}+{}", r.start, r.count))
            .collect::<Vec<_>>()
            .join(", ")
    };
    [
        good(
            "subordinate ids",
            format!(
                "uids {}, gids {} ({})",
                list(&caller.subuids),
                list(&caller.subgids),
                caller.ranges_origin
            ),
        ),
        good(
            "newuidmap/newgidmap",
            "not needed: root writes its containers' id maps itself",
        ),
    ]
}

/// The mapping `--userns auto` gives containers, and why it is not the full one if it is not.
fn id_mapping(mapping: &IdMapping, caller: &Caller) -> Check {
    match (&caller.helpers_unusable, mapping.writer) {
        (Some(why), MapWriter::Direct) => warn(
            "id mapping",
            format!("{} only: {why}", mapping.describe()),
            "sudo apt-get install uidmap, and give the user subordinate ids (see above)",
        ),
        _ => good("id mapping", mapping.describe()),
    }
}

/// What root emulation does for `nook run` containers of this user, by the config's mode.
fn root_emulation(mapping: &IdMapping) -> Check {
    let mode = match config::load() {
        Ok(c) => c.root_emulation,
        Err(e) => {
            return bad(
                "root emulation",
                format!("{e:#}"),
                "correct the config file (see configs/nook.conf)",
            )
        }
    };
    let verdict = root_emulation::decide(mode, mapping, 0);
    let value = if verdict.on {
        let tier2 = if verdict.supervision.owners {
            ""
        } else {
            "; `--root-emulation notify` also records chown's owners for stat, commit and export"
        };
        format!(
            "on for containers run as root: {}; apt, dpkg and useradd work, files stay yours and \
             nothing gains a privilege (`--root-emulation off` to stop){tier2}",
            verdict.reason
        )
    } else {
        format!("off: {}", verdict.reason)
    };
    good("root emulation", value)
}

fn id_map_helper(program: &'static str) -> Check {
    let Some(path) = find_in_path(program) else {
        return warn(
            program,
            "not on PATH: containers map only your own id, with root emulation",
            "sudo apt-get install uidmap",
        );
    };
    let setuid = fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o4000 != 0);
    let file_caps = crate::sys::get_xattr(&path, b"security.capability").is_ok();
    if setuid || file_caps {
        let how = if setuid {
            "setuid"
        } else {
            "file capabilities"
        };
        good(program, format!("{} ({how})", path.display()))
    } else {
        warn(
            program,
            format!(
                "{} has neither setuid nor file capabilities: containers map only your own id",
                path.display()
            ),
            format!("sudo chmod u+s {}", path.display()),
        )
    }
}

/// The helper `--network private` would use, and why.
fn network_helper() -> Check {
    match crate::net::choose(crate::net::Want::Any, !crate::net::host_has_default_route()) {
        Ok((_, program, reason)) => good(
            "network helper",
            format!("{} ({reason})", program.display()),
        ),
        Err(e) => warn(
            "network helper",
            format!("{e:#}"),
            "sudo apt-get install passt (for --network private and -p)",
        ),
    }
}

fn tun_device() -> Check {
    match crate::net::tun_usable() {
        Ok(()) => good("/dev/net/tun", "readable and writable"),
        Err(e) => warn(
            "/dev/net/tun",
            format!("{e} (--network private and -p need it)"),
            "sudo chmod 0666 /dev/net/tun",
        ),
    }
}

fn fuse_device() -> Check {
    match fuse::check_device() {
        Ok(()) => good("/dev/fuse", "readable and writable"),
        Err(e) => warn(
            "/dev/fuse",
            format!("{e:#}: no fuse-overlayfs backend (the backend line says what auto uses)"),
            "sudo modprobe fuse && sudo chmod 0666 /dev/fuse",
        ),
    }
}

fn fuse_program() -> Check {
    match fuse::find_program() {
        None => warn(
            "fuse-overlayfs",
            "not on PATH: no fuse-overlayfs backend (the backend line says what auto uses)",
            "sudo apt-get install fuse-overlayfs",
        ),
        Some(path) => match fuse::version(&path) {
            Ok(v) => good("fuse-overlayfs", format!("{v} ({})", path.display())),
            Err(e) => warn(
                "fuse-overlayfs",
                format!("{e:#}"),
                "sudo apt-get install --reinstall fuse-overlayfs",
            ),
        },
    }
}

fn storage_dir(root: Option<&PathBuf>) -> (Check, Option<StorageFs>) {
    let Some(root) = root else {
        return (
            bad(
                "storage",
                "no storage directory",
                "export NOOK_STORAGE=$HOME/.local/share/nook",
            ),
            None,
        );
    };
    if let Err(e) = crate::fsutil::create_private_dir(root) {
        return (
            bad(
                "storage",
                format!("{e:#}"),
                format!(
                    "mkdir -p {} (or set NOOK_STORAGE to a writable directory)",
                    root.display()
                ),
            ),
            None,
        );
    }
    match StorageFs::of(root) {
        Ok(fs) => {
            let check = match fs.refuses_overlay_upper() {
                None => good(
                    "storage",
                    format!("{} ({})", root.display(), fs.type_name()),
                ),
                Some(why) => bad(
                    "storage",
                    why,
                    "export NOOK_STORAGE=/path/on/a/local/filesystem (or use the fuse or copy \
                     backend, which auto does)",
                ),
            };
            (check, Some(fs))
        }
        Err(e) => (
            bad(
                "storage",
                format!("{e:#}"),
                "set NOOK_STORAGE to a readable directory",
            ),
            None,
        ),
    }
}

fn runtime_dir() -> Check {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("nook"),
        None => PathBuf::from(format!("/tmp/nook-{}", nix::unistd::getuid())),
    };
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    match StorageFs::of(existing) {
        Ok(fs) => good(
            "runtime dir",
            format!("{} ({})", dir.display(), fs.type_name()),
        ),
        Err(e) => bad(
            "runtime dir",
            format!("{e:#}"),
            "export XDG_RUNTIME_DIR=/run/user/$(id -u)",
        ),
    }
}

fn auto_backend(fs: Option<&StorageFs>, mapping: &IdMapping) -> (Check, Option<String>) {
    let config = config::load();
    let source = config
        .as_ref()
        .ok()
        .and_then(|c| c.source.as_ref())
        .map(|p| p.display().to_string());
    let Some(fs) = fs else {
        return (
            bad(
                "backend",
                "no storage to probe",
                "fix the storage check first",
            ),
            source,
        );
    };
    let configured = match &config {
        Ok(c) => match c.backend {
            Choice::Auto => String::new(),
            Choice::Forced(b) => format!(" (the config file forces {b})"),
        },
        Err(e) => {
            return (
                bad(
                    "backend",
                    format!("{e:#}"),
                    "fix or remove the config file named above",
                ),
                source,
            )
        }
    };
    match backend::auto(fs, mapping) {
        Ok(d) => (
            good(
                "backend",
                format!("auto picks {} ({}){configured}", d.backend, d.reason),
            ),
            source,
        ),
        Err(e) => (
            bad(
                "backend",
                format!("probing failed: {e:#}"),
                "make the storage directory writable, or set NOOK_STORAGE",
            ),
            source,
        ),
    }
}

/// Only the OCI face uses cgroups (`pause`, `resume`, `update`, a bundle's `resources`), and
/// only where the caller may write them, so this informs and never fails.
fn cgroup_delegation() -> Check {
    let Some(dir) = crate::cgroup::own_dir() else {
        return good(
            "cgroup v2",
            "none mounted: OCI `pause`/`resume`/`update` and a bundle's limits are refused or \
             warned about",
        );
    };
    let controllers = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let controllers = match controllers.trim() {
        "" => "none: limits cannot be applied, the freezer works".to_string(),
        list => list.to_string(),
    };
    if crate::cgroup::delegated(&dir) {
        good(
            "cgroup v2",
            format!(
                "{} is delegated to this user: OCI containers get a cgroup there (pause, resume, \
                 update; controllers: {controllers})",
                dir.display()
            ),
        )
    } else {
        good(
            "cgroup v2",
            format!(
                "{} is not delegated to this user: OCI `pause`/`resume`/`update` are refused and \
                 a bundle's limits warned about (a delegated subtree, e.g. systemd's \
                 Delegate=yes, enables them; controllers: {controllers})",
                dir.display()
            ),
        )
    }
}

fn seccomp() -> Check {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let has_field = status.lines().any(|l| l.starts_with("Seccomp:"));
    let actions = fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    if has_field && actions.contains("errno") {
        let lib = libseccomp::ScmpVersion::current()
            .map(|v| format!("libseccomp {}.{}.{}", v.major, v.minor, v.micro))
            .unwrap_or_else(|_| "libseccomp version unknown".into());
        good("seccomp", format!("filters available ({lib})"))
    } else {
        bad(
            "seccomp",
            "the kernel offers no seccomp filters",
            "use a kernel built with CONFIG_SECCOMP_FILTER=y",
        )
    }
}
