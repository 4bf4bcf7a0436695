//! Private networks (`--network private`/`pasta`, `-p`): traffic only on 127.0.0.0/8.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
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

/// pasta processes of any user whose target is `pid`.
fn pastas_for(pid: i64) -> Vec<i32> {
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
        if args.first().is_some_and(|a| a.ends_with("pasta"))
            && args.last() == Some(&pid.to_string())
        {
            found.push(p);
        }
    }
    found
}

fn wait_gone(pid: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pastas_for(pid).is_empty() {
        assert!(Instant::now() < deadline, "pasta for {pid} is left behind");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn has_pasta() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("pasta").is_file()))
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
    assert_eq!(pastas_for(pid).len(), 1, "one pasta per container");
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
fn publish_without_host_port_picks_one_and_prints_it() {
    let Some(t) = Nook::new() else { return };
    if !has_pasta() {
        return;
    }
    let image = web_image(&t, "web", "picked\n");
    let out = start_web(&t, "web", &image, "127.0.0.1::80");
    out.assert_ok();
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("nook: published 80/tcp -> 127.0.0.1:"))
        .unwrap_or_else(|| panic!("no port printed: {out}"));
    let port: u16 = line.rsplit(':').next().unwrap().parse().unwrap();
    assert!(http_get(port).contains("picked"));
    t.nook(&["rm", "-f", "web"]).assert_ok();
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
    assert_eq!(pastas_for(pid).len(), 1);
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
