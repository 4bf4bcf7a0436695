//! nook: rootless Linux containers over plain-directory images.
//!
//! Layers, top to bottom (dependencies point down only; DESIGN.md): `cli` → `commands` →
//! `storage` (images, containers, archives, layers), `config` → `spec` → `launch` → `idmap`,
//! `rootfs` (the root, its backends and mounts), `security`, `net` → `sys`.

pub mod build;
pub mod cgroup;
pub mod cli;
pub mod commands;
pub mod config;
pub mod fsutil;
pub mod hooks;
pub mod idmap;
pub mod launch;
pub mod net;
pub mod registry;
pub mod rootfs;
pub mod security;
pub mod spec;
pub mod storage;
pub mod sys;
