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
    let pid = match sys::clone_process(libc::CLONE_NEWUSER | libc::CLONE_NEWNS)
        .context("clone(2) into a new user namespace")?
    {
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
