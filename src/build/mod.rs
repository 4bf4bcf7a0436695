//! `nook build`:
//! - `containerfile`: reading a Containerfile into instructions;
//! - `stages`: the stages it makes, checked before anything runs;
//! - `expand`: Docker's variable expansion;
//! - `ignore`: the ignore-file rules;
//! - `context`: the build context's sources and their content hash;
//! - `key`: the step cache's keys;
//! - `executor`: running the steps (RUN through `nook run`, results through the image store).

pub mod containerfile;
pub mod context;
pub mod executor;
pub mod expand;
pub mod ignore;
pub mod key;
pub mod stages;
