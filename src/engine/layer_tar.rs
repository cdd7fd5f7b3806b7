//! One deterministic tar writer for every layer kiln creates, in the format
//! Docker and BuildKit write (Go's archive/tar), so equal input gives equal
//! bytes: the entry points and their types. [`plan`] decides what goes in
//! the layer and in which order; [`ustar`] encodes it.

mod plan;
#[cfg(test)]
pub(crate) mod tests;
mod ustar;

use std::io::{self, BufWriter, Read, Write};

pub use kiln_protocol::layer_entry::path_order;
use kiln_protocol::LayerEntry;

use crate::oci::layer::{Compression, Layer, LayerWriter};
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
///
/// When hardlinked entries are reordered by sorting (a link sorts before the
/// entry holding the content), the content is still asked for with the
/// entry that had `link: None`, at the position of the first path of the
/// group, which the tar then holds as the regular file.
pub trait ContentSource {
    fn open(&mut self, entry: &LayerEntry) -> io::Result<Box<dyn Read + '_>>;
}

/// For tars with no regular files.
pub struct NoContent;

impl ContentSource for NoContent {
    fn open(&mut self, entry: &LayerEntry) -> io::Result<Box<dyn Read + '_>> {
        Err(io::Error::other(format!("{}: no content source", entry.path)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LayerTarError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the layer entry {path}: {source}")]
    Entry { path: String, source: io::Error },
    #[error("{path}: the manifest says {expected} bytes, the content has {actual}")]
    SizeMismatch { path: String, expected: u64, actual: u64 },
    #[error("/{path}: names starting with .wh. mark deletions in image layers, so no file can have one")]
    ReservedName { path: String },
}

/// Writes `entries` (sorted here into layer order: parents before children) as
/// an OCI layer into `store`. Returns `None` when `entries` is empty: an
/// empty diff adds no layer. An entry for the root directory itself (empty
/// path) is not written, as in Docker's layers.
pub fn write_layer(
    store: &Store,
    entries: &mut Vec<LayerEntry>,
    contents: &mut dyn ContentSource,
    opts: &LayerOptions,
) -> Result<Option<Layer>, LayerTarError> {
    entries.retain(|e| !e.path.is_empty());
    if entries.is_empty() {
        return Ok(None);
    }
    let writer = LayerWriter::new(store.blob_writer()?, opts.compression)?;
    let writer = plan::write_entries(entries, contents, opts, BufWriter::with_capacity(1 << 18, writer))?;
    let writer = writer
        .into_inner()
        .map_err(|e| LayerTarError::Entry { path: "(end of archive)".into(), source: e.into_error() })?;
    Ok(Some(writer.finish()?))
}

/// Writes `entries` as a plain tar to `out` (cache volumes kept on the
/// host), by the same rules as [`write_layer`]; no entries give an empty archive.
pub fn write_tar(
    entries: &mut Vec<LayerEntry>,
    contents: &mut dyn ContentSource,
    opts: &LayerOptions,
    out: &mut dyn Write,
) -> Result<(), LayerTarError> {
    entries.retain(|e| !e.path.is_empty());
    let out = plan::write_entries(entries, contents, opts, out)?;
    out.flush().map_err(|source| LayerTarError::Entry { path: "(end of archive)".into(), source })
}
