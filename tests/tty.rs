//! `-t`: the command gets a terminal of its own, the size of the caller's.

mod common;

use common::Nook;

#[test]
fn tty_gives_the_command_a_terminal_of_the_callers_size() {
    let Some(t) = Nook::new() else { return };
    let out = t.run_in_pty(
        &[
            "run",
            "--rm",
            "-t",
            t.image(),
            "sh",
            "-c",
            "stty size; tty; test -t 0 && echo stdin-is-a-tty; echo TERM=$TERM",
        ],
        40,
        100,
    );
    out.assert_ok();
    let lines = out.lines();
    assert!(lines.contains(&"40 100"), "{out}");
    assert!(lines.iter().any(|l| l.starts_with("/dev/pts/")), "{out}");
    assert!(lines.contains(&"stdin-is-a-tty"), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("TERM=") && l.len() > "TERM=".len()),
        "{out}"
    );
}

#[test]
fn tty_run_reports_the_commands_exit_status() {
    let Some(t) = Nook::new() else { return };
    let out = t.run_in_pty(
        &["run", "--rm", "-t", t.image(), "sh", "-c", "exit 7"],
        24,
        80,
    );
    out.assert_code(7);
}

/// Closing the terminal of a foreground `nook run` (the kernel hangs up its session) ends the
/// container, with or without `-t`, and leaves nothing behind.
#[test]
fn closing_the_terminal_of_a_foreground_run_ends_its_container() {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let Some(t) = Nook::new() else { return };
    for (name, tty) in [("term-plain", false), ("term-tty", true)] {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        // Not to be inherited by what other tests spawn meanwhile: a copy of the master
        // elsewhere would keep the terminal from hanging up.
        for fd in [&pty.master, &pty.slave] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .expect("FD_CLOEXEC");
        }
        let r = t.runner();
        if r.switch {
            nix::unistd::fchown(
                &pty.slave,
                Some(nix::unistd::Uid::from_raw(r.uid)),
                Some(nix::unistd::Gid::from_raw(r.gid)),
            )
            .expect("chown the pty to the runner");
        }
        let mut args = vec!["run", "--rm", "--name", name];
        if tty {
            args.extend(["-i", "-t"]);
        }
        args.extend([t.image(), "sleep", "1000"]);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut cmd = t.command_for(t.bin(), &args, &[]);
        let slave = |fd: &std::os::fd::OwnedFd| Stdio::from(fd.try_clone().expect("dup pty"));
        cmd.stdin(slave(&pty.slave))
            .stdout(slave(&pty.slave))
            .stderr(slave(&pty.slave));
        // SAFETY: setsid and ioctl are async-signal-safe; nothing is allocated.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Nor may nook hold what other tests opened for their own terminals.
                libc::close_range(3, u32::MAX, 0);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn nook");
        drop(cmd);
        drop(pty.slave);
        let running = common::wait_until(Duration::from_secs(20), || {
            t.container(name)
                .is_some_and(|c| c["status"].as_str() == Some("running"))
        });
        assert!(running, "{name} never listed as running");
        // The terminal goes away: its session leader, nook, gets SIGHUP from the kernel.
        let closed = Instant::now();
        drop(pty.master);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for nook") {
                break status;
            }
            if closed.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("{name}: nook still running 20 s after its terminal closed");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "{name}: {status:?}");
        assert!(t.container(name).is_none(), "{name} still listed");
        t.assert_no_processes_left();
    }
}
