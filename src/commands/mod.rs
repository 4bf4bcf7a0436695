//! One function per verb: turns parsed arguments into calls to the layers below.

mod containers;
mod run;

pub use containers::{logs, ps, rm, stop};
pub use run::run;
