//! Many nook processes at once: containers from one image, races for a name, rm racing run.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{tree_listing, Nook};

#[test]
fn thirty_two_containers_of_one_image_write_at_once() {
    let Some(t) = Nook::new() else { return };
    let image = t.image_copy("img");
    let before = tree_listing(Path::new(&image));
    let running: Vec<_> = (0..32)
        .map(|i| {
            t.cmd(&[
                "run",
                "--rm",
                &image,
                "sh",
                "-c",
                &format!("echo {i} > /etc/motd && mkdir -p /work/{i} && cat /etc/motd"),
            ])
            .timeout(Duration::from_secs(120))
            .spawn()
        })
        .collect();
    for (i, r) in running.into_iter().enumerate() {
        r.wait().assert_ok().assert_stdout(&i.to_string());
    }
    assert_eq!(tree_listing(Path::new(&image)), before, "the image changed");
    assert!(
        t.container_dirs().is_empty(),
        "left: {:?}",
        t.container_dirs()
    );
}

#[test]
fn two_runs_racing_for_one_name_have_exactly_one_winner() {
    let Some(t) = Nook::new() else { return };
    for round in 0..10 {
        let name = format!("contested{round}");
        let racers: Vec<_> = (0..2)
            .map(|_| t.cmd(&["run", "--name", &name, t.image(), "true"]).spawn())
            .collect();
        let outs: Vec<_> = racers.into_iter().map(|r| r.wait()).collect();
        let winners = outs.iter().filter(|o| o.code == Some(0)).count();
        assert_eq!(winners, 1, "round {round}: {outs:?}");
        let loser = outs.iter().find(|o| o.code != Some(0)).unwrap();
        assert_eq!(loser.code, Some(125), "{loser}");
        assert!(loser.stderr.contains("already in use"), "{loser}");
        assert_eq!(
            t.ps().iter().filter(|c| c["name"] == name.as_str()).count(),
            1
        );
    }
    assert_eq!(
        t.container_dirs().len(),
        10,
        "losers left directories behind"
    );
}

#[test]
fn rm_racing_run_on_one_name_corrupts_nothing() {
    let Some(t) = Nook::new() else { return };
    for round in 0..10 {
        let name = format!("raced{round}");
        let run = t
            .cmd(&[
                "run",
                "--name",
                &name,
                t.image(),
                "sh",
                "-c",
                "echo data > /f; sleep 0.2",
            ])
            .spawn();
        std::thread::sleep(Duration::from_millis(round * 15));
        let rm = t.nook(&["rm", "-f", &name]);
        let run = run.wait();
        // Either rm found the container (and stopped it) or it was too early; both exits are
        // clean and the store stays consistent.
        assert!(
            rm.code == Some(0) || rm.stderr.contains("no such container"),
            "{rm}"
        );
        assert!(run.code.is_some(), "{run}");
        let listed = t.ps();
        for c in &listed {
            assert_ne!(c["status"], "running", "{c}");
        }
        let _ = t.nook(&["rm", "-f", &name]);
    }
    assert!(t.ps().is_empty());
    assert!(
        t.container_dirs().is_empty(),
        "left: {:?}",
        t.container_dirs()
    );
}

/// Busy loops on every core, ended when dropped: the load under which a stop's waits used to
/// run out.
struct Load(Vec<std::process::Child>);

impl Load {
    fn start() -> Load {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Load(
            (0..cores * 2)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("start a busy loop")
                })
                .collect(),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn sixteen_containers_stopped_and_removed_at_once_under_load_all_succeed() {
    let Some(t) = Nook::new() else { return };
    let image = t.image_copy("img");
    // Detached, kept or `--rm`, and foreground `--rm` ones whose own nook removes them while
    // `rm -f` does: every path by which a stop meets a runner that is busy ending.
    // The `--rm` ones fill their layer first: their own nook then spends a while removing it
    // after the stop, which a remover waiting on it must sit out.
    let fill = "mkdir /d && cd /d && i=0; while [ $i -lt 3000 ]; do : > $i; i=$((i+1)); done; \
                echo ready; exec sleep 1000";
    let mut foreground = Vec::new();
    let mut names = Vec::new();
    for i in 0..16 {
        let name = format!("c{i}");
        let args: Vec<&str> = match i % 4 {
            0 => vec!["run", "--rm", "--name", &name, &image, "sh", "-c", fill],
            1 => vec![
                "run", "-d", "--rm", "--name", &name, &image, "sh", "-c", fill,
            ],
            _ => vec!["run", "-d", "--name", &name, &image, "sleep", "1000"],
        };
        if i % 4 == 0 {
            foreground.push(t.cmd(&args).timeout(Duration::from_secs(600)).spawn());
        } else {
            t.nook(&args).assert_ok();
        }
        names.push(name);
    }
    for run in &foreground {
        run.wait_for_stdout("ready", Duration::from_secs(300));
    }
    for name in names.iter().skip(1).step_by(4) {
        assert!(
            common::wait_until(Duration::from_secs(300), || t
                .nook(&["logs", name])
                .stdout
                .contains("ready")),
            "{name} did not fill its layer"
        );
    }
    assert_eq!(
        t.ps().iter().filter(|c| c["status"] == "running").count(),
        16,
        "not all 16 run: {:?}",
        t.ps()
    );
    let load = Load::start();
    // Half are stopped (sleep as pid 1 ignores TERM: the stop goes on to KILL), half removed.
    let verbs: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let args: Vec<&str> = if i % 2 == 0 {
                vec!["stop", "-t", "1", name]
            } else {
                vec!["rm", "-f", name]
            };
            t.cmd(&args).timeout(Duration::from_secs(300)).spawn()
        })
        .collect();
    let outs: Vec<_> = verbs.into_iter().map(|v| v.wait()).collect();
    drop(load);
    for (name, out) in names.iter().zip(&outs) {
        out.assert_ok();
        assert_eq!(out.stdout.trim(), name, "{out}");
    }
    for run in foreground {
        let out = run.wait();
        assert!(out.code.is_some(), "foreground run did not end\n{out}");
    }
    for c in t.ps() {
        assert_ne!(c["status"], "running", "{c}");
        t.nook(&["rm", c["name"].as_str().unwrap()]).assert_ok();
    }
    assert!(
        t.container_dirs().is_empty(),
        "left: {:?}",
        t.container_dirs()
    );
    t.assert_no_processes_left();
}

/// The nook process that runs container `name` (its monitor, or the foreground `run`).
fn runner_of(t: &Nook, name: &str) -> i32 {
    let out = t.nook(&["inspect", name]);
    out.assert_ok();
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("inspect is JSON");
    doc[0]["State"]["runner_pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no runner pid\n{out}")) as i32
}

#[test]
fn stop_and_rm_f_outlast_a_runner_the_machine_starves() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Some(t) = Nook::new() else { return };
    // The runner gets no CPU for longer than any fixed wait nook had (10 s): on a loaded
    // machine that is how long it took to notice its container's end and record it.
    for (verb, rm) in [("stop", false), ("rm", true), ("stop", true)] {
        let name = format!("starved-{verb}-{rm}");
        let mut run = vec!["run", "-d", "--name", &name, t.image(), "sleep", "1000"];
        if rm {
            run.insert(2, "--rm");
        }
        t.nook(&run).assert_ok();
        let runner = Pid::from_raw(runner_of(&t, &name));
        kill(runner, Signal::SIGSTOP).expect("stop the runner");
        let args: Vec<&str> = match verb {
            "stop" => vec!["stop", "-t", "1", &name],
            _ => vec!["rm", "-f", &name],
        };
        let pending = t.cmd(&args).timeout(Duration::from_secs(120)).spawn();
        std::thread::sleep(Duration::from_secs(12));
        kill(runner, Signal::SIGCONT).expect("continue the runner");
        let out = pending.wait();
        out.assert_ok().assert_stdout(&name);
        match (verb, rm) {
            ("stop", false) => {
                let c = t.container(&name).expect("kept container listed");
                assert_eq!(c["status"], "exited", "{c}");
                t.nook(&["rm", &name]).assert_ok();
            }
            _ => assert!(
                common::wait_until(Duration::from_secs(60), || t.container(&name).is_none()),
                "{name} still listed"
            ),
        }
    }
    assert!(
        common::wait_until(Duration::from_secs(60), || t.container_dirs().is_empty()),
        "left: {:?}",
        t.container_dirs()
    );
    t.assert_no_processes_left();
}
