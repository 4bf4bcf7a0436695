//! `ps`, `rm`, `logs`, `stop`: the verbs that act on existing containers.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

use crate::cli::{Format, InspectArgs, InspectType, LogsArgs, PortArgs, PsArgs, RmArgs, StopArgs};
use crate::storage::container::{Container, State, Status, Store};

fn status_text(state: &State) -> String {
    match state.effective_status() {
        Status::Running => "running".to_string(),
        Status::Created => "created".to_string(),
        Status::Exited => match state.exit_code {
            Some(code) if state.status == Some(Status::Exited) => format!("exited ({code})"),
            _ => "exited (unknown)".to_string(),
        },
    }
}

fn status_word(status: Status) -> &'static str {
    match status {
        Status::Running => "running",
        Status::Created => "created",
        Status::Exited => "exited",
    }
}

/// "3 minutes ago" for an RFC 3339 time stamp.
fn ago(timestamp: &str) -> String {
    let Ok(then) = humantime::parse_rfc3339(timestamp) else {
        return timestamp.to_string();
    };
    let secs = SystemTime::now()
        .duration_since(then)
        .unwrap_or_default()
        .as_secs();
    let (n, unit) = match secs {
        0..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86399 => (secs / 3600, "hour"),
        _ => (secs / 86400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

pub fn ps(args: &PsArgs) -> Result<i32> {
    let store = Store::open_read()?;
    let containers = store.list()?;
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for c in &containers {
            writeln!(out, "{}", c.meta.name)?;
        }
        return Ok(0);
    }
    let images = super::tag::image_labels(&containers);
    match args.format {
        Format::Json => {
            let rows: Vec<_> = containers
                .iter()
                .zip(&images)
                .map(|(c, image_name)| {
                    let state = c.state();
                    let status = state.effective_status();
                    json!({
                        "id": c.meta.id,
                        "name": c.meta.name,
                        "status": status_word(status),
                        "exit_code": if status == Status::Exited { state.exit_code } else { None },
                        "pid": if status == Status::Running { state.pid } else { None },
                        "image": c.meta.image,
                        "image_name": image_name,
                        "command": c.meta.command,
                        "created": c.meta.created,
                        "backend": c.meta.backend,
                        "backend_reason": c.meta.backend_reason,
                        "root_emulation": c.meta.root_emulation,
                        "root_emulation_reason": c.meta.root_emulation_reason,
                    })
                })
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        }
        Format::Table => {
            let rows: Vec<[String; 5]> = containers
                .iter()
                .zip(images)
                .map(|(c, image)| {
                    [
                        c.meta.name.clone(),
                        status_text(&c.state()),
                        image,
                        c.meta.command.join(" "),
                        ago(&c.meta.created),
                    ]
                })
                .collect();
            let header = ["NAME", "STATUS", "IMAGE", "COMMAND", "CREATED"].map(String::from);
            let mut widths = header.clone().map(|h| h.len());
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count()).min(48);
                }
            }
            for row in std::iter::once(&header).chain(&rows) {
                let line: Vec<String> = row
                    .iter()
                    .zip(widths)
                    .map(|(cell, w)| format!("{cell:<w$}"))
                    .collect();
                writeln!(out, "{}", line.join("  ").trim_end())?;
            }
        }
    }
    Ok(0)
}

/// Sends `signal` to the container's first process, if it still runs.
fn signal_container(state: &State, signal: Signal) -> Result<()> {
    if state.effective_status() != Status::Running {
        return Ok(());
    }
    if let Some(pid) = state.pid {
        match kill(Pid::from_raw(pid), signal) {
            Ok(()) | Err(nix::Error::ESRCH) => {}
            Err(e) => return Err(e).with_context(|| format!("kill -{signal} {pid}")),
        }
    }
    Ok(())
}

/// Whether the container has stopped: its runner recorded the end, or its first process (and
/// with it its pid namespace) is gone, which the runner records soon after, however loaded the
/// machine is.
fn has_stopped(state: &State) -> bool {
    state.effective_status() != Status::Running
        || state
            .pid
            .is_some_and(|pid| crate::storage::container::process_start_time(pid).is_none())
}

fn wait_until_stopped(container: &Container, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if has_stopped(&container.state()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The container's state once any nook process that is still setting it up is done: a
/// container is `created` only while its creator prepares the root and starts it (or after that
/// creator died), and a verb arriving then must act on what it becomes, not on a passing stage.
pub(super) fn settled_state(container: &Container) -> State {
    let deadline = Instant::now() + SETUP_WAIT;
    loop {
        let state = container.state();
        if state.status.is_some() || !container.meta.creator_alive() || Instant::now() >= deadline {
            return state;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long a verb waits for a container that another nook process is still starting (the
/// copy backend copies the whole image first).
const SETUP_WAIT: Duration = Duration::from_secs(60);

/// SIGTERM, a grace period, then SIGKILL; returns once the container's runner has recorded
/// the end (or, should the runner be slower than [`RUNNER_WAIT`], once its processes are gone).
pub(super) fn stop_container(container: &Container, grace: Duration) -> Result<()> {
    signal_container(&settled_state(container), Signal::SIGTERM)?;
    if !wait_until_stopped(container, grace) {
        signal_container(&container.state(), Signal::SIGKILL)?;
        if !wait_until_stopped(container, KILL_WAIT) {
            bail!(
                "container {} did not stop after SIGKILL",
                container.meta.name
            );
        }
    }
    let deadline = Instant::now() + RUNNER_WAIT;
    while container.state().effective_status() == Status::Running && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// How long the processes of a container may take to die after SIGKILL: the kernel ends them
/// at once, but on a loaded machine their exit (and the runner's noticing) can take seconds.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// How long the runner of a stopped container may take to exit: it may be removing a `--rm`
/// container's whole layer, which on a loaded machine takes far longer than the stop itself.
const RUNNER_WAIT: Duration = Duration::from_secs(120);

/// Waits until the nook process that ran the container has exited, so that whatever it does
/// last (removing a `--rm` container) is over.
pub(super) fn wait_for_runner(container: &Container, state: &State) -> Result<()> {
    let (Some(pid), Some(start)) = (state.runner_pid, state.runner_start) else {
        return Ok(());
    };
    let deadline = Instant::now() + RUNNER_WAIT;
    while crate::storage::container::process_start_time(pid) == Some(start) {
        if Instant::now() >= deadline {
            bail!(
                "nook process {pid}, which ran container {}, did not exit after its container \
                 stopped",
                container.meta.name
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Runs `action` on each named container; reports every failure and fails if any did.
fn for_each(
    names: &[String],
    mut action: impl FnMut(&Store, Container) -> Result<()>,
) -> Result<i32> {
    let store = Store::open()?;
    let mut failed = 0;
    for name in names {
        let result = store.get(name).and_then(|c| action(&store, c));
        if let Err(e) = result {
            eprintln!("nook: {e:#}");
            failed += 1;
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

pub fn rm(args: &RmArgs) -> Result<i32> {
    for_each(&args.containers, |store, c| {
        remove_container(store, &c, args.force)?;
        println!("{}", c.meta.name);
        Ok(())
    })
}

/// Removes a container; with `force` a running one is stopped first, its processes ended before
/// anything of it is removed.
pub fn remove_container(store: &Store, c: &Container, force: bool) -> Result<()> {
    let state = if force { settled_state(c) } else { c.state() };
    if state.status.is_none() && c.meta.creator_alive() {
        let advice = if force {
            "try again once it runs"
        } else {
            "wait for it, or use `nook rm -f` to stop it once it runs"
        };
        bail!(
            "container {} is still being started by nook process {}: {advice}",
            c.meta.name,
            c.meta.creator_pid.unwrap_or_default()
        );
    }
    if state.effective_status() == Status::Running {
        if !force {
            bail!(
                "container {} is running: stop it first (`nook stop {}`) or use `nook rm -f`",
                c.meta.name,
                c.meta.name
            );
        }
        stop_container(c, Duration::ZERO)?;
        wait_for_runner(c, &state)?;
    }
    store.remove(c)
}

pub fn stop(args: &StopArgs) -> Result<i32> {
    for_each(&args.containers, |_, c| {
        stop_container(&c, Duration::from_secs(args.time))?;
        println!("{}", c.meta.name);
        Ok(())
    })
}

/// Where the last `lines` lines of the file begin (a last line without its newline counts).
fn tail_start(file: &mut std::fs::File, lines: usize) -> std::io::Result<u64> {
    let mut end = file.seek(SeekFrom::End(0))?;
    if lines == 0 {
        return Ok(end);
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = 0;
    let mut first = true;
    while end > 0 {
        let len = buf.len().min(end as usize);
        let start = end - len as u64;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..len])?;
        for i in (0..len).rev() {
            if buf[i] != b'\n' {
                continue;
            }
            // The newline that ends the file ends the last line: it starts none.
            if first && start + i as u64 + 1 == end {
                continue;
            }
            seen += 1;
            if seen == lines {
                return Ok(start + i as u64 + 1);
            }
        }
        first = false;
        end = start;
    }
    Ok(0)
}

/// podman's `port`: each published port as `80/tcp -> 0.0.0.0:8080`, or with a port given only
/// its host address.
pub fn port(args: &PortArgs) -> Result<i32> {
    let store = Store::open()?;
    let container = store.get(&args.container)?;
    let published: Vec<&String> = container
        .meta
        .network
        .iter()
        .flat_map(|n| n.ports.iter())
        .collect();
    let Some(wanted) = &args.port else {
        for line in published {
            println!("{line}");
        }
        return Ok(0);
    };
    let wanted = if wanted.contains('/') {
        wanted.clone()
    } else {
        format!("{wanted}/tcp")
    };
    let prefix = format!("{wanted} -> ");
    let found: Vec<&str> = published
        .iter()
        .filter_map(|line| line.strip_prefix(&prefix))
        .collect();
    if found.is_empty() {
        bail!(
            "container {} does not publish {wanted}{}",
            container.meta.name,
            if published.is_empty() {
                " (it publishes no port)".to_string()
            } else {
                format!(
                    "; it publishes {}",
                    published
                        .iter()
                        .filter_map(|l| l.split_once(" -> ").map(|(c, _)| c))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    for address in found {
        println!("{address}");
    }
    Ok(0)
}

pub fn logs(args: &LogsArgs) -> Result<i32> {
    if args.timestamps {
        bail!(
            "--timestamps: nook's log keeps no times (it is the container's output as written); \
             have the program print them, or pipe `nook logs -f` through `ts` (moreutils)"
        );
    }
    let store = Store::open_read()?;
    let container = store.get(&args.container)?;
    let path = container.log_path();
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "container {} has no log: its output goes to the terminal of its `nook run`; only \
             detached containers (`nook run -d`) keep one",
            container.meta.name
        ),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut out = std::io::stdout().lock();
    if let Some(n) = args.tail {
        let start =
            tail_start(&mut file, n).with_context(|| format!("reading {}", path.display()))?;
        file.seek(SeekFrom::Start(start))?;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            continue;
        }
        out.flush()?;
        if !args.follow || container.state().effective_status() != Status::Running {
            // One last read: output written between the read and the status check.
            let pos = file.stream_position()?;
            file.seek(SeekFrom::Start(pos))?;
            std::io::copy(&mut file, &mut out)?;
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `nook inspect`: a JSON array, one object per name, as podman prints; a name is a container
/// first, then an image, unless `kind` says which. A name found nowhere fails the whole call.
pub fn inspect(args: &InspectArgs, kind: Option<InspectType>) -> Result<i32> {
    let containers = Store::open_read()?;
    let images = crate::storage::image::ImageStore::open_read()?;
    let mut found = Vec::new();
    for name in &args.names {
        let container = match kind {
            Some(InspectType::Image) => None,
            _ => containers.get(name).ok(),
        };
        if let Some(c) = container {
            let state = c.state();
            found.push(json!({
                "Kind": "container",
                "Id": c.meta.id,
                "Name": c.meta.name,
                "Status": state.effective_status(),
                "Meta": c.meta,
                "State": state,
                "Dir": c.dir,
            }));
            continue;
        }
        if kind != Some(InspectType::Container) && images.exists(name) {
            let image = images.get(name)?;
            found.push(json!({
                "Kind": "image",
                "Name": image.meta.name,
                "Meta": image.meta,
                "Dir": image.dir,
            }));
            continue;
        }
        let among = match kind {
            Some(InspectType::Container) => "no container",
            Some(InspectType::Image) => "no image",
            None => "no container or image",
        };
        bail!("{among} named {name} (see `nook ps` and `nook images`)");
    }
    println!("{}", serde_json::to_string_pretty(&found)?);
    Ok(0)
}
