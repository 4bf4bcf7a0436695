//! `nook build`: the pure parts so far — reading a Containerfile (`containerfile`), Docker's
//! variable expansion (`expand`) and the ignore-file rules (`ignore`). The executor that runs
//! the steps is not written yet.

pub mod containerfile;
pub mod expand;
pub mod ignore;
