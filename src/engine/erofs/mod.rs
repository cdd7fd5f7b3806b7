//! Converts an image layer into an uncompressed EROFS image (4 KiB blocks)
//! that the guest can mount read-only as an overlayfs lower layer, as a
//! pure format transform: nothing from the layer is ever created on the
//! host, one image file is written.
//!
//! Two inputs share one streaming writer ([`writer::ErofsWriter`]):
//! - [`from_tar`], a layer tar as pulled (OCI whiteouts become overlayfs
//!   ones, as the guest's unpacker makes them: `.wh.NAME` a 0/0 character
//!   device, `.wh..wh..opq` the xattr `trusted.overlay.opaque=y`);
//! - [`from_entries`], a list of [`LayerEntry`]s with a [`ContentSource`]
//!   (RUN snapshots and COPY, already in overlayfs terms).
//!
//! [`layout`] encodes the on-disk structures, [`tree`] holds the
//! directory tree until [`writer`] lays out the metadata.

mod from_tar;
pub mod layout;
// The tests read file metadata through Unix extensions.
#[cfg(all(test, unix))]
mod tests;
mod tree;
pub mod writer;

use std::io;

use kiln_protocol::{file_name, EntryKind, LayerEntry};

pub use from_tar::from_tar;
pub use writer::{EntryMeta, ErofsWriter, NodeKind, Summary};

use super::layer_tar::ContentSource;

#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    #[error("{path}: {message}")]
    Path { path: String, message: String },
    #[error("{path}: the layer says {expected} bytes, the content differs")]
    SizeMismatch { path: String, expected: u64 },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("reading the layer tar: {0}")]
    Tar(io::Error),
    #[error("the image would exceed 2^32 blocks (16 TiB) or its root would lie past nid 65535")]
    TooLarge,
}

impl ErofsError {
    pub(crate) fn path(path: &[u8], message: &str) -> ErofsError {
        ErofsError::Path { path: String::from_utf8_lossy(path).into_owned(), message: message.to_string() }
    }
}

/// Writes `entries` as an EROFS image to `out`. Entries are taken in
/// layer order ([`kiln_protocol::sort_for_layer`]), hardlinks after
/// everything else so their targets exist; `contents` is opened once per
/// file without `link`, in that order. Sockets are skipped (as in layer
/// tars); an entry with an empty path sets the root's metadata.
pub fn from_entries<W: io::Write + io::Seek>(
    entries: &mut [LayerEntry],
    contents: &mut dyn ContentSource,
    out: W,
) -> Result<(W, Summary), ErofsError> {
    kiln_protocol::sort_for_layer(entries);
    let mut writer = ErofsWriter::new(out).map_err(|source| ErofsError::Io { path: "(superblock)".into(), source })?;
    let (links, others): (Vec<&LayerEntry>, Vec<&LayerEntry>) =
        entries.iter().partition(|e| matches!(e.kind, EntryKind::File { link: Some(_), .. }));
    for e in others.into_iter().chain(links) {
        let xattrs: Vec<(&[u8], &[u8])> = e.xattrs.iter().map(|x| (x.name.as_bytes(), x.value.as_slice())).collect();
        let meta = EntryMeta { mode: e.mode, uid: e.uid, gid: e.gid, mtime: e.mtime, mtime_nsec: e.mtime_nsec, xattrs: &xattrs };
        let path = &*file_name::to_bytes(&e.path);
        let kind = match &e.kind {
            EntryKind::File { link: Some(target), .. } => NodeKind::Hardlink { target: &file_name::to_bytes(target) },
            EntryKind::File { size, link: None } => {
                let mut reader = contents
                    .open(e)
                    .map_err(|source| ErofsError::Io { path: e.path.clone(), source })?;
                writer.add(path, NodeKind::File { size: *size }, &meta, &mut reader)?;
                continue;
            }
            EntryKind::Dir { opaque } => NodeKind::Dir { opaque: *opaque },
            EntryKind::Symlink { target } => NodeKind::Symlink { target: &file_name::to_bytes(target) },
            EntryKind::CharDevice { major, minor } => NodeKind::CharDevice { major: *major, minor: *minor },
            EntryKind::BlockDevice { major, minor } => NodeKind::BlockDevice { major: *major, minor: *minor },
            EntryKind::Fifo => NodeKind::Fifo,
            EntryKind::Socket => continue,
            EntryKind::Whiteout => NodeKind::Whiteout,
        };
        writer.add(path, kind, &meta, &mut io::empty())?;
    }
    writer.finish()
}
