//! Credentials, from the files podman and skopeo read, in their order: `$REGISTRY_AUTH_FILE`,
//! `$XDG_RUNTIME_DIR/containers/auth.json`, `$XDG_CONFIG_HOME/containers/auth.json`
//! (`~/.config/...`), `~/.docker/config.json`. In each, a credential helper named for the host
//! (`credHelpers`) comes first, then `auths` entries (the most specific `host/path` key first);
//! a file's `credsStore` helper serves hosts no file names. `nook login` writes the file podman
//! writes: `$REGISTRY_AUTH_FILE`, else `$XDG_RUNTIME_DIR/containers/auth.json`, mode 0600.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::{Map, Value};

/// A user name and a secret for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub secret: String,
    /// Where they came from (for error messages): a file, or a helper.
    pub from: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({} from {})", self.username, self.from)
    }
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn home() -> Option<PathBuf> {
    env_path("HOME")
}

/// The files read for credentials, in order.
pub fn auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    files.extend(env_path("REGISTRY_AUTH_FILE"));
    files.extend(env_path("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
    files.extend(
        env_path("XDG_CONFIG_HOME")
            .or_else(|| home().map(|h| h.join(".config")))
            .map(|d| d.join("containers/auth.json")),
    );
    files.extend(home().map(|h| h.join(".docker/config.json")));
    files
}

/// The file `nook login` and `logout` write.
pub fn login_file() -> Result<PathBuf> {
    env_path("REGISTRY_AUTH_FILE")
        .or_else(|| env_path("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")))
        .or_else(|| {
            env_path("XDG_CONFIG_HOME")
                .or_else(|| home().map(|h| h.join(".config")))
                .map(|d| d.join("containers/auth.json"))
        })
        .context("no place for credentials: set REGISTRY_AUTH_FILE, XDG_RUNTIME_DIR or HOME")
}

/// The keys an auths entry for `name` (`host/repo/path`) may have, most specific first; Docker
/// Hub is also keyed by its old index URL.
fn keys_for(name: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cut = name.to_string();
    loop {
        keys.push(cut.clone());
        match cut.rfind('/') {
            Some(i) => cut.truncate(i),
            None => break,
        }
    }
    if cut == "docker.io" || cut == "registry-1.docker.io" {
        keys.push("https://index.docker.io/v1/".into());
        keys.push("index.docker.io".into());
    }
    keys
}

fn read_file(path: &PathBuf) -> Result<Option<Map<String, Value>>> {
    match std::fs::read(path) {
        Ok(data) => match serde_json::from_slice(&data) {
            Ok(Value::Object(m)) => Ok(Some(m)),
            Ok(_) => bail!("{}: not a JSON object", path.display()),
            Err(e) => Err(e).with_context(|| format!("parsing {}", path.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// An auths entry: `auth` (base64 of `user:secret`), or `username`/`password`, or an
/// `identitytoken`.
fn entry_credentials(entry: &Value, from: String) -> Result<Option<Credentials>> {
    if let Some(auth) = entry
        .get("auth")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .with_context(|| format!("{from}: the \"auth\" value is not base64"))?;
        let text = String::from_utf8(decoded)
            .with_context(|| format!("{from}: the \"auth\" value is not text"))?;
        let (user, secret) = text
            .split_once(':')
            .with_context(|| format!("{from}: the \"auth\" value is not user:password"))?;
        return Ok(Some(Credentials {
            username: user.to_string(),
            secret: secret.to_string(),
            from,
        }));
    }
    if let (Some(u), Some(p)) = (
        entry.get("username").and_then(Value::as_str),
        entry.get("password").and_then(Value::as_str),
    ) {
        return Ok(Some(Credentials {
            username: u.into(),
            secret: p.into(),
            from,
        }));
    }
    Ok(None)
}

/// Asks `docker-credential-HELPER get` for the credentials of `host`; None when it has none.
fn from_helper(helper: &str, host: &str) -> Result<Option<Credentials>> {
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running the credential helper {program}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(host.as_bytes());
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("running the credential helper {program}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // The protocol's answer for "none stored".
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        bail!(
            "the credential helper {program} failed for {host}: {}{}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_str(&stdout)
        .with_context(|| format!("{program} get {host}: its answer is not JSON"))?;
    let user = v.get("Username").and_then(Value::as_str).unwrap_or("");
    let secret = v.get("Secret").and_then(Value::as_str).unwrap_or("");
    if secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: user.into(),
        secret: secret.into(),
        from: program,
    }))
}

/// The credentials for `name` (`host/repository`) from the first source that has them.
pub fn lookup(name: &str) -> Result<Option<Credentials>> {
    let host = name.split('/').next().unwrap_or(name);
    let keys = keys_for(name);
    let mut store = None;
    for path in auth_files() {
        let Some(file) = read_file(&path)? else {
            continue;
        };
        if let Some(helper) = file
            .get("credHelpers")
            .and_then(|h| h.get(host))
            .and_then(Value::as_str)
        {
            if let Some(c) = from_helper(helper, host)? {
                return Ok(Some(c));
            }
        }
        if let Some(auths) = file.get("auths").and_then(Value::as_object) {
            for key in &keys {
                let found = auths.get(key).or_else(|| {
                    // Keys may be written as URLs (`https://host/v2/`).
                    auths.iter().find_map(|(k, v)| {
                        let bare = k
                            .trim_start_matches("https://")
                            .trim_start_matches("http://")
                            .trim_end_matches('/')
                            .trim_end_matches("/v2")
                            .trim_end_matches("/v1");
                        (bare == key).then_some(v)
                    })
                });
                if let Some(entry) = found {
                    if let Some(c) = entry_credentials(entry, path.display().to_string())? {
                        return Ok(Some(c));
                    }
                }
            }
        }
        if store.is_none() {
            store = file
                .get("credsStore")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
        }
    }
    match store {
        Some(helper) => from_helper(&helper, host),
        None => Ok(None),
    }
}

/// Records credentials for `host` in the login file (mode 0600), keeping its other entries.
pub fn save(host: &str, username: &str, secret: &str) -> Result<PathBuf> {
    let path = login_file()?;
    let mut file = read_file(&path)?.unwrap_or_default();
    let auths = file
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(auths) = auths else {
        bail!("{}: \"auths\" is not an object", path.display());
    };
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}"));
    auths.insert(host.to_string(), serde_json::json!({ "auth": auth }));
    write_private(&path, &Value::Object(file))?;
    Ok(path)
}

/// Removes the credentials for `host` from the login file; false when it had none.
pub fn remove(host: &str) -> Result<bool> {
    let path = login_file()?;
    let Some(mut file) = read_file(&path)? else {
        return Ok(false);
    };
    let removed = file
        .get_mut("auths")
        .and_then(Value::as_object_mut)
        .is_some_and(|a| a.remove(host).is_some());
    if removed {
        write_private(&path, &Value::Object(file))?;
    }
    Ok(removed)
}

fn write_private(path: &PathBuf, value: &Value) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        crate::fsutil::create_private_dir(dir)?;
    }
    // Created 0600 from the start, so the secret is never readable by others, then renamed
    // over the old file so that a reader sees the old or the new one whole.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(value)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_go_from_the_repository_up_to_the_host() {
        assert_eq!(
            keys_for("127.0.0.1:5000/a/b"),
            ["127.0.0.1:5000/a/b", "127.0.0.1:5000/a", "127.0.0.1:5000"]
        );
        assert!(keys_for("docker.io/library/debian")
            .contains(&"https://index.docker.io/v1/".to_string()));
    }

    #[test]
    fn entries_decode_auth_and_username_password() {
        let c = entry_credentials(&serde_json::json!({"auth": "dTpwOnc="}), "f".into())
            .unwrap()
            .unwrap();
        assert_eq!((c.username.as_str(), c.secret.as_str()), ("u", "p:w"));
        let c = entry_credentials(
            &serde_json::json!({"username": "a", "password": "b"}),
            "f".into(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.secret, "b");
        assert!(entry_credentials(&serde_json::json!({"auth": "%%"}), "f".into()).is_err());
        assert!(entry_credentials(&serde_json::json!({}), "f".into())
            .unwrap()
            .is_none());
    }
}
