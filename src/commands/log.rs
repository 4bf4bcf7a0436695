//! Where nook's errors and warnings go: stderr, and the `--log` file in the format engines parse
//! (`--log-format json`: one `{"level","msg","time"}` object a line, as runc writes).

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::cli::LogFormat;

struct Sink {
    file: Option<PathBuf>,
    format: LogFormat,
    debug: bool,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Sets the `--log` file and format; called once by `main`.
pub fn init(file: Option<PathBuf>, format: LogFormat, debug: bool) {
    let _ = SINK.set(Sink {
        file,
        format,
        debug,
    });
}

fn write(level: &str, msg: &str) {
    let Some(sink) = SINK.get() else {
        eprintln!("nook: {msg}");
        return;
    };
    if let Some(path) = &sink.file {
        let line = match sink.format {
            LogFormat::Json => serde_json::json!({
                "level": level,
                "msg": msg,
                "time": crate::storage::container::now_rfc3339(),
            })
            .to_string(),
            LogFormat::Text => format!(
                "{} {level}: {msg}",
                crate::storage::container::now_rfc3339()
            ),
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
    if level != "debug" || sink.debug {
        eprintln!(
            "nook: {}{msg}",
            if level == "warning" { "warning: " } else { "" }
        );
    }
}

pub fn error(msg: &str) {
    write("error", msg);
}

pub fn warn(msg: &str) {
    write("warning", msg);
}

pub fn debug(msg: &str) {
    if SINK.get().is_some_and(|s| s.debug) {
        write("debug", msg);
    }
}
