//! Image archives. Reading what `nook import` is given: compression by magic bytes, plain root
//! filesystem tarballs, OCI image layouts (a directory or a tar) and `docker save` archives,
//! every blob checked against its digest and size, layers handed to a `layer::Applier`. Writing
//! what `nook export` makes: a tree as a tar stream, and an OCI image layout archive.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::storage::layer::Applier;

/// How a stream is compressed, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
}

impl Compression {
    pub fn detect(magic: &[u8]) -> Result<Compression> {
        Ok(if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else if magic.starts_with(b"BZh") {
            bail!("bzip2 compression is not supported: recompress with gzip, zstd or xz")
        } else {
            Compression::None
        })
    }
}

/// A reader whose first bytes were looked at and are given back first.
pub type Peeked<R> = io::Chain<Cursor<Vec<u8>>, R>;

/// Reads up to `n` bytes ahead; returns them and a reader that still yields them.
pub fn peek<R: Read>(mut reader: R, n: usize) -> io::Result<(Vec<u8>, Peeked<R>)> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok((buf.clone(), Cursor::new(buf).chain(reader)))
}

/// A decompressing reader that gives back the stream under it.
pub enum Decoder<R: Read> {
    Plain(R),
    Gzip(flate2::read::MultiGzDecoder<R>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
    Xz(xz2::read::XzDecoder<R>),
}

impl<R: Read> Decoder<R> {
    pub fn new(reader: R, compression: Compression) -> Result<Decoder<R>> {
        Ok(match compression {
            Compression::None => Decoder::Plain(reader),
            Compression::Gzip => Decoder::Gzip(flate2::read::MultiGzDecoder::new(reader)),
            Compression::Zstd => Decoder::Zstd(
                zstd::stream::read::Decoder::new(reader).context("starting zstd decompression")?,
            ),
            Compression::Xz => Decoder::Xz(xz2::read::XzDecoder::new_multi_decoder(reader)),
        })
    }

    pub fn into_inner(self) -> R {
        match self {
            Decoder::Plain(r) => r,
            Decoder::Gzip(d) => d.into_inner(),
            Decoder::Zstd(d) => d.finish().into_inner(),
            Decoder::Xz(d) => d.into_inner(),
        }
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (format, result) = match self {
            Decoder::Plain(r) => return r.read(buf),
            Decoder::Gzip(d) => ("gzip", d.read(buf)),
            Decoder::Zstd(d) => ("zstd", d.read(buf)),
            Decoder::Xz(d) => ("xz", d.read(buf)),
        };
        // Say which decompression failed: "corrupt deflate stream" alone names nothing.
        result.map_err(|e| io::Error::new(e.kind(), format!("{format} data: {e}")))
    }
}

/// Counts, hashes and shows progress of what passes through.
pub struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    bar: ProgressBar,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R, bar: ProgressBar) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
            bar,
        }
    }

    /// Reads what is left, then returns ("sha256:HEX", bytes read).
    pub fn finish(self) -> io::Result<(String, u64)> {
        self.finish_into().map(|(d, n, _)| (d, n))
    }

    /// As `finish`, and gives back the reader under it.
    pub fn finish_into(mut self) -> io::Result<(String, u64, R)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((hex_digest(self.hasher), self.count, self.inner))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

fn hex_digest(hasher: Sha256) -> String {
    let bytes = hasher.finalize();
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub fn sha256_of(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    hex_digest(h)
}

/// A progress bar on stderr when it is a terminal (unless `TERM=dumb`); hidden otherwise (pipes,
/// logs).
pub fn progress_bar(total: Option<u64>, message: &str) -> ProgressBar {
    use std::io::IsTerminal;
    if !io::stderr().is_terminal() || std::env::var("TERM").is_ok_and(|t| t == "dumb") {
        return ProgressBar::hidden();
    }
    // Not `ProgressDrawTarget::stderr()`, which also hides the bar when TERM is unset.
    let target =
        indicatif::ProgressDrawTarget::term_like_with_hz(Box::new(console::Term::stderr()), 20);
    let bar = match total {
        Some(t) => ProgressBar::with_draw_target(Some(t), target).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::with_draw_target(None, target).with_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                .expect("valid template"),
        ),
    };
    bar.set_message(message.to_string());
    bar
}

/// The image config nook keeps, as the OCI image config spells it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// `{"80/tcp": {}}`, as the OCI image config spells it; `-P` publishes these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

/// What an import found besides the files.
#[derive(Debug, Default, serde::Serialize, Deserialize)]
pub struct Found {
    pub config: RunConfig,
    /// "directory", "tarball", "oci-layout", "docker-archive" or "commit".
    pub kind: String,
    /// How many layers were applied.
    pub layers: usize,
    pub notes: Vec<String>,
    /// For a pull: the reference pulled, fully qualified.
    #[serde(default)]
    pub reference: Option<String>,
    /// For a pull: the digest of the manifest (or list) the reference named.
    #[serde(default)]
    pub digest: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// The parts of an OCI / docker image config that nook reads (imports and pulls).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ImageConfigFile {
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub config: Option<RunConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// The host's platform in OCI terms.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Where the files of an image archive are: a directory, or members of an (uncompressed) tar.
pub enum Layout {
    Dir(PathBuf),
    Tar {
        file: File,
        members: HashMap<String, Member>,
    },
}

pub enum Member {
    Data { offset: u64, size: u64 },
    Link(String),
}

/// Normalises a member name: no leading `./` or `/`, no trailing `/`.
fn member_name(raw: &Path) -> String {
    let s = raw.to_string_lossy();
    let s = s.trim_start_matches("./").trim_start_matches('/');
    s.trim_end_matches('/').to_string()
}

impl Layout {
    pub fn index_tar(path: &Path) -> Result<Layout> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut archive = tar::Archive::new(BufReader::new(
            file.try_clone().context("duplicating a descriptor")?,
        ));
        let mut members = HashMap::new();
        for entry in archive
            .entries()
            .with_context(|| format!("reading {}", path.display()))?
        {
            let entry = entry.with_context(|| format!("reading {}", path.display()))?;
            let name = member_name(&entry.path()?);
            let kind = entry.header().entry_type();
            let member = if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name()?
                    .with_context(|| format!("archive member {name}: a link without a target"))?;
                let target = if kind.is_symlink() {
                    // Relative to the link's directory.
                    let dir = Path::new(&name).parent().unwrap_or(Path::new(""));
                    normalize(&dir.join(target))
                } else {
                    member_name(&target)
                };
                Member::Link(target)
            } else if kind.is_file() {
                Member::Data {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                }
            } else {
                continue;
            };
            members.insert(name, member);
        }
        Ok(Layout::Tar { file, members })
    }

    /// The first component of every member of a tar.
    fn top_level(&self) -> std::collections::BTreeSet<String> {
        match self {
            Layout::Dir(_) => Default::default(),
            Layout::Tar { members, .. } => members
                .keys()
                .filter_map(|m| m.split('/').next())
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        match self {
            Layout::Dir(d) => d.join(name).is_file(),
            Layout::Tar { members, .. } => members.contains_key(name),
        }
    }

    /// Opens a member; returns it and its size.
    pub fn open(&self, name: &str) -> Result<(Box<dyn Read + '_>, u64)> {
        match self {
            Layout::Dir(d) => {
                let path = d.join(name);
                let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                let size = f.metadata()?.len();
                Ok((Box::new(BufReader::with_capacity(1 << 20, f)), size))
            }
            Layout::Tar { file, members } => {
                let mut name = name.to_string();
                for _ in 0..16 {
                    match members.get(&name) {
                        Some(Member::Data { offset, size }) => {
                            let mut f = file.try_clone()?;
                            f.seek(SeekFrom::Start(*offset))?;
                            return Ok((
                                Box::new(BufReader::with_capacity(1 << 20, f).take(*size)),
                                *size,
                            ));
                        }
                        Some(Member::Link(target)) => name = target.clone(),
                        None => bail!("the archive has no member {name}"),
                    }
                }
                bail!("archive member {name}: too many links")
            }
        }
    }

    pub fn read_small(&self, name: &str) -> Result<Vec<u8>> {
        let (reader, size) = self.open(name)?;
        if size > 16 << 20 {
            bail!("{name} is {size} bytes: too large for image metadata");
        }
        let mut data = Vec::with_capacity(size as usize);
        reader.take(16 << 20).read_to_end(&mut data)?;
        Ok(data)
    }

    /// Reads a small blob and checks its digest and size.
    fn read_blob(&self, d: &Descriptor) -> Result<Vec<u8>> {
        let name = blob_path(&d.digest)?;
        if !self.has(&name) {
            bail!("blob {} is missing from the image (no {name})", d.digest);
        }
        let data = self
            .read_small(&name)
            .with_context(|| format!("reading blob {}", d.digest))?;
        let got = sha256_of(&data);
        if got != d.digest || data.len() as u64 != d.size {
            bail!(
                "blob {} does not match its digest: got {got} ({} bytes, {} expected)",
                d.digest,
                data.len(),
                d.size
            );
        }
        Ok(data)
    }
}

/// `a/./b/../c` → `a/c` (for symlinks between members of an archive).
fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            std::path::Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
            std::path::Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts.join("/")
}

/// `sha256:HEX` → `blobs/sha256/HEX`, refusing anything else (a digest is also a file name).
fn blob_path(digest: &str) -> Result<String> {
    let Some((alg, hex)) = digest.split_once(':') else {
        bail!("malformed digest {digest:?}");
    };
    if alg != "sha256" {
        bail!("digest {digest}: only sha256 digests are supported");
    }
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        bail!("malformed digest {digest:?}");
    }
    Ok(format!("blobs/sha256/{hex}"))
}

/// How far into a tar stream `looks_like_image_archive` looks.
pub const SNIFF_BYTES: usize = 16 << 10;

/// Whether the first member of a tar stream (past a `./` entry) says it is an image archive (an
/// OCI layout or a `docker save`) rather than a root filesystem. `start` is the stream's first
/// bytes.
pub fn looks_like_image_archive(start: &[u8]) -> bool {
    let mut offset = 0;
    while offset + 512 <= start.len() {
        let block = &start[offset..offset + 512];
        if block.iter().all(|b| *b == 0) {
            return false;
        }
        let field = |r: std::ops::Range<usize>| {
            let f = &block[r];
            let end = f.iter().position(|b| *b == 0).unwrap_or(f.len());
            String::from_utf8_lossy(&f[..end]).into_owned()
        };
        let mut name = field(0..100);
        if &block[257..262] == b"ustar" {
            let prefix = field(345..500);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        let size = u64::from_str_radix(field(124..136).trim(), 8).unwrap_or(0);
        let kind = block[156];
        let name = member_name(Path::new(&name));
        // Extension headers and the archive's own root say nothing yet: look further.
        if matches!(kind, b'x' | b'g' | b'L' | b'K') || name.is_empty() || name == "." {
            offset += 512 + (size as usize).div_ceil(512) * 512;
            continue;
        }
        return is_archive_member(name.split('/').next().unwrap_or(""));
    }
    false
}

/// Whether a top-level name is one that image archives are made of: an OCI layout (`blobs/`,
/// `oci-layout`, `index.json`), a docker-archive as podman, skopeo and docker write it
/// (`manifest.json`, `repositories`, `HEX.json` configs, `HEX.tar` layers) or its legacy form
/// (`HEX/` holding `layer.tar`, `json`, `VERSION`).
fn is_archive_member(top: &str) -> bool {
    let is_hex_id = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    matches!(
        top,
        "blobs" | "oci-layout" | "index.json" | "manifest.json" | "repositories"
    ) || is_hex_id(top)
        || top.strip_suffix(".json").is_some_and(is_hex_id)
        || top.strip_suffix(".tar").is_some_and(is_hex_id)
}

/// Whether a directory holds an image archive, unpacked (an OCI layout as `podman save
/// --format oci-dir` writes it, or an extracted docker-archive), judged as a tar is.
pub fn is_image_archive_dir(dir: &Path) -> bool {
    if dir.join("index.json").is_file() {
        return true;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let names = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    classify(&names) == TarKind::ImageArchive
}

/// What an indexed tar is, by everything it holds: an image archive has only the members image
/// archives are made of, and an index or a manifest to read them by.
#[derive(Debug, PartialEq, Eq)]
enum TarKind {
    ImageArchive,
    RootFilesystem,
    /// Made of image archive members, but without `index.json` or `manifest.json`.
    IncompleteArchive(Vec<String>),
}

fn classify(top_level: &std::collections::BTreeSet<String>) -> TarKind {
    if !top_level.iter().all(|t| is_archive_member(t)) {
        return TarKind::RootFilesystem;
    }
    if top_level.contains("index.json") || top_level.contains("manifest.json") {
        return TarKind::ImageArchive;
    }
    TarKind::IncompleteArchive(top_level.iter().take(4).cloned().collect())
}

/// Imports an image archive (OCI layout or docker save) from `layout` into `applier`.
fn import_layout(layout: &Layout, applier: &mut Applier, what: &str) -> Result<Found> {
    if layout.has("index.json") {
        return import_oci(layout, applier, what);
    }
    if layout.has("manifest.json") {
        return import_docker(layout, applier, what);
    }
    bail!("{what}: neither an OCI image layout (no index.json) nor a `docker save` archive (no manifest.json)")
}

fn platform_name(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

/// Follows an index (and nested indexes) to the manifest for this host's platform.
fn choose_manifest(layout: &Layout, index: Index, depth: usize) -> Result<Descriptor> {
    if depth > 4 {
        bail!("image indexes nested too deep");
    }
    let arch = host_architecture();
    let mut seen = Vec::new();
    let mut chosen = None;
    for d in index.manifests {
        match &d.platform {
            Some(p) if p.os == "linux" && p.architecture == arch => {
                chosen = Some(d);
                break;
            }
            Some(p) => seen.push(platform_name(p)),
            // Attestations and signatures carry a platform of "unknown" or none; a descriptor
            // without a platform is a candidate when nothing better comes.
            None if chosen.is_none() => chosen = Some(d),
            None => {}
        }
    }
    let Some(d) = chosen else {
        bail!(
            "the image has no variant for this host (linux/{arch}); it has: {}",
            if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(", ")
            }
        );
    };
    if d.media_type.ends_with("image.index.v1+json") || d.media_type.contains("manifest.list") {
        let data = layout.read_blob(&d)?;
        let nested: Index = serde_json::from_slice(&data)
            .with_context(|| format!("parsing image index {}", d.digest))?;
        return choose_manifest(layout, nested, depth + 1);
    }
    Ok(d)
}

fn check_platform(config: &ImageConfigFile) -> Result<()> {
    let arch = host_architecture();
    if let (Some(os), Some(a)) = (&config.os, &config.architecture) {
        if os != "linux" || a != arch {
            bail!("the image is for {os}/{a}, not for this host (linux/{arch})");
        }
    }
    Ok(())
}

fn import_oci(layout: &Layout, applier: &mut Applier, what: &str) -> Result<Found> {
    let index: Index = serde_json::from_slice(&layout.read_small("index.json")?)
        .with_context(|| format!("{what}: parsing index.json"))?;
    let manifest_desc =
        choose_manifest(layout, index, 0).with_context(|| format!("{what}: index.json"))?;
    let manifest: Manifest = serde_json::from_slice(
        &layout
            .read_blob(&manifest_desc)
            .with_context(|| format!("{what}: manifest"))?,
    )
    .with_context(|| format!("{what}: parsing manifest {}", manifest_desc.digest))?;
    let config: ImageConfigFile = serde_json::from_slice(
        &layout
            .read_blob(&manifest.config)
            .with_context(|| format!("{what}: image config"))?,
    )
    .with_context(|| format!("{what}: parsing image config {}", manifest.config.digest))?;
    check_platform(&config).with_context(|| what.to_string())?;
    for d in &manifest.layers {
        let name = blob_path(&d.digest).with_context(|| format!("{what}: layer"))?;
        if !layout.has(&name) {
            bail!("{what}: layer blob {} is missing (no {name})", d.digest);
        }
        if d.media_type.contains("encrypted") {
            bail!("{what}: layer {} is encrypted ({})", d.digest, d.media_type);
        }
    }
    // Sizes the progress bar only; the sizes are the manifest's word until each blob is read.
    let total = manifest
        .layers
        .iter()
        .fold(0u64, |sum, d| sum.saturating_add(d.size));
    let bar = progress_bar(Some(total), "importing");
    for (i, d) in manifest.layers.iter().enumerate() {
        let name = blob_path(&d.digest)?;
        let label = format!("{what}: layer {} ({})", i + 1, d.digest);
        let (reader, size) = layout.open(&name).with_context(|| label.clone())?;
        if size != d.size {
            bail!(
                "{label}: the blob is {size} bytes, the manifest says {}",
                d.size
            );
        }
        let (got, count) = apply_compressed(applier, Hashing::new(reader, bar.clone()), &label)?;
        if got != d.digest || count != d.size {
            bail!("{label}: digest mismatch: the blob hashes to {got} ({count} bytes)");
        }
    }
    bar.finish_and_clear();
    Ok(Found {
        config: config.config.unwrap_or_default(),
        kind: "oci-layout".into(),
        layers: manifest.layers.len(),
        notes: Vec::new(),
        reference: None,
        digest: None,
    })
}

fn import_docker(layout: &Layout, applier: &mut Applier, what: &str) -> Result<Found> {
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(&layout.read_small("manifest.json")?)
            .with_context(|| format!("{what}: parsing manifest.json"))?;
    let mut notes = Vec::new();
    let Some(entry) = entries.first() else {
        bail!("{what}: manifest.json lists no image");
    };
    if entries.len() > 1 {
        notes.push(format!(
            "the archive holds {} images; imported the first ({})",
            entries.len(),
            entry
                .repo_tags
                .as_ref()
                .map(|t| t.join(", "))
                .unwrap_or_else(|| entry.config.clone())
        ));
    }
    let config_name = member_name(Path::new(&entry.config));
    let config_data = layout
        .read_small(&config_name)
        .with_context(|| format!("{what}: image config {config_name}"))?;
    // The config's name is its digest (`HEX.json`, or `blobs/sha256/HEX` in newer archives).
    let stem = Path::new(&config_name)
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".json").to_string())
        .unwrap_or_default();
    let got = sha256_of(&config_data);
    if got != format!("sha256:{stem}") {
        bail!("{what}: image config {config_name} does not match its digest (got {got})");
    }
    let config: ImageConfigFile = serde_json::from_slice(&config_data)
        .with_context(|| format!("{what}: parsing image config {config_name}"))?;
    check_platform(&config).with_context(|| what.to_string())?;
    let diff_ids = config
        .rootfs
        .as_ref()
        .map(|r| r.diff_ids.clone())
        .unwrap_or_default();
    if diff_ids.len() != entry.layers.len() {
        bail!(
            "{what}: the config lists {} layer digests (rootfs.diff_ids) for {} layers",
            diff_ids.len(),
            entry.layers.len()
        );
    }
    let mut total = 0;
    for l in &entry.layers {
        let name = member_name(Path::new(l));
        let (_, size) = layout
            .open(&name)
            .with_context(|| format!("{what}: layer {name}"))?;
        total += size;
    }
    let bar = progress_bar(Some(total), "importing");
    for (i, (l, want)) in entry.layers.iter().zip(&diff_ids).enumerate() {
        let name = member_name(Path::new(l));
        let label = format!("{what}: layer {} ({name})", i + 1);
        let (reader, _) = layout.open(&name).with_context(|| label.clone())?;
        // diff_ids are digests of the uncompressed layer.
        let counted = Counting {
            inner: reader,
            bar: bar.clone(),
        };
        let (magic, peeked) = peek(counted, 6)?;
        let compression = Compression::detect(&magic).with_context(|| label.clone())?;
        let decoder = Decoder::new(peeked, compression)?;
        let hashing = Hashing::new(decoder, ProgressBar::hidden());
        let rest = applier.apply(hashing, &label)?;
        let (got, _) = rest.finish().with_context(|| label.clone())?;
        if &got != want {
            bail!("{label}: digest mismatch: the layer hashes to {got}, the config says {want}");
        }
    }
    bar.finish_and_clear();
    Ok(Found {
        config: config.config.unwrap_or_default(),
        kind: "docker-archive".into(),
        layers: entry.layers.len(),
        notes,
        reference: None,
        digest: None,
    })
}

/// Counts progress without hashing.
struct Counting<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// Decompresses (by magic bytes) and applies one tar stream; returns the digest and size of the
/// (compressed) bytes read, all of them.
fn apply_compressed<R: Read>(
    applier: &mut Applier,
    hashing: Hashing<R>,
    label: &str,
) -> Result<(String, u64)> {
    let (magic, peeked) = peek(hashing, 6).with_context(|| label.to_string())?;
    let compression = Compression::detect(&magic).with_context(|| label.to_string())?;
    let decoder = Decoder::new(peeked, compression).with_context(|| label.to_string())?;
    let mut decoder = applier.apply(decoder, label)?;
    // What follows the tar's end (padding, the rest of the compressed stream) counts too.
    io::copy(&mut decoder, &mut io::sink())
        .with_context(|| format!("{label}: reading to the end"))?;
    let (_, hashing) = decoder.into_inner().into_inner();
    hashing
        .finish()
        .with_context(|| format!("{label}: reading to the end"))
}

/// Imports `source` (a path, or `-` for stdin) into `applier`. `scratch` is a directory where
/// a compressed or piped image archive is spooled to be read at random. Runs inside the user
/// namespace.
pub fn import_source(source: &str, applier: &mut Applier, scratch: &Path) -> Result<Found> {
    let path = Path::new(source);
    if source != "-" && path.is_dir() {
        if is_image_archive_dir(path) {
            let layout = Layout::Dir(path.to_path_buf());
            return import_layout(&layout, applier, source);
        }
        bail!("{source} is a directory: import it as a root filesystem");
    }
    let (reader, size): (Box<dyn Read>, Option<u64>) = if source == "-" {
        (Box::new(io::stdin().lock()), None)
    } else {
        let f = File::open(path).with_context(|| format!("opening {source}"))?;
        let size = f.metadata().ok().map(|m| m.len());
        (Box::new(BufReader::with_capacity(1 << 20, f)), size)
    };
    let what = if source == "-" { "stdin" } else { source };
    let bar = progress_bar(size, "importing");
    let counted = Counting { inner: reader, bar };
    let (magic, peeked) = peek(counted, 6).with_context(|| format!("reading {what}"))?;
    let compression = Compression::detect(&magic).with_context(|| what.to_string())?;
    let decoder = Decoder::new(peeked, compression)?;
    let (header, tar_stream) =
        peek(decoder, SNIFF_BYTES).with_context(|| format!("reading {what}"))?;
    if header.is_empty() {
        bail!("{what} is empty");
    }
    // An image archive holds nothing but archive members, so a first member of another kind
    // settles it; a first member of that kind is looked at with all the others.
    if looks_like_image_archive(&header) {
        let spool = scratch.join("archive.tar");
        let tar_path = if compression == Compression::None && source != "-" {
            path.to_path_buf()
        } else {
            let mut out =
                File::create(&spool).with_context(|| format!("creating {}", spool.display()))?;
            let mut tar_stream = tar_stream;
            io::copy(&mut tar_stream, &mut out).with_context(|| format!("decompressing {what}"))?;
            spool.clone()
        };
        let found = import_indexed(&tar_path, applier, what);
        let _ = std::fs::remove_file(&spool);
        return found;
    }
    let mut rest = applier.apply(tar_stream, what)?;
    if applier.is_empty()? {
        bail!("{what} holds no files: it is neither an image archive nor a root filesystem");
    }
    // A compressed stream must be whole: garbage after the tar shows up here.
    io::copy(&mut rest, &mut io::sink()).with_context(|| format!("{what}: reading to the end"))?;
    let (_, decoder) = rest.into_inner();
    let (_, counted) = decoder.into_inner().into_inner();
    counted.bar.finish_and_clear();
    Ok(Found {
        config: RunConfig::default(),
        kind: "tarball".into(),
        layers: 1,
        notes: Vec::new(),
        reference: None,
        digest: None,
    })
}

/// Imports an uncompressed tar whose first member looked like part of an image archive: as the
/// image archive its members make, or as the root filesystem it turns out to be.
fn import_indexed(tar: &Path, applier: &mut Applier, what: &str) -> Result<Found> {
    let layout = Layout::index_tar(tar).with_context(|| what.to_string())?;
    match classify(&layout.top_level()) {
        TarKind::ImageArchive => import_layout(&layout, applier, what),
        TarKind::IncompleteArchive(some) => bail!(
            "{what} is made of image archive members ({}…) but has neither index.json (an OCI \
             image layout) nor manifest.json (a docker-archive): it is not a whole image \
             archive, nor a root filesystem. Save the image again (`podman save -o FILE \
             IMAGE`, `skopeo copy … docker-archive:FILE`)",
            some.join(", ")
        ),
        TarKind::RootFilesystem => {
            drop(layout);
            let file = File::open(tar).with_context(|| format!("opening {what}"))?;
            let mut rest = applier.apply(BufReader::with_capacity(1 << 20, file), what)?;
            io::copy(&mut rest, &mut io::sink())
                .with_context(|| format!("{what}: reading to the end"))?;
            Ok(Found {
                config: RunConfig::default(),
                kind: "tarball".into(),
                layers: 1,
                notes: Vec::new(),
                reference: None,
                digest: None,
            })
        }
    }
}

/// A PAX extended header record: `LEN KEY=VALUE\n`, LEN counting itself.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut rec = format!("{len} ").into_bytes();
    rec.extend_from_slice(key);
    rec.push(b'=');
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

/// Writes the tree at `root` as a tar stream: sorted, names relative to the root, owners as
/// this namespace sees them, hard links as links, xattrs as `SCHILY.xattr.*` PAX records.
pub fn write_tree<W: io::Write>(root: &Path, out: W, bar: &ProgressBar) -> Result<W> {
    let mut list = |rel: &Path, (): ()| -> Result<Vec<(OsString, PathBuf, ())>> {
        let dir = root.join(rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .with_context(|| format!("reading {}", dir.display()))?;
        names.sort();
        Ok(names
            .into_iter()
            .map(|name| (name.clone(), dir.join(name), ()))
            .collect())
    };
    write_view(out, bar, (), &mut list)
}

/// The entries of one directory of a tree to archive, sorted: name, the path to read the entry
/// from, and the token that lists it if it is a directory.
pub type DirEntries<D> = Vec<(OsString, PathBuf, D)>;

/// [`write_tree`] of a tree that `list` composes directory by directory (a container's layer
/// over its image), starting at the root's token `root`: entries are read where `list` says.
pub fn write_view<W: io::Write, D: Copy>(
    out: W,
    bar: &ProgressBar,
    root: D,
    list: &mut dyn FnMut(&Path, D) -> Result<DirEntries<D>>,
) -> Result<W> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    write_dir(&mut builder, Path::new(""), root, list, &mut links, bar)?;
    builder.into_inner().context("finishing the tar stream")
}

fn write_dir<W: io::Write, D: Copy>(
    builder: &mut tar::Builder<W>,
    rel: &Path,
    token: D,
    list: &mut dyn FnMut(&Path, D) -> Result<DirEntries<D>>,
    links: &mut HashMap<(u64, u64), PathBuf>,
    bar: &ProgressBar,
) -> Result<()> {
    use crate::security::owner_record;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for (name, full, child) in list(rel, token)? {
        let path = rel.join(&name);
        let meta = std::fs::symlink_metadata(&full)
            .with_context(|| format!("reading {}", full.display()))?;
        let kind = meta.file_type();
        if kind.is_socket() || kind.is_char_device() || kind.is_block_device() {
            continue;
        }
        let mut xattrs = crate::sys::xattrs(&full)
            .with_context(|| format!("reading xattrs of {}", full.display()))?;
        // Root emulation's record of the owner a chown gave the file: the archive says it as
        // the entry's owner, not as an attribute.
        let recorded = xattrs
            .iter()
            .position(|(k, _)| k.as_bytes() == owner_record::XATTR)
            .and_then(|i| owner_record::Owner::decode(&xattrs.remove(i).1));
        if !xattrs.is_empty() {
            let mut data = Vec::new();
            for (k, v) in &xattrs {
                let mut key = b"SCHILY.xattr.".to_vec();
                key.extend_from_slice(k.as_bytes());
                data.extend(pax_record(&key, v));
            }
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            let pax_name = format!("PaxHeaders/{}", name.to_string_lossy());
            h.set_path(pax_name.chars().take(99).collect::<String>())
                .context("naming a PAX header")?;
            h.set_cksum();
            builder
                .append(&h, &data[..])
                .context("writing a PAX header")?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        if let Some(record) = recorded {
            let real = owner_record::Owner {
                uid: meta.uid(),
                gid: meta.gid(),
            };
            let owner = record.over(real);
            h.set_uid(owner.uid as u64);
            h.set_gid(owner.gid as u64);
        }
        let what = || format!("adding {} to the archive", full.display());
        if kind.is_dir() {
            h.set_size(0);
            builder
                .append_data(&mut h, &path, io::empty())
                .with_context(what)?;
            write_dir(builder, &path, child, list, links, bar)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&full).with_context(what)?;
            h.set_size(0);
            builder
                .append_link(&mut h, &path, &target)
                .with_context(what)?;
        } else if kind.is_file()
            && meta.nlink() > 1
            && links.contains_key(&(meta.dev(), meta.ino()))
        {
            let first = &links[&(meta.dev(), meta.ino())];
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            builder
                .append_link(&mut h, &path, first)
                .with_context(what)?;
        } else if kind.is_file() {
            if meta.nlink() > 1 {
                links.insert((meta.dev(), meta.ino()), path.clone());
            }
            let file = std::fs::File::open(&full).with_context(what)?;
            builder
                .append_data(&mut h, &path, BufReader::with_capacity(1 << 20, file))
                .with_context(what)?;
            bar.inc(meta.len());
        } else {
            // A fifo.
            h.set_size(0);
            builder
                .append_data(&mut h, &path, io::empty())
                .with_context(what)?;
        }
    }
    Ok(())
}

/// A writer that hashes and counts what it writes.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: io::Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub fn finish(mut self) -> io::Result<(W, String, u64)> {
        self.inner.flush()?;
        Ok((self.inner, hex_digest(self.hasher), self.count))
    }
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes an OCI image layout as a tar archive (what `podman load` and `skopeo copy
/// oci-archive:` read): one uncompressed layer read from `layer` (`digest`, `size`), the image
/// config, a manifest and an index naming the image `name`.
pub fn write_oci_archive<W: io::Write>(
    out: W,
    mut layer: File,
    digest: &str,
    size: u64,
    config: &RunConfig,
    name: &str,
    created: &str,
) -> Result<W> {
    let config_json = serde_json::to_vec(&serde_json::json!({
        "created": created,
        "architecture": host_architecture(),
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [digest]},
        "history": [{"created": created, "created_by": "nook"}],
    }))?;
    let config_digest = sha256_of(&config_json);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_json.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest,
            "size": size,
        }],
    }))?;
    let manifest_digest = sha256_of(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": host_architecture(), "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": name},
        }],
    }))?;
    let mut builder = tar::Builder::new(out);
    let mut add = |path: &str, size: u64, data: &mut dyn Read| -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(if path.ends_with('/') {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_mode(if path.ends_with('/') { 0o755 } else { 0o644 });
        h.set_size(size);
        h.set_mtime(0);
        builder
            .append_data(&mut h, path, data)
            .with_context(|| format!("writing {path} of the OCI layout"))
    };
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    add("oci-layout", layout.len() as u64, &mut &layout[..])?;
    add("blobs/", 0, &mut io::empty())?;
    add("blobs/sha256/", 0, &mut io::empty())?;
    layer.seek(SeekFrom::Start(0))?;
    add(
        &blob_path(digest)?,
        size,
        &mut BufReader::with_capacity(1 << 20, layer),
    )?;
    add(
        &blob_path(&config_digest)?,
        config_json.len() as u64,
        &mut &config_json[..],
    )?;
    add(
        &blob_path(&manifest_digest)?,
        manifest.len() as u64,
        &mut &manifest[..],
    )?;
    add("index.json", index.len() as u64, &mut &index[..])?;
    builder.into_inner().context("finishing the OCI archive")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_is_told_by_magic_bytes() {
        assert_eq!(
            Compression::detect(&[0x1f, 0x8b, 8]).unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]).unwrap(),
            Compression::Zstd
        );
        assert_eq!(
            Compression::detect(b"\xfd7zXZ\x00").unwrap(),
            Compression::Xz
        );
        assert_eq!(Compression::detect(b"etc/\0").unwrap(), Compression::None);
        assert!(Compression::detect(b"BZh91AY").is_err());
    }

    #[test]
    fn digests_must_be_sha256_hex() {
        let hex = "a".repeat(64);
        assert_eq!(
            blob_path(&format!("sha256:{hex}")).unwrap(),
            format!("blobs/sha256/{hex}")
        );
        assert!(blob_path("sha256:../../etc/passwd").is_err());
        assert!(blob_path(&format!("sha512:{hex}")).is_err());
        assert!(blob_path(&hex).is_err());
    }

    fn header_named(name: &str) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.as_bytes().to_vec()
    }

    #[test]
    fn image_archives_are_told_from_root_filesystems_by_their_first_member() {
        assert!(looks_like_image_archive(&header_named("blobs/sha256/")));
        assert!(looks_like_image_archive(&header_named("oci-layout")));
        assert!(looks_like_image_archive(&header_named("manifest.json")));
        assert!(looks_like_image_archive(&header_named(&format!(
            "{}/layer.tar",
            "0".repeat(64)
        ))));
        assert!(!looks_like_image_archive(&header_named("./")));
        let mut layout_tar = header_named("./");
        layout_tar.extend(header_named("./blobs/"));
        assert!(looks_like_image_archive(&layout_tar));
        let mut rootfs_tar = header_named("./");
        rootfs_tar.extend(header_named("./bin/"));
        assert!(!looks_like_image_archive(&rootfs_tar));
        assert!(!looks_like_image_archive(&header_named("etc/passwd")));
        // podman save and skopeo's docker-archive start with their layers.
        assert!(looks_like_image_archive(&header_named(&format!(
            "{}.tar",
            "a".repeat(64)
        ))));
    }

    #[test]
    fn a_tar_is_an_image_archive_only_by_all_its_members() {
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        let hex = "b".repeat(64);
        let (layer, config) = (format!("{hex}.tar"), format!("{hex}.json"));
        let docker = [&layer, &config, "manifest.json", "repositories", &hex];
        assert_eq!(classify(&set(&docker)), TarKind::ImageArchive);
        let oci = ["blobs", "oci-layout", "index.json"];
        assert_eq!(classify(&set(&oci)), TarKind::ImageArchive);
        assert!(matches!(
            classify(&set(&[&layer, &config])),
            TarKind::IncompleteArchive(_)
        ));
        assert_eq!(
            classify(&set(&["blobs", "bin", "etc"])),
            TarKind::RootFilesystem
        );
        assert_eq!(
            classify(&set(&["manifest.json", "usr"])),
            TarKind::RootFilesystem
        );
    }

    /// Writes an OCI layout directory: `blobs` under their digests, and `index` as index.json.
    fn write_layout(dir: &Path, index: &str, blobs: &[&[u8]]) {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        for blob in blobs {
            std::fs::write(dir.join(blob_path(&sha256_of(blob)).unwrap()), blob).unwrap();
        }
        std::fs::write(dir.join("index.json"), index).unwrap();
    }

    #[test]
    fn layer_sizes_past_u64_are_refused_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("nook-archive-test-{}", std::process::id()));
        let _ = crate::fsutil::remove_tree(&dir);
        let layer = [0u8; 1024];
        let config = b"{}";
        let manifest = format!(
            r#"{{"config":{{"digest":"{}","size":2}},"layers":[{{"digest":"{l}","size":{max}}},{{"digest":"{l}","size":{max}}}]}}"#,
            sha256_of(config),
            l = sha256_of(&layer),
            max = u64::MAX,
        );
        let index = format!(
            r#"{{"manifests":[{{"digest":"{}","size":{}}}]}}"#,
            sha256_of(manifest.as_bytes()),
            manifest.len()
        );
        write_layout(
            &dir.join("in"),
            &index,
            &[&layer, config, manifest.as_bytes()],
        );
        let map = crate::idmap::IdMapping::of_current_user();
        let mut applier = Applier::create(&dir.join("root"), &map).unwrap();
        let err = import_source(dir.join("in").to_str().unwrap(), &mut applier, &dir)
            .map(|found| found.kind)
            .unwrap_err();
        let _ = crate::fsutil::remove_tree(&dir);
        assert!(format!("{err:#}").contains("the manifest says"), "{err:#}");
    }

    #[test]
    fn archive_member_links_are_resolved_relative_to_their_directory() {
        assert_eq!(normalize(Path::new("a/../b/layer.tar")), "b/layer.tar");
        assert_eq!(member_name(Path::new("./blobs/sha256/")), "blobs/sha256");
    }
}
