//! Private networks (`--network private`/`pasta`, `-p`): traffic only on 127.0.0.0/8.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::Nook;

/// A free port on 127.0.0.1, from the kernel.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

/// GET / on 127.0.0.1:port, retried while the server starts.
fn http_get(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })();
        match attempt {
            Ok(body) if body.contains("200") => return body,
            other if Instant::now() >= deadline => panic!("GET 127.0.0.1:{port}: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// An image whose /www/index.html says `text`.
fn web_image(t: &Nook, name: &str, text: &str) -> String {
    let image = t.image_copy(name);
    t.mkdir(&format!("{name}/www"));
    t.write_file(format!("{image}/www/index.html"), text);
    image
}

/// pasta or slirp4netns processes of any user whose target is `pid`.
fn helpers_for(pid: i64) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{p}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let helper = args
            .first()
            .is_some_and(|a| a.ends_with("pasta") || a.ends_with("slirp4netns"));
        if helper && args.iter().skip(1).any(|a| *a == pid.to_string()) {
            found.push(p);
        }
    }
    found
}

fn wait_gone(pid: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !helpers_for(pid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "network helper for {pid} is left behind"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// pasta is installed (else the test is skipped with the reason, or fails under CI=true).
fn has_pasta() -> bool {
    common::required_tool("pasta", "passt").is_some()
}

/// A directory to put first on PATH that holds what nook needs but not pasta: the id-map
/// helpers, fuse-overlayfs and slirp4netns, so that nook falls back to slirp4netns.
fn path_without_pasta(t: &Nook) -> Option<String> {
    let slirp = common::required_tool("slirp4netns", "slirp4netns")?;
    let dir = t.mkdir("bin-without-pasta");
    for tool in ["newuidmap", "newgidmap", "fuse-overlayfs"] {
        if let Some(found) = ["/usr/bin", "/usr/sbin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(tool))
            .find(|p| p.exists())
        {
            std::os::unix::fs::symlink(found, dir.join(tool)).unwrap();
        }
    }
    std::os::unix::fs::symlink(slirp, dir.join("slirp4netns")).unwrap();
    Some(dir.to_str().unwrap().to_string())
}

fn start_web(t: &Nook, name: &str, image: &str, publish: &str) -> common::Out {
    t.nook(&[
        "run", "-d", "--name", name, "-p", publish, image, "httpd", "-f", "-h", "/www",
    ])
}

fn container_pid(t: &Nook, name: &str) -> i64 {
    t.container(name)
        .and_then(|c| c["pid"].as_i64())
        .expect("running pid")
}

#[test]
fn httpd_answers_through_a_loopback_forward_and_pasta_ends_with_stop() {
    let Some(t) = Nook::new() else { return };
    if !has_pasta() {
        return;
    }
    let port = free_port();
    let image = web_image(&t, "web", "hello from nook\n");
    start_web(&t, "web", &image, &format!("127.0.0.1:{port}:80")).assert_ok();
    let pid = container_pid(&t, "web");
    assert_eq!(helpers_for(pid).len(), 1, "one pasta per container");
    assert!(http_get(port).contains("hello from nook"));
    t.nook(&["stop", "web"]).assert_ok();
    wait_gone(pid);
    t.nook(&["rm", "web"]).assert_ok();
}

#[test]
fn two_containers_publish_port_80_on_different_host_ports_and_rm_f_ends_pasta() {
    let Some(t) = Nook::new() else { return };
    if !has_pasta() {
        return;
    }
    let (p1, p2) = (free_port(), free_port());
    let a = web_image(&t, "a", "A\n");
    let b = web_image(&t, "b", "B\n");
    start_web(&t, "a", &a, &format!("127.0.0.1:{p1}:80")).assert_ok();
    start_web(&t, "b", &b, &format!("127.0.0.1:{p2}:80")).assert_ok();
    assert!(http_get(p1).ends_with("A\n"));
    assert!(http_get(p2).ends_with("B\n"));
    let (pa, pb) = (container_pid(&t, "a"), container_pid(&t, "b"));
    t.nook(&["rm", "-f", "a"]).assert_ok();
    t.nook(&["rm", "-f", "b"]).assert_ok();
    wait_gone(pa);
    wait_gone(pb);
}

#[test]
fn publish_without_host_port_picks_one_that_nook_port_reports_on_all_addresses() {
    let Some(t) = Nook::new() else { return };
    if !has_pasta() {
        return;
    }
    let image = web_image(&t, "web", "picked\n");
    let out = start_web(&t, "web", &image, "80");
    out.assert_ok();
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("nook: published 80/tcp -> 0.0.0.0:"))
        .unwrap_or_else(|| panic!("no port printed: {out}"));
    let port: u16 = line.rsplit(':').next().unwrap().parse().unwrap();
    // podman's format, one line per published port.
    let listed = t.nook(&["port", "web"]);
    listed.assert_ok();
    assert_eq!(
        listed.lines(),
        [format!("80/tcp -> 0.0.0.0:{port}")],
        "{listed}"
    );
    t.nook(&["port", "web", "80"])
        .assert_ok()
        .assert_stdout(&format!("0.0.0.0:{port}\n"));
    let missing = t.nook(&["port", "web", "81/udp"]);
    missing.assert_code(1);
    assert!(
        missing
            .stderr
            .contains("does not publish 81/udp; it publishes 80/tcp"),
        "{missing}"
    );
    // Bound to all addresses: reached on loopback as on any other of the host's.
    assert!(http_get(port).contains("picked"));
    t.nook(&["rm", "-f", "web"]).assert_ok();

    let image = web_image(&t, "lo", "lo\n");
    let out = start_web(&t, "lo", &image, "127.0.0.1::80");
    out.assert_ok();
    let listed = t.nook(&["port", "lo"]);
    let port: u16 = listed
        .stdout
        .trim()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        listed.stdout.starts_with("80/tcp -> 127.0.0.1:"),
        "{listed}"
    );
    assert!(http_get(port).contains("lo"));
    t.nook(&["rm", "-f", "lo"]).assert_ok();
}

/// Two free consecutive ports on 127.0.0.1.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first = free_port();
        if first < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", first + 1)).is_ok() {
            return first;
        }
    }
    panic!("no two consecutive free ports");
}

#[test]
fn a_range_publishes_each_port_of_it() {
    let Some(t) = Nook::new() else { return };
    if !has_pasta() {
        return;
    }
    let first = free_port_pair();
    let image = web_image(&t, "web", "ranged\n");
    t.nook(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &format!("127.0.0.1:{first}-{}:80-81", first + 1),
        &image,
        "sh",
        "-c",
        "httpd -p 81 -h /www && exec httpd -f -p 80 -h /www",
    ])
    .assert_ok();
    assert!(http_get(first).contains("ranged"));
    assert!(http_get(first + 1).contains("ranged"));
    let listed = t.nook(&["port", "web"]);
    assert_eq!(
        listed.lines(),
        [
            format!("80/tcp -> 127.0.0.1:{first}"),
            format!("81/tcp -> 127.0.0.1:{}", first + 1)
        ],
        "{listed}"
    );
    t.nook(&["rm", "-f", "web"]).assert_ok();
    let out = t.nook(&["run", "--rm", "-p", "8000-8002:80", t.image(), "true"]);
    out.assert_code(125);
    assert!(out.stderr.contains("ranges of the same length"), "{out}");
}

#[test]
fn publish_all_publishes_what_the_image_exposes() {
    let Some(t) = Nook::new() else { return };
    if !has_pasta() {
        return;
    }
    let dir = web_image(&t, "web", "exposed\n");
    t.nook(&["run", "--name", "base", &dir, "true"]).assert_ok();
    t.nook(&["commit", "-q", "--change", "EXPOSE 80", "base", "web"])
        .assert_ok();
    let out = t.nook(&[
        "run", "-d", "--name", "web", "-P", "web", "httpd", "-f", "-h", "/www",
    ]);
    out.assert_ok();
    let listed = t.nook(&["port", "web", "80/tcp"]);
    listed.assert_ok();
    let port: u16 = listed
        .stdout
        .trim()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(http_get(port).contains("exposed"));
    assert!(
        out.stderr
            .contains(&format!("published 80/tcp -> 0.0.0.0:{port}")),
        "{out}"
    );
    t.nook(&["rm", "-f", "web"]).assert_ok();
}

/// Sends `text` to 127.0.0.1:port over UDP until the container's log shows it arrived.
/// One way only: on loopback neither helper of Debian 12 returns the reply (pasta 2023-03's
/// spliced UDP; slirp4netns with `--disable-host-loopback`, podman issue 4586).
fn udp_until_logged(t: &Nook, name: &str, port: u16, text: &str) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        socket
            .send_to(text.as_bytes(), ("127.0.0.1", port))
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let logs = t.nook(&["logs", name]);
        if logs.stdout.contains(&format!("got {text}")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{text:?} never reached the container through UDP 127.0.0.1:{port}: {logs}"
        );
    }
}

/// A UDP server on port 5353 that prints what it receives, in the Debian image's perl
/// (busybox's nc has no UDP).
const UDP_SERVER: &str = "use IO::Socket::INET; $| = 1; \
    my $s = IO::Socket::INET->new(LocalPort => 5353, Proto => 'udp') or die \"bind: $!\"; \
    while (defined $s->recv(my $m, 1500)) { print \"got $m\\n\" }";

#[test]
fn udp_forwards_through_pasta_and_slirp4netns() {
    let Some(archive) = common::debian_archive() else {
        return;
    };
    let Some(t) = Nook::new() else { return };
    if !has_pasta() {
        return;
    }
    let Some(without_pasta) = path_without_pasta(&t) else {
        return;
    };
    t.nook(&["import", "-q", archive.to_str().unwrap(), "debian"])
        .assert_ok();
    for (name, path) in [("pasta", None), ("slirp4netns", Some(&without_pasta))] {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .unwrap()
            .port();
        let publish = format!("127.0.0.1:{port}:5353/udp");
        let mut cmd = t.cmd(&[
            "run", "-d", "--name", name, "-p", &publish, "debian", "perl", "-e", UDP_SERVER,
        ]);
        if let Some(path) = path {
            cmd = cmd.env("PATH", path);
        }
        cmd.run().assert_ok();
        udp_until_logged(&t, name, port, &format!("datagram through {name}"));
        let listed = t.nook(&["port", name]);
        assert_eq!(
            listed.lines(),
            [format!("5353/udp -> 127.0.0.1:{port}")],
            "{listed}"
        );
        t.nook(&["rm", "-f", name]).assert_ok();
    }
    t.assert_no_processes_left();
}

#[test]
fn a_container_reaches_the_hosts_loopback_through_pastas_gateway() {
    let Some(t) = Nook::new() else { return };
    if !has_pasta() {
        return;
    }
    // A server on the host's loopback only, which the container cannot reach directly.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        let mut request = [0u8; 6];
        conn.read_exact(&mut request).unwrap();
        assert_eq!(&request, b"hello\n");
        conn.write_all(b"host answers").unwrap();
        peer
    });
    // pasta gives the container the host's gateway and maps that address to the host.
    // Detached: the connection stays open on the container's side after the server closes
    // (this pasta passes no FIN on), so the answer is read from the log.
    t.nook(&[
        "run",
        "-d",
        "--name",
        "client",
        "--network",
        "pasta",
        t.image(),
        "sh",
        "-c",
        &format!(
            "gw=$(ip route | awk '/^default/ {{print $3; exit}}'); echo hello | nc $gw {port}"
        ),
    ])
    .assert_ok();
    let peer = server.join().unwrap();
    assert!(peer.ip().is_loopback(), "{peer}");
    let answered = common::wait_until(Duration::from_secs(10), || {
        t.nook(&["logs", "client"]).stdout.contains("host answers")
    });
    assert!(answered, "{}", t.nook(&["logs", "client"]));
    t.nook(&["rm", "-f", "client"]).assert_ok();
}

#[test]
fn without_pasta_slirp4netns_publishes_ports_and_ends_with_its_container() {
    let Some(t) = Nook::new() else { return };
    let Some(bin) = path_without_pasta(&t) else {
        return;
    };
    let port = free_port();
    let image = web_image(&t, "web", "through slirp4netns\n");
    t.cmd(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &format!("127.0.0.1:{port}:80"),
        &image,
        "httpd",
        "-f",
        "-h",
        "/www",
    ])
    .env("PATH", &bin)
    .run()
    .assert_ok();
    let pid = container_pid(&t, "web");
    let helpers = helpers_for(pid);
    assert_eq!(helpers.len(), 1, "one slirp4netns per container");
    let exe = std::fs::read_link(format!("/proc/{}/exe", helpers[0])).unwrap();
    assert!(exe.ends_with("slirp4netns"), "{}", exe.display());
    assert!(http_get(port).contains("through slirp4netns"));
    let inspect = t.nook(&["inspect", "web"]);
    assert!(
        inspect.stdout.contains("slirp4netns") && inspect.stdout.contains("pasta is not on PATH"),
        "{inspect}"
    );
    // The host's resolvers, those reachable from the container, else slirp4netns's own.
    let resolv = t.nook(&["exec", "web", "cat", "/etc/resolv.conf"]);
    resolv.assert_ok();
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let expected: Vec<String> = host
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .filter(|s| !s.starts_with("127.") && *s != "::1")
        .map(|s| format!("nameserver {s}"))
        .collect();
    if expected.is_empty() {
        assert_eq!(resolv.lines(), ["nameserver 10.0.2.3"], "{resolv}");
    } else {
        assert_eq!(resolv.lines(), expected, "{resolv}");
    }
    // The API socket lives only while nook adds the forwards.
    let sockets: Vec<_> = std::fs::read_dir(t.storage.join("containers"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("slirp4netns"))
        .filter(|p| p.exists())
        .collect();
    assert!(sockets.is_empty(), "API socket left: {sockets:?}");
    t.nook(&["rm", "-f", "web"]).assert_ok();
    wait_gone(pid);
}

#[test]
fn slirp4netns_gives_its_address_to_a_foreground_container() {
    let Some(t) = Nook::new() else { return };
    let Some(bin) = path_without_pasta(&t) else {
        return;
    };
    let out = t
        .cmd(&[
            "run",
            "--rm",
            "--network",
            "slirp4netns",
            t.image(),
            "sh",
            "-c",
            "ip -4 addr show tap0 | grep -o 'inet [0-9./]*'",
        ])
        .env("PATH", &bin)
        .run();
    out.assert_ok();
    assert_eq!(out.stdout, "inet 10.0.2.100/24\n", "{out}");
    t.assert_no_processes_left();
}

#[test]
fn resolv_conf_and_hosts_of_a_private_network() {
    let Some(t) = Nook::new() else { return };
    if !has_pasta() {
        return;
    }
    let out = t.nook(&[
        "run",
        "--rm",
        "--network",
        "private",
        "--add-host",
        "db.test:10.1.2.3",
        t.image(),
        "sh",
        "-c",
        "cat /etc/resolv.conf; grep db.test /etc/hosts; ls /sys/class/net",
    ]);
    out.assert_ok();
    assert!(out.stdout.contains("nameserver 169.254.1.1"), "{out}");
    assert!(out.stdout.contains("10.1.2.3\tdb.test"), "{out}");
    let out = t.nook(&[
        "run",
        "--rm",
        "--network",
        "pasta",
        "--dns",
        "127.0.0.9",
        t.image(),
        "cat",
        "/etc/resolv.conf",
    ]);
    out.assert_ok();
    assert_eq!(out.stdout, "nameserver 127.0.0.9\n", "{out}");
}

#[test]
fn dns_search_and_options_go_into_resolv_conf_and_bad_ones_are_refused() {
    let Some(t) = Nook::new() else { return };
    // The host's network (no helper needed): --dns replaces the servers, the search domains
    // and options replace the host's own lines, as podman does.
    let out = t.nook(&[
        "run",
        "--rm",
        "--dns",
        "10.9.9.9",
        "--dns-search",
        "x.test",
        "--dns-search",
        "y.test",
        "--dns-option",
        "ndots:3",
        t.image(),
        "cat",
        "/etc/resolv.conf",
    ]);
    out.assert_ok();
    assert_eq!(
        out.stdout, "nameserver 10.9.9.9\nsearch x.test y.test\noptions ndots:3\n",
        "{out}"
    );
    let out = t.nook(&[
        "run",
        "--rm",
        "--dns-search",
        ".",
        t.image(),
        "cat",
        "/etc/resolv.conf",
    ]);
    out.assert_ok();
    assert!(
        !out.stdout
            .lines()
            .any(|l| l.starts_with("search ") || l.starts_with("domain ")),
        "{out}"
    );
    for (flag, value, needle) in [
        ("--dns-search", "a b", "without spaces"),
        ("--dns-option", "", "without spaces"),
    ] {
        let out = t.nook(&["run", "--rm", flag, value, t.image(), "true"]);
        assert_eq!(out.code, Some(125), "{out}");
        assert!(
            out.stderr.contains(flag) && out.stderr.contains(needle),
            "{out}"
        );
    }
    assert!(t.container_dirs().is_empty(), "{:?}", t.container_dirs());
}

#[test]
fn network_none_has_only_lo() {
    let Some(t) = Nook::new() else { return };
    let out = t.nook(&[
        "run",
        "--rm",
        "--network",
        "none",
        t.image(),
        "ls",
        "/sys/class/net",
    ]);
    out.assert_ok();
    assert_eq!(out.lines(), ["lo"], "{out}");
}

#[test]
fn pasta_ends_after_a_normal_exit_and_a_sigkill_of_nook() {
    let Some(t) = Nook::new() else { return };
    if !has_pasta() {
        return;
    }
    let port = free_port();
    let image = web_image(&t, "web", "x\n");
    let run = t
        .cmd(&[
            "run",
            "--name",
            "fg",
            "-p",
            &format!("127.0.0.1:{port}:80"),
            &image,
            "httpd",
            "-f",
            "-h",
            "/www",
        ])
        .spawn();
    http_get(port);
    let pid = container_pid(&t, "fg");
    assert_eq!(helpers_for(pid).len(), 1);
    run.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = run.wait();
    wait_gone(pid);
    t.nook(&["rm", "-f", "fg"]);

    let out = t.nook(&[
        "run",
        "--rm",
        "-p",
        &format!("127.0.0.1:{port}:80"),
        t.image(),
        "true",
    ]);
    out.assert_ok();
    t.assert_no_processes_left();
    let left: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c).contains(&format!("127.0.0.1/{port}:80"))
            })
        })
        .collect();
    assert!(left.is_empty(), "pasta left after a normal exit: {left:?}");
}

#[test]
fn without_pasta_or_slirp4netns_the_error_names_the_packages() {
    let Some(t) = Nook::new() else { return };
    let out = t
        .cmd(&["run", "--rm", "-p", "80", t.image(), "true"])
        .env("PATH", "/nonexistent")
        .run();
    out.assert_code(125);
    assert!(
        out.stderr.contains("apt-get install passt") && out.stderr.contains("slirp4netns"),
        "{out}"
    );
    assert!(t.ps().is_empty(), "{:?}", t.ps());
}

/// nook killed at seeded random moments of a start with `-p` (foreground and detached, pasta
/// and slirp4netns): neither the container nor its helper survives a killed foreground nook,
/// and `rm -f` ends whatever a detached one left running.
#[test]
fn sigkill_of_nook_at_random_moments_leaves_no_helper() {
    let Some(t) = Nook::new() else { return };
    if !has_pasta() {
        return;
    }
    let Some(without_pasta) = path_without_pasta(&t) else {
        return;
    };
    let seed: u64 = std::env::var("NOOK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(18);
    eprintln!("seed {seed} (set NOOK_TEST_SEED to repeat another)");
    let mut state = seed.max(1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let image = web_image(&t, "web", "x\n");
    for i in 0..12 {
        let name = format!("k{i}");
        let publish = format!("127.0.0.1:{}:80", free_port());
        let delay = Duration::from_millis(next() % 300);
        let detach = i % 4 >= 2;
        let mut args = vec!["run", "--name", &name, "-p", &publish];
        if detach {
            args.push("-d");
        }
        args.extend([image.as_str(), "httpd", "-f", "-h", "/www"]);
        let mut cmd = t.cmd(&args);
        if i % 2 == 1 {
            cmd = cmd.env("PATH", &without_pasta);
        }
        let run = cmd.spawn();
        std::thread::sleep(delay);
        run.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = run.wait();
        if !detach {
            t.assert_no_processes_left();
        }
        t.nook(&["rm", "-f", &name]);
        t.assert_no_processes_left();
    }
    assert!(t.ps().is_empty(), "{:?}", t.ps());
}

/// GET / on 127.0.0.1:port inside the network namespace of `pid`, from a thread of the test
/// (root) that enters it; the rest of the test stays in the host's.
fn http_get_in_netns_of(pid: u32, port: u16) -> Option<String> {
    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("open netns");
    std::thread::spawn(move || {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        http_get(port)
    })
    .join()
    .ok()
}

#[test]
fn on_a_host_without_a_default_route_slirp4netns_forwards_loopback_ports() {
    let Some(t) = Nook::new() else { return };
    let Some(unshare) = common::required_tool("unshare", "util-linux") else {
        return;
    };
    if common::required_tool("slirp4netns", "slirp4netns").is_none() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        common::prerequisite_missing("the test enters nook's network namespace, as root");
        return;
    }
    let port = free_port();
    let image = web_image(&t, "web", "routeless\n");
    // A network namespace with only `lo`, as on a machine with no network at all; nook runs
    // in it (in a user namespace that owns it) with pasta and slirp4netns both on PATH.
    let script = format!(
        "ip link set lo up && exec {} run --name web -p 127.0.0.1:{port}:80 {image} httpd -f \
         -h /www",
        t.bin().display()
    );
    let mut holder = t
        .command_for(
            &unshare,
            &["-rn".into(), "sh".into(), "-c".into(), script],
            &[],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("unshare");
    // Once the container runs, `unshare` has long made the namespace and become nook.
    let running = common::wait_until(Duration::from_secs(20), || {
        t.container("web")
            .is_some_and(|c| c["pid"].as_i64().is_some())
    });
    let body = running
        .then(|| http_get_in_netns_of(holder.id(), port))
        .flatten();
    let Some(body) = body else {
        let _ = holder.kill();
        let out = holder.wait_with_output().unwrap();
        panic!(
            "nook without a route: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    assert!(body.contains("routeless"), "{body}");
    let inspect = t.nook(&["inspect", "web"]);
    assert!(
        inspect.stdout.contains("the host has no default route"),
        "{inspect}"
    );
    // `unshare` became nook; killed, it takes the container and slirp4netns with it.
    holder.kill().unwrap();
    let status = holder.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    t.assert_no_processes_left();
    t.nook(&["rm", "-f", "web"]).assert_ok();
}

/// A user and a network namespace made by the test user as an engine makes them
/// (`unshare -Urn`), held by a sleeping process, with a veth pair that tells that
/// network namespace apart.
fn namespace_holder(t: &Nook) -> Option<std::process::Child> {
    let unshare = common::required_tool("unshare", "util-linux")?;
    let holder = t
        .command_for(
            &unshare,
            &[
                "-Urn".into(),
                "sh".into(),
                "-c".into(),
                "ip link add nookjoin0 type veth peer name nookjoin1 && exec sleep 120".into(),
            ],
            &[],
        )
        .spawn()
        .expect("unshare");
    let pid = holder.id();
    let ready = common::wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    });
    assert!(ready, "the namespace holder did not start");
    Some(holder)
}

/// `nook spec --rootless` in `dir`, changed by `edit`.
fn oci_bundle(
    t: &Nook,
    dir: &str,
    args: &[&str],
    edit: impl FnOnce(&mut serde_json::Value),
) -> String {
    let dir = t.mkdir(dir);
    let dir = dir.to_str().unwrap().to_string();
    t.nook(&["spec", "--rootless", "--bundle", &dir])
        .assert_ok();
    let path = format!("{dir}/config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    spec["root"] = serde_json::json!({"path": t.image(), "readonly": true});
    spec["process"]["args"] = serde_json::json!(args);
    edit(&mut spec);
    t.write_file(&path, &spec.to_string());
    dir
}

/// Replaces the spec's namespace of `kind` (or adds one) with one joined by `path`.
fn join_by_path(spec: &mut serde_json::Value, kind: &str, path: &str) {
    let namespaces = spec["linux"]["namespaces"].as_array_mut().unwrap();
    namespaces.retain(|ns| ns["type"] != kind);
    namespaces.push(serde_json::json!({"type": kind, "path": path}));
}

#[test]
fn an_oci_bundle_joins_an_engines_user_and_network_namespaces_by_path() {
    let Some(t) = Nook::new() else { return };
    let Some(mut holder) = namespace_holder(&t) else {
        return;
    };
    let pid = holder.id();
    let seen = t.dir.join("hook-saw");
    let bundle = oci_bundle(&t, "joined", &["cat", "/proc/net/dev"], |spec| {
        // As podman passes its own: the user namespace first, then the network namespace it
        // owns; the maps are that user namespace's.
        join_by_path(spec, "user", &format!("/proc/{pid}/ns/user"));
        join_by_path(spec, "network", &format!("/proc/{pid}/ns/net"));
        let linux = spec["linux"].as_object_mut().unwrap();
        linux.remove("uidMappings");
        linux.remove("gidMappings");
        // A createRuntime hook (where an engine sets up networking) sees the container's
        // network namespace through its pid.
        spec["hooks"] = serde_json::json!({"createRuntime": [{
            "path": "/bin/sh",
            "args": ["sh", "-c", format!(
                "pid=$(sed 's/.*\"pid\": *\\([0-9]*\\).*/\\1/'); \
                 grep -o nookjoin0 /proc/$pid/net/dev > {}", seen.display())],
        }]});
    });
    let out = t.nook(&["run", "--bundle", &bundle, "joined"]);
    out.assert_ok();
    assert!(
        out.stdout.contains("nookjoin0"),
        "not the engine's network namespace: {out}"
    );
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap_or_default(),
        "nookjoin0\n",
        "the createRuntime hook did not see the namespace"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    t.assert_no_processes_left();
}

/// A process holding a user, pid and mount namespace of its own (`unshare -Upm --fork`), as an
/// engine's infra container would: returns unshare and the pid of the namespaces' init.
fn pid_and_mount_holder(t: &Nook) -> Option<(std::process::Child, u32)> {
    let unshare = common::required_tool("unshare", "util-linux")?;
    let holder = t
        .command_for(
            &unshare,
            &[
                "-Urpm".into(),
                "--fork".into(),
                "--kill-child".into(),
                "--mount-proc".into(),
                "sleep".into(),
                "120".into(),
            ],
            &[],
        )
        .spawn()
        .expect("unshare");
    let pid = holder.id();
    let mut init = 0;
    let ready = common::wait_until(Duration::from_secs(10), || {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        init = children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        init != 0
            && std::fs::read_to_string(format!("/proc/{init}/comm"))
                .is_ok_and(|c| c.trim() == "sleep")
    });
    assert!(ready, "the namespace holder did not start");
    Some((holder, init))
}

#[test]
fn an_oci_bundle_joins_pid_and_mount_namespaces_by_path_as_runc_does() {
    let Some(t) = Nook::new() else { return };
    let Some((mut holder, init)) = pid_and_mount_holder(&t) else {
        return;
    };
    let link = |n: &str| std::fs::read_link(format!("/proc/{init}/ns/{n}")).unwrap();
    let (their_pid, their_mnt) = (link("pid"), link("mnt"));
    let script = "readlink /proc/self/ns/pid; readlink /proc/self/ns/mnt; cat /proc/1/comm";
    for (name, kinds) in [("pid", &["pid"][..]), ("both", &["pid", "mount"][..])] {
        let bundle = oci_bundle(&t, name, &["sh", "-c", script], |spec| {
            join_by_path(spec, "user", &format!("/proc/{init}/ns/user"));
            for kind in kinds {
                let file = if *kind == "mount" { "mnt" } else { kind };
                join_by_path(spec, kind, &format!("/proc/{init}/ns/{file}"));
            }
            let linux = spec["linux"].as_object_mut().unwrap();
            linux.remove("uidMappings");
            linux.remove("gidMappings");
        });
        let out = t.nook(&["run", "--bundle", &bundle, name]);
        out.assert_ok();
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(
            lines.first().copied(),
            their_pid.to_str(),
            "not the holder's pid namespace: {out}"
        );
        // Its /proc is the joined namespace's: pid 1 there is the holder's init.
        assert_eq!(lines.get(2).copied(), Some("sleep"), "{out}");
        let same_mnt = lines.get(1).copied() == their_mnt.to_str();
        assert_eq!(same_mnt, kinds.contains(&"mount"), "mount namespace: {out}");
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    let gone = common::wait_until(Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{init}")).exists()
    });
    assert!(gone, "the holder's init outlived it");
    t.assert_no_processes_left();
}

#[test]
fn a_namespace_path_of_the_wrong_kind_or_not_a_namespace_is_refused_by_name() {
    let Some(t) = Nook::new() else { return };
    for (name, kind, path, reason) in [
        ("pidnet", "pid", "/proc/self/ns/net", "not a pid namespace"),
        (
            "mntnet",
            "mount",
            "/proc/self/ns/net",
            "not a mount namespace",
        ),
        ("pidfile", "pid", "/etc/hostname", "is not a namespace file"),
        (
            "mntfile",
            "mount",
            "/etc/hostname",
            "is not a namespace file",
        ),
    ] {
        let bundle = oci_bundle(&t, name, &["true"], |spec| {
            join_by_path(spec, kind, path);
        });
        let out = t.nook(&["run", "--bundle", &bundle, name]);
        assert_ne!(out.code, Some(0), "{out}");
        assert!(
            out.stderr.contains(path) && out.stderr.contains(reason),
            "{out}"
        );
        let listed = t.nook(&["list", "-q"]);
        assert_eq!(listed.stdout, "", "{listed}");
    }
    t.assert_no_processes_left();
}
