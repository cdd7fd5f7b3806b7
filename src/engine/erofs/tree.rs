//! The image's tree in memory while the data streams out: inodes in an
//! arena, directories as sorted name → inode maps, paths resolved from the
//! root without ever leaving it (`..` is refused, a non-directory in the
//! middle of a path is an error: nothing here follows symlinks).

use std::collections::BTreeMap;

use super::layout::XattrEntry;
use super::ErofsError;

/// Where a regular file's or symlink's bytes are.
#[derive(Debug, Clone, Default)]
pub struct Data {
    pub size: u64,
    /// First block of the whole blocks (and of the padded tail when `tail`
    /// is None); 0 when there are none.
    pub blkaddr: u32,
    /// The last `size % BLOCK` bytes, to store inline after the inode;
    /// None when the file is flat-plain.
    pub tail: Option<Vec<u8>>,
}

#[derive(Debug)]
pub enum Body {
    File(Data),
    Symlink(Data),
    Dir { children: BTreeMap<Vec<u8>, usize>, opaque: bool },
    CharDevice(u32, u32),
    BlockDevice(u32, u32),
    Fifo,
    Socket,
}

#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// Permission bits (`& 0o7777`); the file type comes from the body.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub xattrs: Vec<XattrEntry>,
}

#[derive(Debug)]
pub struct Inode {
    pub meta: Meta,
    pub body: Body,
}

pub const ROOT: usize = 0;

pub struct Tree {
    pub inodes: Vec<Inode>,
}

/// The components of a layer path: `/`, `.` and empty components are
/// dropped (tars write `./a/b/`), `..` and names too long for EROFS are
/// errors. The empty list is the root.
pub fn components(path: &[u8]) -> Result<Vec<&[u8]>, ErofsError> {
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(ErofsError::path(path, "a path may not contain `..`")),
            c if c.len() > super::layout::NAME_LEN => {
                return Err(ErofsError::path(path, "a name is longer than 255 bytes"))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

impl Tree {
    pub fn new() -> Tree {
        let root = Inode {
            meta: Meta { mode: 0o755, ..Meta::default() },
            body: Body::Dir { children: BTreeMap::new(), opaque: false },
        };
        Tree { inodes: vec![root] }
    }

    fn children(&mut self, dir: usize) -> Option<&mut BTreeMap<Vec<u8>, usize>> {
        match &mut self.inodes[dir].body {
            Body::Dir { children, .. } => Some(children),
            _ => None,
        }
    }

    /// The directory holding the last component of `parts`, creating
    /// missing parents as root-owned 0755 directories (tars may omit them).
    fn parent_dir(&mut self, path: &[u8], parts: &[&[u8]]) -> Result<usize, ErofsError> {
        let mut dir = ROOT;
        for name in &parts[..parts.len().saturating_sub(1)] {
            let next = self.inodes.len();
            let children = self.children(dir).ok_or_else(|| ErofsError::path(path, "a parent is not a directory"))?;
            dir = match children.get(*name) {
                Some(&child) => child,
                None => {
                    children.insert(name.to_vec(), next);
                    self.inodes.push(Inode {
                        meta: Meta { mode: 0o755, ..Meta::default() },
                        body: Body::Dir { children: BTreeMap::new(), opaque: false },
                    });
                    next
                }
            };
            if self.children(dir).is_none() {
                return Err(ErofsError::path(path, "a parent is not a directory"));
            }
        }
        Ok(dir)
    }

    /// The inode at `path`, if any.
    pub fn lookup(&self, path: &[u8]) -> Result<Option<usize>, ErofsError> {
        let mut at = ROOT;
        for name in components(path)? {
            match &self.inodes[at].body {
                Body::Dir { children, .. } => match children.get(name) {
                    Some(&child) => at = child,
                    None => return Ok(None),
                },
                _ => return Ok(None),
            }
        }
        Ok(Some(at))
    }

    /// Puts `inode` at `path`. A directory over a directory updates its
    /// metadata and keeps its children (as tar extraction does); anything
    /// else replaces what was there. The root takes a directory's metadata.
    pub fn insert(&mut self, path: &[u8], inode: Inode) -> Result<usize, ErofsError> {
        let parts = components(path)?;
        let Some(name) = parts.last() else {
            return match inode.body {
                Body::Dir { opaque, .. } => Ok(self.update_dir(ROOT, inode.meta, opaque)),
                _ => Err(ErofsError::path(path, "the root must be a directory")),
            };
        };
        let parent = self.parent_dir(path, &parts)?;
        let existing = self.children(parent).and_then(|c| c.get(*name).copied());
        if let (Some(old), Body::Dir { opaque, .. }) = (existing, &inode.body) {
            if matches!(self.inodes[old].body, Body::Dir { .. }) {
                return Ok(self.update_dir(old, inode.meta, *opaque));
            }
        }
        let index = self.inodes.len();
        self.inodes.push(inode);
        self.link(parent, name, index);
        Ok(index)
    }

    /// Adds another name for the inode at `target` (a hardlink).
    pub fn hardlink(&mut self, path: &[u8], target: &[u8]) -> Result<(), ErofsError> {
        let index = self.lookup(target)?.ok_or_else(|| ErofsError::path(path, "the hardlink target is not in the layer"))?;
        if matches!(self.inodes[index].body, Body::Dir { .. }) {
            return Err(ErofsError::path(path, "a hardlink may not name a directory"));
        }
        let parts = components(path)?;
        let Some(name) = parts.last() else {
            return Err(ErofsError::path(path, "the root cannot be a hardlink"));
        };
        let parent = self.parent_dir(path, &parts)?;
        self.link(parent, name, index);
        Ok(())
    }

    /// Marks the directory at `path` opaque, creating it if needed.
    pub fn set_opaque(&mut self, path: &[u8]) -> Result<(), ErofsError> {
        let index = match self.lookup(path)? {
            Some(i) => i,
            None => {
                let dir = Body::Dir { children: BTreeMap::new(), opaque: true };
                self.insert(path, Inode { meta: Meta { mode: 0o755, ..Meta::default() }, body: dir })?
            }
        };
        match &mut self.inodes[index].body {
            Body::Dir { opaque, .. } => {
                *opaque = true;
                Ok(())
            }
            _ => Err(ErofsError::path(path, "an opaque marker's parent is not a directory")),
        }
    }

    fn update_dir(&mut self, index: usize, meta: Meta, set_opaque: bool) -> usize {
        let inode = &mut self.inodes[index];
        inode.meta = meta;
        if let Body::Dir { opaque, .. } = &mut inode.body {
            *opaque |= set_opaque;
        }
        index
    }

    fn link(&mut self, parent: usize, name: &[u8], index: usize) {
        if let Some(children) = self.children(parent) {
            children.insert(name.to_vec(), index);
        }
    }
}
