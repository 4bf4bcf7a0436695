//! `nook push IMAGE REF`: the flat image as the one-layer OCI image `nook export --format oci`
//! makes, uploaded by the distribution spec's push flow: each blob is skipped when the
//! repository has it, mounted from another repository of the registry that nook pushed it to
//! before, or uploaded (in one PUT when small, else in PATCH chunks); then the manifest.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::auth;
use super::client::{Failure, Session};
use super::conf::Conf;
use super::reference::{Reference, Written};
use crate::storage::archive::Layout;
use crate::storage::image::{ExportFormat, Exportable, Image, ImageStore};

/// Blobs up to this size go in one request; larger ones in chunks of it.
pub const CHUNK: u64 = 16 << 20;

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Desc>,
}

#[derive(Clone, Deserialize)]
struct Desc {
    digest: String,
    size: u64,
}

#[derive(Deserialize)]
struct Manifest {
    config: Desc,
    layers: Vec<Desc>,
}

pub struct Pushed {
    pub reference: Reference,
    pub digest: String,
    /// Per blob: "exists", "mounted" or "uploaded".
    pub blobs: Vec<(String, &'static str)>,
}

fn failure(f: Failure, what: &str) -> anyhow::Error {
    match f {
        Failure::Status(code, text) => {
            anyhow::anyhow!("{what}: the registry answered {code} {text}")
        }
        Failure::Other(e) => e.context(what.to_string()),
    }
}

/// Where nook records which repositories it pushed a blob to (for cross-repository mounts).
fn pushed_record(storage: &Path, digest: &str) -> Result<std::path::PathBuf> {
    let hex = crate::storage::blobs::digest_hex(digest)?;
    Ok(storage.join("blobs/pushed").join(hex))
}

/// An absolute URL for a `Location` header, which may be relative to the registry.
fn absolute(base_of: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else {
        format!("{base_of}{location}")
    }
}

fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

fn push_blob(
    session: &Session,
    r: &Reference,
    layout: &Layout,
    d: &Desc,
    storage: &Path,
) -> Result<&'static str> {
    let scope = format!("repository:{}:pull,push", r.repository);
    let what = format!("{r}: blob {}", d.digest);
    match session.send(
        &scope,
        |agent, base| agent.head(&format!("{base}/v2/{}/blobs/{}", r.repository, d.digest)),
        None,
    ) {
        Ok(_) => return Ok("exists"),
        Err(Failure::Status(404, _)) => {}
        Err(f) => return Err(failure(f, &what)),
    }
    // A repository of the same registry that nook pushed the blob to: ask for a mount.
    let record = pushed_record(storage, &d.digest)?;
    let from = std::fs::read_to_string(&record)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{}/", r.registry)))
        .find(|repo| *repo != r.repository)
        .map(str::to_string);
    let start = match &from {
        Some(repo) => {
            let scope = format!("{scope} repository:{repo}:pull");
            session.send(
                &scope,
                |agent, base| {
                    agent
                        .post(&format!("{base}/v2/{}/blobs/uploads/", r.repository))
                        .query("mount", &d.digest)
                        .query("from", repo)
                },
                Some(&[]),
            )
        }
        None => session.send(
            &scope,
            |agent, base| agent.post(&format!("{base}/v2/{}/blobs/uploads/", r.repository)),
            Some(&[]),
        ),
    }
    .map_err(|f| failure(f, &format!("{what}: starting the upload")))?;
    if start.status() == 201 {
        return Ok("mounted");
    }
    let base = session.base().to_string();
    let mut location = absolute(
        &base,
        start
            .header("Location")
            .with_context(|| format!("{what}: the upload has no Location"))?,
    );
    let name = format!(
        "blobs/sha256/{}",
        crate::storage::blobs::digest_hex(&d.digest)?
    );
    let (mut reader, size) = layout.open(&name).with_context(|| what.clone())?;
    if size != d.size {
        bail!(
            "{what}: the exported blob is {size} bytes, the manifest says {}",
            d.size
        );
    }
    let mut buf = vec![0u8; CHUNK.min(size.max(1)) as usize];
    if size <= CHUNK {
        reader
            .read_exact(&mut buf[..size as usize])
            .with_context(|| what.clone())?;
        let body = &buf[..size as usize];
        session
            .send(
                &scope,
                |agent, _| {
                    agent
                        .put(&with_digest(&location, &d.digest))
                        .set("Content-Type", "application/octet-stream")
                },
                Some(body),
            )
            .map_err(|f| failure(f, &format!("{what}: uploading")))?;
    } else {
        let mut sent = 0u64;
        while sent < size {
            let n = (size - sent).min(CHUNK) as usize;
            reader
                .read_exact(&mut buf[..n])
                .with_context(|| what.clone())?;
            let range = format!("{sent}-{}", sent + n as u64 - 1);
            let resp = session
                .send(
                    &scope,
                    |agent, _| {
                        agent
                            .request("PATCH", &location)
                            .set("Content-Type", "application/octet-stream")
                            .set("Content-Range", &range)
                    },
                    Some(&buf[..n]),
                )
                .map_err(|f| failure(f, &format!("{what}: uploading bytes {range}")))?;
            if let Some(next) = resp.header("Location") {
                location = absolute(&base, next);
            }
            sent += n as u64;
        }
        session
            .send(
                &scope,
                |agent, _| agent.put(&with_digest(&location, &d.digest)),
                Some(&[]),
            )
            .map_err(|f| failure(f, &format!("{what}: finishing the upload")))?;
    }
    Ok("uploaded")
}

/// Pushes `image` to the reference `target` (fully qualified, or resolved as a pull would be:
/// to the first search registry).
pub fn push(
    store: &ImageStore,
    storage: &Path,
    image: &Image,
    target: &str,
    tls_verify: bool,
    timeout: std::time::Duration,
) -> Result<Pushed> {
    let conf = Conf::load()?;
    let written = Written::parse(target)?;
    let r = conf
        .candidates(&written)?
        .into_iter()
        .next()
        .with_context(|| format!("{target}: no registry to push to"))?;
    if r.digest.is_some() {
        bail!("{target}: push to a tag, not a digest (the registry computes the digest)");
    }
    let insecure = !tls_verify || conf.insecure_host(&r.registry);
    // The OCI archive goes to an unnamed file of the store: a push cut short leaves nothing.
    let scratch = tempfile_in(storage)?;
    store
        .export(
            &Exportable::Image(image),
            scratch.try_clone().context("duplicating a descriptor")?,
            ExportFormat::Oci,
        )
        .with_context(|| format!("exporting {}", image.meta.name))?;
    let layout = Layout::index_tar(Path::new(&format!("/proc/self/fd/{}", scratch.as_raw_fd())))
        .context("reading the exported image")?;
    let index: Index = serde_json::from_slice(&layout.read_small("index.json")?)
        .context("reading the exported index.json")?;
    let mdesc = index
        .manifests
        .first()
        .context("the export has no manifest")?
        .clone();
    let mname = format!(
        "blobs/sha256/{}",
        crate::storage::blobs::digest_hex(&mdesc.digest)?
    );
    let manifest_bytes = layout.read_small(&mname)?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).context("reading the exported manifest")?;

    let creds = auth::lookup(&r.name())?;
    let session = Session::open(r.api_host(), insecure, creds, timeout)?;
    let mut blobs = Vec::new();
    for d in manifest
        .layers
        .iter()
        .chain(std::iter::once(&manifest.config))
    {
        let how = push_blob(&session, &r, &layout, d, storage)?;
        let record = pushed_record(storage, &d.digest)?;
        crate::fsutil::create_private_dir(record.parent().expect("has a parent"))?;
        let mut lines = std::fs::read_to_string(&record).unwrap_or_default();
        let entry = r.name();
        if !lines.lines().any(|l| l == entry) {
            lines.push_str(&entry);
            lines.push('\n');
            crate::fsutil::write_atomic(&record, lines.as_bytes(), false)?;
        }
        blobs.push((d.digest.clone(), how));
    }
    let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
    let scope = format!("repository:{}:pull,push", r.repository);
    session
        .send(
            &scope,
            |agent, base| {
                agent
                    .put(&format!("{base}/v2/{}/manifests/{tag}", r.repository))
                    .set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            },
            Some(&manifest_bytes),
        )
        .map_err(|f| failure(f, &format!("{r}: uploading the manifest")))?;
    Ok(Pushed {
        reference: r,
        digest: mdesc.digest,
        blobs,
    })
}

fn tempfile_in(dir: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    crate::fsutil::create_private_dir(dir)?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
        .with_context(|| format!("creating a scratch file in {}", dir.display()))
}
