//! The registry client: references, registries.conf, credentials, the `/v2/` HTTP API with
//! its token flow, and pulls into the image store through the blob cache. Only the verbs that
//! talk to registries (`pull`, `push`, `login`, `logout`, `run` of a missing image) reach this code:
//! `nook run` of an image that is there never does.

pub mod auth;
pub mod client;
pub mod conf;
pub mod progress;
pub mod pull;
pub mod push;
pub mod reference;
