//! Layers as read-only EROFS disk images, made on the host and cached, so
//! the guest mounts a layer instead of unpacking it under emulation.
//!
//! An image is keyed by the layer blob's digest (verified while it is read,
//! so an image config that lies about a diff_id cannot poison the cache)
//! and lives under a directory named for the EROFS writer's sources
//! (`KILN_EROFS_FORMAT`, from build.rs): a change to the writer makes every
//! image again, and the stale directories are removed. Images appear by
//! renaming a finished temp file, so a crash never leaves a half image.

use std::io;
use std::path::{Path, PathBuf};

use super::erofs;
use super::progress::StepLog;
use super::vm_session::LayerRef;
use crate::oci::layer::open_layer;
use crate::oci::store::Store;

/// Which writer made the cached images.
const FORMAT: &str = env!("KILN_EROFS_FORMAT");

/// Set to `0` or `off` to unpack every layer in the guest instead.
pub const ENV_SWITCH: &str = "KILN_LAYER_DISKS";

#[derive(Debug, thiserror::Error)]
pub enum LayerImageError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("layer {digest}: {source}")]
    Convert { digest: String, source: erofs::ErofsError },
    #[error("layer {digest}: {source}")]
    Store { digest: String, source: crate::oci::store::StoreError },
}

/// At most this many layers are attached to a VM as disks (each takes a
/// PCI slot); layers past it are unpacked.
const MAX_LAYER_DISKS: usize = 16;

/// The layers a VM gets as disks: (diff_id, image) in attach order.
#[derive(Debug, Default)]
pub struct LayerDisks {
    pub images: Vec<(String, PathBuf)>,
}

impl LayerDisks {
    /// The disks for a VM whose first command runs over `layers` (none when
    /// [`ENV_SWITCH`] is off). Making missing images shows as a step of
    /// `progress`.
    pub fn for_boot(store: &Store, layers: &[LayerRef], progress: Option<&StepLog>) -> LayerDisks {
        if !LayerImages::enabled() {
            return LayerDisks::default();
        }
        let images = LayerImages::new(&crate::dirs::cache_dir());
        match (images.missing(layers), progress) {
            (0, _) | (_, None) => images.disks(store, layers),
            (n, Some(progress)) => {
                let made = progress.step(&format!("[internal] making disk images of {n} layers"), || {
                    Ok::<_, std::convert::Infallible>(images.disks(store, layers))
                });
                made.unwrap_or_else(|never| match never {})
            }
        }
    }
}

/// The cache of layer images under kiln's cache directory.
pub struct LayerImages {
    dir: PathBuf,
}

impl LayerImages {
    pub fn new(cache_dir: &Path) -> Self {
        LayerImages { dir: cache_dir.join("layer-images").join(FORMAT) }
    }

    /// Whether layer disks are wanted (they are unless [`ENV_SWITCH`] says no).
    pub fn enabled() -> bool {
        !matches!(std::env::var(ENV_SWITCH).as_deref(), Ok("0" | "off" | "false"))
    }

    /// How many of `layers` have no image yet.
    pub fn missing(&self, layers: &[LayerRef]) -> usize {
        layers.iter().filter(|l| !self.path(l).is_file()).count()
    }

    /// Images of the distinct `layers` (the first [`MAX_LAYER_DISKS`]),
    /// made where missing. A layer that does not convert (or a full cache
    /// disk) is left out, to be unpacked in the guest instead.
    pub fn disks(&self, store: &Store, layers: &[LayerRef]) -> LayerDisks {
        let mut disks = LayerDisks::default();
        for layer in layers {
            if disks.images.len() == MAX_LAYER_DISKS || disks.images.iter().any(|(d, _)| *d == layer.diff_id) {
                continue;
            }
            if let Ok(image) = self.image(store, layer) {
                disks.images.push((layer.diff_id.clone(), image));
            }
        }
        disks
    }

    fn path(&self, layer: &LayerRef) -> PathBuf {
        self.dir.join(format!("{}.erofs", layer.descriptor.digest().to_string().replace(':', "-")))
    }

    /// The image of `layer`, made now if the cache has none.
    pub fn image(&self, store: &Store, layer: &LayerRef) -> Result<PathBuf, LayerImageError> {
        let digest = layer.descriptor.digest().to_string();
        let path = self.path(layer);
        if path.is_file() {
            return Ok(path);
        }
        self.prepare_dir()?;
        let io_err = |source| LayerImageError::Io { path: path.clone(), source };
        let tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io_err)?;
        let store_err = |source| LayerImageError::Store { digest: digest.clone(), source };
        let mut tar = open_layer(store, &layer.descriptor).map_err(store_err)?;
        let out = io::BufWriter::with_capacity(1 << 20, tmp);
        let (out, _) = erofs::from_tar(&mut tar, out)
            .map_err(|source| LayerImageError::Convert { digest: digest.clone(), source })?;
        // Read to the end: the blob's digest is checked there.
        io::copy(&mut tar, &mut io::sink()).map_err(io_err)?;
        let tmp = out.into_inner().map_err(|e| io_err(e.into_error()))?;
        tmp.persist(&path).map_err(|e| io_err(e.error))?;
        Ok(path)
    }

    /// Creates this format's directory, removing other formats' images.
    fn prepare_dir(&self) -> Result<(), LayerImageError> {
        if self.dir.is_dir() {
            return Ok(());
        }
        let parent = self.dir.parent().expect("format dir has a parent");
        if let Ok(entries) = std::fs::read_dir(parent) {
            for entry in entries.flatten() {
                if entry.file_name() != FORMAT {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| LayerImageError::Io { path: self.dir.clone(), source })
    }

    /// Removes the images of blobs `store` no longer has (after a prune).
    pub fn prune(&self, store: &Store) -> (usize, u64) {
        let (mut count, mut bytes) = (0, 0);
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return (0, 0) };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Another kiln may be writing this one right now.
            let fresh = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            if name.starts_with(".tmp") && fresh.is_some_and(|age| age.as_secs() < 3600) {
                continue;
            }
            let digest = name.strip_suffix(".erofs").map(|d| d.replacen('-', ":", 1));
            let kept = digest
                .and_then(|d| crate::oci::digest::parse(&d).ok())
                .is_some_and(|d| store.has_blob(&d));
            if !kept {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                if std::fs::remove_file(entry.path()).is_ok() {
                    count += 1;
                    bytes += len;
                }
            }
        }
        (count, bytes)
    }
}
