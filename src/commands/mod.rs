//! One function per verb: turns parsed arguments into calls to the layers below.

mod containers;
mod images;
mod info;
pub mod log;
pub mod oci;
mod podman;
mod registry;
mod run;

pub use containers::{inspect, logs, ps, rm, stop};
pub use images::{commit, diff, export, images, import, rmi};
pub use info::info;
pub use registry::{login, logout, prune_blobs, pull, push};
pub use run::run;

use crate::cli::UsernsArg;
use crate::idmap::{Caller, IdMapping, UsernsMode};

/// The id mapping `--userns` gives the caller; prints the fallback notice unless `quiet`.
fn mapping_for(arg: UsernsArg, caller: &Caller, quiet: bool) -> IdMapping {
    let (mapping, notice) = mapping_and_notice(arg, caller);
    if let (Some(notice), false) = (notice, quiet) {
        eprintln!("nook: note: {notice}");
    }
    mapping
}

/// The mapping `--userns` gives the caller, and the note to print when it is less than asked.
fn mapping_and_notice(arg: UsernsArg, caller: &Caller) -> (IdMapping, Option<String>) {
    let mode = match arg {
        UsernsArg::Auto => UsernsMode::Auto,
        UsernsArg::Single => UsernsMode::Single,
        UsernsArg::KeepId => UsernsMode::KeepId,
    };
    IdMapping::for_mode(mode, caller)
}
