//! The container's filesystem: the root (one writable layer over the image), the spec's mounts,
//! `/dev`, `pivot_root`, then masked and read-only paths.
//!
//! Everything here runs in the child, inside its new user and mount namespaces, so every mount
//! vanishes with the container. Mount targets are resolved inside the root by
//! [`sys::open_in_root`] (`openat2(RESOLVE_IN_ROOT)`, or its walk on kernels without it): a
//! symlink in the image can never send a mount outside the container's root.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;
use oci_spec::runtime::{Mount, Spec};

use crate::sys;

/// How the container's root comes to be at the spec's `root.path`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum RootfsPlan {
    /// Native overlayfs mounted inside the user namespace.
    Overlay {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
        /// Skip the fsync of copy-ups: for containers whose upper layer is thrown away.
        volatile: bool,
    },
    /// fuse-overlayfs over the same layout. The launch's helper mounts it on `root.path` before
    /// the child starts (see `launch`), so the child finds the tree there and binds it onto itself.
    Fuse {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
        /// Where fuse-overlayfs's own messages go.
        log: PathBuf,
    },
    /// The container's private copy of the image: bind it onto `root.path`.
    Copy { tree: PathBuf },
    /// `root.path` already holds the whole tree (an OCI bundle): bind it onto itself.
    Prepared,
}

/// A file nook provides in the container, such as `/etc/hostname`. It lives in the container's
/// `/dev` tmpfs (unlinked once bound), so it costs no disk and names no host path.
#[derive(Clone, Debug)]
pub struct GeneratedFile {
    pub destination: PathBuf,
    pub content: Vec<u8>,
}

/// Builds the container's filesystem and moves into it. On return the process's root is the
/// container's root and the host's tree is unreachable. `before_pivot` runs once the mounts are
/// made, while the host's tree is still in view (the OCI `createRuntime`/`createContainer` hooks).
pub fn enter(
    spec: &Spec,
    plan: &RootfsPlan,
    files: &[GeneratedFile],
    before_pivot: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    let root = spec
        .root()
        .as_ref()
        .context("the spec has no root")?
        .path()
        .clone();
    make_mounts_private()?;
    mount_root(&root, plan)?;
    let root_fd = open_dir(&root)?;
    let mut dev_is_ours = false;
    for m in spec.mounts().iter().flatten() {
        mount_one(root_fd.as_fd(), m)
            .with_context(|| format!("mounting {}", m.destination().display()))?;
        if m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs") {
            dev_is_ours = true;
        }
    }
    if dev_is_ours {
        populate_dev(root_fd.as_fd()).context("populating /dev")?;
    } else if !files.is_empty() {
        bail!("nook's generated files need the container's /dev to be a tmpfs");
    }
    for (i, file) in files.iter().enumerate() {
        place_generated(root_fd.as_fd(), i, file)
            .with_context(|| format!("providing {}", file.destination.display()))?;
    }
    drop(root_fd);
    before_pivot()?;
    pivot_into(&root)?;
    if let Some(linux) = spec.linux() {
        for path in linux.masked_paths().iter().flatten() {
            mask_path(Path::new(path)).with_context(|| format!("masking {path}"))?;
        }
        for path in linux.readonly_paths().iter().flatten() {
            make_readonly(Path::new(path)).with_context(|| format!("making {path} read-only"))?;
        }
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        make_readonly(Path::new("/")).context("making the root read-only")?;
    }
    Ok(())
}

fn make_mounts_private() -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making the mount namespace private (mount --make-rprivate /)")
}

fn mount_root(root: &Path, plan: &RootfsPlan) -> Result<()> {
    match plan {
        RootfsPlan::Overlay {
            lower,
            upper,
            work,
            volatile,
        } => mount_overlay(lower, upper, work, root, *volatile),
        RootfsPlan::Copy { tree } => bind_root(tree, root),
        RootfsPlan::Fuse { .. } | RootfsPlan::Prepared => bind_root(root, root),
    }
}

fn bind_root(source: &Path, root: &Path) -> Result<()> {
    mount(
        Some(source),
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "bind-mounting {} on the root {}",
            source.display(),
            root.display()
        )
    })
}

/// Mounts native overlayfs (`userxattr`, as a user namespace requires) on `target`.
pub fn mount_overlay(
    lower: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
    volatile: bool,
) -> Result<()> {
    // Layers named through our own descriptors: no escaping of `,` or `:` in paths, and
    // the container's mountinfo shows /proc/self/fd/N instead of the host's paths.
    let open = |p: &Path| {
        nix::fcntl::open(
            p,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening the layer {}", p.display()))
    };
    let (l, u, w) = (open(lower)?, open(upper)?, open(work)?);
    let mut options = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        fd_path(l.as_fd()),
        fd_path(u.as_fd()),
        fd_path(w.as_fd())
    );
    if volatile {
        options.push_str(",volatile");
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| overlay_refused(e, lower, upper))
}

fn overlay_refused(err: nix::Error, lower: &Path, upper: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "the kernel refused an overlay mount of {} (writable layer in {}): {err}. Overlayfs inside \
         a user namespace needs Linux 5.11 or later and a storage filesystem that can hold an \
         upper layer (not NFS, FUSE or overlayfs); use `--backend fuse` or `--backend copy` (or \
         auto), or move the storage (NOOK_STORAGE) to a local filesystem",
        lower.display(),
        upper.display()
    )
}

fn open_dir(path: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {}", path.display()))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

/// Opens `path` inside `root` (`O_PATH`), creating it and its missing parents first. Each step is
/// resolved inside the root, and a dangling symlink on the way is followed inside the root too
/// (its target is created there), so no symlink in the image can point a mount elsewhere.
fn open_or_create(root: BorrowedFd<'_>, path: &Path, kind: Kind) -> Result<OwnedFd> {
    open_or_create_following(root, path, kind, 0)
}

fn open_or_create_following(
    root: BorrowedFd<'_>,
    path: &Path,
    kind: Kind,
    followed: u32,
) -> Result<OwnedFd> {
    if followed > sys::MAX_SYMLINKS {
        bail!("too many symbolic links resolving {}", path.display());
    }
    match sys::open_in_root(root, path, libc::O_PATH) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e).with_context(|| format!("resolving {}", path.display())),
    }
    let mut parent = root.try_clone_to_owned()?;
    let mut walked = PathBuf::from("/");
    let components: Vec<Component> = path.components().collect();
    for (i, component) in components.iter().enumerate() {
        let name = match component {
            Component::Normal(name) => *name,
            Component::ParentDir => {
                // `walked` holds only real directories, so its lexical parent is the real one;
                // at the root it stays the root, as `open_in_root` does.
                walked.pop();
                parent = sys::open_in_root(root, &walked, libc::O_PATH)?;
                continue;
            }
            _ => continue,
        };
        walked.push(name);
        match sys::open_in_root(root, &walked, libc::O_PATH) {
            Ok(fd) => {
                parent = fd;
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e).with_context(|| format!("resolving {}", walked.display())),
        }
        if let Ok(target) = nix::fcntl::readlinkat(parent.as_fd(), Path::new(name)) {
            // A dangling symlink: go where it points, inside the root.
            let target = PathBuf::from(target);
            let mut next = if target.is_absolute() {
                target
            } else {
                walked.parent().unwrap_or(Path::new("/")).join(target)
            };
            for rest in &components[i + 1..] {
                next.push(rest.as_os_str());
            }
            return open_or_create_following(root, &next, kind, followed + 1);
        }
        let last = i + 1 == components.len();
        if last && kind == Kind::File {
            nix::fcntl::openat(
                parent.as_fd(),
                Path::new(name),
                OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .with_context(|| format!("creating {}", walked.display()))?;
        } else {
            match nix::sys::stat::mkdirat(
                parent.as_fd(),
                Path::new(name),
                Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(nix::Error::EEXIST) => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("creating directory {}", walked.display()))
                }
            }
        }
        parent = sys::open_in_root(root, &walked, libc::O_PATH)
            .with_context(|| format!("resolving {}", walked.display()))?;
    }
    Ok(parent)
}

fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Mount flags and data from an fstab-style option list.
#[derive(Debug, PartialEq)]
struct MountOptions {
    flags: MsFlags,
    /// Flags to set after a bind mount, which ignores them on the bind itself: on the bind
    /// only (`ro`, as runc and crun do), and on every mount below it too (`rro`).
    attrs: u64,
    recursive_attrs: u64,
    data: Vec<String>,
    bind: bool,
    recursive: bool,
}

fn parse_options(options: &[String]) -> MountOptions {
    let mut out = MountOptions {
        flags: MsFlags::empty(),
        attrs: 0,
        recursive_attrs: 0,
        data: Vec::new(),
        bind: false,
        recursive: false,
    };
    for option in options {
        let (flag, attr) = match option.as_str() {
            "ro" => (MsFlags::MS_RDONLY, sys::MOUNT_ATTR_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, sys::MOUNT_ATTR_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, sys::MOUNT_ATTR_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, sys::MOUNT_ATTR_NOEXEC),
            "strictatime" => (MsFlags::MS_STRICTATIME, 0),
            "relatime" => (MsFlags::MS_RELATIME, 0),
            "noatime" => (MsFlags::MS_NOATIME, 0),
            "sync" => (MsFlags::MS_SYNCHRONOUS, 0),
            "dirsync" => (MsFlags::MS_DIRSYNC, 0),
            "rro" | "rnosuid" | "rnodev" | "rnoexec" => {
                out.recursive_attrs |= match option.as_str() {
                    "rro" => sys::MOUNT_ATTR_RDONLY,
                    "rnosuid" => sys::MOUNT_ATTR_NOSUID,
                    "rnodev" => sys::MOUNT_ATTR_NODEV,
                    _ => sys::MOUNT_ATTR_NOEXEC,
                };
                continue;
            }
            "bind" => {
                out.bind = true;
                continue;
            }
            "rbind" => {
                out.bind = true;
                out.recursive = true;
                continue;
            }
            "rw" | "suid" | "dev" | "exec" | "atime" | "async" | "private" | "rprivate"
            | "slave" | "rslave" | "shared" | "rshared" | "unbindable" | "runbindable" => continue,
            data => {
                out.data.push(data.to_string());
                continue;
            }
        };
        out.flags |= flag;
        out.attrs |= attr;
    }
    out
}

fn mount_one(root: BorrowedFd<'_>, m: &Mount) -> Result<()> {
    let options = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = m
        .typ()
        .as_deref()
        .unwrap_or(if options.bind { "bind" } else { "" });
    let destination = m.destination();
    if !destination.is_absolute() {
        bail!(
            "mount destination {} is not absolute",
            destination.display()
        );
    }
    if typ == "bind" || options.bind {
        let source = m.source().as_ref().context("a bind mount needs a source")?;
        return bind_mount(root, source, destination, &options);
    }
    if typ == "cgroup" || typ == "cgroup2" {
        // cgroups come with a later issue; a rootless container without delegation has none.
        return Ok(());
    }
    let target = open_or_create(root, destination, Kind::Dir)?;
    let data = options.data.join(",");
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    let result = mount(
        Some(source.as_path()),
        fd_path(target.as_fd()).as_str(),
        Some(typ),
        options.flags,
        (!data.is_empty()).then_some(data.as_str()),
    );
    match (result, typ) {
        (Ok(()), _) => Ok(()),
        // Without a network namespace of our own the kernel refuses a new sysfs, and without an
        // IPC namespace of our own a new mqueue: show the host's, read-only.
        (Err(nix::Error::EPERM), "sysfs") => {
            let fallback = parse_options(&[
                "rbind".into(),
                "ro".into(),
                "nosuid".into(),
                "nodev".into(),
                "noexec".into(),
            ]);
            bind_mount(root, Path::new("/sys"), destination, &fallback)
        }
        (Err(nix::Error::EPERM), "mqueue") => bind_mount(
            root,
            Path::new("/dev/mqueue"),
            destination,
            &parse_options(&["bind".into()]),
        ),
        (Err(e), _) => Err(e).with_context(|| format!("mount -t {typ} {}", source.display())),
    }
}

fn bind_mount(
    root: BorrowedFd<'_>,
    source: &Path,
    destination: &Path,
    options: &MountOptions,
) -> Result<()> {
    let meta = fs::metadata(source)
        .with_context(|| format!("bind source {} does not exist", source.display()))?;
    let kind = if meta.is_dir() { Kind::Dir } else { Kind::File };
    let target = open_or_create(root, destination, kind)?;
    let mut flags = MsFlags::MS_BIND;
    if options.recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(
        Some(source),
        fd_path(target.as_fd()).as_str(),
        None::<&str>,
        flags,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting {}", source.display()))?;
    if options.attrs != 0 || options.recursive_attrs != 0 {
        // The fd above is the mount point below the new mount: open the new mount itself.
        let mounted = sys::open_in_root(root, destination, libc::O_PATH)
            .with_context(|| format!("resolving {}", destination.display()))?;
        if options.attrs != 0 {
            set_mount_attrs(mounted.as_fd(), false, options.attrs)?;
        }
        if options.recursive_attrs != 0 {
            set_mount_attrs(mounted.as_fd(), true, options.recursive_attrs)?;
        }
    }
    Ok(())
}

fn set_mount_attrs(fd: BorrowedFd<'_>, recursive: bool, attrs: u64) -> Result<()> {
    sys::mount_setattr(fd, recursive, attrs).context("mount_setattr")
}

/// The device nodes every container gets, bound from the host (a user namespace cannot mknod).
const DEFAULT_DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

fn populate_dev(root: BorrowedFd<'_>) -> Result<()> {
    // nosuid and noexec, as crun binds them: a device node is never a program.
    let bind = parse_options(&["bind".into(), "nosuid".into(), "noexec".into()]);
    for dev in DEFAULT_DEVICES {
        let host = Path::new("/dev").join(dev);
        bind_mount(root, &host, &host, &bind)?;
    }
    let dev = sys::open_in_root(root, Path::new("/dev"), libc::O_PATH | libc::O_DIRECTORY)?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        match nix::unistd::symlinkat(target, dev.as_fd(), name) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("creating /dev/{name}")),
        }
    }
    Ok(())
}

fn place_generated(root: BorrowedFd<'_>, index: usize, file: &GeneratedFile) -> Result<()> {
    use std::io::Write;
    let dev = sys::open_in_root(root, Path::new("/dev"), libc::O_PATH | libc::O_DIRECTORY)?;
    let name = format!(".nook-generated-{index}");
    let fd = nix::fcntl::openat(
        dev.as_fd(),
        Path::new(&name),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .context("creating it in /dev")?;
    fs::File::from(fd).write_all(&file.content)?;
    let source = sys::open_in_root(root, &Path::new("/dev").join(&name), libc::O_PATH)?;
    let result = match open_or_create(root, &file.destination, Kind::File) {
        Ok(target) => mount(
            Some(fd_path(source.as_fd()).as_str()),
            fd_path(target.as_fd()).as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(anyhow::Error::from),
        // The image lacks the file and will not let us add it (an /etc owned by an id the
        // container does not map): go without, as the image's own makers did.
        Err(e) if is_permission_error(&e) => Ok(()),
        Err(e) => Err(e),
    };
    nix::unistd::unlinkat(
        dev.as_fd(),
        Path::new(&name),
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    )
    .context("unlinking the staging copy")?;
    result
}

fn is_permission_error(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<nix::Error>(),
            Some(nix::Error::EACCES | nix::Error::EPERM | nix::Error::EOVERFLOW)
        )
    })
}

fn pivot_into(root: &Path) -> Result<()> {
    nix::unistd::chdir(root).with_context(|| format!("entering {}", root.display()))?;
    // Stacking the old root under the new one and detaching it leaves no path back to the host.
    nix::unistd::pivot_root(".", ".").context("pivot_root")?;
    umount2(".", MntFlags::MNT_DETACH).context("detaching the host's root")?;
    nix::unistd::chdir("/").context("chdir /")?;
    Ok(())
}

fn mask_path(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if meta.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            Some("size=0,mode=0555"),
        )?;
    } else {
        mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        // Read-only too (as crun does): nothing is to be written through a masked file.
        let fd = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())?;
        set_mount_attrs(fd.as_fd(), false, sys::MOUNT_ATTR_RDONLY)?;
    }
    Ok(())
}

fn make_readonly(path: &Path) -> Result<()> {
    if path != Path::new("/") {
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )?;
    }
    let fd = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())?;
    // `root.readonly` makes the root alone read-only, as runc and crun do: /proc, /dev and the
    // volumes mounted on it keep their own modes.
    set_mount_attrs(fd.as_fd(), path != Path::new("/"), sys::MOUNT_ATTR_RDONLY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_attrs_and_data() {
        let o = parse_options(&[
            "nosuid".into(),
            "ro".into(),
            "rbind".into(),
            "mode=755".into(),
            "size=65536k".into(),
        ]);
        assert!(o.bind && o.recursive);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_RDONLY);
        assert_eq!(o.attrs, sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_RDONLY);
        assert_eq!(o.data, vec!["mode=755", "size=65536k"]);
    }
}
