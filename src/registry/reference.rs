//! Image references as `containers-transports(5)` and the distribution spec spell them:
//! `[HOST[:PORT]/]PATH[:TAG][@sha256:HEX]`. A first component counts as a host when it has a
//! `.` or a `:`, or is `localhost`; otherwise the name is short and registries.conf decides
//! where it comes from.

use std::fmt;

use anyhow::{bail, Result};

/// Docker Hub, as references name it and as its API is reached.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A reference as the user wrote it, split: `host` is None for a short name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub host: Option<String>,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// A fully qualified reference: a registry, a repository in it, and a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

fn valid_path_component(c: &str) -> bool {
    // [a-z0-9]+ separated by `.`, `_`, `__` or `-`s, as the distribution spec's grammar says.
    !c.is_empty()
        && c.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && c.as_bytes()[0].is_ascii_alphanumeric()
        && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
}

/// `name[:port]`: DNS labels (or an IPv4 address), or `[IPv6]`, and a numeric port.
fn valid_host(h: &str) -> bool {
    let (name_ok, port) = match h.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((ip, rest)) => (
            ip.parse::<std::net::Ipv6Addr>().is_ok(),
            match rest.strip_prefix(':') {
                Some(p) => Some(p),
                None if rest.is_empty() => None,
                None => return false,
            },
        ),
        None => {
            let (name, port) = match h.split_once(':') {
                Some((n, p)) => (n, Some(p)),
                None => (h, None),
            };
            let labels_ok = name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
            (labels_ok, port)
        }
    };
    let port_ok = port.map_or(true, |p| {
        !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
    });
    name_ok && port_ok
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.as_bytes()[0] != b'.'
        && t.as_bytes()[0] != b'-'
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `d` is `sha256:` and 64 lowercase hex digits (the only digest nook accepts).
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl Written {
    pub fn parse(text: &str) -> Result<Written> {
        let bad =
            |why: &str| -> Result<Written> { bail!("invalid image reference {text:?}: {why}") };
        let text = text.strip_prefix("docker://").unwrap_or(text);
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) if valid_digest(d) => (r, Some(d.to_string())),
            Some((_, d)) => return bad(&format!("{d:?} is not a sha256:HEX digest")),
            None => (text, None),
        };
        let (host, path) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first.to_string()), path)
            }
            _ => (None, rest),
        };
        // A tag is after the last `:` of the path (the host's port is split off already).
        let (path, tag) = match path.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => {
                if !valid_tag(t) {
                    return bad(&format!("{t:?} is not a valid tag"));
                }
                (p, Some(t.to_string()))
            }
            _ => (path, None),
        };
        if path.is_empty() || !path.split('/').all(valid_path_component) {
            return bad("a repository name is lowercase letters, digits and . _ - between slashes");
        }
        if let Some(h) = &host {
            if !valid_host(h) {
                return bad("the registry host is malformed");
            }
        }
        Ok(Written {
            host,
            path: path.to_string(),
            tag,
            digest,
        })
    }

    /// The image name a pull of this reference is stored under (see [`Reference::local_name`]).
    pub fn local_name(&self) -> String {
        self.qualify("x").local_name()
    }

    /// The reference under a registry (docker.io's single names get `library/`).
    pub fn qualify(&self, registry: &str) -> Reference {
        let repository = if registry == DOCKER_HUB && !self.path.contains('/') {
            format!("library/{}", self.path)
        } else {
            self.path.clone()
        };
        Reference {
            registry: registry.to_string(),
            repository,
            tag: self.tag.clone(),
            digest: self.digest.clone(),
        }
    }
}

impl Reference {
    /// What the registry's API is asked for: the digest when there is one, else the tag.
    pub fn api_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The `host[:port]` the API is reached at.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// `registry/repository` (what registries.conf's prefixes match and auth files key on).
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The image name nook stores a pull under: the repository's last component and the tag,
    /// or a short form of the digest (`debian:bookworm`, `img:sha256-0123456789ab`).
    pub fn local_name(&self) -> String {
        let last = self
            .repository
            .rsplit('/')
            .next()
            .unwrap_or(&self.repository);
        match (&self.tag, &self.digest) {
            (Some(tag), _) => format!("{last}:{tag}"),
            (None, Some(d)) => format!("{last}:sha256-{}", &d["sha256:".len()..][..12]),
            (None, None) => format!("{last}:latest"),
        }
    }

    /// The same repository with another registry (a mirror's location replacing a prefix).
    pub fn rebased(&self, from_prefix: &str, to_location: &str) -> Reference {
        let name = self.name();
        let rest = name.strip_prefix(from_prefix).unwrap_or("");
        let full = format!("{to_location}{rest}");
        let (registry, repository) = full.split_once('/').unwrap_or((&full, ""));
        Reference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: self.tag.clone(),
            digest: self.digest.clone(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        if self.tag.is_none() && self.digest.is_none() {
            write!(f, ":latest")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn short_and_qualified_names_split_as_podman_reads_them() {
        let w = Written::parse("debian:bookworm").unwrap();
        assert_eq!(w.host, None);
        let r = w.qualify(DOCKER_HUB);
        assert_eq!(r.to_string(), "docker.io/library/debian:bookworm");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.local_name(), "debian:bookworm");

        let r = Written::parse("localhost:5000/x/y:tag").unwrap();
        assert_eq!(r.host.as_deref(), Some("localhost:5000"));
        assert_eq!(r.path, "x/y");
        assert_eq!(r.tag.as_deref(), Some("tag"));

        let r = Written::parse(&format!("quay.io/org/img@{D}")).unwrap();
        let q = r.qualify("quay.io");
        assert_eq!(q.api_reference(), D);
        assert_eq!(q.local_name(), "img:sha256-0123456789ab");
        assert_eq!(
            Written::parse("busybox")
                .unwrap()
                .qualify(DOCKER_HUB)
                .api_reference(),
            "latest"
        );
        // A port is not a tag.
        assert_eq!(
            Written::parse("[::1]:5000/x").unwrap().host.as_deref(),
            Some("[::1]:5000")
        );
        let r = Written::parse("127.0.0.1:5000/busybox").unwrap();
        assert_eq!((r.host.as_deref(), r.tag), (Some("127.0.0.1:5000"), None));
    }

    #[test]
    fn malformed_references_are_refused_naming_them() {
        for bad in [
            "Debian",
            "x:",
            "a//b",
            "x@sha256:12",
            "x:-t",
            "../x",
            "x/../y",
        ] {
            let err = Written::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn a_mirror_location_replaces_the_prefix() {
        let r = Written::parse("debian:12").unwrap().qualify(DOCKER_HUB);
        let m = r.rebased("docker.io", "127.0.0.1:5000/hub");
        assert_eq!(m.to_string(), "127.0.0.1:5000/hub/library/debian:12");
    }
}
