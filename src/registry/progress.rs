//! What a pull shows while it works: on a terminal one bar per layer (bytes and rate), as
//! podman does; otherwise nothing until the final line; with `--format json`, one JSON event
//! per line on stdout for tools.

use std::io::Write;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::pull::Descriptor;
use super::reference::Reference;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bars on a terminal, the final line on stderr.
    Human,
    /// Nothing on stderr.
    Quiet,
    /// JSON events on stdout.
    Json,
}

pub struct Progress {
    mode: Mode,
    bars: Option<MultiProgress>,
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

impl Progress {
    pub fn new(mode: Mode) -> Progress {
        use std::io::IsTerminal;
        let terminal =
            std::io::stderr().is_terminal() && !std::env::var("TERM").is_ok_and(|t| t == "dumb");
        let bars = (mode == Mode::Human && terminal).then(|| {
            MultiProgress::with_draw_target(ProgressDrawTarget::term_like_with_hz(
                Box::new(console::Term::stderr()),
                10,
            ))
        });
        Progress { mode, bars }
    }

    fn event(&self, value: serde_json::Value) {
        if self.mode == Mode::Json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{value}");
            let _ = out.flush();
        }
    }

    pub fn start(&self, r: &Reference, digest: &str, layers: &[Descriptor]) {
        self.event(json!({
            "event": "resolved",
            "reference": r.to_string(),
            "digest": digest,
            "layers": layers.iter().map(|l| json!({"digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
        }));
    }

    pub fn layer_cached(&self, index: usize, digest: &str, size: u64) {
        self.event(json!({"event": "layer", "index": index, "digest": digest, "size": size, "status": "cached"}));
        if let Some(bars) = &self.bars {
            let _ = bars.println(format!(
                "layer {} {}: cached ({})",
                index + 1,
                short(digest),
                human_bytes(size)
            ));
        }
    }

    pub fn layer_start(&self, index: usize, digest: &str, size: u64, from: u64) -> ProgressBar {
        self.event(json!({"event": "layer", "index": index, "digest": digest, "size": size, "status": "downloading", "resumed_from": from}));
        let Some(bars) = &self.bars else {
            return ProgressBar::hidden();
        };
        let bar = bars.add(
            ProgressBar::new(size).with_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            ),
        );
        bar.set_message(format!("layer {} {}", index + 1, short(digest)));
        bar.set_position(from);
        bar
    }

    pub fn layer_done(&self, index: usize, digest: &str, bar: &ProgressBar) {
        self.event(
            json!({"event": "layer", "index": index, "digest": digest, "status": "verified"}),
        );
        bar.finish();
    }

    pub fn finish(&self, name: &str, digest: &str, up_to_date: bool, elapsed: Duration) {
        self.event(json!({
            "event": "done",
            "image": name,
            "digest": digest,
            "up_to_date": up_to_date,
            "seconds": elapsed.as_secs_f64(),
        }));
        if let Some(bars) = &self.bars {
            let _ = bars.clear();
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }
}
