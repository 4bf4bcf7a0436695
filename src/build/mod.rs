//! `nook build`, the pure parts so far:
//! - `containerfile`: reading a Containerfile into instructions;
//! - `stages`: the stages it makes, checked before anything runs;
//! - `expand`: Docker's variable expansion;
//! - `ignore`: the ignore-file rules;
//! - `context`: the build context's sources and their content hash;
//! - `key`: the step cache's keys.
//!
//! The executor that runs the steps is not written yet.

pub mod containerfile;
pub mod context;
pub mod executor;
pub mod expand;
pub mod ignore;
pub mod key;
pub mod stages;
