//! The container's filesystem: the root (one writable layer over the image), the spec's mounts,
//! `/dev`, `pivot_root`, then masked and read-only paths.
//!
//! Everything here runs in the child, inside its new user and mount namespaces, so every mount
//! vanishes with the container. Mount targets are resolved inside the root by
//! [`sys::open_in_root`] (`openat2(RESOLVE_IN_ROOT)`, or its walk on kernels without it): a
//! symlink in the image can never send a mount outside the container's root.
//!
//! The backends that make the writable layer live here too: `backend` (the choice and its probe),
//! `fuse` (fuse-overlayfs) and `copy` (reflink or plain copy).

pub mod backend;
pub mod copy;
pub mod fuse;

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

/// Why a container shows the outer /proc, printed when it happens (`nook info` tells it too).
const PROC_REFUSED: &str = "the kernel refused a new /proc (EPERM): the /proc nook runs \
    under has masked paths, as an engine's container has, so it is not fully visible. The \
    container gets the outer /proc, read-only with its masks kept: it sees the outer pid \
    namespace's processes (their command lines; the kernel keeps their /proc/PID/root closed \
    to it, as it belongs to another user namespace). Run the outer container with \
    `--security-opt unmask=/proc/*` (podman) or `--security-opt systempaths=unconfined` \
    (docker) to give nook a /proc of its own";

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
        let destination = in_root(m.destination());
        mount_one(root_fd.as_fd(), m, &destination)
            .with_context(|| format!("mounting {}", destination.display()))?;
        if destination == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs") {
            dev_is_ours = true;
        }
    }
    if dev_is_ours {
        populate_dev(root_fd.as_fd()).context("populating /dev")?;
    } else if !files.is_empty() {
        bail!("nook's generated files need the container's /dev to be a tmpfs");
    }
    let devices = spec.linux().as_ref().and_then(|l| l.devices().as_ref());
    for (i, device) in devices.into_iter().flatten().enumerate() {
        bind_device(root_fd.as_fd(), device)
            .with_context(|| format!("field `linux.devices[{i}]` ({})", device.path().display()))?;
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
    if let Some(propagation) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_ref())
    {
        set_root_propagation(propagation)?;
    }
    Ok(())
}

/// `linux.rootfsPropagation`, on the container's root and every mount below it.
fn set_root_propagation(name: &str) -> Result<()> {
    let flags = propagation_of(name).with_context(|| {
        format!(
            "field `linux.rootfsPropagation`: {name:?} is none of shared, slave, private, \
             unbindable (or their r- forms)"
        )
    })?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        flags | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("field `linux.rootfsPropagation`: making the root {name}"))
}

/// A device of `linux.devices`: a user namespace cannot mknod one, so the host's node with the
/// same type and numbers is bound at the device's path (its mode and owner stay the host's).
fn bind_device(root: BorrowedFd<'_>, device: &oci_spec::runtime::LinuxDevice) -> Result<()> {
    use oci_spec::runtime::LinuxDeviceType;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let wanted = |meta: &fs::Metadata| {
        let kind = meta.file_type();
        let typed = match device.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => kind.is_char_device(),
            LinuxDeviceType::B => kind.is_block_device(),
            LinuxDeviceType::P | LinuxDeviceType::A => false,
        };
        let rdev = meta.rdev();
        typed
            && nix::sys::stat::major(rdev) as i64 == device.major()
            && nix::sys::stat::minor(rdev) as i64 == device.minor()
    };
    let destination = in_root(device.path());
    // The same path on the host first (the usual case), else any node under /dev that matches.
    let mut candidates = std::iter::once(destination.clone()).chain(
        fs::read_dir("/dev")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    );
    let host = candidates
        .find(|p| fs::symlink_metadata(p).is_ok_and(|m| wanted(&m)))
        .with_context(|| {
            format!(
                "the host has no {} device {}:{} under /dev to bind (a user namespace cannot \
                 create device nodes)",
                device.typ().as_str(),
                device.major(),
                device.minor()
            )
        })?;
    let bind = parse_options(&["bind".into(), "nosuid".into(), "noexec".into()]);
    bind_mount(root, &host, &destination, &bind)
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
    /// Propagation set on the new mount once made (`rprivate`, `shared`…); the last one given
    /// wins, as with mount(8).
    propagation: Option<MsFlags>,
    /// Fill a new tmpfs with what the image has under its mount point (podman's `tmpcopyup`).
    tmpcopyup: bool,
    /// A bind source that is a symlink is recreated as that symlink (crun's `copy-symlink`).
    copy_symlink: bool,
    /// `idmap` or `ridmap`: the mount is to show other owners than its source.
    idmap: Option<&'static str>,
}

/// Every mount option nook understands (`nook features` lists these); any other is passed to
/// the filesystem as data, as runc and crun do.
pub const MOUNT_OPTIONS: [&str; 35] = [
    "async",
    "atime",
    "bind",
    "copy-symlink",
    "defaults",
    "dev",
    "dirsync",
    "exec",
    "noatime",
    "nodev",
    "noexec",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "notmpcopyup",
    "private",
    "rbind",
    "relatime",
    "rnodev",
    "rnoexec",
    "rnosuid",
    "ro",
    "rprivate",
    "rro",
    "rshared",
    "rslave",
    "runbindable",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "sync",
    "tmpcopyup",
    "unbindable",
];

/// The propagation a mount option names, if it names one.
fn propagation_of(option: &str) -> Option<MsFlags> {
    Some(match option {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

fn parse_options(options: &[String]) -> MountOptions {
    let mut out = MountOptions {
        flags: MsFlags::empty(),
        attrs: 0,
        recursive_attrs: 0,
        data: Vec::new(),
        bind: false,
        recursive: false,
        propagation: None,
        tmpcopyup: false,
        copy_symlink: false,
        idmap: None,
    };
    for option in options {
        if let Some(propagation) = propagation_of(option) {
            out.propagation = Some(propagation);
            continue;
        }
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
            "tmpcopyup" => {
                out.tmpcopyup = true;
                continue;
            }
            "notmpcopyup" => {
                out.tmpcopyup = false;
                continue;
            }
            "copy-symlink" => {
                out.copy_symlink = true;
                continue;
            }
            "idmap" | "ridmap" => {
                out.idmap = Some(if option == "idmap" { "idmap" } else { "ridmap" });
                continue;
            }
            // Options for the runtime or mount(8), never for the kernel: the defaults they
            // name are the kernel's own.
            "rw" | "suid" | "dev" | "exec" | "atime" | "async" | "defaults" | "norelatime"
            | "nostrictatime" => continue,
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

/// A mount's destination as a path from the container's root: the runtime spec allows a
/// relative one and reads it from `/` (as crun does; runc refuses it).
fn in_root(destination: &Path) -> PathBuf {
    Path::new("/").join(destination)
}

fn mount_one(root: BorrowedFd<'_>, m: &Mount, destination: &Path) -> Result<()> {
    let options = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = m
        .typ()
        .as_deref()
        .unwrap_or(if options.bind { "bind" } else { "" });
    if let Some(option) = options.idmap {
        // An idmapped mount takes privilege over the source's filesystem, which belongs to the
        // host's user namespace: no rootless runtime has it.
        bail!(
            "mount option `{option}`: idmapped mounts need privilege over the source's \
             filesystem, which a rootless runtime does not hold; remove the option and give the \
             container a user namespace whose map fits the files instead"
        );
    }
    if typ == "bind" || options.bind {
        let source = m.source().as_ref().context("a bind mount needs a source")?;
        bind_mount(root, source, destination, &options)?;
        return set_propagation(root, destination, &options);
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
    if result.is_ok() && options.tmpcopyup && typ == "tmpfs" {
        // `target` still names the directory under the new mount: the image's content.
        let mounted = sys::open_in_root(root, destination, libc::O_PATH | libc::O_DIRECTORY)
            .with_context(|| format!("resolving {}", destination.display()))?;
        let (from, to) = (fd_path(target.as_fd()), fd_path(mounted.as_fd()));
        crate::rootfs::copy::copy_contents(Path::new(&from), Path::new(&to))
            // Errors name the descriptors' paths, which mean nothing to the user.
            .map_err(|e| {
                let dest = destination.display().to_string();
                anyhow::anyhow!(
                    "{}",
                    format!("{e:#}")
                        .replace(&to, &dest)
                        .replace(&from, &format!("{dest} in the image"))
                )
            })
            .context("copying the image's content into the tmpfs (tmpcopyup)")?;
    }
    if result.is_ok() {
        set_propagation(root, destination, &options)?;
    }
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
        // An outer container's /proc with masked paths (files bound over, as every engine
        // does) is not fully visible, and the kernel then refuses a new procfs to a user
        // namespace: show the outer one, its masks kept (recursive) and read-only. The
        // container then sees the outer pid namespace's processes.
        (Err(nix::Error::EPERM), "proc") => {
            eprintln!("nook: warning: {PROC_REFUSED}");
            let fallback = parse_options(&[
                "rbind".into(),
                "rro".into(),
                "nosuid".into(),
                "nodev".into(),
                "noexec".into(),
            ]);
            bind_mount(root, Path::new("/proc"), destination, &fallback)
                .context("binding the outer /proc, as a new procfs was refused (EPERM)")
        }
        // A new devpts instance refused: the outer one's terminals.
        (Err(nix::Error::EPERM), "devpts") => {
            eprintln!(
                "nook: warning: a new /dev/pts was refused (EPERM): the container shares the \
                 outer /dev/pts"
            );
            bind_mount(
                root,
                Path::new("/dev/pts"),
                destination,
                &parse_options(&["bind".into(), "nosuid".into(), "noexec".into()]),
            )
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
    if options.copy_symlink {
        if let Ok(link) = fs::read_link(source) {
            return place_symlink(root, &link, destination);
        }
    }
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

/// Creates `destination` in the root as a symlink to `link` (replacing nothing that exists).
fn place_symlink(root: BorrowedFd<'_>, link: &Path, destination: &Path) -> Result<()> {
    let parent_path = destination.parent().unwrap_or(Path::new("/"));
    let name = destination
        .file_name()
        .with_context(|| format!("{} names no file", destination.display()))?;
    let parent = open_or_create(root, parent_path, Kind::Dir)?;
    match nix::unistd::symlinkat(link, parent.as_fd(), Path::new(name)) {
        Ok(()) => Ok(()),
        Err(e) => Err(e).with_context(|| {
            format!(
                "creating the symlink {} -> {} (copy-symlink)",
                destination.display(),
                link.display()
            )
        }),
    }
}

/// Sets the propagation a mount's options ask for on the mount now at `destination`.
fn set_propagation(root: BorrowedFd<'_>, destination: &Path, options: &MountOptions) -> Result<()> {
    let Some(flags) = options.propagation else {
        return Ok(());
    };
    let mounted = sys::open_in_root(root, destination, libc::O_PATH)
        .with_context(|| format!("resolving {}", destination.display()))?;
    mount(
        None::<&str>,
        fd_path(mounted.as_fd()).as_str(),
        None::<&str>,
        flags,
        None::<&str>,
    )
    .context("setting the mount's propagation")
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
    fn features_list_exactly_the_options_parsed_here() {
        let mut listed: Vec<&str> = MOUNT_OPTIONS.to_vec();
        listed.sort();
        listed.dedup();
        assert_eq!(
            listed.len(),
            MOUNT_OPTIONS.len(),
            "an option is listed twice"
        );
        for option in MOUNT_OPTIONS {
            let parsed = parse_options(&[option.to_string()]);
            assert!(
                parsed.data.is_empty(),
                "{option} would reach the kernel as data"
            );
        }
        assert_eq!(parse_options(&["mode=755".into()]).data, vec!["mode=755"]);
        assert!(parse_options(&["idmap".into()]).idmap.is_some());
    }

    #[test]
    fn relative_destinations_are_read_from_the_root() {
        assert_eq!(in_root(Path::new("data")), Path::new("/data"));
        assert_eq!(in_root(Path::new("a/b")), Path::new("/a/b"));
        assert_eq!(in_root(Path::new("/dev")), Path::new("/dev"));
    }

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
