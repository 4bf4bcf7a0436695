//! The stores: images (plain directories, imported, committed, exported) and containers (their
//! upper layers and OCI state), with the archive and layer formats they read and write.

pub mod archive;
pub mod blobs;
pub mod container;
pub mod image;
pub mod layer;
pub mod names;
pub mod oci_state;
pub mod tags;
pub mod tree;
pub mod upper;
pub mod usage;
