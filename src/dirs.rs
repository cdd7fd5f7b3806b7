//! Where kiln keeps its files. Everything is per user; nothing needs root.
//!
//! `KILN_CACHE_DIR` and `KILN_DATA_DIR` override the platform defaults so tests
//! and hermetic builds can point kiln at private folders.

use std::path::PathBuf;

/// Disposable, re-creatable files: kernels, initramfs images, build cache.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("kiln")
}

/// Files the user would miss: the image store (blobs and tags).
pub fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_DATA_DIR") {
        return PathBuf::from(dir);
    }
    dirs::data_dir().unwrap_or_else(std::env::temp_dir).join("kiln")
}
