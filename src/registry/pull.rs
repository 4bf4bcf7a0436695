//! `nook pull`: a reference resolved through registries.conf, its manifest (a list or index
//! narrowed to one platform), the config and layers fetched into the blob cache (in parallel,
//! resumable, verified by digest), and each layer applied into a new flat image as soon as the
//! layers before it are in, inside the user namespace of the image's mapping, verified by its
//! diff_id. The image appears under its name only when complete.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use super::auth;
use super::client::{Failure, Session};
use super::conf::Conf;
use super::progress::Progress;
use super::reference::{Reference, Written};
use crate::idmap::IdMapping;
use crate::storage::archive::{
    host_architecture, peek, Compression, Decoder, Found, Hashing, ImageConfigFile,
};
use crate::storage::blobs::BlobCache;
use crate::storage::image::{Built, ImageStore};
use crate::storage::layer::Applier;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Manifests and configs larger than this are refused (the distribution spec suggests 4 MiB).
const MAX_MANIFEST: u64 = 4 << 20;

/// `os/arch[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn host() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: host_architecture().into(),
            variant: None,
        }
    }

    pub fn parse(text: &str) -> Result<Platform> {
        let parts: Vec<&str> = text.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => bail!("--platform {text:?}: write OS/ARCH[/VARIANT], as in linux/amd64"),
        }
    }

    fn matches(&self, p: &DescPlatform) -> bool {
        p.os == self.os
            && p.architecture == self.architecture
            && (self.variant.is_none() || self.variant == p.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    platform: Option<DescPlatform>,
    #[serde(default)]
    urls: Option<Vec<String>>,
}

#[derive(Clone, Debug, Deserialize)]
struct DescPlatform {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(rename = "schemaVersion", default)]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// What `nook pull` is asked.
pub struct Request {
    pub reference: String,
    pub platform: Platform,
    /// `--tls-verify=false`: every source is treated as insecure.
    pub tls_verify: bool,
    /// Store under this name instead of the reference's own.
    pub name: Option<String>,
    pub parallel: usize,
    pub timeout: Duration,
    pub progress: Progress,
}

/// What a pull did.
pub struct Pulled {
    pub name: String,
    pub reference: Reference,
    pub digest: String,
    /// The image was there already with this digest.
    pub up_to_date: bool,
    pub layers: usize,
    pub downloaded: u64,
}

/// A manifest resolved to one image: where it came from and what it is made of.
struct Resolved {
    session: Session,
    /// What was asked of the source that answered (a mirror's name, for a mirror).
    reference: Reference,
    /// The reference as the user's name for it resolved (what the image records).
    canonical: Reference,
    /// The digest of what the reference names (the list, for a multi-platform image).
    digest: String,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

fn scope(r: &Reference) -> String {
    format!("repository:{}:pull", r.repository)
}

/// Reads a small body whole, refusing more than `max` bytes whatever Content-Length says.
fn read_small(resp: ureq::Response, max: u64, what: &str) -> Result<Vec<u8>> {
    if let Some(len) = resp
        .header("Content-Length")
        .and_then(|l| l.parse::<u64>().ok())
    {
        if len > max {
            bail!("{what} is {len} bytes, more than the {max} nook accepts");
        }
    }
    let mut data = Vec::new();
    resp.into_reader()
        .take(max + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("reading {what}"))?;
    if data.len() as u64 > max {
        bail!("{what} is larger than the {max} bytes nook accepts");
    }
    Ok(data)
}

fn sha256(data: &[u8]) -> String {
    crate::storage::archive::sha256_of(data)
}

/// Fetches a manifest by tag or digest: its bytes, media type and digest.
fn fetch_manifest(
    session: &Session,
    r: &Reference,
    what: &str,
) -> std::result::Result<(Vec<u8>, String, String), Failure> {
    let accept = [
        OCI_INDEX,
        OCI_MANIFEST,
        DOCKER_LIST,
        DOCKER_MANIFEST,
        DOCKER_SCHEMA1_SIGNED,
        DOCKER_SCHEMA1,
    ]
    .join(", ");
    let resp = session.send(
        &scope(r),
        |agent, base| {
            agent
                .get(&format!("{base}/v2/{}/manifests/{what}", r.repository))
                .set("Accept", &accept)
        },
        None,
    )?;
    let content_type = resp
        .header("Content-Type")
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let data =
        read_small(resp, MAX_MANIFEST, &format!("the manifest of {r}")).map_err(Failure::Other)?;
    let digest = sha256(&data);
    if what.starts_with("sha256:") && digest != what {
        return Err(Failure::Other(anyhow!(
            "the manifest {what} of {r} does not match its digest: it hashes to {digest}"
        )));
    }
    Ok((data, content_type, digest))
}

fn parse_manifest(data: &[u8], content_type: &str, r: &Reference) -> Result<(Manifest, String)> {
    let m: Manifest = serde_json::from_slice(data)
        .with_context(|| format!("{r}: the manifest is not valid JSON of a known kind"))?;
    let kind = m
        .media_type
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| content_type.to_string());
    if m.schema_version == 1 || kind == DOCKER_SCHEMA1 || kind == DOCKER_SCHEMA1_SIGNED {
        bail!(
            "{r} has a Docker schema 1 manifest, a format registries deprecated in 2019 that nook \
             does not read: push the image again with a current tool (podman, skopeo or docker \
             write schema 2 or OCI)"
        );
    }
    let kind = if !kind.is_empty() {
        kind
    } else if m.manifests.is_some() {
        OCI_INDEX.to_string()
    } else {
        OCI_MANIFEST.to_string()
    };
    Ok((m, kind))
}

/// Resolves `r` at one source to an image for `platform`.
fn resolve(
    session: Session,
    r: Reference,
    platform: &Platform,
) -> std::result::Result<Resolved, Failure> {
    let (data, ctype, digest) = fetch_manifest(&session, &r, r.api_reference())?;
    let step = || -> Result<(Descriptor, Vec<Descriptor>)> {
        let (mut m, mut kind) = parse_manifest(&data, &ctype, &r)?;
        for _ in 0..4 {
            if kind != OCI_INDEX && kind != DOCKER_LIST {
                break;
            }
            let list = m.manifests.take().unwrap_or_default();
            let mut seen = Vec::new();
            let chosen = list.iter().find(|d| match &d.platform {
                Some(p) if platform.matches(p) => true,
                Some(p) => {
                    seen.push(match &p.variant {
                        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                        None => format!("{}/{}", p.os, p.architecture),
                    });
                    false
                }
                None => false,
            });
            let Some(d) = chosen.cloned() else {
                seen.retain(|s| s != "unknown/unknown");
                bail!(
                    "{r} has no image for {platform}; it has: {}",
                    if seen.is_empty() {
                        "none".into()
                    } else {
                        seen.join(", ")
                    }
                );
            };
            let (inner, ictype, _) =
                fetch_manifest(&session, &r, &d.digest).map_err(|f| match f {
                    Failure::Status(code, text) => {
                        anyhow!("{r}: manifest {} for {platform}: {code} {text}", d.digest)
                    }
                    Failure::Other(e) => {
                        e.context(format!("{r}: manifest {} for {platform}", d.digest))
                    }
                })?;
            if inner.len() as u64 != d.size {
                bail!(
                    "{r}: manifest {} is {} bytes, the list says {}",
                    d.digest,
                    inner.len(),
                    d.size
                );
            }
            (m, kind) = parse_manifest(&inner, &ictype, &r)?;
            if kind.is_empty() {
                kind = d.media_type.clone();
            }
        }
        if kind != OCI_MANIFEST && kind != DOCKER_MANIFEST {
            bail!("{r}: unsupported manifest type {kind}");
        }
        let config = m
            .config
            .with_context(|| format!("{r}: the manifest has no config"))?;
        let layers = m.layers.unwrap_or_default();
        for l in &layers {
            if l.media_type.contains("encrypted") {
                bail!("{r}: layer {} is encrypted ({})", l.digest, l.media_type);
            }
            if l.urls.as_ref().is_some_and(|u| !u.is_empty())
                || l.media_type.contains("foreign")
                || l.media_type.contains("nondistributable")
            {
                bail!("{r}: layer {} must be fetched from elsewhere ({}): nook pulls only layers the registry holds", l.digest, l.media_type);
            }
            crate::storage::blobs::digest_hex(&l.digest).with_context(|| format!("{r}: layer"))?;
        }
        crate::storage::blobs::digest_hex(&config.digest)
            .with_context(|| format!("{r}: config"))?;
        Ok((config, layers))
    };
    match step() {
        Ok((config, layers)) => Ok(Resolved {
            session,
            canonical: r.clone(),
            reference: r,
            digest,
            config,
            layers,
        }),
        Err(e) => Err(Failure::Other(e)),
    }
}

/// Finds the image: each candidate of a short name, each source (mirrors first) of a
/// candidate, until one has it. The error lists every attempt.
fn locate(req: &Request) -> Result<Resolved> {
    let conf = Conf::load()?;
    let written = Written::parse(&req.reference)?;
    let mut tried = Vec::new();
    for candidate in conf.candidates(&written)? {
        for source in conf.sources(&candidate, !req.tls_verify)? {
            let r = source.reference.clone();
            let attempt = (|| -> std::result::Result<Resolved, Failure> {
                let creds = auth::lookup(&r.name()).map_err(Failure::Other)?;
                let session = Session::open(r.api_host(), source.insecure, creds, req.timeout)
                    .map_err(Failure::Other)?;
                resolve(session, r.clone(), &req.platform)
            })();
            match attempt {
                Ok(mut resolved) => {
                    resolved.canonical = candidate;
                    return Ok(resolved);
                }
                Err(Failure::Status(404, text)) => tried.push(format!("{r}: not found ({text})")),
                Err(Failure::Status(code, text)) => tried.push(format!("{r}: {code} {text}")),
                Err(Failure::Other(e)) => tried.push(format!("{r}: {e:#}")),
            }
        }
    }
    if tried.len() == 1 {
        bail!("pulling {}: {}", req.reference, tried[0]);
    }
    bail!(
        "pulling {}: no source has it:\n  {}",
        req.reference,
        tried.join("\n  ")
    )
}

/// Fetches a small blob (the config) through the cache.
fn fetch_config(res: &Resolved, cache: &BlobCache) -> Result<Vec<u8>> {
    let d = &res.config;
    if d.size > MAX_MANIFEST {
        bail!(
            "{}: the config is {} bytes, more than nook accepts",
            res.reference,
            d.size
        );
    }
    let path = cache.path(&d.digest)?;
    if let Ok(data) = std::fs::read(&path) {
        if sha256(&data) == d.digest {
            return Ok(data);
        }
        let _ = std::fs::remove_file(&path);
    }
    let r = &res.reference;
    let resp = res
        .session
        .send(
            &scope(r),
            |agent, base| agent.get(&format!("{base}/v2/{}/blobs/{}", r.repository, d.digest)),
            None,
        )
        .map_err(|f| failure(f, &format!("{r}: config {}", d.digest)))?;
    let data = read_small(resp, d.size, &format!("{r}: config {}", d.digest))?;
    if data.len() as u64 != d.size {
        bail!(
            "{r}: config {} is {} bytes, the manifest says {}",
            d.digest,
            data.len(),
            d.size
        );
    }
    cache
        .put(&d.digest, &data)
        .with_context(|| format!("{r}: config"))?;
    Ok(data)
}

fn failure(f: Failure, what: &str) -> anyhow::Error {
    match f {
        Failure::Status(code, text) => anyhow!("{what}: the registry answered {code} {text}"),
        Failure::Other(e) => e.context(what.to_string()),
    }
}

/// Downloads one layer into the cache unless it is there; returns the bytes downloaded.
fn fetch_layer(
    res: &Resolved,
    cache: &BlobCache,
    d: &Descriptor,
    index: usize,
    progress: &Progress,
    stop: &AtomicBool,
) -> Result<u64> {
    let r = &res.reference;
    let label = format!("{r}: layer {} ({})", index + 1, d.digest);
    if cache.has(&d.digest) {
        progress.layer_cached(index, &d.digest, d.size);
        return Ok(0);
    }
    let mut lock = cache.lock(&d.digest).with_context(|| label.clone())?;
    if cache.has(&d.digest) {
        // Another pull downloaded it while this one waited.
        progress.layer_cached(index, &d.digest, d.size);
        return Ok(0);
    }
    let mut partial = cache
        .partial(&d.digest, d.size)
        .with_context(|| label.clone())?;
    let resumed_from = partial.have();
    let bar = progress.layer_start(index, &d.digest, d.size, resumed_from);
    if !partial.is_complete() {
        let from = partial.have();
        let resp = res
            .session
            .send(
                &scope(r),
                |agent, base| {
                    let req = agent.get(&format!("{base}/v2/{}/blobs/{}", r.repository, d.digest));
                    if from > 0 {
                        req.set("Range", &format!("bytes={from}-"))
                    } else {
                        req
                    }
                },
                None,
            )
            .map_err(|f| failure(f, &label))?;
        let ranged = resp.status() == 206
            && resp.header("Content-Range").is_some_and(|c| {
                c.trim_start_matches("bytes ")
                    .starts_with(&format!("{from}-"))
            });
        if from > 0 && !ranged {
            // The registry sent the whole blob: what is there is thrown away.
            partial.restart().with_context(|| label.clone())?;
            bar.set_position(0);
        }
        if let Some(len) = resp
            .header("Content-Length")
            .and_then(|l| l.parse::<u64>().ok())
        {
            if len > d.size - partial.have() {
                drop(partial);
                let _ = std::fs::remove_file(cache.path(&d.digest)?.with_extension("partial"));
                bail!(
                    "{label}: the registry sends {len} bytes, more than the {} the manifest declares",
                    d.size - resumed_from.min(d.size)
                );
            }
        }
        let mut reader = resp.into_reader();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            if stop.load(Ordering::Relaxed) {
                bail!("{label}: stopped (another download failed)");
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => bail!(
                    "{label}: the registry stopped sending after {} of {} bytes ({e}); the part \
                     is kept and the next pull resumes it",
                    partial.have(),
                    d.size
                ),
            };
            if let Err(e) = partial.write(&buf[..n]) {
                drop(partial);
                let _ = std::fs::remove_file(cache.path(&d.digest)?.with_extension("partial"));
                return Err(e.context(label));
            }
            bar.inc(n as u64);
            lock.refresh();
        }
        if !partial.is_complete() {
            bail!(
                "{label}: the registry ended the blob after {} of {} bytes; the part is kept and \
                 the next pull resumes it",
                partial.have(),
                d.size
            );
        }
    }
    let downloaded = d.size - resumed_from;
    cache
        .commit(&d.digest, partial)
        .with_context(|| format!("{r}: layer {}", index + 1))?;
    drop(lock);
    progress.layer_done(index, &d.digest, &bar);
    Ok(downloaded)
}

/// Applies the cached layers in order, each as soon as it is announced on `ready` (its index as
/// four bytes), checking the blob's digest and the uncompressed diff_id. Runs inside the user
/// namespace.
fn apply_layers(
    rootfs: &Path,
    map: &IdMapping,
    layers: &[(PathBuf, String, String)],
    ready: File,
    label: &str,
) -> Result<crate::storage::layer::Summary> {
    let mut applier = Applier::create(rootfs, map)?;
    let mut ready = BufReader::new(ready);
    let mut arrived = vec![false; layers.len()];
    for (i, (path, digest, diff_id)) in layers.iter().enumerate() {
        while !arrived[i] {
            let mut b = [0u8; 4];
            ready
                .read_exact(&mut b)
                .with_context(|| format!("{label}: the download of layer {} stopped", i + 1))?;
            let k = u32::from_le_bytes(b) as usize;
            if k < arrived.len() {
                arrived[k] = true;
            }
        }
        let what = format!("{label}: layer {} ({digest})", i + 1);
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let compressed = Hashing::new(
            BufReader::with_capacity(1 << 20, file),
            indicatif::ProgressBar::hidden(),
        );
        let (magic, peeked) = peek(compressed, 6).with_context(|| what.clone())?;
        let compression = Compression::detect(&magic).with_context(|| what.clone())?;
        let decoder = Decoder::new(peeked, compression).with_context(|| what.clone())?;
        let tar = Hashing::new(decoder, indicatif::ProgressBar::hidden());
        let rest = applier.apply(tar, &what)?;
        let (got_diff, _, decoder) = rest.finish_into().with_context(|| what.clone())?;
        let (_, compressed) = decoder.into_inner().into_inner();
        let (got, _) = compressed.finish().with_context(|| what.clone())?;
        if &got != digest {
            let _ = std::fs::remove_file(path);
            bail!("{what}: the cached blob hashes to {got}; it was deleted, pull again");
        }
        if &got_diff != diff_id {
            bail!("{what}: the uncompressed layer hashes to {got_diff}, the config's diff_id is {diff_id}");
        }
    }
    applier.finish()
}

/// Pulls `req` into `store` (blobs into `cache`) with the mapping `idmap`.
pub fn pull(
    store: &ImageStore,
    cache: &BlobCache,
    idmap: &IdMapping,
    req: &Request,
) -> Result<Pulled> {
    let started = Instant::now();
    let res = locate(req)?;
    let r = res.canonical.clone();
    let name = req.name.clone().unwrap_or_else(|| r.local_name());
    crate::storage::image::validate_image_name(&name)?;
    if store.exists(&name) {
        let image = store.get(&name)?;
        if image.meta.digest.as_deref() == Some(res.digest.as_str()) {
            req.progress
                .finish(&name, &res.digest, true, started.elapsed());
            return Ok(Pulled {
                name,
                reference: r,
                digest: res.digest,
                up_to_date: true,
                layers: res.layers.len(),
                downloaded: 0,
            });
        }
        bail!(
            "image {name} exists already (from {}{}): remove it with `nook rmi {name}`, or pull \
             under another name with --name",
            image.meta.source,
            image
                .meta
                .digest
                .as_deref()
                .map(|d| format!(", {d}"))
                .unwrap_or_default()
        );
    }
    let config_data = fetch_config(&res, cache)?;
    let config: ImageConfigFile = serde_json::from_slice(&config_data)
        .with_context(|| format!("{r}: parsing the image config {}", res.config.digest))?;
    if let (Some(os), Some(arch)) = (&config.os, &config.architecture) {
        if *os != req.platform.os || *arch != req.platform.architecture {
            bail!("{r}: the image is for {os}/{arch}, not {}", req.platform);
        }
    }
    let diff_ids = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    if diff_ids.len() != res.layers.len() {
        bail!(
            "{r}: the config lists {} layer digests (rootfs.diff_ids) for {} layers",
            diff_ids.len(),
            res.layers.len()
        );
    }
    let plan: Vec<(PathBuf, String, String)> = res
        .layers
        .iter()
        .zip(&diff_ids)
        .map(|(d, diff)| Ok((cache.path(&d.digest)?, d.digest.clone(), diff.clone())))
        .collect::<Result<_>>()?;
    let downloaded = AtomicUsize::new(0);
    let source = r.to_string();
    let found = Found {
        config: config.config.unwrap_or_default(),
        kind: "registry".into(),
        layers: res.layers.len(),
        notes: Vec::new(),
        reference: Some(source.clone()),
        digest: Some(res.digest.clone()),
    };
    req.progress.start(&r, &res.digest, &res.layers);
    store.build(&name, idmap, &source, |tmp| {
        let (ready_rx, ready_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (report_rx, report_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let rootfs = tmp.join("rootfs");
        let map = idmap.clone();
        let label = source.clone();
        let child = crate::launch::spawn_in_userns(idmap, move || {
            let summary = apply_layers(&rootfs, &map, &plan, File::from(ready_rx), &label)?;
            serde_json::to_writer(File::from(report_tx), &summary).context("reporting the pull")?;
            Ok(())
        })?;
        let ready = Mutex::new(File::from(ready_tx));
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..req.parallel.clamp(1, 16).min(res.layers.len().max(1)) {
                s.spawn(|| loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(d) = res.layers.get(i) else {
                        return;
                    };
                    match fetch_layer(&res, cache, d, i, &req.progress, &stop) {
                        Ok(n) => {
                            downloaded.fetch_add(n as usize, Ordering::Relaxed);
                            let sent = ready
                                .lock()
                                .expect("not poisoned")
                                .write_all(&(i as u32).to_le_bytes());
                            // A child that stopped reading failed: its error is reported.
                            if sent.is_err() {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            first_error.lock().expect("not poisoned").get_or_insert(e);
                        }
                    }
                });
            }
        });
        drop(ready);
        if let Some(e) = first_error.into_inner().expect("not poisoned") {
            child.kill();
            return Err(e);
        }
        child.wait()?;
        let mut report = String::new();
        File::from(report_rx)
            .read_to_string(&mut report)
            .context("reading the pull's report")?;
        let summary = serde_json::from_str(&report).context("parsing the pull's report")?;
        Ok(Built { found, summary })
    })?;
    req.progress
        .finish(&name, &res.digest, false, started.elapsed());
    Ok(Pulled {
        name,
        reference: r,
        digest: res.digest,
        up_to_date: false,
        layers: res.layers.len(),
        downloaded: downloaded.into_inner() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_match_variants_only_when_asked() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//v7").is_err());
        let d = DescPlatform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        };
        assert!(p.matches(&d));
        assert!(Platform::parse("linux/arm64").unwrap().matches(&d));
        assert!(!Platform::parse("linux/arm64/v7").unwrap().matches(&d));
    }

    #[test]
    fn schema1_is_refused_naming_the_reference() {
        let r = Written::parse("localhost:5000/old:1")
            .unwrap()
            .qualify("localhost:5000");
        let body = br#"{"schemaVersion":1,"name":"old","tag":"1","fsLayers":[]}"#;
        let err = parse_manifest(body, DOCKER_SCHEMA1_SIGNED, &r)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("localhost:5000/old:1") && err.contains("schema 1"),
            "{err}"
        );
    }
}
