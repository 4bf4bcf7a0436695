//! `nook cp`: files between a container and the host, both ways, `-` for a tar stream.
//!
//! The container's side always runs in a child process whose root directory is the container's
//! root: a running container's user and mount namespaces joined, or a stopped container's layer
//! mounted again over its image in a private mount namespace (its writes go to the container's
//! upper layer, as the container's own would) and made the root with `chroot`. The path given
//! is opened with `sys::open_in_root` from that root, and every symbolic link met on the way
//! resolves inside the container, as it does for the container's processes. The host's side
//! runs in nook itself, as the user. The two sides hand each other a tar stream through an
//! unnamed scratch file in the store. Files copied in belong to root inside the container, as
//! with podman; files copied out belong to the user.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cli::CpArgs;
use crate::launch::{run_in_container, run_in_userns};
use crate::storage::container::{Container, Status, Store};
use crate::storage::upper::LayerKind;

/// One end of a copy.
enum End {
    /// `-`: a tar stream on stdin or stdout.
    Stream,
    Host(PathBuf),
    Container(Box<Container>, String),
}

fn parse_end(store: &Store, arg: &str) -> Result<End> {
    if arg == "-" {
        return Ok(End::Stream);
    }
    // As podman: NAME:PATH is a container's path; a host path with a colon is written ./a:b.
    match arg.split_once(':') {
        Some((name, path)) if !name.is_empty() && !name.contains('/') => {
            let container = store.get(name).with_context(|| format!("nook cp {arg}"))?;
            if path.is_empty() {
                bail!("nook cp {arg}: give a path in the container after the colon");
            }
            Ok(End::Container(Box::new(container), path.to_string()))
        }
        _ => Ok(End::Host(PathBuf::from(arg))),
    }
}

pub fn cp(args: &CpArgs) -> Result<i32> {
    let store = Store::open()?;
    let from = parse_end(&store, &args.source)?;
    let to = parse_end(&store, &args.destination)?;
    let scratch = scratch_file(store.root())?;
    match (from, to) {
        (End::Container(c, path), to @ (End::Host(_) | End::Stream)) => {
            let name = base_name(&path)
                .with_context(|| format!("nook cp {}: {path} names no file", c.meta.name))?;
            in_container(&c, || {
                write_archive(Path::new(&path), &name, &scratch)
                    .with_context(|| format!("{}:{path}", c.meta.name))
            })?;
            let mut archive = rewound(&scratch)?;
            match to {
                End::Stream => {
                    refuse_terminal()?;
                    io::copy(&mut archive, &mut io::stdout().lock())
                        .context("writing the archive to stdout")?;
                }
                End::Host(dest) => {
                    let (dir, top) = destination(&dest, dest.is_dir(), &name)?;
                    extract(archive, &dir, top.as_deref(), false).with_context(|| {
                        format!("copying {}:{path} to {}", c.meta.name, dest.display())
                    })?;
                }
                End::Container(..) => unreachable!("matched above"),
            }
        }
        (from @ (End::Host(_) | End::Stream), End::Container(c, path)) => {
            let top = match &from {
                End::Host(src) => {
                    let name = base_name(&src.to_string_lossy())
                        .with_context(|| format!("nook cp: {} names no file", src.display()))?;
                    host_archive(src, &name, &scratch)?;
                    Some(name)
                }
                _ => {
                    io::copy(&mut io::stdin().lock(), &mut &scratch)
                        .context("reading the archive from stdin")?;
                    None
                }
            };
            let archive = rewound(&scratch)?;
            let what = format!("{}:{path}", c.meta.name);
            in_container(&c, || {
                let dest = Path::new(&path);
                // A link to a directory is a directory to copy into, as for cp.
                let is_dir = open_in_container(dest, true).is_ok_and(|(_, dir)| dir);
                let (dir, rename) = match &top {
                    Some(name) => destination(dest, is_dir, name)?,
                    None if is_dir => (dest.to_path_buf(), None),
                    None => bail!("{path} is not a directory: a tar stream is unpacked into one"),
                };
                // The parent directory, resolved in the container's root.
                open_in_container(&dir, true)?;
                extract(archive, &dir, rename.as_deref(), true)
            })
            .with_context(|| format!("copying into {what}"))?;
        }
        (End::Container(..), End::Container(..)) => bail!(
            "nook cp copies between a container and the host: copy out to a host directory, \
             then from there into the other container"
        ),
        _ => bail!(
            "nook cp needs a container path on one side: CONTAINER:PATH (see `nook ps`); a host \
             path with a colon is written ./NAME"
        ),
    }
    Ok(0)
}

fn refuse_terminal() -> Result<()> {
    if std::io::IsTerminal::is_terminal(&io::stdout()) {
        bail!("refusing to write a tar archive to a terminal: redirect stdout");
    }
    Ok(())
}

/// The last component of a path as given (`/etc/` → `etc`); `None` for `/`, `.` or `..`.
fn base_name(path: &str) -> Option<OsString> {
    match Path::new(path).components().next_back()? {
        Component::Normal(name) => Some(name.to_os_string()),
        _ => None,
    }
}

/// Where the copy lands, as `cp -r` decides: into `dest` when it is a directory (under the
/// source's own name), else as `dest` itself (renamed), in its parent directory.
fn destination(dest: &Path, is_dir: bool, name: &OsString) -> Result<(PathBuf, Option<OsString>)> {
    if is_dir {
        return Ok((dest.to_path_buf(), None));
    }
    if dest.as_os_str().as_bytes().ends_with(b"/") {
        bail!("{}: no such directory", dest.display());
    }
    let new_name = base_name(&dest.to_string_lossy())
        .with_context(|| format!("{}: not a name to copy to", dest.display()))?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, (new_name != *name).then_some(new_name)))
}

/// An unnamed file in the store, for the tar stream between the two sides.
fn scratch_file(root: &Path) -> Result<File> {
    let path = root.join(format!(".cp-{}", std::process::id()));
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(file)
}

/// The scratch file from its start, as the other side left it.
fn rewound(file: &File) -> Result<&File> {
    let mut f = file;
    f.seek(SeekFrom::Start(0))
        .context("rewinding the scratch archive")?;
    Ok(file)
}

/// Runs `work` with the container's root as the root directory (see the module's comment).
fn in_container(c: &Container, work: impl FnOnce() -> Result<()>) -> Result<()> {
    let name = &c.meta.name;
    let state = c.state();
    match (state.effective_status(), state.pid) {
        (Status::Running, Some(pid)) => return run_in_container(pid, work),
        (Status::Created, _) if c.meta.creator_alive() => {
            bail!("container {name} is still being started: try again once it runs")
        }
        _ => {}
    }
    let Some(idmap) = c.meta.idmap.clone() else {
        bail!("container {name} was made by an older nook that did not record its id mapping")
    };
    let kind = LayerKind::for_backend(&c.meta.backend);
    if kind != LayerKind::Copy && !c.meta.image.is_dir() {
        bail!(
            "the image of container {name} ({}) is gone; its files cannot be reached",
            c.meta.image.display()
        );
    }
    run_in_userns(&idmap, || {
        let _fuse = match kind {
            LayerKind::Copy => {
                enter_root(&c.rootfs())?;
                None
            }
            LayerKind::Overlay => {
                crate::rootfs::mount_overlay(&c.meta.image, &c.upper(), &c.work(), &c.dir, false)?;
                enter_root(&c.dir)?;
                None
            }
            LayerKind::Fuse => {
                let mounted = crate::rootfs::fuse::mount(&crate::rootfs::fuse::Layers {
                    lower: &c.meta.image,
                    upper: &c.upper(),
                    work: &c.work(),
                    target: &c.dir,
                    log: &c.dir.join("fuse-overlayfs.log"),
                })?;
                enter_root(&c.dir)?;
                Some(mounted)
            }
        };
        work()
    })
}

fn enter_root(root: &Path) -> Result<()> {
    nix::unistd::chroot(root).with_context(|| format!("chroot {}", root.display()))?;
    nix::unistd::chdir("/").context("chdir /")
}

/// Opens `path` in the container (this process's root); says whether it is a directory. The
/// last component is followed only with `follow`: `cp` copies a symbolic link as a link.
fn open_in_container(path: &Path, follow: bool) -> Result<(std::os::fd::OwnedFd, bool)> {
    let root = nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .context("opening the container's root")?;
    let fd = crate::sys::open_in_root(
        root.as_fd(),
        path,
        libc::O_PATH | libc::O_CLOEXEC | if follow { 0 } else { libc::O_NOFOLLOW },
    )
    .map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => anyhow::anyhow!("{}: no such file or directory", path.display()),
        _ => anyhow::Error::new(e).context(format!("opening {}", path.display())),
    })?;
    let is_dir = nix::sys::stat::fstat(fd.as_fd())
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        .context("fstat")?;
    Ok((fd, is_dir))
}

/// In the container: `path` as a tar stream into `out`, its top entry called `name`.
fn write_archive(path: &Path, name: &OsString, out: &File) -> Result<()> {
    let (_, is_dir) = open_in_container(path, false)?;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    if is_dir {
        builder.append_dir_all(name, path)
    } else {
        builder.append_path_with_name(path, name)
    }
    .with_context(|| format!("reading {}", path.display()))?;
    let mut out = builder.into_inner()?;
    out.flush()?;
    Ok(())
}

/// On the host: `src` as a tar stream whose entries belong to root (0:0), what they become
/// inside the container.
fn host_archive(src: &Path, name: &OsString, out: &File) -> Result<()> {
    let meta = fs::symlink_metadata(src)
        .with_context(|| format!("{}: no such file or directory", src.display()))?;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut paths = vec![(src.to_path_buf(), PathBuf::from(name))];
    while let Some((path, rel)) = paths.pop() {
        let m = if path == src {
            meta.clone()
        } else {
            fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?
        };
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
        header.set_uid(0);
        header.set_gid(0);
        let what = || format!("reading {}", path.display());
        let kind = m.file_type();
        if kind.is_dir() {
            header.set_size(0);
            builder
                .append_data(&mut header, &rel, io::empty())
                .with_context(what)?;
            let mut children: Vec<OsString> = fs::read_dir(&path)
                .with_context(what)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()
                .with_context(what)?;
            children.sort();
            for child in children.into_iter().rev() {
                paths.push((path.join(&child), rel.join(&child)));
            }
        } else if kind.is_symlink() {
            let target = fs::read_link(&path).with_context(what)?;
            header.set_size(0);
            builder
                .append_link(&mut header, &rel, &target)
                .with_context(what)?;
        } else if kind.is_file() {
            let file = File::open(&path).with_context(what)?;
            builder
                .append_data(&mut header, &rel, file)
                .with_context(what)?;
        } else {
            eprintln!(
                "nook: note: {} is neither a file, a directory nor a symbolic link: not copied",
                path.display()
            );
        }
    }
    let mut out = builder.into_inner()?;
    out.flush()?;
    Ok(())
}

/// Unpacks the tar stream into the directory `dir`, its top entry renamed to `rename` if
/// given. No entry leaves `dir`: names are plain relative paths, and no entry is written
/// below a symbolic link it or another entry made. Setuid and setgid bits are kept only with
/// `special_bits` (inside the container): on the host they would make a container's program
/// run as you for whoever can reach the copy.
fn extract(
    archive: impl io::Read,
    dir: &Path,
    rename: Option<&std::ffi::OsStr>,
    special_bits: bool,
) -> Result<()> {
    let mut archive = tar::Archive::new(archive);
    archive.set_preserve_permissions(special_bits);
    archive.set_preserve_ownerships(false);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    for entry in archive.entries().context("reading the archive")? {
        let mut entry = entry.context("reading the archive")?;
        let raw = entry.path().context("reading the archive")?.into_owned();
        let rel = confine(&raw, rename)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        refuse_links_above(dir, &rel)?;
        let target = dir.join(&rel);
        if entry.header().entry_type() == tar::EntryType::Link {
            let source = entry
                .link_name()
                .context("reading a hard link")?
                .with_context(|| format!("{}: a hard link without a target", raw.display()))?;
            let source = confine(&source, rename)?;
            refuse_links_above(dir, &source)?;
            let _ = fs::remove_file(&target);
            fs::hard_link(dir.join(&source), &target)
                .with_context(|| format!("linking {}", target.display()))?;
            continue;
        }
        // Whatever is at the name goes first, unless both are directories: a link there is
        // replaced, never written through.
        if let Ok(old) = fs::symlink_metadata(&target) {
            let is_dir = entry.header().entry_type() == tar::EntryType::Directory;
            if !(old.is_dir() && is_dir) {
                if old.is_dir() {
                    bail!(
                        "{}: a directory is there; {} is not one",
                        target.display(),
                        raw.display()
                    );
                }
                fs::remove_file(&target)
                    .with_context(|| format!("replacing {}", target.display()))?;
            }
        }
        entry
            .unpack(&target)
            .with_context(|| format!("writing {}", target.display()))?;
    }
    Ok(())
}

/// The entry's name as a path below the destination, its first component renamed.
fn confine(raw: &Path, rename: Option<&std::ffi::OsStr>) -> Result<PathBuf> {
    let rel = crate::storage::layer::confined_path(raw).with_context(|| {
        format!(
            "{}: an entry that would leave the destination",
            raw.display()
        )
    })?;
    Ok(match rename {
        Some(new) => {
            let mut parts = rel.components();
            parts.next();
            // Joined only when there is more: `join("")` would add a trailing slash.
            let rest = parts.as_path();
            if rest.as_os_str().is_empty() {
                PathBuf::from(new)
            } else {
                Path::new(new).join(rest)
            }
        }
        None => rel,
    })
}

/// Fails if a parent of `rel` below `dir` is a symbolic link.
fn refuse_links_above(dir: &Path, rel: &Path) -> Result<()> {
    let mut at = dir.to_path_buf();
    let parents: Vec<_> = rel
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    for part in parents {
        at.push(part);
        if fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!(
                "{}: a symbolic link; nothing is written through it",
                at.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_follow_cp() {
        let name = OsString::from("src");
        assert_eq!(
            destination(Path::new("/d"), true, &name).unwrap(),
            (PathBuf::from("/d"), None)
        );
        assert_eq!(
            destination(Path::new("/d/new"), false, &name).unwrap(),
            (PathBuf::from("/d"), Some(OsString::from("new")))
        );
        assert_eq!(
            destination(Path::new("/d/src"), false, &name).unwrap(),
            (PathBuf::from("/d"), None)
        );
        assert!(destination(Path::new("/d/missing/"), false, &name).is_err());
        assert_eq!(base_name("/etc/"), Some(OsString::from("etc")));
        assert_eq!(base_name("/"), None);
        assert!(confine(Path::new("../x"), None).is_err());
        assert_eq!(
            confine(Path::new("src/a/b"), Some(std::ffi::OsStr::new("new"))).unwrap(),
            PathBuf::from("new/a/b")
        );
        assert_eq!(
            confine(Path::new("src"), Some(std::ffi::OsStr::new("new"))).unwrap(),
            PathBuf::from("new")
        );
    }
}
