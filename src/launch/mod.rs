//! The launch: one `clone` into all the container's namespaces, then the parent (outside, the
//! user's uid) and the child (root inside, soon the container) each play their part.
//!
//! ```text
//! parent: block signals ─ clone ─ write id maps ─ MapsWritten ─► [PtyMaster ◄─ / Continue ─►] ─ EOF = exec'd
//! child:                          compile seccomp ─ wait ─ mounts, pivot ─ tty ─ caps, user, nnp, seccomp ─ execve
//! ```
//!
//! An OCI `create` adds a gate: the child sends `Ready` and blocks on the exec fifo until
//! `nook start` opens it; the parent returns at `Ready` and exits, leaving the child to its
//! engine. An `exec` joins a running container instead of creating one: a short-lived helper
//! enters the container's namespaces and clones the process (as the parent's own child, so the
//! parent can wait for it) that then runs the same child half, without the rootfs steps.

mod child;
mod helper;
mod init;
mod io;
mod sync;
mod userns;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::idmap::IdMapping;
use crate::rootfs::{GeneratedFile, RootfsPlan};
use crate::security::supervisor::{Counts, Supervisor};
use crate::sys;

pub use io::StdinMode;
use sync::{Channel, Msg};
pub use userns::{run_in_container, run_in_userns, spawn_in_userns, InUserns};

/// Setting up the container failed in the child, or its command could not be run.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ChildFailed {
    /// The status nook exits with: 125 for a setup failure, 126 when the command cannot be run,
    /// 127 when it does not exist.
    pub code: i32,
    pub message: String,
}

/// Where the process runs: in a container made for it, or in one that already runs.
pub enum Target<'a> {
    /// Clone into the spec's namespaces and build the root filesystem. `idmap` is required when
    /// the spec asks for a user namespace and unused otherwise.
    New {
        rootfs: &'a RootfsPlan,
        /// Files nook writes into the container (hostname, hosts, resolv.conf), kept in memory.
        files: &'a [GeneratedFile],
        idmap: Option<&'a IdMapping>,
    },
    /// Join the namespaces of the container whose first process is `pid` (`exec`).
    Join { pid: Pid },
}

/// Everything the launch needs; the spec says what the container is, the rest how to make it.
/// For [`Target::Join`] the spec's process is the one to start and its `linux` section (seccomp)
/// is the container's.
pub struct Launch<'a> {
    pub spec: &'a Spec,
    pub target: Target<'a>,
    /// Block before `execve` until the gate is opened (`nook start`).
    pub start_gate: Option<StartGate<'a>>,
    /// Descriptors 3..3+N the container's process inherits (`--preserve-fds`).
    pub preserve_fds: u32,
    /// Run hooks at the points the runtime spec defines, with this state on their stdin.
    pub hooks: Option<&'a crate::hooks::HookContext>,
    /// Run a tiny init as pid 1 with the command as its child.
    pub init: bool,
    /// Pass nook's stdin on (`-i`); otherwise the container reads `/dev/null`.
    pub keep_stdin: bool,
    /// Kill the container if the nook process that started it dies.
    pub die_with_parent: bool,
    /// Work for the parent while the id maps are written, done before the child goes on to
    /// build the root (`nook run` makes the container's directory then).
    pub meanwhile: Option<&'a dyn Fn() -> Result<()>>,
    /// A private network: its helper joins the container's namespaces once they are mapped,
    /// before the container goes on, and ends with it.
    pub network: Option<&'a crate::net::Plan>,
    /// The container's cgroup: its process is moved there before it makes its cgroup
    /// namespace, so that namespace's root is the container's own cgroup.
    pub cgroup: Option<&'a crate::cgroup::Cgroup>,
    /// Root emulation's supervisor, for a filter that sends calls to it.
    pub supervision: crate::security::root_emulation::Supervision,
}

/// The fifos of an OCI `create`.
#[derive(Clone, Copy)]
pub struct StartGate<'a> {
    /// The child blocks before `execve` until this fifo is opened for reading (`nook start`).
    pub fifo: &'a std::path::Path,
    /// The child holds this fifo open for reading from before `Ready` until it has passed the
    /// gate, so that a writer's `open(O_NONBLOCK)` tells whether it still waits there.
    pub waiting: &'a std::path::Path,
}

/// Signals nook passes on to the container; SIGCHLD tells it the container ended.
const FORWARDED: [Signal; 7] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// How long a foreground container has to end by itself after its terminal hangs up.
pub const HANGUP_GRACE: Duration = Duration::from_secs(3);

/// A container whose command is running.
pub struct Started {
    pub pid: Pid,
    pty: Option<OwnedFd>,
    signals: SignalFd,
    old_mask: SigSet,
    /// The fuse backend's helper, which holds the root's fuse-overlayfs mount.
    helper: Option<helper::Helper>,
    /// With a start gate: the sync channel, until [`Started::adopt`].
    chan: Option<Channel>,
    /// The private network's helper, ended when the container is collected.
    network: Option<crate::net::Running>,
    /// Root emulation's supervisor, ended when the container is collected.
    supervisor: Option<Supervisor>,
}

/// The namespaces the clone creates: those of the spec without a `path` (a namespace with a
/// path is joined by the child instead).
fn namespace_flags(spec: &Spec) -> libc::c_int {
    let mut flags = 0;
    for ns in spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .filter(|ns| ns.path().is_none())
    {
        flags |= match ns.typ() {
            LinuxNamespaceType::User => libc::CLONE_NEWUSER,
            LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
            LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
            LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
            LinuxNamespaceType::Network => libc::CLONE_NEWNET,
            LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
            LinuxNamespaceType::Time => 0,
        };
    }
    flags
}

/// Creates the container and starts its command. Returns once the command runs, or with
/// [`ChildFailed`] (after reaping the child) when it could not be started.
pub fn start(launch: &Launch<'_>) -> Result<Started> {
    if let Target::New { .. } = launch.target {
        join_user_namespace(launch.spec)?;
        join_pid_namespace(launch.spec)?;
    }
    let (parent_chan, child_chan) = Channel::pair()?;
    let devnull = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .context("opening /dev/null")?;

    // Block the forwarded signals before the clone so none is lost between clone and the loop
    // that forwards them; the child restores the old mask before exec.
    let mut mask = SigSet::empty();
    for sig in FORWARDED {
        mask.add(sig);
    }
    mask.add(Signal::SIGCHLD);
    let mut old_mask = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), Some(&mut old_mask))
        .context("blocking signals")?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("signalfd")?;

    // Opened here, so the child needs no access to the state directory to wait at the gate.
    let open_path = |path: &std::path::Path| {
        nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .with_context(|| format!("opening the fifo {}", path.display()))
    };
    let (gate, waiting) = match launch
        .start_gate
        .map(|g| Ok::<_, anyhow::Error>((open_path(g.fifo)?, open_path(g.waiting)?)))
        .transpose()
    {
        Ok(fds) => fds.unzip(),
        Err(e) => {
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
            return Err(e);
        }
    };
    let may_setgroups = match may_setgroups(launch) {
        Ok(may) => may,
        Err(e) => {
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
            return Err(e);
        }
    };
    let mut flags = match launch.target {
        Target::New { .. } => namespace_flags(launch.spec),
        Target::Join { .. } => 0,
    };
    // Cloned into a new cgroup namespace, the process would keep nook's cgroup as that
    // namespace's root; it makes the namespace itself once it has been moved.
    let late_cgroupns = launch.cgroup.is_some() && flags & libc::CLONE_NEWCGROUP != 0;
    if late_cgroupns {
        flags &= !libc::CLONE_NEWCGROUP;
    }
    let fuse = matches!(
        launch.target,
        Target::New {
            rootfs: RootfsPlan::Fuse { .. },
            ..
        }
    );
    let ctx = child::Context {
        launch,
        chan: child_chan,
        devnull,
        parent_mask: old_mask,
        may_setgroups,
        gate,
        waiting,
        seccomp: None,
        late_cgroupns,
    };
    let cloned = if fuse {
        // Off the fast path: a helper in the user and mount namespaces holds fuse-overlayfs.
        helper::start(ctx, flags).map(|(pid, h)| (pid, Some(h)))
    } else {
        match sys::clone_process(flags) {
            Ok(sys::CloneResult::Child) => {
                drop(parent_chan);
                drop(signals);
                match launch.target {
                    Target::New { .. } => child::run(ctx),
                    Target::Join { pid } => child::join_then_run(ctx, pid),
                }
            }
            Ok(sys::CloneResult::Parent(pid)) => {
                // The child's ends (channel, /dev/null, gate) are closed on our side.
                drop(ctx);
                Ok((pid, None))
            }
            Err(e) => Err(clone_refused(e)),
        }
    };
    let (cloned, helper) = match cloned {
        Ok(c) => c,
        Err(e) => {
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
            return Err(e);
        }
    };
    let (pid, early) = match launch.target {
        Target::New { .. } => (cloned, Vec::new()),
        Target::Join { .. } => match joined_pid(&parent_chan, cloned) {
            Ok(joined) => joined,
            Err(e) => {
                let _ =
                    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
                return Err(e);
            }
        },
    };
    let maps_written = helper.is_some();
    let started = Started {
        pid,
        pty: None,
        signals,
        old_mask,
        helper,
        chan: None,
        network: None,
        supervisor: None,
    };
    match handshake(launch, &parent_chan, pid, maps_written, early) {
        Ok(Handshake {
            pty,
            network,
            supervisor,
        }) => Ok(Started {
            pty,
            network,
            supervisor,
            chan: launch.start_gate.map(|_| parent_chan),
            ..started
        }),
        Err(e) => {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            let _ = nix::sys::signal::sigprocmask(
                SigmaskHow::SIG_SETMASK,
                Some(&started.old_mask),
                None,
            );
            if let Some(helper) = started.helper {
                helper.finish();
            }
            Err(e)
        }
    }
}

/// Joins the user namespace the spec names by path (an engine's), before the clone: the
/// namespaces the clone creates then belong to it, and the child holds the capabilities to
/// enter the others the spec names (a network namespace that user namespace owns). As with
/// runc's and crun's launchers there is no way back: this process stays a member of it.
fn join_user_namespace(spec: &Spec) -> Result<()> {
    let Some(path) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .find(|ns| ns.typ() == LinuxNamespaceType::User)
        .and_then(|ns| ns.path().as_ref())
    else {
        return Ok(());
    };
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("opening the user namespace {}", path.display()))?;
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWUSER).with_context(|| {
        format!(
            "setns into the user namespace {} (without privilege only a user namespace your \
             own user created can be joined)",
            path.display()
        )
    })
}

/// Joins the pid namespace the spec names by path, as runc and crun do: setns(CLONE_NEWPID)
/// moves only the children of this process, so the clone that follows is a member of it (not
/// its init: the namespace's own init reaps what the command orphans). Done after the user
/// namespace, which must own the pid namespace for us to hold CAP_SYS_ADMIN over it.
fn join_pid_namespace(spec: &Spec) -> Result<()> {
    let Some(path) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .find(|ns| ns.typ() == LinuxNamespaceType::Pid)
        .and_then(|ns| ns.path().as_ref())
    else {
        return Ok(());
    };
    let fd = open_namespace(path, LinuxNamespaceType::Pid)?;
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWPID).with_context(|| {
        format!(
            "setns into the pid namespace {} (it must belong to the user namespace the \
             container runs in: join that one by path too)",
            path.display()
        )
    })
}

/// Opens a namespace file named by a spec and checks it is one, of the kind the spec says: the
/// kernel's EINVAL for a wrong kind names neither.
pub(crate) fn open_namespace(path: &std::path::Path, typ: LinuxNamespaceType) -> Result<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("opening the {typ:?} namespace {}", path.display()))?;
    let (want, name) = match typ {
        LinuxNamespaceType::User => (libc::CLONE_NEWUSER, "user"),
        LinuxNamespaceType::Mount => (libc::CLONE_NEWNS, "mount"),
        LinuxNamespaceType::Pid => (libc::CLONE_NEWPID, "pid"),
        LinuxNamespaceType::Uts => (libc::CLONE_NEWUTS, "uts"),
        LinuxNamespaceType::Ipc => (libc::CLONE_NEWIPC, "ipc"),
        LinuxNamespaceType::Network => (libc::CLONE_NEWNET, "network"),
        LinuxNamespaceType::Cgroup => (libc::CLONE_NEWCGROUP, "cgroup"),
        LinuxNamespaceType::Time => (libc::CLONE_NEWTIME, "time"),
    };
    // NS_GET_NSTYPE (linux/nsfs.h): _IO(0xb7, 0x3).
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: the ioctl takes no argument and only reads the descriptor we own.
    let got = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), NS_GET_NSTYPE as _) };
    if got < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOTTY) {
            anyhow::bail!(
                "{} is not a namespace file: give a {name} namespace's path, such as \
                 /proc/PID/ns/{}",
                path.display(),
                if name == "mount" {
                    "mnt"
                } else if name == "network" {
                    "net"
                } else {
                    name
                }
            );
        }
        return Err(err).with_context(|| format!("ioctl(NS_GET_NSTYPE) on {}", path.display()));
    }
    if got != want {
        anyhow::bail!(
            "{} is a namespace of another kind, not a {name} namespace",
            path.display()
        );
    }
    Ok(fd)
}

/// The spec's `root.path`, where the container's root is built.
fn root_path(spec: &Spec) -> Result<PathBuf> {
    Ok(spec
        .root()
        .as_ref()
        .context("the spec has no root")?
        .path()
        .clone())
}

fn clone_refused(err: std::io::Error) -> anyhow::Error {
    let why = crate::security::outer::userns_refusal(err.raw_os_error().unwrap_or(0));
    let hint = if why.is_empty() {
        String::new()
    } else {
        format!(": {why}")
    };
    anyhow::anyhow!("clone(2) into new namespaces failed: {err}{hint}")
}

/// Whether the container's processes may call `setgroups(2)`: not in a user namespace whose
/// maps were written without privilege.
fn may_setgroups(launch: &Launch<'_>) -> Result<bool> {
    let proc_file = match launch.target {
        Target::New {
            idmap: Some(idmap), ..
        } if has_user_namespace(launch.spec) => return Ok(idmap.allows_setgroups()),
        Target::New { .. } => "/proc/self/setgroups".to_string(),
        Target::Join { pid } => format!("/proc/{pid}/setgroups"),
    };
    let text =
        std::fs::read_to_string(&proc_file).with_context(|| format!("reading {proc_file}"))?;
    Ok(text.trim() == "allow")
}

fn has_user_namespace(spec: &Spec) -> bool {
    namespace_flags(spec) & libc::CLONE_NEWUSER != 0
}

/// A message from the child, with the descriptor it carried.
type Received = (Msg, Option<OwnedFd>);

/// Reaps the helper that joined the container's namespaces; returns the pid of the process it
/// cloned for us, and that process's first message if it came before the helper's.
fn joined_pid(chan: &Channel, helper: Pid) -> Result<(Pid, Vec<Received>)> {
    // The process it cloned runs at once and may send its terminal or its seccomp listener
    // before the helper reports; the handshake takes them in the order they came.
    let mut early = Vec::new();
    let reply = loop {
        match chan.recv() {
            Ok(Some((msg @ (Msg::PtyMaster | Msg::Listener), fd))) if early.len() < 2 => {
                early.push((msg, fd));
            }
            other => break other,
        }
    };
    let _ = waitpid(helper, None);
    match reply? {
        Some((Msg::Joined { pid }, _)) => Ok((Pid::from_raw(pid), early)),
        Some((Msg::Failed { code, message }, _)) => Err(ChildFailed { code, message }.into()),
        Some((other, _)) => anyhow::bail!("unexpected message from the joining helper: {other:?}"),
        None => anyhow::bail!("the helper that joins the container's namespaces died"),
    }
}

/// What the parent holds once the command runs.
#[derive(Default)]
struct Handshake {
    pty: Option<OwnedFd>,
    network: Option<crate::net::Running>,
    supervisor: Option<Supervisor>,
}

/// The parent's side of the sync: maps, terminal, then end-of-file once the command runs (or
/// `Ready` when it waits at the start gate).
fn handshake(
    launch: &Launch<'_>,
    chan: &Channel,
    pid: Pid,
    maps_written: bool,
    early: Vec<Received>,
) -> Result<Handshake> {
    let mut network = None;
    let mut supervisor: Option<Supervisor> = None;
    if let Target::New { idmap, .. } = launch.target {
        // With the fuse helper the container lives in the helper's user namespace, mapped
        // already.
        if let Some(cgroup) = launch.cgroup {
            cgroup.add_process(pid.as_raw())?;
        }
        let meanwhile = || launch.meanwhile.map_or(Ok(()), |work| work());
        if has_user_namespace(launch.spec) && !maps_written {
            idmap
                .context("the spec asks for a user namespace but no id mapping was given")?
                .write_for_while(pid, &meanwhile)?;
        } else {
            meanwhile()?;
        }
        if let Some(plan) = launch.network {
            network = Some(crate::net::start(plan, pid.as_raw())?);
        }
        chan.send(&Msg::MapsWritten)?;
    }
    let mut pty = None;
    let mut early = early.into_iter();
    loop {
        let received = match early.next() {
            Some(msg) => Some(msg),
            None => chan.recv()?,
        };
        match received {
            None | Some((Msg::Ready, _)) => {
                return Ok(Handshake {
                    pty,
                    network,
                    supervisor,
                })
            }
            Some((Msg::Listener, fd)) => {
                let listener = fd.context("the seccomp listener did not arrive")?;
                let supervisor = match &mut supervisor {
                    Some(s) => s,
                    None => supervisor.insert(Supervisor::new(launch.supervision)?),
                };
                supervisor.watch(listener, pid.as_raw())?;
            }
            Some((Msg::RuntimeHooks, _)) => {
                if let Some(hooks) = launch.hooks {
                    hooks.run_create_runtime(pid.as_raw())?;
                }
                chan.send(&Msg::HooksRan { pid: pid.as_raw() })?;
            }
            Some((Msg::PtyMaster, fd)) => {
                let master = fd.context("the terminal's master did not arrive")?;
                io::copy_window_size(master.as_fd());
                pty = Some(master);
                chan.send(&Msg::Continue)?;
            }
            Some((Msg::Failed { code, message }, _)) => {
                let _ = waitpid(pid, None);
                return Err(ChildFailed { code, message }.into());
            }
            Some((other, _)) => anyhow::bail!("unexpected message from the container: {other:?}"),
        }
    }
}

impl Started {
    /// The terminal's master side, for an engine's console socket; the caller relays it then.
    pub fn take_pty(&mut self) -> Option<OwnedFd> {
        self.pty.take()
    }

    /// Tells a child waiting before its start gate that its state is recorded, so it may
    /// outlive this process. Until then a child whose creator dies exits by itself.
    pub fn adopt(&mut self) -> Result<()> {
        match self.chan.take() {
            Some(chan) => chan.send(&Msg::Adopted),
            None => Ok(()),
        }
    }

    /// Leaves the container to whoever inherits it (an OCI `create` or `exec --detach`): the
    /// signal mask is restored and nobody here waits for it.
    pub fn release(self) {
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.old_mask), None);
    }

    /// Forwards signals (and the terminal) until the container's command ends; returns the status
    /// nook should exit with: its exit code, or 128+N when signal N killed it.
    pub fn wait(self, stdin: StdinMode) -> Result<i32> {
        self.wait_with(stdin, None)
    }

    /// Like [`Started::wait`], for a container that belongs to its terminal (a foreground
    /// `nook run`): a hangup is passed on, and a container still running [`HANGUP_GRACE`]
    /// later is killed, as a foreground process dies with its terminal. Its first process is
    /// the init of a pid namespace, which the kernel shields from signals it has no handler
    /// for, so the forwarded SIGHUP alone would not end it. Under `nohup` the hangup is
    /// only passed on.
    pub fn wait_foreground(self, stdin: StdinMode) -> Result<i32> {
        let grace = (!sys::hangup_ignored()).then_some(HANGUP_GRACE);
        self.wait_with(stdin, grace)
    }

    /// What root emulation's supervisor counted: final once the container is collected.
    pub fn emulated(&self) -> Option<std::sync::Arc<Counts>> {
        self.supervisor.as_ref().map(|s| s.counts())
    }

    /// Kills the container and collects it, for a start whose bookkeeping failed.
    pub fn kill(self) -> Result<i32> {
        let _ = nix::sys::signal::kill(self.pid, Signal::SIGKILL);
        self.wait(StdinMode::Ignore)
    }

    fn wait_with(self, stdin: StdinMode, hangup_grace: Option<Duration>) -> Result<i32> {
        let status = io::forward_until_exit(self.pid, &self.signals, self.pty, stdin, hangup_grace);
        if let Some(supervisor) = self.supervisor {
            supervisor.finish();
        }
        drop(self.network);
        if let Some(helper) = self.helper {
            helper.finish();
        }
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.old_mask), None);
        status
    }
}
