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

/// Starts `nook run [--rm] --name NAME IMG sleep 1000` in the foreground and waits until
/// `nook ps` lists it as running.
fn foreground(t: &Nook, name: &str, rm: bool) -> common::Running {
    let mut args = vec!["run"];
    if rm {
        args.push("--rm");
    }
    args.extend(["--name", name, t.image(), "sleep", "1000"]);
    let running = t.cmd(&args).spawn();
    let listed = wait_until(Duration::from_secs(20), || {
        t.container(name)
            .is_some_and(|c| c["status"].as_str() == Some("running"))
    });
    assert!(
        listed,
        "foreground {name} (--rm: {rm}) not listed as running: {:?}\n{:?}",
        t.container(name),
        running.output_so_far()
    );
    running
}

/// Every verb reaches a foreground container, `--rm` or not, as it reaches a detached one.
fn foreground_containers_are_reachable(t: Nook) {
    for rm in [true, false] {
        let tag = if rm { "rm" } else { "kept" };

        let name = format!("stop-{tag}");
        let running = foreground(&t, &name, rm);
        t.nook(&["exec", &name, "echo", "inside"])
            .assert_ok()
            .assert_stdout("inside");
        let logs = t.nook(&["logs", &name]);
        assert_ne!(logs.code, Some(0), "{logs}");
        assert!(logs.stderr.contains("terminal"), "{logs}");
        t.nook(&["stop", "-t", "1", &name])
            .assert_ok()
            .assert_stdout(&name);
        // sleep as pid 1 ignores SIGTERM: stop had to kill it.
        running.wait().assert_code(137);
        match t.container(&name) {
            None => assert!(rm, "{name} vanished without --rm"),
            Some(c) => {
                assert!(!rm, "{name} still listed after it exited with --rm: {c}");
                assert_eq!(c["status"].as_str(), Some("exited"), "{c}");
                assert_eq!(c["exit_code"].as_i64(), Some(137), "{c}");
            }
        }
        t.assert_no_processes_left();

        let name = format!("kill-{tag}");
        let running = foreground(&t, &name, rm);
        // As podman: SIGKILL unless told otherwise.
        t.nook(&["kill", &name]).assert_ok().assert_stdout(&name);
        running.wait().assert_code(137);
        t.assert_no_processes_left();
        let name = format!("term-{tag}");
        let running = foreground(&t, &name, rm);
        t.nook(&["exec", "-d", &name, "sh", "-c", QUIET_SLEEP])
            .assert_ok();
        t.nook(&["kill", "--all", "-s", "TERM", &name])
            .assert_ok()
            .assert_stdout(&name);
        let out = t.nook(&["kill", "-s", "NOSUCH", &name]);
        assert_ne!(out.code, Some(0), "{out}");
        t.nook(&["kill", "-s", "KILL", &name]).assert_ok();
        running.wait().assert_code(137);
        t.assert_no_processes_left();

        let name = format!("rmf-{tag}");
        let running = foreground(&t, &name, rm);
        t.nook(&["exec", "-d", &name, "sh", "-c", QUIET_SLEEP])
            .assert_ok();
        let id = t.container(&name).expect("listed")["id"]
            .as_str()
            .expect("id")
            .to_string();
        t.nook(&["rm", "-f", &name])
            .assert_ok()
            .assert_stdout(&name);
        // rm -f returns once the container's processes and its nook process are gone.
        assert!(
            t.processes().is_empty(),
            "rm -f of {name} returned with processes running:\n{:?}",
            t.processes()
        );
        running.wait().assert_code(137);
        assert!(
            t.container(&name).is_none(),
            "{name} still listed after rm -f"
        );
        assert!(
            !t.container_dirs().contains(&id),
            "{name}'s directory is still there"
        );
        let out = t.nook(&["kill", &name]);
        assert_ne!(out.code, Some(0), "{out}");
    }
    assert_eq!(t.container_dirs().len(), 3, "{:?}", t.container_dirs());
}

#[test]
fn foreground_containers_are_reachable_by_every_verb() {
    let Some(t) = Nook::new() else { return };
    foreground_containers_are_reachable(t);
}

#[test]
fn foreground_containers_are_reachable_by_every_verb_without_subordinate_ids() {
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    foreground_containers_are_reachable(t);
}

#[test]
fn a_foreground_container_ends_with_its_terminal_unless_nohup() {
    let Some(t) = Nook::new() else { return };
    foreground_container_ends_with_its_terminal(t);
}

#[test]
fn a_foreground_container_ends_with_its_terminal_without_subordinate_ids() {
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    foreground_container_ends_with_its_terminal(t);
}

fn foreground_container_ends_with_its_terminal(t: Nook) {
    for rm in [true, false] {
        let name = format!("hup-{rm}");
        let running = foreground(&t, &name, rm);
        let hung_up = Instant::now();
        running.signal(nix::sys::signal::Signal::SIGHUP);
        running.wait().assert_code(137);
        assert!(
            hung_up.elapsed() < Duration::from_secs(10),
            "{name} took {:?} to end after the hangup",
            hung_up.elapsed()
        );
        t.assert_no_processes_left();
        if rm {
            assert!(t.container(&name).is_none());
        } else {
            let c = t.container(&name).expect("kept container listed");
            assert_eq!(c["status"].as_str(), Some("exited"), "{c}");
        }
    }

    // A container that ends by itself on SIGHUP is not killed.
    let running = t
        .cmd(&[
            "run",
            "--rm",
            "--init",
            t.image(),
            "sh",
            "-c",
            "trap 'echo hangup; exit 7' HUP; echo ready; while :; do sleep 1; done",
        ])
        .spawn();
    running.wait_for_stdout("ready", Duration::from_secs(20));
    running.signal(nix::sys::signal::Signal::SIGHUP);
    let out = running.wait();
    out.assert_code(7).assert_stdout("ready\nhangup");

    // Under nohup the hangup changes nothing: the container stays listed and stoppable.
    let script = format!(
        "trap '' HUP; exec {} run --rm --name kept {} sleep 1000",
        t.bin().display(),
        t.image()
    );
    let running = t
        .cmd(&["-c", &script])
        .bin(std::path::Path::new("/bin/sh"))
        .spawn();
    assert!(wait_until(Duration::from_secs(20), || t
        .container("kept")
        .is_some_and(|c| c["status"].as_str() == Some("running"))));
    running.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(common_grace());
    let c = t
        .container("kept")
        .expect("kept still listed after SIGHUP under nohup");
    assert_eq!(c["status"].as_str(), Some("running"), "{c}");
    t.nook(&["stop", "-t", "1", "kept"]).assert_ok();
    running.wait().assert_code(137);
    t.assert_no_processes_left();
}

/// Longer than nook's hangup grace (3 s).
fn common_grace() -> Duration {
    Duration::from_secs(5)
}

fn rmi_never_leaves_a_container_without_its_image(t: Nook) {
    t.nook(&["import", "-q", t.image(), "base"]).assert_ok();
    t.nook(&["run", "--name", "stopped", "base", "true"])
        .assert_ok();
    t.nook(&["run", "-d", "--name", "live", "base", "sleep", "1000"])
        .assert_ok();
    let fg = foreground_of(&t, "fg", "base");
    let out = t.nook(&["rmi", "base"]);
    assert_ne!(out.code, Some(0), "rmi of an image in use succeeded\n{out}");
    for name in ["stopped", "live", "fg"] {
        assert!(out.stderr.contains(name), "{name} not named\n{out}");
        assert!(
            t.container(name).is_some(),
            "{name} gone after a refused rmi"
        );
    }
    t.nook(&["exec", "live", "ls", "/bin/busybox"]).assert_ok();
    t.nook(&["images", "-q"]).assert_ok().assert_stdout("base");

    // As podman: -f removes the containers (stopping the running ones), then the image.
    let out = t.nook(&["rmi", "-f", "base"]);
    out.assert_ok().assert_stdout("base");
    fg.wait().assert_code(137);
    assert!(t.ps().is_empty(), "{:?}", t.ps());
    assert_eq!(t.container_dirs(), Vec::<String>::new());
    t.nook(&["images", "-q"]).assert_ok().assert_stdout("");
    t.assert_no_processes_left();
}

fn foreground_of(t: &Nook, name: &str, image: &str) -> common::Running {
    let running = t
        .cmd(&["run", "--rm", "--name", name, image, "sleep", "1000"])
        .spawn();
    assert!(
        wait_until(Duration::from_secs(20), || t
            .container(name)
            .is_some_and(|c| c["status"].as_str() == Some("running"))),
        "{name} not running: {:?}",
        running.output_so_far()
    );
    running
}

#[test]
fn rmi_never_leaves_a_container_without_its_image_with_subordinate_ids() {
    let Some(t) = Nook::new() else { return };
    rmi_never_leaves_a_container_without_its_image(t);
}

#[test]
fn rmi_never_leaves_a_container_without_its_image_without_subordinate_ids() {
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    rmi_never_leaves_a_container_without_its_image(t);
}

fn nothing_nook_writes_for_itself_lands_in_a_container(t: Nook) {
    t.nook(&["run", "-d", "--name", "ct", t.image(), "sleep", "1000"])
        .assert_ok();
    t.nook(&["exec", "ct", "true"]).assert_ok();
    t.nook(&["exec", "-u", "1000", "ct", "true"]);
    let out = t.nook(&["diff", "ct"]);
    out.assert_ok();
    let home = t.home.display().to_string();
    assert!(
        !out.stdout.contains(".cache") && !out.stdout.contains(&home),
        "nook's own files in the container's layer:\n{out}"
    );
    t.nook(&["rm", "-f", "ct"]).assert_ok();
}

#[test]
fn exec_writes_nothing_of_nook_into_the_container() {
    let Some(t) = Nook::new() else { return };
    nothing_nook_writes_for_itself_lands_in_a_container(t);
}

#[test]
fn exec_writes_nothing_of_nook_into_the_container_without_subordinate_ids() {
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    nothing_nook_writes_for_itself_lands_in_a_container(t);
}

/// A second process for `exec -d`, which must not hold the test's output pipes.
const QUIET_SLEEP: &str = "exec >/dev/null 2>&1 </dev/null; exec sleep 1000";

#[test]
fn rmi_racing_runs_never_takes_an_image_from_under_a_container() {
    let Some(t) = Nook::new() else { return };
    t.nook(&["import", "-q", t.image(), "base"]).assert_ok();
    let script = "sleep 1; test -x /bin/busybox && echo intact";
    let mut runs = Vec::new();
    for _ in 0..4 {
        runs.push(t.cmd(&["run", "--rm", "base", "sh", "-c", script]).spawn());
        std::thread::sleep(Duration::from_millis(150));
    }
    let removed = wait_until(Duration::from_secs(30), || {
        t.nook(&["rmi", "base"]).code == Some(0)
    });
    assert!(removed, "rmi never succeeded");
    for run in runs {
        let out = run.wait();
        match out.code {
            Some(0) => assert_eq!(out.stdout.trim(), "intact", "{out}"),
            _ => assert!(
                out.stderr.contains("base"),
                "a run that lost the race must name the image\n{out}"
            ),
        }
    }
    assert!(t.ps().is_empty(), "{:?}", t.ps());
    assert_eq!(t.container_dirs(), Vec::<String>::new());
}

#[test]
fn oci_verbs_act_on_the_containers_ps_lists_or_name_the_verb_that_does() {
    let Some(t) = Nook::new() else { return };
    t.nook(&["run", "-d", "--name", "kk", t.image(), "sleep", "1000"])
        .assert_ok();
    let state = t.nook(&["state", "kk"]);
    state.assert_ok();
    let doc: serde_json::Value = serde_json::from_str(&state.stdout).expect("state is JSON");
    assert_eq!(doc["id"], "kk", "{state}");
    assert_eq!(doc["status"], "running", "{state}");
    let pid = doc["pid"].as_i64().expect("pid");
    assert!(pid > 0, "{state}");
    assert!(doc["ociVersion"].is_string(), "{state}");
    let ps = t.nook(&["ps", "kk"]);
    ps.assert_ok();
    assert!(ps.stdout.contains("sleep 1000"), "{ps}");
    let start = t.nook(&["start", "kk"]);
    assert_eq!(start.code, Some(1), "{start}");
    assert!(start.stderr.contains("was made by `nook run`"), "{start}");
    // Without --force a running container stays, and the error says what removes it.
    let delete = t.nook(&["delete", "kk"]);
    assert_eq!(delete.code, Some(1), "{delete}");
    assert!(delete.stderr.contains("nook rm -f"), "{delete}");
    // As runc takes it: a signal as the second argument (pid 1 ignores TERM without a handler).
    t.nook(&["kill", "kk", "KILL"]).assert_ok();
    assert!(
        wait_until(Duration::from_secs(10), || t
            .container("kk")
            .is_some_and(|c| c["status"] == "exited")),
        "kill did not end kk"
    );
    let state = t.nook(&["state", "kk"]);
    let doc: serde_json::Value = serde_json::from_str(&state.stdout).expect("state is JSON");
    assert_eq!(doc["status"], "stopped", "{state}");
    t.nook(&["delete", "kk"]).assert_ok();
    assert!(t.container("kk").is_none(), "delete left kk");
    // delete --force ends a running one first.
    t.nook(&["run", "-d", "--name", "kf", t.image(), "sleep", "1000"])
        .assert_ok();
    t.nook(&["delete", "--force", "kf"]).assert_ok();
    assert!(t.container("kf").is_none(), "delete --force left kf");
    for verb in ["state", "kill", "delete", "start", "ps"] {
        let out = t.nook(&[verb, "kk"]);
        assert_ne!(out.code, Some(0), "{verb} of a removed container\n{out}");
    }
    t.assert_no_processes_left();
}

#[test]
fn exec_gives_the_user_it_runs_as_its_own_home() {
    let Some(t) = Nook::new() else { return };
    if !t.has_subids() {
        return;
    }
    t.nook(&["run", "-d", "--name", "homes", t.image(), "sleep", "1000"])
        .assert_ok();
    let home = |args: &[&str]| {
        let mut all = vec!["exec"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["homes", "sh", "-c", "echo $HOME"]);
        let out = t.nook(&all);
        out.assert_ok();
        out.stdout.trim().to_string()
    };
    assert_eq!(home(&[]), "/root");
    // nobody's entry in the image's /etc/passwd, a uid without one gets /, as podman does.
    assert_eq!(home(&["-u", "nobody"]), "/nonexistent");
    assert_eq!(home(&["-u", "1234"]), "/");
    assert_eq!(home(&["-u", "nobody", "-e", "HOME=/mine"]), "/mine");
    let out = t.nook(&["exec", "-u", "nobody", "homes", "id", "-u"]);
    out.assert_ok().assert_stdout("65534");
    t.nook(&["rm", "-f", "homes"]).assert_ok();
}

#[test]
fn a_container_that_changed_nothing_shows_no_change() {
    let Some(t) = Nook::new() else { return };
    for backend in ["auto", "copy"] {
        let name = format!("still-{backend}");
        t.nook(&[
            "run",
            "-q",
            "--backend",
            backend,
            "--name",
            &name,
            t.image(),
            "true",
        ])
        .assert_ok();
        t.nook(&["diff", &name]).assert_ok().assert_stdout("");
        // exec and a change the container undoes leave nothing either.
        t.nook(&[
            "run",
            "-d",
            "-q",
            "--backend",
            backend,
            "--name",
            "busy",
            t.image(),
            "sleep",
            "1000",
        ])
        .assert_ok();
        t.nook(&["exec", "busy", "sh", "-c", "touch /etc/x; rm /etc/x"])
            .assert_ok();
        t.nook(&["diff", "busy"]).assert_ok().assert_stdout("");
        t.nook(&["exec", "busy", "sh", "-c", "echo hi > /etc/motd"])
            .assert_ok();
        t.nook(&["diff", "busy"])
            .assert_ok()
            .assert_stdout("C /etc\nA /etc/motd");
        t.nook(&["rm", "-f", "busy", &name]).assert_ok();
    }
}
