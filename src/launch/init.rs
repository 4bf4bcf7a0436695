//! `--init`: a tiny pid 1 that passes signals on to the command and reaps every orphan, so the
//! command gets default signal behaviour and zombies never pile up.

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::sys;

/// Signals pid 1 passes on to the command.
const FORWARDED: [Signal; 9] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGTSTP,
];

/// Waits for `command`, forwarding signals; exits with its status. Never returns.
pub(super) fn run(command: Pid) -> ! {
    let _ = sys::close_from(3);
    let mut waited = SigSet::empty();
    waited.add(Signal::SIGCHLD);
    for sig in FORWARDED {
        waited.add(sig);
    }
    // Blocked signals are queued for pid 1 even without a handler, and `wait` takes them.
    let _ = waited.thread_block();
    loop {
        match waited.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(code) = reap(command) {
                    sys::exit_now(code);
                }
            }
            Ok(sig) => {
                let _ = kill(command, sig);
            }
            Err(_) => {}
        }
    }
}

/// Reaps every exited child; returns the exit status nook should report once `command` is gone.
fn reap(command: Pid) -> Option<i32> {
    let mut result = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => result = Some(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == command => {
                result = Some(128 + sig as i32)
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return result,
            Ok(_) => {}
        }
    }
}
