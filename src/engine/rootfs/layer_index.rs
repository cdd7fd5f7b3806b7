//! What indexing a layer blob found (its entries, whiteouts, opaque
//! directories and where each file's bytes start), kept beside the store so
//! that a layer is decompressed and parsed once, not on every build that
//! looks at its files (a COPY's destination, a USER or `--chown` lookup):
//! a warm build then reads no layer at all.
//!
//! An index lives in `<store>/layer-index/<format>/<hex digest>.json`. The
//! format is a hash of the sources that parse layers (build.rs), so a change
//! there indexes every layer again, and other formats' directories are
//! removed. An index is used only while its blob is unchanged since kiln
//! last knew it intact ([`Store::blob_is_intact`]); one that cannot be read
//! is dropped and the layer indexed again. Indexes appear by renaming a
//! finished temp file; `kiln prune` removes those of deleted blobs.

use std::fs;
use std::path::PathBuf;

use oci_spec::image::Descriptor;

use super::{Item, Node, ParsedLayer};
use crate::oci::store::{Store, LAYER_INDEX_DIR};

/// Which parser made the stored indexes.
const FORMAT: &str = env!("KILN_LAYER_INDEX_FORMAT");

fn dir(store: &Store) -> PathBuf {
    store.root().join(LAYER_INDEX_DIR).join(FORMAT)
}

fn path(store: &Store, layer: &Descriptor) -> PathBuf {
    dir(store).join(format!("{}.json", layer.digest().digest()))
}

/// The stored index of `layer`, as the `index`th layer of a stack.
pub(super) fn load(store: &Store, layer: &Descriptor, index: usize) -> Option<ParsedLayer> {
    let path = path(store, layer);
    let bytes = fs::read(&path).ok()?;
    if !store.blob_is_intact(layer) {
        return None;
    }
    let parsed = serde_json::from_slice::<ParsedLayer>(&bytes).ok().filter(confined);
    let Some(mut parsed) = parsed else {
        let _ = fs::remove_file(&path);
        return None;
    };
    for item in &mut parsed.items {
        if let Item::Node(Node { content: Some(content), .. }) = item {
            content.layer = index;
        }
    }
    Some(parsed)
}

/// Whether every path in `parsed` is one the indexer could have written
/// (normalised, no `..`): an index is a file like any other, and paths from
/// it must not escape the root either.
fn confined(parsed: &ParsedLayer) -> bool {
    let normal = |p: &str| super::layer_path(p).is_ok_and(|n| n == p);
    parsed.whiteouts.iter().chain(&parsed.opaque).all(|p| normal(p))
        && parsed.items.iter().all(|item| match item {
            Item::Node(node) => normal(&node.entry.path),
            Item::Hardlink { entry, target } => normal(&entry.path) && normal(target),
        })
}

/// Stores `parsed` as `layer`'s index. Best effort: without it the next
/// build indexes the layer again.
pub(super) fn save(store: &Store, layer: &Descriptor, parsed: &ParsedLayer) {
    let Ok(json) = serde_json::to_vec(parsed) else { return };
    if crate::dirs::create_format_dir(&dir(store)).is_ok() {
        let _ = crate::dirs::write_atomically(&path(store, layer), &json);
    }
}
