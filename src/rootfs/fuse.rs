//! fuse-overlayfs: the overlay a user namespace can always mount, served by a helper process.
//!
//! It is started inside the container's user and mount namespaces so that owners map as they do
//! for native overlayfs, in the foreground and killed with the process that started it, so it
//! can never outlive the container (its mount lives in a mount namespace that dies with it).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::sys;

pub const PROGRAM: &str = "fuse-overlayfs";
/// `statfs` type of every FUSE filesystem.
pub const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `fuse-overlayfs` program on `$PATH`, if there is one.
pub fn find_program() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(PROGRAM))
        .find(|candidate| {
            fs::metadata(candidate).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
}

/// Whether this user can open `/dev/fuse`, and if not, why and how to fix it.
pub fn check_device() -> Result<()> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot open /dev/fuse: {e} (fix: `sudo modprobe fuse && sudo chmod 0666 /dev/fuse`, \
                 or install the fuse3 package)"
            )
        })
}

/// `fuse-overlayfs --version`'s first line.
pub fn version(program: &Path) -> Result<String> {
    let out = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --version", program.display()))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find(|l| l.starts_with("fuse-overlayfs"))
        .map(|l| l.trim().to_string())
        .with_context(|| format!("{} --version printed no version", program.display()))
}

/// The layers of one fuse-overlayfs mount.
pub struct Layers<'a> {
    pub lower: &'a Path,
    pub upper: &'a Path,
    pub work: &'a Path,
    pub target: &'a Path,
    /// Where fuse-overlayfs's own messages go.
    pub log: &'a Path,
}

/// A running fuse-overlayfs, mounted on its target.
pub struct Mounted {
    child: Child,
    target: PathBuf,
}

fn option_path(path: &Path) -> Result<String> {
    let text = path.to_string_lossy();
    if text.contains([',', ':']) {
        bail!(
            "{}: fuse-overlayfs cannot take a path containing ',' or ':'; use a storage or image \
             path without them",
            path.display()
        );
    }
    Ok(text.into_owned())
}

/// Starts fuse-overlayfs on `layers.target` and returns once the mount is there. Must run in
/// the mount namespace that should hold the mount, as root of the user namespace.
pub fn mount(layers: &Layers<'_>) -> Result<Mounted> {
    let program = find_program().with_context(|| {
        format!("{PROGRAM} is not on PATH (fix: `sudo apt-get install fuse-overlayfs`)")
    })?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={},allow_other",
        option_path(layers.lower)?,
        option_path(layers.upper)?,
        option_path(layers.work)?
    );
    let log = fs::File::create(layers.log)
        .with_context(|| format!("creating {}", layers.log.display()))?;
    let mut cmd = Command::new(&program);
    cmd.arg("-f")
        .arg("-o")
        .arg(&options)
        .arg(layers.target)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log descriptor")?)
        .stderr(log);
    sys::kill_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let mut mounted = Mounted {
        child,
        target: layers.target.to_path_buf(),
    };
    let deadline = Instant::now() + MOUNT_TIMEOUT;
    loop {
        if is_fuse(layers.target) {
            return Ok(mounted);
        }
        if let Some(status) = mounted
            .child
            .try_wait()
            .context("waiting for fuse-overlayfs")?
        {
            let said = fs::read_to_string(layers.log).unwrap_or_default();
            bail!(
                "fuse-overlayfs could not mount {} ({status}): {}",
                layers.target.display(),
                said.trim()
            );
        }
        if Instant::now() >= deadline {
            let _ = mounted.child.kill();
            let _ = mounted.child.wait();
            bail!(
                "fuse-overlayfs did not mount {} within {} s",
                layers.target.display(),
                MOUNT_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether a FUSE filesystem is mounted on `path`: a FUSE filesystem whose device differs from
/// its parent directory's (the storage itself may be FUSE too).
fn is_fuse(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let fuse =
        nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == FUSE_SUPER_MAGIC);
    let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).ok();
    fuse && dev(path).is_some() && dev(path) != dev(&path.join(".."))
}

impl Mounted {
    /// Asks fuse-overlayfs to unmount and exit (SIGTERM), and waits; kills it if it hangs.
    pub fn unmount(mut self) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // If it died without unmounting, the mount is dead: detach it.
        if is_fuse(&self.target) {
            nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH)
                .with_context(|| format!("umount {}", self.target.display()))?;
        }
        Ok(())
    }
}
