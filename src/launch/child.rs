//! The child's half of the launch: it becomes the container, in the order the kernel needs.

use std::cell::Cell;
use std::convert::Infallible;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::stat::Mode;
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, Pid};
use oci_spec::runtime::{LinuxNamespaceType, Process};

use super::sync::{Channel, Msg};
use super::{init, ChildFailed, Launch, Target};
use crate::{rootfs, security, sys};

/// What the child starts with.
pub(super) struct Context<'a> {
    pub launch: &'a Launch<'a>,
    pub chan: Channel,
    pub devnull: OwnedFd,
    pub parent_mask: SigSet,
    pub may_setgroups: bool,
    /// The exec fifo to wait at before `execve`: `O_PATH` until the child passed it, then its
    /// open write end.
    pub gate: Option<OwnedFd>,
    /// The fifo held open for reading while the child waits at the gate (`O_PATH` here).
    pub waiting: Option<OwnedFd>,
    /// An `exec`'s seccomp program, compiled before it entered the container.
    pub seccomp: Option<security::SeccompProgram>,
    /// Make the cgroup namespace after the parent moved us into the container's cgroup.
    pub late_cgroupns: bool,
}

/// Runs in the cloned child; never returns. Any failure goes to the parent as a message.
pub(super) fn run(mut ctx: Context<'_>) -> ! {
    let gate_passed = Cell::new(false);
    // Descriptors a careless caller left open must not reach the container; the engine's
    // `--preserve-fds` (3..3+N) are meant to.
    let mut kept = vec![ctx.chan.as_raw_fd(), ctx.devnull.as_raw_fd()];
    kept.extend(ctx.gate.as_ref().map(|g| g.as_raw_fd()));
    kept.extend(ctx.waiting.as_ref().map(|w| w.as_raw_fd()));
    kept.extend((0..ctx.launch.preserve_fds).map(|i| 3 + i as RawFd));
    let setup = sys::close_inherited_fds(&kept)
        .context("closing inherited descriptors")
        .and_then(|()| become_container(&mut ctx, &gate_passed));
    let err = match setup {
        Ok(never) => match never {},
        Err(e) => e,
    };
    if let (true, Some(fifo)) = (gate_passed.get(), &ctx.gate) {
        // Tells `nook start` that the command will not run, and why: one write of at most
        // PIPE_BUF bytes arrives whole.
        let (code, message) = describe(&err);
        let mut report = format!("E{code} {message}").into_bytes();
        report.truncate(libc::PIPE_BUF);
        let _ = nix::unistd::write(fifo, &report);
    }
    fail(&ctx.chan, err, gate_passed.get())
}

/// The status and message a failure is reported with.
fn describe(err: &anyhow::Error) -> (i32, String) {
    match err.downcast_ref::<ChildFailed>() {
        Some(f) => (f.code, f.message.clone()),
        None => (125, format!("{err:#}")),
    }
}

/// Sends the failure to the parent and exits. Past the start gate the parent (an OCI `create`)
/// is gone: the message then goes to the container's stderr, which the engine logs.
fn fail(chan: &Channel, err: anyhow::Error, parent_gone: bool) -> ! {
    let (code, message) = describe(&err);
    if parent_gone {
        let _ = writeln!(std::io::stderr(), "nook: {message}");
    } else {
        let _ = chan.send(&Msg::Failed { code, message });
    }
    sys::exit_now(code)
}

/// `exec`: enters the namespaces of the container whose first process is `target`, then clones
/// the process that runs the command as a sibling (so the parent waits for it directly), tells
/// the parent its pid and exits. Both stay non-dumpable until `execve`: the container's root
/// must never get at nook's binary through `/proc/PID/exe` or at its memory.
pub(super) fn join_then_run(mut ctx: Context<'_>, target: Pid) -> ! {
    let joined = (|| -> Result<sys::CloneResult> {
        // The container's score, for the command that joins it too (before /proc/self is
        // handed to the host's root).
        let process = ctx.launch.spec.process().as_ref();
        if let Some(value) = process.and_then(|p| p.oom_score_adj()) {
            security::set_oom_score_adj(value)?;
        }
        sys::set_not_dumpable().context("prctl(PR_SET_DUMPABLE)")?;
        // Compiled (and its cache read and written) while the paths are still the host's: past
        // the mount namespace they would be the container's, and the cache would land in its
        // layer.
        ctx.seccomp = seccomp_of(ctx.launch.spec)?;
        // An exec'd command is the container's too: frozen with it, counted in its limits.
        // Moved before it forks, while the host's cgroup filesystem is still in view. A caller
        // outside the delegated subtree may not move it (the kernel wants write access to the
        // common ancestor's cgroup.procs); the command then stays in the caller's cgroup, as
        // under crun.
        if let Some(cgroup) = ctx.launch.cgroup {
            cgroup.add_self_if_permitted()?;
        }
        join_namespaces(target)?;
        sys::clone_process(libc::CLONE_PARENT)
            .context("clone(CLONE_PARENT) of the process that joins the container")
    })();
    match joined {
        Ok(sys::CloneResult::Child) => run(ctx),
        Ok(sys::CloneResult::Parent(pid)) => {
            let code = match ctx.chan.send(&Msg::Joined { pid: pid.as_raw() }) {
                Ok(()) => 0,
                Err(_) => 1,
            };
            sys::exit_now(code)
        }
        Err(e) => fail(&ctx.chan, e, false),
    }
}

/// The seccomp program of the spec's profile, if it has one.
fn seccomp_of(spec: &oci_spec::runtime::Spec) -> Result<Option<security::SeccompProgram>> {
    let profile = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    profile.map(security::seccomp_program).transpose()
}

/// Makes the kernel kill this process when nook (its parent) dies. A parent that died before
/// the prctl sends no signal; its closed end of the channel tells instead.
fn stay_with_parent(chan: &Channel) -> Result<()> {
    sys::die_with_parent().context("prctl(PR_SET_PDEATHSIG)")?;
    if chan.peer_gone() {
        anyhow::bail!("nook exited before the command started");
    }
    Ok(())
}

/// Namespaces `exec` enters, in order: the user namespace first (it grants the capabilities the
/// others need), the mount namespace last (it changes the root under our feet).
const JOINED: [(&str, CloneFlags); 7] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

fn join_namespaces(target: Pid) -> Result<()> {
    let mut fds = Vec::new();
    for (name, flag) in JOINED {
        let path = format!("/proc/{target}/ns/{name}");
        let theirs = nix::fcntl::open(
            path.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening {path} (is the container still running?)"))?;
        let ours = nix::sys::stat::stat(format!("/proc/self/ns/{name}").as_str())
            .with_context(|| format!("stat /proc/self/ns/{name}"))?;
        let st = nix::sys::stat::fstat(theirs.as_fd()).with_context(|| format!("fstat {path}"))?;
        // A namespace the container shares with us cannot be entered again (EINVAL).
        if (st.st_dev, st.st_ino) != (ours.st_dev, ours.st_ino) {
            fds.push((name, flag, theirs));
        }
    }
    for (name, flag, fd) in fds {
        if let Err(e) = nix::sched::setns(fd.as_fd(), flag) {
            let why = (e == nix::Error::EPERM)
                .then(|| security::outer::seccomp_refused("setns"))
                .flatten();
            let context = format!("setns into the container's {name} namespace");
            return Err(match why {
                Some(why) => anyhow::Error::new(e).context(format!("{context}: {why}")),
                None => anyhow::Error::new(e).context(context),
            });
        }
    }
    Ok(())
}

/// Enters the namespaces the spec names by path (a pod's network, another container's IPC).
/// They must belong to a user namespace we hold capabilities in: ours when the spec creates
/// none (as under rootless podman).
fn join_spec_namespaces(spec: &oci_spec::runtime::Spec) -> Result<()> {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten();
    // The mount namespace last, as runc and crun do: it changes the root that later paths
    // (another /proc/PID/ns/...) resolve against.
    let mut joined: Vec<_> = namespaces.filter(|ns| ns.path().is_some()).collect();
    joined.sort_by_key(|ns| ns.typ() == LinuxNamespaceType::Mount);
    for ns in joined {
        let Some(path) = ns.path() else { continue };
        let flag = match ns.typ() {
            LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            // The container's root is then mounted and pivoted inside the joined namespace,
            // as under runc and crun.
            LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
            // Joined by the parent before the clone (see `launch::join_user_namespace` and
            // `launch::join_pid_namespace`).
            LinuxNamespaceType::User | LinuxNamespaceType::Pid => continue,
            other => anyhow::bail!(
                "joining an existing {other:?} namespace ({}) is not supported",
                path.display()
            ),
        };
        let fd = super::open_namespace(path, ns.typ())?;
        nix::sched::setns(fd.as_fd(), flag).with_context(|| {
            format!(
                "setns into the {:?} namespace {} (it must belong to a user namespace nook \
                 holds capabilities in)",
                ns.typ(),
                path.display()
            )
        })?;
    }
    Ok(())
}

/// The UTS namespace is ours, so an EPERM can only be an outer seccomp filter's (podman's and
/// Docker's default profiles refuse sethostname without CAP_SYS_ADMIN): the container then
/// keeps the hostname it inherited, and says so.
fn set_hostname(hostname: &str) -> Result<()> {
    match nix::unistd::sethostname(hostname) {
        Err(nix::Error::EPERM) => match security::outer::seccomp_refused("sethostname") {
            Some(why) => {
                let kept = nix::unistd::gethostname()
                    .map(|h| h.to_string_lossy().into_owned())
                    .unwrap_or_default();
                eprintln!("nook: warning: the hostname stays {kept:?}, not {hostname:?}: {why}");
                Ok(())
            }
            None => Err(nix::Error::EPERM).context("sethostname"),
        },
        other => other.context("sethostname"),
    }
}

fn become_container(ctx: &mut Context<'_>, gate_passed: &Cell<bool>) -> Result<Infallible> {
    let launch = ctx.launch;
    let chan = &ctx.chan;
    let spec = launch.spec;
    let process = spec.process().as_ref().context("the spec has no process")?;
    let linux = spec.linux().as_ref();
    if launch.die_with_parent {
        stay_with_parent(chan)?;
    }
    // A new container's is compiled while the parent writes the id maps, before the root
    // changes.
    let mut seccomp = match launch.target {
        Target::New { .. } => seccomp_of(spec)?,
        Target::Join { .. } => ctx.seccomp.take(),
    };
    let mut host_pid = None;
    let gate = ctx.gate.take();
    let waiting = ctx.waiting.take();
    if let Target::New {
        rootfs: plan,
        files,
        ..
    } = launch.target
    {
        chan.expect(Msg::MapsWritten)?;
        // While /proc/self is still ours to write: a change of ids or PR_SET_DUMPABLE hands
        // it to the host's root.
        if let Some(value) = process.oom_score_adj() {
            security::set_oom_score_adj(value)?;
        }
        if super::has_user_namespace(spec) {
            security::become_namespace_root()?;
        }
        if ctx.late_cgroupns {
            nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
                .context("unshare(CLONE_NEWCGROUP) in the container's cgroup")?;
        }
        // From here on only we may look into this process: the parent is done with /proc/PID.
        sys::set_not_dumpable().context("prctl(PR_SET_DUMPABLE)")?;
        join_spec_namespaces(spec)?;
        // In the container's namespaces and still before its /proc is read-only.
        if let Some(sysctls) = linux.and_then(|l| l.sysctl().as_ref()) {
            security::apply_sysctls(sysctls)?;
        }
        rootfs::enter(spec, plan, files, &mut || {
            let Some(hooks) = launch.hooks.filter(|h| h.has_create_hooks()) else {
                return Ok(());
            };
            chan.send(&Msg::RuntimeHooks)?;
            match chan.recv()? {
                Some((Msg::HooksRan { pid }, _)) => host_pid = Some(pid),
                Some((Msg::Failed { code, message }, _)) => {
                    return Err(ChildFailed { code, message }.into())
                }
                other => anyhow::bail!("expected HooksRan, got {other:?}"),
            }
            hooks.run_create_container(host_pid.unwrap_or(0))
        })?;
        if let Some(hostname) = spec.hostname() {
            set_hostname(hostname)?;
        }
        let own_network = linux
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|nss| {
                nss.iter()
                    .any(|ns| ns.typ() == LinuxNamespaceType::Network && ns.path().is_none())
            });
        if own_network {
            sys::loopback_up().context("bringing up the loopback interface")?;
        }
    }

    let terminal = if process.terminal() == Some(true) {
        Some(open_terminal(chan)?)
    } else {
        if !launch.keep_stdin {
            dup2_stdin(ctx.devnull.as_fd()).context("dup2 /dev/null to stdin")?;
        }
        None
    };
    enter_cwd(process)?;
    if let Some(rlimits) = process.rlimits() {
        security::set_rlimits(rlimits)?;
    }
    if let Some(personality) = linux.and_then(|l| l.personality().as_ref()) {
        security::set_personality(personality)?;
    }

    // Steps that need no privilege of the container's are done before any filter: a profile
    // written before close_range existed (or for a static binary) must not break the launch.
    if let Some(caps) = process.capabilities() {
        security::limit_bounding_set(caps)?;
    }
    sys::cloexec_from(3 + launch.preserve_fds).context("close_range")?;
    let program = Program::resolve(process)?;

    // Without no_new_privs the kernel takes a filter only from a process holding CAP_SYS_ADMIN,
    // so it is loaded now, before the capabilities go (as runc and crun do); dropping them, the
    // start gate and execve then run under it, so such a profile must allow those calls.
    if process.no_new_privileges() != Some(true) {
        if let Some(filter) = seccomp.take() {
            load_filter(chan, &filter, launch)?;
        }
    }
    let user = process.user();
    let extra_gids = user.additional_gids().clone().unwrap_or_default();
    security::switch_user(user.uid(), user.gid(), &extra_gids, ctx.may_setgroups)?;
    if launch.die_with_parent {
        // A change of effective uid or gid (`-u 1000`) clears the parent-death signal.
        stay_with_parent(chan)?;
    }
    if let Some(caps) = process.capabilities() {
        security::apply_capabilities(caps)?;
    }
    if process.no_new_privileges() == Some(true) {
        security::set_no_new_privs()?;
    }
    if let Some(gate) = gate {
        program.check_exists()?;
        let waiting = waiting.map(|w| reopen(&w, OFlag::O_RDONLY | OFlag::O_NONBLOCK));
        let waiting = waiting
            .transpose()
            .context("opening the waiting fifo (is /proc mounted in the spec?)")?;
        chan.send(&Msg::Ready)?;
        chan.expect(Msg::Adopted)
            .context("nook create ended before recording the container")?;
        gate_passed.set(true);
        // Held open (close-on-exec) until execve: `nook start` returns when it closes.
        ctx.gate = Some(wait_at_gate(gate)?);
        drop(waiting);
        if let Some(hooks) = launch.hooks {
            hooks.run_start_container(host_pid.unwrap_or(0))?;
        }
    }

    if launch.init {
        // pid 1 stays nook: keep the container's root from opening it through /proc/1/exe.
        sys::set_not_dumpable().context("prctl(PR_SET_DUMPABLE)")?;
        if let sys::CloneResult::Parent(command) = sys::fork_process().context("fork")? {
            drop(terminal);
            drop(ctx.gate.take());
            if let Some(filter) = &seccomp {
                load_filter(chan, filter, launch)?;
            }
            init::run(command);
        }
    }
    nix::unistd::setsid().context("setsid")?;
    if let Some(slave) = &terminal {
        sys::set_controlling_terminal(slave.as_fd()).context("TIOCSCTTY")?;
    }
    drop(terminal);
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&ctx.parent_mask), None)
        .context("restoring the signal mask")?;
    sys::default_sigpipe();
    if let Some(filter) = &seccomp {
        load_filter(chan, filter, launch)?;
    }
    program.exec()
}

/// Loads the container's filter. One that sends calls to root emulation's supervisor gets a
/// listener, which goes to the parent at once: from here on, a notified call of ours waits
/// for the parent's answer.
fn load_filter(
    chan: &Channel,
    filter: &security::SeccompProgram,
    launch: &Launch<'_>,
) -> Result<()> {
    if !(launch.supervision.any() && filter.notifies()) {
        return security::load_seccomp(filter);
    }
    let listener = security::load_seccomp_supervised(filter)?;
    chan.send_with_fd(&Msg::Listener, Some(listener.as_raw_fd()))
        .context("handing the seccomp listener to nook")
}

/// Blocks until `nook start` opens the exec fifo for reading, then tells it we passed. The fifo
/// is reopened through our own descriptor, which works whatever user we are by now. The open
/// end is returned: `start` reads end-of-file once `execve` closes it.
fn wait_at_gate(gate: OwnedFd) -> Result<OwnedFd> {
    let fifo = reopen(&gate, OFlag::O_WRONLY)
        .context("opening the exec fifo to wait for `start` (is /proc mounted in the spec?)")?;
    match nix::unistd::write(&fifo, b"0") {
        // The `start` that opened the fifo was killed before reading: it asked for the start.
        Ok(_) | Err(nix::Error::EPIPE) => Ok(fifo),
        Err(e) => Err(e).context("writing to the exec fifo"),
    }
}

/// Opens the file behind an `O_PATH` descriptor, close-on-exec.
fn reopen(fd: &OwnedFd, flags: OFlag) -> nix::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    nix::fcntl::open(path.as_str(), flags | OFlag::O_CLOEXEC, Mode::empty())
}

/// Opens a terminal in the container's own devpts instance, hands the master to the parent and
/// makes the slave our stdio.
fn open_terminal(chan: &Channel) -> Result<OwnedFd> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .context("opening /dev/ptmx in the container")?;
    nix::pty::grantpt(&master).context("grantpt")?;
    nix::pty::unlockpt(&master).context("unlockpt")?;
    let name = nix::pty::ptsname_r(&master).context("ptsname")?;
    let slave = nix::fcntl::open(
        Path::new(&name),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("opening {name}"))?;
    chan.send_with_fd(&Msg::PtyMaster, Some(master.as_raw_fd()))?;
    drop(master);
    chan.expect(Msg::Continue)?;
    redirect_stdio(slave.as_fd())?;
    Ok(slave)
}

fn redirect_stdio(fd: BorrowedFd<'_>) -> Result<()> {
    dup2_stdin(fd).context("dup2 stdin")?;
    dup2_stdout(fd).context("dup2 stdout")?;
    dup2_stderr(fd).context("dup2 stderr")?;
    Ok(())
}

/// Enters the working directory, creating it as `docker run -w` does when the image lacks it.
fn enter_cwd(process: &Process) -> Result<()> {
    let cwd = process.cwd();
    if !cwd.is_absolute() {
        anyhow::bail!("the working directory {} is not absolute", cwd.display());
    }
    if let Err(err) = nix::unistd::chdir(cwd) {
        if err == nix::Error::ENOTDIR {
            anyhow::bail!(
                "the working directory {} (-w) is not a directory in the container: it, or a \
                 parent of it, is a file",
                cwd.display()
            );
        }
        std::fs::create_dir_all(cwd)
            .with_context(|| format!("creating the working directory {}", cwd.display()))?;
        nix::unistd::chdir(cwd).with_context(|| format!("entering {}", cwd.display()))?;
    }
    // A path through /proc (a descriptor, another process's root) could lead out of the
    // container; the kernel then has no path for the directory from our root.
    match nix::unistd::getcwd() {
        Ok(real) if real.is_absolute() => Ok(()),
        _ => anyhow::bail!(
            "the working directory {} lies outside the container's root; refusing it",
            cwd.display()
        ),
    }
}

/// The home directory of `uid` in an `/etc/passwd` text, or `/`.
fn home_of(passwd: &str, uid: u32) -> String {
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && f[2].parse() == Ok(uid))
        .map(|f| f[5].to_string())
        .filter(|home| !home.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

/// The command to exec, with its arguments and environment ready as C strings, so that nothing
/// after the security setup needs to allocate much or touch the filesystem beyond `execve`.
struct Program {
    name: String,
    candidates: Vec<CString>,
    args: Vec<CString>,
    env: Vec<CString>,
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).with_context(|| format!("{s:?} contains a NUL byte"))
}

impl Program {
    fn resolve(process: &Process) -> Result<Program> {
        let args = process.args().clone().unwrap_or_default();
        let name = args
            .first()
            .cloned()
            .context("the process has no command (args is empty)")?;
        let mut env = process.env().clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            // As runc and crun do: the user's home from the container's /etc/passwd, else /.
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            env.push(format!("HOME={}", home_of(&passwd, process.user().uid())));
        }
        let path_var = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(crate::spec::DEFAULT_PATH);
        let candidates: Vec<PathBuf> = if name.contains('/') {
            vec![PathBuf::from(&name)]
        } else {
            path_var
                .split(':')
                .filter(|d| !d.is_empty())
                .map(|d| Path::new(d).join(&name))
                .collect()
        };
        Ok(Program {
            candidates: candidates
                .iter()
                .map(|p| cstr(&p.to_string_lossy()))
                .collect::<Result<_>>()?,
            args: args.iter().map(|a| cstr(a)).collect::<Result<_>>()?,
            env: env.iter().map(|e| cstr(e)).collect::<Result<_>>()?,
            name,
        })
    }

    /// Fails now, before the start gate, as `exec` would: 127 when no candidate exists, 126
    /// when one exists but may not be run (not executable, or on a `noexec` mount, which
    /// `access(X_OK)` reports too). `create` then reports it as runc does, rather than `start`
    /// failing later without a word.
    fn check_exists(&self) -> Result<()> {
        let mut denied = None;
        for candidate in &self.candidates {
            // Any other error (a seccomp profile that denies access(2)) tells nothing: execve
            // will say.
            match nix::unistd::access(candidate.as_c_str(), nix::unistd::AccessFlags::F_OK) {
                Ok(()) => {}
                Err(nix::Error::ENOENT | nix::Error::ENOTDIR) => continue,
                Err(_) => return Ok(()),
            }
            match nix::unistd::access(candidate.as_c_str(), nix::unistd::AccessFlags::X_OK) {
                Err(e @ nix::Error::EACCES) => denied = denied.or(Some((candidate, e))),
                _ => return Ok(()),
            }
        }
        Err(match denied {
            Some((path, err)) => self.cannot_run(path, err),
            None => self.not_found(),
        }
        .into())
    }

    /// Tries each candidate as `execvp` would; reports 127 when none exists, 126 when one exists
    /// but cannot be run.
    fn exec(&self) -> Result<Infallible> {
        let mut denied = None;
        for candidate in &self.candidates {
            let err = match nix::unistd::execve(candidate, &self.args, &self.env) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            match err {
                nix::Error::ENOENT | nix::Error::ENOTDIR => continue,
                nix::Error::EACCES => denied = Some((candidate, err)),
                other => return Err(self.cannot_run(candidate, other).into()),
            }
        }
        Err(match denied {
            Some((path, err)) => self.cannot_run(path, err),
            None => self.not_found(),
        }
        .into())
    }

    /// 127, in words engines classify: podman maps `executable file not found in $PATH` and
    /// `no such file or directory` to its own 127.
    fn not_found(&self) -> ChildFailed {
        let engines_words = if self.name.contains('/') {
            "no such file or directory"
        } else {
            "executable file not found in $PATH"
        };
        ChildFailed {
            code: 127,
            message: format!("{}: not found in the container: {engines_words}", self.name),
        }
    }

    /// 126; the error's text in lower case, as engines match `permission denied`.
    fn cannot_run(&self, path: &CString, err: nix::Error) -> ChildFailed {
        // execve says EACCES for a directory, which reads as a permission problem.
        let is_dir = err == nix::Error::EACCES
            && std::fs::metadata(Path::new(std::ffi::OsStr::from_bytes(path.as_bytes())))
                .is_ok_and(|m| m.is_dir());
        if is_dir {
            return ChildFailed {
                code: 126,
                message: format!(
                    "{}: is a directory, not a program: cannot run it in the container (give \
                     the program to run, e.g. {}/PROGRAM, or use -w to start there)",
                    path.to_string_lossy(),
                    path.to_string_lossy().trim_end_matches('/')
                ),
            };
        }
        ChildFailed {
            code: 126,
            message: format!(
                "{}: cannot run it in the container: {}",
                path.to_string_lossy(),
                err.desc().to_lowercase()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_comes_from_passwd_or_is_root() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(home_of(passwd, 0), "/root");
        assert_eq!(home_of(passwd, 1000), "/home/alice");
        assert_eq!(home_of(passwd, 5), "/");
        assert_eq!(home_of("", 0), "/");
    }
}
