//! Containers over time: kept layers, `--rm`, `ps`, `rm`, detached runs with `logs` and `stop`.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{is_rfc3339, wait_until, Nook};

#[test]
fn container_without_rm_keeps_its_layer_until_rm() {
    let Some(t) = Nook::new() else { return };
    t.nook(&[
        "run",
        "--name",
        "keeper",
        t.image(),
        "sh",
        "-c",
        "echo kept > /kept-file",
    ])
    .assert_ok();
    let c = t.container("keeper").expect("keeper listed by ps");
    let id = c["id"].as_str().expect("id is a string");
    let dir = t.storage.join("containers").join(id);
    assert_eq!(
        fs::read_to_string(dir.join("upper/kept-file")).expect("file in the upper layer"),
        "kept\n"
    );
    assert!(dir.join("work").is_dir(), "{} has no work/", dir.display());

    t.nook(&["rm", "keeper"]).assert_ok();
    assert!(!dir.exists(), "{} still exists after rm", dir.display());
    assert!(
        t.container("keeper").is_none(),
        "keeper still listed after rm"
    );
}

#[test]
fn rm_option_removes_the_container_when_it_exits() {
    let Some(t) = Nook::new() else { return };
    let img = t.image();
    t.nook(&[
        "run",
        "--rm",
        "--name",
        "gone",
        img,
        "sh",
        "-c",
        "echo x > /file",
    ])
    .assert_ok();
    t.nook(&["run", "--rm", img, "sh", "-c", "exit 3"])
        .assert_code(3);
    assert_eq!(t.container_dirs(), Vec::<String>::new());
    assert!(t.ps().is_empty(), "{:?}", t.ps());
}

#[test]
fn rm_removes_several_containers_at_once() {
    let Some(t) = Nook::new() else { return };
    let img = t.image();
    for name in ["one", "two", "three"] {
        t.nook(&["run", "--name", name, img, "true"]).assert_ok();
    }
    t.nook(&["rm", "one", "three"]).assert_ok();
    let names: Vec<String> = t
        .ps()
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(names, ["two"]);
    assert_eq!(t.container_dirs().len(), 1);
}

#[test]
fn ps_lists_containers_with_name_status_image_and_creation_time() {
    let Some(t) = Nook::new() else { return };
    let img = t.image_copy("image");
    // Given relative to the caller's directory, listed as an absolute path.
    t.nook(&["run", "--name", "done3", "image", "sh", "-c", "exit 3"])
        .assert_code(3);
    t.nook(&["run", "-d", "--name", "live", &img, "sleep", "100"])
        .assert_ok();

    let out = t.nook(&["ps"]);
    out.assert_ok();
    let lines = out.lines();
    let header = lines.first().expect("a header line").to_uppercase();
    for column in ["NAME", "STATUS", "IMAGE", "CREATED"] {
        assert!(header.contains(column), "no {column} column\n{out}");
    }
    assert_eq!(lines.len(), 3, "{out}");
    let row = |name: &str| {
        *lines[1..]
            .iter()
            .find(|l| l.split_whitespace().any(|w| w == name))
            .unwrap_or_else(|| panic!("no row for {name}\n{out}"))
    };
    assert!(row("done3").contains("exited (3)"), "{out}");
    assert!(row("done3").contains(&img), "{out}");
    assert!(row("live").contains("running"), "{out}");
    assert!(row("live").contains(&img), "{out}");

    let done = t.container("done3").expect("done3 in ps json");
    assert_eq!(done["status"].as_str(), Some("exited"), "{done}");
    assert_eq!(done["exit_code"].as_i64(), Some(3), "{done}");
    assert_eq!(done["image"].as_str(), Some(img.as_str()), "{done}");
    assert!(done["id"].as_str().is_some_and(|s| !s.is_empty()), "{done}");
    assert!(done["created"].as_str().is_some_and(is_rfc3339), "{done}");
    assert!(
        matches!(done["backend"].as_str(), Some("overlay" | "fuse" | "copy")),
        "{done}"
    );
    let live = t.container("live").expect("live in ps json");
    assert_eq!(live["status"].as_str(), Some("running"), "{live}");
    assert!(live["exit_code"].is_null(), "{live}");
    assert_ne!(live["id"], done["id"]);

    t.nook(&["rm", "-f", "live"]).assert_ok();
    t.assert_no_processes_left();
}

#[test]
fn overlay_backend_can_be_chosen() {
    let Some(t) = Nook::new() else { return };
    t.nook(&[
        "run",
        "--backend",
        "overlay",
        "--name",
        "ov",
        t.image(),
        "sh",
        "-c",
        "echo x > /f",
    ])
    .assert_ok();
    let c = t.container("ov").expect("ov listed");
    assert_eq!(c["backend"].as_str(), Some("overlay"), "{c}");
    t.nook(&["run", "--rm", "--backend", "auto", t.image(), "true"])
        .assert_ok();
}

#[test]
fn detached_container_runs_in_the_background_until_stopped() {
    let Some(t) = Nook::new() else { return };
    let started = Instant::now();
    let out = t.nook(&[
        "run",
        "-d",
        "--name",
        "bg",
        t.image(),
        "sh",
        "-c",
        "echo out; echo err >&2; sleep 100",
    ]);
    out.assert_ok().assert_stdout("bg");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "run -d took {:?}",
        started.elapsed()
    );
    let c = t.container("bg").expect("bg listed");
    assert_eq!(c["status"].as_str(), Some("running"), "{c}");
    // What the leftover check after each test relies on: it sees the running container.
    assert!(
        !t.processes().is_empty(),
        "the harness sees no process of the running container"
    );

    let mut last = None;
    let logged = wait_until(Duration::from_secs(10), || {
        let out = t.nook(&["logs", "bg"]);
        let both = format!("{}{}", out.stdout, out.stderr);
        let done = out.code == Some(0)
            && both.lines().any(|l| l == "out")
            && both.lines().any(|l| l == "err");
        last = Some(out);
        done
    });
    assert!(logged, "logs lack the output\n{}", last.expect("logs ran"));

    t.nook(&["stop", "-t", "1", "bg"]).assert_ok();
    let c = t.container("bg").expect("bg still listed after stop");
    assert_eq!(c["status"].as_str(), Some("exited"), "{c}");
    let code = c["exit_code"].as_i64();
    assert!(matches!(code, Some(137 | 143)), "{c}");
    let ps = t.nook(&["ps"]);
    assert!(
        ps.stdout.contains(&format!("exited ({})", code.unwrap())),
        "{ps}"
    );
    t.assert_no_processes_left();

    t.nook(&["rm", "bg"]).assert_ok();
    assert!(t.container("bg").is_none());
    assert_eq!(t.container_dirs(), Vec::<String>::new());
}

#[test]
fn rm_refuses_a_running_container_unless_forced() {
    let Some(t) = Nook::new() else { return };
    t.nook(&["run", "-d", "--name", "busy", t.image(), "sleep", "100"])
        .assert_ok();
    let out = t.nook(&["rm", "busy"]);
    assert!(
        out.code.is_some_and(|c| c != 0),
        "rm of a running container succeeded\n{out}"
    );
    assert!(out.stderr.contains("busy"), "{out}");
    let c = t.container("busy").expect("busy still listed");
    assert_eq!(c["status"].as_str(), Some("running"), "{c}");

    t.nook(&["rm", "-f", "busy"]).assert_ok();
    assert!(t.container("busy").is_none());
    assert_eq!(t.container_dirs(), Vec::<String>::new());
    t.assert_no_processes_left();
}
