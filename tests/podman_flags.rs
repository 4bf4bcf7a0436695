//! The flags people type from podman and docker: honoured where a rootless container can
//! honour them, else an error that says what to do instead (never clap's "did you mean").

mod common;

use common::Nook;

/// `nook run -q --rm FLAGS... IMAGE sh -c SCRIPT`.
fn run_sh(t: &Nook, flags: &[&str], script: &str) -> common::Out {
    let mut args = vec!["run", "-q", "--rm"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[t.image(), "sh", "-c", script]);
    t.nook(&args)
}

/// The hexadecimal `CapEff` of the container's shell.
fn effective_caps(t: &Nook, flags: &[&str]) -> u64 {
    let out = run_sh(t, flags, "grep CapEff /proc/self/status");
    out.assert_ok();
    let hex = out.stdout.split_whitespace().nth(1).expect("CapEff value");
    u64::from_str_radix(hex, 16).unwrap()
}

#[test]
fn env_file_then_e_as_podman() {
    let Some(t) = Nook::new() else { return };
    let file = t.write_file("vars", "A=1\n# a comment\n\nB=two words\nC=x\n");
    let file = file.to_str().unwrap();
    run_sh(&t, &["--env-file", file, "-e", "C=y"], "echo \"$A|$B|$C\"")
        .assert_ok()
        .assert_stdout("1|two words|y\n");
    let bad = t.write_file("bad", "GOOD=1\n=oops\n");
    let out = run_sh(&t, &["--env-file", bad.to_str().unwrap()], "true");
    out.assert_code(125);
    assert!(out.stderr.contains("line 2"), "{out}");
    assert_eq!(t.container_dirs(), Vec::<String>::new());
}

#[test]
fn read_only_tmpfs_and_mounts() {
    let Some(t) = Nook::new() else { return };
    run_sh(
        &t,
        &["--read-only"],
        "touch /x 2>/dev/null && echo wrote; touch /tmp/ok && echo tmp-ok",
    )
    .assert_ok()
    .assert_stdout("tmp-ok\n");
    run_sh(
        &t,
        &["--tmpfs", "/scratch:size=1m"],
        "grep ' /scratch ' /proc/mounts | grep -c size=1024k",
    )
    .assert_ok()
    .assert_stdout("1\n");
    run_sh(
        &t,
        &["--mount", "type=tmpfs,target=/t,tmpfs-size=2m"],
        "grep ' /t ' /proc/mounts | grep -c size=2048k",
    )
    .assert_ok()
    .assert_stdout("1\n");
    let dir = t.mkdir("shared");
    t.write_file("shared/hello", "hi\n");
    let bind = format!("type=bind,source={},target=/h,readonly", dir.display());
    run_sh(
        &t,
        &["--mount", &bind],
        "cat /h/hello; touch /h/new 2>/dev/null || echo read-only",
    )
    .assert_ok()
    .assert_stdout("hi\nread-only\n");
    for (flags, culprit) in [
        (&["--mount", "type=volume,target=/v"][..], "-v HOST_DIR:/v"),
        (&["--mount", "type=tmpfs,target=/proc"], "/proc"),
        (&["--tmpfs", "relative"], "absolute"),
        (&["--mount", "type=bind,target=/x"], "source"),
    ] {
        let out = run_sh(&t, flags, "true");
        out.assert_code(125);
        assert!(out.stderr.contains(culprit), "{flags:?}\n{out}");
    }
    assert_eq!(t.container_dirs(), Vec::<String>::new());
    t.assert_no_processes_left();
}

#[test]
fn capabilities_seccomp_and_privileged() {
    let Some(t) = Nook::new() else { return };
    let default = effective_caps(&t, &[]);
    assert_eq!(effective_caps(&t, &["--cap-drop", "ALL"]), 0);
    let net_raw = 1u64 << 13;
    assert_eq!(default & net_raw, 0);
    assert_eq!(
        effective_caps(&t, &["--cap-add", "NET_RAW", "--cap-drop", "CAP_CHOWN"]),
        (default | net_raw) & !1
    );
    assert!(effective_caps(&t, &["--privileged"]).count_ones() >= 40);
    run_sh(&t, &[], "grep Seccomp: /proc/self/status")
        .assert_ok()
        .assert_stdout("Seccomp:\t2\n");
    // Under the old-kernel simulation every process runs under the harness's own filter.
    let unconfined = if common::old_kernel().is_none() {
        "Seccomp:\t0\n"
    } else {
        "Seccomp:\t2\n"
    };
    run_sh(
        &t,
        &[
            "--security-opt",
            "seccomp=unconfined",
            "--root-emulation",
            "off",
        ],
        "grep Seccomp: /proc/self/status",
    )
    .assert_ok()
    .assert_stdout(unconfined);
    run_sh(
        &t,
        &["--security-opt", "no-new-privileges"],
        "grep NoNewPrivs /proc/self/status",
    )
    .assert_ok()
    .assert_stdout("NoNewPrivs:\t1\n");
    let out = run_sh(&t, &["--cap-add", "NOSUCH"], "true");
    out.assert_code(125);
    assert!(out.stderr.contains("NOSUCH"), "{out}");
    let out = run_sh(&t, &["--security-opt", "foo=bar"], "true");
    out.assert_code(125);
    assert!(out.stderr.contains("seccomp=unconfined"), "{out}");
}

#[test]
fn unconfined_keeps_root_emulation_without_subordinate_ids() {
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    run_sh(
        &t,
        &["--security-opt", "seccomp=unconfined"],
        "touch /tmp/f && chown 5:5 /tmp/f && echo chown-ok",
    )
    .assert_ok()
    .assert_stdout("chown-ok\n");
}

#[test]
fn ulimit_shm_size_device_and_cidfile() {
    let Some(t) = Nook::new() else { return };
    run_sh(&t, &["--ulimit", "nofile=100:200"], "ulimit -n; ulimit -Hn")
        .assert_ok()
        .assert_stdout("100\n200\n");
    run_sh(
        &t,
        &["--shm-size", "8m"],
        "grep ' /dev/shm ' /proc/mounts | grep -c size=8192k",
    )
    .assert_ok()
    .assert_stdout("1\n");
    run_sh(
        &t,
        &["--device", "/dev/null:/dev/hostnull"],
        "echo x > /dev/hostnull && echo ok",
    )
    .assert_ok()
    .assert_stdout("ok\n");
    let out = run_sh(&t, &["--device", "/etc/passwd"], "true");
    out.assert_code(125);
    assert!(out.stderr.contains("not a device"), "{out}");
    let cid = t.dir.join("cid");
    let cid_arg = cid.to_str().unwrap();
    t.nook(&[
        "run",
        "-q",
        "--name",
        "withcid",
        "--cidfile",
        cid_arg,
        t.image(),
        "true",
    ])
    .assert_ok();
    let id = std::fs::read_to_string(&cid).unwrap();
    let ps = t.container("withcid").expect("listed");
    assert_eq!(ps["id"].as_str(), Some(id.as_str()), "{ps}");
    let out = run_sh(&t, &["--cidfile", cid_arg], "true");
    out.assert_code(125);
    assert!(out.stderr.contains("exists"), "{out}");
    let out = run_sh(&t, &["--ulimit", "nosuch=1"], "true");
    out.assert_code(125);
    assert!(out.stderr.contains("nosuch"), "{out}");
}

#[test]
fn flags_nook_cannot_honour_say_what_to_do() {
    let Some(t) = Nook::new() else { return };
    for (flags, advice) in [
        (&["--label", "a=b"][..], "--name"),
        (&["--stop-signal", "KILL"], "nook kill"),
        (&["--stop-timeout", "3"], "nook stop -t"),
        (&["--sig-proxy=false"], "-d"),
    ] {
        let out = run_sh(&t, flags, "true");
        out.assert_code(125);
        assert!(out.stderr.contains(advice), "{flags:?}\n{out}");
        assert!(!out.stderr.contains("similar argument"), "{out}");
    }
    run_sh(&t, &["--pull", "never", "--sig-proxy=true"], "true").assert_ok();
    // A directory is run as it is: no policy pulls it.
    run_sh(&t, &["--pull", "always"], "true").assert_ok();
    let out = run_sh(&t, &["--pull", "sometimes"], "true");
    out.assert_code(125);
    assert!(out.stderr.contains("missing, always, never"), "{out}");
    assert_eq!(t.container_dirs(), Vec::<String>::new());
}

#[test]
fn ps_exec_and_logs_flags_as_podman() {
    let Some(t) = Nook::new() else { return };
    t.nook(&[
        "run",
        "-q",
        "-d",
        "--name",
        "lg",
        t.image(),
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do echo l$i; done; sleep 60",
    ])
    .assert_ok();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !t.nook(&["logs", "lg"]).stdout.contains("l5") {
        assert!(std::time::Instant::now() < deadline, "no log");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    t.nook(&["logs", "--tail", "2", "lg"])
        .assert_ok()
        .assert_stdout("l4\nl5\n");
    t.nook(&["logs", "--tail", "0", "lg"])
        .assert_ok()
        .assert_stdout("");
    let out = t.nook(&["logs", "-t", "lg"]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("no times"), "{out}");
    t.nook(&[
        "exec",
        "-w",
        "/etc",
        "-e",
        "X=1",
        "-i",
        "lg",
        "sh",
        "-c",
        "echo $PWD $X",
    ])
    .assert_ok()
    .assert_stdout("/etc 1\n");
    let out = t.nook(&["ps", "-a", "-q"]);
    out.assert_ok();
    assert!(out.lines().contains(&"lg"), "{out}");
    t.nook(&["rm", "-f", "lg"]).assert_ok();
    t.assert_no_processes_left();
}

#[test]
fn podman_verbs_version_inspect_and_groups() {
    let Some(t) = Nook::new() else { return };
    let out = t.nook(&["version"]);
    out.assert_ok();
    assert!(out.stdout.starts_with("nook version "), "{out}");
    t.nook(&["import", "-q", t.image(), "img"]).assert_ok();
    t.nook(&["run", "-q", "--name", "ct", "img", "true"])
        .assert_ok();
    let out = t.nook(&["inspect", "ct", "img"]);
    out.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v[0]["Kind"], "container", "{v}");
    assert_eq!(v[0]["Name"], "ct", "{v}");
    assert_eq!(v[0]["Status"], "exited", "{v}");
    assert_eq!(v[1]["Kind"], "image", "{v}");
    assert_eq!(v[1]["Name"], "img", "{v}");
    let out = t.nook(&["image", "inspect", "ct"]);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("no image named ct"), "{out}");
    t.nook(&["inspect", "nosuch"]).assert_code(1);
    t.nook(&["container", "ls", "-q"])
        .assert_ok()
        .assert_stdout("ct\n");
    t.nook(&["image", "ls", "-q"])
        .assert_ok()
        .assert_stdout("img\n");
    let out = t.nook(&["images", "-f", "json"]);
    out.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert!(v.is_array(), "{v}");
    t.nook(&["container", "rm", "ct"]).assert_ok();
    t.nook(&["image", "rm", "img"]).assert_ok();
    assert_eq!(t.container_dirs(), Vec::<String>::new());
}
