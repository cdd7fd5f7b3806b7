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
    /// recorded size and intact ([`Store::blob_is_intact`]: hashed only when
    /// the file changed since the store last knew it intact, so a warm build
    /// hashes nothing, yet a blob rewritten with the same size is caught).
    /// Anything else (missing, damaged, pruned blob) is a miss; a damaged
    /// entry file is removed so it is rebuilt.
    pub fn get(&self, store: &Store, key: &CacheKey) -> Option<CacheEntry> {
        let path = self.path(key);
        let bytes = std::fs::read(&path).ok()?;
        let Ok(entry) = serde_json::from_slice::<CacheEntry>(&bytes) else {
            let _ = std::fs::remove_file(&path);
            return None;
        };
        if let Some(layer) = &entry.layer {
            if !store.blob_is_intact(&layer.descriptor) {
                return None;
            }
        }
        Some(entry)
    }

    /// Records `entry` under `key`.
    pub fn put(&self, key: &CacheKey, entry: &CacheEntry) -> Result<(), CacheError> {
        self.write(&self.path(key), entry)
    }

    /// Writes an entry file to a temp file and renames it, so a reader sees
    /// the old entry, the new one or none, never half of one.
    fn write(&self, path: &std::path::Path, entry: &CacheEntry) -> Result<(), CacheError> {
        let dir = path.parent().expect("entry paths have a parent");
        let io = |source| CacheError::Io { path: path.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        let json = serde_json::to_vec(entry).expect("cache entries serialise");
        tmp.write_all(&json).map_err(io)?;
        tmp.as_file().sync_data().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }
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
        cache.put(&key, &entry).unwrap();
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
        cache.put(&other, &CacheEntry { layer: None, ..entry }).unwrap();
        std::fs::write(cache.path(&other), b"{not json").unwrap();
        assert!(cache.get(&store, &other).is_none());
        assert!(!cache.path(&other).exists());
    }
}
