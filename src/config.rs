//! nook's configuration file: `$XDG_CONFIG_HOME/nook/nook.conf` (else `~/.config/nook/nook.conf`),
//! falling back to the built-in defaults that `configs/nook.conf` documents.
//!
//! The format is a small subset of TOML: `key = "value"` lines, `#` comments, blank lines.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::rootfs::backend::{Backend, Choice};
use crate::security::root_emulation;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How containers get their writable root unless `--backend` says otherwise.
    pub backend: Choice,
    /// Whether one-id containers get root emulation unless `--root-emulation` says otherwise.
    pub root_emulation: root_emulation::Mode,
    /// How many layers a pull downloads at once.
    pub pull_parallel: usize,
    /// How long a registry may stay silent (connecting, or mid-transfer) before a pull gives up
    /// (and the next one resumes).
    pub registry_timeout: std::time::Duration,
    /// The file the settings came from, if any.
    pub source: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: Choice::Auto,
            root_emulation: root_emulation::Mode::Auto,
            pull_parallel: 3,
            registry_timeout: std::time::Duration::from_secs(30),
            source: None,
        }
    }
}

/// The per-user configuration file's path.
pub fn user_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("nook/nook.conf"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|home| PathBuf::from(home).join(".config/nook/nook.conf"))
}

/// The user's configuration, or the defaults when there is no file.
pub fn load() -> Result<Config> {
    let Some(path) = user_config_path() else {
        return Ok(Config::default());
    };
    match fs::read_to_string(&path) {
        Ok(text) => parse(&text, &path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Config::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn parse(text: &str, path: &Path) -> Result<Config> {
    let mut config = Config {
        source: Some(path.to_path_buf()),
        ..Config::default()
    };
    for (n, line) in text.lines().enumerate() {
        let at = || format!("{}:{}", path.display(), n + 1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bail!("{}: expected `key = \"value\"`, found {line:?}", at());
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .with_context(|| format!("{}: the value must be in double quotes: {value}", at()))?;
        match key.trim() {
            "backend" => {
                config.backend = match value {
                    "auto" => Choice::Auto,
                    other => Choice::Forced(Backend::parse(other).with_context(|| {
                        format!(
                            "{}: backend must be \"auto\", \"overlay\", \"fuse\" or \"copy\", not \
                             {other:?}",
                            at()
                        )
                    })?),
                }
            }
            "root_emulation" => {
                config.root_emulation = root_emulation::Mode::parse(value)
                    .with_context(|| format!("{}: root_emulation", at()))?;
            }
            "pull_parallel" => {
                config.pull_parallel = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=16).contains(n))
                    .with_context(|| {
                        format!(
                            "{}: pull_parallel must be a number from 1 to 16, not {value:?}",
                            at()
                        )
                    })?;
            }
            "registry_timeout" => {
                config.registry_timeout = humantime::parse_duration(value)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .with_context(|| {
                        format!("{}: registry_timeout must be a duration such as \"30s\", not {value:?}", at())
                    })?;
            }
            other => bail!(
                "{}: unknown setting {other:?} (known: backend, root_emulation, pull_parallel, \
                 registry_timeout)",
                at()
            ),
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_default_file_parses_to_the_defaults() {
        let text = include_str!("../configs/nook.conf");
        let config = parse(text, Path::new("configs/nook.conf")).unwrap();
        assert_eq!(config.backend, Choice::Auto);
        assert_eq!(config.root_emulation, root_emulation::Mode::Auto);
        assert_eq!(config.pull_parallel, 3);
        assert_eq!(config.registry_timeout, std::time::Duration::from_secs(30));
    }

    #[test]
    fn pull_settings_are_read_and_bounded() {
        let p = Path::new("/c/nook.conf");
        let config = parse("pull_parallel = \"6\"\nregistry_timeout = \"2m\"\n", p).unwrap();
        assert_eq!(config.pull_parallel, 6);
        assert_eq!(config.registry_timeout, std::time::Duration::from_secs(120));
        assert!(parse("pull_parallel = \"0\"", p).is_err());
        assert!(parse("registry_timeout = \"soon\"", p).is_err());
    }

    #[test]
    fn root_emulation_is_read_and_mistakes_name_the_line() {
        let p = Path::new("/c/nook.conf");
        let config = parse("root_emulation = \"off\"\n", p).unwrap();
        assert_eq!(config.root_emulation, root_emulation::Mode::Off);
        let err = format!("{:#}", parse("root_emulation = \"fake\"", p).unwrap_err());
        assert!(
            err.starts_with("/c/nook.conf:1:") && err.contains("auto, seccomp, notify or off"),
            "{err}"
        );
    }

    #[test]
    fn backend_is_read_and_mistakes_name_the_line() {
        let p = Path::new("/c/nook.conf");
        let config = parse("# comment\n\nbackend = \"copy\"\n", p).unwrap();
        assert_eq!(config.backend, Choice::Forced(Backend::Copy));
        let err = parse("backend = \"zfs\"", p).unwrap_err().to_string();
        assert!(err.starts_with("/c/nook.conf:1:"), "{err}");
        let err = parse("\nbackend = copy", p).unwrap_err().to_string();
        assert!(
            err.contains("/c/nook.conf:2") && err.contains("double quotes"),
            "{err}"
        );
        assert!(parse("colour = \"x\"", p).is_err());
    }
}
