//! `nook run DIR [CMD…]`: a new container over a root filesystem directory.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{mapping_and_notice, podman};
use crate::cli::PullPolicy;
use crate::cli::{BackendArg, NetworkArg, RootEmulationArg, RunArgs, UsernsArg};
use crate::idmap::{Caller, IdMapping};
use crate::launch::{self, run_in_userns, ChildFailed, Launch, StdinMode, Target};
use crate::rootfs::backend::{self, Backend, Choice, Decision};
use crate::rootfs::GeneratedFile;
use crate::rootfs::RootfsPlan;
use crate::security::root_emulation;
use crate::spec::{self, NetworkMode, RunRequest, Volume};
use crate::storage::container::{
    now_rfc3339, process_start_time, Container, NewContainer, State, Status, Store,
};
use crate::storage::image::{Image, ImageConfig, ImageStore};
use crate::{config, net, rootfs::copy, sys};

/// Everything checked before anything is created, so that bad input leaves nothing behind.
struct Checked {
    image: PathBuf,
    idmap: IdMapping,
    caller: Caller,
    volumes: Vec<Volume>,
    user: spec::ContainerUser,
    command: Vec<String>,
    env: Vec<String>,
    workdir: Option<String>,
    network: NetworkMode,
    /// The private network's helper and ports, when the network is private.
    net: Option<net::Plan>,
    /// `--add-host` lines for /etc/hosts.
    extra_hosts: String,
    root_emulation: root_emulation::Verdict,
    /// A stored image's name and metadata file, checked again once the container is on disk.
    stored: Option<(String, PathBuf)>,
    podman: podman::Options,
}

/// What to say when a stored image's files were laid out for another id map than the
/// container's, with the import that fits this run when there is one.
fn map_mismatch_note(
    image: &str,
    imported: &IdMapping,
    container: &IdMapping,
    userns: UsernsArg,
    caller: &Caller,
) -> String {
    let maps = format!(
        "image {image} was imported with the id map [{}] but this container gets [{}]",
        imported.describe(),
        container.describe()
    );
    let flag = match userns {
        UsernsArg::Auto => "",
        UsernsArg::Single => " --userns single",
        UsernsArg::KeepId => " --userns keep-id",
    };
    if userns == UsernsArg::KeepId && caller.range_problem().is_some() {
        // An import with keep-id needs a range too: there is no better import to advise.
        return format!(
            "{maps}: without subordinate ids its files show as owned by you (uid {}) instead \
             of root",
            caller.uid
        );
    }
    format!(
        "{maps}: files may show wrong owners and writing them can fail with EOVERFLOW. \
         Import it again for this map (`nook rmi {image}` then `nook import{flag} SOURCE \
         {image}`)"
    )
}

fn check(args: &RunArgs) -> Result<Checked> {
    if args.oci.pid_file.is_some() || args.oci.console_socket.is_some() || args.oci.preserve_fds > 0
    {
        bail!("--pid-file, --console-socket and --preserve-fds are OCI options: use them with --bundle");
    }
    if args.detach && (args.tty || args.interactive) {
        bail!(
            "-d cannot be combined with -i or -t: a detached container has no terminal to attach"
        );
    }
    let podman = podman::check(args)?;
    let (image, stored) = resolve_image(&args.image, args.pull)?;
    let config = stored
        .as_ref()
        .map(|i| i.meta.config.clone())
        .unwrap_or_default();
    let caller = Caller::current();
    let (idmap, idmap_notice) = mapping_and_notice(args.userns, &caller);
    if let (Some(img), false) = (&stored, args.quiet) {
        if img.meta.idmap.uids != idmap.uids || img.meta.idmap.gids != idmap.gids {
            eprintln!(
                "nook: note: {}",
                map_mismatch_note(
                    &img.meta.name,
                    &img.meta.idmap,
                    &idmap,
                    args.userns,
                    &caller
                )
            );
        }
    } else if !args.quiet {
        warn_unmapped_owner(&image, &idmap);
    }
    let mut volumes = args
        .volumes
        .iter()
        .map(|v| Volume::parse(v))
        .collect::<Result<Vec<_>>>()?;
    volumes.extend(podman.volumes.iter().cloned());
    for volume in &volumes {
        let Some(real) = spec::resolve_in_image(&image, &volume.destination) else {
            continue;
        };
        if let Some(why) = spec::replaces_kernel_filesystem(&real) {
            bail!(
                "volume {}:{}: in the image, {} leads to {} (a symbolic link), which is {why}; \
                 a bind mount there would replace it, so nook refuses it. Mount the directory \
                 elsewhere",
                volume.source.display(),
                volume.destination.display(),
                volume.destination.display(),
                real.display()
            );
        }
    }
    let user = match (&args.user, args.userns) {
        (None, UsernsArg::KeepId) => spec::ContainerUser {
            uid: caller.uid,
            gid: caller.gid,
            home: caller
                .home
                .as_ref()
                .map(|h| h.display().to_string())
                .unwrap_or_else(|| "/".into()),
        },
        (u, _) => spec::resolve_user(&image, u.as_deref().or(config.user.as_deref()))?,
    };
    if !idmap.maps_uid(user.uid) || !idmap.maps_gid(user.gid) {
        bail!(
            "user {}:{} does not exist in the container: its user namespace maps {}{}",
            user.uid,
            user.gid,
            idmap.describe(),
            caller
                .range_problem()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        );
    }
    let emulation_mode = match args.root_emulation {
        Some(RootEmulationArg::Auto) => root_emulation::Mode::Auto,
        Some(RootEmulationArg::Seccomp) => root_emulation::Mode::Seccomp,
        Some(RootEmulationArg::Notify) => root_emulation::Mode::Notify,
        Some(RootEmulationArg::Off) => root_emulation::Mode::Off,
        None => config::load()?.root_emulation,
    };
    let mut root_emulation = root_emulation::decide(emulation_mode, &idmap, user.uid);
    root_emulation.supervision.count = args.root_emulation_report && root_emulation.on;
    if root_emulation.supervision.any() {
        root_emulation::check_kernel_supports_supervisor()?;
    }
    if let (Some(notice), false) = (idmap_notice, args.quiet) {
        let emulated = if root_emulation.on {
            "; root is emulated, so apt, dpkg and useradd work: chown, set*id and device mknod \
             succeed without acting, and every file stays yours (--root-emulation off to stop)"
        } else {
            ""
        };
        eprintln!("nook: note: {notice}{emulated}");
    }
    let command = command_line(&config, args.entrypoint.as_deref(), &args.command);
    for e in &args.env {
        spec::validate_env_arg(e)?;
    }
    // The image's environment first, then --env-file: -e overrides both.
    let env = config
        .env
        .iter()
        .flatten()
        .cloned()
        .chain(podman::env_file_vars(&args.env_file)?)
        .chain(args.env.iter().filter_map(|e| match e.split_once('=') {
            Some(_) => Some(e.clone()),
            None => std::env::var(e).ok().map(|v| format!("{e}={v}")),
        }))
        .collect();
    let workdir = args
        .workdir
        .clone()
        .or_else(|| config.working_dir.clone().filter(|w| !w.is_empty()));
    // Publishing a port needs a network of its own, as podman gives it.
    let publishing = !args.publish.is_empty() || args.publish_all;
    let network_arg = args.network.unwrap_or(if !publishing {
        NetworkArg::Host
    } else {
        NetworkArg::Private
    });
    let want = match network_arg {
        NetworkArg::Host => None,
        NetworkArg::None => None,
        NetworkArg::Private => Some(net::Want::Any),
        NetworkArg::Pasta => Some(net::Want::Exactly(net::Helper::Pasta)),
        NetworkArg::Slirp4netns => Some(net::Want::Exactly(net::Helper::Slirp4netns)),
    };
    let network = match (network_arg, want) {
        (NetworkArg::Host, _) => NetworkMode::Host,
        (_, None) => NetworkMode::None,
        (_, Some(_)) => NetworkMode::Private,
    };
    if want.is_none() && publishing {
        bail!(
            "-p and -P need a network of its own: drop --network {} (or use --network private)",
            if network == NetworkMode::Host {
                "host"
            } else {
                "none"
            }
        );
    }
    let mut extra_hosts = String::new();
    for entry in &args.add_host {
        let Some((name, ip)) = entry.split_once(':') else {
            bail!("--add-host {entry:?}: use NAME:IP");
        };
        if ip.parse::<std::net::IpAddr>().is_err() {
            bail!("--add-host {entry:?}: {ip:?} is not an IP address");
        }
        spec::validate_hostname(name).with_context(|| format!("--add-host {entry:?}"))?;
        extra_hosts.push_str(&format!("{ip}\t{name}\n"));
    }
    for server in &args.dns {
        if server.parse::<std::net::IpAddr>().is_err() {
            bail!("--dns {server:?}: give the IP address of a DNS server");
        }
    }
    for (flag, values) in [
        ("--dns-search", &args.dns_search),
        ("--dns-option", &args.dns_option),
    ] {
        if let Some(bad) = values
            .iter()
            .find(|v| v.is_empty() || v.chars().any(char::is_whitespace))
        {
            bail!("{flag} {bad:?}: give one word, without spaces");
        }
    }
    if args.dns_search.len() > 1 && args.dns_search.iter().any(|d| d == ".") {
        bail!("--dns-search .: `.` (no search domain) cannot be combined with other domains");
    }
    let net = match want {
        None => None,
        Some(want) => {
            let no_route = !net::host_has_default_route();
            let (helper, program, reason) = net::choose(want, no_route)?;
            let mut ports: Vec<net::PortMap> = Vec::new();
            for arg in &args.publish {
                ports.extend(net::PortMap::parse(arg)?);
            }
            if args.publish_all {
                for key in config.exposed_ports.iter().flat_map(|e| e.keys()) {
                    let exposed = net::PortMap::exposed(key)?;
                    // A port -p publishes already keeps the host port it was given.
                    if !ports.iter().any(|p| {
                        (p.container_port, p.proto) == (exposed.container_port, exposed.proto)
                    }) {
                        ports.push(exposed);
                    }
                }
            }
            for port in &mut ports {
                if port.host_port.is_none() {
                    port.pick_host_port()?;
                    if !args.quiet {
                        eprintln!("nook: published {}", port.describe());
                    }
                }
            }
            Some(net::Plan {
                helper,
                program,
                reason,
                ports,
                no_route,
                state_dir: None,
            })
        }
    };
    if let Some(h) = &args.hostname {
        spec::validate_hostname(h).context("--hostname")?;
    }
    Ok(Checked {
        image,
        idmap,
        caller,
        volumes,
        user,
        command,
        env,
        workdir,
        network,
        net,
        extra_hosts,
        root_emulation,
        stored: stored.map(|i| (i.meta.name.clone(), i.dir.join("image.json"))),
        podman,
    })
}

/// `nook rmi` takes an image out of sight before it looks for containers using it: a container
/// that got on disk after that look finds its image gone here, and is not started.
fn image_kept(checked: &Checked) -> Result<()> {
    match &checked.stored {
        Some((name, meta)) if !meta.exists() => {
            bail!("image {name} was removed (`nook rmi`) while this container was being created")
        }
        _ => Ok(()),
    }
}

/// The command a container runs, as docker makes it: the entrypoint (the image's, or
/// `--entrypoint`, which also drops the image's Cmd) followed by the arguments given on the
/// command line, else the image's Cmd; `/bin/sh` when all are empty.
fn command_line(config: &ImageConfig, entrypoint: Option<&str>, args: &[String]) -> Vec<String> {
    let (entrypoint, default_cmd) = match entrypoint {
        Some("") => (Vec::new(), Vec::new()),
        Some(e) => (vec![e.to_string()], Vec::new()),
        None => (
            config.entrypoint.clone().unwrap_or_default(),
            config.cmd.clone().unwrap_or_default(),
        ),
    };
    let mut command = entrypoint;
    if args.is_empty() {
        command.extend(default_cmd);
    } else {
        command.extend(args.iter().cloned());
    }
    if command.is_empty() {
        command.push("/bin/sh".to_string());
    }
    command
}

/// An image name from the store, else a directory, else a reference to pull (as `--pull`
/// says; the registry code runs only then).
fn resolve_image(arg: &str, pull: Option<PullPolicy>) -> Result<(PathBuf, Option<Image>)> {
    let looks_like_path = arg.contains('/') || arg == "." || arg == "..";
    let policy = pull.unwrap_or(PullPolicy::Missing);
    if !looks_like_path && policy != PullPolicy::Always {
        let store = ImageStore::open()?;
        if store.exists(arg) {
            let image = store.get(arg)?;
            return Ok((image.rootfs(), Some(image)));
        }
    }
    let is_dir = fs::metadata(arg).is_ok_and(|m| m.is_dir());
    if !is_dir && !arg.starts_with('.') && !arg.starts_with('/') {
        if let Some(name) = super::registry::image_for_run(arg, policy)? {
            let image = ImageStore::open()?.get(&name)?;
            return Ok((image.rootfs(), Some(image)));
        }
    }
    let dir = match fs::canonicalize(arg) {
        Ok(path) if path.is_dir() => path,
        Ok(_) => bail!(
            "{arg} is a file, not a root filesystem directory; if it is an image archive, import \
             it first (`nook import {arg} NAME`), then run NAME"
        ),
        Err(_) => bail!(
            "{arg}: no such image or directory; give an image name (see `nook images`) or the \
             path of a root filesystem directory"
        ),
    };
    if fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_none()) {
        bail!(
            "{} is an empty directory, not a root filesystem: give a directory that holds one \
             (bin/, etc/, …), or an image name (see `nook images`)",
            dir.display()
        );
    }
    Ok((dir, None))
}

/// A directory image owned by an id the container does not map shows as `nobody` inside, and
/// copy-up of its files fails with EOVERFLOW: say so before the user hits it.
fn warn_unmapped_owner(image: &std::path::Path, idmap: &IdMapping) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(image) else {
        return;
    };
    if idmap.container_uid(meta.uid()).is_none() {
        eprintln!(
            "nook: note: {} belongs to host uid {}, which the container does not map: its files \
             show as nobody inside and changing them fails with \"Value too large for defined \
             data type\" (EOVERFLOW). Import it (`nook import DIR NAME`) so its owners follow \
             your id mapping",
            image.display(),
            meta.uid()
        );
    }
}

/// Which backend makes the writable layer, and why: `--backend`, else the config file, else auto.
fn choose_backend(arg: Option<BackendArg>, store: &Store, idmap: &IdMapping) -> Result<Decision> {
    let choice = match arg {
        Some(BackendArg::Auto) => Choice::Auto,
        Some(BackendArg::Overlay) => Choice::Forced(Backend::Overlay),
        Some(BackendArg::Fuse) => Choice::Forced(Backend::Fuse),
        Some(BackendArg::Copy) => Choice::Forced(Backend::Copy),
        None => config::load()?.backend,
    };
    backend::decide(choice, store.root(), idmap)
}

pub fn run(args: &RunArgs) -> Result<i32> {
    let mut checked = check(args)?;
    let store = Store::open()?;
    let decision = choose_backend(args.backend, &store, &checked.idmap)?;
    if checked.root_emulation.supervision.owners && decision.backend == Backend::Fuse {
        // The supervisor records owners through the container's root, and a FUSE mount
        // answers only the processes of its own user namespace.
        bail!(
            "--root-emulation notify cannot record owners on the fuse backend ({}): use \
             --backend overlay or --backend copy, or --root-emulation seccomp",
            decision.reason
        );
    }
    let mut container = store.plan(NewContainer {
        name: args.name.as_deref(),
        image: &checked.image,
        image_name: checked.stored.as_ref().map(|(name, _)| name.as_str()),
        backend: decision.backend.name(),
        backend_reason: &decision.reason,
        root_emulation: &checked.root_emulation,
        command: &checked.command,
        auto_remove: args.rm,
        idmap: &checked.idmap,
    })?;
    if let Some(plan) = &mut checked.net {
        plan.state_dir = Some(container.dir.clone());
    }
    container.meta.network =
        checked
            .net
            .as_ref()
            .map(|plan| crate::storage::container::NetworkMeta {
                helper: plan.helper,
                reason: plan.reason.clone(),
                ports: plan.ports.iter().map(|p| p.describe()).collect(),
            });
    // The overlay's directories are needed only once the id maps are written, so they are made
    // while newuidmap and newgidmap run; fuse-overlayfs and the copy need them before.
    let deferred = decision.backend == Backend::Overlay && !args.detach;
    if !deferred {
        store.materialize(&container)?;
        if let Err(e) = image_kept(&checked) {
            let _ = store.remove(&container);
            return Err(e);
        }
    }
    if let Some(file) = &checked.podman.cidfile {
        if let Err(e) = write_cidfile(file, &container.meta.id) {
            let _ = store.remove(&container);
            return Err(e);
        }
    }
    let prepared = match prepare(args, &checked, &container, decision.backend) {
        Ok(p) => p,
        Err(e) => {
            if let Some(file) = &checked.podman.cidfile {
                let _ = fs::remove_file(file);
            }
            let _ = store.remove(&container);
            return Err(e);
        }
    };
    let materialize = || -> Result<()> {
        store.materialize(&container)?;
        image_kept(&checked)?;
        save_spec(&prepared.spec, &container)?;
        save_for_restart(args, &prepared, &container)
    };
    if !deferred {
        if let Err(e) = save_spec(&prepared.spec, &container)
            .and_then(|()| save_for_restart(args, &prepared, &container))
        {
            let _ = store.remove(&container);
            return Err(e);
        }
    }
    let launch = Launch {
        spec: &prepared.spec,
        target: Target::New {
            rootfs: &prepared.plan,
            files: &prepared.files,
            idmap: Some(&checked.idmap),
        },
        start_gate: None,
        preserve_fds: 0,
        hooks: None,
        init: args.init,
        keep_stdin: args.interactive,
        die_with_parent: true,
        meanwhile: deferred.then_some(&materialize as &dyn Fn() -> Result<()>),
        network: checked.net.as_ref(),
        cgroup: None,
        supervision: checked.root_emulation.supervision,
    };
    if args.detach {
        return run_detached(&store, &container, &launch, true);
    }
    let started = match launch::start(&launch) {
        Ok(s) => s,
        Err(e) => {
            let _ = store.remove(&container);
            return Err(e);
        }
    };
    // Recorded whatever `--rm` says: a container that runs is one `ps`, `exec`, `stop` and
    // `rm -f` must find.
    if let Err(e) = record_running(&container, started.pid.as_raw()) {
        let _ = started.kill();
        let _ = store.remove(&container);
        return Err(e);
    }
    let stdin = if args.interactive {
        StdinMode::Relay
    } else {
        StdinMode::Ignore
    };
    let emulated = started.emulated();
    let code = started.wait_foreground(stdin)?;
    if args.root_emulation_report {
        report_emulation(&checked.root_emulation, emulated.as_deref());
    }
    finish(&store, &container, code)?;
    Ok(code)
}

/// `--root-emulation-report`: what was faked, so a user can tell why a file is theirs.
fn report_emulation(
    verdict: &root_emulation::Verdict,
    counts: Option<&crate::security::supervisor::Counts>,
) {
    match counts {
        Some(counts) => eprintln!("nook: root emulation: {}", counts.summary()),
        None if verdict.on => eprintln!("nook: root emulation: no calls emulated"),
        None => eprintln!(
            "nook: root emulation: off for this container: {}",
            verdict.reason
        ),
    }
}

/// What a launch needs beyond the spec.
struct Prepared {
    spec: oci_spec::runtime::Spec,
    plan: RootfsPlan,
    files: Vec<GeneratedFile>,
}

fn prepare(
    args: &RunArgs,
    checked: &Checked,
    container: &Container,
    backend: Backend,
) -> Result<Prepared> {
    let hostname = args
        .hostname
        .clone()
        // As podman: the short id, whatever the name (a name may hold `_`, no hostname can).
        .unwrap_or_else(|| container.meta.id[..12].to_string());
    let file = |destination: &str, content: Vec<u8>| GeneratedFile {
        destination: PathBuf::from(destination),
        content,
    };
    let mut files = vec![
        file("/etc/hostname", format!("{hostname}\n").into_bytes()),
        file(
            "/etc/hosts",
            (spec::hosts_file(&hostname, checked.network) + &checked.extra_hosts).into_bytes(),
        ),
        file(
            "/etc/resolv.conf",
            net::with_search_and_options(
                match (&checked.net, args.dns.is_empty()) {
                    (None, true) => fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                    // With --dns the helper does not matter.
                    (plan, _) => net::resolv_conf(
                        &args.dns,
                        plan.as_ref().map_or(net::Helper::Pasta, |p| p.helper),
                        &fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                    ),
                },
                &args.dns_search,
                &args.dns_option,
            )
            .into_bytes(),
        ),
    ];
    if args.userns == UsernsArg::KeepId && args.user.is_none() {
        files.extend(keep_id_identity(checked));
    }
    if checked.root_emulation.on && checked.image.join("etc/apt/apt.conf.d").is_dir() {
        files.push(file(
            root_emulation::APT_DROP_IN,
            root_emulation::APT_DROP_IN_TEXT.as_bytes().to_vec(),
        ));
    }
    let emulation = checked
        .root_emulation
        .on
        .then_some(checked.root_emulation.supervision);
    let mut spec = spec::build_run_spec(&RunRequest {
        // The overlay is mounted over the container's own directory, in the container's mount
        // namespace only; its layers are named by descriptor, so hiding them does no harm.
        rootfs: &container.dir,
        args: checked.command.clone(),
        env: checked.env.clone(),
        cwd: checked.workdir.clone(),
        user: checked.user.clone(),
        terminal: args.tty,
        hostname,
        network: checked.network,
        volumes: &checked.volumes,
        idmap: &checked.idmap,
        root_emulation: emulation,
    })?;
    podman::apply(
        &mut spec,
        &checked.podman,
        &checked.image,
        emulation,
        checked.user.uid,
    )?;
    let plan = match backend {
        Backend::Overlay => RootfsPlan::Overlay {
            lower: checked.image.clone(),
            upper: container.upper(),
            work: container.work(),
            volatile: args.rm,
        },
        Backend::Fuse => RootfsPlan::Fuse {
            lower: checked.image.clone(),
            upper: container.upper(),
            work: container.work(),
            log: container.dir.join("fuse-overlayfs.log"),
        },
        Backend::Copy => {
            let tree = container.rootfs();
            copy_image(&checked.image, &tree, &checked.idmap)?;
            RootfsPlan::Copy { tree }
        }
    };
    Ok(Prepared { spec, plan, files })
}

/// Kept for `nook exec`, which starts its processes the way this one was started. The overlay
/// is mounted over the container's directory, so the container never sees it.
fn save_spec(spec: &oci_spec::runtime::Spec, container: &Container) -> Result<()> {
    let spec_path = container.dir.join("config.json");
    spec.save(&spec_path)
        .with_context(|| format!("writing {}", spec_path.display()))
}

/// What `nook restart` needs beyond the spec, for a container that outlives its run.
fn save_for_restart(args: &RunArgs, prepared: &Prepared, container: &Container) -> Result<()> {
    if args.rm {
        return Ok(());
    }
    super::restart::save(container, &prepared.files, args.init)
}

/// The copy backend's private copy, made inside the container's user namespace so the image's
/// owners are the container's ids.
fn copy_image(image: &Path, tree: &Path, idmap: &IdMapping) -> Result<()> {
    run_in_userns(idmap, || {
        let summary = copy::copy_tree(image, tree)?;
        if let Some(warning) = summary.warning() {
            eprintln!("nook: copy of {}: {warning}", image.display());
        }
        Ok(())
    })
    .with_context(|| {
        format!(
            "copying the image {} to {} (copy backend)",
            image.display(),
            tree.display()
        )
    })
}

/// keep-id: the caller's passwd and group entries added to the image's, so the caller has a
/// name and a home inside.
fn keep_id_identity(checked: &Checked) -> Vec<GeneratedFile> {
    let caller = &checked.caller;
    let name = caller
        .name
        .clone()
        .unwrap_or_else(|| format!("user{}", caller.uid));
    let home = checked.user.home.clone();
    let passwd = spec::read_image_file(&checked.image, "/etc/passwd");
    let group = spec::read_image_file(&checked.image, "/etc/group");
    let mut files = Vec::new();
    for (dest, text, line, id) in [
        (
            "/etc/passwd",
            passwd,
            format!("{name}:x:{}:{}::{home}:/bin/sh", caller.uid, caller.gid),
            caller.uid,
        ),
        (
            "/etc/group",
            group,
            format!("{name}:x:{}:", caller.gid),
            caller.gid,
        ),
    ] {
        let known = text
            .lines()
            .any(|l| l.split(':').nth(2) == Some(id.to_string().as_str()));
        if known {
            continue;
        }
        let mut content = text;
        if !content.is_empty() && !content.ends_with('\n') {
            content.push('\n');
        }
        content.push_str(&line);
        content.push('\n');
        files.push(GeneratedFile {
            destination: PathBuf::from(dest),
            content: content.into_bytes(),
        });
    }
    files
}

/// `--cidfile`: created, never overwritten, as podman does.
fn write_cidfile(file: &Path, id: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .with_context(|| format!("--cidfile {}: creating it", file.display()))?;
    f.write_all(id.as_bytes())
        .with_context(|| format!("--cidfile {}: writing it", file.display()))
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
    let mut state = container.state();
    state.status = Some(Status::Exited);
    state.exit_code = Some(code);
    state.finished = Some(now_rfc3339());
    // Recorded even when the container goes: a `nook stop` waiting for it is done now, not
    // once a `--rm` container's whole layer is removed.
    let saved = container.save_state(&state);
    if container.meta.auto_remove {
        return store.remove(container);
    }
    saved
}

/// `-d`: a monitor process (a fork of this one, in a session of its own) starts the container
/// with its output going to the log, records its exit, and removes it if `--rm`. This process
/// returns once the command runs. A `fresh` container (made by this run) is removed if it
/// cannot start; a restarted one is kept, as exited.
pub(super) fn run_detached(
    store: &Store,
    container: &Container,
    launch: &Launch<'_>,
    fresh: bool,
) -> Result<i32> {
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
            let code = match monitor(store, container, launch, report_tx, fresh) {
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
    fresh: bool,
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
            if fresh {
                let _ = store.remove(container);
            } else {
                let _ = finish(store, container, code);
            }
            let _ = write!(report, "{code}\n{message}");
            return Err(e);
        }
    };
    record_running(container, started.pid.as_raw())?;
    writeln!(report, "ok").context("reporting to nook run")?;
    drop(report);
    let emulated = started.emulated();
    let code = started.wait(StdinMode::Ignore)?;
    if let Some(counts) = emulated.filter(|_| launch.supervision.count) {
        eprintln!("nook: root emulation: {}", counts.summary());
    }
    finish(store, container, code)
}

fn pipe() -> Result<(fs::File, fs::File)> {
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe2")?;
    Ok((fs::File::from(rx), fs::File::from(tx)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entrypoint_and_cmd_combine_like_docker() {
        let config = ImageConfig {
            entrypoint: Some(strings(&["/entry", "-x"])),
            cmd: Some(strings(&["default"])),
            ..ImageConfig::default()
        };
        assert_eq!(
            command_line(&config, None, &[]),
            strings(&["/entry", "-x", "default"])
        );
        assert_eq!(
            command_line(&config, None, &strings(&["mine"])),
            strings(&["/entry", "-x", "mine"])
        );
        assert_eq!(
            command_line(&config, Some("/other"), &[]),
            strings(&["/other"])
        );
        assert_eq!(
            command_line(&config, Some(""), &strings(&["ls"])),
            strings(&["ls"])
        );
        let cmd_only = ImageConfig {
            cmd: Some(strings(&["/bin/app"])),
            ..ImageConfig::default()
        };
        assert_eq!(command_line(&cmd_only, None, &[]), strings(&["/bin/app"]));
        assert_eq!(
            command_line(&cmd_only, None, &strings(&["sh"])),
            strings(&["sh"])
        );
        assert_eq!(
            command_line(&ImageConfig::default(), None, &[]),
            strings(&["/bin/sh"])
        );
    }
}
