//! The container's half of the /proc/PID/exe attack (CVE-2019-5736), shared by the tests that
//! race it against nook: `tests/fixtures/exe-grabber.sh`, run from a directory the container
//! mounts at /grab, reporting there.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{wait_until, Nook};

const SCRIPT: &str = include_str!("../fixtures/exe-grabber.sh");

/// Where the container mounts the grabber's directory.
pub const MOUNT: &str = "/grab";

/// The command that runs the grabber in the container: on every process, or on `pids`.
pub fn command(pids: &[&str]) -> Vec<String> {
    let mut args = vec!["sh".to_string(), format!("{MOUNT}/grab.sh"), MOUNT.into()];
    args.extend(pids.iter().map(|p| p.to_string()));
    args
}

/// The grabber's host directory, with the script in it.
pub fn install(t: &Nook) -> PathBuf {
    let dir = t.mkdir("grab");
    t.write_file("grab/grab.sh", SCRIPT);
    dir
}

/// Waits until the grabber has made one pass over the processes.
#[track_caller]
pub fn wait_started(dir: &Path) {
    assert!(
        wait_until(Duration::from_secs(10), || report_text(dir)
            .contains("tried")),
        "the grabber never started:\n{}",
        report_text(dir)
    );
}

/// Tells the grabber that no nook process is left (so the binary is no longer busy) and
/// returns its report once it has tried to write through any handle it got.
#[track_caller]
pub fn finish(t: &Nook, dir: &Path) -> String {
    t.write_file(dir.join("done"), "");
    let finished = wait_until(Duration::from_secs(20), || {
        report_text(dir).lines().any(|l| l == "end")
    });
    let report = report_text(dir);
    assert!(finished, "the grabber did not finish:\n{report}");
    report
}

/// Fails unless the grabber never got a handle on anything but the container's own files.
#[track_caller]
pub fn assert_no_handle(report: &str, bin: &Path) {
    assert!(
        !report.contains("handle"),
        "the container got a handle on nook's binary {}:\n{report}",
        bin.display()
    );
}

fn report_text(dir: &Path) -> String {
    fs::read_to_string(dir.join("report")).unwrap_or_default()
}
