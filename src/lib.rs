//! kiln: builds OCI images from Dockerfiles for foreign CPU architectures by
//! running each step in a full-system-emulated VM instead of qemu-user.
//!
//! Layout: [`dockerfile`] parses and expands Dockerfiles, [`oci`] is the image
//! model and local store, [`registry`] talks to registries, [`vm`] boots guest
//! kernels and talks to the guest agent, [`engine`] runs builds, [`run`] runs
//! images, [`cli`] maps
//! command lines onto all of that.

pub mod cancel;
pub mod cli;
pub mod dirs;
pub mod dockerfile;
pub mod engine;
pub mod oci;
pub mod platform;
pub mod registry;
pub mod run;
pub mod vm;
#[cfg(windows)]
pub mod win32;
