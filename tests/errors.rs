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

#[test]
fn a_command_that_is_a_directory_is_named_as_one() {
    let Some(t) = Nook::new() else { return };
    let out = t.nook(&["run", "--rm", t.image(), "/etc"]);
    out.assert_code(126);
    assert!(
        out.stderr.contains("/etc") && out.stderr.contains("is a directory"),
        "{out}"
    );
    assert!(!out.stderr.contains("ermission denied"), "{out}");
    assert_eq!(t.container_dirs(), Vec::<String>::new());
    t.assert_no_processes_left();
}

/// Entries of `$NOOK_STORAGE/images`, hidden ones included.
fn image_entries(t: &Nook) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(t.storage.join("images"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn truncated_and_non_archives_are_named_without_internal_paths() {
    let Some(t) = Nook::new() else { return };
    let mut builder = tar::Builder::new(Vec::new());
    for (name, size) in [("small", 10), ("big", 200_000)] {
        let mut h = tar::Header::new_gnu();
        h.set_size(size as u64);
        h.set_mode(0o644);
        h.set_cksum();
        builder
            .append_data(&mut h, name, &vec![b'x'; size][..])
            .unwrap();
    }
    let whole = builder.into_inner().unwrap();
    let truncated = t.dir.join("truncated.tar");
    std::fs::write(&truncated, &whole[..100_000]).unwrap();
    t.give(&truncated);
    let random: Vec<u8> = (0..50_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let garbage = t.dir.join("garbage.bin");
    std::fs::write(&garbage, random).unwrap();
    t.give(&garbage);
    let text = t.write_file("notes.txt", "not an archive\n");
    let before = image_entries(&t);
    for (source, cause) in [
        (&truncated, "truncated"),
        (&garbage, "not a tar archive"),
        (&text, "not a tar archive"),
    ] {
        let source = source.to_str().unwrap();
        let out = t.nook(&["import", source, "bad"]);
        assert_ne!(out.code, Some(0), "{out}");
        assert!(out.stderr.contains(source), "{out}");
        assert!(out.stderr.contains(cause), "{out}");
        assert!(!out.stderr.contains("/proc/self/fd"), "{out}");
        assert!(out.stderr.is_ascii(), "garbage quoted\n{out}");
        assert_eq!(image_entries(&t), before, "{source} left something behind");
    }
}

#[test]
fn exec_resolves_user_names_in_the_container_as_run_does() {
    let Some(t) = Nook::new() else { return };
    if !t.has_subids() {
        return;
    }
    let image = t.image_copy("named");
    let passwd = std::path::Path::new(&image).join("etc/passwd");
    let mut text = std::fs::read_to_string(&passwd).unwrap_or_default();
    text.push_str("app:x:4321:4322:app:/home/app:/bin/sh\n");
    std::fs::write(&passwd, text).unwrap();
    t.give(&passwd);
    t.nook(&["run", "-q", "-d", "--name", "users", &image, "sleep", "60"])
        .assert_ok();
    t.nook(&["run", "-q", "--rm", "-u", "app", &image, "id", "-u"])
        .assert_ok()
        .assert_stdout("4321\n");
    t.nook(&["exec", "-u", "app", "users", "sh", "-c", "id -u; id -g"])
        .assert_ok()
        .assert_stdout("4321\n4322\n");
    t.nook(&["exec", "-u", "1234:5", "users", "sh", "-c", "id -u; id -g"])
        .assert_ok()
        .assert_stdout("1234\n5\n");
    let out = t.nook(&["exec", "-u", "nosuchuser", "users", "true"]);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(
        out.stderr.contains("nosuchuser") && out.stderr.contains("/etc/passwd"),
        "{out}"
    );
    assert!(!out.stderr.contains("invalid digit"), "{out}");
    t.nook(&["rm", "-f", "users"]).assert_ok();
    t.assert_no_processes_left();
}

#[test]
fn a_reader_that_goes_away_is_no_error() {
    use std::io::Read;
    let Some(t) = Nook::new() else { return };
    t.nook(&["import", "-q", t.image(), "img"]).assert_ok();
    t.nook(&["run", "-q", "--name", "ct", "img", "true"])
        .assert_ok();
    for args in [
        &["export", "-o", "-", "img"][..],
        &["export", "-o", "-", "ct"],
        &["ps", "-a"],
    ] {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut child = t
            .command_for(t.bin(), &args, &[])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 1];
        let _ = child.stdout.take().unwrap().read(&mut first);
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(stderr, "", "{args:?} printed an error for a closed pipe");
        assert!(
            matches!(status.code(), Some(0) | Some(141)),
            "{args:?}: {status}"
        );
    }
    assert_eq!(image_entries(&t), ["img"], "a temporary export was left");
    t.assert_no_processes_left();
}
