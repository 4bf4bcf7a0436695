//! The parent while the container runs: signals passed on, the terminal relayed, the exit
//! status collected.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::termios::{self, SetArg, Termios};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::sys;

/// What happens to nook's stdin while a terminal container runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StdinMode {
    /// Relay it to the container's terminal (`-i -t`).
    Relay,
    /// Leave it alone.
    Ignore,
}

/// Copies nook's terminal size (from stdin, else stdout) to the container's terminal.
pub(super) fn copy_window_size(master: BorrowedFd<'_>) {
    let size = sys::window_size(std::io::stdin().as_fd())
        .or_else(|_| sys::window_size(std::io::stdout().as_fd()));
    if let Ok(ws) = size {
        let _ = sys::set_window_size(master, &ws);
    }
}

/// Puts nook's terminal in raw mode while it relays keystrokes, and restores it however the
/// relay ends.
struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

fn exit_status(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

pub(super) fn forward_until_exit(
    pid: Pid,
    signals: &SignalFd,
    pty: Option<OwnedFd>,
    stdin_mode: StdinMode,
    hangup_grace: Option<Duration>,
) -> Result<i32> {
    let relay_stdin = pty.is_some() && stdin_mode == StdinMode::Relay;
    let _raw = relay_stdin.then(RawTerminal::enter).flatten();
    let mut master = pty.map(std::fs::File::from);
    let mut stdin_open = relay_stdin;
    let mut exit = None;
    // Set at a hangup when the container must end with its terminal.
    let mut kill_at: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if exit.is_some() && master.is_none() {
            break;
        }
        let stdin = std::io::stdin();
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        if let Some(m) = &master {
            fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
        }
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        // Once the command is gone, drain what its terminal still holds, then stop.
        let timeout = match (exit, kill_at) {
            (Some(_), _) => PollTimeout::from(100u16),
            (None, Some(at)) => {
                let left = at.saturating_duration_since(Instant::now()).as_millis();
                PollTimeout::from(left.min(u16::MAX as u128) as u16)
            }
            (None, None) => PollTimeout::NONE,
        };
        let ready = match poll(&mut fds, timeout) {
            Ok(n) => n,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e).context("poll"),
        };
        if ready == 0 && exit.is_some() {
            break;
        }
        if exit.is_none() && kill_at.is_some_and(|at| Instant::now() >= at) {
            let _ = kill(pid, Signal::SIGKILL);
            kill_at = None;
        }
        let revents: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);

        if revents[0] {
            while let Some(info) = signals.read_signal().context("reading signalfd")? {
                let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                    continue;
                };
                match sig {
                    Signal::SIGCHLD => {
                        if let Ok(status) = waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                            if let Some(code) = exit_status(status) {
                                exit = Some(code);
                            }
                        }
                    }
                    Signal::SIGWINCH if master.is_some() => {
                        copy_window_size(master.as_ref().expect("checked").as_fd());
                    }
                    Signal::SIGHUP => {
                        let _ = kill(pid, Signal::SIGHUP);
                        if let (Some(grace), None) = (hangup_grace, kill_at) {
                            kill_at = Some(Instant::now() + grace);
                        }
                    }
                    other => {
                        let _ = kill(pid, other);
                    }
                }
            }
        }
        let mut next = 1;
        if master.is_some() {
            if revents[next] {
                let m = master.as_mut().expect("checked");
                match m.read(&mut buf) {
                    Ok(0) | Err(_) => master = None,
                    Ok(n) => {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(&buf[..n]);
                        let _ = out.flush();
                    }
                }
            }
            next += 1;
        }
        if stdin_open && revents[next] {
            match std::io::stdin().lock().read(&mut buf) {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    // End of input: give the container's terminal an end-of-file (^D).
                    if let Some(m) = master.as_mut() {
                        let _ = m.write_all(b"\x04");
                    }
                }
                Ok(n) => {
                    if let Some(m) = master.as_mut() {
                        let _ = m.write_all(&buf[..n]);
                    }
                }
            }
        }
    }
    exit.context("lost the container's exit status")
}
