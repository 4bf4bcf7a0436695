//! slirp4netns started for one container, the fallback where pasta is missing: nook's child,
//! killed with the nook process that started it and when the container ends. Published ports
//! are added through its API socket, which lives only while nook adds them.

use std::io::{Read, Seek, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::ports::PortMap;
use super::{Plan, Running};
use crate::sys;

/// slirp4netns's own DNS forwarder inside the container (to the host's resolvers).
const DNS_FORWARD: &str = "10.0.2.3";

/// The host's resolvers the container can reach: slirp4netns translates its traffic to the
/// host's, but with `--disable-host-loopback` a resolver on the host's loopback is out of
/// reach, so such servers give way to slirp4netns's forwarder.
pub fn resolvers(host_resolv: &str) -> Vec<String> {
    let reachable: Vec<String> = host_resolv
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .filter(|s| s.parse::<IpAddr>().is_ok_and(|ip| !ip.is_loopback()))
        .map(String::from)
        .collect();
    if reachable.is_empty() {
        vec![DNS_FORWARD.to_string()]
    } else {
        reachable
    }
}

/// The API socket's directory, in the container's own directory (so that a nook killed while
/// it exists leaves it only there, for `nook rm`), removed when dropped.
struct SocketDir {
    path: PathBuf,
    /// Held open: the socket is reached as `/proc/self/fd/N/api.sock`, since the container's
    /// directory may be longer than a socket address can be (108 bytes).
    fd: OwnedFd,
}

impl SocketDir {
    fn create(parent: &Path) -> Result<SocketDir> {
        let path = parent.join("slirp4netns");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let fd = nix::fcntl::open(
            &path,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .with_context(|| format!("opening {}", path.display()))?;
        Ok(SocketDir { path, fd })
    }

    fn socket(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/api.sock", self.fd.as_raw_fd()))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub fn start(plan: &Plan, pid: i32) -> Result<Running> {
    if let Some(p) = plan
        .ports
        .iter()
        .find(|p| matches!(p.host_ip, Some(IpAddr::V6(_))))
    {
        bail!(
            "-p {}: slirp4netns forwards IPv4 host addresses only; publish on an IPv4 address \
             or install pasta (Debian/Ubuntu: `sudo apt-get install passt`)",
            p.describe()
        );
    }
    let parent = plan
        .state_dir
        .as_deref()
        .context("slirp4netns needs the container's directory for its API socket")?;
    let dir = SocketDir::create(parent)?;
    let socket = dir.socket();
    // What slirp4netns says goes to a file in memory, read only when it fails to start.
    let output = nix::sys::memfd::memfd_create(
        c"slirp4netns-output",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
    )
    .map(std::fs::File::from)
    .context("memfd_create for slirp4netns's output")?;
    let (mut ready_rx, ready_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map(|(r, w)| (std::fs::File::from(r), w))
        .context("pipe2 for slirp4netns's ready signal")?;
    // slirp4netns writes to this descriptor once the interface is up; it must survive the exec.
    nix::fcntl::fcntl(
        &ready_tx,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .context("fcntl on slirp4netns's ready pipe")?;
    let mut cmd = Command::new(&plan.program);
    cmd.args(["--configure", "--mtu=65520", "--disable-host-loopback"])
        // Relative to its working directory, which is the socket's.
        .arg("--api-socket=api.sock")
        .current_dir(&dir.path)
        .arg(format!("--ready-fd={}", ready_tx.as_raw_fd()))
        // slirp4netns enters the user namespace of `pid` first, then its network namespace.
        .arg(pid.to_string())
        .arg("tap0")
        .stdin(Stdio::null())
        .stdout(output.try_clone().context("dup of the memfd")?)
        .stderr(output.try_clone().context("dup of the memfd")?);
    sys::kill_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", plan.program.display()))?;
    drop(ready_tx);
    let running = Running {
        child,
        _output: None,
    };
    let mut ready = [0u8; 1];
    let up = matches!(ready_rx.read(&mut ready), Ok(1));
    let forwarded = if up {
        plan.ports.iter().try_for_each(|p| add_hostfwd(&socket, p))
    } else {
        Err(anyhow::anyhow!("it ended before the interface was up"))
    };
    if let Err(e) = forwarded {
        // Dropping it kills it, so that everything it said is in the file.
        drop(running);
        let said = said(output);
        bail!(
            "slirp4netns could not set up the container's network: {e:#}{}{}",
            if said.is_empty() {
                String::new()
            } else {
                format!(": {said}")
            },
            super::tun_hint()
        );
    }
    Ok(running)
}

/// The last lines of what slirp4netns wrote, for an error message.
fn said(mut output: std::fs::File) -> String {
    let mut text = String::new();
    let _ = output.rewind();
    let _ = output.read_to_string(&mut text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join("; ")
}

/// One port forward through the API socket: `add_hostfwd`, answered `{"return":…}` or
/// `{"error":{"desc":…}}`.
fn add_hostfwd(socket: &Path, port: &PortMap) -> Result<()> {
    let request = serde_json::json!({
        "execute": "add_hostfwd",
        "arguments": {
            "proto": port.proto.name(),
            "host_addr": port.host_ip.map_or("0.0.0.0".to_string(), |ip| ip.to_string()),
            "host_port": port.host_port.unwrap_or(port.container_port),
            "guest_port": port.container_port,
        }
    });
    let what = || {
        format!(
            "publishing {} through slirp4netns's API socket",
            port.describe()
        )
    };
    let mut stream = UnixStream::connect(socket).with_context(what)?;
    stream
        .write_all(request.to_string().as_bytes())
        .with_context(what)?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .with_context(what)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).with_context(what)?;
    let reply: serde_json::Value = serde_json::from_str(&reply)
        .with_context(|| format!("{}: the reply {reply:?} is not JSON", what()))?;
    if let Some(error) = reply.get("error") {
        let desc = error
            .get("desc")
            .and_then(|d| d.as_str())
            .unwrap_or("no description");
        bail!("{}: {desc}", what());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolvers_give_way_to_the_forwarder() {
        assert_eq!(
            resolvers("search x\nnameserver 10.1.1.1\nnameserver 127.0.0.53\n"),
            ["10.1.1.1"]
        );
        assert_eq!(resolvers("nameserver 127.0.0.53\n"), [DNS_FORWARD]);
        assert_eq!(resolvers(""), [DNS_FORWARD]);
    }
}
