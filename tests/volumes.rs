//! `-v HOST:CTR[:ro|:rw]`: host directories shared with the container.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{tree_listing, Nook};

fn volume_arg(host: &Path, rest: &str) -> String {
    format!("{}:{rest}", host.display())
}

#[test]
fn volume_shares_a_host_directory_both_ways() {
    let Some(t) = Nook::new() else { return };
    let vol = t.mkdir("vol");
    t.write_file("vol/from-host", "hello from the host\n");
    let out = t.nook(&[
        "run",
        "--rm",
        "-v",
        &volume_arg(&vol, "/data"),
        t.image(),
        "sh",
        "-c",
        "cat /data/from-host && echo from the container > /data/from-container",
    ]);
    out.assert_ok().assert_stdout("hello from the host");
    assert_eq!(
        fs::read_to_string(vol.join("from-container")).expect("file written in the container"),
        "from the container\n"
    );
}

#[test]
fn read_only_volume_refuses_writes() {
    let Some(t) = Nook::new() else { return };
    let vol = t.mkdir("vol");
    t.write_file("vol/kept", "original\n");
    let out = t.nook(&[
        "run",
        "--rm",
        "-v",
        &volume_arg(&vol, "/data:ro"),
        t.image(),
        "sh",
        "-c",
        "cat /data/kept; \
         if echo x > /data/new 2>/dev/null; then echo created; else echo create-refused; fi; \
         if echo x >> /data/kept 2>/dev/null; then echo appended; else echo append-refused; fi; \
         if rm /data/kept 2>/dev/null; then echo removed; else echo remove-refused; fi",
    ]);
    out.assert_ok();
    assert_eq!(
        out.lines(),
        [
            "original",
            "create-refused",
            "append-refused",
            "remove-refused"
        ],
        "{out}"
    );
    assert!(!vol.join("new").exists());
    assert_eq!(fs::read_to_string(vol.join("kept")).unwrap(), "original\n");
}

#[test]
fn rw_volume_option_allows_writes() {
    let Some(t) = Nook::new() else { return };
    let vol = t.mkdir("vol");
    t.nook(&[
        "run",
        "--rm",
        "-v",
        &volume_arg(&vol, "/data:rw"),
        t.image(),
        "sh",
        "-c",
        "echo written > /data/file",
    ])
    .assert_ok();
    assert_eq!(fs::read_to_string(vol.join("file")).unwrap(), "written\n");
}

#[test]
fn files_made_in_a_volume_belong_to_the_caller() {
    let Some(t) = Nook::new() else { return };
    let vol = t.mkdir("vol");
    t.nook(&[
        "run",
        "--rm",
        "-v",
        &volume_arg(&vol, "/data"),
        t.image(),
        "sh",
        "-c",
        "mkdir /data/dir && echo x > /data/dir/file",
    ])
    .assert_ok();
    let runner = t.runner();
    for path in [vol.join("dir"), vol.join("dir/file")] {
        let meta = fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            (meta.uid(), meta.gid()),
            (runner.uid, runner.gid),
            "{} is not owned by the caller {}",
            path.display(),
            runner.name
        );
    }
}

#[test]
fn several_volumes_can_be_given() {
    let Some(t) = Nook::new() else { return };
    let a = t.mkdir("a");
    let b = t.mkdir("b");
    t.write_file("a/file", "in a\n");
    t.write_file("b/file", "in b\n");
    t.nook(&[
        "run",
        "--rm",
        "-v",
        &volume_arg(&a, "/mnt/a"),
        "--volume",
        &volume_arg(&b, "/mnt/b:ro"),
        t.image(),
        "sh",
        "-c",
        "cat /mnt/a/file /mnt/b/file",
    ])
    .assert_ok()
    .assert_stdout("in a\nin b");
}

#[test]
fn volume_target_missing_from_the_image_is_created_without_writing_the_image() {
    let Some(t) = Nook::new() else { return };
    let img = t.image_copy("image");
    let before = tree_listing(Path::new(&img));
    let vol = t.mkdir("vol");
    t.write_file("vol/file", "mounted\n");
    t.nook(&[
        "run",
        "--rm",
        "-v",
        &volume_arg(&vol, "/new/mount/point"),
        &img,
        "cat",
        "/new/mount/point/file",
    ])
    .assert_ok()
    .assert_stdout("mounted");
    assert_eq!(
        tree_listing(Path::new(&img)),
        before,
        "the image was written"
    );
}

#[test]
fn volumes_over_the_kernel_filesystems_are_refused_and_leave_nothing() {
    let Some(t) = Nook::new() else { return };
    let vol = t.mkdir("vol");
    let img = t.image_copy("image");
    // A symbolic link in the image that leads to /proc counts as /proc.
    std::os::unix::fs::symlink("/proc", Path::new(&img).join("myproc")).unwrap();
    std::os::unix::fs::symlink("../dev", Path::new(&img).join("etc/devices")).unwrap();
    for dest in [
        "/",
        "/proc",
        "/proc/",
        "/proc/sys",
        "//proc/./sys",
        "/tmp/../proc",
        "/dev",
        "/dev/pts",
        "/sys",
        "/myproc",
        "/myproc/sys",
        "/etc/devices",
    ] {
        let out = t.nook(&["run", "--rm", "-v", &volume_arg(&vol, dest), &img, "true"]);
        assert_eq!(out.code, Some(125), "-v {dest} accepted\n{out}");
        assert!(out.stderr.contains("refuses"), "-v {dest}\n{out}");
    }
    assert!(t.ps().is_empty(), "{:?}", t.ps());
    assert_eq!(t.container_dirs(), Vec::<String>::new());
    // What lies beside or below them stays possible.
    let out = t.nook(&[
        "run",
        "--rm",
        "-v",
        &volume_arg(&vol, "/dev/shm/data"),
        "-v",
        &volume_arg(&vol, "/procfiles"),
        &img,
        "sh",
        "-c",
        "test -d /dev/shm/data && test -d /procfiles && test -e /proc/self/status && echo ok",
    ]);
    out.assert_ok().assert_stdout("ok");
}
