//! The Podman runtime: libpod's REST API v4 (Podman 4.0 and later), for hosts that have Podman
//! and no containerd. This first part maps ecsd's OCI spec to libpod's create format.

#[cfg(test)]
mod golden;
pub mod specgen;

pub use self::specgen::{RlimitPair, SpecGenerator, SpecgenError, SpecgenInput, to_specgen};
