//! The build context on the host: a directory filtered by .dockerignore.
//! (Interface fixed; implementation owned by the `copy` branch.)

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("build context {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A build context directory and its .dockerignore rules.
pub struct BuildContext {
    root: PathBuf,
}

impl BuildContext {
    /// Opens `root`, reading `<dockerfile>.dockerignore` next to the
    /// Dockerfile first, then `.dockerignore` at the root (as BuildKit does).
    pub fn open(root: &Path, _dockerfile: Option<&Path>) -> Result<Self, ContextError> {
        Ok(BuildContext { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}
