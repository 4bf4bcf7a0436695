//! `nook build`: the pure parts (variable expansion so far).

pub mod expand;
