//! The verbs podman users reach for beyond run/ps/rm: tag, top, system df/prune, default
//! names, completions and man pages. Each as the test user, with its bad input.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Nook;

fn import(t: &Nook, name: &str) {
    t.nook(&["import", "-q", t.image(), name]).assert_ok();
}

fn image_names(t: &Nook) -> Vec<String> {
    let out = t.nook(&["images", "-q"]);
    out.assert_ok();
    out.lines().iter().map(|l| l.to_string()).collect()
}

fn images_json(t: &Nook) -> Vec<serde_json::Value> {
    let out = t.nook(&["images", "--format", "json"]);
    out.assert_ok();
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"))
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Total apparent size of the trees, each hard-linked file once, as `du` counts it.
fn du_total(paths: &[std::path::PathBuf]) -> u64 {
    let out = std::process::Command::new("du")
        .arg("-sbc")
        .args(paths)
        .output()
        .expect("du");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().expect("du total line");
    last.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn tag_names_the_same_image_and_rmi_of_one_name_keeps_the_others() {
    let Some(t) = Nook::new() else { return };
    import(&t, "box");
    t.nook(&["tag", "box", "box:v1", "other"]).assert_ok();
    assert_eq!(image_names(&t), ["box", "box:v1", "other"]);
    // A name, not a copy: the tag is a link to the image's directory.
    let images = t.storage.join("images");
    for tag in ["box:v1", "other"] {
        let meta = std::fs::symlink_metadata(images.join(tag)).unwrap();
        assert!(meta.file_type().is_symlink(), "{tag} is not a link");
    }
    let sizes: Vec<u64> = images_json(&t)
        .iter()
        .map(|i| i["size"].as_u64().unwrap())
        .collect();
    assert!(sizes.iter().all(|s| *s == sizes[0] && *s > 0), "{sizes:?}");

    t.nook(&["run", "-q", "--name", "c1", "box:v1", "touch", "/made"])
        .assert_ok();
    assert_eq!(t.container("c1").unwrap()["image_name"], "box:v1");
    let ps = t.nook(&["ps"]);
    assert!(ps.lines()[1].contains(" box:v1 "), "{ps}");

    // The directory's own name goes; the files stay for the other names and for c1.
    t.nook(&["rmi", "box"]).assert_ok();
    assert_eq!(image_names(&t), ["box:v1", "other"]);
    t.nook(&["run", "-q", "--rm", "other", "true"]).assert_ok();
    let diff = t.nook(&["diff", "c1"]);
    diff.assert_ok();
    assert!(diff.lines().contains(&"A /made"), "{diff}");
    let out = t.nook(&["import", "-q", t.image(), "box"]);
    out.assert_code(1);
    assert!(
        out.stderr.contains("still holds the files of image"),
        "{out}"
    );

    t.nook(&["rmi", "box:v1"]).assert_ok();
    assert_eq!(t.container("c1").unwrap()["image_name"], "other");
    // The last name is the image: refused while c1 uses it, as any image is.
    let out = t.nook(&["rmi", "other"]);
    out.assert_code(1);
    assert!(out.stderr.contains("used by container(s) c1"), "{out}");
    t.nook(&["rm", "c1"]).assert_ok();
    t.nook(&["rmi", "other"]).assert_ok();
    assert_eq!(image_names(&t), Vec::<String>::new());
    assert_eq!(entries(&images), Vec::<String>::new(), "left in the store");
    // Its name is free again.
    import(&t, "box");
}

#[test]
fn tag_refuses_bad_names_and_unknown_images_leaving_nothing() {
    let Some(t) = Nook::new() else { return };
    import(&t, "box");
    import(&t, "other");
    let cases: [(&[&str], &str); 4] = [
        (&["tag", "nope", "x"], "no such image: nope"),
        (&["tag", "box", "a/b"], "invalid image name \"a/b\""),
        (&["tag", "box", "other"], "image other already exists"),
        (&["tag", "box", "box"], "box is already a name of image box"),
    ];
    for (args, message) in cases {
        let out = t.nook(args);
        out.assert_code(1);
        assert!(out.stderr.contains(message), "{args:?}: {out}");
    }
    assert_eq!(image_names(&t), ["box", "other"]);
    assert_eq!(entries(&t.storage.join("images")), ["box", "other"]);
    // A tag moves to the image it is given again, as in podman.
    t.nook(&["tag", "box", "latest"]).assert_ok();
    t.nook(&["tag", "other", "latest"]).assert_ok();
    let target = std::fs::read_link(t.storage.join("images/latest")).unwrap();
    assert_eq!(target, Path::new("other"));
}

#[test]
fn images_count_shared_files_once_and_agree_with_system_df() {
    let Some(t) = Nook::new() else { return };
    import(&t, "base");
    t.nook(&[
        "run",
        "-q",
        "--name",
        "c",
        "base",
        "sh",
        "-c",
        "head -c 5000 /dev/zero > /new",
    ])
    .assert_ok();
    t.nook(&["commit", "-q", "c", "derived"]).assert_ok();
    let rows = images_json(&t);
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap().clone();
    let (base, derived) = (row("base"), row("derived"));
    let images = t.storage.join("images");
    let (base_dir, derived_dir) = (images.join("base/rootfs"), images.join("derived/rootfs"));
    // SIZE is each image whole (as podman's), SHARED the part the two hold as the same files.
    assert_eq!(
        base["size"].as_u64(),
        Some(du_total(std::slice::from_ref(&base_dir)))
    );
    assert_eq!(
        derived["size"].as_u64(),
        Some(du_total(std::slice::from_ref(&derived_dir)))
    );
    let shared = base["shared"].as_u64().unwrap();
    assert!(shared > 100_000, "busybox not shared: {rows:?}");
    assert_eq!(derived["shared"].as_u64(), Some(shared));

    let out = t.nook(&["system", "df", "--format", "json"]);
    out.assert_ok();
    let df: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let total = df["images"]["size"].as_u64().unwrap();
    assert_eq!(total, du_total(&[base_dir, derived_dir]), "{df}");
    assert_eq!(
        total,
        base["size"].as_u64().unwrap() + derived["size"].as_u64().unwrap() - shared
    );
    assert_eq!(df["images"]["total"], 2);
    assert_eq!(df["images"]["active"], 1, "c uses base: {df}");
    assert_eq!(df["containers"]["total"], 1);
    assert_eq!(df["containers"]["active"], 0);
    let table = t.nook(&["system", "df"]);
    table.assert_ok();
    assert!(table.lines()[0].starts_with("TYPE"), "{table}");
    assert!(
        table.lines()[1].starts_with("Images      2       1"),
        "{table}"
    );
    assert!(
        table.lines()[2].starts_with("Containers  1       0"),
        "{table}"
    );
    let images_table = t.nook(&["images"]);
    assert!(images_table.lines()[0].contains("SHARED"), "{images_table}");
}

#[test]
fn system_prune_asks_then_removes_stopped_containers_and_with_a_unused_images() {
    let Some(t) = Nook::new() else { return };
    import(&t, "used");
    import(&t, "unused");
    t.nook(&["run", "-q", "-d", "--name", "up", "used", "sleep", "1000"])
        .assert_ok();
    t.nook(&["run", "-q", "--name", "done", "used", "true"])
        .assert_ok();
    // No terminal to ask on: nothing happens without -f.
    let out = t.nook(&["system", "prune"]);
    out.assert_code(1);
    assert!(out.stderr.contains("give -f"), "{out}");
    assert_eq!(t.ps().len(), 2);

    let out = t.nook(&["system", "prune", "-f"]);
    out.assert_ok();
    assert_eq!(out.lines()[..2], ["Deleted Containers", "done"], "{out}");
    let names: Vec<String> = t.ps().iter().map(|c| c["name"].to_string()).collect();
    assert_eq!(names, ["\"up\""]);
    assert_eq!(image_names(&t), ["unused", "used"]);

    let out = t.nook(&["system", "prune", "-a", "-f"]);
    out.assert_ok();
    assert!(out.stdout.contains("Deleted Images\nunused\n"), "{out}");
    assert_eq!(
        image_names(&t),
        ["used"],
        "the running container's image stays"
    );
    assert_eq!(t.container("up").unwrap()["status"], "running");
    t.nook(&["rm", "-f", "up"]).assert_ok();
}

#[test]
fn top_lists_a_running_containers_processes_with_their_container_pids() {
    let Some(t) = Nook::new() else { return };
    t.nook(&[
        "run",
        "-q",
        "-d",
        "--name",
        "busy",
        t.image(),
        "sh",
        "-c",
        "sleep 1000 & exec sleep 1001",
    ])
    .assert_ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = t.nook(&["top", "busy"]);
        out.assert_ok();
        // Until the shell's child has become `sleep 1000` and the shell `sleep 1001`.
        let settled = out.lines().len() == 3
            && out.stdout.contains("sleep 1000\n")
            && out.stdout.contains("sleep 1001\n");
        if settled || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let rows: Vec<Vec<&str>> = out
        .lines()
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["USER", "PID", "PPID", "%CPU", "ELAPSED", "TTY", "TIME", "COMMAND"],
        "{out}"
    );
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(rows[1][..3], ["root", "1", "0"], "{out}");
    assert_eq!(rows[1][5], "?", "{out}");
    assert_eq!(rows[1][7..], ["sleep", "1001"], "{out}");
    assert_eq!(rows[2][..3], ["root", "2", "1"], "{out}");
    assert_eq!(rows[2][7..], ["sleep", "1000"], "{out}");

    let out = t.nook(&["top", "nope"]);
    out.assert_code(1);
    assert!(out.stderr.contains("no such container: nope"), "{out}");
    t.nook(&["stop", "-t", "0", "busy"]).assert_ok();
    let out = t.nook(&["top", "busy"]);
    out.assert_code(1);
    assert!(
        out.stderr.contains("container busy is not running"),
        "{out}"
    );
}

#[test]
fn default_names_are_adjective_noun_and_hostnames_the_short_id() {
    let Some(t) = Nook::new() else { return };
    import(&t, "box");
    let out = t.nook(&["run", "-q", "box", "hostname"]);
    out.assert_ok();
    let ps = t.ps();
    let name = ps[0]["name"].as_str().unwrap();
    let (adjective, noun) = name.split_once('_').unwrap_or_else(|| panic!("{name}"));
    assert!(
        [adjective, noun]
            .iter()
            .all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase())),
        "{name}"
    );
    let id = ps[0]["id"].as_str().unwrap();
    assert_eq!(out.stdout.trim(), &id[..12]);
    // A name given does not change the hostname, as in podman.
    let out = t.nook(&["run", "-q", "--name", "web_1", t.image(), "hostname"]);
    out.assert_ok();
    let id = t.container("web_1").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(out.stdout.trim(), &id[..12]);
    // IMAGE: the image's name, or the directory that was run.
    let table = t.nook(&["ps"]);
    let line = |n: &str| {
        table
            .lines()
            .into_iter()
            .find(|l| l.starts_with(n))
            .unwrap()
            .to_string()
    };
    assert!(line(name).contains("  box  "), "{table}");
    assert!(line("web_1").contains(t.image()), "{table}");
}

#[test]
fn completions_and_man_pages_come_from_the_arguments() {
    let Some(t) = Nook::new() else { return };
    let bash = t.nook(&["completion", "bash"]);
    bash.assert_ok();
    for word in ["_nook()", "tag", "top", "--hostname", "--backend"] {
        assert!(bash.stdout.contains(word), "bash script lacks {word}");
    }
    // The script loads and registers itself.
    let script = t.write_file("nook.bash", &bash.stdout);
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(". {} && complete -p nook", script.display()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("-F _nook"),
        "{out:?}"
    );
    let zsh = t.nook(&["completion", "zsh"]);
    zsh.assert_ok();
    assert!(zsh.stdout.starts_with("#compdef nook"), "{}", zsh.stdout);
    let fish = t.nook(&["completion", "fish"]);
    fish.assert_ok();
    assert!(fish.stdout.contains("complete -c nook"), "{}", fish.stdout);
    let out = t.nook(&["completion", "tcsh"]);
    out.assert_code(125);
    assert!(
        out.stderr.contains("possible values: bash, zsh, fish"),
        "{out}"
    );

    let dir = t.mkdir("man");
    t.nook(&["generate-man", dir.to_str().unwrap()]).assert_ok();
    let pages = entries(&dir);
    for page in [
        "nook.1",
        "nook-run.1",
        "nook-tag.1",
        "nook-system-df.1",
        "nook-image-ls.1",
    ] {
        assert!(pages.iter().any(|p| p == page), "{page} missing: {pages:?}");
    }
    assert!(!pages.iter().any(|p| p.contains("help")), "{pages:?}");
    let run = std::fs::read_to_string(dir.join("nook-run.1")).unwrap();
    assert!(run.starts_with(".ie"), "not roff");
    assert!(run.contains("hostname"), "nook-run.1 lacks --hostname");
}

/// `nook ARGS` as the runner, stdout kept as bytes (a tar stream).
fn nook_bytes(t: &Nook, args: &[&str], stdin: Option<&[u8]>) -> (i32, Vec<u8>, String) {
    use std::io::Write;
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut cmd = t.command_for(t.bin(), &args, &[]);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn nook");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tar_names(bytes: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

/// Owner uid of a path in a running container, as it sees it.
fn owner_inside(t: &Nook, container: &str, path: &str) -> String {
    let out = t.nook(&["exec", container, "stat", "-c", "%u", path]);
    out.assert_ok();
    out.stdout.trim().to_string()
}

#[test]
fn cp_copies_both_ways_with_running_and_stopped_containers() {
    let Some(t) = Nook::new() else { return };
    copies_both_ways(&t);
}

#[test]
fn cp_copies_both_ways_for_a_user_without_subordinate_ids() {
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    copies_both_ways(&t);
}

fn copies_both_ways(t: &Nook) {
    let file = t.write_file("hello.txt", "hello\n");
    let tree = t.mkdir("tree/sub");
    t.write_file("tree/sub/inner", "inner\n");
    std::os::unix::fs::symlink("sub/inner", t.dir.join("tree/link")).unwrap();
    t.give(&t.dir.join("tree"));
    let tree = tree.parent().unwrap().to_str().unwrap().to_string();
    let file = file.to_str().unwrap();

    t.nook(&[
        "run",
        "-q",
        "-d",
        "--name",
        "live",
        t.image(),
        "sleep",
        "1000",
    ])
    .assert_ok();
    t.nook(&["cp", file, "live:/tmp/"]).assert_ok();
    t.nook(&["exec", "live", "cat", "/tmp/hello.txt"])
        .assert_ok()
        .assert_stdout("hello\n");
    assert_eq!(owner_inside(t, "live", "/tmp/hello.txt"), "0");
    t.nook(&["cp", &tree, "live:/tmp/copy"]).assert_ok();
    t.nook(&[
        "exec",
        "live",
        "sh",
        "-c",
        "cat /tmp/copy/sub/inner; readlink /tmp/copy/link",
    ])
    .assert_ok()
    .assert_stdout("inner\nsub/inner\n");
    // Out again, to a new name and into a directory.
    let back = t.dir.join("back");
    t.nook(&["cp", "live:/tmp/copy", back.to_str().unwrap()])
        .assert_ok();
    assert_eq!(fs_read(&back.join("sub/inner")), "inner\n");
    let meta = std::fs::metadata(back.join("sub/inner")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        t.runner().uid,
        "a copied-out file belongs to the user"
    );
    // A setuid program of the container stays one only inside it.
    t.nook(&[
        "exec",
        "live",
        "sh",
        "-c",
        "cp /bin/busybox /tmp/suid && chmod 4755 /tmp/suid",
    ])
    .assert_ok();
    let suid = t.dir.join("suid");
    t.nook(&["cp", "live:/tmp/suid", suid.to_str().unwrap()])
        .assert_ok();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&suid).unwrap().permissions());
    assert_eq!(mode & 0o7777, 0o755, "{mode:o}");
    let into = t.mkdir("into");
    t.nook(&["cp", "live:/etc/passwd", into.to_str().unwrap()])
        .assert_ok();
    assert!(fs_read(&into.join("passwd")).starts_with("root:"));

    // `-`: a tar stream out, and one in.
    let (code, tar, err) = nook_bytes(t, &["cp", "live:/tmp/copy", "-"], None);
    assert_eq!(code, 0, "{err}");
    let names = tar_names(&tar);
    assert!(names.contains(&"copy/sub/inner".to_string()), "{names:?}");
    let (code, _, err) = nook_bytes(t, &["cp", "-", "live:/root"], Some(&tar));
    assert_eq!(code, 0, "{err}");
    t.nook(&["exec", "live", "cat", "/root/copy/sub/inner"])
        .assert_ok()
        .assert_stdout("inner\n");

    // A stopped container: its upper layer gets the file, the image nothing (checked when `t`
    // goes: `t.image()` fails the test if written).
    t.nook(&[
        "run",
        "-q",
        "--name",
        "done",
        t.image(),
        "sh",
        "-c",
        "echo made > /made",
    ])
    .assert_ok();
    let made = t.dir.join("made");
    t.nook(&["cp", "done:/made", made.to_str().unwrap()])
        .assert_ok();
    assert_eq!(fs_read(&made), "made\n");
    t.nook(&["cp", file, "done:/etc/greeting"]).assert_ok();
    let diff = t.nook(&["diff", "done"]);
    assert!(diff.lines().contains(&"A /etc/greeting"), "{diff}");
    let again = t.dir.join("greeting");
    t.nook(&["cp", "done:/etc/greeting", again.to_str().unwrap()])
        .assert_ok();
    assert_eq!(fs_read(&again), "hello\n");
    t.nook(&["rm", "-f", "live", "done"]).assert_ok();
}

fn fs_read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn cp_stays_inside_the_containers_root_and_bad_input_leaves_nothing() {
    let Some(t) = Nook::new() else { return };
    let file = t.write_file("payload", "payload\n");
    let file = file.to_str().unwrap();
    let host_target = t.dir.join("planted");
    let planted = host_target.to_str().unwrap().to_string();
    // Links that would lead out of the root if followed on the host.
    let links = "ln -s / /escape && ln -s ../../../../.. /up && mkdir -p /deep/er";
    t.nook(&[
        "run",
        "-q",
        "--name",
        "stopped",
        t.image(),
        "sh",
        "-c",
        links,
    ])
    .assert_ok();
    t.nook(&[
        "run",
        "-q",
        "-d",
        "--name",
        "live",
        t.image(),
        "sh",
        "-c",
        &format!("{links} && exec sleep 1000"),
    ])
    .assert_ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.nook(&["exec", "live", "test", "-d", "/deep/er"]).code != Some(0) {
        assert!(Instant::now() < deadline, "the links never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    for ct in ["stopped", "live"] {
        // Reads through the links find the container's files, not the host's.
        let out = t.dir.join(format!("passwd-{ct}"));
        t.nook(&[
            "cp",
            &format!("{ct}:/escape/etc/passwd"),
            out.to_str().unwrap(),
        ])
        .assert_ok();
        let image_passwd = fs_read(&Path::new(t.image()).join("etc/passwd"));
        assert_eq!(fs_read(&out), image_passwd, "{ct}: read the host's passwd");
        let out = t.dir.join(format!("up-{ct}"));
        t.nook(&["cp", &format!("{ct}:/up/etc/passwd"), out.to_str().unwrap()])
            .assert_ok();
        assert_eq!(fs_read(&out), image_passwd);
        // Writes through them land in the container, or nowhere.
        for via in ["/escape", "/up", "/deep/er/../../up"] {
            let dest = format!("{ct}:{via}{planted}");
            let out = t.nook(&["cp", file, &dest]);
            out.assert_code(1);
            assert!(
                out.stderr.contains("no such file or directory"),
                "{dest}: {out}"
            );
            assert!(!host_target.exists(), "{dest} wrote the host's {planted}");
        }
        // A link copied out stays a link; it is not followed.
        let out = t.dir.join(format!("link-{ct}"));
        t.nook(&["cp", &format!("{ct}:/escape"), out.to_str().unwrap()])
            .assert_ok();
        assert_eq!(std::fs::read_link(&out).unwrap(), Path::new("/"));
    }
    // A tar that names its way out is refused, from stdin as from anywhere.
    let mut evil = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(4);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../../../");
    header.set_cksum();
    evil.append(&header, &b"evil"[..]).unwrap();
    let evil = evil.into_inner().unwrap();
    let (code, _, err) = nook_bytes(&t, &["cp", "-", "live:/tmp"], Some(&evil));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("would leave the destination"), "{err}");

    let bad: [(&[&str], &str); 5] = [
        (&["cp", "nope:/x", "y"], "no such container: nope"),
        (
            &["cp", file, "other-file"],
            "needs a container path on one side",
        ),
        (
            &["cp", "live:/missing", "y"],
            "/missing: no such file or directory",
        ),
        (
            &["cp", "live:/x", "stopped:/y"],
            "between a container and the host",
        ),
        (
            &["cp", "/no/such/host/file", "live:/tmp"],
            "no such file or directory",
        ),
    ];
    for (args, message) in bad {
        let out = t.nook(args);
        out.assert_code(1);
        assert!(out.stderr.contains(message), "{args:?}: {out}");
    }
    let leftovers: Vec<String> = entries(&t.storage)
        .into_iter()
        .filter(|e| e.starts_with(".cp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(!t.dir.join("y").exists());
    t.nook(&["rm", "-f", "live", "stopped"]).assert_ok();
}

fn wait_for_status(t: &Nook, name: &str, status: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = t.container(name).expect("container listed");
        if c["status"] == status || Instant::now() > deadline {
            assert_eq!(c["status"], status, "{c}");
            return c;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn restart_starts_a_container_again_over_its_layer() {
    let Some(t) = Nook::new() else { return };
    t.nook(&[
        "run",
        "-q",
        "-d",
        "--name",
        "svc",
        t.image(),
        "sh",
        "-c",
        "echo started; exec sleep 1000",
    ])
    .assert_ok();
    let first = wait_for_status(&t, "svc", "running")["pid"].clone();
    t.nook(&["exec", "svc", "touch", "/kept"]).assert_ok();
    t.nook(&["restart", "-t", "1", "svc"])
        .assert_ok()
        .assert_stdout("svc\n");
    let again = wait_for_status(&t, "svc", "running");
    assert_ne!(again["pid"], first, "the same process still runs");
    t.nook(&["exec", "svc", "ls", "/kept"]).assert_ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.nook(&["logs", "svc"]).stdout != "started\nstarted\n" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    t.nook(&["logs", "svc"]).assert_stdout("started\nstarted\n");

    // A foreground container that exited runs again, in the background, with its hostname.
    t.nook(&[
        "run",
        "-q",
        "--name",
        "once",
        t.image(),
        "sh",
        "-c",
        "cat /etc/hostname >> /runs",
    ])
    .assert_ok();
    t.nook(&["restart", "once"]).assert_ok();
    let done = wait_for_status(&t, "once", "exited");
    assert_eq!(done["exit_code"], 0, "{done}");
    let runs = t.dir.join("runs");
    t.nook(&["cp", "once:/runs", runs.to_str().unwrap()])
        .assert_ok();
    let id = done["id"].as_str().unwrap();
    assert_eq!(fs_read(&runs), format!("{0}\n{0}\n", &id[..12]));

    // Bad input: named, nothing changed.
    t.nook(&[
        "run",
        "-q",
        "-d",
        "--rm",
        "--name",
        "gone",
        t.image(),
        "sleep",
        "1000",
    ])
    .assert_ok();
    let out = t.nook(&["restart", "gone"]);
    out.assert_code(1);
    assert!(out.stderr.contains("was run with --rm"), "{out}");
    wait_for_status(&t, "gone", "running");
    let out = t.nook(&["restart", "nope"]);
    out.assert_code(1);
    assert!(out.stderr.contains("no such container: nope"), "{out}");
    t.nook(&["rm", "-f", "svc", "once", "gone"]).assert_ok();
}

#[test]
fn cp_and_restart_work_with_every_backend() {
    let Some(t) = Nook::new() else { return };
    let file = t.write_file("in", "in\n");
    let mut backends = vec!["overlay", "copy"];
    if common::required_tool("fuse-overlayfs", "fuse-overlayfs").is_some() {
        backends.push("fuse");
    }
    for backend in backends {
        let name = format!("b-{backend}");
        t.nook(&[
            "run",
            "-q",
            "--backend",
            backend,
            "--name",
            &name,
            t.image(),
            "sh",
            "-c",
            "echo out > /out; cat /in 2>/dev/null; true",
        ])
        .assert_ok();
        let out = t.dir.join(format!("out-{backend}"));
        t.nook(&["cp", &format!("{name}:/out"), out.to_str().unwrap()])
            .assert_ok();
        assert_eq!(fs_read(&out), "out\n", "{backend}");
        t.nook(&["cp", file.to_str().unwrap(), &format!("{name}:/in")])
            .assert_ok();
        t.nook(&["restart", &name]).assert_ok();
        wait_for_status(&t, &name, "exited");
        t.nook(&["logs", &name]).assert_stdout("in\n");
        t.nook(&["rm", &name]).assert_ok();
    }
}
