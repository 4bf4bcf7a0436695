//! Engines that run nook as they run runc: containerd (through its runc v2 shim) and, side by
//! side, crun under the same containerd.
//!
//! containerd runs as root here, as it does on the clusters that use it: its shim calls nook as
//! root, with a bundle whose root is an overlay containerd mounted. That proves nook speaks the
//! shim's protocol (the verbs, flags, pid file, exec's process.json, `ps`, the exit statuses);
//! it does not prove a rootless run, which tests/oci.rs (podman as the test user) covers.

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{wait_until, Nook, Out};

const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// A program of an engine, or `None` after saying it is missing (a failure under `CI=true`).
fn required_tool(program: &str, package: &str) -> Option<PathBuf> {
    let found = ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.exists());
    if found.is_none() {
        missing(&format!(
            "{program} is not installed (apt-get install {package})"
        ));
    }
    found
}

fn missing(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing under CI=true: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// Runs `program ARGS` as the test process (root), output in files so that nothing it starts
/// can hold a pipe of ours open, and kills it past the timeout.
fn run_as_root(dir: &Path, program: &Path, args: &[&str]) -> Out {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let out = dir.join(format!(".root-{n}.out"));
    let err = dir.join(format!(".root-{n}.err"));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).expect("create output file"))
        .stderr(fs::File::create(&err).expect("create output file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} {args:?} still running after {TOOL_TIMEOUT:?}; killed\n{}",
                program.display(),
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    Out {
        code: status.code(),
        signal: status.signal(),
        stdout: fs::read_to_string(&out).unwrap_or_default(),
        stderr: fs::read_to_string(&err).unwrap_or_default(),
    }
}

/// Mount points under `dir` in this (the host's) mount namespace.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    common::mountinfo()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Processes whose command line names `dir` (containerd, its shims and whatever they left).
fn processes_naming(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

// ---------------------------------------------------------------------------
// containerd
// ---------------------------------------------------------------------------

/// A private containerd, root and state and sockets in the test's directory, stopped on drop.
struct Containerd {
    child: Child,
    dir: PathBuf,
    ctr: PathBuf,
    address: String,
}

impl Containerd {
    fn start(t: &Nook, containerd: &Path, ctr: &Path) -> Containerd {
        let dir = t.dir.join("containerd");
        fs::create_dir_all(&dir).expect("mkdir containerd");
        let address = format!("{}/containerd.sock", dir.display());
        // containerd 1.6 reads a runtime's BinaryName from its config only in the CRI plugin,
        // which this test does not need; ctr sends BinaryName per container in the same runc v2
        // shim options (`--runc-binary`).
        let config = format!(
            "version = 2\n\
             root = \"{d}/root\"\n\
             state = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{address}\"\n\
             [ttrpc]\n  address = \"{address}.ttrpc\"\n\
             [debug]\n  address = \"{d}/debug.sock\"\n",
            d = dir.display()
        );
        let config_path = dir.join("config.toml");
        fs::write(&config_path, config).expect("write containerd config");
        let log = fs::File::create(dir.join("containerd.log")).expect("create containerd log");
        let child = Command::new(containerd)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", containerd.display()));
        let c = Containerd {
            child,
            dir,
            ctr: ctr.to_path_buf(),
            address,
        };
        if !wait_until(Duration::from_secs(20), || {
            c.ctr_raw(&["version"]).code == Some(0)
        }) {
            panic!("containerd did not come up\n{}", c.log());
        }
        c
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn ctr_raw(&self, args: &[&str]) -> Out {
        let mut all = vec!["--address", self.address.as_str()];
        all.extend_from_slice(args);
        run_as_root(&self.dir, &self.ctr, &all)
    }

    /// `ctr ARGS`, the daemon's log appended to the output on failure.
    fn ctr(&self, args: &[&str]) -> Out {
        let mut out = self.ctr_raw(args);
        if out.code != Some(0) {
            out.stderr
                .push_str(&format!("\n--- containerd log ---\n{}", self.log()));
        }
        out
    }

    /// The task's pid and status as `ctr task ls` shows them.
    fn task(&self, id: &str) -> Option<(u32, String)> {
        let out = self.ctr(&["task", "ls"]);
        out.stdout.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[0] == id).then(|| (f[1].parse().unwrap_or(0), f[2].to_string()))
        })
    }

    #[track_caller]
    fn wait_for_status(&self, id: &str, status: &str) {
        if !wait_until(Duration::from_secs(20), || {
            self.task(id).is_some_and(|(_, s)| s == status)
        }) {
            panic!(
                "task {id} never {status}: {:?}\n{}",
                self.task(id),
                self.log()
            );
        }
    }

    /// Stops containerd as its service manager does (SIGTERM), then waits for it.
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What one runtime did under containerd, in the words a comparison can check.
#[derive(Debug, PartialEq)]
struct Observed {
    run_rm: (String, Option<i32>),
    exec: (String, Option<i32>),
    ps_lists_init: bool,
    stopped_by_term: bool,
    delete_reports: bool,
}

/// Drives one runtime (`runtime` as the runc v2 shim's BinaryName) through ctr's verbs.
fn drive(c: &Containerd, image: &str, runtime: &Path, label: &str) -> Observed {
    let runc_root = c.dir.join(format!("runc-root-{label}"));
    let fifos = c.dir.join(format!("fifo-{label}"));
    let root_arg = runc_root.display().to_string();
    let fifo_arg = fifos.display().to_string();
    let bin_arg = runtime.display().to_string();
    let shim = |verb: &str| -> Vec<String> {
        [
            verb,
            "--runtime",
            "io.containerd.runc.v2",
            "--runc-binary",
            &bin_arg,
            "--runc-root",
            &root_arg,
            "--fifo-dir",
            &fifo_arg,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let ctr_with = |mut head: Vec<String>, rest: &[&str]| -> Out {
        head.extend(rest.iter().map(|s| s.to_string()));
        let args: Vec<&str> = head.iter().map(String::as_str).collect();
        c.ctr(&args)
    };

    // Foreground, removed on exit: output and exit status come back through the shim.
    let rm_id = format!("{label}-rm");
    let run_rm = ctr_with(
        shim("run"),
        &[
            "--rm",
            image,
            &rm_id,
            "sh",
            "-c",
            "echo hello from $(cat /proc/1/comm); exit 3",
        ],
    );
    assert_eq!(run_rm.code, Some(3), "{label}: ctr run --rm\n{run_rm}");

    // Detached: an init that ends on SIGTERM with its own status (pid 1 without a handler
    // would ignore it, under every runtime).
    let id = format!("{label}-d");
    let started = ctr_with(
        shim("run"),
        &[
            "-d",
            image,
            &id,
            "sh",
            "-c",
            "trap 'exit 7' TERM; while :; do sleep 0.2; done",
        ],
    );
    assert_eq!(started.code, Some(0), "{label}: ctr run -d\n{started}");
    c.wait_for_status(&id, "RUNNING");
    let (init_pid, _) = c.task(&id).expect("task listed");

    let exec = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "--fifo-dir",
        &fifo_arg,
        &id,
        "sh",
        "-c",
        "echo exec sees $(cat /proc/1/comm); exit 4",
    ]);
    assert_eq!(exec.code, Some(4), "{label}: ctr task exec\n{exec}");

    let ps = c.ctr(&["task", "ps", &id]);
    assert_eq!(ps.code, Some(0), "{label}: ctr task ps\n{ps}");
    let ps_lists_init = ps
        .stdout
        .lines()
        .any(|l| l.split_whitespace().next() == Some(&init_pid.to_string()));

    pause_and_resume(c, &id, label);

    let kill = c.ctr(&["task", "kill", &id]);
    assert_eq!(kill.code, Some(0), "{label}: ctr task kill\n{kill}");
    let stopped_by_term = wait_until(Duration::from_secs(20), || {
        c.task(&id).is_some_and(|(_, s)| s == "STOPPED")
    });
    if !stopped_by_term {
        c.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
        c.wait_for_status(&id, "STOPPED");
    }
    let delete = c.ctr(&["task", "delete", &id]);
    assert_eq!(delete.code, Some(0), "{label}: ctr task delete\n{delete}");
    let delete_reports = delete.stderr.contains("exit code 7");
    let rm = c.ctr(&["container", "rm", &id]);
    assert_eq!(rm.code, Some(0), "{label}: ctr container rm\n{rm}");

    Observed {
        run_rm: (run_rm.stdout.trim().to_string(), run_rm.code),
        exec: (exec.stdout.trim().to_string(), exec.code),
        ps_lists_init,
        stopped_by_term,
        delete_reports,
    }
}

/// `ctr task pause`/`resume`: the shim calls the runtime's `pause` and `resume`. A runtime that
/// cannot freeze must say so and leave the task running; one that can must thaw it again.
fn pause_and_resume(c: &Containerd, id: &str, label: &str) {
    let pause = c.ctr(&["task", "pause", id]);
    if pause.code == Some(0) {
        c.wait_for_status(id, "PAUSED");
        let resume = c.ctr(&["task", "resume", id]);
        assert_eq!(resume.code, Some(0), "{label}: ctr task resume\n{resume}");
        c.wait_for_status(id, "RUNNING");
        eprintln!("{label}: pause and resume work under containerd");
    } else {
        assert!(
            pause.stderr.contains("pause"),
            "{label}: a failed pause must name the verb\n{pause}"
        );
        assert_eq!(
            c.task(id).map(|(_, s)| s),
            Some("RUNNING".to_string()),
            "{label}: a refused pause must leave the task running"
        );
        let first = pause.stderr.lines().next().unwrap_or_default().to_string();
        eprintln!("{label}: pause refused under containerd: {first}");
    }
}

#[test]
fn containerd_runs_nook_as_it_runs_crun() {
    let Some(t) = Nook::new() else { return };
    if !nix::unistd::geteuid().is_root() {
        missing("containerd runs as root: run this test as root");
        return;
    }
    let (Some(containerd), Some(ctr)) = (
        required_tool("containerd", "containerd"),
        required_tool("ctr", "containerd"),
    ) else {
        return;
    };
    let Some(crun) = required_tool("crun", "crun") else {
        return;
    };

    // The image, as a user makes it: `nook export --format oci` of the busybox image.
    t.nook(&["import", t.image(), "busybox"]).assert_ok();
    let archive = t.dir.join("busybox-oci.tar");
    t.nook(&["export", "--format", "oci", "-o", s(&archive), "busybox"])
        .assert_ok();

    let mut c = Containerd::start(&t, &containerd, &ctr);
    let import = c.ctr(&[
        "images",
        "import",
        "--base-name",
        "localhost/busybox",
        s(&archive),
    ]);
    assert_eq!(import.code, Some(0), "ctr images import\n{import}");
    let listed = c.ctr(&["images", "ls", "-q"]);
    let image = listed
        .stdout
        .lines()
        .find(|l| l.starts_with("localhost/busybox"))
        .unwrap_or_else(|| panic!("no imported image listed\n{listed}\n{import}"))
        .to_string();

    let under_crun = drive(&c, &image, &crun, "crun");
    let under_nook = drive(&c, &image, t.bin(), "nook");
    assert_eq!(
        under_crun.run_rm.0, "hello from sh",
        "crun: ctr run --rm output"
    );
    assert_eq!(
        under_crun.exec.0, "exec sees sh",
        "crun: ctr task exec output"
    );
    assert_eq!(
        under_nook, under_crun,
        "nook (right) differs from crun (left)"
    );

    c.stop();
    let left = processes_naming(&t.dir);
    assert!(
        left.is_empty(),
        "processes left after containerd stopped:\n{}",
        left.join("\n")
    );
    let mounts = mounts_under(&t.dir);
    assert!(
        mounts.is_empty(),
        "mounts left after containerd stopped: {mounts:?}"
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}
