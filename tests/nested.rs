//! nook inside a CI job's container: rootless podman (crun, vfs) as the outer engine, run by the
//! test user, with nook's binary and the image bind-mounted in, as a job that brings its own
//! runtime does. Each case runs nook's own checks and bubblewrap, side by side in the same outer
//! container: (1) podman's defaults, (2) `--security-opt unmask=/proc/*`, (3) `--device
//! /dev/fuse` with fuse-overlayfs, (4) a non-root user inside (`--user 1000`). The README's
//! table "Inside a CI job's container" states what these show.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::{debian_archive, required_tool, Nook, Out};

/// One outer container at a time: while it runs, its processes (the test user's, in a pid
/// namespace of their own, under conmon rather than nook) would look to the harness of a
/// parallel test like a container nook left behind.
static SERIAL: Mutex<()> = Mutex::new(());

/// The dynamically linked host programs an outer case binds in (bubblewrap, fuse-overlayfs),
/// and the library directories they load from: the outer image is busybox alone.
const HOST_LIBS: [&str; 2] = ["/lib/x86_64-linux-gnu", "/lib64"];

/// A rootless podman of the test user with its storage in the test directory, and the outer
/// image loaded from nook's own export of the busybox fixture.
struct Outer<'a> {
    t: &'a Nook,
    podman: PathBuf,
    bwrap: PathBuf,
    runroot: PathBuf,
}

impl<'a> Outer<'a> {
    fn new(t: &'a Nook) -> Option<Outer<'a>> {
        let podman = required_tool("podman", "podman")?;
        let bwrap = required_tool("bwrap", "bubblewrap")?;
        // podman wants its runroot path short.
        let runroot = PathBuf::from(format!("/tmp/nook-nested-{}", std::process::id()));
        let outer = Outer {
            t,
            podman,
            bwrap,
            runroot,
        };
        t.nook(&["import", "-q", t.image(), "busybox"]).assert_ok();
        let archive = t.dir.join("outer.tar");
        t.nook(&[
            "export",
            "--format",
            "oci",
            "busybox",
            "-o",
            archive.to_str().unwrap(),
        ])
        .assert_ok();
        outer
            .podman(&["load", "-q", "-i", archive.to_str().unwrap()])
            .assert_ok();
        Some(outer)
    }

    fn podman(&self, args: &[&str]) -> Out {
        let mut all: Vec<String> = [
            "--root",
            self.t.dir.join("podman").to_str().unwrap(),
            "--runroot",
            self.runroot.to_str().unwrap(),
            "--storage-driver",
            "vfs",
            "--cgroup-manager=cgroupfs",
            "--events-backend=file",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        all.extend(args.iter().map(|s| s.to_string()));
        let out = self
            .t
            .command_for(&self.podman, &all, &[])
            .output()
            .expect("run podman");
        Out {
            code: out.status.code(),
            signal: std::os::unix::process::ExitStatusExt::signal(&out.status),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `script` run by `sh` in a new outer container with `flags`, nook at /nook, the image at
    /// /img (read-only: nook must not need to write it), `work` at /work, bubblewrap and
    /// fuse-overlayfs with their libraries.
    fn run(&self, flags: &[&str], work: &Path, script: &str) -> Out {
        let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
        let mut bind = |from: &Path, to: &str| {
            args.extend(["-v".into(), format!("{}:{to}:ro", from.display())]);
        };
        bind(self.t.bin(), "/nook");
        bind(Path::new(self.t.image()), "/img");
        bind(&self.bwrap, "/usr/bin/bwrap");
        for lib in HOST_LIBS {
            bind(Path::new(lib), lib);
        }
        if let Some(fuse) = find_program("fuse-overlayfs") {
            bind(&fuse, "/usr/bin/fuse-overlayfs");
        }
        if let Some(debian) = debian_archive() {
            bind(&debian, "/debian.tar");
        }
        args.extend(["-v".into(), format!("{}:/work", work.display())]);
        args.extend(flags.iter().map(|f| f.to_string()));
        args.extend(["localhost/busybox:latest", "sh", "-c", script].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.podman(&args)
    }
}

impl Drop for Outer<'_> {
    fn drop(&mut self) {
        // podman leaves a pause process holding its user namespace.
        let pause = self.t.runtime.join("libpod/tmp/pause.pid");
        if let Some(pid) = fs::read_to_string(pause)
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        common::force_remove(&self.runroot);
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// nook's checks, then bubblewrap's, in one outer container: `key=value` lines.
const CHECKS: &str = r#"
export HOME=${HOME:-/tmp} PATH=/usr/bin:/bin
cd /tmp
/nook run --rm /img sh -c 'exit 7' 2>/tmp/run.err
echo "run=$?"
echo "warned_proc=$(grep -c 'refused a new /proc' /tmp/run.err)"
echo "uid=$(/nook run --rm -q /img id -u 2>/dev/null)"
echo "maps=$(/nook run --rm -q /img cat /proc/self/uid_map 2>/dev/null | wc -l)"
# Whose /proc: in a procfs of its own the shell's /proc/self is pid 1.
echo "proc=$(/nook run --rm -q /img sh -c 'read -r pid rest < /proc/self/stat; [ "$pid" = $$ ] && echo own || echo outer' 2>/dev/null)"
/nook run --rm -q -v /work:/data /img sh -c 'echo written > /data/by-nested' 2>/dev/null
echo "volume=$(cat /work/by-nested 2>/dev/null)"
/nook run -d -q --name d1 /img sleep 60 >/dev/null 2>&1
echo "exec=$(/nook exec d1 sh -c 'echo in-d1' 2>&1)"
echo "ps=$(/nook ps | grep -c ' running ')"
/nook rm -f d1 >/dev/null 2>&1
echo "rm=$? left=$(/nook ps | grep -c d1)"
if [ -e /dev/fuse ]; then
    /nook run --rm -q --backend fuse /img sh -c 'echo x > /tmp/f; exit 5' 2>/tmp/fuse.err
    echo "fuse=$?"
fi
/nook info >/tmp/info 2>&1
echo "info=$(grep -c '^warn outer' /tmp/info) $(grep -o '^warn outer [/a-zA-Z_]*' /tmp/info | tr '\n' ,)"
bwrap --unshare-user --unshare-pid --ro-bind /img / --proc /proc --dev /dev sh -c 'exit 7' 2>/tmp/bwrap.err
echo "bwrap=$? $(head -n 1 /tmp/bwrap.err)"
"#;

fn results(out: &Out) -> BTreeMap<String, String> {
    out.stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The checks every case passes: the command's exit status, a volume, `exec` into a detached
/// container, `ps` and `rm`, and the image untouched (the harness checks it when `t` drops).
fn assert_nook_works(r: &BTreeMap<String, String>, out: &Out) {
    let get = |k: &str| r.get(k).map(String::as_str).unwrap_or("<missing>");
    assert_eq!(get("run"), "7", "{out}");
    assert_eq!(get("uid"), "0", "{out}");
    assert_eq!(get("volume"), "written", "{out}");
    assert_eq!(get("exec"), "in-d1", "{out}");
    assert_eq!(get("ps"), "1", "{out}");
    assert_eq!(get("rm"), "0 left=0", "{out}");
}

fn outer_case(flags: &[&str]) -> Option<(BTreeMap<String, String>, Out)> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Nook::new()?;
    let outer = Outer::new(&t)?;
    let work = t.mkdir("work");
    // The outer container's user 1000 is one of the test user's subordinate ids.
    fs::set_permissions(&work, fs::Permissions::from_mode(0o777)).unwrap();
    let out = outer.run(flags, &work, CHECKS);
    out.assert_ok();
    drop(outer);
    Some((results(&out), out))
}

#[test]
fn default_rootless_podman_container() {
    let Some((r, out)) = outer_case(&["--network", "none"]) else {
        return;
    };
    assert_nook_works(&r, &out);
    // Its ids: the whole range the outer container holds (0 and podman's 65536 subordinates).
    assert_eq!(r["maps"], "2", "{out}");
    // podman masks /proc paths, so the kernel refuses a new procfs: nook binds the outer one
    // and says so; bubblewrap stops there.
    assert_eq!(r["warned_proc"], "1", "{out}");
    assert_eq!(r["proc"], "outer", "{out}");
    assert!(r["info"].contains("outer /proc"), "{out}");
    assert!(r["info"].contains("outer /dev/fuse"), "{out}");
    assert!(r["info"].contains("outer seccomp"), "{out}");
    assert!(r["bwrap"].starts_with("1 "), "{out}");
    assert!(r["bwrap"].contains("proc"), "{out}");
}

#[test]
fn unmasked_proc_gives_containers_their_own() {
    let Some((r, out)) = outer_case(&["--network", "none", "--security-opt", "unmask=/proc/*"])
    else {
        return;
    };
    assert_nook_works(&r, &out);
    assert_eq!(r["warned_proc"], "0", "{out}");
    assert_eq!(r["proc"], "own", "{out}");
    assert!(!r["info"].contains("outer /proc"), "{out}");
    assert_eq!(r["bwrap"].trim(), "7", "{out}");
}

#[test]
fn dev_fuse_runs_the_fuse_backend() {
    if find_program("fuse-overlayfs").is_none() {
        common::prerequisite_missing(
            "fuse-overlayfs is not installed (apt-get install fuse-overlayfs)",
        );
        return;
    }
    let Some((r, out)) = outer_case(&["--network", "none", "--device", "/dev/fuse"]) else {
        return;
    };
    assert_nook_works(&r, &out);
    assert_eq!(r.get("fuse").map(String::as_str), Some("5"), "{out}");
    assert!(!r["info"].contains("outer /dev/fuse"), "{out}");
    assert!(r["bwrap"].starts_with("1 "), "{out}");
}

#[test]
fn non_root_user_in_the_outer_container() {
    // A job's user has a home it may write, as CI runners set one.
    let flags = [
        "--network",
        "none",
        "--user",
        "1000:1000",
        "-e",
        "HOME=/tmp",
    ];
    let Some((r, out)) = outer_case(&flags) else {
        return;
    };
    assert_nook_works(&r, &out);
    // Only its own id, no newuidmap in the outer image: one line, root emulated.
    assert_eq!(r["maps"], "1", "{out}");
    assert_eq!(r["proc"], "outer", "{out}");
    assert!(r["info"].contains("outer newuidmap"), "{out}");
    assert!(r["bwrap"].starts_with("1 "), "{out}");
}

/// apt in the Debian image, with the ids the outer container has: the whole range as its
/// root (real owners: `_apt` stays 42), emulated as its user 1000 (one id: everything is 0).
#[test]
fn apt_installs_with_the_outer_containers_ids() {
    let Some(_) = debian_archive() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(t) = Nook::new() else { return };
    let Some(outer) = Outer::new(&t) else { return };
    let work = t.mkdir("work");
    fs::set_permissions(&work, fs::Permissions::from_mode(0o777)).unwrap();
    let script = r#"
export HOME=${HOME:-/tmp}
/nook import -q /debian.tar debian >/dev/null || exit 1
/nook run --rm -q debian sh -c 'apt-get update -qq && apt-get install -y -qq hello >/dev/null 2>&1 && hello && stat -c %u /var/cache/apt/archives/partial'
"#;
    for (flags, owner) in [
        (&[][..], "42"),
        (&["--user", "1000:1000", "-e", "HOME=/tmp"][..], "0"),
    ] {
        let mut all = vec!["--network", "host"];
        all.extend_from_slice(flags);
        let out = outer.run(&all, &work, script);
        out.assert_ok();
        assert_eq!(out.lines(), ["Hello, world!", owner], "{flags:?}\n{out}");
    }
}

/// A profile like Docker's default for a container without CAP_SYS_ADMIN, as far as user
/// namespaces go: `clone` and `unshare` with CLONE_NEWUSER refused, `clone3` unknown.
const NO_USERNS_PROFILE: &str = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [
    {"names": ["clone", "unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
     "args": [{"index": 0, "value": 268435456, "valueTwo": 268435456, "op": "SCMP_CMP_MASKED_EQ"}]},
    {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
  ]
}"#;

#[test]
fn an_outer_seccomp_profile_refusing_user_namespaces_is_named_with_the_flag() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(t) = Nook::new() else { return };
    let Some(outer) = Outer::new(&t) else { return };
    let work = t.mkdir("work");
    let profile = t.write_file(t.dir.join("no-userns.json"), NO_USERNS_PROFILE);
    let seccomp = format!("seccomp={}", profile.display());
    let script = r#"
/nook run --rm /img true
echo "run=$?"
echo "containers=$(ls "$HOME/.local/share/nook/containers" 2>/dev/null | wc -l)"
bwrap --unshare-user --unshare-pid --ro-bind /img / --proc /proc --dev /dev true 2>/dev/null
echo "bwrap=$?"
"#;
    let out = outer.run(
        &["--network", "none", "--security-opt", &seccomp],
        &work,
        script,
    );
    out.assert_ok();
    let r = results(&out);
    assert_eq!(r["run"], "125", "{out}");
    assert_eq!(r["containers"], "0", "{out}");
    assert_ne!(r["bwrap"], "0", "{out}");
    assert!(
        out.stderr
            .contains("seccomp profile of the container nook runs in refuses new user namespaces"),
        "{out}"
    );
    assert!(
        out.stderr.contains("--security-opt seccomp=unconfined"),
        "{out}"
    );
}

/// Root of an outer container without CAP_SETUID/CAP_SETGID can map its own ids only: nook
/// runs with those, root emulated, and names the flags that give the rest back.
#[test]
fn outer_root_without_setuid_maps_its_own_ids_and_says_which_flags_give_more() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(t) = Nook::new() else { return };
    let Some(outer) = Outer::new(&t) else { return };
    let work = t.mkdir("work");
    let script = "/nook run --rm /img sh -c 'cat /proc/self/uid_map; exit 4'; echo \"run=$?\"";
    let flags = [
        "--network",
        "none",
        "--cap-drop",
        "SETUID",
        "--cap-drop",
        "SETGID",
    ];
    let out = outer.run(&flags, &work, script);
    out.assert_ok();
    assert_eq!(results(&out)["run"], "4", "{out}");
    assert_eq!(
        out.stdout
            .lines()
            .next()
            .map(str::split_whitespace)
            .map(|f| f.collect::<Vec<_>>()),
        Some(vec!["0", "0", "1"]),
        "{out}"
    );
    assert!(
        out.stderr.contains("--cap-add SETUID --cap-add SETGID"),
        "{out}"
    );
    assert!(out.stderr.contains("root is emulated"), "{out}");
}
