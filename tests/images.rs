//! Images without layer management: import of tarballs (any compression), OCI image layouts and
//! `docker save` archives flattened into one directory; the image config applied by `run`;
//! `images`, `commit`, `diff`, `export`; and archives built to break out, each refused or
//! confined.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{debian_archive, diff, tree_listing, Nook, Out};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------
// Building archives.
// ---------------------------------------------------------------------------

/// One archive entry as the tests describe it.
#[derive(Clone)]
enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    /// A file with owner ids.
    Owned(&'a str, u64, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Fifo(&'a str),
    /// A file carrying the xattr `key` = value.
    WithXattr(&'a str, &'a str, &'a [u8]),
    /// A name written raw into the header (the tar crate refuses to make `..` or absolute
    /// paths), as a regular file.
    RawFile(&'a [u8], &'a [u8]),
    /// A raw name, as a symlink to the target.
    RawSymlink(&'a [u8], &'a str),
    /// A raw name, as a hard link to the target.
    RawHardlink(&'a str, &'a [u8]),
}

const MTIME: u64 = 1_600_000_000;

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn set_raw_name(h: &mut tar::Header, name: &[u8]) {
    let gnu = h.as_gnu_mut().expect("gnu header");
    gnu.name = [0; 100];
    gnu.name[..name.len()].copy_from_slice(name);
}

fn set_raw_link(h: &mut tar::Header, target: &[u8]) {
    let gnu = h.as_gnu_mut().expect("gnu header");
    gnu.linkname = [0; 100];
    gnu.linkname[..target.len()].copy_from_slice(target);
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

/// A tar stream of `entries`.
fn tar_bytes(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match *e {
            E::Dir(p, mode) => {
                let mut h = header(tar::EntryType::Directory, mode, 0);
                b.append_data(&mut h, p, &b""[..]).unwrap();
            }
            E::File(p, mode, data) => {
                let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
                b.append_data(&mut h, p, data).unwrap();
            }
            E::Owned(p, id, data) => {
                let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
                h.set_uid(id);
                h.set_gid(id);
                b.append_data(&mut h, p, data).unwrap();
            }
            E::Symlink(p, target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Hardlink(p, target) => {
                let mut h = header(tar::EntryType::Link, 0o644, 0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Fifo(p) => {
                let mut h = header(tar::EntryType::Fifo, 0o640, 0);
                b.append_data(&mut h, p, &b""[..]).unwrap();
            }
            E::WithXattr(p, key, value) => {
                let rec = pax_record(&format!("SCHILY.xattr.{key}"), value);
                let mut x = header(tar::EntryType::XHeader, 0o644, rec.len() as u64);
                x.set_path("PaxHeaders/x").unwrap();
                x.set_cksum();
                b.append(&x, &rec[..]).unwrap();
                let mut h = header(tar::EntryType::Regular, 0o644, 1);
                b.append_data(&mut h, p, &b"x"[..]).unwrap();
            }
            E::RawFile(name, data) => {
                let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
                set_raw_name(&mut h, name);
                h.set_cksum();
                b.append(&h, data).unwrap();
            }
            E::RawSymlink(name, target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                set_raw_name(&mut h, name);
                set_raw_link(&mut h, target.as_bytes());
                h.set_cksum();
                b.append(&h, &b""[..]).unwrap();
            }
            E::RawHardlink(name, target) => {
                let mut h = header(tar::EntryType::Link, 0o644, 0);
                set_raw_name(&mut h, name.as_bytes());
                set_raw_link(&mut h, target);
                h.set_cksum();
                b.append(&h, &b""[..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn sha256(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    format!(
        "sha256:{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An OCI image layout under construction: blobs by digest, then a manifest and an index.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn new(dir: PathBuf) -> Layout {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout { dir }
    }

    /// Stores a blob; returns its descriptor.
    fn blob(&self, media_type: &str, data: &[u8]) -> serde_json::Value {
        let digest = sha256(data);
        fs::write(
            self.dir
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
            data,
        )
        .unwrap();
        serde_json::json!({"mediaType": media_type, "digest": digest, "size": data.len()})
    }

    fn manifest(
        &self,
        config: &serde_json::Value,
        layers: &[serde_json::Value],
    ) -> serde_json::Value {
        let config = self.blob(
            "application/vnd.oci.image.config.v1+json",
            &serde_json::to_vec(config).unwrap(),
        );
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers,
        });
        self.blob(
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&manifest).unwrap(),
        )
    }

    fn index(&self, manifests: &[serde_json::Value]) {
        let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}

fn with_platform(mut desc: serde_json::Value, arch: &str) -> serde_json::Value {
    desc["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
    desc
}

fn image_config(run: serde_json::Value, layers: &[&[u8]]) -> serde_json::Value {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": run,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
}

/// A tar archive of the directory `dir` (its contents at the top).
fn tar_dir(dir: &Path, dest: &Path) {
    let mut b = tar::Builder::new(fs::File::create(dest).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

// ---------------------------------------------------------------------------
// Observing results.
// ---------------------------------------------------------------------------

fn rootfs(t: &Nook, name: &str) -> PathBuf {
    t.storage.join("images").join(name).join("rootfs")
}

/// Entries of `$NOOK_STORAGE/images` (hidden ones included): what an import left there.
fn store_entries(t: &Nook) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(t.storage.join("images"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn import(t: &Nook, source: &Path, name: &str) -> Out {
    t.give(source);
    t.nook(&["import", source.to_str().unwrap(), name])
}

/// The busybox binary of the fixture, to give test images a shell.
fn busybox(t: &Nook) -> Vec<u8> {
    fs::read(Path::new(t.image()).join("bin/busybox")).expect("fixture busybox")
}

fn first_subuid(t: &Nook) -> Option<u32> {
    let sub = t.runner().subuids.first().map(|r| r.0);
    if sub.is_none() {
        let reason = "the runner has no subordinate id range (scripts/test.sh adds one)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("prerequisite missing under CI=true: {reason}");
        }
        eprintln!("SKIPPED: {reason}");
    }
    sub
}

// ---------------------------------------------------------------------------
// Import.
// ---------------------------------------------------------------------------

#[test]
fn tarballs_are_recognised_by_their_bytes_and_keep_every_kind_of_entry() {
    let Some(t) = Nook::new() else { return };
    let tar = tar_bytes(&[
        E::Dir("etc/", 0o755),
        E::File("etc/motd", 0o644, b"welcome\n"),
        E::File("bin/su", 0o4755, b"#!setuid\n"),
        E::Dir("locked/", 0o500),
        E::File("locked/inside", 0o400, b"ro\n"),
        E::Symlink("etc/link", "motd"),
        E::Hardlink("etc/motd.hard", "etc/motd"),
        E::Fifo("run.fifo"),
        E::WithXattr("tagged", "user.nook.test", b"hello"),
    ]);
    // Names that lie about the compression: only the bytes count.
    let cases: [(&str, Vec<u8>); 4] = [
        ("plain.tar.gz", tar.clone()),
        ("gzip.tar", gzip(&tar)),
        ("zstd.tar.xz", zstd(&tar)),
        ("xz.tgz", xz(&tar)),
    ];
    for (i, (file, bytes)) in cases.iter().enumerate() {
        let path = t.dir.join(file);
        fs::write(&path, bytes).unwrap();
        let name = format!("img{i}");
        let out = import(&t, &path, &name);
        out.assert_ok().assert_stdout(&name);
        assert_eq!(
            out.stderr, "",
            "an import in a pipe prints nothing else\n{out}"
        );
        let root = rootfs(&t, &name);
        assert_eq!(
            fs::read(root.join("etc/motd")).unwrap(),
            b"welcome\n",
            "{file}"
        );
        let su = fs::metadata(root.join("bin/su")).unwrap();
        assert_eq!(su.mode() & 0o7777, 0o4755, "{file}: setuid bit kept");
        assert_eq!(su.mtime(), MTIME as i64, "{file}: time kept");
        assert_eq!(
            su.uid(),
            t.runner().uid,
            "{file}: root's files are the caller's"
        );
        assert_eq!(
            fs::metadata(root.join("locked")).unwrap().mode() & 0o7777,
            0o500
        );
        assert_eq!(
            fs::metadata(root.join("locked")).unwrap().mtime(),
            MTIME as i64,
            "{file}: directory times are set after their entries"
        );
        assert_eq!(
            fs::read_link(root.join("etc/link")).unwrap(),
            Path::new("motd")
        );
        assert_eq!(
            fs::metadata(root.join("etc/motd")).unwrap().ino(),
            fs::metadata(root.join("etc/motd.hard")).unwrap().ino(),
            "{file}: hard link kept"
        );
        assert!(fs::symlink_metadata(root.join("run.fifo"))
            .unwrap()
            .file_type()
            .is_fifo_type());
        let xattr = xattr_of(&root.join("tagged"), "user.nook.test");
        assert_eq!(xattr.as_deref(), Some(&b"hello"[..]), "{file}: xattr kept");
    }
    // And from stdin, compressed.
    let out = t.cmd(&["import", "-", "piped"]).stdin(&zstd(&tar)).run();
    out.assert_ok();
    assert_eq!(
        fs::read(rootfs(&t, "piped").join("etc/motd")).unwrap(),
        b"welcome\n"
    );
    // What a user namespace may not set is left out, and said so.
    let path = t.dir.join("trusted.tar");
    fs::write(
        &path,
        tar_bytes(&[E::WithXattr("f", "trusted.nook.test", b"x")]),
    )
    .unwrap();
    let out = import(&t, &path, "trusted");
    out.assert_ok();
    assert!(
        out.stderr.contains("left out 1 extended attribute"),
        "{out}"
    );
    let listing = t.nook(&["images", "--format", "json"]);
    listing.assert_ok();
    let images: serde_json::Value = serde_json::from_str(&listing.stdout).unwrap();
    let piped = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "piped")
        .expect("piped listed");
    assert_eq!(piped["source"], "-");
    assert!(piped["size"].as_u64().unwrap() >= 8, "{piped}");
    assert!(common::is_rfc3339(piped["created"].as_str().unwrap()));
}

trait FifoType {
    fn is_fifo_type(&self) -> bool;
}

impl FifoType for fs::FileType {
    fn is_fifo_type(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_fifo(self)
    }
}

fn xattr_of(path: &Path, name: &str) -> Option<Vec<u8>> {
    nook::sys::xattrs(path)
        .expect("read xattrs")
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// A three-layer OCI image: busybox and files in a gzip layer; a zstd layer that whites out a
/// file and makes a directory opaque; an uncompressed layer that replaces a directory with a
/// file and adds links. Its config sets every field `run` applies.
fn three_layer_layout(t: &Nook, dir: &Path) -> Layout {
    let bb = busybox(t);
    let l1 = tar_bytes(&[
        E::Dir("bin/", 0o755),
        E::File("bin/busybox", 0o755, &bb),
        E::Symlink("bin/sh", "busybox"),
        E::Dir("a/", 0o755),
        E::File("a/keep", 0o644, b"keep"),
        E::File("a/gone", 0o644, b"gone"),
        E::Dir("b/", 0o755),
        E::File("b/old", 0o644, b"old"),
        E::Dir("c/", 0o755),
        E::File("c/inside", 0o644, b"c"),
        E::Dir("srv/", 0o755),
        E::Owned("srv/owned", 1000, b"mine"),
    ]);
    let l2 = tar_bytes(&[
        E::File("a/.wh.gone", 0o644, b""),
        E::Dir("b/", 0o755),
        E::File("b/.wh..wh..opq", 0o644, b""),
        E::File("b/new", 0o644, b"new"),
    ]);
    let l3 = tar_bytes(&[
        E::File("c", 0o644, b"c is a file now"),
        E::Hardlink("a/keep.link", "a/keep"),
        E::Symlink("a/abs", "/a/keep"),
    ]);
    let layout = Layout::new(dir.to_path_buf());
    let layers = [
        layout.blob("application/vnd.oci.image.layer.v1.tar+gzip", &gzip(&l1)),
        layout.blob("application/vnd.oci.image.layer.v1.tar+zstd", &zstd(&l2)),
        layout.blob("application/vnd.oci.image.layer.v1.tar", &l3),
    ];
    let config = image_config(
        serde_json::json!({
            "Env": ["PATH=/bin", "GREETING=hello"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo $GREETING from $(pwd) as $(id -u)"],
            "WorkingDir": "/srv",
            "User": "1000",
            "Labels": {"org.example.kind": "test"},
        }),
        &[&l1, &l2, &l3],
    );
    let manifest = layout.manifest(&config, &layers);
    // Another platform first: it must be passed over (its manifest does not even exist).
    let other = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", "0".repeat(64)),
        "size": 1,
        "platform": {"os": "linux", "architecture": "s390x-not-this"},
    });
    layout.index(&[other, with_platform(manifest, oci_arch())]);
    layout
}

fn assert_three_layers_flattened(root: &Path) {
    assert_eq!(fs::read(root.join("a/keep")).unwrap(), b"keep");
    assert!(!root.join("a/gone").exists(), "whiteout applied");
    assert!(!root.join("a/.wh.gone").exists(), "whiteouts are not files");
    assert!(
        !root.join("b/old").exists(),
        "opaque directory hides the lower layer"
    );
    assert_eq!(fs::read(root.join("b/new")).unwrap(), b"new");
    assert!(!root.join("b/.wh..wh..opq").exists());
    assert_eq!(fs::read(root.join("c")).unwrap(), b"c is a file now");
    assert_eq!(
        fs::metadata(root.join("a/keep")).unwrap().ino(),
        fs::metadata(root.join("a/keep.link")).unwrap().ino()
    );
    assert_eq!(
        fs::read_link(root.join("a/abs")).unwrap(),
        Path::new("/a/keep")
    );
}

#[test]
fn oci_layout_layers_are_flattened_in_order_and_the_config_drives_run() {
    let Some(t) = Nook::new() else { return };
    let Some(sub) = first_subuid(&t) else { return };
    let dir = t.dir.join("layout");
    three_layer_layout(&t, &dir);
    t.give(&dir);
    let out = t.nook(&["import", dir.to_str().unwrap(), "layered"]);
    out.assert_ok();
    assert_three_layers_flattened(&rootfs(&t, "layered"));

    // The same layout as a tar archive.
    let archive = t.dir.join("layout.tar");
    tar_dir(&dir, &archive);
    import(&t, &archive, "from-tar").assert_ok();
    assert_three_layers_flattened(&rootfs(&t, "from-tar"));
    // Compressed, on stdin: spooled, then read like the file.
    t.cmd(&["import", "-", "from-stdin"])
        .stdin(&gzip(&fs::read(&archive).unwrap()))
        .run()
        .assert_ok();
    assert_three_layers_flattened(&rootfs(&t, "from-stdin"));
    assert!(
        !t.storage.join("images/from-stdin/archive.tar").exists(),
        "the spooled archive is not part of the image"
    );

    // Entrypoint + Cmd, Env, WorkingDir and User from the config.
    t.nook(&["run", "--rm", "layered"])
        .assert_ok()
        .assert_stdout("hello from /srv as 1000");
    // Arguments replace Cmd, not the Entrypoint; flags override the rest.
    t.nook(&[
        "run",
        "--rm",
        "-e",
        "GREETING=bye",
        "-w",
        "/a",
        "-u",
        "0",
        "layered",
        "echo $GREETING in $(pwd) as $(id -u)",
    ])
    .assert_ok()
    .assert_stdout("bye in /a as 0");
    t.nook(&[
        "run",
        "--rm",
        "--entrypoint",
        "/bin/busybox",
        "layered",
        "echo",
        "plain",
    ])
    .assert_ok()
    .assert_stdout("plain");
    // Owners other than root follow the store's mapping.
    let owned = fs::metadata(rootfs(&t, "layered").join("srv/owned")).unwrap();
    assert_eq!(owned.uid(), sub + 999);
    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(t.storage.join("images/layered/image.json")).unwrap())
            .unwrap();
    assert_eq!(meta["config"]["Labels"]["org.example.kind"], "test");
    assert_eq!(meta["config"]["WorkingDir"], "/srv");
}

#[test]
fn docker_save_archives_are_imported_with_their_layers_checked() {
    let Some(t) = Nook::new() else { return };
    let bb = busybox(&t);
    let l1 = tar_bytes(&[
        E::Dir("bin/", 0o755),
        E::File("bin/busybox", 0o755, &bb),
        E::Symlink("bin/sh", "busybox"),
        E::File("etc-file", 0o644, b"one"),
        E::File("removed", 0o644, b"x"),
    ]);
    let l2 = tar_bytes(&[
        E::File(".wh.removed", 0o644, b""),
        E::File("etc-file", 0o644, b"two"),
    ]);
    let build = |l2: &[u8], name: &str| -> PathBuf {
        let dir = t.dir.join(name);
        let id1 = "1".repeat(64);
        let id2 = "2".repeat(64);
        fs::create_dir_all(dir.join(&id1)).unwrap();
        fs::create_dir_all(dir.join(&id2)).unwrap();
        fs::write(dir.join(&id1).join("layer.tar"), &l1).unwrap();
        fs::write(dir.join(&id2).join("layer.tar"), l2).unwrap();
        let config = serde_json::to_vec(&image_config(
            serde_json::json!({"Cmd": ["/bin/busybox", "cat", "/etc-file"], "Env": ["PATH=/bin"]}),
            &[&l1, &l2_expected()],
        ))
        .unwrap();
        let config_name = format!("{}.json", sha256(&config).trim_start_matches("sha256:"));
        fs::write(dir.join(&config_name), &config).unwrap();
        let manifest = serde_json::json!([{
            "Config": config_name,
            "RepoTags": ["example:latest"],
            "Layers": [format!("{id1}/layer.tar"), format!("{id2}/layer.tar")],
        }]);
        fs::write(
            dir.join("manifest.json"),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        let archive = t.dir.join(format!("{name}.tar"));
        // `docker save` puts the layer directories first.
        let mut b = tar::Builder::new(fs::File::create(&archive).unwrap());
        for entry in [id1.clone(), id2.clone()] {
            b.append_dir_all(&entry, dir.join(&entry)).unwrap();
        }
        b.append_path_with_name(dir.join(&config_name), &config_name)
            .unwrap();
        b.append_path_with_name(dir.join("manifest.json"), "manifest.json")
            .unwrap();
        b.finish().unwrap();
        archive
    };
    fn l2_expected() -> Vec<u8> {
        tar_bytes(&[
            E::File(".wh.removed", 0o644, b""),
            E::File("etc-file", 0o644, b"two"),
        ])
    }
    let good = build(&l2, "saved");
    import(&t, &good, "saved").assert_ok();
    let root = rootfs(&t, "saved");
    assert!(!root.join("removed").exists());
    t.nook(&["run", "--rm", "saved"])
        .assert_ok()
        .assert_stdout("two");

    // A layer that is not the one the config names.
    let tampered = tar_bytes(&[E::File("etc-file", 0o644, b"evil")]);
    let bad = build(&tampered, "tampered");
    let out = import(&t, &bad, "tampered");
    out.assert_code(1);
    assert!(out.stderr.contains("digest mismatch"), "{out}");
    assert!(out.stderr.contains("layer 2"), "{out}");
    assert!(!t.storage.join("images/tampered").exists());
}

// ---------------------------------------------------------------------------
// Malicious and broken input.
// ---------------------------------------------------------------------------

/// A file outside the image that no import may touch, and the listing of the test directory.
struct Canary {
    dir: PathBuf,
    before: Vec<String>,
}

impl Canary {
    fn plant(t: &Nook) -> Canary {
        let dir = t.mkdir("outside");
        t.write_file("outside/canary", "untouched\n");
        Canary {
            before: tree_listing(&dir),
            dir,
        }
    }

    #[track_caller]
    fn check(&self, case: &str) {
        let after = tree_listing(&self.dir);
        assert!(
            after == self.before,
            "{case}: written outside the image:{}",
            diff(&self.before, &after)
        );
    }
}

#[track_caller]
fn assert_refused(t: &Nook, out: &Out, case: &str, names: &str) {
    assert_eq!(out.code, Some(1), "{case}: should be refused\n{out}");
    assert!(
        out.stderr.contains(names),
        "{case}: the message should name {names:?}\n{out}"
    );
    assert!(
        store_entries(t).is_empty(),
        "{case}: partial image left: {:?}",
        store_entries(t)
    );
}

#[test]
fn hostile_tarballs_are_refused_or_confined_and_leave_nothing() {
    let Some(t) = Nook::new() else { return };
    let canary = Canary::plant(&t);
    let outside = canary.dir.to_str().unwrap().to_string();
    let canary_path = format!("{outside}/canary");
    // From the image's root (storage/images/.import-NAME-PID/rootfs) to the test directory.
    let up = "../../../../";
    let via_dotdot = format!("{up}outside/canary");

    let refused: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "dot-dot entry",
            tar_bytes(&[E::RawFile(b"../../escape", b"x")]),
            "../../escape".into(),
        ),
        (
            "absolute entry",
            tar_bytes(&[E::RawFile(canary_path.as_bytes(), b"pwned")]),
            canary_path.clone(),
        ),
        (
            "write through a symlink to a host directory",
            tar_bytes(&[
                E::Symlink("evil", &outside),
                E::File("evil/canary", 0o644, b"pwned"),
            ]),
            "evil/canary".into(),
        ),
        (
            "hard link to a host file",
            tar_bytes(&[E::RawHardlink("stolen", via_dotdot.as_bytes())]),
            "stolen".into(),
        ),
        (
            "hard link to an absolute host path",
            tar_bytes(&[E::RawHardlink("stolen", canary_path.as_bytes())]),
            "stolen".into(),
        ),
        (
            "hard link through a symlink to a host directory",
            tar_bytes(&[
                E::Symlink("out", &outside),
                E::Hardlink("stolen", "out/canary"),
            ]),
            "stolen".into(),
        ),
        (
            "symlink named /. (CVE-2021-29136)",
            tar_bytes(&[
                E::RawSymlink(b"/.", &outside),
                E::File("canary", 0o644, b"pwned"),
            ]),
            "/.".into(),
        ),
        (
            "symlink replacing the root",
            tar_bytes(&[
                E::RawSymlink(b"./", &outside),
                E::File("canary", 0o644, b"pwned"),
            ]),
            "the image's root directory".into(),
        ),
        (
            "whiteout climbing out",
            tar_bytes(&[E::RawFile(
                format!("{up}outside/.wh.canary").as_bytes(),
                b"",
            )]),
            ".wh.canary".into(),
        ),
        ("truncated tar", truncated(), "big".into()),
        (
            "gzip with garbage after it",
            gzip_with_garbage(),
            "invalid gzip header".into(),
        ),
        ("gzip garbage", garbage_gzip(), "gzip".into()),
        ("10 GiB claim without the data", huge_claim(), "huge".into()),
    ];
    for (case, bytes, names) in &refused {
        let path = t.dir.join("hostile.tar");
        fs::write(&path, bytes).unwrap();
        let out = import(&t, &path, "hostile");
        assert_refused(&t, &out, case, names);
        canary.check(case);
    }

    // Confined: the archive gets what it asks for, inside the image only.
    let confined: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "symlink to / then files under it",
            tar_bytes(&[
                E::Symlink("root", "/"),
                E::File("root/canary", 0o644, b"inside"),
            ]),
            "canary",
        ),
        (
            "whiteout through a symlink to a host directory",
            tar_bytes(&[
                E::Symlink("out", &outside),
                E::File("out/.wh.canary", 0o644, b""),
                E::File("canary", 0o644, b"inside"),
            ]),
            "canary",
        ),
        (
            "symlink to a host file, then a file of the same name",
            tar_bytes(&[
                E::Symlink("canary", &via_dotdot),
                E::File("canary", 0o644, b"inside"),
            ]),
            "canary",
        ),
        (
            "duplicate entries: the last one wins",
            tar_bytes(&[
                E::File("canary", 0o644, b"first"),
                E::Dir("canary/", 0o755),
                E::File("canary", 0o644, b"inside"),
            ]),
            "canary",
        ),
    ];
    for (i, (case, bytes, expect)) in confined.iter().enumerate() {
        let path = t.dir.join("confined.tar");
        fs::write(&path, bytes).unwrap();
        let name = format!("confined{i}");
        import(&t, &path, &name).assert_ok();
        assert_eq!(
            fs::read(rootfs(&t, &name).join(expect)).unwrap(),
            b"inside",
            "{case}"
        );
        canary.check(case);
    }

    // A sparse 10 GiB file: kept sparse, costing no space.
    let path = t.dir.join("sparse.tar");
    fs::write(&path, sparse_claim()).unwrap();
    import(&t, &path, "sparse").assert_ok();
    let meta = fs::metadata(rootfs(&t, "sparse").join("holes")).unwrap();
    assert_eq!(meta.len(), 10 << 30);
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "stored sparse: {} blocks",
        meta.blocks()
    );
    canary.check("sparse");
}

/// A tar cut in the middle of a file's data.
fn truncated() -> Vec<u8> {
    let mut bytes = tar_bytes(&[
        E::File("small", 0o644, b"ok"),
        E::File("big", 0o644, &[7u8; 8192]),
    ]);
    bytes.truncate(512 * 3 + 4096);
    bytes
}

fn gzip_with_garbage() -> Vec<u8> {
    let mut bytes = gzip(&tar_bytes(&[E::File("f", 0o644, b"ok")]));
    bytes.extend_from_slice(b"this is not a gzip member");
    bytes
}

fn garbage_gzip() -> Vec<u8> {
    let mut bytes = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    bytes.extend_from_slice(&[0xa5u8; 4096]);
    bytes
}

/// A header claiming 10 GiB of data that is not there.
fn huge_claim() -> Vec<u8> {
    let mut h = header(tar::EntryType::Regular, 0o644, 10 << 30);
    set_raw_name(&mut h, b"huge");
    h.set_cksum();
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 4096]);
    bytes
}

/// A GNU sparse entry of 10 GiB with 4 KiB of data at its end.
fn sparse_claim() -> Vec<u8> {
    let real: u64 = 10 << 30;
    let mut h = header(tar::EntryType::GNUSparse, 0o644, 4096);
    set_raw_name(&mut h, b"holes");
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.sparse[0].set_offset(real - 4096);
        gnu.sparse[0].set_length(4096);
        gnu.set_real_size(real);
    }
    h.set_cksum();
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend_from_slice(&[9u8; 4096]);
    bytes.extend_from_slice(&[0u8; 1024]);
    bytes
}

#[test]
fn broken_oci_layouts_are_refused_with_the_blob_named() {
    let Some(t) = Nook::new() else { return };
    let canary = Canary::plant(&t);
    let layer = tar_bytes(&[E::File("f", 0o644, b"data")]);
    let config = image_config(serde_json::json!({}), &[&layer]);

    // A layer whose bytes changed after the manifest was written.
    let dir = t.dir.join("mismatch");
    let l = Layout::new(dir.clone());
    let desc = l.blob("application/vnd.oci.image.layer.v1.tar", &layer);
    let m = l.manifest(&config, std::slice::from_ref(&desc));
    l.index(&[with_platform(m, oci_arch())]);
    let digest = desc["digest"].as_str().unwrap().to_string();
    let blob = dir
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let mut bytes = fs::read(&blob).unwrap();
    bytes[600] ^= 0xff;
    fs::write(&blob, bytes).unwrap();
    t.give(&dir);
    let out = t.nook(&["import", dir.to_str().unwrap(), "broken"]);
    assert_refused(&t, &out, "digest mismatch", &digest);
    assert!(out.stderr.contains("digest mismatch"), "{out}");

    // A manifest naming a blob that is not there.
    let dir = t.dir.join("missing");
    let l = Layout::new(dir.clone());
    let desc = l.blob("application/vnd.oci.image.layer.v1.tar", &layer);
    let m = l.manifest(&config, std::slice::from_ref(&desc));
    l.index(&[with_platform(m, oci_arch())]);
    let digest = desc["digest"].as_str().unwrap().to_string();
    fs::remove_file(
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    t.give(&dir);
    let out = t.nook(&["import", dir.to_str().unwrap(), "broken"]);
    assert_refused(&t, &out, "missing blob", &digest);

    // An index for other platforms only (as a tar, as skopeo and podman write them).
    let dir = t.dir.join("foreign");
    let l = Layout::new(dir.clone());
    let desc = l.blob("application/vnd.oci.image.layer.v1.tar", &layer);
    let m = l.manifest(&config, &[desc]);
    l.index(&[with_platform(m, "s390x-elsewhere")]);
    let archive = t.dir.join("foreign.tar");
    tar_dir(&dir, &archive);
    let out = import(&t, &archive, "broken");
    assert_refused(&t, &out, "no matching platform", "s390x-elsewhere");
    assert!(
        out.stderr.contains(&format!("linux/{}", oci_arch())),
        "{out}"
    );

    // A digest that tries to be a path.
    let dir = t.dir.join("pathy");
    let l = Layout::new(dir.clone());
    l.index(&[serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:../../../outside/canary",
        "size": 10,
        "platform": {"os": "linux", "architecture": oci_arch()},
    })]);
    t.give(&dir);
    let out = t.nook(&["import", dir.to_str().unwrap(), "broken"]);
    assert_refused(&t, &out, "digest as a path", "malformed digest");
    canary.check("broken layouts");
}

// ---------------------------------------------------------------------------
// Crash safety.
// ---------------------------------------------------------------------------

#[test]
fn an_import_killed_half_way_leaves_no_image_and_the_next_command_cleans_up() {
    let Some(t) = Nook::new() else { return };
    let fifo = t.dir.join("stream");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    t.give(&fifo);
    let running = t.cmd(&["import", fifo.to_str().unwrap(), "killed"]).spawn();
    let mut writer = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    // The first entries, then nothing more: nook waits for the rest.
    let bytes = tar_bytes(&[
        E::File("first", 0o644, b"1"),
        E::File("second", 0o644, &[0u8; 1 << 20]),
    ]);
    writer.write_all(&bytes[..32768]).unwrap();
    let images = t.storage.join("images");
    let started = common::wait_until(Duration::from_secs(20), || {
        store_entries(&t)
            .iter()
            .any(|e| images.join(e).join("rootfs/first").exists())
    });
    assert!(started, "the import never started: {:?}", store_entries(&t));
    running.signal(nix::sys::signal::Signal::SIGKILL);
    let out = running.wait();
    assert_eq!(out.signal, Some(9), "{out}");
    drop(writer);
    assert!(
        store_entries(&t).iter().all(|e| e.starts_with('.')),
        "a killed import shows no image: {:?}",
        store_entries(&t)
    );
    // The helper in the user namespace dies with nook; then the next command cleans up.
    let gone = common::wait_until(Duration::from_secs(10), || {
        let out = t.nook(&["images", "-q"]);
        out.assert_ok();
        out.stdout.is_empty() && store_entries(&t).is_empty()
    });
    assert!(gone, "leftovers stay: {:?}", store_entries(&t));
}

// ---------------------------------------------------------------------------
// Commit, diff, export.
// ---------------------------------------------------------------------------

/// Imports the busybox fixture as image `bb` and runs a container `work` that changes it in
/// every way: adds, modifies, deletes a file and a directory, and replaces a directory's
/// contents (an opaque directory on overlay).
fn changed_container(t: &Nook) {
    t.nook(&["import", "-q", t.image(), "bb"]).assert_ok();
    t.nook(&[
        "run",
        "--name",
        "work",
        "bb",
        "sh",
        "-c",
        "set -e; echo new > /added; echo more >> /etc/passwd; rm /bin/vi; rm -r /usr/sbin; \
         rm -rf /home && mkdir /home && echo only > /home/only; mkdir -p /var/x/y; \
         echo z > /var/x/y/z",
    ])
    .assert_ok();
}

#[test]
fn diff_lists_what_a_container_changed_like_docker() {
    let Some(t) = Nook::new() else { return };
    changed_container(&t);
    let out = t.nook(&["diff", "work"]);
    out.assert_ok();
    let lines = out.lines();
    for expected in [
        "A /added",
        "C /etc/passwd",
        "D /bin/vi",
        "D /usr/sbin",
        "D /home/user",
        "A /home/only",
        "A /var/x",
        "A /var/x/y/z",
    ] {
        assert!(lines.contains(&expected), "missing {expected:?}\n{out}");
    }
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("/etc/hosts") || l.contains("resolv.conf")),
        "nook's own mount points are not changes\n{out}"
    );
    let mut sorted = lines.clone();
    sorted.sort_by_key(|l| l[2..].to_string());
    assert_eq!(lines, sorted, "sorted by path");
}

#[test]
fn commit_makes_an_image_of_base_and_changes_sharing_unchanged_files() {
    let Some(t) = Nook::new() else { return };
    changed_container(&t);
    let base = rootfs(&t, "bb");
    // Sharing files by hard link changes their link count and ctime, nothing else.
    let without_ctime = |v: Vec<String>| -> Vec<String> {
        v.into_iter()
            .map(|l| l.rsplit_once("\tctime=").unwrap().0.to_string())
            .collect()
    };
    let before = without_ctime(tree_listing(&base));
    let out = t.nook(&[
        "commit",
        "-c",
        r#"CMD ["cat", "/added"]"#,
        "-c",
        "ENV MODE=committed",
        "-c",
        "WORKDIR /var/x",
        "work",
        "snap",
    ]);
    out.assert_ok().assert_stdout("snap");
    let after = without_ctime(tree_listing(&base));
    assert!(
        after == before,
        "the base image was written:{}",
        diff(&before, &after)
    );
    let snap = rootfs(&t, "snap");
    let ino = |root: &Path, p: &str| fs::symlink_metadata(root.join(p)).unwrap().ino();
    assert_eq!(
        ino(&snap, "bin/busybox"),
        ino(&base, "bin/busybox"),
        "unchanged files are shared with the base image"
    );
    assert_ne!(ino(&snap, "etc/passwd"), ino(&base, "etc/passwd"));
    assert!(!snap.join("bin/vi").exists());
    assert!(!snap.join("usr/sbin").exists());
    assert!(
        !snap.join("etc/hosts").exists(),
        "no runtime mount points in the image"
    );
    let home: Vec<_> = fs::read_dir(snap.join("home")).unwrap().flatten().collect();
    assert_eq!(home.len(), 1, "opaque directory: only the new entry");

    t.nook(&["run", "--rm", "snap"])
        .assert_ok()
        .assert_stdout("new");
    t.nook(&[
        "run",
        "--rm",
        "snap",
        "sh",
        "-c",
        "echo $MODE; pwd; tail -n 1 /etc/passwd; cat /home/only; test -e /bin/vi || echo no-vi",
    ])
    .assert_ok()
    .assert_stdout("committed\n/var/x\nmore\nonly\nno-vi");

    // The container stays; the base cannot go while it does, the committed image can.
    let out = t.nook(&["rmi", "bb"]);
    out.assert_code(1);
    t.nook(&["rm", "work"]).assert_ok();
    t.nook(&["rmi", "bb"]).assert_ok();
    t.nook(&["run", "--rm", "snap", "cat", "/etc/passwd"])
        .assert_ok();
    let out = t.nook(&["commit", "nonexistent", "x"]);
    out.assert_code(1);
    assert!(out.stderr.contains("no such container"), "{out}");
}

#[test]
fn commit_of_a_container_over_a_plain_directory_copies_instead_of_linking() {
    let Some(t) = Nook::new() else { return };
    // The directory is the user's to change at any time: nothing of it may be shared.
    t.nook(&[
        "run",
        "-q",
        "--name",
        "plain",
        t.image(),
        "sh",
        "-c",
        "echo x > /x",
    ])
    .assert_ok();
    t.nook(&["commit", "-q", "plain", "fromdir"]).assert_ok();
    let snap = rootfs(&t, "fromdir");
    assert_ne!(
        fs::metadata(snap.join("bin/busybox")).unwrap().ino(),
        fs::metadata(Path::new(t.image()).join("bin/busybox"))
            .unwrap()
            .ino()
    );
    t.nook(&["run", "--rm", "fromdir", "cat", "/x"])
        .assert_ok()
        .assert_stdout("x");
    t.nook(&["rm", "plain"]).assert_ok();
}

#[test]
fn export_writes_a_tarball_that_imports_back_the_same() {
    let Some(t) = Nook::new() else { return };
    changed_container(&t);
    t.nook(&["commit", "-q", "work", "snap"]).assert_ok();
    let tarball = t.dir.join("snap.tar");
    t.nook(&["export", "snap", "-o", tarball.to_str().unwrap()])
        .assert_ok();
    import(&t, &tarball, "again").assert_ok();
    let a = tree_listing(&rootfs(&t, "snap"));
    let b = tree_listing(&rootfs(&t, "again"));
    let strip = |v: Vec<String>| -> Vec<String> {
        // Same entries, types, modes, owners, sizes, targets, contents and mtimes; ctimes differ.
        v.into_iter()
            .filter(|l| !l.starts_with(".\t"))
            .map(|l| l.rsplit_once("\tctime=").unwrap().0.to_string())
            .map(|l| {
                // Directory mtimes keep only seconds through tar.
                let (head, mtime) = l.rsplit_once("\tmtime=").unwrap();
                format!("{head}\tmtime={}", mtime.split('.').next().unwrap())
            })
            .collect()
    };
    let (a, b) = (strip(a), strip(b));
    assert!(
        a == b,
        "export and re-import changed the tree:{}",
        diff(&a, &b)
    );

    // A container exports as its merged tree.
    let out_c = t.dir.join("work.tar");
    t.nook(&["export", "work", "-o", out_c.to_str().unwrap()])
        .assert_ok();
    let names: Vec<String> = tar::Archive::new(fs::File::open(&out_c).unwrap())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.iter().any(|n| n == "added"), "{names:?}");
    assert!(!names.iter().any(|n| n == "bin/vi"), "{names:?}");
    let left: Vec<_> = fs::read_dir(&t.dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".nook-"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    assert!(store_entries(&t).iter().all(|e| !e.starts_with('.')));
}

/// podman, run as the test user with its storage in the test directory.
fn podman(t: &Nook, args: &[&str]) -> std::process::Output {
    let r = t.runner();
    let mut cmd = std::process::Command::new("podman");
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

/// podman wants its runroot path short (50 characters at most): one per test process.
fn podman_runroot() -> PathBuf {
    PathBuf::from(format!("/tmp/nook-podman-{}", std::process::id()))
}

fn have(tool: &str) -> bool {
    if std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    let reason = format!("{tool} is not installed (scripts/test.sh installs it as root)");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing under CI=true: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    false
}

#[test]
fn export_as_oci_loads_and_runs_in_podman_and_skopeo_reads_it() {
    let Some(t) = Nook::new() else { return };
    if !have("podman") || !have("skopeo") {
        return;
    }
    changed_container(&t);
    t.nook(&[
        "commit",
        "-q",
        "-c",
        "CMD cat /added; echo $MODE",
        "-c",
        "ENV MODE=oci",
        "work",
        "snap",
    ])
    .assert_ok();
    let archive = t.dir.join("snap-oci.tar");
    t.nook(&[
        "export",
        "--format",
        "oci",
        "snap",
        "-o",
        archive.to_str().unwrap(),
    ])
    .assert_ok();
    // nook reads its own export back.
    import(&t, &archive, "roundtrip").assert_ok();
    t.nook(&["run", "--rm", "roundtrip"])
        .assert_ok()
        .assert_stdout("new\noci");

    let loaded = podman(&t, &["load", "-i", archive.to_str().unwrap()]);
    let run = loaded.status.success().then(|| {
        // In the host's pid namespace: a container in a pid namespace of its own, while it
        // runs, looks like one nook left behind to the harness watching the other tests.
        podman(
            &t,
            &[
                "run",
                "--rm",
                "--pid",
                "host",
                "--network",
                "none",
                "localhost/snap:latest",
            ],
        )
    });
    // podman leaves a pause process holding its user namespace: end it before asserting.
    let pause = t.runtime.join("libpod/tmp/pause.pid");
    if let Some(pid) = fs::read_to_string(pause)
        .ok()
        .and_then(|p| p.trim().parse().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    common::force_remove(&podman_runroot());
    assert!(
        loaded.status.success(),
        "podman load: {}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let run = run.expect("ran");
    assert!(
        run.status.success(),
        "podman run: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout), "new\noci\n");

    // skopeo reads it and writes it out as an OCI layout of its own, which nook imports.
    let inspect = skopeo(
        &t,
        &["inspect", &format!("oci-archive:{}", archive.display())],
    );
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(info["Layers"].as_array().map(Vec::len), Some(1), "{info}");
    assert_eq!(info["Env"][0], "MODE=oci", "{info}");
    let copied = t.dir.join("skopeo-layout");
    let copy = skopeo(
        &t,
        &[
            "copy",
            &format!("oci-archive:{}", archive.display()),
            &format!("oci:{}:latest", copied.display()),
        ],
    );
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    t.nook(&["import", "-q", copied.to_str().unwrap(), "via-skopeo"])
        .assert_ok();
    t.nook(&["run", "--rm", "via-skopeo"])
        .assert_ok()
        .assert_stdout("new\noci");
}

/// skopeo, run as the test user.
fn skopeo(t: &Nook, args: &[&str]) -> std::process::Output {
    let r = t.runner();
    let mut cmd = std::process::Command::new("skopeo");
    cmd.args(args)
        .env_clear()
        .env("HOME", &t.home)
        .env("XDG_RUNTIME_DIR", &t.runtime)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .current_dir(&t.dir);
    if r.switch {
        use std::os::unix::process::CommandExt;
        cmd.uid(r.uid).gid(r.gid);
    }
    cmd.output().expect("run skopeo")
}

#[test]
fn progress_shows_on_a_terminal_only() {
    let Some(t) = Nook::new() else { return };
    // Data that does not compress, so that reading it takes a moment.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let big: Vec<u8> = (0..8 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let tar = tar_bytes(&[E::File("big", 0o644, &big)]);
    let path = t.dir.join("big.tar.gz");
    fs::write(&path, gzip(&tar)).unwrap();
    t.give(&path);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let out = t.run_in_pty(&["import", path.to_str().unwrap(), "tty"], 24, 100);
    out.assert_ok();
    assert!(
        out.stdout.contains("importing"),
        "no progress on a terminal\n{out}"
    );
    let out = t.nook(&["import", path.to_str().unwrap(), "pipe"]);
    out.assert_ok().assert_stdout("pipe");
    assert_eq!(out.stderr, "", "{out}");
}

/// Splits a tar archive into `n` layers of consecutive entries (a hard link's target always
/// comes first), each compressed its own way.
fn split_into_layers(archive: &Path, n: usize) -> Vec<Vec<u8>> {
    let count = tar::Archive::new(fs::File::open(archive).unwrap())
        .entries()
        .unwrap()
        .count();
    let per_layer = count.div_ceil(n);
    let mut layers: Vec<tar::Builder<Vec<u8>>> =
        (0..n).map(|_| tar::Builder::new(Vec::new())).collect();
    let mut source = tar::Archive::new(fs::File::open(archive).unwrap());
    for (i, entry) in source.entries().unwrap().enumerate() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let mut h = entry.header().clone();
        let b = &mut layers[i / per_layer];
        match entry.link_name().unwrap().map(|l| l.into_owned()) {
            Some(target) => b.append_link(&mut h, &path, &target).unwrap(),
            None => b.append_data(&mut h, &path, &mut entry).unwrap(),
        }
    }
    layers
        .into_iter()
        .map(|b| b.into_inner().unwrap())
        .collect()
}

#[test]
fn debian_as_three_oci_layers_flattens_to_the_same_tree_as_its_tarball() {
    let Some(archive) = debian_archive() else {
        return;
    };
    let Some(t) = Nook::new() else { return };
    let layers = split_into_layers(&archive, 3);
    let dir = t.dir.join("debian-oci");
    let layout = Layout::new(dir.clone());
    let compressed = [gzip(&layers[0]), zstd(&layers[1]), layers[2].clone()];
    let media = ["tar+gzip", "tar+zstd", "tar"];
    let descs: Vec<_> = compressed
        .iter()
        .zip(media)
        .map(|(data, m)| layout.blob(&format!("application/vnd.oci.image.layer.v1.{m}"), data))
        .collect();
    let refs: Vec<&[u8]> = layers.iter().map(|l| &l[..]).collect();
    let config = image_config(
        serde_json::json!({"Cmd": ["cat", "/etc/debian_version"]}),
        &refs,
    );
    let manifest = layout.manifest(&config, &descs);
    layout.index(&[with_platform(manifest, oci_arch())]);
    t.give(&dir);
    t.nook(&["import", "-q", dir.to_str().unwrap(), "layered"])
        .assert_ok();
    t.nook(&["import", "-q", archive.to_str().unwrap(), "plain"])
        .assert_ok();
    let without_ctime = |v: Vec<String>| -> Vec<String> {
        v.into_iter()
            .map(|l| l.rsplit_once("\tctime=").unwrap().0.to_string())
            .collect()
    };
    let a = without_ctime(tree_listing(&rootfs(&t, "plain")));
    let b = without_ctime(tree_listing(&rootfs(&t, "layered")));
    assert!(a == b, "layers flattened differently:{}", diff(&a, &b));
    let out = t.nook(&["run", "--rm", "layered"]);
    out.assert_ok();
    assert!(out.stdout.starts_with("12."), "{out}");
}

/// Whether fuse-overlayfs can work here; says why not (failing under CI=true) otherwise.
fn fuse_usable() -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("fuse-overlayfs").is_file()))
        .unwrap_or(false);
    if found && Path::new("/dev/fuse").exists() {
        return true;
    }
    let reason = "fuse-overlayfs or /dev/fuse is missing (scripts/test.sh installs and opens them)";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing under CI=true: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    false
}

#[test]
fn diff_and_commit_read_every_backend_alike() {
    let Some(t) = Nook::new() else { return };
    t.nook(&["import", "-q", t.image(), "bb"]).assert_ok();
    let mut backends = vec!["overlay", "copy"];
    if fuse_usable() {
        backends.push("fuse");
    }
    let script = "set -e; echo hi > /etc/new; rm /bin/vi; rm -rf /home; mkdir /home; \
                  echo o > /home/only; echo more >> /etc/passwd";
    let expected = [
        "C /bin",
        "D /bin/vi",
        "C /etc",
        "A /etc/new",
        "C /etc/passwd",
        "C /home",
        "A /home/only",
        "D /home/user",
    ];
    for backend in backends {
        let name = format!("c-{backend}");
        t.nook(&[
            "run",
            "-q",
            "--backend",
            backend,
            "--name",
            &name,
            "bb",
            "sh",
            "-c",
            script,
        ])
        .assert_ok();
        let out = t.nook(&["diff", &name]);
        out.assert_ok();
        assert_eq!(out.lines(), expected, "{backend}\n{out}");
        let snap = format!("snap-{backend}");
        t.nook(&["commit", "-q", &name, &snap]).assert_ok();
        t.nook(&[
            "run",
            "--rm",
            &snap,
            "sh",
            "-c",
            "cat /etc/new; ls /home; test -e /bin/vi || echo no-vi; tail -n 1 /etc/passwd",
        ])
        .assert_ok()
        .assert_stdout("hi\nonly\nno-vi\nmore");
        t.nook(&["rm", &name]).assert_ok();
    }
}

/// Ends the pause process podman leaves holding its user namespace, and its runroot.
fn end_podman(t: &Nook) {
    let pause = t.runtime.join("libpod/tmp/pause.pid");
    if let Some(pid) = fs::read_to_string(pause)
        .ok()
        .and_then(|p| p.trim().parse().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    common::force_remove(&podman_runroot());
}

fn ok_or_show(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn image_archives_of_podman_skopeo_and_docker_import_as_images_by_their_content() {
    let Some(t) = Nook::new() else { return };
    if !have("podman") || !have("skopeo") {
        return;
    }
    let img = t.image_copy("base-dir");
    fs::write(Path::new(&img).join("marker"), "from nook\n").unwrap();
    t.nook(&["import", "-q", &img, "base"]).assert_ok();
    let oci = t.dir.join("base-oci.tar");
    t.nook(&[
        "export",
        "--format",
        "oci",
        "base",
        "-o",
        oci.to_str().unwrap(),
    ])
    .assert_ok();
    let at = |name: &str| t.dir.join(name).to_str().unwrap().to_string();
    let oci_src = format!("oci-archive:{}", oci.display());
    let copies = [
        (
            "skopeo-docker.tar",
            "docker-archive",
            ":localhost/base:latest",
        ),
        ("skopeo-oci.tar", "oci-archive", ":latest"),
    ];
    for (file, transport, tag) in copies {
        let dest = format!("{transport}:{}{tag}", at(file));
        ok_or_show(&dest, &skopeo(&t, &["copy", &oci_src, &dest]));
    }
    let loaded = podman(&t, &["load", "-i", oci.to_str().unwrap()]);
    let saves = loaded.status.success().then(|| {
        [
            podman(
                &t,
                &[
                    "save",
                    "-o",
                    &at("podman-docker.tar"),
                    "localhost/base:latest",
                ],
            ),
            podman(
                &t,
                &[
                    "save",
                    "--format",
                    "oci-archive",
                    "-o",
                    &at("podman-oci.tar"),
                    "localhost/base:latest",
                ],
            ),
        ]
    });
    end_podman(&t);
    ok_or_show("podman load", &loaded);
    for save in saves.iter().flatten() {
        ok_or_show("podman save", save);
    }

    for (i, file) in [
        "skopeo-docker.tar",
        "skopeo-oci.tar",
        "podman-docker.tar",
        "podman-oci.tar",
    ]
    .iter()
    .enumerate()
    {
        let name = format!("img{i}");
        import(&t, &t.dir.join(file), &name).assert_ok();
        t.nook(&["run", "--rm", &name, "sh", "-c", "cat /marker; ls /"])
            .assert_ok();
        let root = rootfs(&t, &name);
        assert_eq!(
            fs::read_to_string(root.join("marker")).unwrap_or_default(),
            "from nook\n",
            "{file}"
        );
        assert!(
            !root.join("manifest.json").exists(),
            "{file} imported as a root filesystem"
        );
        assert!(root.join("bin/busybox").exists(), "{file}");
    }
    // Unpacked into a directory: the same by content.
    let unpacked = t.dir.join("unpacked-docker-archive");
    fs::create_dir(&unpacked).unwrap();
    tar::Archive::new(fs::File::open(t.dir.join("podman-docker.tar")).unwrap())
        .unpack(&unpacked)
        .unwrap();
    import(&t, &unpacked, "from-dir").assert_ok();
    assert!(rootfs(&t, "from-dir").join("marker").exists());
    assert!(!rootfs(&t, "from-dir").join("manifest.json").exists());
    // Compressed, through stdin: the same by content.
    let bytes = fs::read(t.dir.join("skopeo-docker.tar")).unwrap();
    t.cmd(&["import", "-q", "-", "from-stdin"])
        .stdin(&gzip(&bytes))
        .run()
        .assert_ok();
    assert!(rootfs(&t, "from-stdin").join("marker").exists());

    // The layers of a docker-archive without its manifest are no image and no root filesystem.
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut builder = tar::Builder::new(Vec::new());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let top = path.to_string_lossy().into_owned();
        if top == "manifest.json" || top == "repositories" {
            continue;
        }
        let header = entry.header().clone();
        builder.append(&header, &mut entry).unwrap();
    }
    let incomplete = t.dir.join("incomplete.tar");
    fs::write(&incomplete, builder.into_inner().unwrap()).unwrap();
    let before = store_entries(&t);
    let out = import(&t, &incomplete, "broken");
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("manifest.json"), "{out}");
    let out = t
        .cmd(&["import", "-", "broken"])
        .stdin(&gzip(&fs::read(&incomplete).unwrap()))
        .run();
    assert_eq!(out.code, Some(1), "{out}");
    let empty = t.dir.join("empty.tar");
    fs::write(&empty, tar::Builder::new(Vec::new()).into_inner().unwrap()).unwrap();
    let out = import(&t, &empty, "broken");
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("no files"), "{out}");
    assert_eq!(store_entries(&t), before);
}

/// Entries with type, mode, owner, size, target and content; times left out (the layer's
/// directories carry the container's times, a commit's copies the image's).
fn timeless_listing(root: &Path) -> Vec<String> {
    tree_listing(root)
        .into_iter()
        .filter(|l| !l.starts_with(".\t"))
        .map(|l| l.split("\tmtime=").next().unwrap().to_string())
        .collect()
}

#[test]
fn export_of_a_container_streams_its_view_on_every_backend() {
    let Some(t) = Nook::new() else { return };
    t.nook(&["import", "-q", t.image(), "bb"]).assert_ok();
    let mut backends = vec!["overlay", "copy"];
    if fuse_usable() {
        backends.push("fuse");
    }
    // A file added, one changed, one deleted, a directory deleted, a directory replaced
    // (opaque: none of the image's entries may show through), hard links kept.
    let script = "set -e; echo hi > /etc/new; echo more >> /etc/passwd; rm /bin/vi; \
                  rm -r /usr/sbin; rm -rf /home; mkdir /home; echo o > /home/only; \
                  echo l > /l1; ln /l1 /l2";
    for backend in backends {
        let name = format!("c-{backend}");
        t.nook(&[
            "run",
            "-q",
            "--backend",
            backend,
            "--name",
            &name,
            "bb",
            "sh",
            "-c",
            script,
        ])
        .assert_ok();
        let tarball = t.dir.join(format!("{name}.tar"));
        t.nook(&["export", &name, "-o", tarball.to_str().unwrap()])
            .assert_ok();
        let names: Vec<String> = tar::Archive::new(fs::File::open(&tarball).unwrap())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        for gone in ["bin/vi", "usr/sbin", "home/user", "etc/hostname"] {
            assert!(
                !names
                    .iter()
                    .any(|n| n == gone || n.starts_with(&format!("{gone}/"))),
                "{backend}: {gone} in the export"
            );
        }
        assert!(names.iter().any(|n| n == "home/only"), "{backend}");
        assert!(
            !names.iter().any(|n| n.contains(".wh.")),
            "{backend}: whiteouts exported"
        );
        // The same tree as the container committed and exported (commit flattens on its own).
        let snap = format!("snap-{backend}");
        t.nook(&["commit", "-q", &name, &snap]).assert_ok();
        import(&t, &tarball, &format!("back-{backend}")).assert_ok();
        let (a, b) = (
            timeless_listing(&rootfs(&t, &snap)),
            timeless_listing(&rootfs(&t, &format!("back-{backend}"))),
        );
        assert!(
            a == b,
            "{backend}: the export is not the container's view:{}",
            diff(&a, &b)
        );
        let links = t.nook(&[
            "run",
            "--rm",
            &format!("back-{backend}"),
            "stat",
            "-c",
            "%h",
            "/l2",
        ]);
        links.assert_ok().assert_stdout("2");
        t.nook(&["rm", &name]).assert_ok();
    }
    assert!(store_entries(&t).iter().all(|e| !e.starts_with('.')));
}

#[test]
fn a_read_only_store_serves_the_reading_verbs_and_the_writing_ones_name_it() {
    let Some(t) = Nook::new() else { return };
    // A store never made: listing it makes nothing.
    t.nook(&["ps"]).assert_ok();
    t.nook(&["images"]).assert_ok();
    assert!(!t.storage.exists(), "ps or images created the store");
    t.nook(&["import", "-q", t.image(), "bb"]).assert_ok();
    t.nook(&[
        "run",
        "-q",
        "--name",
        "kept",
        "bb",
        "sh",
        "-c",
        "echo x > /x",
    ])
    .assert_ok();
    let dirs: Vec<PathBuf> = ["", "containers", "names", "images"]
        .iter()
        .map(|d| t.storage.join(d))
        .collect();
    let listing = |dirs: &[PathBuf]| -> Vec<Vec<String>> {
        dirs.iter().map(|d| common::entry_names(d)).collect()
    };
    let before = listing(&dirs);
    for d in &dirs {
        fs::set_permissions(d, fs::Permissions::from_mode(0o555)).unwrap();
    }
    let ps = t.nook(&["ps", "--format", "json"]);
    ps.assert_ok();
    assert!(ps.stdout.contains("\"kept\""), "{ps}");
    let images = t.nook(&["images"]);
    images.assert_ok();
    assert!(images.stdout.contains("bb"), "{images}");
    t.nook(&["inspect", "kept", "bb"]).assert_ok();
    t.nook(&["diff", "kept"]).assert_ok().assert_stdout("A /x");
    t.nook(&["state", "kept"]).assert_ok();
    // A container's export reads its layer and image: no scratch copy in the store.
    let tarball = t.dir.join("kept.tar");
    t.nook(&["export", "kept", "-o", tarball.to_str().unwrap()])
        .assert_ok();
    let layout = t.dir.join("kept-oci.tar");
    t.nook(&[
        "export",
        "--format",
        "oci",
        "kept",
        "-o",
        layout.to_str().unwrap(),
    ])
    .assert_ok();
    for args in [
        vec!["run", "--rm", "bb", "true"],
        vec!["import", "-q", t.image(), "other"],
        vec!["rm", "kept"],
    ] {
        let out = t.nook(&args);
        assert_ne!(out.code, Some(0), "{args:?}\n{out}");
        assert!(
            out.stderr.contains(&format!(
                "the nook store {} is not writable",
                t.storage.display()
            )),
            "{args:?} does not name the store\n{out}"
        );
    }
    for d in &dirs {
        fs::set_permissions(d, fs::Permissions::from_mode(0o700)).unwrap();
    }
    assert_eq!(before, listing(&dirs), "the store changed");
    t.nook(&["rm", "kept"]).assert_ok();
}
