//! The build engine: turns a Dockerfile into an OCI image. A RUN's path,
//! top down: [`executor`] → [`vm_session`] → the VM (`crate::vm`) →
//! [`snapshot`] and [`layer_tar`] (docs/ARCHITECTURE.md draws it).
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

pub mod annotations;
mod base_image;
pub mod cache;
pub mod cache_exchange;
pub mod context;
pub mod copy;
pub mod executor;
pub mod fs_export;
pub mod image_config;
pub mod layer_images;
pub mod layer_tar;
mod manifest;
pub mod named_context;
pub mod remote_context;
pub mod progress;
pub mod rootfs;
pub mod run_mounts;
pub mod run_options;
pub mod snapshot;
/// The one tar reader of kiln, shared with the guest agent's layer unpack.
use kiln_protocol::tar_read;
pub mod erofs;
pub mod users;
pub mod vm_session;

pub use executor::{BuildOutcome, BuildRequest, Builder};
pub use kiln_protocol::{EntryKind, LayerEntry, Xattr};

/// A path that `confined_path` resolved in an image or context tree, as
/// those trees spell paths: `/`-separated on every host (a `PathBuf` joins
/// with `\\` on Windows).
pub(crate) fn slash_path(path: &std::path::Path) -> String {
    let parts: Vec<&str> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(p) => Some(p.to_str().expect("joined from UTF-8 parts")),
            std::path::Component::ParentDir => Some(".."),
            _ => None,
        })
        .collect();
    parts.join("/")
}

/// Why a build stopped. Step failures carry the Dockerfile, line and cause.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Dockerfile(#[from] crate::dockerfile::Error),
    #[error("{0}")]
    Step(crate::dockerfile::Error),
    #[error(transparent)]
    Session(#[from] vm_session::SessionError),
    #[error(transparent)]
    Mount(#[from] run_mounts::MountError),
    #[error(transparent)]
    Store(#[from] crate::oci::StoreError),
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    #[error(transparent)]
    Layer(#[from] layer_tar::LayerTarError),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    User(#[from] users::UserError),
    #[error(transparent)]
    Context(#[from] context::ContextError),
    #[error(transparent)]
    Interrupted(#[from] crate::cancel::Interrupted),
}

impl BuildError {
    /// What the failed step's `#N ERROR:` line says: the step's own message
    /// without the Dockerfile position (the final error shows that).
    pub fn step_message(&self) -> String {
        match self {
            BuildError::Step(e) => match &*e.kind {
                crate::dockerfile::ErrorKind::Step(message) => progress::first_line(message),
                kind => progress::first_line(&kind.to_string()),
            },
            e => progress::first_line(&e.to_string()),
        }
    }
}
