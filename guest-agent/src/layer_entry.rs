//! One entry of a layer-to-be. The agent's snapshot manifest is a list of
//! them (an overlay upper directory after a step, so the host can write the
//! OCI layer reading file contents straight from the scratch disk image), and
//! the host builds the same list for COPY/ADD; one tar writer serves both.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// One entry of an upper directory, in overlayfs terms turned into OCI terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerEntry {
    /// Relative to the upper directory, `/`-separated, no leading `/`.
    pub path: String,
    #[serde(flatten)]
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, seconds and nanoseconds since the epoch.
    pub mtime: i64,
    #[serde(default)]
    pub mtime_nsec: u32,
    /// Extended attributes other than overlayfs' own (`trusted.overlay.*`),
    /// e.g. `security.capability`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    pub name: String,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EntryKind {
    /// A regular file. When it shares its inode with an earlier entry of the
    /// manifest (in manifest order), `link` names that entry and the host
    /// writes a hardlink.
    File {
        size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        link: Option<String>,
    },
    /// A directory; `opaque` when overlayfs marked it so (it hides the lower
    /// directory's contents: OCI `.wh..wh..opq`).
    Dir {
        #[serde(default)]
        opaque: bool,
    },
    Symlink { target: String },
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
    Socket,
    /// An overlayfs whiteout (a 0:0 character device): the path was deleted.
    Whiteout,
}

/// Orders paths component by component in byte order, so a directory comes
/// right before its children (`a`, `a/b`, `a.b`; plain byte order would put
/// `a.b` between `a` and `a/b`).
pub fn path_order(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

/// Sorts entries into layer order ([`path_order`]): the one order a layer's
/// entries are written in, whoever listed them.
pub fn sort_for_layer(entries: &mut [LayerEntry]) {
    entries.sort_by(|a, b| path_order(&a.path, &b.path));
}
