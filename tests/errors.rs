//! nook's own errors: exit 125, one line on stderr naming what is at fault, and nothing
//! left behind (no container directory, no mount, no process).

mod common;

use common::{Nook, Out};

/// The failed run exited 125 with one line naming `culprit`, and left nothing behind.
#[track_caller]
fn assert_failed_cleanly(t: &Nook, out: &Out, containers_before: &[String], culprit: &str) {
    out.assert_code(125);
    let stderr = out.stderr.trim();
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one line on stderr\n{out}"
    );
    assert!(
        stderr.contains(culprit),
        "stderr does not name {culprit:?}\n{out}"
    );
    assert_eq!(
        t.container_dirs(),
        containers_before,
        "a container directory was left behind"
    );
    t.assert_no_processes_left();
}

#[test]
fn missing_image_directory_is_named() {
    let Some(t) = Nook::new() else { return };
    let missing = t.dir.join("no-such-image");
    let missing = missing.to_str().unwrap();
    let out = t.nook(&["run", "--rm", missing, "true"]);
    assert_failed_cleanly(&t, &out, &[], missing);
    let out = t.nook(&["run", missing, "true"]);
    assert_failed_cleanly(&t, &out, &[], missing);
}

#[test]
fn image_that_is_not_a_directory_is_named() {
    let Some(t) = Nook::new() else { return };
    let file = t.write_file("not-a-dir", "just a file\n");
    let file = file.to_str().unwrap();
    let out = t.nook(&["run", file, "true"]);
    assert_failed_cleanly(&t, &out, &[], file);
    assert!(
        out.stderr.contains("is a file") && out.stderr.contains("nook import"),
        "{out}"
    );
}

#[test]
fn an_empty_directory_is_not_taken_for_a_root_filesystem() {
    let Some(t) = Nook::new() else { return };
    let empty = t.mkdir("empty");
    let empty = empty.to_str().unwrap();
    let out = t.nook(&["run", "--rm", empty, "true"]);
    assert_failed_cleanly(&t, &out, &[], empty);
    assert!(out.stderr.contains("empty directory"), "{out}");
}

#[test]
fn environment_variables_without_a_proper_name_are_refused() {
    let Some(t) = Nook::new() else { return };
    for bad in ["=value", "=", "", "A B=1"] {
        let out = t.nook(&["run", "--rm", "-e", bad, t.image(), "true"]);
        assert_failed_cleanly(&t, &out, &[], &format!("{bad:?}"));
    }
    t.nook(&[
        "run",
        "--rm",
        "-e",
        "A=b c",
        t.image(),
        "sh",
        "-c",
        "echo \"$A\"",
    ])
    .assert_ok()
    .assert_stdout("b c\n");
}

#[test]
fn host_names_the_kernel_or_rfc_1123_refuse_are_named() {
    let Some(t) = Nook::new() else { return };
    let long = "h".repeat(300);
    let out = t.nook(&["run", "--rm", "--hostname", &long, t.image(), "true"]);
    assert_failed_cleanly(&t, &out, &[], "300 characters");
    let out = t.nook(&["run", "--rm", "--hostname", "my_host", t.image(), "true"]);
    assert_failed_cleanly(&t, &out, &[], "'_' is not allowed");
    t.nook(&[
        "run",
        "--rm",
        "--hostname",
        "web-1.test",
        t.image(),
        "hostname",
    ])
    .assert_ok()
    .assert_stdout("web-1.test\n");
}

#[test]
fn name_already_taken_is_refused() {
    let Some(t) = Nook::new() else { return };
    let img = t.image();
    t.nook(&["run", "--name", "taken-name", img, "true"])
        .assert_ok();
    let before = t.container_dirs();
    assert_eq!(before.len(), 1, "{before:?}");
    let out = t.nook(&["run", "--name", "taken-name", img, "true"]);
    assert_failed_cleanly(&t, &out, &before, "taken-name");
    let out = t.nook(&["run", "--rm", "--name", "taken-name", img, "true"]);
    assert_failed_cleanly(&t, &out, &before, "taken-name");
    // The first container is still there, untouched.
    let first = t.container("taken-name").expect("first container listed");
    assert_eq!(first["status"].as_str(), Some("exited"), "{first}");
}

#[test]
fn missing_volume_source_is_named() {
    let Some(t) = Nook::new() else { return };
    let missing = t.dir.join("no-such-volume");
    let arg = format!("{}:/data", missing.display());
    let out = t.nook(&["run", "--rm", "-v", &arg, t.image(), "true"]);
    assert_failed_cleanly(&t, &out, &[], missing.to_str().unwrap());
    let out = t.nook(&["run", "-v", &arg, t.image(), "true"]);
    assert_failed_cleanly(&t, &out, &[], missing.to_str().unwrap());
    assert!(!missing.exists(), "nook created the missing volume source");
}

#[test]
fn unknown_network_mode_is_refused() {
    let Some(t) = Nook::new() else { return };
    let out = t.nook(&["run", "--rm", "--network", "bogus-net", t.image(), "true"]);
    assert_failed_cleanly(&t, &out, &[], "bogus-net");
}

#[test]
fn rm_of_an_unknown_container_names_it() {
    let Some(t) = Nook::new() else { return };
    let out = t.nook(&["rm", "no-such-container"]);
    assert!(out.code.is_some_and(|c| c != 0), "{out}");
    assert!(out.stderr.contains("no-such-container"), "{out}");
}

#[test]
fn a_working_directory_that_is_a_file_is_named() {
    let Some(t) = Nook::new() else { return };
    for workdir in ["/etc/passwd", "/etc/passwd/below"] {
        let out = t.nook(&["run", "--rm", "-w", workdir, t.image(), "pwd"]);
        assert_failed_cleanly(&t, &out, &[], workdir);
        assert!(out.stderr.contains("is a file"), "{out}");
    }
}
