//! One function per verb: turns parsed arguments into calls to the layers below.

mod build;
pub mod cgroups;
mod completion;
mod containers;
mod cp;
mod images;
mod info;
pub mod log;
pub mod oci;
mod podman;
mod registry;
mod restart;
mod run;
mod system;
mod tag;
mod top;

pub use build::build;
pub use completion::{completion, generate_man};
pub use containers::{inspect, logs, port, ps, rm, stop};
pub use cp::cp;
pub use images::{commit, diff, export, images, import, rmi};
pub use info::info;
pub use registry::{login, logout, prune_blobs, pull, push};
pub use restart::restart;
pub use run::run;
pub use system::{df, prune};
pub use tag::tag;
pub use top::top;

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
