//! The typed messages parent and child exchange over a `SOCK_SEQPACKET` socket pair.
//!
//! The child's end is close-on-exec: when the container's command starts, the parent reads
//! end-of-file, which is how it knows the `execve` succeeded.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use anyhow::{Context, Result};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Msg {
    /// Parent → child: the id maps are written; the child is root in its namespace now.
    MapsWritten,
    /// Child → parent: the terminal's master side rides along with this message.
    PtyMaster,
    /// Parent → child: the terminal is set up on the parent's side; go on.
    Continue,
    /// Fuse helper → parent: fuse-overlayfs is mounted and the container (a child of nook, not
    /// of the helper) has this pid.
    ContainerStarted { pid: i32 },
    /// Child → parent: setting up the container failed; `code` is the exit status nook reports.
    Failed { code: i32, message: String },
    /// Child → parent: the namespaces exist and the mounts are made, `pivot_root` comes next:
    /// run the `createRuntime` (and legacy `prestart`) hooks, then send `Continue`.
    RuntimeHooks,
    /// Parent → child: the `createRuntime` hooks ran; `pid` is the child's pid as the host sees
    /// it, for the state the child's own hooks get.
    HooksRan { pid: i32 },
    /// Child → parent: all set up; the child now waits at the start gate (OCI `create`).
    Ready,
    /// Parent → child, after `Ready`: the container's state is recorded; the child may outlive
    /// the parent from now on. A child that gets end-of-file instead exits: its creator died
    /// before anyone could know of it.
    Adopted,
    /// Joining helper → parent: the process that runs in the container is `pid` (host view).
    Joined { pid: i32 },
    /// Child → parent: the seccomp listener of its filter rides along, for root emulation's
    /// supervisor.
    Listener,
}

pub struct Channel {
    fd: OwnedFd,
}

const MAX_MESSAGE: usize = 64 * 1024;

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Channel {
    /// A connected pair, both ends close-on-exec: (parent's, child's).
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .context("socketpair for the parent/child sync")?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    pub fn send(&self, msg: &Msg) -> Result<()> {
        self.send_with_fd(msg, None)
    }

    pub fn send_with_fd(&self, msg: &Msg, fd: Option<RawFd>) -> Result<()> {
        let data = serde_json::to_vec(msg)?;
        let iov = [IoSlice::new(&data)];
        let fds: Vec<RawFd> = fd.into_iter().collect();
        let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(&fds)]
        };
        sendmsg::<()>(
            self.fd.as_raw_fd(),
            &iov,
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .context("sending to the other nook process")?;
        Ok(())
    }

    /// The next message, with the descriptor it carried; `None` at end-of-file.
    pub fn recv(&self) -> Result<Option<(Msg, Option<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut cmsg_space = nix::cmsg_space!([RawFd; 1]);
        let (len, fd) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut fd = None;
                    for cmsg in msg.cmsgs().context("reading control messages")? {
                        if let ControlMessageOwned::ScmRights(fds) = cmsg {
                            for raw in fds {
                                // SAFETY: SCM_RIGHTS just installed this descriptor in our
                                // table; nothing else owns it.
                                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                                fd.get_or_insert(owned);
                            }
                        }
                    }
                    break (msg.bytes, fd);
                }
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e).context("receiving from the other nook process"),
            }
        };
        if len == 0 {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&buf[..len]).context("decoding a sync message")?;
        Ok(Some((msg, fd)))
    }

    /// Whether the other end is closed: its process died (or exec'd). Does not wait.
    pub fn peer_gone(&self) -> bool {
        let mut fds = [nix::poll::PollFd::new(
            self.fd.as_fd(),
            nix::poll::PollFlags::empty(),
        )];
        matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
            && fds[0]
                .revents()
                .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLHUP))
    }

    /// Waits for `expected`; anything else (or end-of-file) is an error.
    pub fn expect(&self, expected: Msg) -> Result<()> {
        match self.recv()? {
            Some((msg, _)) if msg == expected => Ok(()),
            Some((other, _)) => anyhow::bail!("expected {expected:?}, got {other:?}"),
            None => anyhow::bail!("the other nook process went away (waiting for {expected:?})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_descriptors_cross_the_pair() {
        let (a, b) = Channel::pair().unwrap();
        a.send(&Msg::MapsWritten).unwrap();
        assert_eq!(b.recv().unwrap().unwrap().0, Msg::MapsWritten);
        let file = std::fs::File::open("/dev/null").unwrap();
        b.send_with_fd(&Msg::PtyMaster, Some(file.as_raw_fd()))
            .unwrap();
        let (msg, fd) = a.recv().unwrap().unwrap();
        assert_eq!(msg, Msg::PtyMaster);
        assert!(fd.is_some());
        b.send(&Msg::Failed {
            code: 127,
            message: "x".into(),
        })
        .unwrap();
        assert!(matches!(
            a.recv().unwrap().unwrap().0,
            Msg::Failed { code: 127, .. }
        ));
        drop(b);
        assert!(a.recv().unwrap().is_none());
    }
}
