//! Shared harness for nook's integration tests.
//!
//! Every test starts with `let Some(t) = Nook::new() else { return };` and gets:
//! - the built binary, copied where an unprivileged user can run it;
//! - the busybox image: a private copy, made on first use, of the fixture that
//!   `scripts/mkrootfs-busybox.sh` builds once (cached under /var/tmp, owned by the user nook
//!   runs as, and checked against the digest recorded when it was built);
//! - its own directory under /tmp with a fresh `NOOK_STORAGE`, `XDG_RUNTIME_DIR` and `HOME`.
//!
//! When the test process is root, nook runs as the unprivileged test user
//! (`NOOK_TEST_USER`, default `nooktest`): a run as root never counts as a rootless pass.
//! If that user is missing the test is skipped with a reason, or fails under `CI=true`.
//!
//! Every nook invocation checks that the caller's mount table is the same after it as
//! before it. Dropping the `Nook` checks that no process of the test is left, that the
//! test's image was not written (a failure of that test, naming the paths), and removes the
//! test's directories. No test ever sees the cached fixture itself, so one test that writes
//! its image cannot fail the tests after it.

// Each test binary uses only part of the harness.
#![allow(dead_code)]

pub mod exe_grabber;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};

/// How long one nook invocation may take before the harness kills it and fails the test.
pub const NOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long leftover processes get to go away after a test before they count as leaked.
const LEFTOVER_GRACE: Duration = Duration::from_secs(3);
/// PATH given to nook (newuidmap lives in /usr/bin).
const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// ---------------------------------------------------------------------------
// Process-wide setup: the user nook runs as, the binary, the fixture.
// ---------------------------------------------------------------------------

/// Who nook runs as.
#[derive(Clone, Debug)]
pub struct Runner {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    /// True when the test process is root and switches to `uid`/`gid` for nook.
    pub switch: bool,
    /// The runner's subordinate uid ranges (start, count) from /etc/subuid.
    pub subuids: Vec<(u32, u32)>,
}

impl Runner {
    /// Whether a host uid is the runner's own or one of its subordinate ids.
    pub fn owns_id(&self, uid: u32) -> bool {
        uid == self.uid
            || self
                .subuids
                .iter()
                .any(|&(start, count)| uid >= start && uid - start < count)
    }
}

/// `user`'s ranges in a subordinate id file (`name:start:count`, by name or uid).
fn subid_ranges(file: &str, name: &str, uid: u32) -> Vec<(u32, u32)> {
    let text = fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            (who == name || who == uid.to_string())
                .then(|| Some((start.parse().ok()?, count.parse().ok()?)))
                .flatten()
        })
        .collect()
}

struct Setup {
    runner: Runner,
    bin: PathBuf,
    /// The cached busybox tree that every test's image is copied from.
    fixture: PathBuf,
}

/// Why a test cannot run here. `hard` skips fail under `CI=true`.
#[derive(Clone, Debug)]
struct Skip {
    reason: String,
    hard: bool,
}

#[derive(Clone, Copy)]
enum TestUser {
    /// `NOOK_TEST_USER`: has a subordinate id range.
    Default,
    /// `NOOK_TEST_USER_NOSUB`: has no entry in /etc/subuid or /etc/subgid.
    WithoutSubids,
}

fn setup(user: TestUser) -> Result<&'static Setup, Skip> {
    static DEFAULT: OnceLock<Result<Setup, Skip>> = OnceLock::new();
    static NOSUB: OnceLock<Result<Setup, Skip>> = OnceLock::new();
    let cell = match user {
        TestUser::Default => &DEFAULT,
        TestUser::WithoutSubids => &NOSUB,
    };
    cell.get_or_init(|| {
        let runner = resolve_runner(user)?;
        let bin = installed_binary().map_err(|reason| Skip { reason, hard: true })?;
        let fixture = busybox_fixture(&runner).map_err(|reason| Skip { reason, hard: true })?;
        Ok(Setup {
            runner,
            bin,
            fixture,
        })
    })
    .as_ref()
    .map_err(Clone::clone)
}

fn resolve_runner(user: TestUser) -> Result<Runner, Skip> {
    let (var, default) = match user {
        TestUser::Default => ("NOOK_TEST_USER", "nooktest"),
        TestUser::WithoutSubids => ("NOOK_TEST_USER_NOSUB", "nooktest-nosub"),
    };
    if !nix::unistd::geteuid().is_root() {
        if let TestUser::WithoutSubids = user {
            return Err(Skip {
                reason: "not root: cannot run nook as a user without subordinate ids".into(),
                hard: false,
            });
        }
        let uid = nix::unistd::getuid();
        let name = User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string());
        return Ok(Runner {
            uid: uid.as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            subuids: subid_ranges("/etc/subuid", &name, uid.as_raw()),
            name,
            switch: false,
        });
    }
    let name = std::env::var(var).unwrap_or_else(|_| default.to_string());
    match User::from_name(&name) {
        Ok(Some(u)) if u.uid.is_root() => Err(Skip {
            reason: format!("{var}={name} is root; nook must be tested as an unprivileged user"),
            hard: true,
        }),
        Ok(Some(u)) => Ok(Runner {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            subuids: subid_ranges("/etc/subuid", &name, u.uid.as_raw()),
            name,
            switch: true,
        }),
        _ => Err(Skip {
            reason: format!(
                "running as root, but the unprivileged test user `{name}` does not exist \
                 (scripts/test.sh creates it; or set {var}); a run as root never counts"
            ),
            hard: true,
        }),
    }
}

fn hash_bytes(parts: &[&[u8]]) -> u64 {
    let mut h = DefaultHasher::new();
    for p in parts {
        h.write(p);
        h.write_u8(0xff);
    }
    h.finish()
}

/// A directory of ours under a world-writable parent, created if missing.
fn owned_dir(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<(), String> {
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("create {}: {e}", path.display())),
    }
    let meta = fs::symlink_metadata(path).map_err(|e| format!("stat {}: {e}", path.display()))?;
    let want_uid = owner.map_or_else(|| nix::unistd::geteuid().as_raw(), |(u, _)| u);
    if !meta.is_dir() || (meta.uid() != want_uid && meta.uid() != nix::unistd::geteuid().as_raw()) {
        return Err(format!(
            "{} exists but is not a directory owned by uid {want_uid}; remove it",
            path.display()
        ));
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", path.display()))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

/// Removes entries of `dir` (other than `keep`) whose mtime is older than a day.
fn prune_old(dir: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let day = Duration::from_secs(24 * 3600);
    for entry in entries.flatten() {
        let path = entry.path();
        let kept_record = keep.file_name().is_some_and(|k| {
            entry.file_name().to_string_lossy() == format!("{}.sha256", k.to_string_lossy())
        });
        if path == keep || kept_record || entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > day);
        if old {
            force_remove(&path);
        }
    }
}

/// Copies the built binary into a world-accessible directory under /tmp: the checkout
/// may sit where the test user cannot reach (e.g. under /root).
fn installed_binary() -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_BIN_EXE_nook"));
    let meta = fs::metadata(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let key = hash_bytes(&[
        src.as_os_str().as_encoded_bytes(),
        &meta.dev().to_le_bytes(),
        &meta.ino().to_le_bytes(),
        &meta.len().to_le_bytes(),
        &meta.mtime().to_le_bytes(),
        &meta.mtime_nsec().to_le_bytes(),
    ]);
    let base = PathBuf::from(format!("/tmp/nook-test-bin-{}", nix::unistd::geteuid()));
    owned_dir(&base, 0o755, None)?;
    let dir = base.join(format!("{key:016x}"));
    let dest = dir.join("nook");
    if dest.exists() {
        return Ok(dest);
    }
    let tmp = base.join(format!(".tmp-{}-{key:016x}", std::process::id()));
    force_remove(&tmp);
    fs::create_dir(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    fs::copy(src, tmp.join("nook")).map_err(|e| format!("copy {}: {e}", src.display()))?;
    fs::set_permissions(tmp.join("nook"), fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    if fs::rename(&tmp, &dir).is_err() {
        // Another test process installed the same build first.
        force_remove(&tmp);
    }
    if !dest.exists() {
        return Err(format!("could not install {}", dest.display()));
    }
    prune_old(&base, &dir);
    Ok(dest)
}

/// The busybox rootfs, built once per script version and owned by the runner.
fn busybox_fixture(runner: &Runner) -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mkrootfs-busybox.sh");
    let text = fs::read(&script).map_err(|e| format!("{}: {e}", script.display()))?;
    let busybox = fs::metadata("/bin/busybox")
        .map(|m| format!("{} {} {}", m.len(), m.mtime(), m.mtime_nsec()))
        .unwrap_or_default();
    let key = hash_bytes(&[&text, busybox.as_bytes()]);
    let owner = runner.switch.then_some((runner.uid, runner.gid));

    let base = PathBuf::from(format!("/var/tmp/nook-test-fixtures-{}", runner.uid));
    owned_dir(&base, 0o755, owner)?;
    let lock_path = base.join(".lock");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("open {}: {e}", lock_path.display()))?;
    if let Some((uid, gid)) = owner {
        let _ = std::os::unix::fs::lchown(&lock_path, Some(uid), Some(gid));
    }
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("lock {}: {e}", lock_path.display()))?;

    let dest = base.join(format!("busybox-{key:016x}"));
    let record = base.join(format!("busybox-{key:016x}.sha256"));
    if dest.is_dir() {
        let recorded = fs::read_to_string(&record).unwrap_or_default();
        let now = tree_digest(&dest);
        if recorded.trim() == now {
            return Ok(dest);
        }
        // A cache that differs from what was built (a test or a person wrote it, or a run was
        // killed half-way) would fail tests that have nothing to do with it: build it anew.
        let _ = writeln!(
            std::io::stderr(),
            "test harness: the cached fixture {} differs from the digest recorded when it was \
             built ({}); building it again",
            dest.display(),
            record.display()
        );
        force_remove(&dest);
        let _ = fs::remove_file(&record);
    }
    let build = base.join(format!(".build-{}", std::process::id()));
    force_remove(&build);
    let out = Command::new("bash")
        .arg(&script)
        .arg(&build)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", script.display()))?;
    if !out.status.success() {
        force_remove(&build);
        return Err(format!(
            "{} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if let Some((uid, gid)) = owner {
        chown_tree(&build, uid, gid)?;
    }
    fs::rename(&build, &dest).map_err(|e| format!("rename to {}: {e}", dest.display()))?;
    // Recorded after the rename, which changes the top directory's ctime.
    let tmp_record = base.join(format!(".record-{}", std::process::id()));
    fs::write(&tmp_record, tree_digest(&dest))
        .and_then(|()| fs::rename(&tmp_record, &record))
        .map_err(|e| format!("write {}: {e}", record.display()))?;
    prune_old(&base, &dest);
    Ok(dest)
}

/// sha256 of a tree's listing with contents: any change to a name, owner, mode, content or
/// timestamp changes it.
fn tree_digest(dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for line in tree_listing(dir) {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A test cannot run here for `reason`: a failure under `CI=true`, where scripts/test.sh
/// provides every prerequisite, else a skip said past the output capture.
pub fn prerequisite_missing(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing under CI=true: {reason}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {}: {reason}",
        thread::current().name().unwrap_or("test")
    );
}

/// A program of the host (an engine, a peer runtime), or `None` after saying it is missing (a
/// failure under `CI=true`, where scripts/test.sh installs `package`).
pub fn required_tool(program: &str, package: &str) -> Option<PathBuf> {
    let found = ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.exists());
    if found.is_none() {
        prerequisite_missing(&format!(
            "{program} is not installed (apt-get install {package})"
        ));
    }
    found
}

/// The Debian bookworm archive that `scripts/mkimage-debian.sh` builds (scripts/test.sh runs it
/// as root; `NOOK_TEST_DEBIAN_IMAGE` names another), checked once per test process against the
/// sha256 recorded beside it. `None` (after saying why) when it is missing or differs; under
/// `CI=true` that fails the test instead.
pub fn debian_archive() -> Option<PathBuf> {
    static CHECKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let path = std::env::var_os("NOOK_TEST_DEBIAN_IMAGE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/nook-test-fixtures/debian-bookworm.tar"));
        let record = PathBuf::from(format!("{}.sha256", path.display()));
        let fix = "run scripts/test.sh as root, which builds it with scripts/mkimage-debian.sh";
        if !path.exists() {
            return Err(format!("no Debian image at {}: {fix}", path.display()));
        }
        let recorded =
            fs::read_to_string(&record).map_err(|e| format!("{}: {e}: {fix}", record.display()))?;
        let out = Command::new("sha256sum")
            .arg(&path)
            .output()
            .map_err(|e| format!("sha256sum {}: {e}", path.display()))?;
        let actual = String::from_utf8_lossy(&out.stdout);
        let actual = actual.split_whitespace().next().unwrap_or_default();
        if actual != recorded.trim() {
            return Err(format!(
                "{} differs from the sha256 recorded in {} when it was built: {fix}",
                path.display(),
                record.display()
            ));
        }
        Ok(path)
    });
    match checked {
        Ok(path) => Some(path.clone()),
        Err(reason) => {
            prerequisite_missing(reason);
            None
        }
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(|e| format!("chown {}: {e}", path.display()))?;
    let meta = fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(|e| e.to_string())? {
            chown_tree(&entry.map_err(|e| e.to_string())?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Removes a tree, making directories of ours writable on the way (overlay's
/// `work/work` is created with mode 000). Best effort.
pub fn force_remove(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
        if let Ok(entries) = fs::read_dir(path) {
            for entry in entries.flatten() {
                force_remove(&entry.path());
            }
        }
        let _ = fs::remove_dir(path);
    } else {
        let _ = fs::remove_file(path);
    }
}

// ---------------------------------------------------------------------------
// The old-kernel simulation.
// ---------------------------------------------------------------------------

/// A kernel older than the test machine's, simulated by a seccomp filter the harness installs
/// in the child before it execs nook (or a tool that runs nook): the system calls that kernel
/// lacks answer `ENOSYS`, as they would there, so nook's own fallbacks are what runs.
///
/// The filter is installed while the child is still root (CAP_SYS_ADMIN lets it do without
/// no_new_privs, which would disable the setuid newuidmap/newgidmap), then the child becomes the
/// test user and execs. The whole suite runs in a mode with `NOOK_TEST_OLD_KERNEL`; a test can
/// ask for one invocation with [`NookCmd::on_kernel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OldKernel {
    /// `NOOK_TEST_OLD_KERNEL=openat2` (or `1`): only `openat2` is missing (Linux 5.5 and older).
    NoOpenat2,
    /// `NOOK_TEST_OLD_KERNEL=4.18`: the system calls of RHEL 8's kernel. Every call added after
    /// 4.18 (on x86_64 and aarch64 the numbers from 424 on: pidfd_*, clone3, close_range,
    /// openat2, mount_setattr, the new mount API, ...) is missing.
    Calls4_18,
    /// `Calls4_18`, and overlayfs cannot be mounted in a user namespace either (before 5.11 the
    /// kernel answers `EPERM`), so the suite's overlay tests cannot run in it: for single
    /// invocations ([`NookCmd::on_kernel`]) that show what nook chooses instead.
    Linux4_18,
}

/// The suite's mode, from `NOOK_TEST_OLD_KERNEL` (unset, empty or `0`: the real kernel).
pub fn old_kernel() -> Option<OldKernel> {
    match std::env::var("NOOK_TEST_OLD_KERNEL").as_deref() {
        Err(_) | Ok("") | Ok("0") => None,
        Ok("1") | Ok("openat2") => Some(OldKernel::NoOpenat2),
        Ok("4.18") => Some(OldKernel::Calls4_18),
        Ok(other) => panic!("NOOK_TEST_OLD_KERNEL={other:?}: use openat2 (or 1), 4.18, or 0"),
    }
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
/// The first system call number after Linux 4.18's (pidfd_send_signal, 5.1), on both arches.
const FIRST_AFTER_4_18: u32 = 424;

/// Offsets in `struct seccomp_data`: nr, arch, then args[] (u64 each) from byte 16; little endian.
const NR: u32 = 0;
const ARCH: u32 = 4;
const fn arg_low(i: u32) -> u32 {
    16 + 8 * i
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The BPF program of `kernel`. Built in the parent: the child only hands it to the kernel.
fn old_kernel_filter(kernel: OldKernel) -> Vec<libc::sock_filter> {
    const LD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let allow = stmt(RET, libc::SECCOMP_RET_ALLOW);
    let fail = |errno: i32| stmt(RET, libc::SECCOMP_RET_ERRNO | errno as u32);
    let mut p = vec![
        stmt(LD, ARCH),
        jump(JEQ, AUDIT_ARCH, 1, 0),
        allow,
        stmt(LD, NR),
    ];
    match kernel {
        OldKernel::NoOpenat2 => {
            p.push(jump(JEQ, libc::SYS_openat2 as u32, 0, 1));
            p.push(fail(libc::ENOSYS));
        }
        OldKernel::Calls4_18 | OldKernel::Linux4_18 => {
            p.push(jump(JGE, FIRST_AFTER_4_18, 0, 1));
            p.push(fail(libc::ENOSYS));
        }
    }
    if kernel == OldKernel::Linux4_18 {
        // An overlay mount passes its layers as data and no flags; every other mount nook makes
        // has flags, or no data (a bare proc). Those alone are refused.
        p.extend([
            jump(JEQ, libc::SYS_mount as u32, 0, 7),
            stmt(LD, arg_low(3)),
            jump(JEQ, 0, 0, 5),
            stmt(LD, arg_low(4)),
            jump(JEQ, 0, 0, 2),
            stmt(LD, arg_low(4) + 4),
            jump(JEQ, 0, 1, 0),
            fail(libc::EPERM),
        ]);
    }
    p.push(allow);
    p
}

/// Makes `cmd`'s child install the filter of `kernel` as root, then become `uid`/`gid`.
fn switch_user_on(cmd: &mut Command, kernel: OldKernel, uid: u32, gid: u32) {
    let program = old_kernel_filter(kernel);
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe system
    // calls (seccomp, setgroups, setgid, setuid) on memory prepared before the fork; it
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let fprog = libc::sock_fprog {
                len: program.len() as u16,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            let installed = libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const libc::sock_fprog,
            );
            if installed != 0
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

// ---------------------------------------------------------------------------
// The per-test context.
// ---------------------------------------------------------------------------

/// One test's view of nook: its own storage, runtime dir and home, the fixture, the runner.
pub struct Nook {
    setup: &'static Setup,
    /// The test's directory under /tmp; everything the test makes lives here.
    pub dir: PathBuf,
    /// `$NOOK_STORAGE` (not created beforehand: nook makes it on first use).
    pub storage: PathBuf,
    /// `$XDG_RUNTIME_DIR` (mode 0700, owned by the runner).
    pub runtime: PathBuf,
    /// `$HOME` of the runner for this test.
    pub home: PathBuf,
    /// The test's busybox image and its listing when it was made, once `image()` made it.
    private_image: OnceLock<(String, Vec<String>)>,
}

impl Nook {
    /// The context for a test, or `None` (after saying why) when the test must be skipped.
    /// Under `CI=true` a missing prerequisite fails the test instead.
    pub fn new() -> Option<Nook> {
        Self::for_user(TestUser::Default)
    }

    /// Like `new`, but nook runs as `NOOK_TEST_USER_NOSUB`, a user without subordinate ids.
    /// Only possible when the test process is root.
    pub fn new_without_subids() -> Option<Nook> {
        Self::for_user(TestUser::WithoutSubids)
    }

    fn for_user(user: TestUser) -> Option<Nook> {
        let setup = match setup(user) {
            Ok(s) => s,
            Err(skip) => {
                if skip.hard && std::env::var("CI").as_deref() == Ok("true") {
                    panic!("prerequisite missing under CI=true: {}", skip.reason);
                }
                // Written past the test output capture, so a skip is always visible.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {}: {}",
                    thread::current().name().unwrap_or("test"),
                    skip.reason
                );
                return None;
            }
        };
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!(
            "/tmp/nook-test-{}-{n}-{}",
            std::process::id(),
            test_name()
        ));
        force_remove(&dir);
        let t = Nook {
            setup,
            storage: dir.join("storage"),
            runtime: dir.join("run"),
            home: dir.join("home"),
            dir,
            private_image: OnceLock::new(),
        };
        t.make_dir(&t.dir, 0o755);
        t.make_dir(&t.runtime, 0o700);
        t.make_dir(&t.home, 0o755);
        Some(t)
    }

    /// Who nook runs as.
    pub fn runner(&self) -> &Runner {
        &self.setup.runner
    }

    /// Whether the runner has a subordinate uid range, so that ids other than its own
    /// (e.g. `-u 1000`) exist in the container. Says why when not (a failure under `CI=true`,
    /// where scripts/test.sh gives the test user a range).
    pub fn has_subids(&self) -> bool {
        if !self.setup.runner.subuids.is_empty() {
            return true;
        }
        let reason = format!(
            "{} has no subordinate uid range in /etc/subuid",
            self.setup.runner.name
        );
        prerequisite_missing(&reason);
        false
    }

    /// The busybox image, `<test dir>/busybox`: nook must never write it, and dropping the
    /// `Nook` fails the test with every path that changed. A test that lets nook write its
    /// root (an OCI bundle whose mounts need mount points) uses [`Nook::image_copy`].
    pub fn image(&self) -> &str {
        let (path, _) = self.private_image.get_or_init(|| {
            let path = self.image_copy("busybox");
            let listing = tree_listing(Path::new(&path));
            (path, listing)
        });
        path
    }

    /// A private copy of the busybox image at `<test dir>/<name>`, owned by the runner,
    /// for tests that add files to the image or let nook write it.
    pub fn image_copy(&self, name: &str) -> String {
        let dest = self.dir.join(name);
        let status = Command::new("cp")
            .arg("-a")
            .arg(&self.setup.fixture)
            .arg(&dest)
            .status()
            .expect("run cp");
        assert!(status.success(), "cp -a of the fixture failed");
        dest.to_str().expect("UTF-8 path").to_string()
    }

    /// A directory created by the test (as the runner) at `<test dir>/<rel>`.
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let path = self.dir.join(rel);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        self.give(&path);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    /// Writes a file (as the runner) at `path`, which may be absolute or relative to the test dir.
    pub fn write_file(&self, path: impl AsRef<Path>, contents: &str) -> PathBuf {
        let path = self.dir.join(path);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        self.give(&path);
        path
    }

    /// Makes `path` belong to the runner (when nook runs as another user).
    pub fn give(&self, path: &Path) {
        if self.setup.runner.switch {
            chown_tree(path, self.setup.runner.uid, self.setup.runner.gid)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Runs `f` with this thread's filesystem ids set to the runner's, so that pipes and
    /// ptys it creates belong to the runner, as they would when a user runs nook from a
    /// shell (a pipe made by root cannot be reopened through /dev/stdout by the user).
    fn as_runner<T>(&self, f: impl FnOnce() -> T) -> T {
        let r = &self.setup.runner;
        if !r.switch {
            return f();
        }
        // setfsuid/setfsgid affect only the calling thread; each test runs in its own.
        nix::unistd::setfsgid(nix::unistd::Gid::from_raw(r.gid));
        nix::unistd::setfsuid(nix::unistd::Uid::from_raw(r.uid));
        let result = f();
        nix::unistd::setfsuid(nix::unistd::Uid::from_raw(0));
        nix::unistd::setfsgid(nix::unistd::Gid::from_raw(0));
        result
    }

    /// A close-on-exec pipe (read end, write end) owned by the runner.
    fn pipe(&self) -> (OwnedFd, OwnedFd) {
        self.as_runner(|| nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC))
            .expect("pipe2")
    }

    fn make_dir(&self, path: &Path, mode: u32) {
        fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
        self.give(path);
    }

    /// A nook invocation to configure before running it.
    pub fn cmd(&self, args: &[&str]) -> NookCmd<'_> {
        NookCmd {
            nook: self,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            stdin: None,
            timeout: NOOK_TIMEOUT,
            inherit_fd: None,
            bin: None,
            kernel: None,
        }
    }

    /// Runs `nook ARGS...` as the runner, stdin /dev/null, and waits for it.
    pub fn nook(&self, args: &[&str]) -> Out {
        self.cmd(args).run()
    }

    /// `nook run --rm IMAGE -- sh -c SCRIPT`.
    pub fn sh(&self, script: &str) -> Out {
        self.nook(&["run", "--rm", self.image(), "--", "sh", "-c", script])
    }

    /// The installed nook binary the tests run.
    pub fn bin(&self) -> &Path {
        &self.setup.bin
    }

    /// A copy of the built binary in a directory of the test, both owned by the runner (0755),
    /// as when a user installs nook in ~/bin: the container's root is that user, so only nook
    /// itself keeps its binary out of the container's reach. Run it with [`NookCmd::bin`] or
    /// [`Nook::command_for`].
    pub fn user_owned_binary(&self) -> PathBuf {
        let dest = self.mkdir("user-bin").join("nook");
        fs::copy(&self.setup.bin, &dest).unwrap_or_else(|e| {
            panic!(
                "copy {} to {}: {e}",
                self.setup.bin.display(),
                dest.display()
            )
        });
        self.give(&dest);
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).expect("chmod");
        dest
    }

    /// `program ARGS...` as the runner, with the test's environment (HOME, XDG_RUNTIME_DIR,
    /// NOOK_STORAGE, PATH) and working directory: for the tools driven beside nook (crun,
    /// podman) and for nook runs whose output a detached container inherits. With
    /// `NOOK_TEST_OLD_KERNEL` set, on that simulated kernel (see [`OldKernel`]).
    pub fn command_for(
        &self,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Command {
        self.command_with(old_kernel(), program, args, env)
    }

    /// Like [`Nook::command_for`], on a simulated old kernel whatever `NOOK_TEST_OLD_KERNEL` says.
    pub fn command_on(
        &self,
        kernel: OldKernel,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Command {
        self.command_with(Some(kernel), program, args, env)
    }

    fn command_with(
        &self,
        kernel: Option<OldKernel>,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Command {
        let r = &self.setup.runner;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("HOME", &self.home)
            .env("PATH", HOST_PATH)
            .env("USER", &r.name)
            .env("NOOK_STORAGE", &self.storage)
            .env("XDG_RUNTIME_DIR", &self.runtime)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir);
        match (kernel, r.switch) {
            (Some(kernel), true) => switch_user_on(&mut cmd, kernel, r.uid, r.gid),
            (Some(kernel), false) => panic!(
                "the old-kernel simulation ({kernel:?}) needs the tests to run as root: the \
                 filter must be installed without no_new_privs, or newuidmap stops working"
            ),
            (None, true) => {
                cmd.uid(r.uid).gid(r.gid);
            }
            (None, false) => {}
        }
        cmd
    }

    /// Runs nook with a pty of `rows` x `cols` as its stdin, stdout, stderr and
    /// controlling terminal. Everything nook writes to the terminal is in `stdout`.
    pub fn run_in_pty(&self, args: &[&str], rows: u16, cols: u16) -> Out {
        let winsize = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = self
            .as_runner(|| nix::pty::openpty(&winsize, None))
            .expect("openpty");
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut cmd = self.command_for(&self.setup.bin, &args, &[]);
        let clone = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup pty"));
        cmd.stdin(clone(&pty.slave))
            .stdout(clone(&pty.slave))
            .stderr(clone(&pty.slave));
        // SAFETY: setsid and ioctl are async-signal-safe; nothing is allocated.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mounts_before = mount_table();
        let child = cmd.spawn().expect("spawn nook");
        drop(cmd);
        drop(pty.slave);
        let captured = Captured::new(1);
        let mut master = fs::File::from(pty.master);
        {
            let captured = Arc::clone(&captured);
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                // Reading the master fails with EIO once every copy of the slave is closed.
                while let Ok(n) = master.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    captured.append(Stream::Stdout, &buf[..n]);
                }
                captured.close();
            });
        }
        Running {
            child: Some(child),
            captured,
            mounts_before,
            timeout: NOOK_TIMEOUT,
            label: format!("{args:?} in a pty"),
        }
        .wait()
    }

    /// Names of the directories under `$NOOK_STORAGE/containers` (empty if it doesn't exist).
    pub fn container_dirs(&self) -> Vec<String> {
        entry_names(&self.storage.join("containers"))
    }

    /// `nook ps --format json`, parsed.
    pub fn ps(&self) -> Vec<serde_json::Value> {
        let out = self.nook(&["ps", "--format", "json"]);
        out.assert_code(0);
        match serde_json::from_str(&out.stdout) {
            Ok(serde_json::Value::Array(items)) => items,
            _ => panic!("`nook ps --format json` did not print a JSON array:\n{out}"),
        }
    }

    /// The `nook ps --format json` entry of the container called `name`.
    pub fn container(&self, name: &str) -> Option<serde_json::Value> {
        self.ps()
            .into_iter()
            .find(|c| c["name"].as_str() == Some(name))
    }

    /// Processes of this test that are still alive: nook processes started with this
    /// test's `NOOK_STORAGE`, their descendants, and (when nook runs as a test user)
    /// orphaned container processes of that user.
    pub fn processes(&self) -> Vec<ProcInfo> {
        let runner = &self.setup.runner;
        let procs = scan_processes();
        let by_pid: HashMap<i32, &ProcInfo> = procs.iter().map(|p| (p.pid, p)).collect();
        let my_pidns = fs::read_link("/proc/self/ns/pid").ok();
        let storage = self.storage.to_string_lossy().into_owned();
        let is_nook =
            |p: &ProcInfo| p.nook_storage.is_some() || p.exe.as_deref() == Some(&self.setup.bin);
        procs
            .iter()
            .filter(|p| {
                let mut q = *p;
                for _ in 0..64 {
                    if is_nook(q) {
                        return q.nook_storage.as_deref() == Some(storage.as_str())
                            || q.cmdline.contains(&storage);
                    }
                    match by_pid.get(&q.ppid) {
                        Some(parent) => q = parent,
                        None => break,
                    }
                }
                // No nook process above it: an orphan. When nook runs as a test user, a
                // process of that user (or of its subordinate ids) in a pid namespace of
                // its own can only be a container nook left behind.
                runner.switch
                    && p.pidns.is_some()
                    && p.pidns != my_pidns
                    && (runner.owns_id(p.uid) || runner.owns_id(p.euid))
            })
            .cloned()
            .collect()
    }

    /// Waits briefly for the test's processes to go away; returns those that stay.
    fn leftover_processes(&self) -> Vec<ProcInfo> {
        let deadline = Instant::now() + LEFTOVER_GRACE;
        loop {
            let left = self.processes();
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails unless every process this test started through nook is gone.
    #[track_caller]
    pub fn assert_no_processes_left(&self) {
        let left = self.leftover_processes();
        if !left.is_empty() {
            kill_all(&left);
            panic!("processes left behind:\n{}", describe(&left));
        }
    }
}

impl Drop for Nook {
    fn drop(&mut self) {
        let left = self.leftover_processes();
        kill_all(&left);
        let image_changes = self.private_image.get().and_then(|(path, before)| {
            let after = tree_listing(Path::new(path));
            (after != *before).then(|| (path.clone(), diff(before, &after)))
        });
        force_remove(&self.dir);
        if thread::panicking() {
            return;
        }
        assert!(
            left.is_empty(),
            "processes left behind:\n{}",
            describe(&left)
        );
        if let Some((path, changes)) = image_changes {
            panic!(
                "this test's image {path} was written (nook must never write an image; a test \
                 whose container root may be written uses image_copy): {changes}"
            );
        }
    }
}

fn test_name() -> String {
    let name = thread::current()
        .name()
        .unwrap_or("test")
        .rsplit("::")
        .next()
        .unwrap_or("test")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect::<String>();
    if name.is_empty() {
        "test".into()
    } else {
        name
    }
}

// ---------------------------------------------------------------------------
// Running nook and capturing what the user sees.
// ---------------------------------------------------------------------------

/// What a nook invocation left for the user: its exit and its output.
#[derive(Clone)]
pub struct Out {
    /// Exit code, if nook exited.
    pub code: Option<i32>,
    /// Signal number, if nook was killed.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Fails, showing everything, unless nook exited with `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "unexpected exit status\n{self}");
        self
    }

    /// Fails unless nook exited with 0.
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        self.assert_code(0)
    }

    /// Fails unless stdout (trimmed at both ends) is exactly `text`.
    #[track_caller]
    pub fn assert_stdout(&self, text: &str) -> &Self {
        assert_eq!(self.stdout.trim(), text.trim(), "unexpected stdout\n{self}");
        self
    }

    /// Lines of stdout without trailing `\r`.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .collect()
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "exit code: {:?}, signal: {:?}", self.code, self.signal)?;
        writeln!(f, "--- stdout ---\n{}", self.stdout)?;
        write!(f, "--- stderr ---\n{}", self.stderr)
    }
}

impl fmt::Debug for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A nook invocation being configured.
pub struct NookCmd<'a> {
    nook: &'a Nook,
    args: Vec<String>,
    env: Vec<(String, String)>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    inherit_fd: Option<(i32, PathBuf)>,
    bin: Option<PathBuf>,
    kernel: Option<OldKernel>,
}

impl NookCmd<'_> {
    /// Runs nook on a simulated old kernel (see [`OldKernel`]), whatever the suite's mode.
    pub fn on_kernel(mut self, kernel: OldKernel) -> Self {
        self.kernel = Some(kernel);
        self
    }

    /// Adds a variable to nook's environment.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Feeds `bytes` to nook's stdin (instead of /dev/null), then closes it.
    pub fn stdin(mut self, bytes: &[u8]) -> Self {
        self.stdin = Some(bytes.to_vec());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Hands nook an extra open descriptor (on /dev/null) at number `fd`, not close-on-exec.
    pub fn inherit_fd(self, fd: i32) -> Self {
        self.inherit_fd_of(fd, Path::new("/dev/null"))
    }

    /// Hands nook an extra open descriptor on `path` (a file or a directory) at number `fd`,
    /// not close-on-exec, as a careless caller would.
    pub fn inherit_fd_of(mut self, fd: i32, path: &Path) -> Self {
        self.inherit_fd = Some((fd, path.to_path_buf()));
        self
    }

    /// Runs this nook binary instead of the harness's.
    pub fn bin(mut self, path: &Path) -> Self {
        self.bin = Some(path.to_path_buf());
        self
    }

    /// Runs nook to the end.
    pub fn run(self) -> Out {
        self.spawn().wait()
    }

    /// Starts nook and returns while it runs.
    pub fn spawn(self) -> Running {
        let bin = self.bin.as_deref().unwrap_or(&self.nook.setup.bin);
        let mut cmd = match self.kernel {
            Some(kernel) => self.nook.command_on(kernel, bin, &self.args, &self.env),
            None => self.nook.command_for(bin, &self.args, &self.env),
        };
        let (stdout_r, stdout_w) = self.nook.pipe();
        let (stderr_r, stderr_w) = self.nook.pipe();
        let (stdin_r, stdin_w) = match self.stdin {
            Some(_) => {
                let (r, w) = self.nook.pipe();
                (Some(r), Some(w))
            }
            None => (None, None),
        };
        cmd.stdin(stdin_r.map_or_else(Stdio::null, Stdio::from));
        cmd.stdout(Stdio::from(stdout_w))
            .stderr(Stdio::from(stderr_w));
        let devnull = self.inherit_fd.as_ref().map(|(_, path)| {
            fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        });
        if let (Some((target, _)), Some(file)) = (self.inherit_fd.clone(), devnull.as_ref()) {
            let src = file.as_raw_fd();
            // SAFETY: dup2 is async-signal-safe; the new descriptor is not close-on-exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(src, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mounts_before = mount_table();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        // Our copies of the child's ends must go, or the readers never see end of file.
        drop(cmd);
        drop(devnull);
        let captured = Captured::new(2);
        for (stream, pipe) in [(Stream::Stdout, stdout_r), (Stream::Stderr, stderr_r)] {
            let mut pipe = fs::File::from(pipe);
            let captured = Arc::clone(&captured);
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    captured.append(stream, &buf[..n]);
                }
                captured.close();
            });
        }
        if let (Some(bytes), Some(w)) = (self.stdin, stdin_w) {
            let mut pipe = fs::File::from(w);
            // nook may not read its stdin at all; a broken pipe is fine.
            thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            });
        }
        Running {
            child: Some(child),
            captured,
            mounts_before,
            timeout: self.timeout,
            label: format!("nook {:?}", self.args),
        }
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

#[derive(Default)]
struct CapturedState {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    open: usize,
}

struct Captured {
    state: Mutex<CapturedState>,
    changed: Condvar,
}

impl Captured {
    fn new(open: usize) -> Arc<Self> {
        Arc::new(Captured {
            state: Mutex::new(CapturedState {
                open,
                ..Default::default()
            }),
            changed: Condvar::new(),
        })
    }

    fn append(&self, stream: Stream, bytes: &[u8]) {
        let mut s = self.state.lock().unwrap();
        match stream {
            Stream::Stdout => s.stdout.extend_from_slice(bytes),
            Stream::Stderr => s.stderr.extend_from_slice(bytes),
        }
        self.changed.notify_all();
    }

    fn close(&self) {
        self.state.lock().unwrap().open -= 1;
        self.changed.notify_all();
    }

    /// Waits until `done` holds for the state or `deadline` passes; returns whether it held.
    fn wait_until(&self, deadline: Instant, done: impl Fn(&CapturedState) -> bool) -> bool {
        let mut s = self.state.lock().unwrap();
        loop {
            if done(&s) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self.changed.wait_timeout(s, deadline - now).unwrap().0;
        }
    }

    fn text(&self) -> (String, String) {
        let s = self.state.lock().unwrap();
        (
            String::from_utf8_lossy(&s.stdout).into_owned(),
            String::from_utf8_lossy(&s.stderr).into_owned(),
        )
    }
}

/// A nook process still running.
pub struct Running {
    child: Option<Child>,
    captured: Arc<Captured>,
    mounts_before: Vec<String>,
    timeout: Duration,
    label: String,
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends `signal` to the nook process.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal)
            .unwrap_or_else(|e| panic!("kill -{signal} {}: {e}", self.pid()));
    }

    /// What nook has printed so far (stdout, stderr).
    pub fn output_so_far(&self) -> (String, String) {
        self.captured.text()
    }

    /// Waits until stdout contains `needle`; fails the test (showing the output) after `timeout`.
    #[track_caller]
    pub fn wait_for_stdout(&self, needle: &str, timeout: Duration) {
        let needle = needle.as_bytes();
        let found = self.captured.wait_until(Instant::now() + timeout, |s| {
            s.stdout.windows(needle.len()).any(|w| w == needle)
        });
        if !found {
            let (stdout, stderr) = self.captured.text();
            panic!(
                "{}: no {:?} on stdout after {timeout:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
                self.label,
                String::from_utf8_lossy(needle)
            );
        }
    }

    /// Waits for nook to exit (killing it after the timeout), for its output to close,
    /// and checks that the caller's mount table is unchanged.
    #[track_caller]
    pub fn wait(mut self) -> Out {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for nook") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let (stdout, stderr) = self.captured.text();
                panic!(
                    "{} still running after {:?}; killed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
                    self.label, self.timeout
                );
            }
            thread::sleep(Duration::from_millis(5));
        };
        let closed = self
            .captured
            .wait_until(Instant::now() + Duration::from_secs(5), |s| s.open == 0);
        let (stdout, stderr) = self.captured.text();
        let out = Out {
            code: status.code(),
            signal: status.signal(),
            stdout,
            stderr,
        };
        assert!(
            closed,
            "{} exited but its stdout/stderr stayed open (held by a process it left behind)\n{out}",
            self.label
        );
        let mounts_after = mount_table();
        assert!(
            mounts_after == self.mounts_before,
            "{} changed the caller's mount table: {}\n{out}",
            self.label,
            diff(&self.mounts_before, &mounts_after)
        );
        out
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Observations on the host.
// ---------------------------------------------------------------------------

/// The raw /proc/self/mountinfo of the test process.
pub fn mountinfo() -> String {
    fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo")
}

/// The caller's mounts as sorted "mount point, root, fs type, source" lines: what must not
/// change when nook runs (mount ids and options are left out).
/// The mounts of the caller's mount namespace, one `point root type source` line each, less
/// those under another test process's directories (`/tmp/nook-test-PID-…`): a suite run beside
/// this one, by another developer or another checkout, mounts and unmounts there at any time.
pub fn mount_table() -> Vec<String> {
    let own = format!("/tmp/nook-test-{}-", std::process::id());
    let mut lines: Vec<String> = mountinfo()
        .lines()
        .filter(|line| {
            let point = line.split(' ').nth(4).unwrap_or_default();
            !point.starts_with("/tmp/nook-test-") || point.starts_with(&own)
        })
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            Some(format!(
                "{} {} {} {}",
                left.get(4)?,
                left.get(3)?,
                right.first()?,
                right.get(1)?
            ))
        })
        .collect();
    lines.sort();
    lines
}

/// Lines only in `before` (-) and only in `after` (+).
pub fn diff(before: &[String], after: &[String]) -> String {
    let mut out = String::new();
    for l in before.iter().filter(|l| !after.contains(l)) {
        out.push_str(&format!("\n- {l}"));
    }
    for l in after.iter().filter(|l| !before.contains(l)) {
        out.push_str(&format!("\n+ {l}"));
    }
    out
}

/// Every entry under `dir`, sorted: relative path, type, mode, uid, gid, size, symlink
/// target, content hash, mtime and ctime. Equal listings mean the tree was not written.
pub fn tree_listing(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    walk(dir, dir, &mut lines);
    lines.sort();
    lines
}

fn walk(root: &Path, path: &Path, lines: &mut Vec<String>) {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => {
            lines.push(format!("{}\terror {e}", path.display()));
            return;
        }
    };
    let rel = path.strip_prefix(root).unwrap_or(path);
    let rel = if rel.as_os_str().is_empty() {
        ".".to_string()
    } else {
        rel.display().to_string()
    };
    let ft = meta.file_type();
    use std::os::unix::fs::FileTypeExt;
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else if ft.is_fifo() {
        "fifo"
    } else {
        "socket"
    };
    let target = if ft.is_symlink() {
        fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_default()
    } else {
        String::new()
    };
    let hash = if ft.is_file() {
        match fs::read(path) {
            Ok(bytes) => format!("{:016x}", hash_bytes(&[&bytes])),
            Err(e) => format!("unreadable: {e}"),
        }
    } else {
        String::new()
    };
    lines.push(format!(
        "{rel}\t{kind}\t{:o}\t{}\t{}\t{}\t{target}\t{hash}\tmtime={}.{:09}\tctime={}.{:09}",
        meta.mode() & 0o7777,
        meta.uid(),
        meta.gid(),
        if ft.is_dir() { 0 } else { meta.len() },
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    ));
    if ft.is_dir() {
        if let Ok(entries) = fs::read_dir(path) {
            for entry in entries.flatten() {
                walk(root, &entry.path(), lines);
            }
        }
    }
}

/// A process as seen in /proc.
#[derive(Clone, Debug)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    pub euid: u32,
    pub cmdline: String,
    pub exe: Option<PathBuf>,
    /// The value of `NOOK_STORAGE` in its initial environment, if readable and set.
    pub nook_storage: Option<String>,
    pub pidns: Option<PathBuf>,
}

fn scan_processes() -> Vec<ProcInfo> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_process)
        .collect()
}

fn read_process(pid: i32) -> Option<ProcInfo> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let status = fs::read_to_string(dir.join("status")).ok()?;
    // A zombie has ended; reaping it is its parent's job (for an orphaned container process,
    // the host's init, which may take a moment). Its environment can no longer tell which
    // test it belonged to either.
    if status
        .lines()
        .any(|l| l.starts_with("State:") && l.contains("Z (zombie)"))
    {
        return None;
    }
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let uids = field("Uid:");
    let ppid = field("PPid:").first()?.parse().ok()?;
    let cmdline = fs::read(dir.join("cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let nook_storage = fs::read(dir.join("environ")).ok().and_then(|env| {
        env.split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(b"NOOK_STORAGE="))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    });
    Some(ProcInfo {
        pid,
        ppid,
        uid: uids.first()?.parse().ok()?,
        euid: uids.get(1)?.parse().ok()?,
        cmdline,
        exe: fs::read_link(dir.join("exe")).ok(),
        nook_storage,
        pidns: fs::read_link(dir.join("ns/pid")).ok(),
    })
}

fn describe(procs: &[ProcInfo]) -> String {
    procs
        .iter()
        .map(|p| {
            format!(
                "  pid {} (ppid {}, uid {}): {}",
                p.pid, p.ppid, p.uid, p.cmdline
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn kill_all(procs: &[ProcInfo]) {
    for p in procs {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Parses `KEY=VALUE` lines (as printed by `env`) into a map.
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The value of a `Name:\tvalue` line of a /proc/PID/status text.
pub fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Whether `s` looks like an RFC 3339 date-time (`2024-05-01T12:34:56Z`, fraction and
/// numeric offsets allowed).
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't' | b' ')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest {
        "Z" | "z" => true,
        _ => {
            let o = rest.as_bytes();
            o.len() == 6
                && matches!(o[0], b'+' | b'-')
                && o[1..3].iter().all(u8::is_ascii_digit)
                && o[3] == b':'
                && o[4..6].iter().all(u8::is_ascii_digit)
        }
    }
}

/// The sorted names in directory `dir`, hidden ones included; empty if it does not exist.
pub fn entry_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
