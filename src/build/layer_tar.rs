//! One deterministic tar writer for every layer kiln creates.
//! (Interface fixed; implementation owned by the `layers` branch.)

use std::io::{self, Read};

use kiln_protocol::LayerEntry;

use crate::oci::layer::{Compression, Layer};
use crate::oci::store::{Store, StoreError};

#[derive(Debug, Clone, Copy, Default)]
pub struct LayerOptions {
    pub compression: Compression,
    /// SOURCE_DATE_EPOCH: mtimes later than this are clamped to it.
    pub source_date_epoch: Option<i64>,
}

/// Where the bytes of regular files come from. `open` is called once per
/// file entry without `link`, in the order the entries are written (sorted
/// by path).
pub trait ContentSource {
    fn open(&mut self, entry: &LayerEntry) -> io::Result<Box<dyn Read + '_>>;
}

#[derive(Debug, thiserror::Error)]
pub enum LayerTarError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the layer entry {path}: {source}")]
    Entry { path: String, source: io::Error },
    #[error("{path}: the manifest says {expected} bytes, the content has {actual}")]
    SizeMismatch { path: String, expected: u64, actual: u64 },
}

/// Writes `entries` (sorted here: parents before children, byte order) as
/// an OCI layer into `store`. Returns `None` when `entries` is empty: an
/// empty diff adds no layer.
pub fn write_layer(
    _store: &Store,
    _entries: &mut Vec<LayerEntry>,
    _contents: &mut dyn ContentSource,
    _opts: &LayerOptions,
) -> Result<Option<Layer>, LayerTarError> {
    unimplemented!("layers branch")
}

/// Writes `entries` as a plain tar to `out` (cache volumes kept on the host).
pub fn write_tar(
    _entries: &mut Vec<LayerEntry>,
    _contents: &mut dyn ContentSource,
    _opts: &LayerOptions,
    _out: &mut dyn std::io::Write,
) -> Result<(), LayerTarError> {
    unimplemented!("layers branch")
}
