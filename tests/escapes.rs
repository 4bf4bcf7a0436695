//! Known container escapes of the symlink and descriptor kinds: each must stay confined to the
//! container or be refused, and the host must come out untouched.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::{exe_grabber, tree_listing, Nook};

/// A host directory the container must never reach, with one file in it.
fn canary(t: &Nook) -> PathBuf {
    let dir = t.mkdir("canary");
    t.write_file("canary/hosts", "HOST FILE\n");
    dir
}

/// Replaces `path` of the image copy `image` with a symlink to `target`.
fn plant_symlink(t: &Nook, image: &str, path: &str, target: &Path) {
    let link = Path::new(image).join(path.trim_start_matches('/'));
    if link.is_dir() && !link.is_symlink() {
        fs::remove_dir_all(&link).expect("remove the image's directory");
    } else {
        let _ = fs::remove_file(&link);
    }
    symlink(target, &link).expect("plant symlink");
    t.give(&link);
}

fn assert_untouched(dir: &Path, before: &[String]) {
    assert_eq!(
        tree_listing(dir),
        before,
        "the host directory {} changed",
        dir.display()
    );
}

#[test]
fn proc_symlinked_to_a_host_path_is_mounted_inside_the_container() {
    let Some(t) = Nook::new() else { return };
    let canary = canary(&t);
    let before = tree_listing(&canary);
    let image = t.image_copy("img");
    plant_symlink(&t, &image, "/proc", &canary);
    let out = t.nook(&[
        "run",
        "--rm",
        &image,
        "sh",
        "-c",
        "grep -c ^Pid: /proc/self/status",
    ]);
    out.assert_ok().assert_stdout("1");
    assert_untouched(&canary, &before);
}

#[test]
fn etc_hosts_symlinked_out_of_the_image_is_confined() {
    let Some(t) = Nook::new() else { return };
    let canary = canary(&t);
    let before = tree_listing(&canary);
    let image = t.image_copy("img");
    let climb = PathBuf::from("../".repeat(12))
        .join(canary.strip_prefix("/").unwrap())
        .join("hosts");
    plant_symlink(&t, &image, "/etc/hosts", &climb);
    let out = t.nook(&[
        "run",
        "--rm",
        &image,
        "sh",
        "-c",
        "cat /etc/hosts; echo x >> /etc/hosts",
    ]);
    out.assert_ok();
    assert!(out.stdout.contains("localhost"), "{out}");
    assert!(
        !out.stdout.contains("HOST FILE"),
        "the container read the host's file\n{out}"
    );
    assert_untouched(&canary, &before);
    assert_eq!(
        fs::read_to_string(canary.join("hosts")).unwrap(),
        "HOST FILE\n"
    );
}

#[test]
fn volume_target_symlinked_to_a_host_path_is_confined() {
    let Some(t) = Nook::new() else { return };
    let canary = canary(&t);
    let before = tree_listing(&canary);
    let vol = t.mkdir("vol");
    t.write_file("vol/inside", "volume\n");
    let image = t.image_copy("img");
    plant_symlink(&t, &image, "/data", &canary);
    let out = t.nook(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:/data", vol.display()),
        &image,
        "sh",
        "-c",
        "cat /data/inside",
    ]);
    out.assert_ok().assert_stdout("volume");
    assert_untouched(&canary, &before);
}

#[test]
fn volume_target_climbing_with_dotdot_stays_in_the_root() {
    let Some(t) = Nook::new() else { return };
    let vol = t.mkdir("vol");
    t.write_file("vol/inside", "volume\n");
    let escape = t.dir.join("escaped-target");
    let target = format!("/../../../../..{}", escape.display());
    let out = t.nook(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:{target}", vol.display()),
        t.image(),
        "cat",
        &format!("{}/inside", escape.display()),
    ]);
    out.assert_ok().assert_stdout("volume");
    assert!(
        !escape.exists(),
        "nook created {} on the host",
        escape.display()
    );
}

#[test]
fn inherited_descriptors_do_not_reach_the_container() {
    let Some(t) = Nook::new() else { return };
    let canary = canary(&t);
    let out = t
        .cmd(&["run", "--rm", t.image(), "ls", "/proc/self/fd"])
        .inherit_fd_of(7, &canary)
        .run();
    out.assert_ok();
    let fds: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(
        fds,
        ["0", "1", "2", "3"],
        "only stdio and ls's own directory\n{out}"
    );
}

#[test]
fn workdir_through_a_leaked_descriptor_is_refused() {
    let Some(t) = Nook::new() else { return };
    let canary = canary(&t);
    let before = tree_listing(&canary);
    let out = t
        .cmd(&[
            "run",
            "--rm",
            "-w",
            "/proc/self/fd/7",
            t.image(),
            "sh",
            "-c",
            "pwd; cat hosts",
        ])
        .inherit_fd_of(7, &canary)
        .run();
    assert_eq!(out.code, Some(125), "{out}");
    assert!(
        !out.stdout.contains("HOST FILE"),
        "the container read the host through fd 7\n{out}"
    );
    assert!(out.stderr.contains("/proc/self/fd/7"), "{out}");
    assert_untouched(&canary, &before);
}

/// What runtimes hide from a container: files read as empty, directories list nothing.
/// Spelled out here, not taken from nook, so that a path dropped from nook's list fails.
const MASKED: [&str; 11] = [
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

/// What a container may read but not change.
const READ_ONLY: [&str; 6] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/sys",
];

/// Those of `paths` this kernel has (the container's /proc and /sys show the host's kernel).
fn present(paths: &[&'static str]) -> Vec<&'static str> {
    paths
        .iter()
        .copied()
        .filter(|p| Path::new(p).exists())
        .collect()
}

/// A script line that prints the container's mount table after a `---` line.
const PRINT_MOUNTS: &str = "echo ---; cat /proc/self/mountinfo";

/// Fails unless, in the mount table the container printed after `---`, every masked and
/// read-only path this kernel has is a read-only mount: emptiness alone would not tell a mask
/// from a path the host happens to leave empty, nor a read-only /sys from a read-write one.
#[track_caller]
fn assert_masked_and_read_only(out: &common::Out) {
    let (_, mountinfo) = out
        .stdout
        .split_once("---\n")
        .unwrap_or_else(|| panic!("no mount table printed\n{out}"));
    for path in present(&MASKED).into_iter().chain(present(&READ_ONLY)) {
        // The last mount at a path is the one on top.
        let options = mountinfo
            .lines()
            .rev()
            .find_map(|l| {
                let fields: Vec<&str> = l.split(' ').collect();
                (fields.get(4) == Some(&path)).then(|| fields.get(5).copied())
            })
            .flatten()
            .unwrap_or_else(|| panic!("{path} is not a mount of its own in the container\n{out}"));
        assert!(
            options.split(',').any(|o| o == "ro"),
            "{path} is mounted read-write ({options}) in the container\n{out}"
        );
    }
}

#[test]
fn masked_and_read_only_kernel_paths_stay_so() {
    let Some(t) = Nook::new() else { return };
    let mut script = String::new();
    for path in present(&MASKED) {
        if Path::new(path).is_dir() {
            script.push_str(&format!("echo {path} $(ls -A {path} | wc -l);"));
        } else {
            script.push_str(&format!("echo {path} $(wc -c < {path});"));
        }
    }
    script.push_str(
        "if echo x > /proc/sys/kernel/hostname 2>/dev/null; then echo sysctl wrote; \
         else echo sysctl refused; fi;",
    );
    script.push_str(PRINT_MOUNTS);
    let out = t.sh(&script);
    out.assert_ok();
    let lines: Vec<&str> = out
        .lines()
        .into_iter()
        .take_while(|l| *l != "---")
        .collect();
    assert!(lines.len() >= 2, "{out}");
    for line in &lines[..lines.len() - 1] {
        assert!(line.ends_with(" 0"), "not masked: {line}\n{out}");
    }
    assert_eq!(lines[lines.len() - 1], "sysctl refused", "{out}");
    assert_masked_and_read_only(&out);
}

#[test]
fn the_container_cannot_unmask_or_remount_anything() {
    let Some(t) = Nook::new() else { return };
    // Every mask and read-only mount this kernel has, attacked; the mount table afterwards
    // shows whether an attempt worked, whatever it returned.
    let mut attempts = Vec::new();
    for path in present(&MASKED) {
        attempts.push(format!("umount {path}"));
        attempts.push(format!("mount -o remount,rw {path}"));
    }
    for path in present(&READ_ONLY) {
        attempts.push(format!("mount -o remount,rw {path}"));
        attempts.push(format!("mount -o remount,bind,rw {path}"));
    }
    attempts.push("umount -l /sys".into());
    attempts.push("umount -l /proc".into());
    let mut script = String::new();
    for c in &attempts {
        script.push_str(&format!(
            "if {c} 2>/dev/null; then echo '{c}: allowed'; else echo '{c}: refused'; fi;"
        ));
    }
    script.push_str(PRINT_MOUNTS);
    let out = t.sh(&script);
    out.assert_ok();
    let results: Vec<&str> = out
        .lines()
        .into_iter()
        .take_while(|l| *l != "---")
        .collect();
    assert_eq!(results.len(), attempts.len(), "{out}");
    assert!(results.iter().all(|l| l.ends_with(": refused")), "{out}");
    assert_masked_and_read_only(&out);
}

#[test]
fn the_container_cannot_read_what_the_user_cannot() {
    let Some(t) = Nook::new() else { return };
    if !t.runner().switch {
        eprintln!("SKIPPED: needs root to make a file the test user may not read");
        return;
    }
    // A directory the user may enter, holding a root-only file: root in the container is the
    // user outside, with no power over files of ids it does not map.
    let dir = t.mkdir("shared");
    let secret = dir.join("secret");
    fs::write(&secret, "root only\n").unwrap();
    std::os::unix::fs::chown(&secret, Some(0), Some(0)).unwrap();
    fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = t.nook(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:/h", dir.display()),
        t.image(),
        "sh",
        "-c",
        "cat /h/secret; echo cat=$?; chmod 644 /h/secret; echo chmod=$?; chown 0 /h/secret; \
         echo chown=$?",
    ]);
    out.assert_ok();
    assert!(!out.stdout.contains("root only"), "{out}");
    assert!(out.stdout.contains("cat=1"), "{out}");
    assert!(out.stdout.contains("chmod=1"), "{out}");
    assert!(out.stdout.contains("chown=1"), "{out}");
    let meta = fs::metadata(&secret).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
}

/// How many `nook exec`s race the grabber: each is nook inside the container for a moment.
const EXEC_RACES: usize = 100;

#[test]
fn exec_never_hands_the_container_a_handle_on_nooks_binary() {
    let Some(t) = Nook::new() else { return };
    // The user's own copy: the container's root could write it, given a handle.
    let bin = t.user_owned_binary();
    let bin_dir = bin.parent().unwrap();
    let before = tree_listing(bin_dir);
    let grab = exe_grabber::install(&t);
    let nook = |args: &[&str]| t.cmd(args).bin(&bin).run();
    let volume = format!("{}:{}", grab.display(), exe_grabber::MOUNT);
    let mut run = vec!["run", "-d", "--name", "victim", "-v", &volume, t.image()];
    let grabber = exe_grabber::command(&[]);
    run.extend(grabber.iter().map(String::as_str));
    nook(&run).assert_ok();
    exe_grabber::wait_started(&grab);
    for _ in 0..EXEC_RACES {
        nook(&["exec", "victim", "true"]).assert_ok();
    }
    // The container's monitor still runs the binary, so a write would fail with ETXTBSY: the
    // handle itself is what must never be had.
    let report = exe_grabber::finish(&t, &grab);
    exe_grabber::assert_no_handle(&report, &bin);
    assert_eq!(tree_listing(bin_dir), before, "nook's binary changed");
    nook(&["rm", "-f", "victim"]).assert_ok();
}
