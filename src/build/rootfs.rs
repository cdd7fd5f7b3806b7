//! A read-only view of an image's merged file system, built from its layer
//! blobs in the store on the host without unpacking anything to disk.
//! (Interface fixed; implementation owned by the `layers` branch.)

use std::io;

use kiln_protocol::LayerEntry;
use oci_spec::image::Descriptor;

use super::layer_tar::ContentSource;
use crate::oci::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading layer {digest}: {source}")]
    Layer { digest: String, source: io::Error },
    #[error("{path}: {message}")]
    Path { path: String, message: String },
}

/// The merged view: every path's final entry after whiteouts.
#[derive(Debug, Default, Clone)]
pub struct LayerStack {}

impl LayerStack {
    pub fn empty() -> Self {
        LayerStack {}
    }

    /// Indexes `layers` (bottom first) in one streaming pass each.
    pub fn open(_store: &Store, _layers: &[Descriptor]) -> Result<Self, RootfsError> {
        unimplemented!("layers branch")
    }

    /// Adds a layer on top (a step's new layer) without re-reading the ones below.
    pub fn push(&mut self, _store: &Store, _layer: &Descriptor) -> Result<(), RootfsError> {
        unimplemented!("layers branch")
    }

    /// The entry at `path` (relative, normalised), symlinks not followed.
    pub fn entry(&self, _path: &str) -> Option<&LayerEntry> {
        unimplemented!("layers branch")
    }

    /// `path` with every symlink in it resolved, confined to the root
    /// (`..` never climbs above it; absolute link targets start at it).
    /// The result need not exist. Errors on a symlink loop.
    pub fn resolve(&self, _path: &str) -> Result<String, RootfsError> {
        unimplemented!("layers branch")
    }

    /// The content of the regular file at `path` (symlinks followed), if any.
    pub fn read_file(&self, _store: &Store, _path: &str) -> Result<Option<Vec<u8>>, RootfsError> {
        unimplemented!("layers branch")
    }

    /// Entries at and below `path` (relative, normalised; "" is the root), sorted.
    pub fn walk(&self, _path: &str) -> Vec<&LayerEntry> {
        unimplemented!("layers branch")
    }

    /// Copies the contents of the given regular-file paths into a private
    /// spool file (each layer blob read once), to feed [`super::layer_tar::write_layer`].
    pub fn spool(&self, _store: &Store, _paths: &[String]) -> Result<Box<dyn ContentSource>, RootfsError> {
        unimplemented!("layers branch")
    }
}
