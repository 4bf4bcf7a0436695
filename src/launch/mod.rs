//! The launch: one `clone` into all the container's namespaces, then the parent (outside, the
//! user's uid) and the child (root inside, soon the container) each play their part.
//!
//! ```text
//! parent: block signals ─ clone ─ write id maps ─ MapsWritten ─► [PtyMaster ◄─ / Continue ─►] ─ EOF = exec'd
//! child:                          compile seccomp ─ wait ─ mounts, pivot ─ tty ─ caps, user, nnp, seccomp ─ execve
//! ```

mod child;
mod helper;
mod init;
mod io;
mod sync;
mod userns;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::idmap::IdMapping;
use crate::rootfs::{GeneratedFile, RootfsPlan};
use crate::sys;

pub use io::StdinMode;
use sync::{Channel, Msg};
pub use userns::run_in_userns;

/// Setting up the container failed in the child, or its command could not be run.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ChildFailed {
    /// The status nook exits with: 125 for a setup failure, 126 when the command cannot be run,
    /// 127 when it does not exist.
    pub code: i32,
    pub message: String,
}

/// Everything the launch needs; the spec says what the container is, the rest how to make it.
pub struct Launch<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a RootfsPlan,
    /// Files nook writes into the container (hostname, hosts, resolv.conf), kept in memory.
    pub files: &'a [GeneratedFile],
    pub idmap: &'a IdMapping,
    /// Run a tiny init as pid 1 with the command as its child.
    pub init: bool,
    /// Pass nook's stdin on (`-i`); otherwise the container reads `/dev/null`.
    pub keep_stdin: bool,
    /// Kill the container if the nook process that started it dies.
    pub die_with_parent: bool,
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

/// A container whose command is running.
pub struct Started {
    pub pid: Pid,
    pty: Option<OwnedFd>,
    signals: SignalFd,
    old_mask: SigSet,
    /// The fuse backend's helper, which holds the root's fuse-overlayfs mount.
    helper: Option<helper::Helper>,
}

fn namespace_flags(spec: &Spec) -> libc::c_int {
    let mut flags = 0;
    for ns in spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
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

    let flags = namespace_flags(launch.spec);
    let cloned = if matches!(launch.rootfs, RootfsPlan::Fuse { .. }) {
        helper::start(launch, flags, child_chan, devnull, old_mask).map(|(pid, h)| (pid, Some(h)))
    } else {
        match sys::clone_process(flags) {
            Ok(sys::CloneResult::Child) => {
                drop(parent_chan);
                drop(signals);
                child::run(launch, child_chan, devnull, old_mask)
            }
            Ok(sys::CloneResult::Parent(pid)) => {
                drop(child_chan);
                drop(devnull);
                Ok((pid, None))
            }
            Err(e) => Err(clone_refused(e)),
        }
    };
    let (pid, helper) = match cloned {
        Ok(c) => c,
        Err(e) => {
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
            return Err(e);
        }
    };
    let maps_written = helper.is_some();
    let started = Started {
        pid,
        pty: None,
        signals,
        old_mask,
        helper,
    };
    match handshake(launch, &parent_chan, pid, maps_written) {
        Ok(pty) => Ok(Started { pty, ..started }),
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
    let hint = match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::ENOSPC) | Some(libc::EUSERS) => {
            ": unprivileged user namespaces seem disabled here; an administrator can enable them \
             with `sysctl -w user.max_user_namespaces=15000` (and on Debian/Ubuntu kernels \
             `kernel.unprivileged_userns_clone=1`; on Ubuntu 23.10+ see \
             `kernel.apparmor_restrict_unprivileged_userns`)"
        }
        _ => "",
    };
    anyhow::anyhow!("clone(2) into new namespaces failed: {err}{hint}")
}

/// The parent's side of the sync: maps, terminal, then end-of-file once the command runs.
fn handshake(
    launch: &Launch<'_>,
    chan: &Channel,
    pid: Pid,
    maps_written: bool,
) -> Result<Option<OwnedFd>> {
    // With the fuse helper the container lives in the helper's user namespace, mapped already.
    if !maps_written {
        launch.idmap.write_for(pid)?;
    }
    chan.send(&Msg::MapsWritten)?;
    let mut pty = None;
    loop {
        match chan.recv()? {
            None => return Ok(pty),
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
    /// Forwards signals (and the terminal) until the container's command ends; returns the status
    /// nook should exit with: its exit code, or 128+N when signal N killed it.
    pub fn wait(self, stdin: StdinMode) -> Result<i32> {
        let status = io::forward_until_exit(self.pid, &self.signals, self.pty, stdin);
        if let Some(helper) = self.helper {
            helper.finish();
        }
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.old_mask), None);
        status
    }
}
