//! `-t`: the command gets a terminal of its own, the size of the caller's.

mod common;

use common::Nook;

#[test]
fn tty_gives_the_command_a_terminal_of_the_callers_size() {
    let Some(t) = Nook::new() else { return };
    let out = t.run_in_pty(
        &[
            "run",
            "--rm",
            "-t",
            t.image(),
            "sh",
            "-c",
            "stty size; tty; test -t 0 && echo stdin-is-a-tty; echo TERM=$TERM",
        ],
        40,
        100,
    );
    out.assert_ok();
    let lines = out.lines();
    assert!(lines.contains(&"40 100"), "{out}");
    assert!(lines.iter().any(|l| l.starts_with("/dev/pts/")), "{out}");
    assert!(lines.contains(&"stdin-is-a-tty"), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("TERM=") && l.len() > "TERM=".len()),
        "{out}"
    );
}

#[test]
fn tty_run_reports_the_commands_exit_status() {
    let Some(t) = Nook::new() else { return };
    let out = t.run_in_pty(
        &["run", "--rm", "-t", t.image(), "sh", "-c", "exit 7"],
        24,
        80,
    );
    out.assert_code(7);
}
