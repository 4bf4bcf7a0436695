//! The three backends (overlay, fuse, copy): the same file semantics through each, the automatic
//! choice and its fallbacks, reflinked copies, and no fuse-overlayfs left behind after a kill.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{debian_archive, tree_listing, wait_until, Nook};
use nix::sys::signal::Signal;
use nook::storage::upper::{self, Change, ChangeKind, Layer, LayerKind};

/// Some tests here mount filesystems (a tmpfs for storage, a FUSE storage) and the harness checks
/// after every nook call that the test process's mount table did not change: the tests of this
/// file take turns.
static MOUNTS: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    MOUNTS.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skips (or fails under CI=true) with a reason.
fn skip(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing under CI=true: {reason}");
    }
    eprintln!(
        "SKIPPED {}: {reason}",
        std::thread::current().name().unwrap_or("test")
    );
}

/// A mount made by the test, undone when dropped.
struct Mounted {
    target: PathBuf,
    /// `fusermount3 -u` as this uid instead of umount(2).
    fuse_user: Option<u32>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let ok = match self.fuse_user {
            Some(uid) => {
                let mut cmd = Command::new("fusermount3");
                cmd.arg("-u").arg(&self.target);
                if is_root() {
                    cmd.uid(uid);
                }
                cmd.status().is_ok_and(|s| s.success())
            }
            None => nix::mount::umount(&self.target).is_ok(),
        };
        if !ok {
            let _ = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The test's storage on a fresh tmpfs when the test can mount one (root): the machines' root
/// ext4 spends about 1 ms per inode, which the 10k-files case would feel.
fn fast_storage(t: &Nook) -> Option<Mounted> {
    if !is_root() {
        return None;
    }
    fs::create_dir_all(&t.storage).expect("mkdir storage");
    nix::mount::mount(
        Some("tmpfs"),
        &t.storage,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=4g,mode=0700"),
    )
    .expect("mount a tmpfs for the storage");
    let guard = Mounted {
        target: t.storage.clone(),
        fuse_user: None,
    };
    t.give(&t.storage);
    Some(guard)
}

/// The longest name each backend handles. fuse-overlayfs 1.10 refuses to create names of 252
/// bytes or more (ENAMETOOLONG) and dies when one is deleted from the image (its `.wh.` whiteout
/// name would pass NAME_MAX), which leaves the container's root disconnected (ENOTCONN).
fn longest_name(backend: &str) -> usize {
    if backend == "fuse" {
        251
    } else {
        255
    }
}

fn long_name(c: char, len: usize) -> String {
    std::iter::repeat(c).take(len).collect()
}

/// An image with something for every case of the suite, owned by the runner.
fn make_image(t: &Nook, longest: usize) -> (PathBuf, bool) {
    let img = PathBuf::from(t.image_copy("img"));
    let data = img.join("data");
    fs::create_dir_all(data.join("dir_to_rename/b")).unwrap();
    fs::create_dir_all(data.join("dir_to_replace/sub")).unwrap();
    for (name, text) in [
        ("file.txt", "original\n"),
        ("append.txt", "a\n"),
        ("trunc.txt", "long content\n"),
        ("delete.txt", "delete\n"),
        ("renamefile.txt", "rename\n"),
        ("chmod.txt", "chmod\n"),
        ("chown.txt", "chown\n"),
        ("xattr.txt", "xattr\n"),
        ("hard1", "hard\n"),
        ("dir_to_rename/a", "a\n"),
        ("dir_to_rename/b/c", "c\n"),
        ("dir_to_replace/old1", "old\n"),
        ("dir_to_replace/sub/old2", "old\n"),
    ] {
        fs::write(data.join(name), text).unwrap();
    }
    fs::write(data.join(long_name('d', longest)), "long\n").unwrap();
    fs::write(data.join(long_name('r', 200)), "long rename\n").unwrap();
    fs::hard_link(data.join("hard1"), data.join("hard2")).unwrap();
    std::os::unix::fs::symlink("file.txt", data.join("link")).unwrap();
    let xattrs = nook::sys::set_xattr(&data.join("xattr.txt"), b"user.nook", b"image").is_ok();
    t.give(&img);
    (img, xattrs)
}

/// The script run in the container: each case prints `ok NAME` or `FAIL NAME`.
/// What writing one name of an image file with two hard links does. Native overlayfs in a user
/// namespace copies that name up alone (its `index` feature, which keeps links, is off there: the
/// kernel says "upper fs does not support file handles"); fuse-overlayfs and the copy keep them.
fn image_links_survive_a_write(backend: &str) -> bool {
    backend != "overlay"
}

fn suite_script(chown: bool, longest: usize, links_survive: bool) -> String {
    let long_delete = long_name('d', longest);
    let long_rename = long_name('r', 200);
    let long_new = long_name('n', longest);
    let write_links = if links_survive {
        r#"[ "$(stat -c %i hard1)" = "$(stat -c %i hard2)" ] && [ "$(cat hard2)" = "$(printf "hard\nmore")" ]"#
    } else {
        r#"[ "$(stat -c %h hard1)" = 1 ] && [ "$(cat hard2)" = hard ] && [ "$(cat hard1)" = "$(printf "hard\nmore")" ]"#
    };
    let chown_case = if chown {
        "chown 5:6 chown.txt; ck chown-copy-up '[ \"$(stat -c %u:%g chown.txt)\" = 5:6 ] && [ \"$(cat chown.txt)\" = chown ]'"
    } else {
        ""
    };
    format!(
        r#"
ck() {{ if eval "$2"; then echo "ok $1"; else echo "FAIL $1: $2"; fi; }}
cd /data || exit 99
echo new > file.txt; ck write '[ "$(cat file.txt)" = new ]'
echo b >> append.txt; ck append '[ "$(cat append.txt)" = "$(printf "a\nb")" ]'
: > trunc.txt; ck truncate '[ -e trunc.txt ] && [ ! -s trunc.txt ]'
rm delete.txt; ck delete '[ ! -e delete.txt ] && ! ls | grep -qx delete.txt'
mv renamefile.txt renamed.txt; ck rename-file '[ ! -e renamefile.txt ] && [ "$(cat renamed.txt)" = rename ]'
mv dir_to_rename renamed_dir; ck rename-image-dir '[ ! -e dir_to_rename ] && [ "$(cat renamed_dir/b/c)" = c ] && [ "$(cat renamed_dir/a)" = a ]'
mkdir newdir && echo x > newdir/f && mv newdir newdir2; ck rename-new-dir '[ ! -e newdir ] && [ "$(cat newdir2/f)" = x ]'
rm -rf dir_to_replace && mkdir dir_to_replace && echo fresh > dir_to_replace/new; ck opaque-dir '[ "$(ls -A dir_to_replace)" = new ]'
chmod 0600 chmod.txt; ck chmod-copy-up '[ "$(stat -c %a chmod.txt)" = 600 ] && [ "$(cat chmod.txt)" = chmod ]'
{chown_case}
ck image-hardlinks '[ "$(stat -c %i hard1)" = "$(stat -c %i hard2)" ] && [ "$(stat -c %h hard1)" = 2 ]'
echo more >> hard1; ck image-hardlink-write '{write_links}'
echo one > ln_a && ln ln_a ln_b && echo two >> ln_b; ck new-hardlinks '[ "$(stat -c %i ln_a)" = "$(stat -c %i ln_b)" ] && [ "$(stat -c %h ln_a)" = 2 ] && [ "$(cat ln_a)" = "$(printf "one\ntwo")" ]'
ck image-symlink '[ "$(readlink link)" = file.txt ] && [ "$(cat link)" = new ]'
ln -s /data/renamed.txt sym2; ck new-symlink '[ "$(readlink sym2)" = /data/renamed.txt ] && [ "$(cat sym2)" = rename ]'
chmod 0640 xattr.txt; ck xattr-file-copy-up '[ "$(cat xattr.txt)" = xattr ]'
truncate -s 1G sparse && echo end >> sparse; ck sparse-1g '[ "$(stat -c %s sparse)" = 1073741828 ] && [ "$(du -k sparse | cut -f1)" -lt 1024 ] && [ "$(tail -c 4 sparse)" = end ]'
mkdir many && i=0 && while [ $i -lt 10000 ]; do echo $i > many/f$i; i=$((i+1)); done; ck 10k-files '[ "$(ls many | wc -l)" = 10000 ] && [ "$(cat many/f9999)" = 9999 ]'
echo long > {long_new}; ck long-name-new '[ "$(cat {long_new})" = long ]'
rm {long_delete}; ck long-name-delete '[ ! -e {long_delete} ]'
mv {long_rename} short.txt; ck long-name-rename '[ ! -e {long_rename} ] && [ "$(cat short.txt)" = "long rename" ]'
echo done
"#
    )
}

const CASES: [&str; 23] = [
    "write",
    "append",
    "truncate",
    "delete",
    "rename-file",
    "rename-image-dir",
    "rename-new-dir",
    "opaque-dir",
    "chmod-copy-up",
    "chown-copy-up",
    "image-hardlinks",
    "image-hardlink-write",
    "new-hardlinks",
    "image-symlink",
    "new-symlink",
    "xattr-file-copy-up",
    "sparse-1g",
    "10k-files",
    "long-name-new",
    "long-name-delete",
    "long-name-rename",
    // Checked on the host below.
    "image-unchanged",
    "layer-readable",
];

/// One semantic suite, run through `backend`.
fn semantics(backend: &str) {
    let _serial = serial();
    let Some(t) = Nook::new() else { return };
    let _tmpfs = fast_storage(&t);
    let longest = longest_name(backend);
    let (img, image_xattrs) = make_image(&t, longest);
    let before = tree_listing(&img);
    let chown = t.has_subids();
    let name = format!("sem-{backend}");
    let started = Instant::now();
    let out = t
        .cmd(&[
            "run",
            "--name",
            &name,
            "--backend",
            backend,
            img.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &suite_script(chown, longest, image_links_survive_a_write(backend)),
        ])
        .timeout(Duration::from_secs(120))
        .run();
    eprintln!("{backend}: suite ran in {:?}", started.elapsed());
    out.assert_ok();
    let failed: Vec<&str> = out
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("FAIL"))
        .collect();
    assert!(failed.is_empty(), "{backend}: {failed:#?}\n{out}");
    for case in &CASES[..CASES.len() - 2] {
        if *case == "chown-copy-up" && !chown {
            continue;
        }
        assert!(
            out.lines().contains(&format!("ok {case}").as_str()),
            "{backend}: case {case} did not run\n{out}"
        );
    }
    assert_eq!(
        tree_listing(&img),
        before,
        "{backend}: the image was written"
    );

    let meta: serde_json::Value = t
        .container(&name)
        .unwrap_or_else(|| panic!("{name} is not in `nook ps`"));
    assert_eq!(meta["backend"], backend, "{meta}");
    let dir = t
        .storage
        .join("containers")
        .join(meta["id"].as_str().unwrap());
    let layer = match backend {
        "copy" => {
            let tree = dir.join("rootfs/data");
            assert!(!tree.join("delete.txt").exists());
            assert!(!tree.join("dir_to_replace/old1").exists());
            assert_eq!(fs::read_to_string(tree.join("file.txt")).unwrap(), "new\n");
            tree
        }
        _ => {
            let upper = dir.join("upper");
            let changes = upper::changes(&Layer {
                kind: LayerKind::for_backend(backend),
                top: upper.clone(),
                base: PathBuf::from(&img),
            })
            .expect("read the upper layer");
            let change = |kind, path: String| Change {
                path: path.into(),
                kind,
            };
            for expected in [
                change(ChangeKind::Deleted, "data/delete.txt".into()),
                change(ChangeKind::Deleted, "data/dir_to_rename".into()),
                change(
                    ChangeKind::Deleted,
                    format!("data/{}", long_name('d', longest)),
                ),
                change(ChangeKind::Deleted, "data/dir_to_replace/old1".into()),
                change(ChangeKind::Added, "data/dir_to_replace/new".into()),
                change(ChangeKind::Changed, "data/file.txt".into()),
            ] {
                assert!(
                    changes.contains(&expected),
                    "{backend}: the upper layer does not record {expected:?}: {:#?}",
                    changes
                        .iter()
                        .filter(|c| !c.path.starts_with("data/many"))
                        .collect::<Vec<_>>()
                );
            }
            upper.join("data")
        }
    };
    if image_xattrs {
        match nook::sys::get_xattr(&layer.join("xattr.txt"), b"user.nook") {
            Ok(v) => assert_eq!(v, b"image", "{backend}: xattr changed on copy-up"),
            Err(e) => panic!(
                "{backend}: the image's user.nook xattr was lost on copy-up of xattr.txt: {e}"
            ),
        }
    }
    let sparse = fs::metadata(layer.join("sparse")).unwrap();
    assert!(
        sparse.blocks() * 512 < 4 << 20,
        "{backend}: the 1 GiB sparse file takes {} KiB",
        sparse.blocks() / 2
    );

    t.nook(&["rm", &name]).assert_ok();
    assert!(!dir.exists(), "{backend}: nook rm left {}", dir.display());
}

#[test]
fn semantics_through_overlay() {
    semantics("overlay");
}

#[test]
fn semantics_through_fuse() {
    semantics("fuse");
}

#[test]
fn semantics_through_copy() {
    semantics("copy");
}

/// `nook ps --format json` of a container run with `args`.
fn run_and_describe(
    t: &Nook,
    name: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let mut args = vec!["run", "--name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[t.image(), "--", "sh", "-c", "echo through > /f && cat /f"]);
    let mut cmd = t.cmd(&args);
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    let out = cmd.run();
    out.assert_ok().assert_stdout("through\n");
    let mut ps = t.cmd(&["ps", "--format", "json"]);
    for (k, v) in env {
        ps = ps.env(k, v);
    }
    let ps = ps.run();
    ps.assert_ok();
    let all: Vec<serde_json::Value> = serde_json::from_str(&ps.stdout).expect("ps JSON");
    all.into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not in `nook ps`:\n{ps}"))
}

#[test]
fn auto_picks_overlay_on_a_local_filesystem_and_caches_the_probe() {
    let _serial = serial();
    let Some(t) = Nook::new() else { return };
    let c = run_and_describe(&t, "first", &[], &[]);
    assert_eq!(c["backend"], "overlay", "{c}");
    let reason = c["backend_reason"].as_str().unwrap();
    assert!(
        reason.contains("trial overlayfs mount")
            && reason.contains(&t.storage.display().to_string()),
        "{reason}"
    );
    let cache = t.storage.join("backend-probe.json");
    let probed = fs::metadata(&cache)
        .expect("the probe is cached")
        .mtime_nsec();
    let second = run_and_describe(&t, "second", &[], &[]);
    assert_eq!(second["backend_reason"], c["backend_reason"]);
    assert_eq!(
        fs::metadata(&cache).unwrap().mtime_nsec(),
        probed,
        "probed again"
    );
    let leftovers: Vec<String> = t
        .container_dirs()
        .into_iter()
        .filter(|d| d.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "probe directories left: {leftovers:?}"
    );
    assert!(
        !fs::read_dir(&t.storage)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".probe")),
        "a probe directory was left in the storage"
    );
}

#[test]
fn the_config_file_sets_the_default_and_mistakes_name_the_line() {
    let _serial = serial();
    let Some(t) = Nook::new() else { return };
    let config = t.mkdir("config/nook");
    t.write_file(config.join("nook.conf"), "# mine\nbackend = \"copy\"\n");
    let xdg = t.dir.join("config");
    let c = run_and_describe(
        &t,
        "fromconf",
        &[],
        &[("XDG_CONFIG_HOME", xdg.to_str().unwrap())],
    );
    assert_eq!(c["backend"], "copy", "{c}");
    let flag = run_and_describe(
        &t,
        "fromflag",
        &["--backend", "overlay"],
        &[("XDG_CONFIG_HOME", xdg.to_str().unwrap())],
    );
    assert_eq!(
        flag["backend"], "overlay",
        "--backend must win over the file: {flag}"
    );

    t.write_file(config.join("nook.conf"), "backend = \"zfs\"\n");
    let out = t
        .cmd(&["run", "--rm", t.image(), "true"])
        .env("XDG_CONFIG_HOME", xdg.to_str().unwrap())
        .run();
    out.assert_code(125);
    assert!(
        out.stderr.contains("nook/nook.conf:1") && out.stderr.contains("\"zfs\""),
        "{out}"
    );
    assert_eq!(t.container_dirs().len(), 2, "a failed run left a container");
}

/// A FUSE filesystem mounted by the runner (fuse-overlayfs through fusermount3), for storage that
/// cannot hold an overlay upper layer.
fn fuse_storage(t: &Nook) -> Option<Mounted> {
    if !Path::new("/dev/fuse").exists() || nook::rootfs::fuse::find_program().is_none() {
        skip("fuse-overlayfs and /dev/fuse are needed to make a FUSE storage");
        return None;
    }
    let base = t.mkdir("fusefs");
    for d in ["l", "u", "w", "m"] {
        t.mkdir(&format!("fusefs/{d}"));
    }
    let mut cmd = Command::new("fuse-overlayfs");
    cmd.arg("-o")
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            base.join("l").display(),
            base.join("u").display(),
            base.join("w").display()
        ))
        .arg(base.join("m"))
        .stdin(Stdio::null());
    let runner = t.runner().clone();
    if runner.switch {
        cmd.uid(runner.uid).gid(runner.gid);
    }
    let out = cmd.output().expect("run fuse-overlayfs");
    assert!(
        out.status.success(),
        "mounting a FUSE storage failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(Mounted {
        target: base.join("m"),
        fuse_user: Some(runner.uid),
    })
}

/// PATH with only the id-map helpers: nook finds no fuse-overlayfs.
fn path_without_fuse(t: &Nook) -> String {
    let bin = t.mkdir("bin-nofuse");
    for helper in ["newuidmap", "newgidmap"] {
        if let Some(p) = ["/usr/bin", "/bin", "/usr/sbin"]
            .iter()
            .map(|d| Path::new(d).join(helper))
            .find(|p| p.exists())
        {
            std::os::unix::fs::symlink(p, bin.join(helper)).unwrap();
        }
    }
    bin.display().to_string()
}

#[test]
fn auto_falls_back_when_the_storage_is_on_fuse() {
    let _serial = serial();
    let Some(t) = Nook::new() else { return };
    let Some(fusefs) = fuse_storage(&t) else {
        return;
    };
    let storage = fusefs.target.join("storage");
    let storage_env = storage.to_str().unwrap();

    let c = run_and_describe(&t, "onfuse", &[], &[("NOOK_STORAGE", storage_env)]);
    let backend = c["backend"].as_str().unwrap();
    let reason = c["backend_reason"].as_str().unwrap();
    assert!(backend == "fuse" || backend == "copy", "{c}");
    assert!(
        reason.contains(&format!("{} is on fuse", storage.display())),
        "the reason must name the filesystem: {reason}"
    );

    let forced = t
        .cmd(&["run", "--rm", "--backend", "overlay", t.image(), "true"])
        .env("NOOK_STORAGE", storage_env)
        .run();
    forced.assert_code(125);
    assert!(
        forced.stderr.contains("--backend overlay cannot work here")
            && forced.stderr.contains("is on fuse")
            && forced.stderr.contains("--backend fuse or copy"),
        "{forced}"
    );

    // Without fuse-overlayfs the probe is new (the cache key says so) and picks copy.
    let path = path_without_fuse(&t);
    let c = run_and_describe(
        &t,
        "nofuse",
        &[],
        &[("NOOK_STORAGE", storage_env), ("PATH", &path)],
    );
    assert_eq!(c["backend"], "copy", "{c}");
    let reason = c["backend_reason"].as_str().unwrap();
    assert!(reason.contains("fuse-overlayfs is not on PATH"), "{reason}");
    let forced = t
        .cmd(&["run", "--rm", "--backend", "fuse", t.image(), "true"])
        .env("NOOK_STORAGE", storage_env)
        .env("PATH", &path)
        .run();
    forced.assert_code(125);
    assert!(
        forced.stderr.contains("fuse-overlayfs is not on PATH")
            && forced.stderr.contains("apt-get install fuse-overlayfs"),
        "{forced}"
    );
    for name in ["onfuse", "nofuse"] {
        t.cmd(&["rm", name])
            .env("NOOK_STORAGE", storage_env)
            .run()
            .assert_ok();
    }
    drop(fusefs);
}

#[test]
fn without_fuse_overlayfs_auto_picks_copy_only_where_overlay_fails() {
    let _serial = serial();
    let Some(t) = Nook::new() else { return };
    let path = path_without_fuse(&t);
    let c = run_and_describe(&t, "local", &[], &[("PATH", &path)]);
    assert_eq!(c["backend"], "overlay", "overlay needs no helper: {c}");
}

/// fuse-overlayfs processes of the runner still alive (zombies do not count: they hold nothing).
fn live_fuse_overlayfs(storage: &Path) -> Vec<String> {
    let needle = storage.display().to_string();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            let state = stat[stat.rfind(')')? + 2..].chars().next()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (state != 'Z' && cmdline.contains("fuse-overlayfs") && cmdline.contains(&needle))
                .then(|| format!("{} {cmdline}", e.file_name().to_string_lossy()))
        })
        .collect()
}

/// Mount points under `storage` in any mount namespace on the machine.
fn mounts_under(storage: &Path) -> Vec<String> {
    let needle = storage.display().to_string();
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        if let Ok(info) = fs::read_to_string(e.path().join("mountinfo")) {
            for line in info.lines().filter(|l| l.contains(&needle)) {
                found.push(format!("pid {}: {line}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[test]
fn sigkill_of_nook_leaves_no_fuse_overlayfs_or_mount() {
    let _serial = serial();
    let Some(t) = Nook::new() else { return };
    if nook::rootfs::fuse::find_program().is_none() {
        skip("fuse-overlayfs is not installed");
        return;
    }
    let running = t
        .cmd(&[
            "run",
            "--backend",
            "fuse",
            "--name",
            "victim",
            t.image(),
            "--",
            "sh",
            "-c",
            "echo ready; sleep 300",
        ])
        .spawn();
    running.wait_for_stdout("ready", Duration::from_secs(20));
    assert!(
        !live_fuse_overlayfs(&t.storage).is_empty(),
        "no fuse-overlayfs serves the container"
    );
    running.signal(Signal::SIGKILL);
    let out = running.wait();
    assert_eq!(out.signal, Some(libc::SIGKILL), "{out}");
    let gone = wait_until(Duration::from_secs(10), || {
        live_fuse_overlayfs(&t.storage).is_empty() && mounts_under(&t.storage).is_empty()
    });
    assert!(
        gone,
        "left behind: {:#?} {:#?}",
        live_fuse_overlayfs(&t.storage),
        mounts_under(&t.storage)
    );
    // The harness checks at the end of the test that no process of it is left.
    // The next command sees the container as exited and can remove it.
    let c = t.container("victim").expect("victim in ps");
    assert_eq!(c["status"], "exited", "{c}");
    t.nook(&["rm", "victim"]).assert_ok();
}

#[test]
fn a_fuse_container_that_ends_unmounts_and_stops_fuse_overlayfs() {
    let _serial = serial();
    let Some(t) = Nook::new() else { return };
    if nook::rootfs::fuse::find_program().is_none() {
        skip("fuse-overlayfs is not installed");
        return;
    }
    let started = Instant::now();
    let out = t.nook(&[
        "run",
        "--rm",
        "--backend",
        "fuse",
        t.image(),
        "--",
        "sh",
        "-c",
        "exit 7",
    ]);
    out.assert_code(7);
    // fuse-overlayfs ends on SIGTERM at once; the helper would kill it only after 5 s.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the fuse container took {:?} to end",
        started.elapsed()
    );
    assert!(live_fuse_overlayfs(&t.storage).is_empty());
    assert!(mounts_under(&t.storage).is_empty());
    // The container does not see fuse-overlayfs: it is outside the container's pid namespace.
    let out = t.nook(&[
        "run",
        "--rm",
        "--backend",
        "fuse",
        t.image(),
        "--",
        "ps",
        "-o",
        "comm",
    ]);
    out.assert_ok();
    assert!(!out.stdout.contains("fuse-overlayfs"), "{out}");
}

/// Disk blocks in use on the filesystem holding `path`, in KiB.
fn used_kib(path: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(path).unwrap();
    (s.blocks() - s.blocks_free()) * s.fragment_size() / 1024
}

#[test]
fn copy_reflinks_on_a_filesystem_that_can() {
    let _serial = serial();
    let Some(t) = Nook::new() else { return };
    let Ok(base) = std::env::var("NOOK_TEST_REFLINK_DIR") else {
        skip("NOOK_TEST_REFLINK_DIR is not set (scripts/test.sh makes an xfs loop filesystem)");
        return;
    };
    let dir = PathBuf::from(base).join(format!("t{}", std::process::id()));
    let _cleanup = RemoveOnDrop(dir.clone());
    fs::create_dir_all(&dir).unwrap();
    let img = dir.join("img");
    let status = Command::new("cp")
        .arg("-a")
        .arg(t.image())
        .arg(&img)
        .status()
        .unwrap();
    assert!(status.success());
    // Enough data that a plain copy takes measurable time and space.
    let blob = vec![0x5au8; 1 << 20];
    fs::create_dir_all(img.join("blob")).unwrap();
    for i in 0..64 {
        let mut data = blob.clone();
        data[..8].copy_from_slice(&(i as u64).to_le_bytes());
        fs::write(img.join(format!("blob/{i}")), &data).unwrap();
    }
    let storage = dir.join("storage");
    fs::create_dir_all(&storage).unwrap();
    t.give(&dir);
    let storage_env = storage.to_str().unwrap().to_string();
    nix::unistd::sync();

    // Space, not time, tells a reflink from a copy: timings on a loaded machine prove nothing.
    let before = used_kib(&dir);
    let out = t
        .cmd(&[
            "run",
            "--name",
            "reflinked",
            "--backend",
            "copy",
            img.to_str().unwrap(),
            "true",
        ])
        .env("NOOK_STORAGE", &storage_env)
        .run();
    out.assert_ok();
    nix::unistd::sync();
    let grown = used_kib(&dir).saturating_sub(before);
    let image_kib = 64 * 1024;
    assert!(
        grown < image_kib / 8,
        "the copy used {grown} KiB for a {image_kib} KiB image: not reflinked"
    );
    let c = t
        .cmd(&["ps", "--format", "json"])
        .env("NOOK_STORAGE", &storage_env)
        .run();
    c.assert_ok();
    assert!(c.stdout.contains("\"backend\": \"copy\""), "{c}");
    let copied = fs::read(
        storage
            .join("containers")
            .join(
                fs::read_dir(storage.join("containers"))
                    .unwrap()
                    .flatten()
                    .find(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .unwrap()
                    .file_name(),
            )
            .join("rootfs/blob/7"),
    )
    .unwrap();
    assert_eq!(&copied[..8], &7u64.to_le_bytes());
    t.cmd(&["rm", "reflinked"])
        .env("NOOK_STORAGE", &storage_env)
        .run()
        .assert_ok();
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        common::force_remove(&self.0);
    }
}

#[test]
fn info_reports_every_check_and_the_fix_for_failures() {
    let _serial = serial();
    let Some(t) = Nook::new() else { return };
    let out = t.nook(&["info", "--format", "json"]);
    out.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let checks = v["checks"].as_array().expect("checks");
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    for expected in [
        "kernel",
        "user namespaces",
        "subordinate uids",
        "subordinate gids",
        "newuidmap",
        "newgidmap",
        "id mapping",
        "/dev/fuse",
        "fuse-overlayfs",
        "storage",
        "runtime dir",
        "backend",
        "cgroup v2",
        "seccomp",
    ] {
        assert!(names.contains(&expected), "no {expected} check: {names:?}");
    }
    for c in checks {
        assert_eq!(
            c["ok"] == false,
            c.get("fix").is_some(),
            "a failed check needs a fix, a passing one none: {c}"
        );
    }
    let backend = checks.iter().find(|c| c["name"] == "backend").unwrap();
    assert!(
        backend["value"].as_str().unwrap().contains("auto picks"),
        "{backend}"
    );

    let path = path_without_fuse(&t);
    let out = t.cmd(&["info"]).env("PATH", &path).run();
    out.assert_ok();
    let fuse_line = out
        .lines()
        .into_iter()
        .position(|l| l.contains("fuse-overlayfs") && l.starts_with("warn"))
        .unwrap_or_else(|| panic!("fuse-overlayfs is not reported missing:\n{out}"));
    assert!(
        out.lines()[fuse_line + 1].contains("fix: sudo apt-get install fuse-overlayfs"),
        "{out}"
    );
}

#[test]
fn a_detached_fuse_container_runs_in_the_background() {
    let _serial = serial();
    let Some(t) = Nook::new() else { return };
    if nook::rootfs::fuse::find_program().is_none() {
        skip("fuse-overlayfs is not installed");
        return;
    }
    let started = Instant::now();
    let out = t.nook(&[
        "run",
        "-d",
        "--name",
        "bg",
        "--backend",
        "fuse",
        t.image(),
        "--",
        "sh",
        "-c",
        "echo started; sleep 2; echo done",
    ]);
    out.assert_ok().assert_stdout("bg\n");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "`nook run -d` waited {:?} (for the container?)",
        started.elapsed()
    );
    assert_eq!(t.container("bg").unwrap()["status"], "running");
    assert!(!live_fuse_overlayfs(&t.storage).is_empty());
    // `nook exec` joins the container's mount namespace, fuse-overlayfs root included.
    t.nook(&["exec", "bg", "sh", "-c", "echo joined > /x && cat /x"])
        .assert_ok()
        .assert_stdout("joined\n");
    assert!(wait_until(Duration::from_secs(10), || t
        .container("bg")
        .is_some_and(|c| c["status"] == "exited")));
    t.nook(&["logs", "bg"])
        .assert_ok()
        .assert_stdout("started\ndone\n");
    assert!(wait_until(Duration::from_secs(5), || live_fuse_overlayfs(
        &t.storage
    )
    .is_empty()));
    t.nook(&["rm", "bg"]).assert_ok();
}

#[test]
fn a_copy_container_of_the_debian_image_is_reflinked() {
    let _serial = serial();
    let Some(t) = Nook::new() else { return };
    let Ok(base) = std::env::var("NOOK_TEST_REFLINK_DIR") else {
        skip("NOOK_TEST_REFLINK_DIR is not set (scripts/test.sh makes an xfs loop filesystem)");
        return;
    };
    let Some(archive) = debian_archive() else {
        return;
    };
    let dir = PathBuf::from(base).join(format!("deb{}", std::process::id()));
    let _cleanup = RemoveOnDrop(dir.clone());
    let storage = dir.join("storage");
    let host = dir.join("host");
    fs::create_dir_all(&storage).unwrap();
    fs::create_dir_all(&host).unwrap();
    t.give(&dir);
    let storage_env = storage.to_str().unwrap().to_string();
    t.cmd(&["import", "-q", archive.to_str().unwrap(), "debian"])
        .env("NOOK_STORAGE", &storage_env)
        .timeout(Duration::from_secs(120))
        .run()
        .assert_ok();

    // The yardstick: a plain copy of the same tree on the same filesystem.
    let status = Command::new("tar")
        .args([
            "-xf",
            archive.to_str().unwrap(),
            "--no-same-owner",
            "--exclude=./dev",
            "-C",
        ])
        .arg(&host)
        .status()
        .unwrap();
    assert!(status.success(), "tar -x of {}", archive.display());
    nix::unistd::sync();
    // Space, not time, tells a reflink from a copy: timings on a loaded machine prove nothing.
    let before = used_kib(&dir);
    let status = Command::new("cp")
        .args(["-a", "--reflink=never"])
        .arg(&host)
        .arg(dir.join("plain"))
        .status()
        .unwrap();
    assert!(status.success());
    nix::unistd::sync();
    let plain_kib = used_kib(&dir).saturating_sub(before);

    let before = used_kib(&dir);
    t.cmd(&[
        "run",
        "--name",
        "deb",
        "--backend",
        "copy",
        "debian",
        "true",
    ])
    .env("NOOK_STORAGE", &storage_env)
    .run()
    .assert_ok();
    nix::unistd::sync();
    let grown = used_kib(&dir).saturating_sub(before);
    assert!(
        grown * 5 < plain_kib,
        "the copy used {grown} KiB where a plain copy uses {plain_kib} KiB: not reflinked"
    );
    for args in [&["rm", "deb"][..], &["rmi", "debian"][..]] {
        t.cmd(args)
            .env("NOOK_STORAGE", &storage_env)
            .run()
            .assert_ok();
    }
}
