//! Engines that run nook as they run runc: containerd (through its runc v2 shim) and, side by
//! side, crun under the same containerd.
//!
//! containerd runs as root here, as it does on the clusters that use it: its shim calls nook as
//! root, with a bundle whose root is an overlay containerd mounted. That proves nook speaks the
//! shim's protocol (the verbs, flags, pid file, exec's process.json, `ps`, the exit statuses);
//! it does not prove a rootless run, which tests/oci.rs (podman as the test user) covers.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{prerequisite_missing, required_tool, wait_until, Nook, Out};

const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

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
    paused: bool,
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

    let paused = pause_and_resume(c, &id, label);

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
        paused,
    }
}

/// `ctr task pause`/`resume`: the shim calls the runtime's `pause` and `resume`. A runtime that
/// cannot freeze must say so and leave the task running; one that can must thaw it again.
/// Whether it could: as root, nook freezes with the cgroup v2 freezer, crun here with v1's.
fn pause_and_resume(c: &Containerd, id: &str, label: &str) -> bool {
    let pause = c.ctr(&["task", "pause", id]);
    if pause.code == Some(0) {
        c.wait_for_status(id, "PAUSED");
        let resume = c.ctr(&["task", "resume", id]);
        assert_eq!(resume.code, Some(0), "{label}: ctr task resume\n{resume}");
        c.wait_for_status(id, "RUNNING");
        eprintln!("{label}: pause and resume work under containerd");
        true
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
        false
    }
}

#[test]
fn containerd_runs_nook_as_it_runs_crun() {
    let Some(t) = Nook::new() else { return };
    if !nix::unistd::geteuid().is_root() {
        prerequisite_missing("containerd runs as root: run this test as root");
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

// ---------------------------------------------------------------------------
// Slurm
// ---------------------------------------------------------------------------

/// The example in configs/; the test puts its runtime and state directory in place of the
/// example's.
const OCI_CONF: &str = include_str!("../configs/slurm-oci.conf");
const OCI_CONF_RUNTIME: &str = "/usr/local/bin/nook";
const OCI_CONF_STATE: &str = "/run/nook-slurm";

/// A free TCP port on 127.0.0.1 (free when asked; nothing else here binds ports at random).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A daemon started as root in the foreground, stopped (SIGTERM, then SIGKILL) on drop.
struct Daemon {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl Daemon {
    fn start(
        name: &'static str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Daemon {
        let out = fs::File::create(&log).expect("create daemon log");
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Daemon { child, name, log }
    }

    fn log(&self) -> String {
        format!(
            "--- {} ---\n{}",
            self.name,
            fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

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

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A one-node Slurm cluster on 127.0.0.1: munged with its own key and socket, slurmctld and
/// slurmd in the foreground, all state and configuration in the test's directory.
struct Slurm {
    dir: PathBuf,
    conf: PathBuf,
    // Stopped in reverse order of starting: slurmd, slurmctld, munged.
    daemons: Vec<Daemon>,
}

impl Slurm {
    fn start(t: &Nook, programs: &SlurmPrograms) -> Slurm {
        let dir = t.dir.join("slurm");
        for sub in ["", "munge", "state", "spool", "log"] {
            fs::create_dir_all(dir.join(sub)).expect("mkdir slurm dir");
        }
        // The runner's srun reaches munged's socket and reads slurm.conf.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let munge = dir.join("munge");
        fs::set_permissions(&munge, fs::Permissions::from_mode(0o755)).expect("chmod");
        let key = munge.join("munge.key");
        let mut bytes = vec![0u8; 1024];
        std::io::Read::read_exact(
            &mut fs::File::open("/dev/urandom").expect("open /dev/urandom"),
            &mut bytes,
        )
        .expect("read /dev/urandom");
        fs::write(&key, bytes).expect("write munge key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod key");
        let socket = munge.join("munge.sock");

        let d = dir.display().to_string();
        let host = nix::unistd::gethostname()
            .expect("gethostname")
            .to_string_lossy()
            .split('.')
            .next()
            .unwrap_or("localhost")
            .to_string();
        let conf = dir.join("slurm.conf");
        fs::write(
            &conf,
            format!(
                "ClusterName=nooktest\n\
                 SlurmctldHost={host}(127.0.0.1)\n\
                 SlurmUser=root\n\
                 SlurmctldPort={ctld}\n\
                 SlurmdPort={slurmd}\n\
                 AuthType=auth/munge\n\
                 CredType=cred/munge\n\
                 AuthInfo=socket={socket}\n\
                 StateSaveLocation={d}/state\n\
                 SlurmdSpoolDir={d}/spool\n\
                 SlurmctldPidFile={d}/slurmctld.pid\n\
                 SlurmdPidFile={d}/slurmd.pid\n\
                 SlurmctldLogFile={d}/log/slurmctld.log\n\
                 SlurmdLogFile={d}/log/slurmd.log\n\
                 SlurmdDebug=debug\n\
                 ProctrackType=proctrack/linuxproc\n\
                 TaskPlugin=task/none\n\
                 SwitchType=switch/none\n\
                 MpiDefault=none\n\
                 SchedulerType=sched/builtin\n\
                 SelectType=select/linear\n\
                 JobCompType=jobcomp/none\n\
                 AccountingStorageType=accounting_storage/none\n\
                 JobAcctGatherType=jobacct_gather/none\n\
                 ReturnToService=2\n\
                 KillWait=5\n\
                 NodeName={host} NodeAddr=127.0.0.1 CPUs=1 State=UNKNOWN\n\
                 PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n",
                ctld = free_port(),
                slurmd = free_port(),
                socket = socket.display(),
            ),
        )
        .expect("write slurm.conf");

        let conf_s = conf.display().to_string();
        let env = [
            ("SLURM_CONF", conf_s.as_str()),
            ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        ];
        let mut daemons = vec![Daemon::start(
            "munged",
            &programs.munged,
            &[
                "--foreground",
                // The socket's directory belongs to the test, not to root.
                "--force",
                &format!("--socket={}", socket.display()),
                &format!("--key-file={}", key.display()),
                &format!("--pid-file={}/munged.pid", munge.display()),
                &format!("--seed-file={}/munged.seed", munge.display()),
                &format!("--log-file={}/munged.log", munge.display()),
            ],
            &env,
            dir.join("log/munged.out"),
        )];
        if !wait_until(Duration::from_secs(20), || socket.exists()) {
            panic!("munged did not come up\n{}", daemons[0].log());
        }
        daemons.push(Daemon::start(
            "slurmctld",
            &programs.slurmctld,
            &["-D", "-f", &conf_s],
            &env,
            dir.join("log/slurmctld.out"),
        ));
        daemons.push(Daemon::start(
            "slurmd",
            &programs.slurmd,
            &["-D", "-f", &conf_s],
            &env,
            dir.join("log/slurmd.out"),
        ));
        let s = Slurm { dir, conf, daemons };
        let ready = wait_until(Duration::from_secs(30), || {
            let out = s.root(&programs.sinfo, &["-h", "-o", "%T"]);
            out.code == Some(0) && out.stdout.trim() == "idle"
        });
        if !ready {
            panic!("the Slurm node never became idle\n{}", s.logs());
        }
        s
    }

    fn logs(&self) -> String {
        let mut all: Vec<String> = self.daemons.iter().map(Daemon::log).collect();
        for f in ["slurmctld.log", "slurmd.log"] {
            all.push(format!(
                "--- {f} ---\n{}",
                fs::read_to_string(self.dir.join("log").join(f)).unwrap_or_default()
            ));
        }
        all.join("\n")
    }

    /// A Slurm client as root (sinfo, squeue, scancel), told where the configuration is.
    fn root(&self, program: &Path, args: &[&str]) -> Out {
        let out = Command::new(program)
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
        Out {
            code: out.status.code(),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Points oci.conf (next to slurm.conf, where Slurm reads it for every step) at `runtime`.
    fn use_runtime(&self, runtime: &Path, state: &Path) {
        let conf = OCI_CONF
            .replace(OCI_CONF_RUNTIME, &runtime.display().to_string())
            .replace(OCI_CONF_STATE, &state.display().to_string());
        fs::write(self.dir.join("oci.conf"), conf).expect("write oci.conf");
    }

    fn stop(&mut self) {
        while let Some(mut d) = self.daemons.pop() {
            d.stop();
        }
    }
}

struct SlurmPrograms {
    munged: PathBuf,
    slurmctld: PathBuf,
    slurmd: PathBuf,
    srun: PathBuf,
    sinfo: PathBuf,
    squeue: PathBuf,
    scancel: PathBuf,
}

impl SlurmPrograms {
    fn find() -> Option<SlurmPrograms> {
        Some(SlurmPrograms {
            munged: required_tool("munged", "munge")?,
            slurmctld: required_tool("slurmctld", "slurm-wlm")?,
            slurmd: required_tool("slurmd", "slurm-wlm")?,
            srun: required_tool("srun", "slurm-wlm")?,
            sinfo: required_tool("sinfo", "slurm-wlm")?,
            squeue: required_tool("squeue", "slurm-wlm")?,
            scancel: required_tool("scancel", "slurm-wlm")?,
        })
    }
}

/// Processes of the runner whose command line is exactly `cmdline` (NUL-separated words).
fn runner_processes(t: &Nook, cmdline: &str) -> Vec<u32> {
    let uid = t.runner().uid;
    let want = format!("{}\0", cmdline.replace(' ', "\0"));
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let owner = fs::metadata(entry.path()).map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        if owner.ok() != Some(uid) {
            continue;
        }
        if fs::read(entry.path().join("cmdline")).ok().as_deref() == Some(want.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// Lines of `env` output that do not change from one job to the next.
fn stable_env(output: &str) -> Vec<String> {
    const PER_JOB: [&str; 5] = [
        "SLURM_JOBID=",
        "SLURM_JOB_ID=",
        "SLURM_SRUN_COMM_PORT=",
        "SLURM_STEP_LAUNCHER_PORT=",
        "SLURM_TASK_PID=",
    ];
    output
        .lines()
        .filter(|l| !PER_JOB.iter().any(|p| l.starts_with(p)))
        .map(str::to_string)
        .collect()
}

#[test]
fn slurm_runs_nook_as_it_runs_crun() {
    let Some(t) = Nook::new() else { return };
    if !nix::unistd::geteuid().is_root() {
        prerequisite_missing("slurmd runs as root: run this test as root");
        return;
    }
    let Some(programs) = SlurmPrograms::find() else {
        return;
    };
    let Some(crun) = required_tool("crun", "crun") else {
        return;
    };

    // The user's bundle, as `nook spec --rootless` writes it (crun spec --rootless is alike).
    let bundle = t.mkdir("bundle");
    t.image_copy("bundle/rootfs");
    t.cmd(&["spec", "--rootless", "--bundle", s(&bundle)])
        .run()
        .assert_ok();
    let config_path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&config_path).expect("read config.json"))
            .expect("parse config.json");
    config["process"]["terminal"] = serde_json::Value::Bool(false);
    fs::write(&config_path, config.to_string()).expect("write config.json");
    t.give(&config_path);

    let mut slurm = Slurm::start(&t, &programs);
    let conf = slurm.conf.display().to_string();
    let container = format!("--container={}", bundle.display());
    let srun = |args: &[&str]| -> Command {
        let mut all = vec![container.clone()];
        all.extend(args.iter().map(|s| s.to_string()));
        t.command_for(&programs.srun, &all, &[("SLURM_CONF".into(), conf.clone())])
    };
    let output = |mut cmd: Command| -> Out {
        let out = cmd.stdin(Stdio::null()).output().expect("run srun");
        Out {
            code: out.status.code(),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };

    let mut seen = Vec::new();
    for (runtime, label) in [(crun.as_path(), "crun"), (t.bin(), "nook")] {
        let state = t.mkdir(&format!("oci-state-{label}"));
        slurm.use_runtime(runtime, &state);

        // Output, exit status and the environment Slurm gives the step.
        let run = output(srun(&[
            "sh",
            "-c",
            "echo hello from $(id -u) in $(cat /proc/1/comm); env | sort; exit 5",
        ]));
        assert_eq!(
            run.code,
            Some(5),
            "{label}: srun --container\n{run}\n{}",
            slurm.logs()
        );
        let lines = run.lines();
        assert_eq!(
            lines.first().copied(),
            Some("hello from 0 in sh"),
            "{label}\n{run}"
        );
        let user = format!("SLURM_JOB_USER={}", t.runner().name);
        assert!(lines.contains(&user.as_str()), "{label}: no {user}\n{run}");
        assert!(lines.contains(&"SLURM_STEP_ID=0"), "{label}\n{run}");
        seen.push((label, stable_env(&run.stdout)));

        // scancel of a running step: the container's init ignores SIGTERM (pid 1 without a
        // handler), so Slurm's SIGKILL after KillWait has to reach it.
        let mut sleeper = srun(&["sleep", "300"]);
        let mut child = sleeper
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn srun");
        let started = wait_until(Duration::from_secs(30), || {
            !runner_processes(&t, "sleep 300").is_empty()
        });
        if !started {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{label}: the step's container never ran\n{}", slurm.logs());
        }
        let jobs = slurm.root(&programs.squeue, &["-h", "-o", "%i"]);
        let job = jobs
            .stdout
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        assert!(!job.is_empty(), "{label}: squeue lists no job\n{jobs}");
        slurm.root(&programs.scancel, &[&job]).assert_ok();
        let ended = wait_until(Duration::from_secs(40), || {
            child.try_wait().ok().flatten().is_some()
        });
        if !ended {
            let _ = child.kill();
        }
        let _ = child.wait();
        assert!(
            ended,
            "{label}: srun still running after scancel\n{}",
            slurm.logs()
        );
        let gone = wait_until(Duration::from_secs(10), || {
            runner_processes(&t, "sleep 300").is_empty()
        });
        assert!(
            gone,
            "{label}: the cancelled step's container is still running"
        );
        let user_state = state.join(&t.runner().name);
        let clean = wait_until(Duration::from_secs(10), || {
            common::entry_names(&user_state).is_empty()
        });
        assert!(
            clean,
            "{label}: RunTimeDelete left state: {:?}",
            common::entry_names(&user_state)
        );
    }
    let (_, under_crun) = &seen[0];
    let (_, under_nook) = &seen[1];
    assert_eq!(
        under_nook, under_crun,
        "the step's environment: nook (right), crun (left)"
    );

    slurm.stop();
    let left = processes_naming(&t.dir);
    assert!(
        left.is_empty(),
        "processes left after Slurm stopped:\n{}",
        left.join("\n")
    );
}
