//! `-p [IP:]HOST:CTR[/tcp|udp]`, ranges, `-p CTR` and `-P`: what is published, and how pasta
//! is told.

use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};

use anyhow::{bail, Context, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One published port. `host_port` is `None` until a free one is picked (`-p CTR`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMap {
    pub host_ip: Option<IpAddr>,
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub proto: Proto,
}

fn port(text: &str, arg: &str) -> Result<u16> {
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => {
            bail!("-p {arg}: {text:?} is not a port (1-65535); use [IP:]HOST:CTR[/tcp|udp] or CTR")
        }
    }
}

/// `PORT` or `FIRST-LAST`, as the ports it names.
fn port_range(text: &str, arg: &str) -> Result<std::ops::RangeInclusive<u16>> {
    match text.split_once('-') {
        Some((first, last)) => {
            let (first, last) = (port(first, arg)?, port(last, arg)?);
            if first > last {
                bail!("-p {arg}: the range {text} ends before it starts");
            }
            Ok(first..=last)
        }
        None => port(text, arg).map(|p| p..=p),
    }
}

impl PortMap {
    /// One `-p` argument, a range giving one map per port.
    pub fn parse(arg: &str) -> Result<Vec<PortMap>> {
        let (spec, proto) = match arg.rsplit_once('/') {
            Some((s, "tcp")) => (s, Proto::Tcp),
            Some((s, "udp")) => (s, Proto::Udp),
            Some((_, other)) => bail!("-p {arg}: unknown protocol {other:?}: use tcp or udp"),
            None => (arg, Proto::Tcp),
        };
        // An IPv6 address is written in brackets, as podman wants it.
        let (host_ip, rest) = match spec.strip_prefix('[') {
            Some(v6) => {
                let (ip, rest) = v6
                    .split_once("]:")
                    .with_context(|| format!("-p {arg}: expected [IPV6]:HOST:CTR"))?;
                (Some(ip), rest)
            }
            None => {
                let parts: Vec<&str> = spec.split(':').collect();
                match parts.len() {
                    1 | 2 => (None, spec),
                    3 => (Some(parts[0]), &spec[parts[0].len() + 1..]),
                    _ => bail!("-p {arg}: use [IP:]HOST:CTR[/tcp|udp] or CTR"),
                }
            }
        };
        let host_ip = host_ip
            .filter(|ip| !ip.is_empty())
            .map(|ip| {
                ip.parse::<IpAddr>()
                    .with_context(|| format!("-p {arg}: {ip:?} is not an IP address"))
            })
            .transpose()?;
        let (host, container) = match rest.split_once(':') {
            Some(("", ctr)) => (None, port_range(ctr, arg)?),
            Some((host, ctr)) => (Some(port_range(host, arg)?), port_range(ctr, arg)?),
            None => (None, port_range(rest, arg)?),
        };
        if let Some(host) = &host {
            if host.len() != container.len() {
                bail!(
                    "-p {arg}: the host side names {} port(s) and the container side {}; give \
                     ranges of the same length",
                    host.len(),
                    container.len()
                );
            }
        }
        Ok(container
            .enumerate()
            .map(|(i, container_port)| PortMap {
                host_ip,
                host_port: host.as_ref().map(|h| h.start() + i as u16),
                container_port,
                proto,
            })
            .collect())
    }

    /// A port the image's config exposes (`80/tcp`, `53/udp`, `8080`), published on a free
    /// host port by `-P`.
    pub fn exposed(key: &str) -> Result<PortMap> {
        let (number, proto) = match key.split_once('/') {
            Some((n, "tcp")) => (n, Proto::Tcp),
            Some((n, "udp")) => (n, Proto::Udp),
            Some((_, other)) => bail!(
                "the image exposes {key:?}, whose protocol {other:?} cannot be published: \
                 publish its other ports with -p"
            ),
            None => (key, Proto::Tcp),
        };
        let container_port = match number.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => bail!("the image exposes {key:?}, which is not a port"),
        };
        Ok(PortMap {
            host_ip: None,
            host_port: None,
            container_port,
            proto,
        })
    }

    /// Picks a free host port for `-p CTR` by asking the kernel for one on the address.
    pub fn pick_host_port(&mut self) -> Result<u16> {
        if let Some(p) = self.host_port {
            return Ok(p);
        }
        let ip = self.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let picked = match self.proto {
            Proto::Tcp => TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()),
            Proto::Udp => UdpSocket::bind((ip, 0)).and_then(|s| s.local_addr()),
        }
        .with_context(|| format!("finding a free {} port on {ip}", self.proto.name()))?
        .port();
        self.host_port = Some(picked);
        Ok(picked)
    }

    /// pasta's `-t`/`-u` spec: `[ADDR/]HOST:CTR`.
    pub fn pasta_spec(&self) -> String {
        let host = self.host_port.unwrap_or(self.container_port);
        match self.host_ip {
            Some(ip) => format!("{ip}/{host}:{}", self.container_port),
            None => format!("{host}:{}", self.container_port),
        }
    }

    /// As `nook port` and the metadata show it: `80/tcp -> 127.0.0.1:8080`.
    pub fn describe(&self) -> String {
        let ip = match self.host_ip {
            Some(IpAddr::V6(ip)) => format!("[{ip}]"),
            Some(ip) => ip.to_string(),
            None => "0.0.0.0".to_string(),
        };
        format!(
            "{}/{} -> {ip}:{}",
            self.container_port,
            self.proto.name(),
            self.host_port.unwrap_or(self.container_port)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_podman_accepts() {
        let one = |arg: &str| {
            let mut maps = PortMap::parse(arg).unwrap();
            assert_eq!(maps.len(), 1, "{arg}");
            maps.remove(0)
        };
        let m = one("127.0.0.1:8080:80");
        assert_eq!(m.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            (m.host_port, m.container_port, m.proto),
            (Some(8080), 80, Proto::Tcp)
        );
        assert_eq!(m.pasta_spec(), "127.0.0.1/8080:80");
        let m = one("8080:80/udp");
        assert_eq!((m.host_ip, m.proto), (None, Proto::Udp));
        assert_eq!(m.pasta_spec(), "8080:80");
        let m = one("80");
        assert_eq!((m.host_port, m.container_port), (None, 80));
        let m = one("127.0.0.1::80");
        assert_eq!(m.host_port, None);
        let m = one("[::1]:8080:80");
        assert_eq!(m.host_ip, Some("::1".parse().unwrap()));
        assert!(PortMap::parse("0").is_err());
        assert!(PortMap::parse("80/sctp").is_err());
        assert!(PortMap::parse("a:b:c:d").is_err());
        assert!(PortMap::parse("x:8080:80").is_err());
    }

    #[test]
    fn ranges_give_one_map_per_port() {
        let maps = PortMap::parse("8000-8002:80-82/udp").unwrap();
        let pairs: Vec<_> = maps
            .iter()
            .map(|m| (m.host_port, m.container_port, m.proto))
            .collect();
        assert_eq!(
            pairs,
            [
                (Some(8000), 80, Proto::Udp),
                (Some(8001), 81, Proto::Udp),
                (Some(8002), 82, Proto::Udp)
            ]
        );
        let maps = PortMap::parse("127.0.0.1::90-91").unwrap();
        assert_eq!(maps.len(), 2);
        assert!(maps.iter().all(|m| m.host_port.is_none()));
        let err = PortMap::parse("8000-8002:80").unwrap_err().to_string();
        assert!(
            err.contains("3 port(s)") && err.contains("container side 1"),
            "{err}"
        );
        assert!(PortMap::parse("82-80").is_err());
    }

    #[test]
    fn exposed_ports_of_an_image_config() {
        let m = PortMap::exposed("53/udp").unwrap();
        assert_eq!(
            (m.container_port, m.proto, m.host_port),
            (53, Proto::Udp, None)
        );
        assert_eq!(PortMap::exposed("8080").unwrap().proto, Proto::Tcp);
        assert!(PortMap::exposed("132/sctp").is_err());
        assert!(PortMap::exposed("http").is_err());
    }
}
