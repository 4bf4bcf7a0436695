//! Root emulation: in a container that maps one id, root's chown, set*id and device mknod
//! succeed without acting, so package managers work, and nothing faked grants anything.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{debian_archive, Nook};

/// A file on the host that only the host's root may read, and one only root may write.
fn root_only_files(t: &Nook) -> std::path::PathBuf {
    let dir = t.mkdir("host");
    for (name, mode) in [("secret", 0o600), ("readonly", 0o644)] {
        let path = dir.join(name);
        fs::write(&path, "root's\n").unwrap();
        std::os::unix::fs::lchown(&path, Some(0), Some(0)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
    dir
}

#[test]
fn one_id_root_fakes_chown_setid_and_device_mknod_and_gains_nothing() {
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    let host = root_only_files(&t);
    let volume = format!("{}:/host", host.display());
    let script = "
        touch /f && chown 1000:1000 /f && echo chown-ok && stat -c owner=%u:%g /f
        mknod /dev/x c 1 3 && echo mknod-ok; test -e /dev/x || echo no-device
        mknod /tmp/fifo p && test -p /tmp/fifo && echo fifo-made
        su user -c 'echo su=$(id -u); touch /root/still-root && echo root-dir-writable'
        cat /host/secret 2>/dev/null || echo secret-unreadable
        (echo x >> /host/readonly) 2>/dev/null || echo readonly-unwritable
        unshare -U true 2>/dev/null || echo unshare-refused
        grep -c '^Seccomp:.2' /proc/self/status";
    let out = t.nook(&[
        "run",
        "--name",
        "emu",
        "-v",
        &volume,
        t.image(),
        "sh",
        "-c",
        script,
    ]);
    out.assert_ok();
    assert_eq!(
        out.lines(),
        [
            "chown-ok",
            "owner=0:0",
            "mknod-ok",
            "no-device",
            "fifo-made",
            "su=0",
            "root-dir-writable",
            "secret-unreadable",
            "readonly-unwritable",
            "unshare-refused",
            "1",
        ],
        "{out}"
    );
    assert!(out.stderr.contains("root is emulated"), "{out}");
    assert_eq!(
        fs::read_to_string(host.join("readonly")).unwrap(),
        "root's\n"
    );
    let meta = t.container("emu").expect("listed");
    assert_eq!(meta["root_emulation"], true, "{meta}");
    assert!(
        meta["root_emulation_reason"]
            .as_str()
            .unwrap()
            .contains("maps only your own id"),
        "{meta}"
    );
    // The upper layer's files are the caller's: the faked chown changed nothing on disk.
    let id = meta["id"].as_str().unwrap();
    let f = t.storage.join("containers").join(id).join("upper/f");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&f).unwrap().uid(), t.runner().uid);
    t.nook(&["rm", "emu"]).assert_ok();
}

#[test]
fn off_lets_the_calls_fail_as_the_kernel_says_in_the_flag_and_the_config() {
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    let script = "touch /f; chown 1000 /f 2>/dev/null || echo chown-refused; \
                  mknod /dev/x c 1 3 2>/dev/null || echo mknod-refused";
    let out = t.nook(&[
        "run",
        "--rm",
        "-q",
        "--root-emulation",
        "off",
        t.image(),
        "sh",
        "-c",
        script,
    ]);
    out.assert_ok();
    assert_eq!(out.lines(), ["chown-refused", "mknod-refused"], "{out}");

    let config = t.home.join(".config/nook");
    fs::create_dir_all(&config).unwrap();
    t.write_file(config.join("nook.conf"), "root_emulation = \"off\"\n");
    t.give(&t.home.join(".config"));
    let out = t.nook(&["run", "--rm", "-q", t.image(), "sh", "-c", script]);
    assert_eq!(out.lines(), ["chown-refused", "mknod-refused"], "{out}");
    // The flag beats the file.
    let out = t.nook(&[
        "run",
        "--rm",
        "-q",
        "--root-emulation",
        "auto",
        t.image(),
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(out.lines(), Vec::<&str>::new(), "{out}");
    let out = t.nook(&["run", "--rm", "--root-emulation", "fake", t.image(), "true"]);
    assert_eq!(out.code, Some(125), "{out}");
    assert!(out.stderr.contains("auto, seccomp, notify, off"), "{out}");
}

#[test]
fn with_a_subordinate_range_emulation_stays_off_unless_forced() {
    let Some(t) = Nook::new() else { return };
    if !t.has_subids() {
        return;
    }
    let script = "touch /f && chown 1000:1000 /f && stat -c %u:%g /f";
    let out = t.nook(&["run", "--rm", t.image(), "sh", "-c", script]);
    out.assert_ok().assert_stdout("1000:1000\n");
    let out = t.nook(&[
        "run",
        "--rm",
        "--root-emulation",
        "seccomp",
        t.image(),
        "sh",
        "-c",
        script,
    ]);
    out.assert_ok().assert_stdout("0:0\n");
}

#[test]
fn apt_dpkg_useradd_and_su_work_in_debian_with_one_id() {
    let Some(archive) = debian_archive() else {
        return;
    };
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    t.nook(&["import", "-q", archive.to_str().unwrap(), "debian"])
        .assert_ok();
    // Without emulation apt cannot even update: it fails to drop to its sandbox user.
    let out = t
        .cmd(&[
            "run",
            "--rm",
            "-q",
            "--root-emulation",
            "off",
            "debian",
            "apt-get",
            "update",
        ])
        .timeout(Duration::from_secs(120))
        .run();
    assert_ne!(
        out.code,
        Some(0),
        "apt-get update passed without emulation\n{out}"
    );
    let script = "set -e
        apt-get update -qq
        apt-get install -y -qq make >/dev/null 2>&1
        make --version | head -n 1
        cd /tmp && apt-get download -qq hello >/dev/null 2>&1
        dpkg -i hello_*.deb >/dev/null 2>&1 && hello
        useradd -m u1; su u1 -c 'id -un'; stat -c %U /home/u1";
    let out = t
        .cmd(&["run", "--name", "deb", "-q", "debian", "sh", "-c", script])
        .timeout(Duration::from_secs(300))
        .run();
    out.assert_ok();
    assert_eq!(
        out.lines(),
        [
            "GNU Make 4.3",
            "Hello, world!",
            // su's switch to u1 is faked: the shell it starts is still root. The chown of u1's
            // home is faked too: it stays root's (on disk, the caller's).
            "root",
            "root",
        ],
        "{out}"
    );
    // The apt drop-in is nook's generated file, not a change of the container.
    let diff = t.nook(&["diff", "deb"]);
    diff.assert_ok();
    assert!(!diff.stdout.contains("nook-root-emulation"), "{diff}");
    assert!(diff.stdout.contains("/usr/bin/hello"), "{diff}");
    t.nook(&["rm", "deb"]).assert_ok();
    t.nook(&["rmi", "debian"]).assert_ok();
}

#[test]
fn info_tells_a_user_without_subids_what_works_and_offers_a_free_range() {
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    let out = t.nook(&["info", "--format", "json"]);
    out.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let check = |name: &str| {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {v}"))
            .clone()
    };
    let emulation = check("root emulation");
    assert!(
        emulation["value"].as_str().unwrap().starts_with("on"),
        "{emulation}"
    );
    let subuids = check("subordinate uids");
    assert_eq!(subuids["level"], "warn", "{subuids}");
    // The offered range is free: it overlaps no range of /etc/subuid or /etc/subgid.
    let fix = subuids["fix"].as_str().unwrap();
    let range = fix
        .split_whitespace()
        .skip_while(|w| *w != "--add-subuids")
        .nth(1)
        .unwrap_or_else(|| panic!("no range in {fix}"));
    let (start, end) = range.split_once('-').unwrap();
    let (start, end): (u64, u64) = (start.parse().unwrap(), end.parse().unwrap());
    assert_eq!(end - start + 1, 65536, "{fix}");
    for file in ["/etc/subuid", "/etc/subgid"] {
        for line in fs::read_to_string(file).unwrap().lines() {
            let f: Vec<&str> = line.split(':').collect();
            let (Some(s), Some(n)) = (f.get(1), f.get(2)) else {
                continue;
            };
            let (s, n): (u64, u64) = (s.parse().unwrap(), n.parse().unwrap());
            assert!(end < s || start >= s + n, "{fix} overlaps {file}: {line}");
        }
    }
    // cgroups are not used, so they never fail; nothing fails here, so info exits 0.
    assert_eq!(check("cgroup v2")["level"], "ok");
}

/// The owner and group of `name` in a tar listing (`tar -tv --numeric-owner`).
fn tar_owner(listing: &str, name: &str) -> String {
    listing
        .lines()
        .find(|l| l.ends_with(&format!(" {name}")) || l.ends_with(&format!(" {name}/")))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no {name} in\n{listing}"))
        .to_string()
}

fn tar_listing(tar: &std::path::Path) -> String {
    let out = std::process::Command::new("tar")
        .args(["-tvf", tar.to_str().unwrap(), "--numeric-owner"])
        .output()
        .expect("tar runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Tier 2: a chown is recorded, stat shows it, and commit and export write it. For a user
/// without subordinate ids, "the owner in the image" is the record: the image is a directory
/// whose files are all the user's on disk, each chown'd file carrying a
/// `user.rootlesscontainers` attribute with the intended ids (those inside the container);
/// `nook export` writes those ids as the tar entries' owners, so the archive unpacked by a
/// real root (or an engine) has them.
#[test]
fn tier_2_records_chown_so_stat_commit_and_export_show_the_intended_owner() {
    let Some(archive) = debian_archive() else {
        return;
    };
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    t.nook(&["import", "-q", archive.to_str().unwrap(), "debian"])
        .assert_ok();
    let script = "set -e
        echo data > /f && chown 1000:1000 /f && stat -c f=%u:%g /f
        mkdir /d && chown 7:8 /d && chown :9 /d && ls -lnd /d | cut -d' ' -f3,4
        cd /d && touch rel && chown 5 rel && stat -c rel=%u:%g rel
        chown 0:0 /f && stat -c back=%u:%g /f && chown 1000:1000 /f
        chown 3 /missing 2>/dev/null || echo missing-fails
        apt-get update -qq && apt-get install -y -qq make >/dev/null 2>&1
        make --version | head -n 1";
    let out = t
        .cmd(&[
            "run",
            "--name",
            "t2",
            "-q",
            "--root-emulation",
            "notify",
            "debian",
            "sh",
            "-c",
            script,
        ])
        .timeout(Duration::from_secs(300))
        .run();
    out.assert_ok();
    assert_eq!(
        out.lines(),
        [
            "f=1000:1000",
            "7 9",
            "rel=5:0",
            "back=0:0",
            "missing-fails",
            "GNU Make 4.3"
        ],
        "{out}"
    );
    let meta = t.container("t2").expect("listed");
    assert!(
        meta["root_emulation_reason"]
            .as_str()
            .unwrap()
            .contains("--root-emulation notify"),
        "{meta}"
    );

    let exported = t.dir.join("t2.tar");
    t.nook(&["export", "-o", exported.to_str().unwrap(), "t2"])
        .assert_ok();
    let listing = tar_listing(&exported);
    assert_eq!(tar_owner(&listing, "f"), "1000/1000");
    assert_eq!(tar_owner(&listing, "d"), "7/9");
    assert_eq!(tar_owner(&listing, "d/rel"), "5/0");
    assert_eq!(tar_owner(&listing, "usr/bin/make"), "0/0");
    assert!(!listing.contains("rootlesscontainers"), "{listing}");

    t.nook(&["commit", "t2", "committed"]).assert_ok();
    let exported = t.dir.join("committed.tar");
    t.nook(&["export", "-o", exported.to_str().unwrap(), "committed"])
        .assert_ok();
    let listing = tar_listing(&exported);
    assert_eq!(tar_owner(&listing, "f"), "1000/1000");
    assert_eq!(tar_owner(&listing, "d"), "7/9");
    // The committed image keeps the records: tier 2 shows them, tier 1 shows the real owner.
    let stat = ["stat", "-c", "%u:%g", "/f", "/d"];
    let with = |mode: &str| {
        let mut args = vec!["run", "--rm", "-q", "--root-emulation", mode, "committed"];
        args.extend(stat);
        t.nook(&args)
    };
    with("notify").assert_ok().assert_stdout("1000:1000\n7:9\n");
    with("seccomp").assert_ok().assert_stdout("0:0\n0:0\n");
    t.nook(&["rm", "t2"]).assert_ok();
    t.nook(&["rmi", "committed"]).assert_ok();
    t.nook(&["rmi", "debian"]).assert_ok();
}

#[test]
fn the_report_counts_the_faked_calls_of_each_tier() {
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    let script = "touch /a /b /c && chown 1 /a && chown 2:2 /b && chown :3 /c
        mknod /dev/x c 1 3 && mknod /tmp/p p
        echo done";
    for mode in ["seccomp", "notify"] {
        let out = t.nook(&[
            "run",
            "--rm",
            "-q",
            "--root-emulation",
            mode,
            "--root-emulation-report",
            &t.image_copy(mode),
            "sh",
            "-c",
            script,
        ]);
        out.assert_ok().assert_stdout("done\n");
        assert!(
            out.stderr
                .contains("nook: root emulation: 3 chown, 1 mknod calls emulated"),
            "{mode}: {out}"
        );
    }
    // A faked switch of user is counted, and grants nothing: the shell is still root.
    let out = t.nook(&[
        "run",
        "--rm",
        "-q",
        "--root-emulation-report",
        t.image(),
        "su",
        "user",
        "-c",
        "id -u",
    ]);
    out.assert_ok().assert_stdout("0\n");
    assert!(
        out.stderr.contains("set*id/setgroups calls emulated"),
        "{out}"
    );
    let out = t.nook(&[
        "run",
        "--rm",
        "-q",
        "--root-emulation",
        "off",
        "--root-emulation-report",
        t.image(),
        "true",
    ]);
    out.assert_ok();
    assert!(
        out.stderr
            .contains("root emulation: off for this container: turned off"),
        "{out}"
    );
}

#[test]
fn killing_nook_under_tier_2_leaves_no_process_waiting_on_its_supervisor() {
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    let running = t
        .cmd(&[
            "run",
            "--name",
            "victim",
            "--root-emulation",
            "notify",
            &t.image_copy("victim"),
            "sh",
            "-c",
            "touch /f; chown 1 /f; echo ready; while :; do chown 2 /f; stat /f >/dev/null; done",
        ])
        .spawn();
    running.wait_for_stdout("ready", Duration::from_secs(20));
    running.signal(nix::sys::signal::Signal::SIGKILL);
    let out = running.wait();
    assert_eq!(out.signal, Some(libc::SIGKILL), "{out}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !t.processes().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    t.assert_no_processes_left();
    let c = t.container("victim").expect("victim in ps");
    assert_eq!(c["status"], "exited", "{c}");
    t.nook(&["rm", "victim"]).assert_ok();
}

#[test]
fn tier_2_needs_a_backend_it_can_record_through() {
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    let before = t.container_dirs();
    let out = t.nook(&[
        "run",
        "--rm",
        "--backend",
        "fuse",
        "--root-emulation",
        "notify",
        t.image(),
        "true",
    ]);
    if out.stderr.contains("fuse-overlayfs") && !out.stderr.contains("notify") {
        // No fuse-overlayfs here: the backend's own refusal comes first.
        return;
    }
    out.assert_code(125);
    assert!(
        out.stderr
            .contains("--root-emulation notify cannot record owners on the fuse backend"),
        "{out}"
    );
    assert_eq!(t.container_dirs(), before);
}

#[test]
fn exec_into_a_tier_2_container_records_and_shows_owners_too() {
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    t.nook(&[
        "run",
        "-d",
        "--name",
        "bg",
        "--root-emulation",
        "notify",
        &t.image_copy("bg"),
        "sleep",
        "300",
    ])
    .assert_ok();
    t.nook(&["exec", "bg", "sh", "-c", "touch /g && chown 33:44 /g"])
        .assert_ok();
    t.nook(&["exec", "bg", "stat", "-c", "%u:%g", "/g"])
        .assert_ok()
        .assert_stdout("33:44\n");
    t.nook(&["rm", "-f", "bg"]).assert_ok();
}
