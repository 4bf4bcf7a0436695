//! nook: rootless Linux containers over plain-directory images.
//!
//! Layers, top to bottom (dependencies point down only): `cli` → `commands` → `container`,
//! `image` (`archive`, `layer`, `tree`, `upper`), `backend`, `config` → `spec` → `launch` →
//! `idmap`, `rootfs`, `fuse`, `copy`, `security` → `sys`.

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
pub mod net;
pub mod oci_state;
pub mod rootfs;
pub mod security;
pub mod spec;
pub mod sys;
pub mod tree;
pub mod upper;
