//! Id maps: subordinate ranges through newuidmap/newgidmap, keep-id, the fallback for users
//! without ranges, and files owned by subordinate ids in containers and images.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use common::{debian_archive, Nook};

/// The runner's first subordinate uid, or skip when it has none (it always has one under CI).
fn first_subuid(t: &Nook) -> u32 {
    t.runner()
        .subuids
        .first()
        .map(|r| r.0)
        .expect("the default test user has a subordinate id range (scripts/test.sh adds one)")
}

fn uid_map_lines(out: &str) -> Vec<Vec<u64>> {
    out.lines()
        .map(|l| {
            l.split_whitespace()
                .map(|f| f.parse().expect("number"))
                .collect()
        })
        .filter(|v: &Vec<u64>| v.len() == 3)
        .collect()
}

#[test]
fn auto_maps_the_caller_as_root_and_the_subordinate_range_above_it() {
    let Some(t) = Nook::new() else { return };
    let sub = first_subuid(&t) as u64;
    let out = t.sh("cat /proc/self/uid_map; echo --; cat /proc/self/gid_map; echo --; id -u");
    out.assert_ok();
    let parts: Vec<&str> = out.stdout.split("--\n").collect();
    let uids = uid_map_lines(parts[0]);
    assert_eq!(uids[0], vec![0, t.runner().uid as u64, 1], "{out}");
    assert_eq!(uids[1], vec![1, sub, 65536], "{out}");
    assert_eq!(uid_map_lines(parts[1])[1][2], 65536, "{out}");
    assert_eq!(parts[2].trim(), "0");
    assert!(
        !out.stderr.contains("note:"),
        "no fallback notice expected\n{out}"
    );
}

#[test]
fn chown_inside_gives_the_matching_subordinate_owner_outside_and_rm_removes_it() {
    let Some(t) = Nook::new() else { return };
    let sub = first_subuid(&t);
    t.nook(&[
        "run",
        "--name",
        "owners",
        t.image(),
        "sh",
        "-c",
        "mkdir -p /work/deep && touch /work/deep/f && chown -R 1000:1000 /work && \
         chmod 700 /work/deep && stat -c %u:%g /work/deep/f",
    ])
    .assert_ok()
    .assert_stdout("1000:1000");
    let ps = t.container("owners").expect("container listed");
    let id = ps["id"].as_str().expect("id");
    let upper = t.storage.join("containers").join(id).join("upper");
    let owner = fs::symlink_metadata(upper.join("work")).expect("upper has /work");
    assert_eq!(
        owner.uid(),
        sub + 999,
        "uid 1000 inside is subuid+999 outside"
    );
    assert_eq!(owner.gid(), first_subgid(&t) + 999);
    // The caller cannot even look into /work/deep from outside, yet `nook rm` removes it.
    t.nook(&["rm", "owners"]).assert_ok();
    assert!(
        t.container_dirs().is_empty(),
        "container directory left behind"
    );
}

fn first_subgid(t: &Nook) -> u32 {
    let name = &t.runner().name;
    let text = fs::read_to_string("/etc/subgid").expect("/etc/subgid");
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() == 3 && (f[0] == name || f[0] == t.runner().uid.to_string()))
                .then(|| f[1].parse().ok())
                .flatten()
        })
        .expect("the test user has a subgid range")
}

#[test]
fn keep_id_keeps_the_callers_uid_and_volume_files_stay_the_callers() {
    let Some(t) = Nook::new() else { return };
    let vol = t.mkdir("work");
    let uid = t.runner().uid;
    let out = t.nook(&[
        "run",
        "--rm",
        "--userns",
        "keep-id",
        "-v",
        &format!("{}:/work", vol.display()),
        t.image(),
        "sh",
        "-c",
        "id -u; id -g; id -un; echo $HOME; echo data > /work/made-inside; \
         grep -c \"^$(id -un):\" /etc/passwd",
    ]);
    out.assert_ok();
    let lines = out.lines();
    assert_eq!(lines[0], uid.to_string(), "{out}");
    assert_eq!(lines[1], t.runner().gid.to_string(), "{out}");
    assert_eq!(
        lines[2],
        t.runner().name,
        "a passwd entry names the caller\n{out}"
    );
    assert!(lines[3].starts_with('/'), "HOME is set\n{out}");
    assert_eq!(lines[4], "1", "{out}");
    let meta = fs::metadata(vol.join("made-inside")).expect("file written through the volume");
    assert_eq!(
        meta.uid(),
        uid,
        "a file the container writes is the caller's outside"
    );
    assert_eq!(meta.gid(), t.runner().gid);
}

#[test]
fn keep_id_still_has_root_and_other_users_from_the_subordinate_range() {
    let Some(t) = Nook::new() else { return };
    let out = t.nook(&[
        "run",
        "--rm",
        "--userns",
        "keep-id",
        "-u",
        "0",
        t.image(),
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map",
    ]);
    out.assert_ok();
    let lines = out.lines();
    assert_eq!(lines[0], "0");
    let maps = uid_map_lines(&out.stdout);
    let uid = t.runner().uid as u64;
    assert!(maps.iter().any(|m| m == &vec![uid, uid, 1]), "{out}");
    assert_eq!(maps.iter().map(|m| m[2]).sum::<u64>(), 65537, "{out}");
}

#[test]
fn single_maps_only_the_callers_own_ids() {
    let Some(t) = Nook::new() else { return };
    let out = t.nook(&[
        "run",
        "--rm",
        "--userns",
        "single",
        t.image(),
        "cat",
        "/proc/self/uid_map",
    ]);
    out.assert_ok();
    assert_eq!(
        uid_map_lines(&out.stdout),
        vec![vec![0, t.runner().uid as u64, 1]],
        "{out}"
    );
}

#[test]
fn user_without_subordinate_ids_falls_back_and_is_told_how_to_fix_it() {
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    let out = t.sh("id -u; cat /proc/self/uid_map");
    out.assert_ok();
    assert_eq!(out.lines()[0], "0");
    assert_eq!(uid_map_lines(&out.stdout).len(), 1, "{out}");
    assert!(out.stderr.contains("note: only your own uid"), "{out}");
    assert!(out.stderr.contains("usermod --add-subuids"), "{out}");
    // --quiet keeps it silent.
    let quiet = t.nook(&["run", "--rm", "-q", t.image(), "true"]);
    quiet.assert_ok();
    assert!(quiet.stderr.is_empty(), "{quiet}");
}

#[test]
fn user_without_subordinate_ids_gets_a_clear_error_where_only_a_range_can_work() {
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    let out = t.nook(&["run", "--rm", "-q", "-u", "1000", t.image(), "true"]);
    out.assert_code(125);
    assert!(
        out.stderr
            .contains("user 1000:1000 does not exist in the container"),
        "{out}"
    );
    assert!(out.stderr.contains("usermod --add-subuids"), "{out}");
    assert!(t.container_dirs().is_empty());
    // chown to an unmapped id fails inside without root emulation, and the container still
    // reports it normally; with it (the default here) the chown succeeds without acting.
    let chown = |emulation: &str| {
        t.nook(&[
            "run",
            "--rm",
            "-q",
            "--root-emulation",
            emulation,
            t.image(),
            "chown",
            "1000",
            "/tmp",
        ])
    };
    let out = chown("off");
    assert_ne!(out.code, Some(0), "{out}");
    chown("auto").assert_ok();
}

/// A tar archive with entries owned by root, uid 42 and uid 1000, as real images have.
fn multi_owner_archive(t: &Nook) -> PathBuf {
    let path = t.dir.join("owners.tar");
    let mut builder = tar::Builder::new(fs::File::create(&path).expect("create archive"));
    let mut add = |name: &str, uid: u64, kind: tar::EntryType, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        builder
            .append_data(&mut h, name, data)
            .expect("append entry");
    };
    add("etc/", 0, tar::EntryType::Directory, 0o755, b"");
    add(
        "etc/passwd",
        0,
        tar::EntryType::Regular,
        0o644,
        b"root:x:0:0::/root:/bin/sh\n",
    );
    add("var/", 0, tar::EntryType::Directory, 0o755, b"");
    add("var/apt/", 42, tar::EntryType::Directory, 0o700, b"");
    add("var/apt/partial", 42, tar::EntryType::Regular, 0o600, b"x");
    add("home/", 0, tar::EntryType::Directory, 0o755, b"");
    add("home/u/", 1000, tar::EntryType::Directory, 0o750, b"");
    add(
        "home/u/notes",
        1000,
        tar::EntryType::Regular,
        0o640,
        b"mine\n",
    );
    let mut dev = tar::Header::new_gnu();
    dev.set_entry_type(tar::EntryType::Char);
    dev.set_device_major(1).expect("major");
    dev.set_device_minor(3).expect("minor");
    dev.set_mode(0o666);
    dev.set_size(0);
    builder
        .append_data(&mut dev, "dev-null", &b""[..])
        .expect("append device");
    builder.finish().expect("finish archive");
    drop(builder);
    t.give(&path);
    path
}

#[test]
fn import_keeps_owners_through_the_mapping_and_rmi_removes_everything() {
    let Some(t) = Nook::new() else { return };
    let sub = first_subuid(&t);
    let archive = multi_owner_archive(&t);
    let out = t.nook(&["import", archive.to_str().unwrap(), "owners"]);
    out.assert_ok();
    assert!(out.stderr.contains("skipped 1 device node"), "{out}");
    let rootfs = t.storage.join("images/owners/rootfs");
    let owner = |p: &str| fs::symlink_metadata(rootfs.join(p)).expect(p).uid();
    assert_eq!(owner("etc/passwd"), t.runner().uid);
    assert_eq!(owner("var/apt"), sub + 41);
    assert_eq!(owner("home/u/notes"), sub + 999);
    assert!(!rootfs.join("dev-null").exists());

    let listing = t.nook(&["images", "--format", "json"]);
    listing.assert_ok();
    let images: serde_json::Value = serde_json::from_str(&listing.stdout).expect("json");
    assert_eq!(images[0]["name"], "owners");

    // Inside, the owners are the archive's own.
    t.nook(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:/bb:ro", t.image()),
        "owners",
        "/bb/bin/busybox",
        "stat",
        "-c",
        "%u %n",
        "/etc/passwd",
        "/var/apt/partial",
        "/home/u/notes",
    ])
    .assert_ok()
    .assert_stdout("0 /etc/passwd\n42 /var/apt/partial\n1000 /home/u/notes");

    t.nook(&["rmi", "owners"]).assert_ok();
    let left: Vec<_> = fs::read_dir(t.storage.join("images"))
        .expect("images dir")
        .collect();
    assert!(left.is_empty(), "image files left behind: {left:?}");
}

#[test]
fn rmi_refuses_an_image_a_container_uses() {
    let Some(t) = Nook::new() else { return };
    let archive = multi_owner_archive(&t);
    t.nook(&["import", "-q", archive.to_str().unwrap(), "base"])
        .assert_ok();
    t.nook(&[
        "run",
        "--name",
        "user",
        "-v",
        &format!("{}:/bb:ro", t.image()),
        "base",
        "/bb/bin/true",
    ])
    .assert_ok();
    let out = t.nook(&["rmi", "base"]);
    out.assert_code(1);
    assert!(out.stderr.contains("used by container(s) user"), "{out}");
    t.nook(&["rm", "user"]).assert_ok();
    t.nook(&["rmi", "base"]).assert_ok();
}

#[test]
fn import_refuses_entries_that_leave_the_image_and_leaves_nothing() {
    let Some(t) = Nook::new() else { return };
    let path = t.dir.join("evil.tar");
    {
        let mut builder = tar::Builder::new(fs::File::create(&path).expect("create"));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(4);
        // Written raw: the tar crate refuses to build a `..` path itself.
        h.as_gnu_mut().expect("gnu").name[..12].copy_from_slice(b"../escape.tx");
        h.set_cksum();
        builder.append(&h, &b"evil"[..]).expect("append");
        builder.finish().expect("finish");
    }
    t.give(&path);
    let out = t.nook(&["import", path.to_str().unwrap(), "evil"]);
    out.assert_code(1);
    assert!(out.stderr.contains("../escape.tx"), "{out}");
    assert!(!t.dir.join("escape.tx").exists());
    assert!(!t.storage.join("images/escape.tx").exists());
    let left: Vec<_> = fs::read_dir(t.storage.join("images"))
        .expect("dir")
        .collect();
    assert!(left.is_empty(), "partial image left: {left:?}");
}

#[test]
fn debian_image_runs_apt_get_useradd_and_su_under_the_range_mapping() {
    let Some(archive) = debian_archive() else {
        return;
    };
    let Some(t) = Nook::new() else { return };
    let sub = first_subuid(&t);
    t.nook(&["import", "-q", archive.to_str().unwrap(), "debian"])
        .assert_ok();
    let out = t
        .cmd(&[
            "run",
            "--name",
            "deb",
            "debian",
            "sh",
            "-c",
            "set -e; apt-get update -qq; apt-get install -y -qq hello >/dev/null 2>&1; hello; \
         useradd u1; su u1 -c id; touch /f; chown 1000:1000 /f; stat -c %u:%g /f; \
         stat -c %U /var/cache/apt/archives/partial",
        ])
        .timeout(std::time::Duration::from_secs(300))
        .run();
    out.assert_ok();
    let lines = out.lines();
    assert!(lines.contains(&"Hello, world!"), "{out}");
    assert!(lines.iter().any(|l| l.starts_with("uid=1000(u1)")), "{out}");
    assert!(lines.contains(&"1000:1000"), "{out}");
    assert!(
        lines.contains(&"_apt"),
        "apt's sandbox user owns its cache\n{out}"
    );
    let id = t.container("deb").expect("listed")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let f = t.storage.join("containers").join(&id).join("upper/f");
    assert_eq!(fs::metadata(&f).expect("upper/f").uid(), sub + 999);
    t.nook(&["rm", "deb"]).assert_ok();
    t.nook(&["rmi", "debian"]).assert_ok();
    assert!(t.container_dirs().is_empty());
    assert_eq!(fs::read_dir(t.storage.join("images")).unwrap().count(), 0);
}

/// `nook ARGS` as real root, with the test's own storage and runtime dir: root is the case
/// under test, so the harness's switch to the test user is not wanted.
fn nook_as_root(t: &Nook, args: &[&str]) -> common::Out {
    let out = std::process::Command::new(t.bin())
        .args(args)
        .env("NOOK_STORAGE", t.dir.join("root-storage"))
        .env("XDG_RUNTIME_DIR", t.dir.join("root-run"))
        .env("HOME", t.dir.join("root-home"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run nook as root");
    common::Out {
        code: out.status.code(),
        signal: std::os::unix::process::ExitStatusExt::signal(&out.status),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn root_gets_a_full_range_without_helpers_and_apt_and_su_work() {
    if !nix::unistd::geteuid().is_root() {
        common::prerequisite_missing("root's id map is tested as root");
        return;
    }
    let Some(archive) = debian_archive() else {
        return;
    };
    let Some(t) = Nook::new() else { return };
    for dir in ["root-run", "root-home"] {
        fs::create_dir_all(t.dir.join(dir)).expect("mkdir");
    }
    let subuid = fs::read_to_string("/etc/subuid").unwrap_or_default();
    let subgid = fs::read_to_string("/etc/subgid").unwrap_or_default();
    let root_has_lines = [&subuid, &subgid].iter().all(|text| {
        text.lines()
            .any(|l| l.starts_with("root:") || l.starts_with("0:"))
    });
    nook_as_root(&t, &["import", "-q", archive.to_str().unwrap(), "debian"]).assert_ok();
    // apt's sandbox drops to _apt (uid 42) even for a local repository, and su switches users:
    // both need real ids above 0. Nothing here reaches the network.
    let out = nook_as_root(
        &t,
        &[
            "run",
            "--rm",
            "debian",
            "sh",
            "-c",
            "set -e; cat /proc/self/uid_map; echo --; rm -f /etc/apt/sources.list.d/*; \
             mkdir -p /srv/repo; : > /srv/repo/Packages; \
             echo 'deb [trusted=yes] file:/srv/repo ./' > /etc/apt/sources.list; \
             apt-get update -qq; echo apt-ok; useradd u1; su u1 -c 'id -u'",
        ],
    );
    out.assert_ok();
    let (maps, rest) = out.stdout.split_once("--\n").expect("two parts");
    let maps = uid_map_lines(maps);
    assert_eq!(maps[0], vec![0, 0, 1], "root stays root\n{out}");
    assert_eq!(maps[1][0], 1, "{out}");
    assert!(maps[1][2] >= 65535, "a full range above root\n{out}");
    let host = maps[1][1];
    if !root_has_lines {
        // The documented range: no user's line of /etc/subuid or /etc/subgid overlaps it.
        assert!(host >= 0x7000_0000, "{out}");
        for text in [&subuid, &subgid] {
            for line in text.lines() {
                let f: Vec<&str> = line.split(':').collect();
                let (Ok(start), Ok(count)) = (f[1].parse::<u64>(), f[2].parse::<u64>()) else {
                    continue;
                };
                assert!(
                    start + count <= host || host + maps[1][2] <= start,
                    "root's range {host}+{} overlaps {line}",
                    maps[1][2]
                );
            }
        }
    }
    let lines: Vec<&str> = rest.lines().collect();
    assert!(lines.contains(&"apt-ok"), "{out}");
    assert!(lines.contains(&"1000"), "su switched to u1\n{out}");
    for advice in ["subordinate", "usermod", "only your own uid"] {
        assert!(
            !out.stderr.contains(advice),
            "advice for root: {advice}\n{out}"
        );
    }
    let info = nook_as_root(&t, &["info"]);
    assert!(!info.stdout.contains("usermod"), "{info}");
    let ids = info
        .lines()
        .into_iter()
        .find(|l| l.contains("subordinate ids"))
        .unwrap_or_else(|| panic!("no subordinate ids line\n{info}"))
        .to_string();
    assert!(ids.starts_with("ok"), "{info}");
    assert!(ids.contains(&host.to_string()), "{info}");
    assert!(
        info.stdout
            .contains("not needed: root writes its containers' id maps itself"),
        "{info}"
    );
    nook_as_root(&t, &["rmi", "debian"]).assert_ok();
}

/// The `nook: note:` lines of `stderr`.
fn notes(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("nook: note:"))
        .collect()
}

#[test]
fn keep_id_on_an_image_of_the_default_map_advises_the_keep_id_import_that_fixes_it() {
    let Some(t) = Nook::new() else { return };
    if !t.has_subids() {
        return;
    }
    t.nook(&["import", "-q", t.image(), "img"]).assert_ok();
    let out = t.nook(&["run", "--rm", "--userns", "keep-id", "img", "true"]);
    out.assert_ok();
    let note = notes(&out.stderr).join("\n");
    assert!(
        note.contains("nook rmi img` then `nook import --userns keep-id SOURCE img`"),
        "{out}"
    );
    assert!(!note.contains("  "), "a run of spaces in the note\n{out}");
    // The advised import gives the map the run wants: no note any more.
    t.nook(&["rmi", "img"]).assert_ok();
    t.nook(&["import", "-q", "--userns", "keep-id", t.image(), "img"])
        .assert_ok();
    let out = t.nook(&["run", "--rm", "--userns", "keep-id", "img", "id", "-u"]);
    out.assert_ok().assert_stdout(&t.runner().uid.to_string());
    assert!(notes(&out.stderr).is_empty(), "{out}");
    // And back: the default run on the keep-id image names the plain import.
    let out = t.nook(&["run", "--rm", "img", "true"]);
    assert!(
        out.stderr.contains("then `nook import SOURCE img`"),
        "{out}"
    );
    t.nook(&["rmi", "img"]).assert_ok();
}

#[test]
fn keep_id_import_without_subordinate_ids_says_it_needs_a_range_and_leaves_nothing() {
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    let out = t.nook(&["import", "--userns", "keep-id", t.image(), "img"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr
            .contains("--userns keep-id needs a subordinate id range to import"),
        "{out}"
    );
    for wrong in ["EINVAL", "chown", "Invalid argument", "  "] {
        assert!(!out.stderr.contains(wrong), "{wrong:?} in\n{out}");
    }
    assert!(
        !t.storage.join("images").exists()
            || fs::read_dir(t.storage.join("images")).unwrap().count() == 0,
        "an image was left behind"
    );
    // What the error advises works: the default import, run with keep-id, shows its files as
    // the user's, and no note advises the keep-id import that cannot work here.
    t.nook(&["import", "-q", t.image(), "img"]).assert_ok();
    let out = t.nook(&[
        "run", "--rm", "--userns", "keep-id", "img", "stat", "-c", "%u", "/bin",
    ]);
    out.assert_ok().assert_stdout(&t.runner().uid.to_string());
    assert!(!out.stderr.contains("--userns keep-id SOURCE"), "{out}");
    assert!(
        out.stderr.contains("its files show as owned by you"),
        "{out}"
    );
    t.nook(&["rmi", "img"]).assert_ok();
}
