//! `nook build` as the test users: a busybox Containerfile built, run and rebuilt from the
//! cache; ARG and source changes that must and must not invalidate; ignore rules and a symlink
//! out of the context refused; a failing RUN; a multi-stage COPY --from; the user without a
//! range.

mod common;

use common::Nook;

fn context(t: &Nook, name: &str, containerfile: &str, files: &[(&str, &str)]) -> String {
    let dir = t.mkdir(name);
    for (path, contents) in files {
        if let Some(parent) = std::path::Path::new(path).parent() {
            if !parent.as_os_str().is_empty() {
                t.mkdir(&format!("{name}/{}", parent.display()));
            }
        }
        t.write_file(format!("{name}/{path}"), contents);
    }
    t.write_file(format!("{name}/Containerfile"), containerfile);
    dir.to_str().unwrap().to_string()
}

fn base(t: &Nook) {
    t.nook(&["import", "-q", t.image(), "bb"]).assert_ok();
}

const APP: &str = r#"FROM bb
ARG GREETING=hi
ARG UNUSED=1
ENV APP=/app
WORKDIR $APP
COPY src/ ./
RUN echo "$GREETING" > greeting && cat a.txt
RUN <<EOF
echo from heredoc > /hd
EOF
COPY --chown=1000:1000 <<EOF /app/inline
inline text
EOF
CMD ["cat", "/app/greeting"]
"#;

fn steps_cached(stderr: &str) -> usize {
    stderr.matches("--> CACHED").count()
}

#[test]
fn a_containerfile_builds_runs_and_rebuilds_from_the_cache() {
    let Some(t) = Nook::new() else { return };
    base(&t);
    let ctx = context(
        &t,
        "app",
        APP,
        &[
            ("src/a.txt", "hello\n"),
            ("src/secret.txt", "s\n"),
            (".dockerignore", "src/secret.txt\n"),
        ],
    );
    let out = t.nook(&["build", "-t", "app", &ctx]);
    out.assert_ok();
    assert!(out.stderr.contains("STEP 1/10: FROM bb"), "{out}");
    assert!(
        out.stderr.contains("hello"),
        "RUN output is streamed: {out}"
    );
    assert_eq!(steps_cached(&out.stderr), 0, "{out}");
    assert_eq!(out.stdout.trim(), "app");
    t.nook(&["run", "--rm", "app"])
        .assert_ok()
        .assert_stdout("hi\n");
    let out = t.nook(&[
        "run",
        "--rm",
        "app",
        "sh",
        "-c",
        "cat /hd; pwd; stat -c '%u:%g %a' /app/inline /app/a.txt; ls /app",
    ]);
    out.assert_ok();
    assert_eq!(
        out.stdout, "from heredoc\n/app\n1000:1000 644\n0:0 644\na.txt\ngreeting\ninline\n",
        "the ignored file is left out: {out}"
    );
    // The same build again: every tree step from the cache.
    let out = t.nook(&["build", "-t", "app", &ctx]);
    out.assert_ok();
    assert_eq!(steps_cached(&out.stderr), 5, "{out}");
    // An ARG no instruction names: a RUN has every ARG in scope as its environment (as in
    // BuildKit), so WORKDIR and COPY stay cached and the steps from the first RUN are made again.
    let out = t.nook(&["build", "--build-arg", "UNUSED=2", "-t", "app", &ctx]);
    out.assert_ok();
    assert_eq!(steps_cached(&out.stderr), 2, "{out}");
    // A changed source invalidates the COPY and what follows; the image is replaced.
    t.write_file("app/src/a.txt", "changed\n");
    let out = t.nook(&["build", "--build-arg", "GREETING=yo", "-t", "app", &ctx]);
    out.assert_ok();
    assert_eq!(steps_cached(&out.stderr), 1, "only WORKDIR: {out}");
    t.nook(&["run", "--rm", "app"])
        .assert_ok()
        .assert_stdout("yo\n");
    t.nook(&["run", "--rm", "app", "cat", "/app/a.txt"])
        .assert_ok()
        .assert_stdout("changed\n");
    // The base image was never written.
    assert!(!std::path::Path::new(t.image()).join("app").exists());
    assert!(!std::path::Path::new(t.image()).join("hd").exists());
}

#[test]
fn a_user_without_a_range_builds_too() {
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    base(&t);
    let ctx = context(
        &t,
        "nosub",
        "FROM bb\nCOPY a.txt /a.txt\nRUN chown 1000 /a.txt && cat /a.txt\n",
        &[("a.txt", "x\n")],
    );
    let out = t.nook(&["build", "-t", "nosub", &ctx]);
    out.assert_ok();
    assert!(out.stderr.contains("x\n"), "{out}");
    t.nook(&["run", "--rm", "nosub", "cat", "/a.txt"])
        .assert_ok()
        .assert_stdout("x\n");
}

#[test]
fn a_failing_run_reports_its_line_and_status_and_keeps_the_earlier_cache() {
    let Some(t) = Nook::new() else { return };
    base(&t);
    let ctx = context(
        &t,
        "fail",
        "FROM bb\nCOPY a.txt /a.txt\n\nRUN echo about to fail && exit 7\nCMD [\"true\"]\n",
        &[("a.txt", "x\n")],
    );
    let out = t.nook(&["build", "-t", "broken", &ctx]);
    out.assert_code(7);
    assert!(
        out.stderr.contains("line 4") && out.stderr.contains("status 7"),
        "{out}"
    );
    let images = t.nook(&["images", "-q"]);
    assert!(!images.stdout.contains("broken"), "{images}");
    let ps = t.nook(&["ps", "-a", "-q"]);
    assert!(
        !ps.stdout.contains("nook-build"),
        "RUN container left: {ps}"
    );
    let out = t.nook(&["build", "-t", "broken", &ctx]);
    out.assert_code(7);
    assert_eq!(
        steps_cached(&out.stderr),
        1,
        "the COPY before stays cached: {out}"
    );
    t.assert_no_processes_left();
}

#[test]
fn sources_outside_the_context_or_ignored_are_refused_by_name() {
    let Some(t) = Nook::new() else { return };
    base(&t);
    let ctx = context(
        &t,
        "refuse",
        "FROM bb\n",
        &[("secret.txt", "s\n"), (".dockerignore", "secret.txt\n")],
    );
    std::os::unix::fs::symlink("/etc", format!("{ctx}/etc-link")).unwrap();
    for (line, want) in [
        ("COPY secret.txt /", "excluded"),
        ("COPY ../x /", "outside the build context"),
        ("COPY etc-link/passwd /", "outside the build context"),
        ("COPY missing /", "no such file"),
        ("ADD https://example.com/x /", "URLs are not supported"),
        ("HEALTHCHECK CMD true", "HEALTHCHECK is not supported"),
        ("RUN --mount=type=cache,target=/c true", "RUN --mount"),
    ] {
        t.write_file("refuse/Containerfile", &format!("FROM bb\n{line}\n"));
        let out = t.nook(&["build", "-t", "refused", &ctx]);
        assert_ne!(out.code, Some(0), "{line}: {out}");
        assert!(out.stderr.contains(want), "{line}: {out}");
        assert!(out.stderr.contains("line 2"), "{line}: {out}");
    }
    let images = t.nook(&["images", "-q"]);
    assert!(!images.stdout.contains("refused"), "{images}");
}

#[test]
fn a_multi_stage_build_copies_from_a_stage_and_target_stops_early() {
    let Some(t) = Nook::new() else { return };
    base(&t);
    let ctx = context(
        &t,
        "multi",
        "ARG BASE=bb\nFROM $BASE AS builder\nRUN mkdir /out && echo built > /out/artifact\n\
         FROM bb\nCOPY --from=builder /out/artifact /artifact\nCMD [\"cat\", \"/artifact\"]\n",
        &[],
    );
    t.nook(&["build", "-q", "-t", "multi", &ctx])
        .assert_ok()
        .assert_stdout("multi\n");
    t.nook(&["run", "--rm", "multi"])
        .assert_ok()
        .assert_stdout("built\n");
    t.nook(&["build", "-q", "--target", "builder", "-t", "stage1", &ctx])
        .assert_ok();
    t.nook(&["run", "--rm", "stage1", "cat", "/out/artifact"])
        .assert_ok()
        .assert_stdout("built\n");
    let out = t.nook(&["build", "--target", "nope", &ctx]);
    assert!(out.stderr.contains("no stage has that name"), "{out}");
    // `system prune` drops the step cache; the images stay whole.
    let cache = t.storage.join("build-cache");
    assert!(common::entry_names(&cache).len() >= 2);
    let out = t.nook(&["system", "prune", "-f"]);
    out.assert_ok();
    assert!(out.stdout.contains("Deleted Build Cache"), "{out}");
    assert_eq!(common::entry_names(&cache), Vec::<String>::new());
    t.nook(&["run", "--rm", "multi"])
        .assert_ok()
        .assert_stdout("built\n");
}
