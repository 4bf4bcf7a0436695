//! `.containerignore` / `.dockerignore`: Docker's pattern rules (docs.docker.com/build/concepts/
//! context/#dockerignore-files). Each line is a pattern on paths relative to the context root,
//! cleaned as Go's `filepath.Clean` does with a leading `/` dropped; `#` starts a comment; `!`
//! makes an exception; `*`, `?`, `[…]` and `\` as in `filepath.Match`, and `**` matching any
//! number of directories. A path is excluded when the last pattern matching it or one of its
//! parent directories is not an exception.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

#[derive(Debug, Clone, Default)]
pub struct IgnoreRules {
    patterns: Vec<Pattern>,
    /// Where the rules came from, for messages (None: no ignore file).
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct Pattern {
    text: String,
    exception: bool,
}

impl IgnoreRules {
    /// The rules for a build: `<Containerfile>.dockerignore` beside the Containerfile, else
    /// `.containerignore`, else `.dockerignore` at the context root (podman's order).
    pub fn load(context: &Path, containerfile: &Path) -> Result<IgnoreRules> {
        let mut candidates = Vec::new();
        if let Some(name) = containerfile.file_name() {
            let mut beside = name.to_os_string();
            beside.push(".dockerignore");
            candidates.push(containerfile.with_file_name(beside));
        }
        candidates.push(context.join(".containerignore"));
        candidates.push(context.join(".dockerignore"));
        for file in candidates {
            match fs::read_to_string(&file) {
                Ok(text) => {
                    let mut rules = IgnoreRules::parse(&text);
                    rules.file = Some(file);
                    return Ok(rules);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", file.display()));
                }
            }
        }
        Ok(IgnoreRules::default())
    }

    pub fn parse(text: &str) -> IgnoreRules {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let cleaned = clean(body);
            if cleaned.is_empty() || cleaned == "." {
                continue;
            }
            patterns.push(Pattern {
                text: cleaned,
                exception,
            });
        }
        IgnoreRules {
            patterns,
            file: None,
        }
    }

    /// Whether the path (relative to the context root, `/`-separated) is left out.
    pub fn is_excluded(&self, rel: &str) -> bool {
        let rel = clean(rel);
        let mut excluded = false;
        for p in &self.patterns {
            if matches_or_parent(&p.text, &rel) {
                excluded = !p.exception;
            }
        }
        excluded
    }

    /// Whether a walk may skip an excluded directory's entries: only when no exception could
    /// bring one of them back.
    pub fn prunes(&self, rel: &str) -> bool {
        self.is_excluded(rel) && !self.patterns.iter().any(|p| p.exception)
    }
}

fn matches_or_parent(pattern: &str, rel: &str) -> bool {
    if glob_match(pattern, rel) {
        return true;
    }
    let mut end = rel.len();
    while let Some(slash) = rel[..end].rfind('/') {
        if glob_match(pattern, &rel[..slash]) {
            return true;
        }
        end = slash;
    }
    false
}

/// Go's `filepath.Clean` on a `/`-separated path, with the leading `/` dropped.
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !path.starts_with('/') {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

/// Whether `pattern` has glob characters (an escape counts: it needs the matcher).
pub fn has_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '\\'])
}

/// Matches `name` against a pattern: `*` and `?` never match `/`, `**` matches anything
/// (`**/` also nothing), `[…]` a class (`^` or `!` negates, ranges), `\` the next character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    match_from(&p, &s)
}

fn match_from(p: &[char], s: &[char]) -> bool {
    let Some(&first) = p.first() else {
        return s.is_empty();
    };
    match first {
        '*' if p.get(1) == Some(&'*') => {
            if p.get(2) == Some(&'/') {
                let rest = &p[3..];
                if match_from(rest, s) {
                    return true;
                }
                return (0..s.len()).any(|k| s[k] == '/' && match_from(rest, &s[k + 1..]));
            }
            let rest = &p[2..];
            (0..=s.len()).any(|k| match_from(rest, &s[k..]))
        }
        '*' => {
            let rest = &p[1..];
            for k in 0..=s.len() {
                if match_from(rest, &s[k..]) {
                    return true;
                }
                if k < s.len() && s[k] == '/' {
                    break;
                }
            }
            false
        }
        '?' => !s.is_empty() && s[0] != '/' && match_from(&p[1..], &s[1..]),
        '[' => {
            let Some(c) = s.first().copied().filter(|c| *c != '/') else {
                return false;
            };
            match class(&p[1..], c) {
                Some((true, used)) => match_from(&p[1 + used..], &s[1..]),
                Some((false, _)) => false,
                // An unclosed class: `[` is itself.
                None => c == '[' && match_from(&p[1..], &s[1..]),
            }
        }
        '\\' if p.len() > 1 => s.first() == Some(&p[1]) && match_from(&p[2..], &s[1..]),
        c => s.first() == Some(&c) && match_from(&p[1..], &s[1..]),
    }
}

/// Matches `c` against the class after `[`; returns (matched, chars used including `]`).
fn class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut k = 0;
    let negate = matches!(p.first(), Some('^' | '!'));
    if negate {
        k += 1;
    }
    let mut matched = false;
    let mut first = true;
    while k < p.len() {
        if p[k] == ']' && !first {
            return Some((matched != negate, k + 1));
        }
        first = false;
        let mut lo = p[k];
        if lo == '\\' && k + 1 < p.len() {
            k += 1;
            lo = p[k];
        }
        let mut hi = lo;
        if p.get(k + 1) == Some(&'-') && p.get(k + 2).is_some_and(|c| *c != ']') {
            hi = p[k + 2];
            k += 2;
        }
        if lo <= c && c <= hi {
            matched = true;
        }
        k += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_documented_examples() {
        // docs.docker.com's example file.
        let rules = IgnoreRules::parse("# comment\n*/temp*\n*/*/temp*\ntemp?\n");
        assert!(rules.is_excluded("somedir/temporary.txt"));
        assert!(rules.is_excluded("somedir/temp"));
        assert!(rules.is_excluded("somedir/subdir/temporary.txt"));
        assert!(rules.is_excluded("tempa"));
        assert!(rules.is_excluded("tempb"));
        assert!(!rules.is_excluded("temp"));
        assert!(!rules.is_excluded("a/b/c/temp"));
    }

    #[test]
    fn exceptions_in_order() {
        let rules = IgnoreRules::parse("*.md\n!README*.md\nREADME-secret.md\n");
        assert!(rules.is_excluded("CHANGES.md"));
        assert!(!rules.is_excluded("README.md"));
        assert!(rules.is_excluded("README-secret.md"));
        let rules = IgnoreRules::parse("*.md\nREADME-secret.md\n!README*.md\n");
        assert!(!rules.is_excluded("README-secret.md"));
        assert!(!rules.prunes("x.md"));
    }

    #[test]
    fn double_star_and_parents() {
        let rules = IgnoreRules::parse("**/*.go\n/build\n./target/\n");
        assert!(rules.is_excluded("main.go"));
        assert!(rules.is_excluded("a/b/c.go"));
        assert!(!rules.is_excluded("a/b/c.rs"));
        assert!(rules.is_excluded("build"));
        assert!(rules.is_excluded("build/out/x"));
        assert!(rules.is_excluded("target/debug"));
        assert!(!rules.is_excluded("src/build"));
        assert!(rules.prunes("build"));
    }

    #[test]
    fn classes_and_escapes() {
        assert!(glob_match("file[0-9].txt", "file3.txt"));
        assert!(!glob_match("file[!0-9].txt", "file3.txt"));
        assert!(glob_match("file[^0-9].txt", "filex.txt"));
        assert!(glob_match("a\\*b", "a*b"));
        assert!(!glob_match("a\\*b", "axb"));
        assert!(!glob_match("*", "a/b"));
        assert!(glob_match("**", "a/b"));
        assert_eq!(clean("/a/./b/../c/"), "a/c");
        assert_eq!(clean("../x"), "../x");
    }
}
