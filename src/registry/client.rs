//! HTTP to one registry (the distribution spec's `/v2/` API), synchronous, over ureq with
//! rustls: TLS checked against the system's CAs plus `certs.d/HOST[:PORT]/*.crt` (the user's
//! `$XDG_CONFIG_HOME/containers/certs.d`, then `/etc/containers/certs.d`), as podman does;
//! plain HTTP or unverified TLS only for an insecure registry. Authentication follows the
//! registry's `WWW-Authenticate` challenge: Bearer (a token per scope from the realm it names,
//! anonymous or with Basic credentials) or Basic.

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;

use super::auth::Credentials;

/// A registry, reached: scheme, TLS, credentials and the tokens got so far.
pub struct Session {
    pub host: String,
    base: String,
    agent: ureq::Agent,
    creds: Option<Credentials>,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(key, value);
        rest = next.trim_start_matches([',', ' ']);
    }
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.remove("realm")?,
            service: params.remove("service"),
        }),
        _ => None,
    }
}

/// Name resolution that does not depend on glibc's NSS modules (which a static binary may
/// fail to load): IP literals and `localhost` are answered here, other names by getaddrinfo.
fn resolve(addr: &str) -> std::io::Result<Vec<SocketAddr>> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| std::io::Error::other(format!("no port in {addr}")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| std::io::Error::other(format!("bad port in {addr}")))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if bare.eq_ignore_ascii_case("localhost") {
        return Ok(vec![
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        ]);
    }
    Ok(addr.to_socket_addrs()?.collect())
}

fn config_home() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|d| !d.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })
}

/// The certs.d directories for `host` (`host:port` first matches podman's lookup).
fn certs_dirs(host: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(c) = config_home() {
        dirs.push(c.join("containers/certs.d").join(host));
    }
    dirs.push(PathBuf::from("/etc/containers/certs.d").join(host));
    dirs
}

fn add_pem_file(roots: &mut rustls::RootCertStore, path: &std::path::Path) -> Result<usize> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut n = 0;
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
    {
        let cert = cert.with_context(|| format!("reading certificates from {}", path.display()))?;
        if roots.add(cert).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

fn tls_config(host: &str, verify: bool) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?;
    if !verify {
        return Ok(Arc::new(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    if system.is_file() {
        add_pem_file(&mut roots, &system)?;
    }
    for dir in certs_dirs(host) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "crt"))
            .collect();
        files.sort();
        for f in files {
            add_pem_file(&mut roots, &f)?;
        }
    }
    Ok(Arc::new(
        builder.with_root_certificates(roots).with_no_client_auth(),
    ))
}

/// Accepts any certificate: for registries marked insecure, or `--tls-verify=false`.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn agent(host: &str, verify: bool, timeout: Duration) -> Result<ureq::Agent> {
    Ok(ureq::AgentBuilder::new()
        .tls_config(tls_config(host, verify)?)
        .resolver(resolve)
        .timeout_connect(timeout)
        .timeout_read(timeout)
        .timeout_write(timeout)
        .user_agent(concat!("nook/", env!("CARGO_PKG_VERSION")))
        .build())
}

/// A transport failure, said plainly (ureq's own text names the URL already).
fn transport(e: ureq::Transport) -> anyhow::Error {
    anyhow!("{e}")
}

/// What a request to the registry came back with, when it did not succeed.
pub enum Failure {
    /// An HTTP status with the registry's error text.
    Status(u16, String),
    Other(anyhow::Error),
}

impl Session {
    /// Reaches `host`: https (verified unless `insecure`), and for an insecure registry plain
    /// http when it does not speak TLS. Learns how it wants to be authenticated.
    pub fn open(
        host: &str,
        insecure: bool,
        creds: Option<Credentials>,
        timeout: Duration,
    ) -> Result<Session> {
        let mut schemes = vec![("https", agent(host, !insecure, timeout)?)];
        if insecure {
            schemes.push(("http", agent(host, false, timeout)?));
        }
        let mut last = None;
        for (scheme, agent) in schemes {
            let base = format!("{scheme}://{host}");
            match agent.get(&format!("{base}/v2/")).call() {
                Ok(_) => return Ok(Session::new(host, base, agent, creds, None)),
                Err(ureq::Error::Status(401, resp)) => {
                    let challenge = challenge_of(host, &resp)?;
                    return Ok(Session::new(host, base, agent, creds, Some(challenge)));
                }
                // Some registries answer /v2/ with 404 yet serve the API.
                Err(ureq::Error::Status(404, _)) => {
                    return Ok(Session::new(host, base, agent, creds, None))
                }
                Err(ureq::Error::Status(code, resp)) => {
                    bail!("{host}: /v2/ answered {code} {}", resp.status_text())
                }
                Err(ureq::Error::Transport(t)) => last = Some(transport(t)),
            }
        }
        let e = last.unwrap_or_else(|| anyhow!("no way to reach it"));
        Err(e.context(format!("cannot reach the registry {host}")))
    }

    fn new(
        host: &str,
        base: String,
        agent: ureq::Agent,
        creds: Option<Credentials>,
        challenge: Option<Challenge>,
    ) -> Session {
        Session {
            host: host.to_string(),
            base,
            agent,
            creds,
            challenge: Mutex::new(challenge),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Checks the credentials: `/v2/` answered with them (a Bearer registry's token service
    /// checks them when it hands out a token).
    pub fn check_login(&self) -> Result<()> {
        match self.send("", |agent, base| agent.get(&format!("{base}/v2/")), None) {
            Ok(_) => Ok(()),
            Err(Failure::Status(code, text)) => bail!("{}: /v2/ answered {code} {text}", self.host),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    /// `scheme://host`, which relative `Location`s are relative to.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn basic(&self) -> Option<String> {
        self.creds.as_ref().map(|c| {
            let raw = format!("{}:{}", c.username, c.secret);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        })
    }

    fn whose(&self) -> String {
        match &self.creds {
            Some(c) => format!("the credentials of {} (from {})", c.username, c.from),
            None => "anonymous access".into(),
        }
    }

    /// The Authorization header for `scope`, fetching a token when the registry wants one.
    fn authorization(&self, scope: &str, fresh: bool) -> Result<Option<String>> {
        let challenge = self.challenge.lock().expect("not poisoned").clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => match self.basic() {
                Some(b) => Ok(Some(b)),
                None => bail!(
                    "{} requires a user name and password: log in with `nook login {}`",
                    self.host,
                    self.host
                ),
            },
            Some(Challenge::Bearer { realm, service }) => {
                if !fresh {
                    if let Some(t) = self.tokens.lock().expect("not poisoned").get(scope) {
                        return Ok(Some(format!("Bearer {t}")));
                    }
                }
                let token = self.fetch_token(&realm, service.as_deref(), scope)?;
                self.tokens
                    .lock()
                    .expect("not poisoned")
                    .insert(scope.to_string(), token.clone());
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<String> {
        let mut req = self.agent.get(realm);
        if let Some(s) = service {
            req = req.query("service", s);
        }
        // Several scopes (a mount's source and target) are several parameters.
        for s in scope.split(' ').filter(|s| !s.is_empty()) {
            req = req.query("scope", s);
        }
        if let Some(b) = self.basic() {
            req = req.set("Authorization", &b);
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(code @ (401 | 403), _)) => bail!(
                "{}: the token service {realm} refused {} ({code}){}",
                self.host,
                self.whose(),
                if self.creds.is_some() {
                    ": wrong user name or password?"
                } else {
                    ": log in with `nook login`"
                }
            ),
            Err(ureq::Error::Status(code, r)) => {
                bail!(
                    "{}: the token service {realm} answered {code} {}",
                    self.host,
                    r.status_text()
                )
            }
            Err(ureq::Error::Transport(t)) => {
                return Err(transport(t)).with_context(|| format!("{}: getting a token", self.host))
            }
        };
        let mut body = Vec::new();
        resp.into_reader()
            .take(1 << 20)
            .read_to_end(&mut body)
            .with_context(|| format!("{}: reading the token", self.host))?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .with_context(|| format!("{}: the token service's answer is not JSON", self.host))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .with_context(|| format!("{}: the token service's answer has no token", self.host))
    }

    /// Sends a request built by `build` (called again for a retry) under `scope`; answers the
    /// registry's challenge once if it sends one.
    pub fn send(
        &self,
        scope: &str,
        build: impl Fn(&ureq::Agent, &str) -> ureq::Request,
        body: Option<&[u8]>,
    ) -> std::result::Result<ureq::Response, Failure> {
        let mut fresh = false;
        for attempt in 0..2 {
            let auth = self.authorization(scope, fresh).map_err(Failure::Other)?;
            let mut req = build(&self.agent, &self.base);
            if let Some(a) = &auth {
                req = req.set("Authorization", a);
            }
            let result = match body {
                Some(b) => req.send_bytes(b),
                None => req.call(),
            };
            match result {
                Ok(r) => return Ok(r),
                Err(ureq::Error::Status(401, resp)) if attempt == 0 => {
                    let challenge = challenge_of(&self.host, &resp).map_err(Failure::Other)?;
                    let same =
                        self.challenge.lock().expect("not poisoned").as_ref() == Some(&challenge);
                    if same && auth.is_some() && !matches!(challenge, Challenge::Bearer { .. }) {
                        return Err(Failure::Other(anyhow!(
                            "{} refused {}: wrong user name or password?",
                            self.host,
                            self.whose()
                        )));
                    }
                    *self.challenge.lock().expect("not poisoned") = Some(challenge);
                    fresh = true;
                }
                Err(ureq::Error::Status(401, _)) => {
                    return Err(Failure::Other(anyhow!(
                        "{} refused {} (401 Unauthorized){}",
                        self.host,
                        self.whose(),
                        if self.creds.is_none() {
                            format!(": log in with `nook login {}`", self.host)
                        } else {
                            ": wrong user name or password, or no access to this repository".into()
                        }
                    )))
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.status_text().to_string();
                    let mut body = String::new();
                    let _ = resp.into_reader().take(4096).read_to_string(&mut body);
                    let detail = registry_error(&body).unwrap_or(text);
                    return Err(Failure::Status(code, detail));
                }
                Err(ureq::Error::Transport(t)) => return Err(Failure::Other(transport(t))),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }
}

/// The challenge of a 401 answer; a 401 without one leaves nothing to answer.
fn challenge_of(host: &str, resp: &ureq::Response) -> Result<Challenge> {
    let Some(header) = resp.header("WWW-Authenticate") else {
        bail!(
            "{host} answered 401 Unauthorized without a WWW-Authenticate challenge: nook cannot \
             tell how to authenticate there"
        );
    };
    parse_challenge(header)
        .with_context(|| format!("{host}: unsupported authentication challenge {header:?}"))
}

/// The message of a distribution-spec error body (`{"errors":[{"code":…,"message":…}]}`).
fn registry_error(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let errors = v.get("errors")?.as_array()?;
    let parts: Vec<String> = errors
        .iter()
        .map(|e| {
            format!(
                "{}: {}",
                e.get("code").and_then(|c| c.as_str()).unwrap_or("error"),
                e.get("message").and_then(|m| m.as_str()).unwrap_or("")
            )
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_quotes_and_commas() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn loopback_names_resolve_without_nss() {
        assert_eq!(
            resolve("localhost:5000").unwrap()[0],
            SocketAddr::from(([127, 0, 0, 1], 5000))
        );
        assert_eq!(resolve("127.0.0.1:80").unwrap().len(), 1);
        assert_eq!(resolve("[::1]:443").unwrap()[0].port(), 443);
    }

    #[test]
    fn registry_errors_are_read() {
        let body = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
        assert_eq!(
            registry_error(body).unwrap(),
            "MANIFEST_UNKNOWN: manifest unknown"
        );
    }
}
