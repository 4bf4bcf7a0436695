//! nook killed with SIGKILL at any moment: no mount, no process and no half-made state may
//! outlive it, the next command copes with what is left, and the image never changes.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{tree_listing, Nook};
use nix::sys::signal::Signal;

/// A small deterministic generator, seeded from the clock and printed so a failure can be
/// replayed with NOOK_FAULT_SEED.
struct Lcg(u64);

impl Lcg {
    fn new() -> Lcg {
        let seed = std::env::var("NOOK_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .expect("clock")
                    .as_nanos() as u64
            });
        eprintln!("fault seed: {seed} (replay with NOOK_FAULT_SEED={seed})");
        Lcg(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Kills `nook ARGS` after a random delay up to `max_ms`, `rounds` times. Every kill must leave
/// the caller's mount table as it was (the harness checks) and no process behind.
fn kill_at_random(t: &Nook, rounds: usize, max_ms: u64, args: &[&str]) {
    let mut rng = Lcg::new();
    for _ in 0..rounds {
        let running = t.cmd(args).spawn();
        std::thread::sleep(Duration::from_micros(rng.below(max_ms * 1000)));
        running.signal(Signal::SIGKILL);
        running.wait();
    }
}

#[test]
fn killing_run_at_any_moment_leaves_nothing_the_next_command_cannot_clean() {
    let Some(t) = Nook::new() else { return };
    let image = t.image_copy("img");
    let before = tree_listing(std::path::Path::new(&image));
    kill_at_random(
        &t,
        120,
        25,
        &[
            "run",
            "--rm",
            &image,
            "sh",
            "-c",
            "echo x > /etc/new; rm /bin/ls",
        ],
    );
    kill_at_random(&t, 40, 25, &["run", &image, "sh", "-c", "echo y > /kept"]);
    t.assert_no_processes_left();
    // Abandoned --rm containers are cleaned by the next command; kept ones stay listed as
    // stopped and `nook rm` removes them.
    let ps = t.ps();
    for c in &ps {
        assert_ne!(c["status"], "running", "{c}");
        assert_eq!(
            c["command"][0], "sh",
            "only the kept containers remain: {c}"
        );
    }
    let names: Vec<String> = ps
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    if !names.is_empty() {
        let mut args = vec!["rm"];
        args.extend(names.iter().map(String::as_str));
        t.nook(&args).assert_ok();
    }
    assert!(
        t.container_dirs().is_empty(),
        "left: {:?}",
        t.container_dirs()
    );
    let names_left: Vec<_> = std::fs::read_dir(t.storage.join("names"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(names_left.is_empty(), "stale name claims: {names_left:?}");
    assert_eq!(
        tree_listing(std::path::Path::new(&image)),
        before,
        "the image changed"
    );
}

#[test]
fn killing_rm_at_any_moment_is_finished_by_the_next_command() {
    let Some(t) = Nook::new() else { return };
    let mut rng = Lcg::new();
    for i in 0..40 {
        let name = format!("victim{i}");
        t.nook(&[
            "run",
            "--name",
            &name,
            t.image(),
            "sh",
            "-c",
            "mkdir -p /a/b/c && for n in 1 2 3 4 5 6 7 8; do echo $n > /a/b/c/f$n; done",
        ])
        .assert_ok();
        let running = t.cmd(&["rm", &name]).spawn();
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        running.signal(Signal::SIGKILL);
        running.wait();
    }
    // Whatever each rm got to, the next listing finishes it or shows the container whole.
    let left = t.ps();
    for c in &left {
        t.nook(&["rm", c["name"].as_str().unwrap()]).assert_ok();
    }
    assert!(t.ps().is_empty());
    assert!(
        t.container_dirs().is_empty(),
        "left: {:?}",
        t.container_dirs()
    );
}

#[test]
fn killing_a_detached_containers_monitor_stops_the_container() {
    let Some(t) = Nook::new() else { return };
    t.nook(&["run", "-d", "--name", "bg", t.image(), "sleep", "100"])
        .assert_ok();
    let ps = t.container("bg").expect("listed");
    assert_eq!(ps["status"], "running");
    let pid = ps["pid"].as_i64().expect("pid") as i32;
    // The monitor is the container's parent.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let ppid: i32 = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(ppid), Signal::SIGKILL)
        .expect("kill monitor");
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            std::fs::metadata(format!("/proc/{pid}")).is_err()
        }),
        "the container outlived its monitor"
    );
    let c = t.container("bg").expect("still listed");
    assert_eq!(c["status"], "exited", "{c}");
    t.nook(&["rm", "bg"]).assert_ok();
}
