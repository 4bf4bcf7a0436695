//! registries.conf (version 2, `containers-registries.conf(5)`): where short names are looked
//! for, their aliases, and per-registry mirrors, `insecure` and `blocked`.
//!
//! Files, as podman reads them: `$CONTAINERS_REGISTRIES_CONF`, else the user's
//! `$XDG_CONFIG_HOME/containers/registries.conf` if it exists, else
//! `/etc/containers/registries.conf`; then the drop-ins (`*.conf` in `registries.conf.d`, in
//! name order): the system's and the user's after the system file, only the user's after the
//! user's file. Later files override single settings; `[[registry]]` tables replace one with
//! the same prefix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::reference::{Reference, Written, DOCKER_HUB};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct File {
    #[serde(default)]
    unqualified_search_registries: Option<Vec<String>>,
    #[serde(default)]
    short_name_mode: Option<String>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    #[serde(default)]
    registry: Vec<RegistryTable>,
    /// Version 1's `[registries.search]` tables: recognised to refuse them clearly.
    #[serde(default)]
    registries: Option<toml::Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RegistryTable {
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<MirrorTable>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct MirrorTable {
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    pull_from_mirror: Option<String>,
}

/// One `[[registry]]`, resolved: what it matches and where pulls of it go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registry {
    pub prefix: String,
    pub location: String,
    pub insecure: bool,
    pub blocked: bool,
    pub mirrors: Vec<Mirror>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    pub location: String,
    pub insecure: bool,
    /// Pulls by tag may use it (`pull-from-mirror` not `digest-only`).
    pub by_tag: bool,
    /// Pulls by digest may use it (`pull-from-mirror` not `tag-only`).
    pub by_digest: bool,
}

/// Where one pull attempt goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub reference: Reference,
    pub insecure: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Conf {
    pub search: Vec<String>,
    pub short_name_mode: Option<String>,
    pub aliases: BTreeMap<String, String>,
    pub registries: Vec<Registry>,
    pub files: Vec<PathBuf>,
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

fn drop_ins(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf") && p.is_file())
        .collect();
    files.sort();
    files
}

impl Conf {
    /// Reads the files podman reads, in its order.
    pub fn load() -> Result<Conf> {
        let user_dir = config_home().map(|d| d.join("containers"));
        let user_file = user_dir.as_ref().map(|d| d.join("registries.conf"));
        let mut files = Vec::new();
        let system = Path::new("/etc/containers");
        if let Some(path) = std::env::var_os("CONTAINERS_REGISTRIES_CONF").filter(|p| !p.is_empty())
        {
            files.push(PathBuf::from(path));
        } else if let Some(user) = user_file.filter(|f| f.exists()) {
            files.push(user);
        } else {
            files.push(system.join("registries.conf"));
            files.extend(drop_ins(&system.join("registries.conf.d")));
        }
        if let Some(dir) = &user_dir {
            files.extend(drop_ins(&dir.join("registries.conf.d")));
        }
        let mut conf = Conf::default();
        for path in files {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            conf.merge(&text)
                .with_context(|| format!("registries configuration {}", path.display()))?;
            conf.files.push(path);
        }
        Ok(conf)
    }

    pub fn merge(&mut self, text: &str) -> Result<()> {
        let file: File = toml::from_str(text).context("parsing it as TOML")?;
        if file.registries.is_some() {
            bail!(
                "it is in version 1 of the format ([registries.search]); nook reads version 2 \
                 (unqualified-search-registries, [[registry]]): see containers-registries.conf(5)"
            );
        }
        if let Some(search) = file.unqualified_search_registries {
            self.search = search;
        }
        if let Some(mode) = file.short_name_mode {
            if !matches!(mode.as_str(), "enforcing" | "permissive" | "disabled") {
                bail!("short-name-mode {mode:?}: use enforcing, permissive or disabled");
            }
            self.short_name_mode = Some(mode);
        }
        self.aliases.extend(file.aliases);
        for table in file.registry {
            let prefix = match (&table.prefix, &table.location) {
                (Some(p), _) if !p.is_empty() => p.clone(),
                (_, Some(l)) if !l.is_empty() => l.clone(),
                _ => bail!("a [[registry]] table has neither prefix nor location"),
            };
            if prefix.starts_with("*.") {
                // Wildcard subdomains match hosts only; kept as written.
            } else {
                Written::parse(&format!("{prefix}/x"))
                    .or_else(|_| Written::parse(&prefix))
                    .with_context(|| format!("[[registry]] prefix {prefix:?}"))?;
            }
            let location = table.location.clone().unwrap_or_else(|| prefix.clone());
            let mirrors = table
                .mirror
                .iter()
                .map(|m| {
                    let pull = m.pull_from_mirror.as_deref().unwrap_or("all");
                    if !matches!(pull, "all" | "digest-only" | "tag-only") {
                        bail!("mirror {}: pull-from-mirror {pull:?}: use all, digest-only or tag-only", m.location);
                    }
                    Ok(Mirror {
                        location: m.location.clone(),
                        insecure: m.insecure,
                        by_tag: !table.mirror_by_digest_only && pull != "digest-only",
                        by_digest: pull != "tag-only",
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let registry = Registry {
                prefix,
                location,
                insecure: table.insecure,
                blocked: table.blocked,
                mirrors,
            };
            self.registries.retain(|r| r.prefix != registry.prefix);
            self.registries.push(registry);
        }
        Ok(())
    }

    /// The `[[registry]]` whose prefix matches `name` (`host/repo`) longest.
    pub fn registry_for(&self, name: &str) -> Option<&Registry> {
        self.registries
            .iter()
            .filter(|r| prefix_matches(&r.prefix, name))
            .max_by_key(|r| r.prefix.len())
    }

    /// The fully qualified references a written one may stand for, in the order to try them:
    /// itself when qualified; else its alias, or each search registry (docker.io when the
    /// files name none).
    pub fn candidates(&self, written: &Written) -> Result<Vec<Reference>> {
        if let Some(host) = &written.host {
            return Ok(vec![written.qualify(host)]);
        }
        if self.short_name_mode.as_deref() != Some("disabled") {
            if let Some(target) = self.aliases.get(&written.path) {
                let alias = Written::parse(target)
                    .with_context(|| format!("alias {:?} = {target:?}", written.path))?;
                let Some(host) = &alias.host else {
                    bail!(
                        "alias {:?} = {target:?} is not fully qualified",
                        written.path
                    );
                };
                let mut r = alias.qualify(host);
                if written.tag.is_some() || written.digest.is_some() {
                    r.tag = written.tag.clone();
                    r.digest = written.digest.clone();
                }
                return Ok(vec![r]);
            }
        }
        let search = if self.search.is_empty() && self.files.is_empty() {
            vec![DOCKER_HUB.to_string()]
        } else {
            self.search.clone()
        };
        if search.is_empty() {
            bail!(
                "{:?} is a short name and no unqualified-search-registries are configured (in {}): \
                 write the registry, as in docker.io/library/{}",
                written.path,
                self.files_list(),
                written.path
            );
        }
        Ok(search.iter().map(|host| written.qualify(host)).collect())
    }

    fn files_list(&self) -> String {
        if self.files.is_empty() {
            return "no file".into();
        }
        self.files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Where to pull `reference` from, in order: its registry's mirrors (those allowed for a
    /// tag or a digest pull), then its location. A blocked registry is an error.
    pub fn sources(&self, reference: &Reference, insecure_flag: bool) -> Result<Vec<Source>> {
        let name = reference.name();
        let Some(registry) = self.registry_for(&name) else {
            return Ok(vec![Source {
                reference: reference.clone(),
                insecure: insecure_flag,
            }]);
        };
        if registry.blocked {
            bail!(
                "{reference}: registry {} is blocked in registries.conf",
                registry.prefix
            );
        }
        let by_digest = reference.digest.is_some();
        let mut out: Vec<Source> = registry
            .mirrors
            .iter()
            .filter(|m| if by_digest { m.by_digest } else { m.by_tag })
            .map(|m| Source {
                reference: reference.rebased(&registry.prefix, &m.location),
                insecure: m.insecure || insecure_flag,
            })
            .collect();
        out.push(Source {
            reference: reference.rebased(&registry.prefix, &registry.location),
            insecure: registry.insecure || insecure_flag,
        });
        Ok(out)
    }

    /// Whether pushes and pulls to `host` may skip TLS verification (or use plain HTTP).
    pub fn insecure_host(&self, host: &str) -> bool {
        self.registry_for(&format!("{host}/"))
            .is_some_and(|r| r.insecure)
    }
}

/// containers-registries.conf(5): a prefix matches a name when it is the name, or the name
/// continues it with `/`, `:` or `@`; `*.example.com` matches hosts under example.com.
fn prefix_matches(prefix: &str, name: &str) -> bool {
    if let Some(domain) = prefix.strip_prefix("*.") {
        let host = name.split('/').next().unwrap_or("");
        return host.ends_with(&format!(".{domain}"));
    }
    name == prefix
        || name
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with(['/', ':', '@']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_go_to_aliases_then_search_registries_then_docker_io() {
        let mut conf = Conf::default();
        let w = Written::parse("debian:12").unwrap();
        assert_eq!(
            conf.candidates(&w).unwrap()[0].to_string(),
            "docker.io/library/debian:12"
        );
        conf.merge(
            r#"
unqualified-search-registries = ["127.0.0.1:5000", "quay.io"]
[aliases]
"tool" = "registry.example.com/team/tool"
"#,
        )
        .unwrap();
        conf.files.push("x".into());
        let c = conf.candidates(&w).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].to_string(), "127.0.0.1:5000/debian:12");
        let c = conf.candidates(&Written::parse("tool:1").unwrap()).unwrap();
        assert_eq!(
            c,
            vec![Written::parse("registry.example.com/team/tool:1")
                .unwrap()
                .qualify("registry.example.com")]
        );
        conf.search.clear();
        let err = conf.candidates(&w).unwrap_err().to_string();
        assert!(
            err.contains("short name") && err.contains("unqualified-search-registries"),
            "{err}"
        );
    }

    #[test]
    fn mirrors_come_first_and_insecure_and_blocked_are_kept() {
        let mut conf = Conf::default();
        conf.merge(
            r#"
[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "127.0.0.1:5001/hub"
insecure = true
[[registry.mirror]]
location = "mirror.example.com"
pull-from-mirror = "digest-only"

[[registry]]
location = "bad.example.com"
blocked = true
"#,
        )
        .unwrap();
        let r = Written::parse("debian:12").unwrap().qualify(DOCKER_HUB);
        let s = conf.sources(&r, false).unwrap();
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(
            s[0].reference.to_string(),
            "127.0.0.1:5001/hub/library/debian:12"
        );
        assert!(s[0].insecure);
        assert_eq!(s[1].reference, r);
        assert!(!s[1].insecure);
        let b = Written::parse("bad.example.com/x")
            .unwrap()
            .qualify("bad.example.com");
        assert!(conf
            .sources(&b, false)
            .unwrap_err()
            .to_string()
            .contains("blocked"));
        // The same prefix in a later file replaces the table.
        conf.merge("[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n")
            .unwrap();
        assert_eq!(conf.sources(&r, false).unwrap().len(), 1);
    }

    #[test]
    fn prefixes_match_whole_components_and_version_1_is_refused() {
        assert!(prefix_matches("example.com/foo", "example.com/foo/bar"));
        assert!(!prefix_matches("example.com/foo", "example.com/foobar"));
        assert!(prefix_matches("*.example.com", "a.example.com/x"));
        let mut conf = Conf::default();
        let err = conf
            .merge("[registries.search]\nregistries = ['docker.io']\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("version 1"), "{err}");
    }
}
