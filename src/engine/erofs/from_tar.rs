//! A layer tar, read with the repo's own tar reader (it keeps binary PAX
//! xattr values intact), turned into writer calls. OCI whiteouts are
//! translated as the guest's unpacker (`guest-agent/src/agent/unpack.rs`)
//! does: `.wh.NAME` → a 0/0 character device `NAME`, `.wh..wh..opq` → its
//! directory gets `trusted.overlay.opaque=y`, other `.wh..wh.*` names
//! (aufs bookkeeping) are skipped.

use std::io::{self, Read, Seek, Write};

use super::writer::{EntryMeta, ErofsWriter, NodeKind, Summary};
use super::ErofsError;
use crate::engine::tar_read::{Kind, TarReader};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Converts the uncompressed layer tar `tar` into an EROFS image in `out`.
pub fn from_tar<W: Write + Seek>(tar: impl Read, out: W) -> Result<(W, Summary), ErofsError> {
    let mut reader = TarReader::new(tar);
    let mut writer = ErofsWriter::new(out).map_err(|source| ErofsError::Io { path: "(superblock)".into(), source })?;
    while let Some(m) = reader.next_member().map_err(ErofsError::Tar)? {
        let path = m.path.as_slice();
        let trimmed = trim_slashes(path);
        let (dir, name) = match trimmed.iter().rposition(|&b| b == b'/') {
            Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
            None => (&b""[..], trimmed),
        };
        if name == OPAQUE_MARKER {
            writer.set_opaque(dir)?;
            continue;
        }
        if name.starts_with(b".wh..wh.") {
            continue;
        }
        let xattrs: Vec<(&[u8], &[u8])> = m.xattrs.iter().map(|(n, v)| (n.as_bytes(), v.as_slice())).collect();
        let id = |v: u64| u32::try_from(v).map_err(|_| ErofsError::path(path, "a uid or gid above 2^32"));
        let meta = EntryMeta { mode: m.mode, uid: id(m.uid)?, gid: id(m.gid)?, mtime: m.mtime, mtime_nsec: 0, xattrs: &xattrs };
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX).filter(|h| !h.is_empty()) {
            let target = if dir.is_empty() { hidden.to_vec() } else { [dir, b"/", hidden].concat() };
            writer.add(&target, NodeKind::Whiteout, &meta, &mut io::empty())?;
            continue;
        }
        let kind = match m.kind {
            Kind::File => NodeKind::File { size: m.size },
            Kind::HardLink => NodeKind::Hardlink { target: &m.link },
            Kind::Symlink => NodeKind::Symlink { target: &m.link },
            Kind::CharDevice => NodeKind::CharDevice { major: m.dev.0, minor: m.dev.1 },
            Kind::BlockDevice => NodeKind::BlockDevice { major: m.dev.0, minor: m.dev.1 },
            Kind::Dir => NodeKind::Dir { opaque: false },
            Kind::Fifo => NodeKind::Fifo,
            // Other types (GNU volume labels, multi-volume parts...) carry no file.
            Kind::Other(_) => continue,
        };
        writer.add(path, kind, &meta, &mut reader)?;
    }
    writer.finish()
}

fn trim_slashes(mut p: &[u8]) -> &[u8] {
    while let Some(rest) = p.strip_suffix(b"/") {
        p = rest;
    }
    p
}
