//! nook: rootless Linux containers over plain-directory images.
//!
//! Layers, top to bottom (dependencies point down only): `cli` → `commands` → `container`,
//! `backend`, `config` → `spec` → `launch` → `idmap`, `rootfs`, `fuse`, `copy`,
//! `whiteout`, `security` → `sys`.

pub mod archive;
pub mod backend;
pub mod cli;
pub mod commands;
pub mod config;
pub mod container;
pub mod copy;
pub mod fsutil;
pub mod fuse;
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
pub mod whiteout;
