//! COPY and ADD: which entries a step adds, where their bytes come from, and
//! the content checksum that goes into the step's cache key.
//! (Interface fixed; implementation owned by the `copy` branch.)

use kiln_protocol::LayerEntry;

use super::context::BuildContext;
use super::layer_tar::ContentSource;
use super::rootfs::LayerStack;
use super::users::Identity;
use crate::oci::store::Store;

/// Where COPY reads from.
pub enum CopySource<'a> {
    /// The build context.
    Context(&'a BuildContext),
    /// Another stage's or an image's file system (`--from`).
    Stack { stack: &'a LayerStack, store: &'a Store },
}

/// One COPY or ADD after expansion, with what the engine knows of the stage.
pub struct CopyInput<'a> {
    /// `COPY` or `ADD` (ADD unpacks local archives and fetches URLs).
    pub add: bool,
    pub sources: &'a [String],
    /// Heredoc files: (name, content).
    pub inline: &'a [(String, String)],
    pub dest: &'a str,
    /// The stage's WORKDIR (absolute); relative `dest`s join it.
    pub workdir: &'a str,
    /// Owner of every created entry (`--chown`, resolved by the engine), 0:0 by default.
    pub owner: Identity,
    pub chmod: Option<&'a str>,
    pub parents: bool,
    pub exclude: &'a [String],
    /// ADD: `--checksum`, `--unpack`, `--keep-git-dir`.
    pub checksum: Option<&'a str>,
    pub unpack: Option<bool>,
    /// The destination stage's file system (symlinked parents of `dest` are followed in it).
    pub dest_root: &'a LayerStack,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0}")]
    Source(String),
}

/// What a COPY/ADD step writes.
pub struct CopyPlan {
    pub entries: Vec<LayerEntry>,
    pub contents: Box<dyn ContentSource>,
    /// sha256 over every source's path, type, mode and content: the step's
    /// cache key input (mtimes are not part of it).
    pub checksum: String,
}

pub fn plan(_input: &CopyInput<'_>, _source: CopySource<'_>) -> Result<CopyPlan, CopyError> {
    unimplemented!("copy branch")
}
