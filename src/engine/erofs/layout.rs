//! EROFS on-disk structures, encoded by hand after the Linux kernel's
//! `fs/erofs/erofs_fs.h` (6.1): the superblock, compact and extended
//! inodes, directory entries and the inline xattr area. Only what an
//! uncompressed image with 4 KiB blocks needs.

/// Block size: 4 KiB (`blkszbits` 12), the only size 6.1 kernels mount.
pub const BLOCK: u64 = 4096;
pub const BLOCK_BITS: u8 = 12;
pub const SUPER_OFFSET: u64 = 1024;
pub const MAGIC: u32 = 0xE0F5_E1E2;
/// Per-inode mtimes in extended inodes (informational in 6.1).
pub const FEATURE_COMPAT_MTIME: u32 = 0x2;
/// `EROFS_NAME_LEN`.
pub const NAME_LEN: usize = 255;
/// Inode slots: a nid counts 32-byte units from `meta_blkaddr`.
pub const SLOT: u64 = 32;
pub const COMPACT_SIZE: usize = 32;
pub const EXTENDED_SIZE: usize = 64;
pub const DIRENT_SIZE: usize = 12;
const XATTR_IBODY_HEADER: usize = 12;

/// `i_format` data layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataLayout {
    /// Data in `ceil(size / BLOCK)` blocks from `raw_blkaddr`.
    FlatPlain = 0,
    /// Whole blocks from `raw_blkaddr`, the tail right after the inode's
    /// xattrs, within one metadata block.
    FlatInline = 2,
}

/// `EROFS_FT_*`, the file type in a directory entry.
pub mod ft {
    pub const REG: u8 = 1;
    pub const DIR: u8 = 2;
    pub const CHRDEV: u8 = 3;
    pub const BLKDEV: u8 = 4;
    pub const FIFO: u8 = 5;
    pub const SOCK: u8 = 6;
    pub const SYMLINK: u8 = 7;
}

pub struct Superblock {
    pub root_nid: u16,
    pub inos: u64,
    pub build_time: u64,
    pub build_time_nsec: u32,
    pub blocks: u32,
    pub meta_blkaddr: u32,
}

impl Superblock {
    /// The 128-byte `struct erofs_super_block` (no checksum feature).
    pub fn encode(&self) -> [u8; 128] {
        let mut b = [0u8; 128];
        put32(&mut b, 0, MAGIC);
        put32(&mut b, 8, FEATURE_COMPAT_MTIME);
        b[12] = BLOCK_BITS;
        put16(&mut b, 14, self.root_nid);
        put64(&mut b, 16, self.inos);
        put64(&mut b, 24, self.build_time);
        put32(&mut b, 32, self.build_time_nsec);
        put32(&mut b, 36, self.blocks);
        put32(&mut b, 40, self.meta_blkaddr);
        // xattr_blkaddr (44) stays 0: no shared xattrs; uuid and volume name empty.
        b
    }
}

/// The length of the image that starts with `head` (its first 2 KiB or
/// more): `blocks` whole blocks, as its superblock says. None when `head`
/// holds no superblock of this writer's kind.
pub fn image_len(head: &[u8]) -> Option<u64> {
    let sb = head.get(SUPER_OFFSET as usize..SUPER_OFFSET as usize + 128)?;
    let get32 = |at: usize| u32::from_le_bytes(sb[at..at + 4].try_into().expect("4 bytes"));
    (get32(0) == MAGIC && sb[12] == BLOCK_BITS).then(|| u64::from(get32(36)) * BLOCK)
}

/// The fields both inode versions carry; `compact` picks the 32-byte one
/// (no uid/gid above 65535, size below 4 GiB, nlink below 65536, and the
/// mtime equal to the superblock's build time).
pub struct InodeHeader {
    pub compact: bool,
    pub layout: DataLayout,
    pub xattr_icount: u16,
    /// `S_IFMT | permissions`.
    pub mode: u16,
    pub nlink: u32,
    pub size: u64,
    /// `raw_blkaddr` or the encoded rdev.
    pub u: u32,
    pub ino: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
}

impl InodeHeader {
    pub fn encoded_len(&self) -> usize {
        if self.compact { COMPACT_SIZE } else { EXTENDED_SIZE }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.encoded_len(), 0);
        let b = &mut out[start..];
        put16(b, 0, (self.layout as u16) << 1 | u16::from(!self.compact));
        put16(b, 2, self.xattr_icount);
        put16(b, 4, self.mode);
        if self.compact {
            put16(b, 6, self.nlink as u16);
            put32(b, 8, self.size as u32);
            put32(b, 16, self.u);
            put32(b, 20, self.ino);
            put16(b, 24, self.uid as u16);
            put16(b, 26, self.gid as u16);
        } else {
            put64(b, 8, self.size);
            put32(b, 16, self.u);
            put32(b, 20, self.ino);
            put32(b, 24, self.uid);
            put32(b, 28, self.gid);
            put64(b, 32, self.mtime as u64);
            put32(b, 40, self.mtime_nsec);
            put32(b, 44, self.nlink);
        }
    }
}

/// The kernel's `new_encode_dev`, as erofs stores `i_u.rdev`.
pub fn encode_rdev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// An xattr as stored: a name-prefix index and the rest of the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XattrEntry {
    pub index: u8,
    pub suffix: Vec<u8>,
    pub value: Vec<u8>,
}

/// Name prefixes a 6.1 kernel knows (`EROFS_XATTR_INDEX_*`); longest first
/// where one is a prefix of another.
const PREFIXES: [(&[u8], u8); 5] = [
    (b"system.posix_acl_access", 2),
    (b"system.posix_acl_default", 3),
    (b"user.", 1),
    (b"trusted.", 4),
    (b"security.", 6),
];

impl XattrEntry {
    /// None for names a 6.1 kernel cannot represent (other `system.*`
    /// names, no known prefix) or too long/large for the format.
    pub fn new(name: &[u8], value: &[u8]) -> Option<XattrEntry> {
        let (prefix, index) = PREFIXES.iter().find(|(p, _)| name.starts_with(p))?;
        let suffix = &name[prefix.len()..];
        // The ACL names are whole names; a longer "system.posix_acl_accessX" is not one.
        if matches!(index, 2 | 3) && !suffix.is_empty() {
            return None;
        }
        if suffix.len() > u8::MAX as usize || value.len() > u16::MAX as usize || (suffix.is_empty() && *index != 2 && *index != 3) {
            return None;
        }
        Some(XattrEntry { index: *index, suffix: suffix.to_vec(), value: value.to_vec() })
    }

    fn len(&self) -> usize {
        align4(4 + self.suffix.len() + self.value.len())
    }
}

/// Size of the inline xattr area (`erofs_xattr_ibody_size`), 0 for none.
pub fn xattr_ibody_size(xattrs: &[XattrEntry]) -> usize {
    if xattrs.is_empty() {
        0
    } else {
        XATTR_IBODY_HEADER + xattrs.iter().map(XattrEntry::len).sum::<usize>()
    }
}

/// `i_xattr_icount` for an inline area of `size` bytes.
pub fn xattr_icount(size: usize) -> u16 {
    if size == 0 { 0 } else { (1 + (size - XATTR_IBODY_HEADER) / 4) as u16 }
}

/// The inline xattr area: an ibody header without shared xattrs, then the
/// entries, each padded to 4 bytes.
pub fn encode_xattrs(xattrs: &[XattrEntry], out: &mut Vec<u8>) {
    if xattrs.is_empty() {
        return;
    }
    out.extend_from_slice(&[0u8; XATTR_IBODY_HEADER]);
    for x in xattrs {
        let start = out.len();
        out.push(x.suffix.len() as u8);
        out.push(x.index);
        out.extend_from_slice(&(x.value.len() as u16).to_le_bytes());
        out.extend_from_slice(&x.suffix);
        out.extend_from_slice(&x.value);
        out.resize(start + x.len(), 0);
    }
}

/// One directory entry to encode.
pub struct Dirent<'a> {
    pub name: &'a [u8],
    pub nid: u64,
    pub file_type: u8,
}

/// Splits sorted entries into directory blocks: each block holds its
/// `erofs_dirent`s, then their names (not NUL-terminated; a block's last
/// name ends at the first NUL or the end of the directory). Returns each
/// block's entry count; the last block's used length is [`dir_block_len`].
pub fn split_dir_blocks(names: &[&[u8]]) -> Vec<usize> {
    let mut blocks = Vec::new();
    let (mut count, mut used) = (0usize, 0usize);
    for name in names {
        let need = DIRENT_SIZE + name.len();
        if count > 0 && used + need > BLOCK as usize {
            blocks.push(count);
            (count, used) = (0, 0);
        }
        count += 1;
        used += need;
    }
    if count > 0 {
        blocks.push(count);
    }
    blocks
}

pub fn dir_block_len(entries: &[&[u8]]) -> usize {
    entries.iter().map(|n| DIRENT_SIZE + n.len()).sum()
}

/// Encodes one directory block (unpadded).
pub fn encode_dir_block(entries: &[Dirent<'_>], out: &mut Vec<u8>) {
    let mut nameoff = entries.len() * DIRENT_SIZE;
    for e in entries {
        out.extend_from_slice(&e.nid.to_le_bytes());
        out.extend_from_slice(&(nameoff as u16).to_le_bytes());
        out.push(e.file_type);
        out.push(0);
        nameoff += e.name.len();
    }
    for e in entries {
        out.extend_from_slice(e.name);
    }
}

pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
