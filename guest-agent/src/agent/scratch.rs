//! The scratch disk: where it is mounted, and host-supplied paths confined under it.

use std::path::{Component, Path, PathBuf};

/// Where the scratch disk (the first virtio-blk disk) is mounted.
pub const SCRATCH: &str = "/scratch";

/// Resolves a host-supplied path under the scratch mount, refusing `..`.
pub fn scratch_path(rel: &str) -> Result<PathBuf, String> {
    let rel = Path::new(rel.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("path {rel:?} must stay under the scratch disk"));
    }
    Ok(Path::new(SCRATCH).join(rel))
}
