//! Layers as read-only EROFS disk images, made on the host and cached, so
//! the guest mounts a layer instead of unpacking it under emulation.
//!
//! An image is keyed by the layer blob's digest (verified while it is read,
//! so an image config that lies about a diff_id cannot poison the cache)
//! and lives under a directory named for the EROFS writer's sources
//! (`KILN_EROFS_FORMAT`, from build.rs) and the disk size: a change to
//! either makes every image again, and the stale directories are removed.
//! Images are padded (sparsely) to [`LAYER_DISK_SIZE`]. Images appear by
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
    #[error("layer {digest}: its image ({len} bytes) exceeds a layer disk")]
    TooLarge { digest: String, len: u64 },
    #[error("layer {digest}: {source}")]
    Store { digest: String, source: crate::oci::store::StoreError },
}

use crate::vm::{LAYER_DISK_SIZE, LAYER_DISK_SLOTS};

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
        LayerImages { dir: cache_dir.join("layer-images").join(format!("{FORMAT}-{}g", LAYER_DISK_SIZE >> 30)) }
    }

    /// Whether layer disks are wanted (they are unless [`ENV_SWITCH`] says no).
    pub fn enabled() -> bool {
        !matches!(std::env::var(ENV_SWITCH).as_deref(), Ok("0" | "off" | "false"))
    }

    /// How many of `layers` have no image yet.
    pub fn missing(&self, layers: &[LayerRef]) -> usize {
        layers.iter().filter(|l| !self.path(l).is_file()).count()
    }

    /// Images of the distinct `layers` (the first [`LAYER_DISK_SLOTS`]),
    /// made where missing. A layer that does not convert (or a full cache
    /// disk) is left out, to be unpacked in the guest instead.
    pub fn disks(&self, store: &Store, layers: &[LayerRef]) -> LayerDisks {
        let mut disks = LayerDisks::default();
        for layer in layers {
            if disks.images.len() == LAYER_DISK_SLOTS || disks.images.iter().any(|(d, _)| *d == layer.diff_id) {
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
        // Every disk has one size (sparse past the image), so any image fits
        // any slot of a machine restored from a boot snapshot.
        let len = tmp.as_file().metadata().map_err(io_err)?.len();
        if len > LAYER_DISK_SIZE {
            return Err(LayerImageError::TooLarge { digest, len });
        }
        crate::vm::scratch::set_sparse_len(tmp.as_file(), LAYER_DISK_SIZE).map_err(io_err)?;
        tmp.persist(&path).map_err(|e| io_err(e.error))?;
        Ok(path)
    }

    /// The length of the EROFS image in the cached file `image` (past it
    /// the file is a sparse pad); None when its superblock is damaged.
    pub fn data_len(image: &Path) -> Option<u64> {
        let mut head = [0u8; 2048];
        io::Read::read_exact(&mut std::fs::File::open(image).ok()?, &mut head).ok()?;
        erofs::layout::image_len(&head)
    }

    /// Creates this format's directory, removing other formats' images.
    fn prepare_dir(&self) -> Result<(), LayerImageError> {
        crate::dirs::create_format_dir(&self.dir).map_err(|source| LayerImageError::Io { path: self.dir.clone(), source })
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

// The tests check sparseness and inodes through Unix extensions.
#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::oci::media;
    use oci_spec::image::MediaType;
    use std::os::unix::fs::MetadataExt;

    fn layer(store: &Store, path: &str, data: &[u8]) -> LayerRef {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`; a layer may still hold it, so write the name raw.
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
        let tar = b.into_inner().unwrap();
        let descriptor = store.put_blob_bytes(&tar, MediaType::Other(media::OCI_LAYER_TAR.into())).unwrap();
        LayerRef { diff_id: descriptor.digest().to_string(), descriptor }
    }

    fn setup() -> (tempfile::TempDir, Store, LayerImages) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let images = LayerImages::new(&dir.path().join("cache"));
        (dir, store, images)
    }

    #[test]
    fn an_image_is_made_once_then_reused() {
        let (_dir, store, images) = setup();
        let l = layer(&store, "etc/motd", b"hello\n");
        assert_eq!(images.missing(std::slice::from_ref(&l)), 1);
        let path = images.image(&store, &l).unwrap();
        let mut head = [0u8; 2048];
        std::io::Read::read_exact(&mut std::fs::File::open(&path).unwrap(), &mut head).unwrap();
        assert_eq!(head[1024..1028], [0xe2, 0xe1, 0xf5, 0xe0], "an EROFS superblock");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), LAYER_DISK_SIZE, "padded to the disk size");
        assert!(meta.blocks() * 512 < 1 << 20, "sparsely: {} blocks", meta.blocks());
        let ino = std::fs::metadata(&path).unwrap().ino();
        assert_eq!(images.missing(std::slice::from_ref(&l)), 0);
        assert_eq!(images.image(&store, &l).unwrap(), path);
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino, "not written again");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temp file left: {names:?}");
    }

    #[test]
    fn a_layer_that_does_not_convert_gets_no_disk_and_leaves_nothing() {
        let (_dir, store, images) = setup();
        let good = layer(&store, "etc/motd", b"hello\n");
        let bad = layer(&store, "../escape", b"x");
        let disks = images.disks(&store, &[bad.clone(), good.clone(), good.clone()]);
        let ids: Vec<&str> = disks.images.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(ids, [good.diff_id.as_str()], "the bad layer is left out, the good one attached once");
        assert_eq!(std::fs::read_dir(&images.dir).unwrap().count(), 1, "no temp file of the failed conversion");
    }

    #[test]
    fn other_formats_and_images_of_pruned_blobs_are_removed() {
        let (dir, store, images) = setup();
        let old = dir.path().join("cache/layer-images/0123456789abcdef");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("sha256-00.erofs"), b"old").unwrap();
        let kept = images.image(&store, &layer(&store, "a", b"a")).unwrap();
        assert!(!old.exists(), "another writer's images are gone");

        let orphan = images.dir.join(format!("sha256-{}.erofs", "ab".repeat(32)));
        std::fs::write(&orphan, b"orphan").unwrap();
        let in_progress = images.dir.join(".tmpXYZ");
        std::fs::write(&in_progress, b"being written").unwrap();
        assert_eq!(images.prune(&store), (1, 6));
        assert!(kept.exists() && in_progress.exists() && !orphan.exists());
    }
}
