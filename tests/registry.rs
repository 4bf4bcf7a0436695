//! `nook pull`, `login`, `logout` and `run --pull` against registries on 127.0.0.1 that the
//! tests start: Debian's `docker-registry` (plain HTTP, TLS with a CA the test makes, htpasswd),
//! and tests/fixtures/fault-registry.py for the token flow and the faults a real registry does
//! not make on demand. Images are seeded with skopeo from what nook itself exports and from the
//! Debian fixture split into layers (tests/fixtures/oci-layers.sh).

mod common;

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{required_tool, Nook};
use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};

/// A server the test started; stopped (and reaped) when dropped, even when the test fails.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the server ended ({status}):\n{}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "the server does not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// For a pull of the whole Debian image (a debug build, on a shared machine).
const SLOW: Duration = Duration::from_secs(300);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Starts `docker-registry` with a config of its own (storage under the test's directory,
/// listening on 127.0.0.1 only); `extra` adds `http.tls` or `auth` settings.
fn docker_registry(t: &Nook, name: &str, http_extra: &str, extra: &str) -> Option<Server> {
    let program = required_tool("docker-registry", "docker-registry")?;
    let dir = t.dir.join(name);
    fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let config = dir.join("config.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{http_extra}{extra}",
            dir.join("store").display()
        ),
    )
    .unwrap();
    let log = dir.join("log");
    let child = Command::new(program)
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(dir.join("log.err")).unwrap())
        .spawn()
        .expect("start docker-registry");
    let mut server = Server { child, port, log };
    server.wait_listening();
    Some(server)
}

/// Starts tests/fixtures/fault-registry.py serving the image of `layout`.
fn fault_registry(t: &Nook, layout: &Path, outside: &Path) -> Option<Server> {
    required_tool("python3", "python3")?;
    let port_file = t.dir.join("fault-port");
    let log = t.dir.join("fault.log");
    let child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/fault-registry.py"
        ))
        .arg(&port_file)
        .arg(layout)
        .arg(outside)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("start fault-registry.py");
    let mut server = Server {
        child,
        port: 0,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !port_file.exists() {
        assert!(Instant::now() < deadline, "fault-registry.py wrote no port");
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!(
                "fault-registry.py ended ({status}):\n{}",
                fs::read_to_string(&server.log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    server.port = fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    server.wait_listening();
    Some(server)
}

/// Runs a host tool (skopeo, openssl, htpasswd, tar) as the test process; fails the test with
/// its output unless it succeeds.
#[track_caller]
fn host(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The busybox image as nook exports it: an OCI archive and the layout unpacked from it.
fn busybox_oci(t: &Nook) -> Option<(PathBuf, PathBuf)> {
    required_tool("skopeo", "skopeo")?;
    t.nook(&["import", "-q", t.image(), "bb"]).assert_ok();
    let archive = t.dir.join("bb.oci.tar");
    t.nook(&[
        "export",
        "--format",
        "oci",
        "-o",
        archive.to_str().unwrap(),
        "bb",
    ])
    .assert_ok();
    t.nook(&["rmi", "bb"]).assert_ok();
    let layout = t.dir.join("bb-layout");
    fs::create_dir_all(&layout).unwrap();
    host(
        "tar",
        &[
            "-xf",
            archive.to_str().unwrap(),
            "-C",
            layout.to_str().unwrap(),
        ],
    );
    Some((archive, layout))
}

/// The Debian fixture as an OCI layout of three layers (the last with a whiteout of
/// /etc/motd).
fn debian_layers(t: &Nook) -> Option<PathBuf> {
    let rootfs = common::debian_archive()?;
    let layout = t.dir.join("debian-layout");
    host(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/oci-layers.sh"),
        &[
            rootfs.to_str().unwrap(),
            layout.to_str().unwrap(),
            "bookworm",
            "./usr/share",
            "./var",
        ],
    );
    Some(layout)
}

/// `skopeo copy SRC docker://DEST`, as the test process (root), with extra options.
fn seed(src: &str, dest: &str, opts: &[&str]) {
    let dest = format!("docker://{dest}");
    let mut args = vec!["copy", "-q"];
    args.extend_from_slice(opts);
    args.extend_from_slice(&[src, &dest]);
    host("skopeo", &args);
}

/// Writes a file under the test user's home (owned by the user).
fn user_file(t: &Nook, rel: &str, text: &str) -> PathBuf {
    let path = t.home.join(rel);
    let mut dir = path.parent().unwrap().to_path_buf();
    fs::create_dir_all(&dir).unwrap();
    fs::write(&path, text).unwrap();
    t.give(&path);
    while dir != t.home {
        t.give(&dir);
        dir = dir.parent().unwrap().to_path_buf();
    }
    path
}

/// A registries.conf for the user that looks for short names at `host` (plain HTTP there).
fn search_only(t: &Nook, host: &str) {
    user_file(
        t,
        ".config/containers/registries.conf",
        &format!(
            "unqualified-search-registries = [\"{host}\"]\n\n[[registry]]\nlocation = \
             \"{host}\"\ninsecure = true\n"
        ),
    );
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The blob cache holds only blobs whose content matches their name, and partial downloads
/// (plus locks and the temporary file of a config being written, left by killed pulls).
#[track_caller]
fn assert_cache_clean(t: &Nook) {
    let dir = t.storage.join("blobs/sha256");
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".partial")
            || name.ends_with(".lock")
            || (name.starts_with('.') && name.contains(".tmp"))
        {
            continue;
        }
        assert_eq!(name.len(), 64, "unexpected file in the cache: {name}");
        let data = fs::read(entry.path()).unwrap();
        assert_eq!(
            sha256_hex(&data),
            name,
            "a cached blob does not match its name"
        );
    }
}

/// No image, whole or half, is in the store (a leftover of a cut-short pull is removed by the
/// next command that opens the store, which `images` is).
#[track_caller]
fn assert_no_images(t: &Nook) {
    let out = t.nook(&["images", "-q"]);
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "", "{out}");
    let left: Vec<_> = fs::read_dir(t.storage.join("images"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the image store: {left:?}");
}

fn partials(t: &Nook) -> Vec<PathBuf> {
    fs::read_dir(t.storage.join("blobs/sha256"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "partial"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pull_of_a_short_name_applies_every_layer_and_runs() {
    let Some(t) = Nook::new() else { return };
    let Some(layout) = debian_layers(&t) else {
        return;
    };
    let Some((bb_archive, _)) = busybox_oci(&t) else {
        return;
    };
    let Some(reg) = docker_registry(&t, "plain", "", "") else {
        return;
    };
    let host = reg.host();
    seed(
        &format!("oci:{}:bookworm", layout.display()),
        &format!("{host}/debian:bookworm"),
        &["--dest-tls-verify=false"],
    );
    seed(
        &format!("oci-archive:{}", bb_archive.display()),
        &format!("{host}/tools/busybox:1"),
        &["--dest-tls-verify=false"],
    );
    search_only(&t, &host);

    // A short name, resolved through the user's registries.conf; three gzip layers.
    let out = t.cmd(&["pull", "debian:bookworm"]).timeout(SLOW).run();
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "debian:bookworm", "{out}");
    assert!(
        out.stderr
            .contains(&format!("pulled {host}/debian:bookworm"))
            && out.stderr.contains("3 layer(s)"),
        "{out}"
    );
    let out = t.nook(&[
        "run",
        "--rm",
        "debian:bookworm",
        "sh",
        "-c",
        "grep PRETTY_NAME /etc/os-release; test -e /etc/motd && echo motd; ls /usr/share/doc | \
         grep -c . ; echo $FROM_REGISTRY",
    ]);
    out.assert_ok();
    let lines = out.lines();
    assert_eq!(
        lines[0], "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"",
        "{out}"
    );
    // The last layer's whiteout removed /etc/motd of the first; /usr/share came in layer 2.
    assert_ne!(lines[1], "motd", "{out}");
    assert!(lines[1].parse::<u32>().unwrap() > 10, "{out}");
    assert_eq!(lines[2], "yes", "the image config's Env: {out}");

    // The image records where it came from; --digests and inspect show the registry's digest.
    let digest = serde_json::from_str::<serde_json::Value>(&host_out(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{host}/debian:bookworm"),
        ],
    ))
    .unwrap()["Digest"]
        .as_str()
        .unwrap()
        .to_string();
    let out = t.nook(&["images", "--digests"]);
    assert!(out.stdout.contains(&digest), "{out}");
    let out = t.nook(&["inspect", "debian:bookworm"]);
    out.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let meta = &v[0]["Meta"];
    assert_eq!(meta["digest"].as_str(), Some(digest.as_str()), "{out}");
    assert_eq!(
        meta["reference"].as_str(),
        Some(format!("{host}/debian:bookworm").as_str())
    );
    assert!(fs::metadata(t.storage.join("blobs/oci-layout")).is_ok());
    assert_cache_clean(&t);

    // Again: nothing to do. By digest under another name: every blob comes from the cache
    // (JSON events say so).
    let out = t.nook(&["pull", "debian:bookworm"]);
    out.assert_ok();
    assert!(out.stderr.contains("up to date"), "{out}");
    let by_digest = format!("{host}/debian@{digest}");
    let out = t
        .cmd(&["pull", "--format", "json", "--name", "deb2", &by_digest])
        .timeout(SLOW)
        .run();
    out.assert_ok();
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cached = events
        .iter()
        .filter(|e| e["event"] == "layer" && e["status"] == "cached")
        .count();
    assert_eq!(cached, 3, "{out}");
    assert_eq!(events.last().unwrap()["event"], "done", "{out}");
    assert_eq!(
        events.last().unwrap()["digest"].as_str(),
        Some(digest.as_str())
    );

    // `run` pulls what it lacks (a qualified reference, by its local name busybox:1) unless
    // told never to; a name that is there runs without a registry.
    let remote = format!("{host}/tools/busybox:1");
    let out = t.nook(&["run", "--rm", "--pull", "never", &remote, "true"]);
    assert_ne!(out.code, Some(0), "{out}");
    let out = t.nook(&["run", "--rm", &remote, "echo", "ran"]);
    out.assert_ok();
    assert!(
        out.stdout.contains("ran") && out.stderr.contains("pulled"),
        "{out}"
    );
    let out = t.nook(&["run", "--rm", "busybox:1", "true"]);
    out.assert_ok();
    assert!(!out.stderr.contains("pulled"), "{out}");
    let out = t.nook(&["run", "--rm", "--pull", "always", &remote, "true"]);
    out.assert_ok();
    assert!(out.stderr.contains("up to date"), "{out}");
}

fn host_out(program: &str, args: &[&str]) -> String {
    host(program, args)
}

#[test]
fn tls_is_verified_against_the_users_certs_d() {
    let Some(t) = Nook::new() else { return };
    let Some((archive, _)) = busybox_oci(&t) else {
        return;
    };
    required_tool("openssl", "openssl");
    let pki = t.dir.join("pki");
    fs::create_dir_all(&pki).unwrap();
    let p = |n: &str| pki.join(n).to_str().unwrap().to_string();
    host(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=nook test CA",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.crt"),
        ],
    );
    fs::write(
        pki.join("ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    host(
        "openssl",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
        ],
    );
    host(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p("server.csr"),
            "-CA",
            &p("ca.crt"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p("ext"),
            "-out",
            &p("server.crt"),
        ],
    );
    let tls = format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        p("server.crt"),
        p("server.key")
    );
    let Some(reg) = docker_registry(&t, "tls", &tls, "") else {
        return;
    };
    let certs = t.dir.join("skopeo-certs");
    fs::create_dir_all(&certs).unwrap();
    fs::copy(pki.join("ca.crt"), certs.join("ca.crt")).unwrap();
    seed(
        &format!("oci-archive:{}", archive.display()),
        &format!("{}/bb:1", reg.host()),
        &["--dest-cert-dir", certs.to_str().unwrap()],
    );
    let reference = format!("{}/bb:1", reg.host());

    // Without the CA: refused, naming the registry and the certificate problem.
    let out = t.nook(&["pull", &reference]);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(
        out.stderr.contains(&reg.host()) && out.stderr.to_lowercase().contains("certificate"),
        "{out}"
    );
    assert_no_images(&t);

    // With it in ~/.config/containers/certs.d/HOST:PORT/: verified. `localhost:PORT` resolves
    // in the static binary and has its own certs.d entry.
    let ca = fs::read_to_string(pki.join("ca.crt")).unwrap();
    user_file(
        &t,
        &format!(".config/containers/certs.d/{}/ca.crt", reg.host()),
        &ca,
    );
    t.nook(&["pull", &reference]).assert_ok();
    user_file(
        &t,
        &format!(".config/containers/certs.d/localhost:{}/ca.crt", reg.port),
        &ca,
    );
    let out = t.nook(&[
        "pull",
        "--name",
        "bb-localhost",
        &format!("localhost:{}/bb:1", reg.port),
    ]);
    out.assert_ok();
    t.nook(&["run", "--rm", "bb-localhost", "true"]).assert_ok();
}

#[test]
fn login_checks_the_password_and_keeps_it_private() {
    let Some(t) = Nook::new() else { return };
    let Some((archive, _)) = busybox_oci(&t) else {
        return;
    };
    let Some(htpasswd) = required_tool("htpasswd", "apache2-utils") else {
        return;
    };
    let users = t.dir.join("users.htpasswd");
    host(
        htpasswd.to_str().unwrap(),
        &["-Bbc", users.to_str().unwrap(), "alice", "s3cret"],
    );
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: nook-test\n    path: {}\n",
        users.display()
    );
    let Some(reg) = docker_registry(&t, "htpasswd", "", &auth) else {
        return;
    };
    let host_port = reg.host();
    seed(
        &format!("oci-archive:{}", archive.display()),
        &format!("{host_port}/private/bb:1"),
        &["--dest-tls-verify=false", "--dest-creds", "alice:s3cret"],
    );
    let reference = format!("{host_port}/private/bb:1");
    search_only(&t, &host_port);

    let out = t.nook(&["pull", &reference]);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(
        out.stderr.contains(&format!("nook login {host_port}")),
        "{out}"
    );

    // A wrong password is refused by the registry, and nothing is saved.
    let auth_file = t.runtime.join("containers/auth.json");
    let out = t
        .cmd(&["login", "-u", "alice", "--password-stdin", &host_port])
        .stdin(b"wrong\n")
        .run();
    assert_ne!(out.code, Some(0), "{out}");
    assert!(
        out.stderr.contains(&host_port) && out.stderr.contains("alice"),
        "{out}"
    );
    assert!(!auth_file.exists());

    let out = t
        .cmd(&["login", "-u", "alice", "--password-stdin", &host_port])
        .stdin(b"s3cret\n")
        .run();
    out.assert_ok();
    let mode = fs::metadata(&auth_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "auth.json must be private");
    let saved: serde_json::Value = serde_json::from_slice(&fs::read(&auth_file).unwrap()).unwrap();
    assert!(saved["auths"][&host_port]["auth"].is_string(), "{saved}");
    // skopeo reads what nook wrote.
    let inspected = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--authfile"])
        .arg(&auth_file)
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(inspected.status.success(), "skopeo with nook's auth file");

    t.nook(&["pull", &reference]).assert_ok();
    t.nook(&["run", "--rm", "bb:1", "true"]).assert_ok();

    let out = t.nook(&["logout", &host_port]);
    out.assert_ok();
    let saved: serde_json::Value = serde_json::from_slice(&fs::read(&auth_file).unwrap()).unwrap();
    assert!(saved["auths"].get(&host_port).is_none(), "{saved}");
    let out = t.nook(&["logout", &host_port]);
    assert_ne!(out.code, Some(0), "{out}");
    t.nook(&["rmi", "bb:1"]).assert_ok();
    let out = t.nook(&["pull", &reference]);
    assert_ne!(out.code, Some(0), "after logout: {out}");

    // Credentials in ~/.docker/config.json are read too.
    user_file(
        &t,
        ".docker/config.json",
        &format!("{{\"auths\":{{\"{host_port}\":{{\"auth\":\"YWxpY2U6czNjcmV0\"}}}}}}"),
    );
    t.nook(&["pull", &reference]).assert_ok();
}

#[test]
fn bearer_tokens_are_fetched_anonymously_or_with_credentials() {
    let Some(t) = Nook::new() else { return };
    let Some((_, layout)) = busybox_oci(&t) else {
        return;
    };
    let Some(reg) = fault_registry(&t, &layout, &t.dir.join("outside/x")) else {
        return;
    };
    let reference = format!("{}/token/bb:1", reg.host());
    let out = t.nook(&["pull", "--tls-verify=false", &reference]);
    out.assert_ok();
    t.nook(&["rmi", "bb:1"]).assert_ok();
    // The token service refuses wrong credentials: the error names them and where they came
    // from.
    let file = user_file(
        &t,
        "auth.json",
        &format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"dXNlcjp3cm9uZw==\"}}}}}}",
            reg.host()
        ),
    );
    let file = file.to_str().unwrap();
    let out = t
        .cmd(&["pull", "--tls-verify=false", &reference])
        .env("REGISTRY_AUTH_FILE", file)
        .run();
    assert_ne!(out.code, Some(0), "{out}");
    assert!(
        out.stderr.contains("refused") && out.stderr.contains("user") && out.stderr.contains(file),
        "{out}"
    );
    assert_no_images(&t);
    user_file(
        &t,
        "auth.json",
        &format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"dXNlcjpzZWNyZXQ=\"}}}}}}",
            reg.host()
        ),
    );
    let out = t
        .cmd(&["pull", "-q", "--tls-verify=false", &reference])
        .env("REGISTRY_AUTH_FILE", file)
        .run();
    out.assert_ok();
    assert_eq!(out.stdout, "bb:1\n", "-q prints only the name: {out}");
    assert_eq!(out.stderr, "", "-q prints only the name: {out}");
}

#[test]
fn faults_are_refused_naming_the_reference_and_leave_nothing() {
    let Some(t) = Nook::new() else { return };
    let Some((_, layout)) = busybox_oci(&t) else {
        return;
    };
    let outside = t.dir.join("outside/pwned");
    fs::create_dir_all(outside.parent().unwrap()).unwrap();
    fs::set_permissions(outside.parent().unwrap(), fs::Permissions::from_mode(0o777)).unwrap();
    let Some(reg) = fault_registry(&t, &layout, &outside) else {
        return;
    };
    let h = reg.host();
    for (repo, cause) in [
        ("schema1/x", "schema 1"),
        ("noauth/x", "without a WWW-Authenticate challenge"),
        (
            "noplatform/x",
            "has no image for linux/amd64; it has: linux/s390x, linux/arm64/v8",
        ),
        ("badblob/x", "does not match its digest"),
        ("bigblob/x", "more than the"),
        ("dotdot/x", "../escape"),
        ("missing-tag/x:nope", "not found"),
    ] {
        let reference = format!("{h}/{repo}");
        let out = t.nook(&["pull", "--tls-verify=false", &reference]);
        assert_ne!(out.code, Some(0), "{repo}: {out}");
        assert!(
            out.stderr.contains(&h) && out.stderr.contains(cause),
            "{repo}: expected {cause:?}\n{out}"
        );
        assert_no_images(&t);
        assert_cache_clean(&t);
        assert!(
            partials(&t).is_empty(),
            "{repo}: a bad download is not kept"
        );
    }
    // --platform picks from the list; the image it names must be of that platform too.
    let out = t.nook(&[
        "pull",
        "--tls-verify=false",
        "--platform",
        "linux/arm64",
        &format!("{h}/noplatform/x"),
    ]);
    assert!(
        out.stderr
            .contains("the image is for linux/amd64, not linux/arm64"),
        "{out}"
    );
    // An absolute symlink resolves inside the image: the file lands there, not on the host.
    let out = t.nook(&["pull", "--tls-verify=false", &format!("{h}/abslink/x")]);
    assert!(!outside.exists(), "a layer wrote outside the image: {out}");
    if out.code == Some(0) {
        t.nook(&["rmi", "x:latest"]).assert_ok();
    }
}

#[test]
fn a_registry_that_dies_or_stalls_mid_blob_is_resumed_by_the_next_pull() {
    let Some(t) = Nook::new() else { return };
    let Some((_, layout)) = busybox_oci(&t) else {
        return;
    };
    let Some(reg) = fault_registry(&t, &layout, &t.dir.join("outside/x")) else {
        return;
    };
    let h = reg.host();
    let out = t.nook(&["pull", "--tls-verify=false", &format!("{h}/dies/bb")]);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("resume"), "{out}");
    assert_no_images(&t);
    let part = partials(&t);
    assert_eq!(part.len(), 1, "the half blob is kept");
    let half = fs::metadata(&part[0]).unwrap().len();
    assert!(half > 0);
    // The next pull asks for the rest (Range), hashes the part it has, and completes.
    let out = t.nook(&["pull", "--tls-verify=false", &format!("{h}/dies/bb")]);
    out.assert_ok();
    assert!(partials(&t).is_empty());
    assert_cache_clean(&t);
    t.nook(&["run", "--rm", "bb:latest", "true"]).assert_ok();
    t.nook(&["rmi", "bb:latest"]).assert_ok();
    t.nook(&["image", "prune"]).assert_ok();

    // A registry that goes silent: the pull gives up after registry_timeout, and a pull from
    // a working source resumes the same blob.
    user_file(&t, ".config/nook/nook.conf", "registry_timeout = \"2s\"\n");
    let started = Instant::now();
    let out = t.nook(&["pull", "--tls-verify=false", &format!("{h}/stall/bb")]);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(started.elapsed() < Duration::from_secs(20), "{out}");
    assert!(out.stderr.contains("stall/bb"), "{out}");
    assert_eq!(partials(&t).len(), 1, "{out}");
    t.nook(&["pull", "--tls-verify=false", &format!("{h}/ok/bb")])
        .assert_ok();
    assert!(partials(&t).is_empty());
    assert_cache_clean(&t);
}

#[test]
fn sigkill_at_any_moment_leaves_no_half_image_and_the_next_pull_completes() {
    let Some(t) = Nook::new() else { return };
    let Some((_, layout)) = busybox_oci(&t) else {
        return;
    };
    let Some(reg) = fault_registry(&t, &layout, &t.dir.join("outside/x")) else {
        return;
    };
    let reference = format!("{}/slow/bb", reg.host());
    // A fixed seed: a failure can be replayed.
    let mut seed: u64 = 0x6e6f6f6b;
    let mut kills = 0;
    let mut completed = 0;
    while kills < 40 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis((seed >> 33) % 1500);
        let running = t
            .cmd(&["pull", "-q", "--tls-verify=false", &reference])
            .spawn();
        std::thread::sleep(delay);
        running.signal(Signal::SIGKILL);
        let out = running.wait();
        if out.code == Some(0) {
            // It finished first: start over from nothing.
            completed += 1;
            t.nook(&["rmi", "bb:latest"]).assert_ok();
            t.nook(&["image", "prune"]).assert_ok();
            continue;
        }
        assert_eq!(out.signal, Some(9), "delay {delay:?}: {out}");
        kills += 1;
        assert_no_images(&t);
        assert_cache_clean(&t);
    }
    let out = t.nook(&["pull", "--tls-verify=false", &reference]);
    out.assert_ok();
    assert_cache_clean(&t);
    assert!(partials(&t).is_empty());
    t.nook(&["run", "--rm", "bb:latest", "true"]).assert_ok();
    eprintln!("{kills} kills, {completed} pulls finished before their kill");
}

/// podman, run as the test user with its storage in the test directory (vfs, as configured
/// for the tests of images).
fn podman(t: &Nook, args: &[&str]) -> std::process::Output {
    let r = t.runner();
    let mut cmd = Command::new("podman");
    cmd.arg("--root")
        .arg(t.dir.join("podman"))
        .arg("--runroot")
        .arg(podman_runroot())
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager=cgroupfs",
            "--events-backend=file",
        ])
        .args(args)
        .env_clear()
        .env("HOME", &t.home)
        .env("XDG_RUNTIME_DIR", &t.runtime)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .current_dir(&t.dir);
    if r.switch {
        use std::os::unix::process::CommandExt;
        cmd.uid(r.uid).gid(r.gid);
    }
    cmd.output().expect("run podman")
}

/// podman wants its runroot path short: one per test process.
fn podman_runroot() -> PathBuf {
    PathBuf::from(format!("/tmp/nook-podman-r{}", std::process::id()))
}

/// Ends the pause process podman leaves holding its user namespace, and its runroot.
fn end_podman(t: &Nook) {
    let pause = t.runtime.join("libpod/tmp/pause.pid");
    if let Some(pid) = fs::read_to_string(pause)
        .ok()
        .and_then(|p| p.trim().parse().ok())
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    common::force_remove(&podman_runroot());
}

#[test]
fn what_nook_pushes_podman_skopeo_and_nook_pull_and_run() {
    let Some(t) = Nook::new() else { return };
    required_tool("skopeo", "skopeo");
    let Some(_) = required_tool("podman", "podman") else {
        return;
    };
    let Some(reg) = docker_registry(&t, "push", "", "") else {
        return;
    };
    let h = reg.host();
    search_only(&t, &h);
    t.nook(&["import", "-q", t.image(), "bb"]).assert_ok();
    // More than one chunk (16 MiB): the layer goes up in PATCHes.
    t.nook(&[
        "run",
        "--name",
        "maker",
        "bb",
        "sh",
        "-c",
        "echo pushed by nook > /hello; head -c 20000000 /dev/urandom > /big",
    ])
    .assert_ok();
    t.nook(&[
        "commit",
        "-q",
        "--change",
        "CMD [\"cat\", \"/hello\"]",
        "maker",
        "mine",
    ])
    .assert_ok();
    t.nook(&["rm", "maker"]).assert_ok();

    let out = t.nook(&["push", "mine", &format!("{h}/team/mine:1")]);
    out.assert_ok();
    let digest = out.stdout.trim().to_string();
    assert!(digest.starts_with("sha256:"), "{out}");
    assert_eq!(
        out.stderr.matches(": uploaded").count(),
        2,
        "layer and config: {out}"
    );
    // To another repository of the registry: the blobs are mounted, not sent again; to the
    // same one: they are there.
    let out = t.nook(&["push", "mine", &format!("{h}/other/mine:2")]);
    out.assert_ok();
    assert_eq!(out.stderr.matches(": mounted").count(), 2, "{out}");
    let out = t.nook(&["push", "mine", &format!("{h}/team/mine:1")]);
    out.assert_ok();
    assert_eq!(out.stderr.matches(": exists").count(), 2, "{out}");

    let inspected: serde_json::Value = serde_json::from_str(&host(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{h}/team/mine:1"),
        ],
    ))
    .unwrap();
    assert_eq!(inspected["Digest"].as_str(), Some(digest.as_str()));
    let copy = t.dir.join("skopeo-copy");
    host(
        "skopeo",
        &[
            "copy",
            "-q",
            "--src-tls-verify=false",
            &format!("docker://{h}/other/mine:2"),
            &format!("oci:{}:x", copy.display()),
        ],
    );
    t.give(&copy);
    t.nook(&["import", "-q", copy.to_str().unwrap(), "via-skopeo"])
        .assert_ok();
    t.nook(&["run", "--rm", "via-skopeo"])
        .assert_ok()
        .assert_stdout("pushed by nook\n");

    let pulled = podman(
        &t,
        &[
            "pull",
            "-q",
            "--tls-verify=false",
            &format!("{h}/team/mine:1"),
        ],
    );
    let ran = pulled.status.success().then(|| {
        podman(
            &t,
            &[
                "run",
                "--rm",
                "--pid",
                "host",
                "--network",
                "none",
                &format!("{h}/team/mine:1"),
            ],
        )
    });
    end_podman(&t);
    assert!(
        pulled.status.success(),
        "podman pull: {}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let ran = ran.expect("ran");
    assert!(
        ran.status.success(),
        "podman run: {}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "pushed by nook\n");

    t.nook(&["pull", "--name", "back", "team/mine:1"])
        .assert_ok();
    t.nook(&["run", "--rm", "back"])
        .assert_ok()
        .assert_stdout("pushed by nook\n");
}
