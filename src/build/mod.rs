//! The build engine: turns a Dockerfile into an OCI image.
//!
//! - [`layer_tar`] writes an OCI layer from a list of [`LayerEntry`]s (the
//!   one tar writer: RUN snapshots and COPY/ADD both end there);
//! - [`snapshot`] reads a RUN step's file contents from the VM's scratch
//!   disk image, described by the agent's manifest;
//! - [`rootfs`] is a read-only host-side view of an image's file system,
//!   read from its layer blobs without unpacking them on the host;
//! - [`users`] resolves `USER`/`--chown` names through that view;
//! - [`context`] and [`copy`] implement COPY/ADD from the build context,
//!   another stage or an image.

pub mod context;
pub mod copy;
pub mod layer_tar;
pub mod rootfs;
pub mod snapshot;
mod tar_read;
pub mod users;

pub use kiln_protocol::{EntryKind, LayerEntry, Xattr};
