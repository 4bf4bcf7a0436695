//! pasta started for one container: in the foreground as nook's child, killed with the nook
//! process that started it (SIGKILL on its death) and when the container ends.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::ports::Proto;
use super::{Plan, Running, DNS_FORWARD};
use crate::sys;

fn args(plan: &Plan, pid: i32, pid_fd: i32) -> Vec<String> {
    let mut args: Vec<String> = [
        "--foreground",
        "--quiet",
        "--config-net",
        "--dns-forward",
        DNS_FORWARD,
        // No forwards from the container to the host's ports unless asked.
        "-T",
        "none",
        "-U",
        "none",
    ]
    .map(String::from)
    .to_vec();
    args.push("--pid".into());
    args.push(format!("/proc/self/fd/{pid_fd}"));
    for (proto, flag) in [(Proto::Tcp, "-t"), (Proto::Udp, "-u")] {
        let specs: Vec<String> = plan
            .ports
            .iter()
            .filter(|p| p.proto == proto)
            .map(|p| p.pasta_spec())
            .collect();
        if specs.is_empty() {
            args.push(flag.into());
            args.push("none".into());
        }
        for s in specs {
            args.push(flag.into());
            args.push(s);
        }
    }
    args.push(pid.to_string());
    args
}

/// Connects the network namespace of `pid` (mapped already) and returns once pasta has set it
/// up and listens on the published ports.
pub fn start(plan: &Plan, pid: i32) -> Result<Running> {
    let (mut ready_rx, ready_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map(|(r, w)| (std::fs::File::from(r), w))
        .context("pipe2 for pasta's pid")?;
    // pasta writes its pid to this descriptor once it is set up; it must survive the exec.
    nix::fcntl::fcntl(
        &ready_tx,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .context("fcntl on pasta's pid pipe")?;
    let mut cmd = Command::new(&plan.program);
    cmd.args(args(plan, pid, ready_tx.as_raw_fd()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    sys::kill_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", plan.program.display()))?;
    drop(ready_tx);
    let mut stderr = child.stderr.take();
    // One line, or end of file when pasta dies before it is ready.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while let Ok(1) = ready_rx.read(&mut byte) {
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    if line.is_empty() {
        let mut message = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = child.kill();
            let _ = e.read_to_string(&mut message);
        }
        let _ = child.wait();
        let tun_hint = super::tun_hint();
        // Measured with Debian bookworm's pasta (2023-03): no -a/-g/-i/--outbound-if4
        // combination starts it on a host without a route ("External interface not usable").
        let route_hint = if plan.no_route {
            "; the host has no default route, and this pasta cannot start without one: use \
             --network slirp4netns (Debian/Ubuntu: `sudo apt-get install slirp4netns`), add a \
             route (`ip route add default dev eth0`), install a newer passt, or use --network \
             host"
        } else {
            ""
        };
        bail!(
            "pasta could not set up the container's network: {}{tun_hint}{route_hint}",
            message.trim()
        );
    }
    Ok(Running {
        child,
        _output: stderr.map(|e| std::fs::File::from(OwnedFd::from(e))),
    })
}
