//! `nook run`: what the command gets (arguments, stdin, environment, directory, user)
//! and what the caller gets back (output, exit status, signals).

mod common;

use std::time::Duration;

use common::{parse_env, Nook};
use nix::sys::signal::Signal;

const READY: Duration = Duration::from_secs(30);

#[test]
fn command_output_and_exit_status_reach_the_caller() {
    let Some(t) = Nook::new() else { return };
    let out = t.sh("echo hello; echo oops >&2; exit 3");
    out.assert_code(3).assert_stdout("hello");
    assert_eq!(
        out.stderr, "oops\n",
        "nook added to the command's stderr\n{out}"
    );
}

#[test]
fn exit_status_is_the_commands_own() {
    let Some(t) = Nook::new() else { return };
    for code in [0, 1, 42, 255] {
        t.sh(&format!("exit {code}")).assert_code(code);
    }
}

#[test]
fn command_may_follow_the_directory_with_or_without_double_dash() {
    let Some(t) = Nook::new() else { return };
    let img = t.image();
    t.nook(&["run", "--rm", img, "--", "echo", "with", "dashes"])
        .assert_ok()
        .assert_stdout("with dashes");
    t.nook(&["run", "--rm", img, "echo", "without", "dashes"])
        .assert_ok()
        .assert_stdout("without dashes");
}

#[test]
fn options_after_the_command_belong_to_the_command() {
    let Some(t) = Nook::new() else { return };
    let out = t.nook(&[
        "run",
        "--rm",
        t.image(),
        "sh",
        "-c",
        "printf '%s\\n' \"$@\"",
        "sh",
        "-e",
        "--rm",
        "-v",
        "x:y",
    ]);
    out.assert_ok();
    assert_eq!(out.lines(), ["-e", "--rm", "-v", "x:y"], "{out}");
}

#[test]
fn default_command_is_a_shell() {
    let Some(t) = Nook::new() else { return };
    t.cmd(&["run", "--rm", "-i", t.image()])
        .stdin(b"echo from the default shell; exit 4\n")
        .run()
        .assert_code(4)
        .assert_stdout("from the default shell");
}

#[test]
fn stdin_reaches_the_command_only_with_i() {
    let Some(t) = Nook::new() else { return };
    let img = t.image();
    t.cmd(&["run", "--rm", "-i", img, "cat"])
        .stdin(b"piped data\n")
        .run()
        .assert_ok()
        .assert_stdout("piped data");
    // Without -i the command reads /dev/null, even when the caller offers input.
    t.cmd(&["run", "--rm", img, "cat"])
        .stdin(b"must not arrive\n")
        .run()
        .assert_ok()
        .assert_stdout("");
}

#[test]
fn missing_command_exits_127_and_says_so() {
    let Some(t) = Nook::new() else { return };
    let img = t.image();
    let out = t.nook(&["run", "--rm", img, "no-such-command"]);
    out.assert_code(127);
    assert!(
        out.stderr
            .contains("nook: no-such-command: not found in the container"),
        "{out}"
    );
    let out = t.nook(&["run", "--rm", img, "/no/such/program"]);
    out.assert_code(127);
    assert!(out.stderr.contains("/no/such/program"), "{out}");
}

#[test]
fn non_executable_command_exits_126() {
    let Some(t) = Nook::new() else { return };
    let out = t.nook(&["run", "--rm", t.image(), "/etc/passwd"]);
    out.assert_code(126);
    assert!(
        out.stderr.contains("/etc/passwd"),
        "stderr must name the command\n{out}"
    );
}

#[test]
fn command_killed_by_a_signal_exits_128_plus_the_signal() {
    let Some(t) = Nook::new() else { return };
    let img = t.image();
    // With --init the shell is pid 2; as pid 1 it could not die of a signal it sends itself.
    t.nook(&["run", "--rm", "--init", img, "sh", "-c", "kill -9 $$"])
        .assert_code(137);
    t.nook(&["run", "--rm", "--init", img, "sh", "-c", "kill -TERM $$"])
        .assert_code(143);
}

/// The command traps `signal`, says it is ready, and exits 42 when the signal arrives.
fn assert_signal_reaches_the_command(signal: Signal) {
    let Some(t) = Nook::new() else { return };
    let name = signal.as_str().trim_start_matches("SIG");
    let script =
        format!("trap 'echo got {name}; exit 42' {name}; echo ready; while :; do sleep 0.1; done");
    let running = t
        .cmd(&["run", "--rm", t.image(), "sh", "-c", &script])
        .spawn();
    running.wait_for_stdout("ready", READY);
    running.signal(signal);
    let out = running.wait();
    out.assert_code(42);
    assert!(out.stdout.contains(&format!("got {name}")), "{out}");
}

#[test]
fn sigterm_to_nook_reaches_the_command() {
    assert_signal_reaches_the_command(Signal::SIGTERM);
}

#[test]
fn sigint_to_nook_reaches_the_command() {
    assert_signal_reaches_the_command(Signal::SIGINT);
}

#[test]
fn sighup_to_nook_reaches_the_command() {
    assert_signal_reaches_the_command(Signal::SIGHUP);
}

#[test]
fn sigquit_to_nook_reaches_the_command() {
    assert_signal_reaches_the_command(Signal::SIGQUIT);
}

#[test]
fn sigusr1_to_nook_reaches_the_command() {
    assert_signal_reaches_the_command(Signal::SIGUSR1);
}

#[test]
fn sigusr2_to_nook_reaches_the_command() {
    assert_signal_reaches_the_command(Signal::SIGUSR2);
}

#[test]
fn with_init_the_command_is_pid_2() {
    let Some(t) = Nook::new() else { return };
    let img = t.image();
    t.nook(&["run", "--rm", "--init", img, "sh", "-c", "echo $$"])
        .assert_ok()
        .assert_stdout("2");
    t.nook(&["run", "--rm", img, "sh", "-c", "echo $$"])
        .assert_ok()
        .assert_stdout("1");
}

#[test]
fn init_forwards_sigterm_to_a_command_without_a_handler() {
    let Some(t) = Nook::new() else { return };
    let running = t
        .cmd(&[
            "run",
            "--rm",
            "--init",
            t.image(),
            "sh",
            "-c",
            "echo ready; exec sleep 100",
        ])
        .spawn();
    running.wait_for_stdout("ready", READY);
    running.signal(Signal::SIGTERM);
    running.wait().assert_code(143);
}

#[test]
fn init_reaps_orphaned_processes() {
    let Some(t) = Nook::new() else { return };
    // The inner shell leaves a short sleep behind; once it ends, init must reap it.
    let script = "sh -c 'sleep 0.1 &'; sleep 0.6; \
                  for s in /proc/[0-9]*/stat; do read -r line < $s; echo \"$line\"; done";
    let out = t.nook(&["run", "--rm", "--init", t.image(), "sh", "-c", script]);
    out.assert_ok();
    assert!(!out.lines().is_empty(), "{out}");
    let zombies: Vec<&str> = out
        .lines()
        .into_iter()
        .filter(|l| l.contains(") Z "))
        .collect();
    assert!(
        zombies.is_empty(),
        "zombies in the container: {zombies:?}\n{out}"
    );
}

#[test]
fn env_option_sets_variables_for_the_command() {
    let Some(t) = Nook::new() else { return };
    let out = t
        .cmd(&[
            "run",
            "--rm",
            "-e",
            "FOO=bar",
            "-e",
            "SPACED=a b=c",
            "--env",
            "EMPTY=",
            "-e",
            "FROM_CALLER",
            t.image(),
            "env",
        ])
        .env("FROM_CALLER", "passed through")
        .run();
    out.assert_ok();
    let env = parse_env(&out.stdout);
    assert_eq!(env.get("FOO").map(String::as_str), Some("bar"), "{out}");
    assert_eq!(
        env.get("SPACED").map(String::as_str),
        Some("a b=c"),
        "{out}"
    );
    assert_eq!(env.get("EMPTY").map(String::as_str), Some(""), "{out}");
    assert_eq!(
        env.get("FROM_CALLER").map(String::as_str),
        Some("passed through"),
        "{out}"
    );
}

#[test]
fn default_environment_is_path_home_hostname_and_container_only() {
    let Some(t) = Nook::new() else { return };
    let out = t.nook(&["run", "--rm", "--name", "envcheck", t.image(), "env"]);
    out.assert_ok();
    let env = parse_env(&out.stdout);
    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(keys, ["HOME", "HOSTNAME", "PATH", "container"], "{out}");
    // The convention systemd and other tools use to detect a container.
    assert_eq!(env["container"], "nook", "{out}");
    assert_eq!(env["HOME"], "/root", "{out}");
    // The short id, as in podman, whatever the name.
    let hostname = &env["HOSTNAME"];
    assert!(
        hostname.len() == 12 && hostname.chars().all(|c| c.is_ascii_hexdigit()),
        "{out}"
    );
    assert!(env["PATH"].split(':').any(|d| d == "/bin"), "{out}");
}

#[test]
fn workdir_option_sets_the_current_directory() {
    let Some(t) = Nook::new() else { return };
    let img = t.image();
    t.nook(&["run", "--rm", "-w", "/tmp", img, "pwd"])
        .assert_ok()
        .assert_stdout("/tmp");
    t.nook(&["run", "--rm", "--workdir", "/home/user", img, "pwd"])
        .assert_ok()
        .assert_stdout("/home/user");
}

#[test]
fn missing_workdir_is_created() {
    let Some(t) = Nook::new() else { return };
    t.nook(&["run", "--rm", "-w", "/does/not/exist", t.image(), "pwd"])
        .assert_ok()
        .assert_stdout("/does/not/exist");
}

#[test]
fn the_caller_is_root_in_the_container() {
    let Some(t) = Nook::new() else { return };
    let img = t.image();
    let script = "id -u; id -g; id -un";
    let expected = ["0", "0", "root"];
    for user in [None, Some("0:0"), Some("0"), Some("root")] {
        let mut args = vec!["run", "--rm"];
        if let Some(user) = user {
            args.extend(["-u", user]);
        }
        args.extend([img, "sh", "-c", script]);
        let out = t.nook(&args);
        out.assert_ok();
        assert_eq!(out.lines(), expected, "with -u {user:?}\n{out}");
    }
}

#[test]
fn user_option_takes_ids_or_names_from_the_images_passwd() {
    let Some(t) = Nook::new() else { return };
    if !t.has_subids() {
        return;
    }
    let img = t.image();
    for user in ["1000:1000", "1000", "user"] {
        t.nook(&[
            "run",
            "--rm",
            "-u",
            user,
            img,
            "sh",
            "-c",
            "id -u; id -g; id -un",
        ])
        .assert_ok()
        .assert_stdout("1000\n1000\nuser");
    }
}

#[test]
fn a_user_without_subordinate_ids_can_run_containers() {
    let Some(t) = Nook::new_without_subids() else {
        return;
    };
    t.sh("echo written > /tmp/f && cat /tmp/f && id -u")
        .assert_ok()
        .assert_stdout("written\n0");
}

#[test]
fn podman_spellings_mean_what_they_mean_in_podman() {
    let Some(t) = Nook::new() else { return };
    let img = t.image();
    // -h is --hostname; --help stays help.
    t.nook(&["run", "--rm", "-h", "myhost", img, "hostname"])
        .assert_ok()
        .assert_stdout("myhost");
    let help = t.nook(&["run", "--help"]);
    help.assert_ok();
    assert!(help.stdout.contains("-h, --hostname"), "{help}");
    // Everything after the image is the command, options of nook's included.
    t.nook(&[
        "run", "--rm", img, "printf", "%s\\n", "-e", "X", "--rm", "-h",
    ])
    .assert_ok()
    .assert_stdout("-e\nX\n--rm\n-h");
    t.nook(&["run", "--rm", img, "sh", "-c", "echo \"$X\"", "-e", "X=1"])
        .assert_ok()
        .assert_stdout("");
    assert!(t.ps().is_empty(), "{:?}", t.ps());
}
