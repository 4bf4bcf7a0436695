//! Network modes beyond the host's: a private network namespace joined by a user-mode helper
//! (pasta from Debian `passt`), with published ports and a DNS forwarder.

mod pasta;
pub mod ports;

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

pub use pasta::{start, Running};
pub use ports::PortMap;

/// The address inside the container that pasta answers DNS on, forwarding to the host's
/// first resolver (podman uses the same link-local address).
pub const DNS_FORWARD: &str = "169.254.1.1";

/// The helper that connects a private network namespace to the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Helper {
    Pasta,
    Slirp4netns,
}

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// pasta, else slirp4netns.
    Any,
    Exactly(Helper),
}

/// A private network, decided before anything is created.
#[derive(Clone, Debug)]
pub struct Plan {
    pub helper: Helper,
    pub program: PathBuf,
    pub reason: String,
    pub ports: Vec<PortMap>,
    /// No default route on the host, which the pasta of Debian bookworm cannot start without.
    pub no_route: bool,
}

/// Chooses the helper, with the reason shown by `nook info` and kept in the metadata.
pub fn choose(want: Want) -> Result<(Helper, PathBuf, String)> {
    let pasta = on_path("pasta");
    let slirp = on_path("slirp4netns");
    match (want, pasta, slirp) {
        (Want::Any | Want::Exactly(Helper::Pasta), Some(p), _) => {
            Ok((Helper::Pasta, p, "pasta found on PATH".to_string()))
        }
        (Want::Exactly(Helper::Pasta), None, _) => bail!(
            "--network pasta: pasta is not on PATH; install it (Debian/Ubuntu: `sudo apt-get \
             install passt`), or use --network host"
        ),
        (Want::Exactly(Helper::Slirp4netns), _, _) | (Want::Any, None, Some(_)) => bail!(
            "nook does not drive slirp4netns yet; install pasta (Debian/Ubuntu: `sudo apt-get \
             install passt`) and use --network private, or use --network host"
        ),
        (_, None, None) => bail!(
            "a private network needs pasta or slirp4netns, and neither is on PATH; install one \
             (Debian/Ubuntu: `sudo apt-get install passt` or `sudo apt-get install \
             slirp4netns`), or use --network host"
        ),
    }
}

/// PATH alone decides, as for podman, so a user can hide or replace the helper.
fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Whether the host has a default route (IPv4 or IPv6). Without one pasta finds no
/// "routable interface" and refuses to start unless told what to use.
pub fn host_has_default_route() -> bool {
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let v4_default = v4
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1) == Some("00000000"));
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    let v6_default = v6.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 9 && f[0] == "0".repeat(32) && f[1] == "00" && f[9] != "lo"
    });
    v4_default || v6_default
}

/// The container's resolv.conf: the servers of `--dns`, else pasta's forwarder.
pub fn resolv_conf(dns: &[String]) -> String {
    let servers: Vec<&str> = if dns.is_empty() {
        vec![DNS_FORWARD]
    } else {
        dns.iter().map(String::as_str).collect()
    };
    servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect()
}

/// `/dev/net/tun` opened read-write, which pasta needs for its tap device.
pub fn tun_usable() -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map(drop)
}
