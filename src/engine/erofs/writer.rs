//! The streaming writer. File bytes go straight to the image as entries
//! arrive (block 0 is the superblock, data blocks follow in arrival order);
//! only tails small enough to inline are kept in memory. `finish` lays out
//! what needs the whole tree: directory blocks (they need the nids of their
//! children), then the metadata area with every inode, and last the
//! superblock.
//!
//! ```text
//! block 0        superblock at byte 1024
//! blocks 1..     file and symlink data (whole blocks; tails padded when not inline)
//! then           directory blocks that are not inline
//! meta_blkaddr   inodes, each followed by its xattrs and inline tail
//! ```

use crate::oci::file_mode;
use std::collections::HashMap;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};

use super::layout::{self, DataLayout, Dirent, InodeHeader, Superblock, XattrEntry, BLOCK, SLOT};
use super::tree::{Body, Data, Inode, Meta, Tree, ROOT};
use super::ErofsError;

/// Tails up to this size are stored inline after their inode; larger ones
/// take a padded block of their own. Half a block bounds both the space a
/// tail can waste in the metadata area and the memory tails hold until
/// `finish`.
const INLINE_MAX: usize = 2048;
/// Bytes read and written at a time (a whole number of blocks).
const CHUNK: usize = 256 * 1024;

/// What an entry becomes; file contents are read from the reader given to
/// [`ErofsWriter::add`].
pub enum NodeKind<'a> {
    File { size: u64 },
    Hardlink { target: &'a [u8] },
    Dir { opaque: bool },
    Symlink { target: &'a [u8] },
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
    Socket,
    /// An overlayfs whiteout: a 0/0 character device.
    Whiteout,
}

/// Counts for the caller's logs and the benchmark.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub inodes: u64,
    pub blocks: u32,
    /// Xattrs dropped because a 6.1 kernel cannot store their names.
    pub dropped_xattrs: u64,
}

pub struct ErofsWriter<W: Write + Seek> {
    out: W,
    tree: Tree,
    /// The next free data block.
    next_block: u32,
    buf: Vec<u8>,
    dropped_xattrs: u64,
}

impl<W: Write + Seek> ErofsWriter<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        out.seek(SeekFrom::Start(0))?;
        out.write_all(&[0u8; BLOCK as usize])?;
        Ok(ErofsWriter { out, tree: Tree::new(), next_block: 1, buf: vec![0; CHUNK], dropped_xattrs: 0 })
    }

    /// Adds one entry. `meta.mode` holds permission bits only; `xattrs`
    /// are full names (`trusted.overlay.*` ones are dropped: overlayfs'
    /// own attributes come only from whiteouts and opaque markers).
    /// `content` is read for `File` only, exactly `size` bytes.
    pub fn add(
        &mut self,
        path: &[u8],
        kind: NodeKind<'_>,
        meta: &EntryMeta<'_>,
        content: &mut dyn Read,
    ) -> Result<(), ErofsError> {
        let xattrs = self.xattrs(meta.xattrs);
        let xattr_size = layout::xattr_ibody_size(&xattrs);
        let meta = Meta {
            mode: meta.mode & 0o7777,
            uid: meta.uid,
            gid: meta.gid,
            mtime: meta.mtime,
            mtime_nsec: meta.mtime_nsec,
            xattrs,
        };
        let body = match kind {
            NodeKind::File { size } => Body::File(self.write_data(path, size, content, xattr_size)?),
            NodeKind::Symlink { target } => {
                Body::Symlink(self.write_data(path, target.len() as u64, &mut &target[..], xattr_size)?)
            }
            NodeKind::Hardlink { target } => return self.tree.hardlink(path, target),
            NodeKind::Dir { opaque } => Body::Dir { children: Default::default(), opaque },
            NodeKind::CharDevice { major, minor } => Body::CharDevice(major, minor),
            NodeKind::BlockDevice { major, minor } => Body::BlockDevice(major, minor),
            NodeKind::Fifo => Body::Fifo,
            NodeKind::Socket => Body::Socket,
            NodeKind::Whiteout => Body::CharDevice(0, 0),
        };
        self.tree.insert(path, Inode { meta, body })?;
        Ok(())
    }

    /// Marks the directory at `path` opaque (an OCI `.wh..wh..opq`).
    pub fn set_opaque(&mut self, path: &[u8]) -> Result<(), ErofsError> {
        self.tree.set_opaque(path)
    }

    fn xattrs(&mut self, xattrs: &[(&[u8], &[u8])]) -> Vec<XattrEntry> {
        let mut out = Vec::new();
        for (name, value) in xattrs {
            if name.starts_with(b"trusted.overlay.") {
                continue;
            }
            match XattrEntry::new(name, value) {
                Some(x) => out.push(x),
                None => self.dropped_xattrs += 1,
            }
        }
        out
    }

    /// Streams `size` bytes of `content` into data blocks; the tail is kept
    /// for inlining when it fits next to an extended inode and its xattrs.
    fn write_data(&mut self, path: &[u8], size: u64, content: &mut dyn Read, xattr_size: usize) -> Result<Data, ErofsError> {
        let err = |source| ErofsError::Io { path: String::from_utf8_lossy(path).into_owned(), source };
        let blkaddr = self.next_block;
        let mut left = size;
        let mut tail = Vec::new();
        let mut written: u64 = 0;
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            let buf = &mut self.buf[..want];
            read_full(content, buf).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => ErofsError::SizeMismatch {
                    path: String::from_utf8_lossy(path).into_owned(),
                    expected: size,
                },
                _ => err(e),
            })?;
            left -= want as u64;
            let whole = if left == 0 { want / BLOCK as usize * BLOCK as usize } else { want };
            self.out.write_all(&buf[..whole]).map_err(err)?;
            written += whole as u64;
            if left == 0 {
                tail = buf[whole..].to_vec();
            }
        }
        let mut extra = [0u8; 1];
        if content.read(&mut extra).map_err(err)? != 0 {
            return Err(ErofsError::SizeMismatch { path: String::from_utf8_lossy(path).into_owned(), expected: size });
        }
        let inline = !tail.is_empty()
            && tail.len() <= INLINE_MAX
            && layout::EXTENDED_SIZE + xattr_size + tail.len() <= BLOCK as usize;
        if !tail.is_empty() && !inline {
            self.out.write_all(&tail).map_err(err)?;
            self.out.write_all(&vec![0u8; BLOCK as usize - tail.len()]).map_err(err)?;
            written += BLOCK;
        }
        let blocks = written / BLOCK;
        self.next_block = u32::try_from(self.next_block as u64 + blocks).map_err(|_| ErofsError::TooLarge)?;
        Ok(Data { size, blkaddr: if blocks == 0 { 0 } else { blkaddr }, tail: inline.then_some(tail) })
    }

    /// Lays out directories and inodes, writes them and the superblock,
    /// and returns the output positioned at the end of the image.
    pub fn finish(mut self) -> Result<(W, Summary), ErofsError> {
        for inode in &mut self.tree.inodes {
            if matches!(inode.body, Body::Dir { opaque: true, .. }) {
                inode.meta.xattrs.push(XattrEntry::new(b"trusted.overlay.opaque", b"y").expect("a known prefix"));
            }
        }
        let plan = Plan::new(&self.tree)?;
        let io_err = |source| ErofsError::Io { path: "(metadata)".into(), source };
        // Directory blocks that are not inline, after the file data.
        let mut dir_blkaddr: HashMap<usize, u32> = HashMap::new();
        let mut block = Vec::with_capacity(BLOCK as usize);
        {
            let mut out = BufWriter::with_capacity(1 << 20, &mut self.out);
            for (i, slot) in plan.order.iter().enumerate() {
                let Some(dir) = &plan.dirs[i] else { continue };
                let whole = dir.whole_blocks();
                if whole == 0 {
                    continue;
                }
                dir_blkaddr.insert(*slot, self.next_block);
                for b in 0..whole {
                    block.clear();
                    dir.encode_block(b, &plan, &mut block);
                    block.resize(BLOCK as usize, 0);
                    out.write_all(&block).map_err(io_err)?;
                }
                self.next_block = self.next_block.checked_add(whole as u32).ok_or(ErofsError::TooLarge)?;
            }
            out.flush().map_err(io_err)?;
        }
        let meta_blkaddr = self.next_block;
        // The metadata area, written in nid order with zero gaps.
        let mut out = BufWriter::with_capacity(1 << 20, &mut self.out);
        let mut pos: u64 = 0;
        let mut rec = Vec::with_capacity(BLOCK as usize);
        for (i, &index) in plan.order.iter().enumerate() {
            let inode = &self.tree.inodes[index];
            rec.clear();
            let (header, inline) = plan.header(i, inode, dir_blkaddr.get(&index).copied());
            header.encode(&mut rec);
            layout::encode_xattrs(&inode.meta.xattrs, &mut rec);
            match (&plan.dirs[i], inline) {
                (Some(dir), true) => dir.encode_block(dir.blocks.len() - 1, &plan, &mut rec),
                (None, true) => match &inode.body {
                    Body::File(d) | Body::Symlink(d) => rec.extend_from_slice(d.tail.as_deref().unwrap_or_default()),
                    _ => {}
                },
                _ => {}
            }
            let at = plan.nids[i] * SLOT;
            out.write_all(&vec![0u8; (at - pos) as usize]).map_err(io_err)?;
            out.write_all(&rec).map_err(io_err)?;
            pos = at + rec.len() as u64;
        }
        let pad = (BLOCK - pos % BLOCK) % BLOCK;
        out.write_all(&vec![0u8; pad as usize]).map_err(io_err)?;
        out.flush().map_err(io_err)?;
        drop(out);
        let meta_blocks = (pos + pad) / BLOCK;
        let blocks = u32::try_from(meta_blkaddr as u64 + meta_blocks).map_err(|_| ErofsError::TooLarge)?;
        let sb = Superblock {
            root_nid: u16::try_from(plan.nids[0]).map_err(|_| ErofsError::TooLarge)?,
            inos: plan.order.len() as u64,
            build_time: plan.build_time.0 as u64,
            build_time_nsec: plan.build_time.1,
            blocks,
            meta_blkaddr,
        };
        self.out.seek(SeekFrom::Start(layout::SUPER_OFFSET)).map_err(io_err)?;
        self.out.write_all(&sb.encode()).map_err(io_err)?;
        self.out.seek(SeekFrom::Start(blocks as u64 * BLOCK)).map_err(io_err)?;
        self.out.flush().map_err(io_err)?;
        let summary = Summary { inodes: plan.order.len() as u64, blocks, dropped_xattrs: self.dropped_xattrs };
        Ok((self.out, summary))
    }
}

/// An entry's metadata as [`ErofsWriter::add`] takes it.
pub struct EntryMeta<'a> {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub xattrs: &'a [(&'a [u8], &'a [u8])],
}

fn read_full(r: &mut dyn Read, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match r.read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A directory's entries (with `.` and `..`) in byte order, split into blocks.
struct DirPlan {
    /// (name, inode index); `.` and `..` included.
    entries: Vec<(Vec<u8>, usize)>,
    /// Entry count of each block.
    blocks: Vec<usize>,
    size: u64,
    inline: bool,
}

impl DirPlan {
    fn whole_blocks(&self) -> usize {
        if self.inline { self.blocks.len() - 1 } else { self.blocks.len() }
    }

    fn encode_block(&self, b: usize, plan: &Plan, out: &mut Vec<u8>) {
        let start: usize = self.blocks[..b].iter().sum();
        let dirents: Vec<Dirent<'_>> = self.entries[start..start + self.blocks[b]]
            .iter()
            .map(|(name, index)| Dirent { name, nid: plan.nid_of[index], file_type: plan.file_type(*index) })
            .collect();
        layout::encode_dir_block(&dirents, out);
    }
}

/// The layout `finish` writes: inodes in order, their nids and directories.
struct Plan<'t> {
    tree: &'t Tree,
    /// Reachable inodes, root first, each once (hardlinks share one).
    order: Vec<usize>,
    nids: Vec<u64>,
    nid_of: HashMap<usize, u64>,
    nlink: HashMap<usize, u32>,
    dirs: Vec<Option<DirPlan>>,
    build_time: (i64, u32),
}

impl<'t> Plan<'t> {
    fn new(tree: &'t Tree) -> Result<Plan<'t>, ErofsError> {
        // Walk from the root (iteratively: paths may be deep).
        let mut order = Vec::new();
        let mut nlink: HashMap<usize, u32> = HashMap::new();
        let mut parent_of: HashMap<usize, usize> = HashMap::new();
        let mut stack = vec![ROOT];
        parent_of.insert(ROOT, ROOT);
        nlink.insert(ROOT, 2);
        while let Some(index) = stack.pop() {
            order.push(index);
            if let Body::Dir { children, .. } = &tree.inodes[index].body {
                for &child in children.values().rev() {
                    let is_dir = matches!(tree.inodes[child].body, Body::Dir { .. });
                    let first = !nlink.contains_key(&child);
                    if is_dir {
                        *nlink.get_mut(&index).unwrap() += 1;
                        nlink.insert(child, 2);
                        parent_of.insert(child, index);
                        stack.push(child);
                    } else {
                        *nlink.entry(child).or_insert(0) += 1;
                        if first {
                            stack.push(child);
                        }
                    }
                }
            }
        }
        let build_time = most_common_mtime(tree, &order);
        let mut plan = Plan { tree, order, nids: Vec::new(), nid_of: HashMap::new(), nlink, dirs: Vec::new(), build_time };
        plan.dirs = plan
            .order
            .iter()
            .map(|&index| match &tree.inodes[index].body {
                Body::Dir { children, .. } => {
                    let mut entries: Vec<(Vec<u8>, usize)> = vec![(b".".to_vec(), index), (b"..".to_vec(), parent_of[&index])];
                    entries.extend(children.iter().map(|(n, &c)| (n.clone(), c)));
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                    let names: Vec<&[u8]> = entries.iter().map(|(n, _)| n.as_slice()).collect();
                    let blocks = layout::split_dir_blocks(&names);
                    let last_start: usize = blocks[..blocks.len() - 1].iter().sum();
                    let last_len = layout::dir_block_len(&names[last_start..]);
                    let size = (blocks.len() as u64 - 1) * BLOCK + last_len as u64;
                    Some(DirPlan { entries, blocks, size, inline: false })
                }
                _ => None,
            })
            .collect();
        // Nids: each inode 32-byte aligned; an inode with its xattrs (and
        // inline tail) stays within one block when it fits in one, as the
        // kernel requires of inline data.
        // The first slot stays empty: the root's nid is its inode number,
        // and inode 0 reads as "no inode" (readdir skips `..` entries of
        // 0, so `ls -a` in a top-level directory would miss its `..`).
        let mut pos: u64 = SLOT;
        for i in 0..plan.order.len() {
            let index = plan.order[i];
            let inode = &tree.inodes[index];
            let fixed = plan.header_len(i, inode) + layout::xattr_ibody_size(&inode.meta.xattrs);
            let tail = match (&mut plan.dirs[i], &inode.body) {
                (Some(dir), _) => {
                    let last = (dir.size - (dir.blocks.len() as u64 - 1) * BLOCK) as usize;
                    dir.inline = last <= INLINE_MAX && fixed + last <= BLOCK as usize;
                    if dir.inline { last } else { 0 }
                }
                (None, Body::File(d) | Body::Symlink(d)) => d.tail.as_ref().map_or(0, Vec::len),
                _ => 0,
            };
            let total = (fixed + tail) as u64;
            if total <= BLOCK && pos % BLOCK + total > BLOCK {
                pos = pos.div_ceil(BLOCK) * BLOCK;
            }
            let nid = pos / SLOT;
            plan.nids.push(nid);
            plan.nid_of.insert(index, nid);
            pos = (pos + total).div_ceil(SLOT) * SLOT;
        }
        Ok(plan)
    }

    fn file_type(&self, index: usize) -> u8 {
        match &self.tree.inodes[index].body {
            Body::File(_) => layout::ft::REG,
            Body::Symlink(_) => layout::ft::SYMLINK,
            Body::Dir { .. } => layout::ft::DIR,
            Body::CharDevice(..) => layout::ft::CHRDEV,
            Body::BlockDevice(..) => layout::ft::BLKDEV,
            Body::Fifo => layout::ft::FIFO,
            Body::Socket => layout::ft::SOCK,
        }
    }

    fn size(&self, i: usize, inode: &Inode) -> u64 {
        match (&self.dirs[i], &inode.body) {
            (Some(dir), _) => dir.size,
            (None, Body::File(d) | Body::Symlink(d)) => d.size,
            _ => 0,
        }
    }

    fn compact(&self, i: usize, inode: &Inode) -> bool {
        let m = &inode.meta;
        m.uid <= u16::MAX as u32
            && m.gid <= u16::MAX as u32
            && self.nlink[&self.order[i]] <= u16::MAX as u32
            && self.size(i, inode) <= u32::MAX as u64
            && (m.mtime, m.mtime_nsec) == self.build_time
    }

    fn header_len(&self, i: usize, inode: &Inode) -> usize {
        if self.compact(i, inode) { layout::COMPACT_SIZE } else { layout::EXTENDED_SIZE }
    }

    /// The inode header and whether its data has an inline tail.
    fn header(&self, i: usize, inode: &Inode, dir_blkaddr: Option<u32>) -> (InodeHeader, bool) {
        let m = &inode.meta;
        let (ifmt, layout, u, inline) = match (&self.dirs[i], &inode.body) {
            (Some(dir), _) => {
                let l = if dir.inline { DataLayout::FlatInline } else { DataLayout::FlatPlain };
                (file_mode::S_IFDIR, l, dir_blkaddr.unwrap_or(0), dir.inline)
            }
            (None, Body::File(d) | Body::Symlink(d)) => {
                let ifmt = if matches!(inode.body, Body::File(_)) { file_mode::S_IFREG } else { file_mode::S_IFLNK };
                let l = if d.tail.is_some() { DataLayout::FlatInline } else { DataLayout::FlatPlain };
                (ifmt, l, d.blkaddr, d.tail.is_some())
            }
            (None, Body::CharDevice(ma, mi)) => (file_mode::S_IFCHR, DataLayout::FlatPlain, layout::encode_rdev(*ma, *mi), false),
            (None, Body::BlockDevice(ma, mi)) => (file_mode::S_IFBLK, DataLayout::FlatPlain, layout::encode_rdev(*ma, *mi), false),
            (None, Body::Fifo) => (file_mode::S_IFIFO, DataLayout::FlatPlain, 0, false),
            (None, _) => (file_mode::S_IFSOCK, DataLayout::FlatPlain, 0, false),
        };
        let header = InodeHeader {
            compact: self.compact(i, inode),
            layout,
            xattr_icount: layout::xattr_icount(layout::xattr_ibody_size(&m.xattrs)),
            mode: (ifmt | (m.mode & 0o7777)) as u16,
            nlink: self.nlink[&self.order[i]],
            size: self.size(i, inode),
            u,
            ino: (i + 1) as u32,
            uid: m.uid,
            gid: m.gid,
            mtime: m.mtime,
            mtime_nsec: m.mtime_nsec,
        };
        (header, inline)
    }
}

/// The (mtime, nsec) most inodes share: the superblock's build time, so
/// those inodes can be compact.
fn most_common_mtime(tree: &Tree, order: &[usize]) -> (i64, u32) {
    let mut counts: HashMap<(i64, u32), usize> = HashMap::new();
    for &index in order {
        let m = &tree.inodes[index].meta;
        *counts.entry((m.mtime, m.mtime_nsec)).or_insert(0) += 1;
    }
    counts.into_iter().max_by_key(|&(t, n)| (n, std::cmp::Reverse(t))).map_or((0, 0), |(t, _)| t)
}
