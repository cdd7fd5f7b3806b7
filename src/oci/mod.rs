//! OCI images: the image model, the content store, tags and layouts.
//!
//! - [`digest`]: sha256 digests and the hashing writer every blob goes through.
//! - [`media`]: OCI and Docker v2 schema 2 media types.
//! - [`model`]: parsed manifests and indexes, platform selection, history.
//! - [`store`]: the local content-addressed store and its tags.
//! - [`layer`]: turning an uncompressed tar stream into a layer blob + diff_id.
//! - [`layout`]: OCI image layouts (dir and tar) and Docker archives.
//! - [`docker_media`]: an image's manifests with Docker media types (`oci-mediatypes=false`).
//! - [`docker_engine`]: handing an image to a Docker engine through the `docker` CLI.
//! - [`import`]: a root file system tar as a one-layer image (`kiln import`).

pub mod archive;
pub mod digest;
pub mod docker_engine;
pub mod docker_media;
pub mod file_mode;
pub mod import;
pub mod layer;
pub mod layout;
pub mod media;
pub mod model;
pub mod store;

pub use oci_spec::image::{Descriptor, Digest, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
pub use layer::{Compression, Layer, LayerWriter};
pub use model::{Image, Manifest};
pub use store::{Ingest, Store, StoreError, TaggedImage};
