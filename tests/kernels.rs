//! Kernels older than the test machine's, simulated (see `common::OldKernel`): `nook info` tells
//! which newer system calls are missing, containers still start through nook's fallbacks, the
//! backend choice leaves overlayfs where a user namespace cannot mount it, and symlinks planted
//! in the image stay confined without `openat2` exactly as with it.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::{old_kernel, tree_listing, Nook, OldKernel};

/// The calls `nook info` reports, with the kernel each first appeared in.
const CALLS: [(&str, &str); 5] = [
    ("openat2", "5.6"),
    ("mount_setattr", "5.12"),
    ("close_range", "5.9"),
    ("close_range(CLOSE_RANGE_CLOEXEC)", "5.11"),
    ("clone3", "5.3"),
];

/// The test's context, when the simulation can run: it needs the tests to run as root (the
/// harness installs the filter before it drops to the test user).
fn simulated() -> Option<Nook> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "SKIPPED {}: the old-kernel simulation needs the tests to run as root",
            std::thread::current().name().unwrap_or("test")
        );
        return None;
    }
    Nook::new()
}

/// `nook info --format json`'s checks by name, on `kernel` (or the suite's mode).
fn info(t: &Nook, kernel: Option<OldKernel>) -> Vec<serde_json::Value> {
    let mut cmd = t.cmd(&["info", "--format", "json"]);
    if let Some(k) = kernel {
        cmd = cmd.on_kernel(k);
    }
    let out = cmd.run();
    out.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("nook info printed no JSON ({e}):\n{out}"));
    v["checks"].as_array().expect("checks").clone()
}

fn check<'a>(checks: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    checks
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("nook info has no {name:?} check: {checks:#?}"))
}

fn value(checks: &[serde_json::Value], name: &str) -> String {
    let c = check(checks, name);
    assert_ne!(c["level"], "fail", "a missing call has a fallback: {c}");
    c["value"].as_str().unwrap().to_string()
}

#[test]
fn info_tells_which_newer_calls_the_kernel_has() {
    let Some(t) = simulated() else { return };
    if old_kernel().is_none() {
        // This machine's kernel (6.x) has them all.
        let real = info(&t, None);
        for (name, since) in CALLS {
            assert_eq!(value(&real, name), format!("yes (Linux {since}+)"));
        }
    }
    if old_kernel().is_some() {
        // The suite's own mode is in force for every invocation.
        let suite = info(&t, None);
        assert!(value(&suite, "openat2").starts_with("no (fallback"));
    }
    let no_openat2 = info(&t, Some(OldKernel::NoOpenat2));
    let v = value(&no_openat2, "openat2");
    assert!(v.starts_with("no (fallback") && v.contains("5.6"), "{v}");
    assert!(v.contains("one component at a time"), "{v}");
    if old_kernel() != Some(OldKernel::Calls4_18) {
        assert!(value(&no_openat2, "mount_setattr").starts_with("yes"));
    }
    let rhel8 = info(&t, Some(OldKernel::Calls4_18));
    for (name, since) in CALLS {
        let v = value(&rhel8, name);
        assert!(
            v.starts_with(&format!("no (fallback; the kernel predates Linux {since})")),
            "{name}: {v}"
        );
    }
}

/// A start that goes through every fallback: mounts resolved by the walk, a read-only volume
/// made so by a bind remount, generated files, a working directory to create, descriptors
/// closed and marked close-on-exec one by one.
fn full_start(t: &Nook, kernel: OldKernel) {
    let data = t.mkdir(&format!("data-{kernel:?}"));
    t.write_file(data.join("in"), "from the host\n");
    let volume = format!("{}:/data:ro", data.display());
    let out = t
        .cmd(&[
            "run",
            "--rm",
            "-v",
            &volume,
            "-w",
            "/made/here",
            "--hostname",
            "old",
            t.image(),
            "sh",
            "-c",
            "pwd; cat /etc/hostname /data/in; touch /data/x 2>/dev/null && echo wrote || echo \
             refused; grep ' /data ' /proc/self/mountinfo | cut -d' ' -f6; ls /proc/self/fd",
        ])
        .on_kernel(kernel)
        .inherit_fd(9)
        .run();
    out.assert_ok();
    let lines = out.lines();
    assert_eq!(
        lines[..4],
        ["/made/here", "old", "from the host", "refused"],
        "{kernel:?}: {out}"
    );
    let options = lines[4];
    assert!(
        options.split(',').any(|o| o == "ro"),
        "{kernel:?}: the volume is not read-only: {options}\n{out}"
    );
    // ls's own directory descriptor is 3; nook's descriptors and the inherited 9 are gone.
    assert_eq!(lines[5..], ["0", "1", "2", "3"], "{kernel:?}: {out}");
}

#[test]
fn a_container_starts_without_openat2() {
    let Some(t) = simulated() else { return };
    full_start(&t, OldKernel::NoOpenat2);
}

#[test]
fn a_container_starts_with_the_system_calls_of_linux_4_18() {
    let Some(t) = simulated() else { return };
    full_start(&t, OldKernel::Calls4_18);
}

#[test]
fn a_container_starts_without_subordinate_ids_on_linux_4_18() {
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    let out = t
        .cmd(&[
            "run",
            "--rm",
            t.image(),
            "sh",
            "-c",
            "echo ok > /tmp/f && cat /tmp/f",
        ])
        .on_kernel(OldKernel::Calls4_18)
        .run();
    out.assert_ok().assert_stdout("ok\n");
}

#[test]
fn auto_leaves_overlay_where_a_user_namespace_cannot_mount_it() {
    let Some(t) = simulated() else { return };
    let checks = info(&t, Some(OldKernel::Linux4_18));
    let backend = value(&checks, "backend");
    assert!(
        backend.starts_with("auto picks fuse") || backend.starts_with("auto picks copy"),
        "{backend}"
    );
    assert!(
        backend.contains("overlayfs could not be mounted in a user namespace"),
        "the reason must say why overlay was left: {backend}"
    );
    // The container is made on the backend chosen, and starts.
    let out = t
        .cmd(&[
            "run",
            "--name",
            "old",
            t.image(),
            "sh",
            "-c",
            "echo x > /f && cat /f",
        ])
        .on_kernel(OldKernel::Linux4_18)
        .run();
    out.assert_ok().assert_stdout("x\n");
    let c = t.container("old").expect("the container is listed");
    assert_ne!(c["backend"], "overlay", "{c}");
    assert!(
        c["backend_reason"]
            .as_str()
            .unwrap()
            .contains("overlayfs could not be mounted"),
        "{c}"
    );
    t.nook(&["rm", "old"]).assert_ok();
}

/// Replaces `path` of the image copy `image` with a symlink to `target`.
fn plant(t: &Nook, image: &str, path: &str, target: &Path) {
    let link = Path::new(image).join(path.trim_start_matches('/'));
    if link.is_dir() && !link.is_symlink() {
        fs::remove_dir_all(&link).expect("remove the image's directory");
    } else {
        let _ = fs::remove_file(&link);
    }
    symlink(target, &link).expect("plant symlink");
    t.give(&link);
}

/// One start of `image` with a volume on `/mnt/v`, on the real kernel and without `openat2`:
/// both must end the same way.
fn both_ways(t: &Nook, image: &str, script: &str) -> [common::Out; 2] {
    let src = t.mkdir("volume-src");
    let volume = format!("{}:/mnt/v", src.display());
    // A hostname of its own would differ from run to run.
    let args = [
        "run",
        "--rm",
        "--hostname",
        "same",
        "-v",
        &volume,
        image,
        "sh",
        "-c",
        script,
    ];
    let normal = t.cmd(&args).run();
    let walked = t.cmd(&args).on_kernel(OldKernel::NoOpenat2).run();
    assert_eq!(
        (normal.code, normal.stdout.as_str()),
        (walked.code, walked.stdout.as_str()),
        "openat2 and the walk disagree:\nwith openat2: {normal}\nwithout: {walked}"
    );
    [normal, walked]
}

#[test]
fn planted_symlinks_are_confined_alike_with_and_without_openat2() {
    let Some(t) = simulated() else { return };
    let canary = t.mkdir("canary");
    t.write_file("canary/hosts", "HOST FILE\n");
    let before = tree_listing(&canary);
    let image = t.image_copy("img");
    let climb = PathBuf::from("../".repeat(12)).join(canary.strip_prefix("/").unwrap());
    // /etc/hosts climbs out with `..`; /mnt points at the host's directory, absolutely.
    plant(&t, &image, "/etc/hosts", &climb.join("hosts"));
    plant(&t, &image, "/mnt", &canary);
    let [normal, _] = both_ways(
        &t,
        &image,
        "cat /etc/hosts; ls /mnt; echo x > /mnt/v/made; echo x >> /etc/hosts",
    );
    normal.assert_ok();
    assert!(!normal.stdout.contains("HOST FILE"), "{normal}");
    assert_eq!(tree_listing(&canary), before, "the host directory changed");
}

#[test]
fn a_magic_link_on_the_way_is_refused_alike_with_and_without_openat2() {
    let Some(t) = simulated() else { return };
    let canary = t.mkdir("canary");
    let before = tree_listing(&canary);
    let image = t.image_copy("img");
    // Through the container's own /proc, to the root of its pid 1 and on to the host path.
    let through_proc = Path::new("/proc/self/root").join(canary.strip_prefix("/").unwrap());
    plant(&t, &image, "/mnt", &through_proc);
    let [normal, walked] = both_ways(&t, &image, "true");
    for out in [&normal, &walked] {
        assert_eq!(out.code, Some(125), "{out}");
        assert!(
            out.stderr.contains("Too many levels of symbolic links"),
            "{out}"
        );
    }
    assert_eq!(tree_listing(&canary), before, "the host directory changed");
}
