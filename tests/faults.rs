//! nook killed with SIGKILL at any moment: no mount, no process and no half-made state may
//! outlive it, the next command copes with what is left, and the image never changes.

mod common;

use std::path::{Path, PathBuf};
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

/// The small filesystem scripts/test.sh mounts for disk-full tests, or skip (fail under CI).
fn small_filesystem() -> Option<std::path::PathBuf> {
    match std::env::var("NOOK_TEST_SMALLFS") {
        Ok(dir) => Some(std::path::PathBuf::from(dir)),
        Err(_) => {
            let reason = "NOOK_TEST_SMALLFS is not set (scripts/test.sh mounts a 64 MiB ext4)";
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("prerequisite missing under CI=true: {reason}");
            }
            eprintln!("SKIPPED: {reason}");
            None
        }
    }
}

#[test]
fn a_full_disk_fails_clearly_and_corrupts_nothing() {
    let Some(small) = small_filesystem() else {
        return;
    };
    let Some(t) = Nook::new() else { return };
    let base = small.join(format!("full-{}", std::process::id()));
    std::fs::create_dir_all(&base).expect("test dir on the small filesystem");
    t.give(&base);
    let storage = base.join("storage");
    let storage = storage.to_str().unwrap();
    let nook = |args: &[&str]| t.cmd(args).env("NOOK_STORAGE", storage).run();

    nook(&[
        "run",
        "--name",
        "keep",
        t.image(),
        "sh",
        "-c",
        "echo precious > /data",
    ])
    .assert_ok();
    let archive = t.dir.join("img.tar");
    let tar = std::process::Command::new("tar")
        .args(["-C", t.image(), "-cf"])
        .arg(&archive)
        .arg(".")
        .status()
        .expect("tar");
    assert!(tar.success());
    t.give(&archive);
    nook(&["import", "-q", archive.to_str().unwrap(), "img"]).assert_ok();

    // The container fills the disk: its own write fails, nook reports its status and cleans up.
    let out = nook(&[
        "run",
        "--rm",
        t.image(),
        "sh",
        "-c",
        "dd if=/dev/zero of=/big bs=1M count=200 2>&1; echo dd=$?",
    ]);
    out.assert_ok();
    assert!(out.stdout.contains("No space left on device"), "{out}");
    assert!(!out.stdout.contains("dd=0"), "{out}");

    // With the disk full, new containers and imports fail with a clear error, leaving nothing.
    let filler = base.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=100"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let containers_before = std::fs::read_dir(base.join("storage/containers"))
        .unwrap()
        .count();
    let out = nook(&[
        "run",
        "--rm",
        t.image(),
        "sh",
        "-c",
        "dd if=/dev/zero of=/x bs=1M count=50",
    ]);
    assert_ne!(out.code, Some(0), "{out}");
    let out = nook(&["import", "-q", archive.to_str().unwrap(), "img2"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("No space left on device"), "{out}");
    assert!(
        !base.join("storage/images/img2").exists(),
        "a partial image was left"
    );
    std::fs::remove_file(&filler).expect("remove filler");

    // Everything made before is intact, and the next commands clean what the failures left.
    let listed = t
        .cmd(&["ps", "--format", "json"])
        .env("NOOK_STORAGE", storage)
        .run();
    listed.assert_ok();
    let ps: serde_json::Value = serde_json::from_str(&listed.stdout).expect("json");
    assert_eq!(ps.as_array().unwrap().len(), 1, "{ps}");
    let id = ps[0]["id"].as_str().unwrap();
    let data = base.join("storage/containers").join(id).join("upper/data");
    assert_eq!(std::fs::read_to_string(data).unwrap(), "precious\n");
    assert!(
        std::fs::read_dir(base.join("storage/containers"))
            .unwrap()
            .count()
            <= containers_before,
        "failed runs left containers behind"
    );
    nook(&["run", "--rm", "img", "true"]).assert_ok();
    nook(&["rm", "keep"]).assert_ok();
    nook(&["rmi", "img"]).assert_ok();
    common::force_remove(&base);
}

/// Kills an operation at random moments of a window that follows its duration: widened when
/// a kill lands inside the operation, narrowed when it had finished already. About 70% of the
/// kills land, however loaded the machine.
struct Killer {
    rng: Lcg,
    window: Duration,
    /// The window never grows past this: a kill may always land (`exec` of a long command).
    widest: Duration,
    sent: usize,
    landed: usize,
}

impl Killer {
    fn new(window: Duration) -> Killer {
        Killer {
            rng: Lcg::new(),
            window,
            widest: window * 3,
            sent: 0,
            landed: 0,
        }
    }

    /// Kills `running` after a random delay within the window; returns how it ended.
    fn kill(&mut self, running: common::Running) -> common::Out {
        let us = self.rng.below(self.window.as_micros().max(1) as u64);
        std::thread::sleep(Duration::from_micros(us));
        running.signal(Signal::SIGKILL);
        let out = running.wait();
        self.sent += 1;
        if out.signal == Some(libc::SIGKILL) {
            self.landed += 1;
            self.window = (self.window * 11 / 10).min(self.widest);
        } else {
            self.window = self.window * 4 / 5;
        }
        out
    }

    /// Says how many kills landed; fails if too few did to have tested anything.
    #[track_caller]
    fn report(&self, what: &str) {
        eprintln!(
            "{what}: {} kills, {} inside the operation, window now {:?}",
            self.sent, self.landed, self.window
        );
        assert!(
            self.landed * 3 >= self.sent,
            "{what}: too few kills landed inside the operation"
        );
    }
}

/// Runs `nook ARGS` once to the end, uninterrupted, and returns a first window for the kills a
/// little longer than it took. Timed without the harness, whose polling would round it up;
/// output goes nowhere (a container may inherit it).
fn measured(t: &Nook, args: &[&str]) -> Duration {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let started = std::time::Instant::now();
    let status = t
        .command_for(t.bin(), &args, &[])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run nook");
    let took = started.elapsed();
    assert!(status.success(), "nook {args:?}: {status}");
    took * 5 / 4
}

/// A tree listing without ctimes (hard links to an image's files change theirs) and without
/// the root itself (made by nook, not taken from the source).
fn listing_without_ctime(dir: &Path) -> Vec<String> {
    tree_listing(dir)
        .into_iter()
        .filter(|l| !l.starts_with(".\t"))
        .map(|l| {
            l.rsplit_once("\tctime=")
                .map_or(l.clone(), |(keep, _)| keep.into())
        })
        .collect()
}

fn image_rootfs(t: &Nook, name: &str) -> PathBuf {
    t.storage.join("images").join(name).join("rootfs")
}

/// Everything under `$NOOK_STORAGE/images`, hidden entries (builds in progress) included.
fn image_store_entries(t: &Nook) -> Vec<String> {
    common::entry_names(&t.storage.join("images"))
}

/// After a killed build of image `name`: the next command shows it whole (the same tree as
/// `reference`) or not at all and leaves nothing hidden behind; a whole one is removed.
#[track_caller]
fn assert_whole_or_absent(t: &Nook, name: &str, reference: &[String], keep: &[&str]) {
    let images = t.nook(&["images", "-q"]);
    images.assert_ok();
    let listed: Vec<&str> = images.lines();
    if listed.contains(&name) {
        assert_eq!(
            listing_without_ctime(&image_rootfs(t, name)),
            reference,
            "a killed build left a broken image {name}"
        );
        t.nook(&["rmi", name]).assert_ok();
    }
    let mut want: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(image_store_entries(t), want, "left in the image store");
}

#[test]
fn killing_import_at_any_moment_leaves_the_image_whole_or_absent() {
    let Some(t) = Nook::new() else { return };
    // The busybox tree as a tarball and as an OCI image layout, both made by nook.
    t.nook(&["import", "-q", t.image(), "src"]).assert_ok();
    let tarball = t.dir.join("bb.tar");
    let oci_archive = t.dir.join("bb-oci.tar");
    t.nook(&["export", "src", "-o", tarball.to_str().unwrap()])
        .assert_ok();
    t.nook(&[
        "export",
        "src",
        "--format",
        "oci",
        "-o",
        oci_archive.to_str().unwrap(),
    ])
    .assert_ok();
    t.nook(&["rmi", "src"]).assert_ok();
    let layout = t.mkdir("layout");
    let untar = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&oci_archive)
        .arg("-C")
        .arg(&layout)
        .status()
        .expect("tar");
    assert!(untar.success());
    t.give(&layout);
    for source in [&tarball, &layout] {
        let source = source.to_str().unwrap();
        let source_before = tree_listing(Path::new(source));
        let window = measured(&t, &["import", "-q", source, "ref"]);
        let reference = listing_without_ctime(&image_rootfs(&t, "ref"));
        t.nook(&["rmi", "ref"]).assert_ok();
        let mut killer = Killer::new(window);
        for _ in 0..40 {
            killer.kill(t.cmd(&["import", "-q", source, "k"]).spawn());
            t.assert_no_processes_left();
            assert_whole_or_absent(&t, "k", &reference, &[]);
        }
        killer.report(&format!("import {source}"));
        assert_eq!(
            tree_listing(Path::new(source)),
            source_before,
            "{source} changed"
        );
    }
}

#[test]
fn killing_commit_at_any_moment_leaves_the_image_whole_or_absent() {
    let Some(t) = Nook::new() else { return };
    t.nook(&["import", "-q", t.image(), "bb"]).assert_ok();
    t.nook(&[
        "run",
        "--name",
        "work",
        "bb",
        "sh",
        "-c",
        "set -e; echo new > /added; echo more >> /etc/passwd; rm /bin/vi; rm -r /usr/sbin; \
         mkdir -p /var/x/y; echo z > /var/x/y/z",
    ])
    .assert_ok();
    let base_before = listing_without_ctime(&image_rootfs(&t, "bb"));
    let diff_before = t.nook(&["diff", "work"]);
    diff_before.assert_ok();
    let window = measured(&t, &["commit", "-q", "work", "ref"]);
    let reference = listing_without_ctime(&image_rootfs(&t, "ref"));
    t.nook(&["rmi", "ref"]).assert_ok();
    let mut killer = Killer::new(window);
    for _ in 0..40 {
        killer.kill(t.cmd(&["commit", "-q", "work", "snap"]).spawn());
        t.assert_no_processes_left();
        assert_whole_or_absent(&t, "snap", &reference, &["bb"]);
    }
    killer.report("commit");
    assert_eq!(
        listing_without_ctime(&image_rootfs(&t, "bb")),
        base_before,
        "the base image changed"
    );
    t.nook(&["diff", "work"]).assert_stdout(&diff_before.stdout);
    t.nook(&["rm", "work"]).assert_ok();
    t.nook(&["rmi", "bb"]).assert_ok();
}

/// Host pids of the live processes in the pid namespace of `pid`, other than `pid` itself.
/// Zombies have ended; they wait for the host's init, which reaps orphans from outside.
fn others_in_pid_namespace(pid: i32) -> Vec<i32> {
    let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let zombie = |p: i32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
    };
    let Some(theirs) = ns(pid) else {
        return Vec::new();
    };
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p != pid && ns(p).as_ref() == Some(&theirs) && !zombie(p))
        .collect()
}

#[test]
fn killing_exec_at_any_moment_leaves_no_exec_behind_and_the_container_working() {
    let Some(t) = Nook::new() else { return };
    t.nook(&["run", "-d", "--name", "bg", t.image(), "sleep", "1000"])
        .assert_ok();
    let pid = t.container("bg").expect("listed")["pid"]
        .as_i64()
        .expect("pid") as i32;
    let window = measured(&t, &["exec", "bg", "true"]);
    let mut killer = Killer::new(window);
    for i in 0..40 {
        // The command outlives every delay: a kill finds it there, or on its way. Every other
        // one runs as another user, which takes a change of uid on the way.
        let args: &[&str] = if i % 2 == 0 {
            &["exec", "bg", "sleep", "30"]
        } else {
            &["exec", "-u", "1000", "bg", "sleep", "30"]
        };
        killer.kill(t.cmd(args).spawn());
        assert!(
            common::wait_until(Duration::from_secs(3), || others_in_pid_namespace(pid)
                .is_empty()),
            "the killed exec left processes in the container: {:?}",
            others_in_pid_namespace(pid)
        );
        t.nook(&["exec", "bg", "true"]).assert_ok();
    }
    killer.report("exec");
    assert_eq!(
        killer.landed, killer.sent,
        "an exec of `sleep 30` ended by itself"
    );
    assert_eq!(t.container("bg").expect("listed")["status"], "running");
    t.nook(&["rm", "-f", "bg"]).assert_ok();
}

/// An OCI bundle (`nook spec --rootless`) running `sleep 1000` over the busybox image.
fn sleeping_bundle(t: &Nook) -> PathBuf {
    let dir = t.mkdir("bundle");
    t.nook(&["spec", "--rootless", "--bundle", dir.to_str().unwrap()])
        .assert_ok();
    let path = dir.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    spec["root"] = serde_json::json!({"path": t.image(), "readonly": true});
    spec["process"]["args"] = serde_json::json!(["sleep", "1000"]);
    // Marks the container's processes as this test's for the harness's leftover check.
    spec["process"]["env"]
        .as_array_mut()
        .expect("env")
        .push(serde_json::json!(format!(
            "NOOK_STORAGE={}",
            t.storage.display()
        )));
    t.write_file(&path, &spec.to_string());
    dir
}

/// `nook list --format json`: (id, status) of every OCI container.
fn oci_list(t: &Nook) -> Vec<(String, String)> {
    let out = t.nook(&["list", "--format", "json"]);
    out.assert_ok();
    let list: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("list is not JSON: {e}\n{out}"));
    list.as_array()
        .unwrap_or_else(|| panic!("list is not an array\n{out}"))
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap_or_default().to_string(),
                c["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn killing_oci_start_at_any_moment_leaves_a_container_that_runs_or_starts() {
    let Some(t) = Nook::new() else { return };
    let bundle = sleeping_bundle(&t);
    // The container inherits create's output: not the harness's pipes.
    let create = |id: &str| measured(&t, &["create", "--bundle", bundle.to_str().unwrap(), id]);
    create("warm");
    let mut killer = Killer::new(measured(&t, &["start", "warm"]));
    t.nook(&["delete", "--force", "warm"]).assert_ok();
    for i in 0..40 {
        let id = format!("s{i}");
        create(&id);
        killer.kill(t.cmd(&["start", &id]).spawn());
        // Whatever start got to, the container is created (and starts now) or runs.
        let status = match oci_list(&t).as_slice() {
            [(listed, status)] if *listed == id => status.clone(),
            other => panic!("after a killed start of {id}, list shows {other:?}"),
        };
        let next = t
            .cmd(&["start", &id])
            .timeout(Duration::from_secs(10))
            .run();
        match status.as_str() {
            // Unless the killed start had let the process through: it runs by now.
            "created" => assert!(
                next.code == Some(0) || next.code == Some(1) && next.stderr.contains("is running"),
                "start after a killed start\n{next}"
            ),
            "running" => {
                next.assert_code(1);
                assert!(next.stderr.contains("is running"), "{next}");
            }
            other => panic!("{id} is {other} after a killed start"),
        }
        let state = t.nook(&["state", &id]);
        state.assert_ok();
        assert!(state.stdout.contains("\"running\""), "{state}");
        t.nook(&["delete", "--force", &id]).assert_ok();
        assert_eq!(oci_list(&t), Vec::new());
        t.assert_no_processes_left();
    }
    killer.report("start");
}
