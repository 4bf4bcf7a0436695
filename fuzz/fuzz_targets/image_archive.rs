#![no_main]
//! Image import's metadata side: OCI `index.json`, nested indexes, manifests and image configs,
//! and `docker save`'s `manifest.json`; digest and size checks, the platform choice, the image
//! config's run config, and links between tar members. Errors only, never a panic; nothing is
//! written outside the image directory; an accepted import's run config is one that a file of
//! the layout holds.
//!
//! Random bytes seldom hash to the digests they name, so the harness assembles a real layout
//! from the input, naming each blob by its sha256:
//!
//! `MODE INDEX ⏎--⏎ DOCKER_MANIFEST ⏎--⏎ LINKS ⏎--⏎ BLOB0 ⏎--⏎ BLOB1 …` (at most 8 blobs)
//!
//! - MODE, one byte: bits 0-1 pick the form (0 a layout directory, 1 a tar, 2 a gzip'd tar, which
//!   the import spools, 3 a tar whose names start with `./`); bit 2 adds an `oci-layout` file.
//! - In every part, `@N` becomes blob N's digest (`sha256:HEX`), `$N` its HEX, `#N` its size,
//!   `@a` this host's architecture. A blob only names the blobs before it.
//! - An empty INDEX or DOCKER_MANIFEST leaves `index.json` or `manifest.json` out.
//! - LINKS (tar forms): lines `NAME -> TARGET` (symbolic) and `NAME => TARGET` (hard link).
//!
//! `scripts/fuzz.sh` writes seeds in this form: an OCI layout, a nested index, a `docker save`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use nook::fsutil::remove_tree;
use nook::idmap::IdMapping;
use nook::storage::archive::{host_architecture, import_source, sha256_of, RunConfig};
use nook::storage::layer::Applier;

const SEPARATOR: &[u8] = b"\n--\n";
const MAX_BLOBS: usize = 8;

/// Replaces `@N`, `$N`, `#N` and `@a` (see the header); `blobs` holds (digest, size).
fn fill(text: &[u8], blobs: &[(String, usize)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let (c, next) = (text[i], text.get(i + 1).copied().unwrap_or(0));
        let blob = next
            .checked_sub(b'0')
            .and_then(|n| blobs.get(n as usize))
            .filter(|_| next.is_ascii_digit());
        match (c, next, blob) {
            (b'@', b'a', _) => out.extend_from_slice(host_architecture().as_bytes()),
            (b'@', _, Some((digest, _))) => out.extend_from_slice(digest.as_bytes()),
            (b'$', _, Some((digest, _))) => out.extend_from_slice(&digest.as_bytes()[7..]),
            (b'#', _, Some((_, size))) => out.extend_from_slice(size.to_string().as_bytes()),
            _ => {
                out.push(c);
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    out
}

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        parts.push(&rest[..at]);
        rest = &rest[at + SEPARATOR.len()..];
    }
    parts.push(rest);
    parts
}

/// The files of the layout, and its links (name, target, hard).
struct Layout {
    files: Vec<(String, Vec<u8>)>,
    links: Vec<(String, String, bool)>,
}

fn assemble(mode: u8, parts: &[&[u8]]) -> Layout {
    let part = |i: usize| parts.get(i).copied().unwrap_or_default();
    let mut digests = Vec::new();
    let mut blobs = Vec::new();
    for raw in parts.iter().skip(3).take(MAX_BLOBS) {
        let blob = fill(raw, &digests);
        digests.push((sha256_of(&blob), blob.len()));
        blobs.push(blob);
    }
    let mut files = Vec::new();
    if mode & 4 != 0 {
        files.push((
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ));
    }
    for (name, i) in [("index.json", 0), ("manifest.json", 1)] {
        if !part(i).is_empty() {
            files.push((name.into(), fill(part(i), &digests)));
        }
    }
    for ((digest, _), blob) in digests.iter().zip(&blobs) {
        let name = format!("blobs/sha256/{}", &digest[7..]);
        if !files.iter().any(|(n, _)| *n == name) {
            files.push((name, blob.clone()));
        }
    }
    let links = String::from_utf8_lossy(&fill(part(2), &digests))
        .lines()
        .filter_map(|line| {
            let (name, target, hard) = match line.split_once(" -> ") {
                Some((n, t)) => (n, t, false),
                None => line.split_once(" => ").map(|(n, t)| (n, t, true))?,
            };
            Some((name.to_string(), target.to_string(), hard))
        })
        .collect();
    Layout { files, links }
}

fn write_dir(layout: &Layout, dir: &Path) -> std::io::Result<()> {
    fs::create_dir(dir)?;
    for (name, data) in &layout.files {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().expect("a file in the layout"))?;
        fs::write(path, data)?;
    }
    Ok(())
}

/// The layout as a tar; `None` when the tar crate refuses a link's name or target.
fn tar_of(layout: &Layout, dot_names: bool) -> Option<Vec<u8>> {
    let prefix = if dot_names { "./" } else { "" };
    let mut tar = tar::Builder::new(Vec::new());
    if dot_names {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        tar.append_data(&mut header, "./", std::io::empty()).ok()?;
    }
    for (name, data) in &layout.files {
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        tar.append_data(&mut header, format!("{prefix}{name}"), data.as_slice())
            .ok()?;
    }
    for (name, target, hard) in &layout.links {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(if *hard {
            tar::EntryType::Link
        } else {
            tar::EntryType::Symlink
        });
        header.set_mode(0o777);
        header.set_size(0);
        tar.append_link(&mut header, format!("{prefix}{name}"), target)
            .ok()?;
    }
    tar.into_inner().ok()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    gz.write_all(data).expect("writing to memory");
    gz.finish().expect("writing to memory")
}

/// An image config's run config, read as import reads it: other fields are skipped unchecked
/// (serde_json does not even check that their strings are UTF-8).
#[derive(serde::Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
}

/// What a file says the run config is, if it is an image config.
fn run_config_of(data: &[u8]) -> Option<RunConfig> {
    serde_json::from_slice::<ConfigFile>(data).ok()?.config
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read scratch")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fuzz_target!(|data: &[u8]| {
    static QUIET: Once = Once::new();
    // No progress bars, even when the fuzzer runs on a terminal.
    QUIET.call_once(|| std::env::set_var("TERM", "dumb"));
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let layout = assemble(mode, &split(rest));
    let scratch = PathBuf::from(format!("/tmp/nook-fuzz-image-{}", std::process::id()));
    let _ = remove_tree(&scratch);
    for dir in ["canary", "spool"] {
        fs::create_dir_all(scratch.join(dir)).expect("scratch directory");
    }
    let source = if mode & 3 == 0 {
        let dir = scratch.join("in");
        write_dir(&layout, &dir).expect("writing the layout");
        dir
    } else {
        let Some(mut tar) = tar_of(&layout, mode & 3 == 3) else {
            let _ = remove_tree(&scratch);
            return;
        };
        if mode & 3 == 2 {
            tar = gzip(&tar);
        }
        let file = scratch.join("in.tar");
        fs::write(&file, tar).expect("writing the archive");
        file
    };
    let map = IdMapping::of_current_user();
    let mut applier = Applier::create(&scratch.join("root"), &map).expect("creating the root");
    let source = source.to_str().expect("a UTF-8 scratch path");
    if let Ok(found) = import_source(source, &mut applier, &scratch.join("spool")) {
        let _ = applier.finish();
        assert!(
            ["oci-layout", "docker-archive", "tarball"].contains(&found.kind.as_str()),
            "unexpected kind {}",
            found.kind
        );
        assert!(
            found.config == RunConfig::default()
                || layout
                    .files
                    .iter()
                    .any(|(_, data)| run_config_of(data).as_ref() == Some(&found.config)),
            "the run config {:?} is in no file of the layout",
            found.config
        );
        assert!(
            entries(&scratch.join("spool")).is_empty(),
            "spool left behind"
        );
    }
    let input = if mode & 3 == 0 { "in" } else { "in.tar" };
    let mut expected = ["canary", input, "root", "spool"];
    expected.sort();
    assert_eq!(
        entries(&scratch),
        expected,
        "an import wrote outside the image"
    );
    assert!(entries(&scratch.join("canary")).is_empty());
    let _ = remove_tree(&scratch);
});
