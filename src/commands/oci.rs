//! The OCI runtime verbs, as runc has them: `create start state kill delete run --bundle exec
//! list ps ID spec features`. The container itself is made by the same `launch` as `nook run`;
//! what is here is the bundle, the state under `--root`, and the engine's plumbing (pid file,
//! console socket, hooks).

use std::collections::HashSet;
use std::fs;
use std::io::{IoSlice, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::unistd::Pid;
use oci_spec::runtime::{Capability, ContainerState, LinuxNamespaceType, Process, Spec};
use serde_json::json;

use super::log;
use crate::cgroup::Cgroup;
use crate::cli::{
    CreateArgs, DeleteArgs, ExecArgs, Format, GlobalArgs, IdArg, KillArgs, ListArgs, OciCreateArgs,
    RunArgs, SpecArgs,
};
use crate::fsutil::write_atomic;
use crate::hooks::{state_document, HookContext, OCI_VERSION};
use crate::idmap::{IdMapping, IdRange, MapWriter};
use crate::launch::{self, Launch, Started, StdinMode, Target};
use crate::rootfs::RootfsPlan;
use crate::storage::container::{now_rfc3339, process_start_time};
use crate::storage::oci_state::{default_root, Entry, Record, StateRoot};

pub(super) fn state_root(global: &GlobalArgs) -> Result<StateRoot> {
    let dir = match &global.root {
        Some(dir) => dir.clone(),
        None => default_root()?,
    };
    StateRoot::open(&dir)
}

/// The container of `nook ps` named (or with the id) `id`, when the OCI state root has no
/// container `id`: the OCI verbs act on those too where they can, and say which verb does
/// where they cannot, so that they never call a container `nook ps` lists nonexistent.
fn human_container(root: &StateRoot, id: &str) -> Result<Option<HumanContainer>> {
    if crate::storage::oci_state::validate_id(id).is_ok() && root.ids()?.iter().any(|i| i == id) {
        return Ok(None);
    }
    // Read only: an engine's call for a container it already deleted must not create a store,
    // and an engine's environment without a store (no HOME) is no error of the OCI verb.
    Ok(crate::storage::container::Store::open_read()
        .ok()
        .and_then(|store| store.get(id).ok()))
}

type HumanContainer = crate::storage::container::Container;

/// The OCI status of a container of `nook ps`, and its first process while it runs.
fn human_status(container: &HumanContainer) -> (ContainerState, Option<i32>) {
    use crate::storage::container::Status;
    let state = container.state();
    match (state.effective_status(), state.pid) {
        (Status::Running, Some(pid)) => (ContainerState::Running, Some(pid)),
        (Status::Created, _) => (ContainerState::Creating, None),
        _ => (ContainerState::Stopped, None),
    }
}

/// A bundle's directory and its checked spec, the root path made absolute.
struct Bundle {
    dir: PathBuf,
    spec: Spec,
}

impl Bundle {
    fn load(dir: &Path) -> Result<Bundle> {
        let dir = fs::canonicalize(dir)
            .with_context(|| format!("bundle {}: no such directory", dir.display()))?;
        let path = dir.join("config.json");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("bundle {}: reading config.json", dir.display()))?;
        let mut de = serde_json::Deserializer::from_str(&text);
        let mut spec: Spec = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            anyhow!(
                "bundle {}: config.json: field `{}`: {}",
                dir.display(),
                e.path(),
                e.inner()
            )
        })?;
        check_spec(&dir, &mut spec)
            .map_err(|e| anyhow!("bundle {}: config.json: {e:#}", dir.display()))?;
        Ok(Bundle { dir, spec })
    }
}

/// What nook needs of a bundle's spec, checked before anything is made; errors name the field.
fn check_spec(bundle: &Path, spec: &mut Spec) -> Result<()> {
    let root = spec.root().as_ref().context("field `root` is missing")?;
    let path = bundle.join(root.path());
    let path = fs::canonicalize(&path)
        .ok()
        .filter(|p| p.is_dir())
        .with_context(|| format!("field `root.path`: {} is not a directory", path.display()))?;
    let mut root = root.clone();
    root.set_path(path);
    spec.set_root(Some(root));

    let process = spec
        .process()
        .as_ref()
        .context("field `process` is missing")?;
    if process.args().as_ref().map_or(true, |a| a.is_empty()) {
        bail!("field `process.args` is empty: give the command to run");
    }
    if !process.cwd().is_absolute() {
        bail!(
            "field `process.cwd`: {} is not absolute",
            process.cwd().display()
        );
    }
    refuse_unsupported(spec)?;
    let linux = spec.linux().as_ref().context("field `linux` is missing")?;
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        // runc and crun join every kind by path; so does nook, but time namespaces.
        let refused = match ns.typ() {
            LinuxNamespaceType::Time => Some("time namespaces are not supported"),
            _ => None,
        };
        if let (Some(path), Some(why)) = (ns.path(), refused) {
            bail!(
                "field `linux.namespaces[{i}].path` ({}): {why}; remove the path to get a new \
                 {:?} namespace",
                path.display(),
                ns.typ()
            );
        }
    }
    Ok(())
}

/// Settings a rootless runtime cannot apply: refused by name, never ignored. (The settings it
/// can apply, sysctls, oomScoreAdj, devices, rootfsPropagation, personality, are applied by the
/// launch, which reports the field when the kernel refuses one.)
fn refuse_unsupported(spec: &Spec) -> Result<()> {
    let process = spec.process().as_ref();
    if let Some(profile) = process
        .and_then(|p| p.apparmor_profile().as_ref())
        .filter(|p| !p.is_empty())
    {
        let enabled = fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|v| v.trim() == "Y");
        if enabled {
            bail!(
                "field `process.apparmorProfile` ({profile}): nook does not apply AppArmor \
                 profiles; remove the field or use a runtime that does"
            );
        }
        bail!(
            "field `process.apparmorProfile` ({profile}): this kernel has no AppArmor, so the \
             profile cannot confine the container; remove the field"
        );
    }
    let linux = spec.linux().as_ref();
    let namespaces = linux.and_then(|l| l.namespaces().as_ref());
    if namespaces.is_some_and(|nss| nss.iter().any(|ns| ns.typ() == LinuxNamespaceType::Time)) {
        bail!("field `linux.namespaces`: nook does not create time namespaces; remove the entry");
    }
    if let Some(seccomp) = linux.and_then(|l| l.seccomp().as_ref()) {
        use oci_spec::runtime::LinuxSeccompAction::ScmpActNotify;
        let notify = seccomp.default_action() == ScmpActNotify
            || seccomp
                .syscalls()
                .iter()
                .flatten()
                .any(|s| s.action() == ScmpActNotify);
        if notify || seccomp.listener_path().is_some() {
            bail!(
                "field `linux.seccomp`: SCMP_ACT_NOTIFY and listenerPath are not supported by \
                 nook (nothing would answer the notifications)"
            );
        }
    }
    if linux.and_then(|l| l.intel_rdt().as_ref()).is_some() {
        bail!(
            "field `linux.intelRdt`: resctrl groups need root on the host; a rootless runtime \
             cannot set them, remove the field"
        );
    }
    Ok(())
}

fn has_namespace(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|nss| nss.iter().any(|ns| ns.typ() == typ))
}

/// The id mapping a bundle asks for, as given. Without privilege our own uid and gid alone are
/// written directly (`setgroups` denied), other ranges by newuidmap/newgidmap; as root of our
/// own user namespace (rootless podman) any ids that exist there are written directly.
fn bundle_idmap(spec: &Spec) -> Result<Option<IdMapping>> {
    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    // A user namespace joined by path has its maps already; as crun does, the spec's are
    // not written again.
    let joined = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .any(|ns| ns.typ() == LinuxNamespaceType::User && ns.path().is_some());
    if joined {
        return Ok(None);
    }
    if !has_namespace(spec, LinuxNamespaceType::User) {
        if euid != 0 {
            bail!(
                "field `linux.namespaces` has no user namespace: nook runs rootless and needs one \
                 (add {{\"type\": \"user\"}} with uidMappings/gidMappings; `nook spec --rootless` \
                 writes such a config)"
            );
        }
        return Ok(None);
    }
    let linux = spec.linux().as_ref().context("field `linux` is missing")?;
    let given = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.as_ref().is_some_and(|m| !m.is_empty())
    };
    if euid != 0 && !given(linux.uid_mappings()) && !given(linux.gid_mappings()) {
        // A user namespace without maps: the caller is root and its subordinate ids follow
        // from 1, as crun maps it (`nook run`'s default, too); the spec leaves it to us.
        let (mapping, _) = IdMapping::for_mode(
            crate::idmap::UsernsMode::Auto,
            &crate::idmap::Caller::current(),
        );
        return Ok(Some(mapping));
    }
    // One list alone missing: the caller's own id as root in it.
    let ranges = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>, own: u32| match maps
        .as_ref()
        .filter(|m| !m.is_empty())
    {
        Some(maps) => maps
            .iter()
            .map(|m| IdRange {
                container: m.container_id(),
                host: m.host_id(),
                size: m.size(),
            })
            .collect::<Vec<_>>(),
        None => vec![IdRange {
            container: 0,
            host: own,
            size: 1,
        }],
    };
    let uids = ranges(linux.uid_mappings(), euid);
    let gids = ranges(linux.gid_mappings(), egid);
    if euid == 0 {
        return Ok(Some(IdMapping {
            uids,
            gids,
            writer: MapWriter::Privileged,
        }));
    }
    // Only our own ids, one each, can be written directly; anything else takes the setuid
    // helpers, which check it against /etc/subuid and /etc/subgid.
    let own_only = |list: &[IdRange], own: u32| list.iter().all(|r| r.host == own && r.size == 1);
    let writer = if own_only(&uids, euid) && own_only(&gids, egid) {
        MapWriter::Direct
    } else {
        MapWriter::Helpers
    };
    Ok(Some(IdMapping { uids, gids, writer }))
}

/// Sends the terminal's master over the engine's console socket, as conmon expects.
fn send_console(socket: &Path, master: OwnedFd) -> Result<()> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to the console socket {}", socket.display()))?;
    let fds = [master.as_raw_fd()];
    let name = b"/dev/ptmx";
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(name)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .with_context(|| format!("sending the terminal over {}", socket.display()))?;
    Ok(())
}

fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let path = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
    write_atomic(&path, pid.to_string().as_bytes(), false)
}

/// Creates the container in `entry`: its process runs up to the exec fifo and waits there.
fn create_in(
    entry: &Entry,
    bundle: &Bundle,
    opts: &OciCreateArgs,
    relay_tty: bool,
) -> Result<Started> {
    let spec = &bundle.spec;
    let terminal = spec.process().as_ref().and_then(|p| p.terminal()) == Some(true);
    if terminal && opts.console_socket.is_none() && !relay_tty {
        bail!(
            "field `process.terminal` is true but no --console-socket was given: a detached \
             container needs the engine's socket to hand its terminal to"
        );
    }
    let idmap = bundle_idmap(spec)?;
    spec.save(entry.spec_path())
        .with_context(|| format!("writing {}", entry.spec_path().display()))?;
    let fifo = entry.fifo_path();
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .with_context(|| format!("mkfifo {}", fifo.display()))?;
    // The process may have switched to any user when it opens the fifo to wait: let it write.
    fs::set_permissions(&fifo, fs::Permissions::from_mode(0o622))
        .with_context(|| format!("chmod {}", fifo.display()))?;
    let waiting = entry.waiting_path();
    nix::unistd::mkfifo(&waiting, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .with_context(|| format!("mkfifo {}", waiting.display()))?;
    // Likewise, it opens this one for reading.
    fs::set_permissions(&waiting, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("chmod {}", waiting.display()))?;
    let hooks = HookContext::of(spec, &entry.id, &bundle.dir);
    let plan = RootfsPlan::Prepared;
    let cgroup = super::cgroups::container_cgroup(&entry.id, spec)?;
    let created = create_with(
        entry,
        bundle,
        opts,
        &fifo,
        &waiting,
        hooks.as_ref(),
        &plan,
        cgroup.as_ref(),
        idmap.as_ref(),
    );
    if created.is_err() {
        if let Some(cgroup) = &cgroup {
            let _ = cgroup.remove();
        }
    }
    created
}

#[allow(clippy::too_many_arguments)]
fn create_with(
    entry: &Entry,
    bundle: &Bundle,
    opts: &OciCreateArgs,
    fifo: &Path,
    waiting: &Path,
    hooks: Option<&HookContext>,
    plan: &RootfsPlan,
    cgroup: Option<&Cgroup>,
    idmap: Option<&IdMapping>,
) -> Result<Started> {
    let spec = &bundle.spec;
    let launch = Launch {
        spec,
        target: Target::New {
            rootfs: plan,
            files: &[],
            idmap,
        },
        start_gate: Some(launch::StartGate { fifo, waiting }),
        preserve_fds: opts.preserve_fds,
        hooks,
        init: false,
        keep_stdin: true,
        die_with_parent: false,
        meanwhile: None,
        network: None,
        cgroup,
        supervision: Default::default(),
    };
    let mut started = launch::start(&launch)?;
    let pid = started.pid;
    let recorded = (|| -> Result<()> {
        let record = Record {
            id: entry.id.clone(),
            pid: pid.as_raw(),
            pid_start: process_start_time(pid.as_raw())
                .with_context(|| format!("reading /proc/{pid}/stat"))?,
            bundle: bundle.dir.clone(),
            created: now_rfc3339(),
            annotations: spec.annotations().clone(),
            cgroup: cgroup.map(|c| c.dir.clone()),
        };
        entry.save(&record)?;
        started.adopt()?;
        if let Some(socket) = &opts.console_socket {
            let master = started
                .take_pty()
                .context("the container has no terminal to send")?;
            send_console(socket, master)?;
        }
        if let Some(path) = &opts.pid_file {
            write_pid_file(path, pid.as_raw())?;
        }
        Ok(())
    })();
    if let Err(e) = recorded {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
        return Err(e);
    }
    log::debug(&format!("created {} (pid {pid})", entry.id));
    Ok(started)
}

pub fn create(global: &GlobalArgs, args: &CreateArgs) -> Result<i32> {
    let root = state_root(global)?;
    let bundle = Bundle::load(&args.bundle)?;
    let entry = root.create(&args.id)?;
    match create_in(&entry, &bundle, &args.oci, false) {
        Ok(started) => {
            started.release();
            Ok(0)
        }
        Err(e) => {
            let _ = entry.remove();
            Err(e)
        }
    }
}

/// Opens the exec fifo: the waiting process goes on to `execve`. Returns once it has run the
/// `startContainer` hooks and exec'd (its end of the fifo closes then), so that `poststart`
/// hooks and the engine see the command running.
fn pass_gate(entry: &Entry, record: &Record) -> Result<()> {
    let path = entry.fifo_path();
    let fifo = nix::fcntl::open(
        &path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("opening the exec fifo {}", path.display()))?;
    let mut passed = false;
    let mut failed = false;
    let mut report = None;
    loop {
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e).context("poll on the exec fifo"),
        }
        // Looked at before reading: once the process stops waiting, its byte is in the fifo
        // already, or went to the reader of a `start` that was killed after letting it through.
        let waiting = passed || entry.waits_at_gate();
        // Read even when poll said nothing: it reports no end of file for a writer that opened
        // the fifo before we did (for such a killed `start`).
        let mut byte = [0u8; 1];
        match nix::unistd::read(&fifo, &mut byte) {
            Ok(1) if byte[0] == b'E' => {
                failed = true;
                // The rest of the child's one write: its status and message.
                let mut rest = vec![0u8; libc::PIPE_BUF];
                if let Ok(n) = nix::unistd::read(&fifo, &mut rest) {
                    report = parse_gate_report(&rest[..n]);
                }
            }
            Ok(1) => passed = true,
            // End of file after the byte: the writer exec'd (or died).
            Ok(0) if passed => break,
            Ok(_) | Err(nix::Error::EAGAIN) => {}
            Err(e) => return Err(e).context("reading the exec fifo"),
        }
        // Before it opens the fifo, poll tells nothing: watch the process itself.
        if !passed {
            if !crate::storage::oci_state::process_alive(record.pid, record.pid_start) {
                failed = true;
                break;
            }
            if !waiting {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    if let Some((code, message)) = report {
        return Err(launch::ChildFailed {
            code,
            message: format!("container {}: {message}", entry.id),
        }
        .into());
    }
    if failed {
        bail!(
            "the process of container {} (pid {}) failed before its command ran; its error \
             went to the container's stderr",
            entry.id,
            record.pid
        );
    }
    Ok(())
}

/// `STATUS MESSAGE`, as the child writes it after the `E` on the exec fifo.
fn parse_gate_report(bytes: &[u8]) -> Option<(i32, String)> {
    let text = String::from_utf8_lossy(bytes);
    let (code, message) = text.split_once(' ')?;
    Some((code.parse().ok()?, message.to_string()))
}

fn run_poststart(entry: &Entry, record: &Record) {
    if let Ok(spec) = entry.spec() {
        if let Some(hooks) = HookContext::of(&spec, &entry.id, &record.bundle) {
            if let Err(e) = hooks.run_poststart(record.pid) {
                log::warn(&format!("{e:#}"));
            }
        }
    }
}

pub fn start(global: &GlobalArgs, args: &IdArg) -> Result<i32> {
    let root = state_root(global)?;
    if let Some(c) = human_container(&root, &args.id)? {
        bail!(
            "container {} was made by `nook run`, which started it (see `nook ps`); `nook start` \
             starts what `nook create` made. Run the image again with `nook run`",
            c.meta.name
        );
    }
    let entry = root.get(&args.id)?;
    let record = entry.record()?;
    match entry.status(&record) {
        ContainerState::Created => {}
        other => {
            // A `start` killed after opening the exec fifo left it behind.
            let _ = fs::remove_file(entry.fifo_path());
            bail!(
                "container {} is {other}: only a created container can be started",
                args.id
            )
        }
    }
    pass_gate(&entry, &record)?;
    run_poststart(&entry, &record);
    Ok(0)
}

fn owner_of(dir: &Path) -> String {
    let uid = fs::metadata(dir).map(|m| m.uid()).unwrap_or(0);
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

fn state_json(entry: &Entry) -> Result<serde_json::Value> {
    let record = entry.record()?;
    let status = entry.status(&record);
    let pid = if status == ContainerState::Stopped {
        0
    } else {
        record.pid
    };
    let doc = state_document(
        &entry.id,
        status,
        Some(pid),
        &record.bundle,
        record.annotations.clone(),
    );
    let mut value = serde_json::to_value(doc)?;
    if status == ContainerState::Running && entry.paused(&record) {
        value["status"] = json!("paused");
    }
    value["created"] = json!(record.created);
    value["owner"] = json!(owner_of(&entry.dir));
    Ok(value)
}

pub fn state(global: &GlobalArgs, args: &IdArg) -> Result<i32> {
    let root = state_root(global)?;
    if let Some(c) = human_container(&root, &args.id)? {
        let (status, pid) = human_status(&c);
        let doc = state_document(&c.meta.name, status, Some(pid.unwrap_or(0)), &c.dir, None);
        let mut value = serde_json::to_value(doc)?;
        value["created"] = json!(c.meta.created);
        value["owner"] = json!(owner_of(&c.dir));
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(0);
    }
    let entry = root.get(&args.id)?;
    println!("{}", serde_json::to_string_pretty(&state_json(&entry)?)?);
    Ok(0)
}

/// `TERM`, `SIGTERM`, `15`, and the realtime signals as `kill(1)` names them: `64`,
/// `SIGRTMIN+3`, `RTMIN+3`, `SIGRTMAX-2` (relative to the C library's SIGRTMIN, as runc and
/// crun count).
pub fn parse_signal(text: &str) -> Result<libc::c_int> {
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    if let Ok(n) = text.parse::<i32>() {
        if (1..=max).contains(&n) {
            return Ok(n);
        }
        bail!("unknown signal number {n} (signals are 1 to {max})");
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let offset = |rest: &str, sign: char| -> Option<i32> {
        if rest.is_empty() {
            return Some(0);
        }
        rest.strip_prefix(sign)?.parse::<i32>().ok()
    };
    let realtime = if let Some(rest) = name.strip_prefix("RTMIN") {
        offset(rest, '+').map(|n| min + n)
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        offset(rest, '-').map(|n| max - n)
    } else {
        None
    };
    if let Some(n) = realtime {
        if (min..=max).contains(&n) {
            return Ok(n);
        }
        bail!("signal {text:?} is out of the realtime range RTMIN..RTMAX ({min} to {max})");
    }
    Signal::from_str(&format!("SIG{name}"))
        .map(|s| s as libc::c_int)
        .map_err(|_| {
            anyhow!("unknown signal {text:?} (use a name like TERM, RTMIN+3, or a number)")
        })
}

/// Whether `pid` is pid 1 of its own pid namespace (the last `NSpid` field of its status).
fn is_namespace_init(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
            Some(line.split_whitespace().last()? == "1")
        })
        .unwrap_or(true)
}

/// Host pids of every process in the pid namespace of `pid1` (the container's first process).
fn container_pids(pid1: i32) -> Vec<i32> {
    let Ok(ns) = fs::read_link(format!("/proc/{pid1}/ns/pid")) else {
        return vec![pid1];
    };
    let mut pids: Vec<i32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| fs::read_link(format!("/proc/{p}/ns/pid")).is_ok_and(|l| l == ns))
        .collect();
    // In a pid namespace joined by path the namespace is another's (its init, its other
    // processes): only the container's first process and its descendants are the container's.
    if !is_namespace_init(pid1) {
        let parent = |p: i32| -> Option<i32> {
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            stat.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        let descends = |mut p: i32| loop {
            if p == pid1 {
                break true;
            }
            match parent(p) {
                Some(up) if up > 0 && up != p => p = up,
                _ => break false,
            }
        };
        pids.retain(|&p| descends(p));
    }
    if !pids.contains(&pid1) {
        pids.push(pid1);
    }
    pids.sort();
    pids
}

pub fn kill_container(global: &GlobalArgs, args: &KillArgs) -> Result<i32> {
    let given = args.signal.as_deref().or(args.signal_flag.as_deref());
    let root = state_root(global)?;
    if let Some(container) = human_container(&root, &args.id)? {
        return kill_human(
            &container,
            parse_signal(given.unwrap_or("SIGKILL"))?,
            args.all,
        );
    }
    let signal = parse_signal(given.unwrap_or("SIGTERM"))?;
    let entry = root.get(&args.id)?;
    let record = entry.record()?;
    if entry.status(&record) == ContainerState::Stopped {
        bail!("container {} is not running", args.id);
    }
    let targets = if args.all {
        container_pids(record.pid)
    } else {
        vec![record.pid]
    };
    for pid in targets {
        match crate::sys::send_signal(pid, signal) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e).with_context(|| format!("kill -{signal} {pid}")),
        }
    }
    Ok(0)
}

/// `kill` of a container of `nook ps`: its runner records the end, as after `nook stop`.
fn kill_human(
    container: &crate::storage::container::Container,
    signal: libc::c_int,
    all: bool,
) -> Result<i32> {
    let state = container.state();
    let pid = match (state.effective_status(), state.pid) {
        (crate::storage::container::Status::Running, Some(pid)) => pid,
        _ => bail!(
            "container {} is not running (see `nook ps`)",
            container.meta.name
        ),
    };
    let targets = if all { container_pids(pid) } else { vec![pid] };
    for pid in targets {
        match crate::sys::send_signal(pid, signal) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e).with_context(|| format!("kill -{signal} {pid}")),
        }
    }
    println!("{}", container.meta.name);
    Ok(0)
}

/// Kills the container and waits until its first process is gone (reaped or a zombie).
fn kill_and_wait(entry: &Entry, record: &Record) -> Result<()> {
    let _ = kill(Pid::from_raw(record.pid), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::storage::oci_state::process_alive(record.pid, record.pid_start) {
        if Instant::now() >= deadline {
            bail!(
                "container {} (pid {}) did not die after SIGKILL",
                entry.id,
                record.pid
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn delete_entry(entry: Entry, force: bool) -> Result<()> {
    let record = match entry.record() {
        Ok(r) => r,
        // A create that died half-way: nothing runs, nothing to tell hooks about.
        Err(_) => return entry.remove(),
    };
    match entry.status(&record) {
        ContainerState::Stopped => {}
        ContainerState::Created => kill_and_wait(&entry, &record)?,
        status => {
            if !force {
                bail!(
                    "container {} is {status}: stop it first (`nook kill {}`) or use `nook delete \
                     --force`",
                    entry.id,
                    entry.id
                );
            }
            kill_and_wait(&entry, &record)?;
        }
    }
    let hooks = entry
        .spec()
        .ok()
        .and_then(|spec| HookContext::of(&spec, &entry.id, &record.bundle));
    if let Some(dir) = &record.cgroup {
        // Processes the container left behind (daemonised children) go with it.
        Cgroup { dir: dir.clone() }.remove()?;
    }
    entry.remove()?;
    if let Some(hooks) = hooks {
        if let Err(e) = hooks.run_poststop(record.pid) {
            log::warn(&format!("{e:#}"));
        }
    }
    Ok(())
}

pub fn delete(global: &GlobalArgs, args: &DeleteArgs) -> Result<i32> {
    let root = state_root(global)?;
    if let Some(c) = human_container(&root, &args.id)? {
        // `nook rm` and `nook rm -f`, as the engine's delete and delete --force mean.
        let store = crate::storage::container::Store::open()?;
        super::containers::remove_container(&store, &c, args.force)?;
        return Ok(0);
    }
    // As runc and crun: `--force` asks for the container to be gone, and one that is gone
    // already (an engine's cleanup racing `run --rm`) is no failure.
    let entry = if args.force {
        match root.find(&args.id)? {
            Some(entry) => entry,
            None => return Ok(0),
        }
    } else {
        root.get(&args.id)?
    };
    delete_entry(entry, args.force)?;
    Ok(0)
}

pub fn list(global: &GlobalArgs, args: &ListArgs) -> Result<i32> {
    let root = state_root(global)?;
    let mut rows = Vec::new();
    for id in root.ids()? {
        let Ok(entry) = root.get(&id) else { continue };
        if let Ok(state) = state_json(&entry) {
            rows.push(state);
        }
    }
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for row in &rows {
            writeln!(out, "{}", row["id"].as_str().unwrap_or_default())?;
        }
        return Ok(0);
    }
    match args.format {
        Format::Json => writeln!(out, "{}", serde_json::to_string(&rows)?)?,
        Format::Table => {
            writeln!(
                out,
                "{:<20} {:<8} {:<8} {:<40} {:<21} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            )?;
            for row in &rows {
                writeln!(
                    out,
                    "{:<20} {:<8} {:<8} {:<40} {:<21} {}",
                    row["id"].as_str().unwrap_or_default(),
                    row["pid"].to_string(),
                    row["status"].as_str().unwrap_or_default(),
                    row["bundle"].as_str().unwrap_or_default(),
                    row["created"].as_str().unwrap_or_default(),
                    row["owner"].as_str().unwrap_or_default()
                )?;
            }
        }
    }
    Ok(0)
}

/// `ps ID`: the processes of an OCI container.
pub fn ps(global: &GlobalArgs, id: &str, format: Format) -> Result<i32> {
    let root = state_root(global)?;
    let pids = match human_container(&root, id)? {
        Some(c) => match human_status(&c) {
            (ContainerState::Running, Some(pid)) => container_pids(pid),
            _ => bail!("container {} is not running (see `nook ps`)", c.meta.name),
        },
        None => {
            let entry = root.get(id)?;
            let record = entry.record()?;
            if entry.status(&record) == ContainerState::Stopped {
                bail!("container {id} is not running");
            }
            container_pids(record.pid)
        }
    };
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string(&pids)?)?,
        Format::Table => {
            writeln!(out, "{:>8} CMD", "PID")?;
            for pid in pids {
                let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd: Vec<String> = cmd
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                writeln!(out, "{pid:>8} {}", cmd.join(" "))?;
            }
        }
    }
    Ok(0)
}

/// `run --bundle`: create, start, and (unless detached) wait and delete.
pub fn run(global: &GlobalArgs, args: &RunArgs) -> Result<i32> {
    let bundle_dir = args
        .bundle
        .as_ref()
        .context("run --bundle needs a bundle")?;
    let root = state_root(global)?;
    let bundle = Bundle::load(bundle_dir)?;
    let id = args.image.clone();
    let entry = root.create(&id)?;
    let started = (|| {
        let started = create_in(&entry, &bundle, &args.oci, !args.detach)?;
        let record = entry.record()?;
        if let Err(e) = pass_gate(&entry, &record) {
            let _ = kill(started.pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(started.pid, None);
            return Err(e);
        }
        run_poststart(&entry, &record);
        Ok(started)
    })();
    let started = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = entry.remove();
            return Err(e);
        }
    };
    // Others (state, kill, exec) must be able to lock the container while it runs.
    drop(entry);
    if args.detach {
        started.release();
        return Ok(0);
    }
    let stdin = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        StdinMode::Relay
    } else {
        StdinMode::Ignore
    };
    let code = started.wait(stdin)?;
    if !args.keep {
        delete_entry(root.get(&id)?, true)?;
    }
    Ok(code)
}

/// Where `exec` goes: an OCI container under `--root`, else a container of `nook ps`.
fn exec_target(
    global: &GlobalArgs,
    name: &str,
    ignore_paused: bool,
) -> Result<(Spec, i32, Option<Cgroup>)> {
    let root = state_root(global)?;
    if crate::storage::oci_state::validate_id(name).is_ok()
        && root.ids()?.iter().any(|id| id == name)
    {
        let entry = root.get(name)?;
        let record = entry.record()?;
        if entry.status(&record) != ContainerState::Running {
            bail!("container {name} is not running: only a running container can exec");
        }
        if entry.paused(&record) && !ignore_paused {
            bail!(
                "container {name} is paused: `nook resume {name}` first (with --ignore-paused \
                 the command waits until then)"
            );
        }
        let cgroup = record.cgroup.map(|dir| Cgroup { dir });
        return Ok((entry.spec()?, record.pid, cgroup));
    }
    let store = crate::storage::container::Store::open_read()?;
    let container = store.get(name).with_context(|| {
        format!(
            "no container {name} under --root {} nor in nook's store",
            root_display(global)
        )
    })?;
    let state = container.state();
    let pid = match (state.effective_status(), state.pid) {
        (crate::storage::container::Status::Running, Some(pid)) => pid,
        _ => bail!("container {name} is not running (see `nook ps`)"),
    };
    let path = container.dir.join("config.json");
    let spec = Spec::load(&path).with_context(|| {
        format!(
            "reading {}: the container was started by an older nook; restart it to exec into it",
            path.display()
        )
    })?;
    Ok((spec, pid, None))
}

fn root_display(global: &GlobalArgs) -> String {
    global
        .root
        .clone()
        .or_else(|| default_root().ok())
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// `-u USER[:GROUP]` as `run` reads it, names looked up in the running container's own
/// /etc/passwd and /etc/group (through its root, so its symbolic links stay inside).
fn resolve_exec_user(text: &str, pid: i32) -> Result<crate::spec::ContainerUser> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    crate::spec::resolve_user(&root, Some(text))
        .with_context(|| format!("--user {text:?} in the container"))
}

/// Sets `var` (`KEY=value`) in `env`, replacing an earlier value of the same key.
fn set_env_var(env: &mut Vec<String>, var: &str) {
    let key = var.split_once('=').map_or(var, |(k, _)| k);
    env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
    env.push(var.to_string());
}

fn has_env_var(env: &[String], key: &str) -> bool {
    env.iter()
        .any(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
}

/// The process `exec` runs: `--process FILE`, else the container's process with the command
/// line's changes.
fn exec_process(args: &ExecArgs, base: &Process, pid: i32) -> Result<Process> {
    if let Some(path) = &args.process {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading --process {}", path.display()))?;
        let mut de = serde_json::Deserializer::from_str(&text);
        let process: Process = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            anyhow!(
                "--process {}: field `{}`: {}",
                path.display(),
                e.path(),
                e.inner()
            )
        })?;
        if process.args().as_ref().map_or(true, |a| a.is_empty()) {
            bail!("--process {}: field `args` is empty", path.display());
        }
        return Ok(process);
    }
    if args.command.is_empty() {
        bail!("give the command to run in the container (or --process FILE)");
    }
    let mut process = base.clone();
    process.set_args(Some(args.command.clone()));
    process.set_terminal(Some(args.tty));
    let mut env = base.env().clone().unwrap_or_default();
    let mut user = base.user().clone();
    if let Some(text) = &args.user {
        let other = resolve_exec_user(text, pid)?;
        user.set_uid(other.uid);
        user.set_gid(other.gid);
        // The container's HOME belongs to the user it runs as; another user gets its own, from
        // the container's /etc/passwd (else `/`), as podman gives it.
        set_env_var(&mut env, &format!("HOME={}", other.home));
    }
    if args.tty && !has_env_var(&env, "TERM") {
        // As `run -t` sets it: a terminal the container did not have at its start.
        env.push("TERM=xterm".to_string());
    }
    for var in &args.env {
        set_env_var(&mut env, var);
    }
    process.set_env(Some(env));
    if let Some(cwd) = &args.cwd {
        process.set_cwd(PathBuf::from(cwd));
    }
    if !args.additional_gids.is_empty() {
        user.set_additional_gids(Some(args.additional_gids.clone()));
    }
    process.set_user(user);
    if args.no_new_privs {
        process.set_no_new_privileges(Some(true));
    }
    if !args.caps.is_empty() {
        let mut caps = base.capabilities().clone().unwrap_or_default();
        let added: HashSet<Capability> = args
            .caps
            .iter()
            .map(|c| {
                let name = c.to_ascii_uppercase();
                let name = name.strip_prefix("CAP_").unwrap_or(&name).to_string();
                Capability::from_str(&format!("CAP_{name}"))
                    .or_else(|_| Capability::from_str(&name))
                    .map_err(|_| anyhow!("--cap {c}: unknown capability"))
            })
            .collect::<Result<_>>()?;
        let extend = |set: &Option<HashSet<Capability>>| {
            let mut s = set.clone().unwrap_or_default();
            s.extend(added.iter().copied());
            Some(s)
        };
        caps.set_bounding(extend(caps.bounding()));
        caps.set_effective(extend(caps.effective()));
        caps.set_permitted(extend(caps.permitted()));
        process.set_capabilities(Some(caps));
    }
    Ok(process)
}

pub fn exec(global: &GlobalArgs, args: &ExecArgs) -> Result<i32> {
    let (mut spec, pid, cgroup) = exec_target(global, &args.container, args.ignore_paused)?;
    let base = spec.process().clone().unwrap_or_default();
    let process = exec_process(args, &base, pid)?;
    let tty = process.terminal() == Some(true);
    if tty && args.detach && args.console_socket.is_none() {
        bail!("--tty with --detach needs --console-socket to hand the terminal to");
    }
    spec.set_process(Some(process));
    spec.set_hooks(None);
    let launch = Launch {
        spec: &spec,
        target: Target::Join {
            pid: Pid::from_raw(pid),
        },
        start_gate: None,
        preserve_fds: args.preserve_fds,
        hooks: None,
        init: false,
        keep_stdin: true,
        // Killing a waiting `exec` must not leave its command running in the container;
        // `--detach` hands the command over on purpose.
        die_with_parent: !args.detach,
        meanwhile: None,
        network: None,
        cgroup: cgroup.as_ref(),
        // A command joining a container under root emulation's supervisor gets one of its own.
        supervision: spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().as_ref())
            .map(crate::security::root_emulation::supervision_of)
            .unwrap_or_default(),
    };
    let mut started = launch::start(&launch)?;
    let child = started.pid;
    let plumbed = (|| -> Result<()> {
        if let Some(socket) = &args.console_socket {
            let master = started
                .take_pty()
                .context("the process has no terminal to send")?;
            send_console(socket, master)?;
        }
        if let Some(path) = &args.pid_file {
            write_pid_file(path, child.as_raw())?;
        }
        Ok(())
    })();
    if let Err(e) = plumbed {
        let _ = kill(child, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(child, None);
        return Err(e);
    }
    if args.detach {
        started.release();
        return Ok(0);
    }
    let stdin = if args.interactive || std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        StdinMode::Relay
    } else {
        StdinMode::Ignore
    };
    started.wait(stdin)
}

/// `spec`: a config.json that runs as it is under nook and under crun.
pub fn spec(args: &SpecArgs) -> Result<i32> {
    let path = args.bundle.join("config.json");
    if path.exists() {
        bail!(
            "{} already exists; remove it or choose another --bundle",
            path.display()
        );
    }
    let mut spec = if args.rootless {
        Spec::rootless(
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    } else {
        Spec::default()
    };
    // The oldest version that has everything written here, so that older runtimes (crun 1.8
    // refuses versions it does not know) run it too.
    spec.set_version("1.0.2".to_string());
    // No cgroup mount: a rootless container has no cgroup of its own to show (nook manages
    // none yet), and crun would mount the host's hierarchy read-only where nook shows nothing.
    if let Some(mounts) = spec.mounts().clone() {
        let kept = mounts
            .into_iter()
            .filter(|m| !matches!(m.typ().as_deref(), Some("cgroup" | "cgroup2")))
            .collect();
        spec.set_mounts(Some(kept));
    }
    spec.save(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(0)
}

/// `features`: what this runtime implements (runtime-spec features.md), no more: engines probe
/// it instead of guessing.
pub fn features() -> Result<i32> {
    let namespaces = ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"];
    let caps: Vec<String> = caps::all()
        .iter()
        .map(|c| c.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let doc = json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": crate::rootfs::MOUNT_OPTIONS.as_slice(),
        "linux": {
            "namespaces": namespaces,
            "capabilities": caps,
            "cgroup": { "v1": false, "v2": true, "systemd": false, "systemdUser": false, "rdma": false },
            "seccomp": {
                "enabled": true,
                "actions": [
                    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"
                ],
                "operators": [
                    "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"
                ],
                "archs": [
                    "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_RISCV64",
                    "SCMP_ARCH_S390X", "SCMP_ARCH_X32", "SCMP_ARCH_X86", "SCMP_ARCH_X86_64"
                ],
                "knownFlags": crate::security::SECCOMP_FLAGS.as_slice(),
                "supportedFlags": crate::security::SECCOMP_FLAGS.as_slice()
            },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
            "intelRdt": { "enabled": false },
            "mountExtensions": { "idmap": { "enabled": false } }
        },
        "annotations": {
            "org.opencontainers.runtime-spec.features.name": "nook",
            "org.opencontainers.runtime-spec.features.version": env!("CARGO_PKG_VERSION")
        }
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("9").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("sigusr1").unwrap(), libc::SIGUSR1);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("999").is_err());
        assert!(parse_signal("0").is_err());
    }

    #[test]
    fn realtime_signals_parse_as_kill_names_them() {
        let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
        assert_eq!(parse_signal("64").unwrap(), 64.min(max));
        assert_eq!(parse_signal("SIGRTMIN+3").unwrap(), min + 3);
        assert_eq!(parse_signal("RTMIN+3").unwrap(), min + 3);
        assert_eq!(parse_signal("rtmin").unwrap(), min);
        assert_eq!(parse_signal("SIGRTMAX-2").unwrap(), max - 2);
        assert_eq!(parse_signal("RTMAX").unwrap(), max);
        assert!(parse_signal("RTMIN+99").is_err());
        assert!(parse_signal("RTMIN-1").is_err());
        assert!(parse_signal("RTMAXX").is_err());
    }

    #[test]
    fn users_parse_as_numbers() {
        // No such process: no /etc/passwd to read, so only numbers resolve.
        let ids = |text| {
            let user = resolve_exec_user(text, -1).unwrap();
            (user.uid, user.gid, user.home)
        };
        assert_eq!(ids("1000"), (1000, 1000, "/".to_string()));
        assert_eq!(ids("0:5"), (0, 5, "/root".to_string()));
        assert!(resolve_exec_user("alice", -1).is_err());
    }

    #[test]
    fn bundle_errors_name_the_field_and_the_bundle() {
        let dir = std::env::temp_dir().join(format!("nook-bundle-{}", std::process::id()));
        let _ = crate::fsutil::remove_tree(&dir);
        fs::create_dir_all(dir.join("rootfs")).unwrap();
        fs::write(
            dir.join("config.json"),
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"cwd":"/","args":["sh"],"user":{"uid":"zero","gid":0}}}"#,
        )
        .unwrap();
        let err = format!("{:#}", Bundle::load(&dir).err().unwrap());
        assert!(err.contains("process.user.uid"), "{err}");
        assert!(err.contains(&dir.display().to_string()), "{err}");
        fs::write(
            dir.join("config.json"),
            r#"{"ociVersion":"1.0.2","root":{"path":"nothere"},"process":{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0}}}"#,
        )
        .unwrap();
        let err = format!("{:#}", Bundle::load(&dir).err().unwrap());
        assert!(err.contains("root.path"), "{err}");
        crate::fsutil::remove_tree(&dir).unwrap();
    }
}
