//! Running a piece of nook inside a user namespace with a given mapping: for work on files
//! owned by subordinate ids (unpacking an image, removing a container), which the caller cannot
//! touch from outside.

use anyhow::{Context, Result};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{Gid, Uid};

use super::sync::{Channel, Msg};
use crate::idmap::IdMapping;
use crate::sys;

/// The code a helper reports when its only failure was a reader that went away.
const BROKEN_PIPE: i32 = 128 + libc::SIGPIPE;

/// Runs `work` in a child process inside a new user (and mount) namespace with `mapping`, as
/// root there when the mapping has a root. Its error comes back as this function's error.
pub fn run_in_userns(mapping: &IdMapping, work: impl FnOnce() -> Result<()>) -> Result<()> {
    spawn_in_userns(mapping, work)?.wait()
}

/// A child started by [`spawn_in_userns`], running while the caller goes on.
pub struct InUserns {
    pid: nix::unistd::Pid,
    chan: Channel,
}

/// Starts `work` as [`run_in_userns`] does, but returns once the child's maps are written: the
/// caller works beside it (a pull downloads what the child applies) and then `wait`s. The
/// caller must be single-threaded until this returns.
pub fn spawn_in_userns(mapping: &IdMapping, work: impl FnOnce() -> Result<()>) -> Result<InUserns> {
    let (parent_chan, child_chan) = Channel::pair()?;
    let cloned = sys::clone_process(libc::CLONE_NEWUSER | libc::CLONE_NEWNS).map_err(|e| {
        let why = crate::security::outer::userns_refusal(e.raw_os_error().unwrap_or(0));
        let context = "clone(2) into a new user namespace";
        if why.is_empty() {
            anyhow::Error::new(e).context(context)
        } else {
            anyhow::Error::new(e).context(format!("{context}: {why}"))
        }
    })?;
    let pid = match cloned {
        sys::CloneResult::Child => {
            drop(parent_chan);
            let result = (|| -> Result<()> {
                sys::die_with_parent().context("prctl(PR_SET_PDEATHSIG)")?;
                child_chan.expect(Msg::MapsWritten)?;
                if mapping.maps_gid(0) {
                    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
                        .context("setresgid 0")?;
                }
                if mapping.maps_uid(0) {
                    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
                        .context("setresuid 0")?;
                }
                work()
            })();
            let code = match result {
                Ok(()) => 0,
                Err(e) => {
                    let _ = child_chan.send(&Msg::Failed {
                        code: if crate::fsutil::is_broken_pipe(&e) {
                            BROKEN_PIPE
                        } else {
                            1
                        },
                        message: format!("{e:#}"),
                    });
                    1
                }
            };
            sys::exit_now(code)
        }
        sys::CloneResult::Parent(pid) => pid,
    };
    drop(child_chan);
    let child = InUserns {
        pid,
        chan: parent_chan,
    };
    if let Err(e) = mapping
        .write_for(pid)
        .and_then(|()| child.chan.send(&Msg::MapsWritten))
    {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = child.reap();
        return Err(e);
    }
    Ok(child)
}

impl InUserns {
    fn reap(&self) -> Result<WaitStatus> {
        loop {
            match waitpid(self.pid, None) {
                Err(nix::Error::EINTR) => continue,
                other => return other.context("waitpid"),
            }
        }
    }

    /// Stops the child (the caller gave up on its work) and reaps it.
    pub fn kill(self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.reap();
    }

    /// Waits for the child; its error is this function's error.
    pub fn wait(self) -> Result<()> {
        let pid = self.pid;
        let outcome = self.chan.recv();
        if outcome.is_err() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        let status = self.reap()?;
        match outcome? {
            // Kept as an io error, so that the caller can tell it from a failure.
            Some((Msg::Failed { code, message }, _)) if code == BROKEN_PIPE => {
                Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)).context(message)
            }
            Some((Msg::Failed { message, .. }, _)) => anyhow::bail!("{message}"),
            Some((other, _)) => anyhow::bail!("unexpected message {other:?}"),
            None if status == WaitStatus::Exited(pid, 0) => Ok(()),
            None => anyhow::bail!("the helper process in the user namespace ended with {status:?}"),
        }
    }
}

/// Runs `work` in a child process that has joined the user and mount namespaces of the running
/// container whose first process is `pid`, as root there: its root directory is then the
/// container's root, so every path it uses resolves as the container's own processes see it.
/// Its error comes back as this function's error.
pub fn run_in_container(pid: i32, work: impl FnOnce() -> Result<()>) -> Result<()> {
    use std::os::fd::AsFd;
    let (parent_chan, child_chan) = Channel::pair()?;
    // Opened here, while the container is known to run: a failure names the cause.
    let open = |name: &str| {
        let path = format!("/proc/{pid}/ns/{name}");
        nix::fcntl::open(
            path.as_str(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .with_context(|| format!("opening {path} (is the container still running?)"))
    };
    let (user, mnt) = (open("user")?, open("mnt")?);
    let child = match sys::fork_process().context("fork of the helper")? {
        sys::CloneResult::Child => {
            drop(parent_chan);
            let result = (|| -> Result<()> {
                sys::die_with_parent().context("prctl(PR_SET_PDEATHSIG)")?;
                // Before it enters: the container's root, the same ids once it has, must not
                // ptrace it or reach its descriptors through /proc (the host's stdio, the
                // scratch file).
                sys::set_not_dumpable().context("prctl(PR_SET_DUMPABLE)")?;
                nix::sched::setns(user.as_fd(), nix::sched::CloneFlags::CLONE_NEWUSER)
                    .context("setns into the container's user namespace")?;
                nix::sched::setns(mnt.as_fd(), nix::sched::CloneFlags::CLONE_NEWNS)
                    .context("setns into the container's mount namespace")?;
                nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
                    .context("setresgid 0")?;
                nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
                    .context("setresuid 0")?;
                // A change of ids resets the flag to fs.suid_dumpable's value: set it again.
                sys::set_not_dumpable().context("prctl(PR_SET_DUMPABLE)")?;
                nix::unistd::chdir("/").context("chdir /")?;
                work()
            })();
            if let Err(e) = &result {
                let _ = child_chan.send(&Msg::Failed {
                    code: 1,
                    message: format!("{e:#}"),
                });
            }
            sys::exit_now(if result.is_ok() { 0 } else { 1 })
        }
        sys::CloneResult::Parent(pid) => pid,
    };
    drop(child_chan);
    drop((user, mnt));
    let outcome = parent_chan.recv();
    let status = loop {
        match waitpid(child, None) {
            Err(nix::Error::EINTR) => continue,
            other => break other.context("waitpid")?,
        }
    };
    match outcome? {
        Some((Msg::Failed { message, .. }, _)) => anyhow::bail!("{message}"),
        Some((other, _)) => anyhow::bail!("unexpected message {other:?}"),
        None if status == WaitStatus::Exited(child, 0) => Ok(()),
        None => anyhow::bail!("the helper process in the container ended with {status:?}"),
    }
}
