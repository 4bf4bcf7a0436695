//! The fuse backend's intermediate step, off the native-overlay fast path.
//!
//! fuse-overlayfs must run in the container's user and mount namespaces (so owners map and the
//! mount is the container's) but outside its pid namespace (so the container neither sees nor
//! kills it). So nook first clones a helper into a new user and mount namespace; the helper
//! mounts fuse-overlayfs on the root and clones the container with the remaining namespaces and
//! `CLONE_PARENT`, which makes the container nook's own child: signals, waiting and the sync
//! with the child work as on the fast path.
//!
//! ```text
//! nook:   clone(USER|NS) ─ write maps ─ MapsWritten ─►            ◄─ ContainerStarted{pid} ─ … container ends ─ close ─ reap
//! helper:                   wait ─ fuse-overlayfs -f ─ clone(PARENT|PID|UTS|IPC…) ─ wait for close ─ unmount ─ exit
//! ```
//! When nook dies, the helper and the container die with it (`PR_SET_PDEATHSIG`), fuse-overlayfs
//! dies with the helper, and its mount with the last process of the mount namespace.

use std::os::fd::{AsRawFd, RawFd};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::sync::{Channel, Msg};
use super::{child, clone_refused, root_path, ChildFailed, Target};
use crate::rootfs::RootfsPlan;
use crate::{rootfs::fuse, sys};

/// The helper process, as nook sees it.
pub(super) struct Helper {
    pid: Pid,
    chan: Channel,
}

impl Helper {
    /// Tells the helper the container has ended (by closing the channel) and waits while it
    /// unmounts fuse-overlayfs.
    pub(super) fn finish(self) {
        drop(self.chan);
        let _ = waitpid(self.pid, None);
    }

    fn kill(self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        self.finish();
    }
}

/// Starts the helper, which mounts the root and clones the container; returns the container's
/// pid once it exists. `flags` are the container's namespaces.
pub(super) fn start(ctx: child::Context<'_>, flags: libc::c_int) -> Result<(Pid, Helper)> {
    let Target::New { idmap, .. } = ctx.launch.target else {
        bail!("the fuse helper only builds new containers");
    };
    let idmap = idmap.context("the fuse backend needs an id mapping")?;
    let (ours, theirs) = Channel::pair()?;
    let pid = match sys::clone_process(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) {
        Ok(sys::CloneResult::Child) => {
            drop(ours);
            run(ctx, flags, theirs)
        }
        Ok(sys::CloneResult::Parent(pid)) => pid,
        Err(e) => return Err(clone_refused(e)),
    };
    drop(theirs);
    // The container's ends of the sync belong to the helper and the container now.
    drop(ctx);
    let helper = Helper { pid, chan: ours };
    let started = (|| -> Result<Pid> {
        idmap.write_for(pid)?;
        helper.chan.send(&Msg::MapsWritten)?;
        match helper.chan.recv()? {
            Some((Msg::ContainerStarted { pid }, _)) => Ok(Pid::from_raw(pid)),
            Some((Msg::Failed { code, message }, _)) => Err(ChildFailed { code, message }.into()),
            Some((other, _)) => bail!("unexpected message from the fuse helper: {other:?}"),
            None => bail!("the fuse helper died while mounting the container's root"),
        }
    })();
    match started {
        Ok(container) => Ok((container, helper)),
        Err(e) => {
            helper.kill();
            Err(e)
        }
    }
}

/// The helper process; never returns.
fn run(ctx: child::Context<'_>, flags: libc::c_int, chan: Channel) -> ! {
    let launch = ctx.launch;
    let result = (|| -> Result<()> {
        sys::die_with_parent().context("prctl(PR_SET_PDEATHSIG)")?;
        // The helper never execs: drop copies of nook's descriptors that other processes wait
        // on for end-of-file (`run -d`'s report pipe, the parent's end of the sync channel),
        // keeping those the container needs.
        let mut keep = vec![
            chan.as_raw_fd(),
            ctx.chan.as_raw_fd(),
            ctx.devnull.as_raw_fd(),
        ];
        keep.extend(ctx.gate.as_ref().map(|g| g.as_raw_fd()));
        keep.extend(ctx.waiting.as_ref().map(|w| w.as_raw_fd()));
        keep.extend((0..launch.preserve_fds).map(|i| 3 + i as RawFd));
        sys::close_inherited_fds(&keep).context("closing nook's descriptors in the fuse helper")?;
        chan.expect(Msg::MapsWritten)?;
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .context("making the mount namespace private (mount --make-rprivate /)")?;
        let Target::New {
            rootfs:
                RootfsPlan::Fuse {
                    lower,
                    upper,
                    work,
                    log,
                },
            ..
        } = launch.target
        else {
            bail!("the fuse helper was started for a root that is not fuse-overlayfs");
        };
        let root = root_path(launch.spec)?;
        let mounted = fuse::mount(&fuse::Layers {
            lower,
            upper,
            work,
            target: &root,
            log,
        })?;
        let container_flags = (flags & !(libc::CLONE_NEWUSER | libc::CLONE_NEWNS))
            | libc::CLONE_NEWNS
            | libc::CLONE_PARENT;
        let container = match sys::clone_process(container_flags) {
            // The container keeps copies of the helper's descriptors until its execve closes
            // them (all are close-on-exec).
            Ok(sys::CloneResult::Child) => child::run(ctx),
            Ok(sys::CloneResult::Parent(pid)) => pid,
            Err(e) => return Err(clone_refused(e)),
        };
        drop(ctx);
        chan.send(&Msg::ContainerStarted {
            pid: container.as_raw(),
        })?;
        // nook closes its end when the container has ended (or nook itself died).
        while let Ok(Some(_)) = chan.recv() {}
        mounted.unmount()
    })();
    match result {
        Ok(()) => sys::exit_now(0),
        Err(e) => {
            let _ = chan.send(&Msg::Failed {
                code: 125,
                message: format!("{e:#}"),
            });
            sys::exit_now(125)
        }
    }
}
