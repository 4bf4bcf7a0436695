//! `nook top`: the processes of a running container, with ps's columns as podman prints them.

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::cli::TopArgs;
use crate::storage::container::{Status, Store};

/// What /proc says of one process of the container.
struct Process {
    host_pid: i32,
    host_ppid: i32,
    /// Its pid in the container's pid namespace.
    pid: i32,
    uid: u32,
    tty: u64,
    /// User plus system time, in clock ticks.
    cpu: u64,
    /// Start, in clock ticks since boot.
    start: u64,
    command: String,
}

fn read_process(pid: i32) -> Option<Process> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = &stat[open + 1..close];
    // Fields from the state (the third) on: the name before them may hold spaces.
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |n: usize| fields.get(n).and_then(|f| f.parse::<u64>().ok());
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::split_whitespace)
    };
    let inner_pid = line("NSpid:")?.last()?.parse().ok()?;
    let uid = line("Uid:")?.nth(1)?.parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(Process {
        host_pid: pid,
        host_ppid: field(1)? as i32,
        pid: inner_pid,
        uid,
        tty: field(4)?,
        cpu: field(11)? + field(12)?,
        start: field(19)?,
        command: if args.is_empty() {
            format!("[{comm}]")
        } else {
            args.join(" ")
        },
    })
}

/// `pts/N` for a pseudo-terminal, else `?` (as ps prints a process without a terminal).
fn tty_name(tty_nr: u64) -> String {
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    match major {
        136..=143 => format!("pts/{}", (major - 136) * 256 + minor),
        _ => "?".to_string(),
    }
}

/// `[[DD-]HH:]MM:SS`, as ps writes ELAPSED.
fn elapsed_text(secs: u64) -> String {
    let (days, hours, mins, secs) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (days, hours) {
        (0, 0) => format!("{mins:02}:{secs:02}"),
        (0, _) => format!("{hours:02}:{mins:02}:{secs:02}"),
        _ => format!("{days}-{hours:02}:{mins:02}:{secs:02}"),
    }
}

/// `HH:MM:SS`, as ps writes TIME.
fn cpu_text(secs: u64) -> String {
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The container's view of a host uid, through the uid map of one of its processes.
fn inside_uid(uid_map: &str, host: u32) -> Option<u32> {
    uid_map.lines().find_map(|line| {
        let mut f = line.split_whitespace().map(|n| n.parse::<u32>().ok());
        let (inside, outside, count) = (f.next()??, f.next()??, f.next()??);
        (host >= outside && host - outside < count).then(|| inside + (host - outside))
    })
}

fn user_name(passwd: &str, uid: u32) -> String {
    passwd
        .lines()
        .find_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
        })
        .unwrap_or_else(|| uid.to_string())
}

pub fn top(args: &TopArgs) -> Result<i32> {
    let container = Store::open()?.get(&args.container)?;
    let name = &container.meta.name;
    let state = container.state();
    let (Status::Running, Some(first)) = (state.effective_status(), state.pid) else {
        bail!(
            "container {name} is not running: `nook top` lists the processes of a running \
             container (see `nook ps`)"
        );
    };
    let ns_of = |pid: i32| fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let pidns: PathBuf = ns_of(first)
        .with_context(|| format!("reading /proc/{first}/ns/pid of container {name}"))?;
    let mut processes: Vec<Process> = fs::read_dir("/proc")
        .context("reading /proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| ns_of(pid).as_ref() == Some(&pidns))
        .filter_map(read_process)
        .collect();
    if processes.is_empty() {
        bail!("container {name} has no process left (it is stopping)");
    }
    processes.sort_by_key(|p| p.pid);
    let uid_map = fs::read_to_string(format!("/proc/{first}/uid_map")).unwrap_or_default();
    let passwd = fs::read_to_string(format!("/proc/{first}/root/etc/passwd")).unwrap_or_default();
    let ticks = crate::sys::clock_ticks();
    let uptime: f64 = fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let rows: Vec<[String; 8]> = processes
        .iter()
        .map(|p| {
            let elapsed = (uptime - p.start as f64 / ticks as f64).max(0.0);
            let cpu_secs = p.cpu as f64 / ticks as f64;
            let percent = if elapsed > 0.0 {
                100.0 * cpu_secs / elapsed
            } else {
                0.0
            };
            let ppid = processes
                .iter()
                .find(|q| q.host_pid == p.host_ppid)
                .map_or(0, |q| q.pid);
            let user = match inside_uid(&uid_map, p.uid) {
                Some(uid) => user_name(&passwd, uid),
                None => "nobody".to_string(),
            };
            [
                user,
                p.pid.to_string(),
                ppid.to_string(),
                format!("{percent:.1}"),
                elapsed_text(elapsed as u64),
                tty_name(p.tty),
                cpu_text(cpu_secs as u64),
                p.command.clone(),
            ]
        })
        .collect();
    let header = [
        "USER", "PID", "PPID", "%CPU", "ELAPSED", "TTY", "TIME", "COMMAND",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_read_as_ps_writes_them() {
        assert_eq!(tty_name(0), "?");
        assert_eq!(tty_name((136 << 8) | 3), "pts/3");
        assert_eq!(elapsed_text(65), "01:05");
        assert_eq!(elapsed_text(3 * 3600 + 5), "03:00:05");
        assert_eq!(elapsed_text(86400 + 61), "1-00:01:01");
        assert_eq!(cpu_text(3661), "01:01:01");
        let map = "         0       1000          1\n         1     100000      65536\n";
        assert_eq!(inside_uid(map, 1000), Some(0));
        assert_eq!(inside_uid(map, 100041), Some(42));
        assert_eq!(inside_uid(map, 5), None);
        let passwd = "root:x:0:0:root:/root:/bin/sh\n_apt:x:42:65534::/nonexistent:/bin/false\n";
        assert_eq!(user_name(passwd, 42), "_apt");
        assert_eq!(user_name(passwd, 7), "7");
    }
}
