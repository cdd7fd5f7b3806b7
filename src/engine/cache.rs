//! The build cache: a step's key (its parent's key, the instruction after
//! expansion, the config it runs with and the content it reads) maps to what
//! the step produced: its layer (if any) and its history entry. (Steps that
//! make layers never change the config, so none is cached.) Entries are small JSON files next to the image store, written
//! atomically; a hit is used only when its layer blob is present and whole.

use std::io::Write;
use std::path::PathBuf;

use oci_spec::image::Descriptor;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::image_config::History;
use crate::oci::store::Store;

/// A step's cache key: sha256 over length-prefixed parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CacheKey(pub String);

impl CacheKey {
    /// The key of a stage's starting point (a base image's manifest digest, `scratch`, ...).
    pub fn root(what: &str) -> Self {
        Self::derive(None, &[what.as_bytes()])
    }

    /// A child key: `parent` plus every part, each length-prefixed so that
    /// no two different part lists hash alike.
    pub fn derive(parent: Option<&CacheKey>, parts: &[&[u8]]) -> Self {
        let mut h = Sha256::new();
        h.update(b"kiln-cache-v1\0");
        if let Some(p) = parent {
            h.update(p.0.as_bytes());
        }
        for part in parts {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        CacheKey(hex::encode(h.finalize()))
    }
}

/// What a cached step produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The layer blob and its diff_id; `None` when the step changed no file.
    pub layer: Option<CachedLayer>,
    pub history: History,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedLayer {
    pub descriptor: Descriptor,
    pub diff_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("build cache {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// The cache directory (one file per key).
pub struct BuildCache {
    dir: PathBuf,
}

impl BuildCache {
    /// The default cache lives beside the image store whose blobs it names.
    pub fn for_store(store: &Store) -> Self {
        BuildCache { dir: store.root().join("build-cache") }
    }

    fn path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(&key.0[..2]).join(format!("{}.json", key.0))
    }

    /// A usable entry for `key`: parsed, and its layer blob present with the
    /// recorded size and intact. The blob's digest is checked when the file
    /// changed since the entry last saw it (its stamp differs), so a warm
    /// build does not hash every cached layer, yet a blob rewritten with the
    /// same size is caught. Anything else (missing, damaged, pruned blob) is a
    /// miss; a damaged entry file is removed so it is rebuilt.
    pub fn get(&self, store: &Store, key: &CacheKey) -> Option<CacheEntry> {
        let path = self.path(key);
        let bytes = std::fs::read(&path).ok()?;
        let Ok(stored) = serde_json::from_slice::<StoredEntry>(&bytes) else {
            let _ = std::fs::remove_file(&path);
            return None;
        };
        if let Some(layer) = &stored.entry.layer {
            let blob = store.blob_path(layer.descriptor.digest()).ok()?;
            let meta = std::fs::metadata(blob).ok()?;
            if meta.len() != layer.descriptor.size() {
                return None;
            }
            let stamp = blob_stamp(&meta);
            if stored.blob_stamp.as_deref() != Some(stamp.as_str()) {
                if !store.has_intact_blob(&layer.descriptor) {
                    return None;
                }
                // Best effort: without the new stamp the next build checks again.
                let _ = self.write(&path, &StoredEntry { entry: stored.entry.clone(), blob_stamp: Some(stamp) });
            }
        }
        Some(stored.entry)
    }

    /// Records `entry` under `key`, with the stamp of its layer blob (just
    /// written by this build, so known to be intact).
    pub fn put(&self, store: &Store, key: &CacheKey, entry: &CacheEntry) -> Result<(), CacheError> {
        let blob_stamp = entry
            .layer
            .as_ref()
            .and_then(|l| store.blob_path(l.descriptor.digest()).ok())
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| blob_stamp(&m));
        self.write(&self.path(key), &StoredEntry { entry: entry.clone(), blob_stamp })
    }

    /// Writes an entry file to a temp file and renames it, so a reader sees
    /// the old entry, the new one or none, never half of one.
    fn write(&self, path: &std::path::Path, stored: &StoredEntry) -> Result<(), CacheError> {
        let dir = path.parent().expect("entry paths have a parent");
        let io = |source| CacheError::Io { path: path.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        let json = serde_json::to_vec(stored).expect("cache entries serialise");
        tmp.write_all(&json).map_err(io)?;
        tmp.as_file().sync_data().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

/// An entry as stored: the entry, and the stamp its layer blob had when the
/// entry last knew it intact (absent in entries of older kilns).
#[derive(Serialize, Deserialize)]
struct StoredEntry {
    #[serde(flatten)]
    entry: CacheEntry,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    blob_stamp: Option<String>,
}

/// What changes when a file is written to or replaced: its size, its
/// modification time and (on Unix) its inode.
fn blob_stamp(meta: &std::fs::Metadata) -> String {
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let ino = 0u64;
    format!("{}:{mtime}:{ino}", meta.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::MediaType;

    #[test]
    fn keys_depend_on_parent_and_part_boundaries() {
        let root = CacheKey::root("scratch");
        let a = CacheKey::derive(Some(&root), &[b"ab", b"c"]);
        let b = CacheKey::derive(Some(&root), &[b"a", b"bc"]);
        let c = CacheKey::derive(None, &[b"ab", b"c"]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, CacheKey::derive(Some(&root), &[b"ab", b"c"]));
    }

    #[test]
    fn round_trip_and_misses() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let cache = BuildCache::for_store(&store);
        let key = CacheKey::root("x");
        assert!(cache.get(&store, &key).is_none());

        let blob = store.put_blob_bytes(b"layer", MediaType::ImageLayerGzip).unwrap();
        let entry = CacheEntry {
            layer: Some(CachedLayer { descriptor: blob.clone(), diff_id: "sha256:00".into() }),
            history: History { created_by: "RUN x".into(), ..Default::default() },
        };
        cache.put(&store, &key, &entry).unwrap();
        assert_eq!(cache.get(&store, &key), Some(entry.clone()));

        // A blob rewritten with the same size (a later write: a new mtime) is a miss.
        let blob_path = store.blob_path(blob.digest()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::write(&blob_path, b"LAYER").unwrap();
        assert!(cache.get(&store, &key).is_none(), "a corrupt blob of the right size is not a hit");
        // Written back intact, the entry is a hit again (the digest was checked).
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::write(&blob_path, b"layer").unwrap();
        assert_eq!(cache.get(&store, &key), Some(entry.clone()));

        // A blob that is gone (pruned) makes the entry a miss.
        std::fs::remove_file(store.blob_path(blob.digest()).unwrap()).unwrap();
        assert!(cache.get(&store, &key).is_none());

        // A damaged entry is a miss and is removed.
        let other = CacheKey::root("y");
        cache.put(&store, &other, &CacheEntry { layer: None, ..entry }).unwrap();
        std::fs::write(cache.path(&other), b"{not json").unwrap();
        assert!(cache.get(&store, &other).is_none());
        assert!(!cache.path(&other).exists());
    }
}
