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
