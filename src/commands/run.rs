//! `nook run DIR [CMD…]`: a new container over a root filesystem directory.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::cli::{BackendArg, NetworkArg, RunArgs};
use crate::container::{
    now_rfc3339, process_start_time, Container, NewContainer, State, Status, Store,
};
use crate::idmap::IdMapping;
use crate::launch::{self, ChildFailed, Launch, StdinMode};
use crate::rootfs::RootfsPlan;
use crate::spec::{self, EtcFiles, NetworkMode, RunRequest, Volume};
use crate::sys;

/// Everything checked before anything is created, so that bad input leaves nothing behind.
struct Checked {
    image: PathBuf,
    volumes: Vec<Volume>,
    user: spec::ContainerUser,
    command: Vec<String>,
    env: Vec<String>,
    network: NetworkMode,
}

fn check(args: &RunArgs) -> Result<Checked> {
    if args.detach && (args.tty || args.interactive) {
        bail!(
            "-d cannot be combined with -i or -t: a detached container has no terminal to attach"
        );
    }
    let image = fs::canonicalize(&args.image)
        .ok()
        .filter(|p| p.is_dir())
        .with_context(|| {
            format!(
                "{}: no such directory; give the path of a root filesystem directory",
                args.image
            )
        })?;
    let volumes = args
        .volumes
        .iter()
        .map(|v| Volume::parse(v))
        .collect::<Result<Vec<_>>>()?;
    let user = spec::resolve_user(&image, args.user.as_deref())?;
    let command = if args.command.is_empty() {
        vec!["/bin/sh".to_string()]
    } else {
        args.command.clone()
    };
    let env = args
        .env
        .iter()
        .filter_map(|e| match e.split_once('=') {
            Some(_) => Some(e.clone()),
            None => std::env::var(e).ok().map(|v| format!("{e}={v}")),
        })
        .collect();
    let network = match args.network {
        NetworkArg::Host => NetworkMode::Host,
        NetworkArg::None => NetworkMode::None,
    };
    if let Some(h) = &args.hostname {
        crate::container::validate_name(h).context("invalid --hostname")?;
    }
    Ok(Checked {
        image,
        volumes,
        user,
        command,
        env,
        network,
    })
}

/// Which backend makes the writable layer, and why.
fn choose_backend(choice: BackendArg) -> (&'static str, &'static str) {
    match choice {
        BackendArg::Overlay => ("overlay", "requested with --backend overlay"),
        BackendArg::Auto => (
            "overlay",
            "auto: native overlayfs inside the user namespace",
        ),
    }
}

pub fn run(args: &RunArgs) -> Result<i32> {
    let checked = check(args)?;
    let store = Store::open()?;
    let (backend, reason) = choose_backend(args.backend);
    let container = store.create(NewContainer {
        name: args.name.as_deref(),
        image: &checked.image,
        backend,
        backend_reason: reason,
        command: &checked.command,
        auto_remove: args.rm,
    })?;
    let prepared = prepare(args, &checked, &container);
    let (spec, plan, idmap) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = store.remove(&container);
            return Err(e);
        }
    };
    let launch = Launch {
        spec: &spec,
        rootfs: &plan,
        idmap: &idmap,
        init: args.init,
        keep_stdin: args.interactive,
        die_with_parent: true,
    };
    if args.detach {
        return run_detached(&store, &container, &launch);
    }
    let started = match launch::start(&launch) {
        Ok(s) => s,
        Err(e) => {
            let _ = store.remove(&container);
            return Err(e);
        }
    };
    if !args.rm {
        record_running(&container, started.pid.as_raw())?;
    }
    let stdin = if args.interactive {
        StdinMode::Relay
    } else {
        StdinMode::Ignore
    };
    let code = started.wait(stdin)?;
    finish(&store, &container, code)?;
    Ok(code)
}

fn prepare(
    args: &RunArgs,
    checked: &Checked,
    container: &Container,
) -> Result<(oci_spec::runtime::Spec, RootfsPlan, IdMapping)> {
    let hostname = args
        .hostname
        .clone()
        .unwrap_or_else(|| container.meta.name.clone());
    let etc = EtcFiles {
        hostname: container.dir.join("hostname"),
        hosts: container.dir.join("hosts"),
        resolv_conf: container.dir.join("resolv.conf"),
    };
    fs::write(&etc.hostname, format!("{hostname}\n"))
        .with_context(|| format!("writing {}", etc.hostname.display()))?;
    fs::write(&etc.hosts, spec::hosts_file(&hostname, checked.network))
        .with_context(|| format!("writing {}", etc.hosts.display()))?;
    let resolv = fs::read("/etc/resolv.conf").unwrap_or_default();
    fs::write(&etc.resolv_conf, resolv)
        .with_context(|| format!("writing {}", etc.resolv_conf.display()))?;

    let idmap = IdMapping::of_current_user();
    if !idmap.maps_uid(checked.user.uid) || !idmap.maps_gid(checked.user.gid) {
        bail!(
            "user {}:{} is not mapped in the container: without subordinate ids only uid 0 and \
             gid 0 exist inside (use -u 0:0)",
            checked.user.uid,
            checked.user.gid
        );
    }
    let spec = spec::build_run_spec(&RunRequest {
        rootfs: &container.merged(),
        args: checked.command.clone(),
        env: checked.env.clone(),
        cwd: args.workdir.clone(),
        user: checked.user.clone(),
        terminal: args.tty,
        hostname,
        network: checked.network,
        volumes: &checked.volumes,
        etc: &etc,
        idmap: &idmap,
    })?;
    let plan = RootfsPlan::Overlay {
        lower: checked.image.clone(),
        upper: container.upper(),
        work: container.work(),
        volatile: args.rm,
    };
    Ok((spec, plan, idmap))
}

fn record_running(container: &Container, pid: i32) -> Result<()> {
    let me = std::process::id() as i32;
    container.save_state(&State {
        status: Some(Status::Running),
        pid: Some(pid),
        runner_pid: Some(me),
        runner_start: process_start_time(me),
        exit_code: None,
        started: Some(now_rfc3339()),
        finished: None,
    })
}

fn finish(store: &Store, container: &Container, code: i32) -> Result<()> {
    if container.meta.auto_remove {
        return store.remove(container);
    }
    let mut state = container.state();
    state.status = Some(Status::Exited);
    state.exit_code = Some(code);
    state.finished = Some(now_rfc3339());
    container.save_state(&state)
}

/// `-d`: a monitor process (a fork of this one, in a session of its own) starts the container
/// with its output going to the log, records its exit, and removes it if `--rm`. This process
/// returns once the command runs.
fn run_detached(store: &Store, container: &Container, launch: &Launch<'_>) -> Result<i32> {
    let (mut report_rx, report_tx) = pipe()?;
    match sys::fork_process().context("fork of the monitor")? {
        sys::CloneResult::Parent(_) => {
            drop(report_tx);
            let mut report = String::new();
            report_rx
                .read_to_string(&mut report)
                .context("reading the monitor's report")?;
            match report.split_once('\n') {
                Some(("ok", _)) => {
                    println!("{}", container.meta.name);
                    Ok(0)
                }
                Some((code, message)) => Err(ChildFailed {
                    code: code.parse().unwrap_or(125),
                    message: message.to_string(),
                }
                .into()),
                None => bail!(
                    "the monitor of container {} died while starting it",
                    container.meta.name
                ),
            }
        }
        sys::CloneResult::Child => {
            drop(report_rx);
            let code = match monitor(store, container, launch, report_tx) {
                Ok(()) => 0,
                Err(_) => 1,
            };
            sys::exit_now(code)
        }
    }
}

fn monitor(
    store: &Store,
    container: &Container,
    launch: &Launch<'_>,
    mut report: fs::File,
) -> Result<()> {
    nix::unistd::setsid().context("setsid")?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(container.log_path())
        .with_context(|| format!("opening {}", container.log_path().display()))?;
    let devnull = fs::File::open("/dev/null").context("opening /dev/null")?;
    nix::unistd::dup2_stdin(devnull.as_fd())?;
    nix::unistd::dup2_stdout(log.as_fd())?;
    nix::unistd::dup2_stderr(log.as_fd())?;
    drop((log, devnull));
    let started = match launch::start(launch) {
        Ok(s) => s,
        Err(e) => {
            let (code, message) = match e.downcast_ref::<ChildFailed>() {
                Some(f) => (f.code, f.message.clone()),
                None => (125, format!("{e:#}")),
            };
            let _ = store.remove(container);
            let _ = write!(report, "{code}\n{message}");
            return Err(e);
        }
    };
    record_running(container, started.pid.as_raw())?;
    write!(report, "ok\n").context("reporting to nook run")?;
    drop(report);
    let code = started.wait(StdinMode::Ignore)?;
    finish(store, container, code)
}

fn pipe() -> Result<(fs::File, fs::File)> {
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe2")?;
    Ok((fs::File::from(rx), fs::File::from(tx)))
}
