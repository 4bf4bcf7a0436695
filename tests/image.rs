//! The image directory is never written: every change lands in the container's own layer.

mod common;

use std::path::Path;

use common::{diff, tree_listing, Nook};

#[test]
fn image_is_unchanged_after_container_writes() {
    let Some(t) = Nook::new() else { return };
    let img = t.image_copy("image");
    let before = tree_listing(Path::new(&img));
    // Every kind of change to files and directories that came from the image.
    let script = "set -e
        echo appended >> /etc/passwd
        echo new > /new-file
        mkdir -p /new/dir/tree && echo deep > /new/dir/tree/file
        rm /bin/vi
        rm -r /usr
        mv /etc/group /etc/group.renamed
        mv /var /var.renamed
        chmod 0700 /bin/busybox
        rm /sbin && ln -s /new /sbin
        echo scratch > /tmp/scratch
        rm -rf /home && mkdir /home && echo only > /home/only
        ls -A /home
        test ! -e /bin/vi && echo vi-gone
        test ! -e /usr && echo usr-gone
        tail -n 1 /etc/passwd";
    let out = t.nook(&["run", "--name", "writer", &img, "sh", "-c", script]);
    out.assert_ok();
    assert_eq!(
        out.lines(),
        ["only", "vi-gone", "usr-gone", "appended"],
        "{out}"
    );
    let after = tree_listing(Path::new(&img));
    assert!(
        after == before,
        "the image was written:{}",
        diff(&before, &after)
    );

    // A new container sees the image as it was.
    let out = t.nook(&[
        "run",
        "--rm",
        &img,
        "sh",
        "-c",
        "tail -n 1 /etc/passwd; ls -A /home; test -e /bin/vi && echo vi-present; \
         test -d /usr/bin && echo usr-present; test -e /etc/group && echo group-present; \
         test -d /var/tmp && echo var-present; test -e /new-file || echo no-new-file; \
         readlink /sbin; stat -c %a /bin/busybox",
    ]);
    out.assert_ok();
    assert_eq!(
        out.lines(),
        [
            "nobody:x:65534:65534:nobody:/nonexistent:/bin/false",
            "user",
            "vi-present",
            "usr-present",
            "group-present",
            "var-present",
            "no-new-file",
            "bin",
            "755",
        ],
        "{out}"
    );

    // Removing the container leaves the image alone too.
    t.nook(&["rm", "writer"]).assert_ok();
    let after_rm = tree_listing(Path::new(&img));
    assert!(
        after_rm == before,
        "the image was written:{}",
        diff(&before, &after_rm)
    );
}

#[test]
fn containers_of_one_image_do_not_see_each_others_changes() {
    let Some(t) = Nook::new() else { return };
    let img = t.image();
    t.nook(&[
        "run",
        "--name",
        "first",
        img,
        "sh",
        "-c",
        "echo first > /etc/mark",
    ])
    .assert_ok();
    t.nook(&[
        "run",
        "--name",
        "second",
        img,
        "sh",
        "-c",
        "test -e /etc/mark && cat /etc/mark || echo no-mark",
    ])
    .assert_ok()
    .assert_stdout("no-mark");
}

/// The harness's guard: a test whose image is written fails itself, naming the path, and the
/// next test still gets the image as it was built (no cascade through a shared fixture).
#[test]
fn a_test_that_writes_its_image_fails_naming_the_path_and_spoils_no_other_test() {
    let Some(t) = Nook::new() else { return };
    let written = Path::new(t.image()).join("grab");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        // What a runtime does when it makes a missing mount point in a bundle's root.
        std::fs::create_dir(&written).expect("mkdir in the test's image");
        drop(t);
    }));
    let message = result.expect_err("the harness let a written image pass");
    let message = message
        .downcast_ref::<String>()
        .expect("the harness panics with a message");
    assert!(
        message.contains("was written") && message.contains("\n+ grab\tdir"),
        "the failure does not name the written path: {message}"
    );
    let Some(next) = Nook::new() else { return };
    assert!(
        !Path::new(next.image()).join("grab").exists(),
        "the next test's image has the path the previous test wrote"
    );
}
