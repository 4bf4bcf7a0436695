//! nook: rootless Linux containers over plain-directory images.
//!
//! Layers, top to bottom (dependencies point down only): `cli` → `commands` → `container` →
//! `spec` → `launch` → `idmap`, `rootfs`, `security` → `sys`.

pub mod archive;
pub mod cli;
pub mod commands;
pub mod container;
pub mod fsutil;
pub mod hooks;
pub mod idmap;
pub mod image;
pub mod launch;
pub mod layer;
pub mod oci_state;
pub mod rootfs;
pub mod security;
pub mod spec;
pub mod sys;
pub mod tree;
pub mod upper;
