//! One view over COPY's two kinds of source file system: the build context
//! and a stage's or image's layer stack (`--from`).

use kiln_protocol::{EntryKind, LayerEntry};

use super::content::Content;
use super::CopyError;
use crate::engine::context::BuildContext;
use crate::engine::rootfs::LayerStack;
use crate::oci::store::Store;

/// A source entry; `inode` groups hardlinks (equal keys share content).
#[derive(Debug, Clone)]
pub(super) struct SrcEntry {
    pub entry: LayerEntry,
    pub inode: Option<String>,
}

#[derive(Clone, Copy)]
pub(super) enum Fs<'a> {
    Context(&'a BuildContext),
    Stack { stack: &'a LayerStack, store: &'a Store },
}

impl<'a> Fs<'a> {
    /// Whether source ownership survives a COPY without --chown (not for
    /// the context: host owners mean nothing in the image).
    pub fn keeps_owner(&self) -> bool {
        matches!(self, Fs::Stack { .. })
    }

    /// `path` with all symlinks resolved, confined to the root.
    pub fn resolve(&self, path: &str) -> Result<String, CopyError> {
        if path.is_empty() {
            return Ok(String::new());
        }
        match self {
            Fs::Context(c) => Ok(c.resolve(path)?),
            Fs::Stack { stack, .. } => Ok(stack.resolve(path)?),
        }
    }

    pub fn entry(&self, path: &str) -> Result<Option<SrcEntry>, CopyError> {
        match self {
            Fs::Context(c) => {
                if path.is_empty() {
                    return Ok(Some(SrcEntry { entry: root_dir(), inode: None }));
                }
                Ok(c.entry(path)?.map(|e| SrcEntry { inode: e.inode.map(|(d, i)| format!("h:{d}:{i}")), entry: e.entry }))
            }
            Fs::Stack { stack, .. } => {
                let e = if path.is_empty() { stack.entry("").cloned().unwrap_or_else(root_dir) } else {
                    match stack.entry(path) {
                        Some(e) => e.clone(),
                        None => return Ok(None),
                    }
                };
                Ok(Some(stack_entry(stack, e)))
            }
        }
    }

    /// Direct children of the directory `path`, sorted by name.
    pub fn children(&self, path: &str) -> Result<Vec<SrcEntry>, CopyError> {
        match self {
            Fs::Context(c) => Ok(c
                .read_dir(path)?
                .into_iter()
                .map(|e| SrcEntry { inode: e.inode.map(|(d, i)| format!("h:{d}:{i}")), entry: e.entry })
                .collect()),
            Fs::Stack { stack, .. } => {
                let prefix = if path.is_empty() { String::new() } else { format!("{path}/") };
                Ok(stack
                    .walk(path)
                    .into_iter()
                    .filter(|e| {
                        e.path.strip_prefix(prefix.as_str()).is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
                    })
                    .filter(|e| !matches!(e.kind, EntryKind::Whiteout))
                    .map(|e| stack_entry(stack, e.clone()))
                    .collect())
            }
        }
    }

    /// Where the bytes of the regular file `e` come from.
    pub fn content(&self, e: &SrcEntry) -> Content {
        match self {
            Fs::Context(c) => Content::Host(c.root().into(), e.entry.path.clone()),
            Fs::Stack { stack, .. } => {
                // A hardlink's bytes are its group's first file's.
                let group = e.inode.as_deref().and_then(|g| g.strip_prefix("s:"));
                match group.and_then(|g| stack.entry(g)) {
                    Some(t) => Content::Stack(t.clone()),
                    None => Content::Stack(e.entry.clone()),
                }
            }
        }
    }
}

fn root_dir() -> LayerEntry {
    LayerEntry {
        path: String::new(),
        kind: EntryKind::Dir { opaque: false },
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        xattrs: Vec::new(),
    }
}

/// A stack entry as a source: hardlinks become plain files of their group.
fn stack_entry(stack: &LayerStack, mut e: LayerEntry) -> SrcEntry {
    let own = e.path.clone();
    let inode = match &mut e.kind {
        EntryKind::File { link, size } => {
            let group = link.take().unwrap_or(own);
            // A tar hardlink header says size 0; the bytes are the target's.
            if let Some(EntryKind::File { size: s, .. }) = stack.entry(&group).map(|t| &t.kind) {
                *size = *s;
            }
            Some(format!("s:{group}"))
        }
        EntryKind::Dir { opaque } => {
            *opaque = false;
            None
        }
        _ => None,
    };
    SrcEntry { entry: e, inode }
}
