//! The build context, read in place: COPY/ADD sources resolved against it (globs, the ignore
//! rules, nothing outside it through `..` or a symlink) and the content hash the step cache
//! keys them by.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::ignore::{clean, glob_match, has_glob, IgnoreRules};

pub struct BuildContext {
    root: PathBuf,
    pub ignore: IgnoreRules,
}

/// One COPY/ADD source in the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Relative to the context root, `/`-separated ("." for the root itself).
    pub rel: String,
    pub path: PathBuf,
    pub is_dir: bool,
}

impl BuildContext {
    pub fn open(dir: &Path, containerfile: &Path) -> Result<BuildContext> {
        let root = fs::canonicalize(dir)
            .with_context(|| format!("the build context {}", dir.display()))?;
        if !root.is_dir() {
            bail!("the build context {} is not a directory", dir.display());
        }
        let ignore = IgnoreRules::load(&root, containerfile)?;
        Ok(BuildContext { root, ignore })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The sources one COPY/ADD argument names. `instruction` (e.g. "COPY at line 4") is for
    /// messages.
    pub fn resolve(&self, pattern: &str, instruction: &str) -> Result<Vec<Source>> {
        let rel = clean(pattern);
        if rel == ".." || rel.starts_with("../") {
            bail!(
                "{instruction}: {pattern} is outside the build context {}",
                self.root.display()
            );
        }
        if has_glob(&rel) {
            let mut found = Vec::new();
            self.walk(".", &mut |entry_rel, meta| {
                if glob_match(&rel, entry_rel) {
                    found.push(Source {
                        rel: entry_rel.to_string(),
                        path: self.root.join(entry_rel),
                        is_dir: meta.is_dir(),
                    });
                    return false;
                }
                true
            })?;
            if found.is_empty() {
                bail!(
                    "{instruction}: no file in the build context {} matches {pattern}{}",
                    self.root.display(),
                    self.ignore_hint()
                );
            }
            for source in &found {
                self.inside(source, pattern, instruction)?;
            }
            return Ok(found);
        }
        let path = if rel == "." {
            self.root.clone()
        } else {
            self.root.join(&rel)
        };
        fs::symlink_metadata(&path).with_context(|| {
            format!(
                "{instruction}: {pattern}: no such file or directory in the build context {}",
                self.root.display()
            )
        })?;
        if rel != "." && self.ignore.is_excluded(&rel) {
            bail!(
                "{instruction}: {pattern} is excluded from the build context by {}",
                self.ignore_hint_file()
            );
        }
        let source = Source {
            rel,
            // A source named directly is followed, as Docker does (checked to stay inside).
            is_dir: fs::metadata(&path).is_ok_and(|m| m.is_dir()),
            path,
        };
        self.inside(&source, pattern, instruction)?;
        Ok(vec![source])
    }

    /// Refuses a source whose real path (symlinks followed) leaves the context.
    fn inside(&self, source: &Source, pattern: &str, instruction: &str) -> Result<()> {
        let real = fs::canonicalize(&source.path).with_context(|| {
            format!(
                "{instruction}: {pattern}: {} is a dangling symlink",
                source.path.display()
            )
        })?;
        if !real.starts_with(&self.root) {
            bail!(
                "{instruction}: {pattern} resolves to {}, outside the build context {} (through \
                 a symlink); copy the file into the context instead",
                real.display(),
                self.root.display()
            );
        }
        Ok(())
    }

    fn ignore_hint(&self) -> String {
        match &self.ignore.file {
            Some(f) => format!(" (after the rules of {})", f.display()),
            None => String::new(),
        }
    }

    fn ignore_hint_file(&self) -> String {
        match &self.ignore.file {
            Some(f) => f.display().to_string(),
            None => "the ignore file".into(),
        }
    }

    /// Visits the entries under `start` (relative, "." for the root) in name order, leaving out
    /// what the ignore rules exclude; `visit` returns whether to enter a directory.
    pub fn walk(
        &self,
        start: &str,
        visit: &mut dyn FnMut(&str, &fs::Metadata) -> bool,
    ) -> Result<()> {
        let dir = if start == "." {
            self.root.clone()
        } else {
            self.root.join(start)
        };
        let mut names: Vec<String> = fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("reading {}", dir.display()))?;
        names.sort();
        for name in names {
            let rel = if start == "." {
                name
            } else {
                format!("{start}/{name}")
            };
            let meta = fs::symlink_metadata(self.root.join(&rel))
                .with_context(|| format!("reading {}", self.root.join(&rel).display()))?;
            let excluded = self.ignore.is_excluded(&rel);
            let enter = if excluded { true } else { visit(&rel, &meta) };
            if meta.is_dir() && enter && !(excluded && self.ignore.prunes(&rel)) {
                self.walk(&rel, visit)?;
            }
        }
        Ok(())
    }

    /// sha256 over the sources as COPY would take them: each entry's path below its source,
    /// type, mode, and content or link target. Times and owners are left out (COPY gives
    /// fixed owners; BuildKit's cache ignores times too).
    pub fn content_hash(&self, sources: &[Source]) -> Result<String> {
        let mut hash = Sha256::new();
        for source in sources {
            hash.update(source.rel.as_bytes());
            hash.update([0]);
            let meta = fs::metadata(&source.path)
                .with_context(|| format!("reading {}", source.path.display()))?;
            if meta.is_dir() {
                let mut failure = None;
                self.walk(&source.rel, &mut |rel, meta| {
                    if failure.is_none() {
                        if let Err(e) = hash_entry(&mut hash, &self.root.join(rel), rel, meta) {
                            failure = Some(e);
                        }
                    }
                    true
                })?;
                if let Some(e) = failure {
                    return Err(e);
                }
            } else {
                hash_entry(&mut hash, &source.path, &source.rel, &meta)?;
            }
        }
        Ok(format!("{:x}", hash.finalize()))
    }
}

fn hash_entry(hash: &mut Sha256, path: &Path, rel: &str, meta: &fs::Metadata) -> Result<()> {
    hash.update(rel.as_bytes());
    hash.update([0]);
    hash.update(meta.permissions().mode().to_le_bytes());
    if meta.is_symlink() {
        let target = fs::read_link(path).with_context(|| format!("reading {}", path.display()))?;
        hash.update(target.as_os_str().as_encoded_bytes());
    } else if meta.is_file() {
        hash.update(meta.size().to_le_bytes());
        let mut file =
            fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        std::io::copy(&mut file, hash).with_context(|| format!("reading {}", path.display()))?;
    }
    hash.update([0xff]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(files: &[(&str, &str)], ignore: &str) -> (PathBuf, BuildContext) {
        let dir = std::env::temp_dir().join(format!(
            "nook-context-test-{}-{}",
            std::process::id(),
            files.len() + ignore.len() * 7
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for (name, content) in files {
            let path = dir.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        if !ignore.is_empty() {
            fs::write(dir.join(".dockerignore"), ignore).unwrap();
        }
        let ctx = BuildContext::open(&dir, &dir.join("Containerfile")).unwrap();
        (dir, ctx)
    }

    #[test]
    fn globs_ignore_rules_and_refusals() {
        let (dir, ctx) = context(
            &[
                ("a.txt", "a"),
                ("b.txt", "b"),
                ("secret.txt", "s"),
                ("src/main.c", "m"),
            ],
            "secret.txt\n",
        );
        let found = ctx.resolve("*.txt", "COPY at line 2").unwrap();
        let rels: Vec<_> = found.iter().map(|s| s.rel.as_str()).collect();
        assert_eq!(rels, ["a.txt", "b.txt"]);
        let e = ctx.resolve("secret.txt", "COPY").unwrap_err().to_string();
        assert!(e.contains("excluded") && e.contains(".dockerignore"), "{e}");
        let e = ctx.resolve("../x", "COPY").unwrap_err().to_string();
        assert!(e.contains("outside the build context"), "{e}");
        let e = ctx.resolve("nothing", "COPY").unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
        std::os::unix::fs::symlink("/etc", dir.join("etc-link")).unwrap();
        let e = ctx
            .resolve("etc-link/hostname", "COPY")
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the build context"), "{e}");
        assert!(ctx.resolve("src", "COPY").unwrap()[0].is_dir);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_hash_follows_content_not_times_or_ignored_files() {
        let (dir, ctx) = context(&[("src/a", "1"), ("src/junk.o", "x")], "**/*.o\n");
        let sources = ctx.resolve("src", "COPY").unwrap();
        let first = ctx.content_hash(&sources).unwrap();
        fs::write(dir.join("src/junk.o"), "changed").unwrap();
        let file = fs::File::options()
            .write(true)
            .open(dir.join("src/a"))
            .unwrap();
        file.set_modified(std::time::SystemTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(ctx.content_hash(&sources).unwrap(), first);
        fs::write(dir.join("src/a"), "2").unwrap();
        assert_ne!(ctx.content_hash(&sources).unwrap(), first);
        fs::remove_dir_all(dir).unwrap();
    }
}
