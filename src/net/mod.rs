//! Network modes beyond the host's: a private network namespace joined by a user-mode helper
//! (pasta from Debian `passt`, else slirp4netns), with published ports and a DNS forwarder.

mod pasta;
pub mod ports;
mod slirp4netns;

use std::path::PathBuf;
use std::process::Child;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

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
    /// The container's directory, where a helper keeps what it needs while it starts
    /// (slirp4netns's API socket); known once the container is planned.
    pub state_dir: Option<PathBuf>,
}

/// Chooses the helper, with the reason shown by `nook info` and kept in the metadata. On a
/// host without a default route (`no_route`) slirp4netns comes first: the pasta of Debian
/// bookworm refuses such a host whatever addresses it is given, while slirp4netns brings its
/// own (10.0.2.0/24) and forwards loopback ports all the same.
pub fn choose(want: Want, no_route: bool) -> Result<(Helper, PathBuf, String)> {
    let pasta = on_path("pasta");
    let slirp = on_path("slirp4netns");
    if let (Want::Any, true, Some(s)) = (want, no_route, &slirp) {
        return Ok((
            Helper::Slirp4netns,
            s.clone(),
            "the host has no default route, which pasta cannot start without; slirp4netns \
             can"
            .to_string(),
        ));
    }
    match (want, pasta, slirp) {
        (Want::Any | Want::Exactly(Helper::Pasta), Some(p), _) => {
            Ok((Helper::Pasta, p, "pasta found on PATH".to_string()))
        }
        (Want::Exactly(Helper::Pasta), None, _) => bail!(
            "--network pasta: pasta is not on PATH; install it (Debian/Ubuntu: `sudo apt-get \
             install passt`), or use --network host"
        ),
        (Want::Any, None, Some(s)) => Ok((
            Helper::Slirp4netns,
            s,
            "pasta is not on PATH; slirp4netns is".to_string(),
        )),
        (Want::Exactly(Helper::Slirp4netns), _, Some(s)) => {
            Ok((Helper::Slirp4netns, s, "--network slirp4netns".to_string()))
        }
        (Want::Exactly(Helper::Slirp4netns), _, None) => bail!(
            "--network slirp4netns: slirp4netns is not on PATH; install it (Debian/Ubuntu: \
             `sudo apt-get install slirp4netns`), use --network private for pasta, or use \
             --network host"
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

/// The container's resolv.conf: the servers of `--dns`, else pasta's forwarder, or for
/// slirp4netns the host's resolvers (`host_resolv`, the host's resolv.conf).
pub fn resolv_conf(dns: &[String], helper: Helper, host_resolv: &str) -> String {
    let servers: Vec<String> = match (dns.is_empty(), helper) {
        (false, _) => dns.to_vec(),
        (true, Helper::Pasta) => vec![DNS_FORWARD.to_string()],
        (true, Helper::Slirp4netns) => slirp4netns::resolvers(host_resolv),
    };
    servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect()
}

/// `resolv` with `--dns-search` and `--dns-option` applied as podman applies them: given search
/// domains replace the file's `search`/`domain` lines (`.` alone: none at all), given options
/// its `options` lines.
pub fn with_search_and_options(resolv: String, search: &[String], options: &[String]) -> String {
    if search.is_empty() && options.is_empty() {
        return resolv;
    }
    let mut out: String = resolv
        .lines()
        .filter(|l| {
            let word = l.split_whitespace().next().unwrap_or_default();
            !(!search.is_empty() && (word == "search" || word == "domain")
                || !options.is_empty() && word == "options")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    if !search.is_empty() && search != ["."] {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// The helper of a running private network; dropping it ends the helper.
pub struct Running {
    child: Child,
    /// Held, so that a late message of the helper's finds a reader rather than SIGPIPE.
    _output: Option<std::fs::File>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Connects the network namespace of `pid` (mapped already) through the plan's helper, and
/// returns once the helper has set it up and listens on the published ports.
pub fn start(plan: &Plan, pid: i32) -> Result<Running> {
    match plan.helper {
        Helper::Pasta => pasta::start(plan, pid),
        Helper::Slirp4netns => slirp4netns::start(plan, pid),
    }
}

/// Why a helper could not open its tap device, when that is the cause.
fn tun_hint() -> String {
    match tun_usable() {
        Err(e) => {
            format!(" (/dev/net/tun: {e}; an administrator can run `sudo chmod 0666 /dev/net/tun`)")
        }
        Ok(()) => String::new(),
    }
}

/// `/dev/net/tun` opened read-write, which pasta needs for its tap device.
pub fn tun_usable() -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_domains_and_options_replace_the_files_own() {
        let host = "domain corp\nsearch a.corp b.corp\nnameserver 10.0.0.1\noptions ndots:1\n";
        assert_eq!(with_search_and_options(host.into(), &[], &[]), host);
        assert_eq!(
            with_search_and_options(
                host.into(),
                &["x.test".into()],
                &["ndots:3".into(), "rotate".into()]
            ),
            "nameserver 10.0.0.1\nsearch x.test\noptions ndots:3 rotate\n"
        );
        assert_eq!(
            with_search_and_options(host.into(), &[".".into()], &[]),
            "nameserver 10.0.0.1\noptions ndots:1\n"
        );
    }
}
