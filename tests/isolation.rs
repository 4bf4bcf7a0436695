//! What the container cannot see or do: host processes, host paths, the host's name,
//! nook's descriptors, privileged syscalls, the host network (with `--network none`).

mod common;

use std::fs;

use common::{status_field, Nook};

#[test]
fn proc_shows_only_the_container_processes() {
    let Some(t) = Nook::new() else { return };
    // The glob is expanded by the shell itself: no other process runs while it looks.
    let script = "echo $$; for p in /proc/[0-9]*; do echo ${p#/proc/}; done";
    let out = t.sh(script);
    out.assert_ok();
    assert_eq!(out.lines(), ["1", "1"], "{out}");

    let out = t.nook(&["run", "--rm", "--init", t.image(), "sh", "-c", script]);
    out.assert_ok();
    assert_eq!(out.lines(), ["2", "1", "2"], "{out}");
}

#[test]
fn hostname_is_the_short_id_by_default_whatever_the_name() {
    let Some(t) = Nook::new() else { return };
    let host_before = nix::unistd::gethostname().expect("gethostname");
    let out = t.nook(&[
        "run",
        "--rm",
        "--name",
        "web-1",
        t.image(),
        "sh",
        "-c",
        "hostname; cat /etc/hostname; echo $HOSTNAME",
    ]);
    out.assert_ok();
    // As podman: the first 12 characters of the id.
    let id = t
        .container("web-1")
        .map(|c| c["id"].as_str().unwrap()[..12].to_string());
    assert_eq!(id, None, "--rm container still listed");
    let short = out.lines()[0].to_string();
    assert_eq!(short.len(), 12, "{out}");
    assert!(short.chars().all(|c| c.is_ascii_hexdigit()), "{out}");
    assert_eq!(out.lines(), [short.as_str(); 3], "{out}");
    assert_eq!(
        nix::unistd::gethostname().expect("gethostname"),
        host_before,
        "the host's hostname changed"
    );
}

#[test]
fn hostname_of_an_unnamed_container_is_its_short_id() {
    let Some(t) = Nook::new() else { return };
    let out = t.nook(&["run", t.image(), "hostname"]);
    out.assert_ok();
    let ps = t.ps();
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(
        Some(out.stdout.trim()),
        ps[0]["id"].as_str().map(|id| &id[..12]),
        "{ps:?}\n{out}"
    );
}

#[test]
fn hostname_option_overrides_the_name_and_fills_etc_files() {
    let Some(t) = Nook::new() else { return };
    let host_before = nix::unistd::gethostname().expect("gethostname");
    let out = t.nook(&[
        "run",
        "--rm",
        "--name",
        "named",
        "--hostname",
        "box.example",
        t.image(),
        "sh",
        "-c",
        "hostname; cat /etc/hostname; echo ---; cat /etc/hosts; echo ---; \
         test -f /etc/resolv.conf && echo resolv.conf-present",
    ]);
    out.assert_ok();
    let sections: Vec<&str> = out.stdout.split("---\n").collect();
    assert_eq!(sections.len(), 3, "{out}");
    assert_eq!(sections[0], "box.example\nbox.example\n", "{out}");
    let hosts = sections[1];
    assert!(
        hosts
            .lines()
            .any(|l| l.split_whitespace().skip(1).any(|n| n == "box.example")),
        "/etc/hosts lacks the hostname\n{out}"
    );
    assert!(
        hosts
            .lines()
            .any(|l| l.split_whitespace().skip(1).any(|n| n == "localhost")),
        "/etc/hosts lacks localhost\n{out}"
    );
    assert_eq!(sections[2].trim(), "resolv.conf-present", "{out}");
    assert_eq!(
        nix::unistd::gethostname().expect("gethostname"),
        host_before
    );
}

#[test]
fn root_in_the_container_has_the_default_capabilities() {
    let Some(t) = Nook::new() else { return };
    let out = t.nook(&["run", "--rm", t.image(), "cat", "/proc/self/status"]);
    out.assert_ok();
    let default = "00000000800405fb";
    for (field, want) in [
        ("CapInh", "0000000000000000"),
        ("CapPrm", default),
        ("CapEff", default),
        ("CapBnd", default),
        ("CapAmb", "0000000000000000"),
    ] {
        assert_eq!(
            status_field(&out.stdout, field),
            Some(want),
            "{field}\n{out}"
        );
    }
}

#[test]
fn a_non_root_user_has_no_effective_capabilities() {
    let Some(t) = Nook::new() else { return };
    if !t.has_subids() {
        return;
    }
    let out = t.nook(&[
        "run",
        "--rm",
        "-u",
        "1000:1000",
        t.image(),
        "cat",
        "/proc/self/status",
    ]);
    out.assert_ok();
    for (field, want) in [
        ("CapInh", "0000000000000000"),
        ("CapPrm", "0000000000000000"),
        ("CapEff", "0000000000000000"),
        ("CapBnd", "00000000800405fb"),
        ("CapAmb", "0000000000000000"),
        ("NoNewPrivs", "1"),
        ("Seccomp", "2"),
    ] {
        assert_eq!(
            status_field(&out.stdout, field),
            Some(want),
            "{field}\n{out}"
        );
    }
}

#[test]
fn no_new_privileges_and_a_seccomp_filter_are_in_force() {
    let Some(t) = Nook::new() else { return };
    let out = t.nook(&["run", "--rm", t.image(), "cat", "/proc/self/status"]);
    out.assert_ok();
    assert_eq!(status_field(&out.stdout, "NoNewPrivs"), Some("1"), "{out}");
    assert_eq!(status_field(&out.stdout, "Seccomp"), Some("2"), "{out}");
}

/// busybox words EPERM in its own ways ("mount: permission denied (are you root?)").
fn is_permission_error(stderr: &str) -> bool {
    let stderr = stderr.to_lowercase();
    stderr.contains("operation not permitted") || stderr.contains("permission denied")
}

#[test]
fn mount_is_denied_and_the_container_lives_on() {
    let Some(t) = Nook::new() else { return };
    let out = t.sh("mount -t tmpfs x /mnt; echo mount=$?; echo alive");
    out.assert_ok();
    let lines = out.lines();
    assert!(lines.contains(&"alive"), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("mount=") && *l != "mount=0"),
        "mount succeeded\n{out}"
    );
    assert!(is_permission_error(&out.stderr), "{out}");
}

#[test]
fn creating_namespaces_is_denied() {
    let Some(t) = Nook::new() else { return };
    let out = t.sh("unshare -U true; echo unshare=$?; echo alive");
    out.assert_ok();
    let lines = out.lines();
    assert!(lines.contains(&"alive"), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("unshare=") && *l != "unshare=0"),
        "unshare succeeded\n{out}"
    );
    assert!(is_permission_error(&out.stderr), "{out}");
}

#[test]
fn dev_holds_only_the_standard_devices() {
    let Some(t) = Nook::new() else { return };
    let script = r#"for f in /dev/* /dev/.[!.]*; do
        [ -e "$f" ] || [ -L "$f" ] || continue
        n=${f#/dev/}
        if [ -L "$f" ]; then echo "$n link"
        elif [ -c "$f" ]; then echo "$n char $(stat -c '%t:%T' "$f")"
        elif [ -d "$f" ]; then echo "$n dir"
        else echo "$n other"; fi
    done"#;
    let out = t.sh(script);
    out.assert_ok();
    // /dev/console exists only with -t; whether it does otherwise is not asserted.
    let mut seen: Vec<&str> = out
        .lines()
        .into_iter()
        .filter(|l| !l.starts_with("console "))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "fd link",
            "full char 1:7",
            "mqueue dir",
            "null char 1:3",
            "ptmx link",
            "pts dir",
            "random char 1:8",
            "shm dir",
            "stderr link",
            "stdin link",
            "stdout link",
            "tty char 5:0",
            "urandom char 1:9",
            "zero char 1:5",
        ],
        "{out}"
    );
}

#[test]
fn standard_devices_work() {
    let Some(t) = Nook::new() else { return };
    let script = "echo discarded > /dev/null && echo null-ok; \
                  head -c 5 /dev/zero | wc -c; \
                  head -c 7 /dev/urandom | wc -c; \
                  head -c 3 /dev/random | wc -c; \
                  if echo x > /dev/full; then echo full-accepted; else echo full-refused; fi; \
                  echo to-stdout > /dev/stdout; \
                  echo to-stderr > /dev/stderr; \
                  ls /dev/fd/ > /dev/null && echo fd-ok";
    let out = t.sh(script);
    out.assert_ok();
    let lines: Vec<String> = out.lines().iter().map(|l| l.trim().to_string()).collect();
    assert_eq!(
        lines,
        [
            "null-ok",
            "5",
            "7",
            "3",
            "full-refused",
            "to-stdout",
            "fd-ok"
        ],
        "{out}"
    );
    assert!(out.stderr.contains("to-stderr"), "{out}");
}

#[test]
fn sys_is_read_only() {
    let Some(t) = Nook::new() else { return };
    let out = t.sh(
        "if mkdir /sys/nook-probe 2>/dev/null || touch /sys/nook-probe 2>/dev/null; \
         then echo writable; else echo refused; fi; \
         awk '$5 == \"/sys\" { print $6 }' /proc/self/mountinfo",
    );
    out.assert_ok();
    let lines = out.lines();
    assert_eq!(lines.first(), Some(&"refused"), "{out}");
    let options = lines.get(1).unwrap_or(&"");
    assert!(
        options.split(',').any(|o| o == "ro"),
        "/sys is not mounted read-only\n{out}"
    );
}

#[test]
fn host_paths_are_unreachable() {
    let Some(t) = Nook::new() else { return };
    let marker = t.write_file("host-marker", "on the host\n");
    let storage = t.storage.to_str().expect("UTF-8");
    let script = format!(
        "if [ -e {m} ]; then echo marker-visible; else echo marker-hidden; fi; \
         if [ -e {d} ]; then echo test-dir-visible; fi; \
         if grep -F -q {s} /proc/self/mountinfo; then echo storage-in-mountinfo; fi; \
         echo done",
        m = marker.display(),
        d = t.dir.display(),
        s = storage,
    );
    let out = t.sh(&script);
    out.assert_ok();
    assert_eq!(out.lines(), ["marker-hidden", "done"], "{out}");
}

#[test]
fn no_descriptor_of_nook_reaches_the_container() {
    let Some(t) = Nook::new() else { return };
    // nook itself is handed an extra descriptor (9); the container must not get it either.
    let out = t
        .cmd(&["run", "--rm", t.image(), "ls", "/proc/self/fd"])
        .inherit_fd(9)
        .run();
    out.assert_ok();
    let mut fds = out.lines();
    fds.sort();
    assert_eq!(fds, ["0", "1", "2", "3"], "{out}");
}

/// Interface names in a /proc/net/dev text.
fn interfaces(net_dev: &str) -> Vec<String> {
    let mut names: Vec<String> = net_dev
        .lines()
        .skip(2)
        .filter_map(|l| Some(l.split_once(':')?.0.trim().to_string()))
        .collect();
    names.sort();
    names
}

#[test]
fn network_none_has_only_loopback_and_it_is_up() {
    let Some(t) = Nook::new() else { return };
    let out = t.nook(&[
        "run",
        "--rm",
        "--network",
        "none",
        t.image(),
        "sh",
        "-c",
        "cat /proc/net/dev; echo ---; ip link show lo; echo ---; ip addr show lo",
    ]);
    out.assert_ok();
    let sections: Vec<&str> = out.stdout.split("---\n").collect();
    assert_eq!(sections.len(), 3, "{out}");
    assert_eq!(interfaces(sections[0]), ["lo"], "{out}");
    let flags = sections[1]
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(flags, _)| flags)
        .unwrap_or("");
    assert!(flags.split(',').any(|f| f == "UP"), "lo is not up\n{out}");
    assert!(
        sections[2].contains("127.0.0.1"),
        "lo has no 127.0.0.1\n{out}"
    );
}

#[test]
fn host_network_is_the_default() {
    let Some(t) = Nook::new() else { return };
    let host = interfaces(&fs::read_to_string("/proc/net/dev").expect("read /proc/net/dev"));
    for args in [
        &["run", "--rm"][..],
        &["run", "--rm", "--network", "host"][..],
    ] {
        let mut args = args.to_vec();
        args.extend([t.image(), "cat", "/proc/net/dev"]);
        let out = t.nook(&args);
        out.assert_ok();
        assert_eq!(interfaces(&out.stdout), host, "{args:?}\n{out}");
    }
}
