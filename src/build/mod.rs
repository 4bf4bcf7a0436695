//! `nook build`: the pure parts so far — reading a Containerfile (`containerfile`), Docker's
//! variable expansion (`expand`), the ignore-file rules (`ignore`) and the build context's
//! sources and their content hash (`context`), and the stages a Containerfile makes, checked
//! before anything runs (`stages`). The executor that runs the steps is not written yet.

pub mod containerfile;
pub mod context;
pub mod expand;
pub mod ignore;
pub mod stages;
