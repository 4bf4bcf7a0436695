//! The child's half of the launch: it becomes the container, in the order the kernel needs.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout};
use oci_spec::runtime::{LinuxNamespaceType, Process};

use super::sync::{Channel, Msg};
use super::{init, ChildFailed, Launch};
use crate::{rootfs, security, sys};

/// Runs in the cloned child; never returns. Any failure goes to the parent as a message.
pub(super) fn run(launch: &Launch<'_>, chan: Channel, devnull: OwnedFd, parent_mask: SigSet) -> ! {
    let kept = [chan.as_raw_fd(), devnull.as_raw_fd()];
    let setup = sys::close_inherited_fds(&kept)
        .context("closing inherited descriptors")
        .and_then(|()| become_container(launch, &chan, devnull, parent_mask));
    let err = match setup {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let (code, message) = match err.downcast_ref::<ChildFailed>() {
        Some(f) => (f.code, f.message.clone()),
        None => (125, format!("{err:#}")),
    };
    let _ = chan.send(&Msg::Failed { code, message });
    sys::exit_now(code)
}

fn become_container(
    launch: &Launch<'_>,
    chan: &Channel,
    devnull: OwnedFd,
    parent_mask: SigSet,
) -> Result<Infallible> {
    let spec = launch.spec;
    let process = spec.process().as_ref().context("the spec has no process")?;
    let linux = spec.linux().as_ref();
    if launch.die_with_parent {
        sys::die_with_parent().context("prctl(PR_SET_PDEATHSIG)")?;
    }
    // Compiled while the parent writes the id maps.
    let seccomp = match linux.and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => Some(security::seccomp_program(profile)?),
        None => None,
    };
    chan.expect(Msg::MapsWritten)?;

    rootfs::enter(spec, launch.rootfs, launch.files)?;
    if let Some(hostname) = spec.hostname() {
        nix::unistd::sethostname(hostname).context("sethostname")?;
    }
    let own_network = linux
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|nss| nss.iter().any(|ns| ns.typ() == LinuxNamespaceType::Network));
    if own_network {
        sys::loopback_up().context("bringing up the loopback interface")?;
    }

    let terminal = if process.terminal() == Some(true) {
        Some(open_terminal(chan)?)
    } else {
        if !launch.keep_stdin {
            dup2_stdin(devnull.as_fd()).context("dup2 /dev/null to stdin")?;
        }
        None
    };
    drop(devnull);
    enter_cwd(process)?;

    let user = process.user();
    if let Some(caps) = process.capabilities() {
        security::limit_bounding_set(caps)?;
    }
    let extra_gids = user.additional_gids().clone().unwrap_or_default();
    security::switch_user(
        user.uid(),
        user.gid(),
        &extra_gids,
        launch.idmap.allows_setgroups(),
    )?;
    if let Some(caps) = process.capabilities() {
        security::apply_capabilities(caps)?;
    }
    if process.no_new_privileges() != Some(false) {
        security::set_no_new_privs()?;
    }
    sys::cloexec_from(3).context("close_range")?;
    let program = Program::resolve(process)?;

    if launch.init {
        // pid 1 stays nook: keep the container's root from opening it through /proc/1/exe.
        sys::set_not_dumpable().context("prctl(PR_SET_DUMPABLE)")?;
        if let sys::CloneResult::Parent(command) = sys::fork_process().context("fork")? {
            drop(terminal);
            if let Some(filter) = &seccomp {
                security::load_seccomp(filter)?;
            }
            init::run(command);
        }
    }
    nix::unistd::setsid().context("setsid")?;
    if let Some(slave) = &terminal {
        sys::set_controlling_terminal(slave.as_fd()).context("TIOCSCTTY")?;
    }
    drop(terminal);
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&parent_mask), None)
        .context("restoring the signal mask")?;
    sys::default_sigpipe();
    if let Some(filter) = &seccomp {
        security::load_seccomp(filter)?;
    }
    program.exec()
}

/// Opens a terminal in the container's own devpts instance, hands the master to the parent and
/// makes the slave our stdio.
fn open_terminal(chan: &Channel) -> Result<OwnedFd> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .context("opening /dev/ptmx in the container")?;
    nix::pty::grantpt(&master).context("grantpt")?;
    nix::pty::unlockpt(&master).context("unlockpt")?;
    let name = nix::pty::ptsname_r(&master).context("ptsname")?;
    let slave = nix::fcntl::open(
        Path::new(&name),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("opening {name}"))?;
    chan.send_with_fd(&Msg::PtyMaster, Some(master.as_raw_fd()))?;
    drop(master);
    chan.expect(Msg::Continue)?;
    redirect_stdio(slave.as_fd())?;
    Ok(slave)
}

fn redirect_stdio(fd: BorrowedFd<'_>) -> Result<()> {
    dup2_stdin(fd).context("dup2 stdin")?;
    dup2_stdout(fd).context("dup2 stdout")?;
    dup2_stderr(fd).context("dup2 stderr")?;
    Ok(())
}

/// Enters the working directory, creating it as `docker run -w` does when the image lacks it.
fn enter_cwd(process: &Process) -> Result<()> {
    let cwd = process.cwd();
    if !cwd.is_absolute() {
        anyhow::bail!("the working directory {} is not absolute", cwd.display());
    }
    if nix::unistd::chdir(cwd).is_err() {
        std::fs::create_dir_all(cwd)
            .with_context(|| format!("creating the working directory {}", cwd.display()))?;
        nix::unistd::chdir(cwd).with_context(|| format!("entering {}", cwd.display()))?;
    }
    // A path through /proc (a descriptor, another process's root) could lead out of the
    // container; the kernel then has no path for the directory from our root.
    match nix::unistd::getcwd() {
        Ok(real) if real.is_absolute() => Ok(()),
        _ => anyhow::bail!(
            "the working directory {} lies outside the container's root; refusing it",
            cwd.display()
        ),
    }
}

/// The command to exec, with its arguments and environment ready as C strings, so that nothing
/// after the security setup needs to allocate much or touch the filesystem beyond `execve`.
struct Program {
    name: String,
    candidates: Vec<CString>,
    args: Vec<CString>,
    env: Vec<CString>,
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).with_context(|| format!("{s:?} contains a NUL byte"))
}

impl Program {
    fn resolve(process: &Process) -> Result<Program> {
        let args = process.args().clone().unwrap_or_default();
        let name = args
            .first()
            .cloned()
            .context("the process has no command (args is empty)")?;
        let env = process.env().clone().unwrap_or_default();
        let path_var = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(crate::spec::DEFAULT_PATH);
        let candidates: Vec<PathBuf> = if name.contains('/') {
            vec![PathBuf::from(&name)]
        } else {
            path_var
                .split(':')
                .filter(|d| !d.is_empty())
                .map(|d| Path::new(d).join(&name))
                .collect()
        };
        Ok(Program {
            candidates: candidates
                .iter()
                .map(|p| cstr(&p.to_string_lossy()))
                .collect::<Result<_>>()?,
            args: args.iter().map(|a| cstr(a)).collect::<Result<_>>()?,
            env: env.iter().map(|e| cstr(e)).collect::<Result<_>>()?,
            name,
        })
    }

    /// Tries each candidate as `execvp` would; reports 127 when none exists, 126 when one exists
    /// but cannot be run.
    fn exec(&self) -> Result<Infallible> {
        let mut denied = None;
        for candidate in &self.candidates {
            let err = match nix::unistd::execve(candidate, &self.args, &self.env) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            match err {
                nix::Error::ENOENT | nix::Error::ENOTDIR => continue,
                nix::Error::EACCES => denied = Some((candidate, err)),
                other => {
                    return Err(ChildFailed {
                        code: 126,
                        message: format!(
                            "{}: cannot run it in the container: {}",
                            candidate.to_string_lossy(),
                            other.desc()
                        ),
                    }
                    .into())
                }
            }
        }
        Err(match denied {
            Some((path, err)) => ChildFailed {
                code: 126,
                message: format!(
                    "{}: cannot run it in the container: {}",
                    path.to_string_lossy(),
                    err.desc()
                ),
            },
            None => ChildFailed {
                code: 127,
                message: format!("{}: not found in the container", self.name),
            },
        }
        .into())
    }
}
