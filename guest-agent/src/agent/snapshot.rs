//! `do_snapshot` / `do_thaw`: describe a finished step's upper directory as
//! layer entries, and hold the scratch file system frozen while the host
//! reads file contents from the disk image.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_protocol::frame::DATA_CHUNK;
use kiln_protocol::{file_name, stream, AgentMsg, EntryKind, LayerEntry, Xattr};

use super::console::log;
use super::outbox::{send, send_data, Out};
use super::scratch::{scratch_path, SCRATCH};
use kiln_protocol::xattr::{self, is_opaque};

/// `_IOWR('X', 119, int)` and `_IOWR('X', 120, int)`, the same on every Linux architecture kiln runs.
const FIFREEZE: u32 = 0xC004_5877;
const FITHAW: u32 = 0xC004_5878;

/// overlayfs' private attributes: not part of the image.
const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";

pub fn do_snapshot(id: u32, upper: &str, out: Out, freezer: Freezer) -> Result<(), String> {
    let upper = scratch_path(upper)?;
    if !upper.is_dir() {
        return Err(format!("upper directory {} does not exist", upper.display()));
    }
    std::thread::spawn(move || {
        let result = manifest(&upper).and_then(|entries| {
            freezer.freeze()?;
            stream_manifest(&out, id, &entries);
            Ok(())
        });
        match result {
            Ok(()) => send(&out, &AgentMsg::Done { id }),
            Err(e) => send(&out, &AgentMsg::Failed { id, message: format!("snapshot of {}: {e}", upper.display()) }),
        }
    });
    Ok(())
}

fn stream_manifest(out: &Out, id: u32, entries: &[LayerEntry]) {
    let mut buf = Vec::with_capacity(DATA_CHUNK + 4096);
    for entry in entries {
        serde_json::to_writer(&mut buf, entry).expect("a LayerEntry always serialises");
        buf.push(b'\n');
        if buf.len() >= DATA_CHUNK {
            send_data(out, id, stream::MANIFEST, &buf);
            buf.clear();
        }
    }
    if !buf.is_empty() {
        send_data(out, id, stream::MANIFEST, &buf);
    }
    send_data(out, id, stream::MANIFEST, &[]);
}

/// Every entry under `upper` in walk order (parents before their children).
/// The host writes them in layer order ([`kiln_protocol::sort_for_layer`]),
/// so the agent does not sort.
pub fn manifest(upper: &Path) -> Result<Vec<LayerEntry>, String> {
    let mut paths = Vec::new();
    collect(upper, PathBuf::new(), &mut paths)?;
    let mut first_link: HashMap<(u64, u64), String> = HashMap::new();
    let mut entries = Vec::with_capacity(paths.len());
    for rel in paths {
        let full = upper.join(&rel);
        let path = file_name::from_bytes(rel.as_os_str().as_bytes()).into_owned();
        let meta = std::fs::symlink_metadata(&full).map_err(|e| format!("{path}: {e}"))?;
        let mut xattrs = Vec::new();
        for name in xattr::list(&full).map_err(|e| format!("{path}: listing xattrs: {e}"))? {
            if name.starts_with(OVERLAY_XATTR_PREFIX) {
                continue;
            }
            if let Some(value) = xattr::get(&full, &name).map_err(|e| format!("{path}: xattr {name}: {e}"))? {
                xattrs.push(Xattr { name, value });
            }
        }
        // listxattr's order is the file system's; layers must not depend on it.
        xattrs.sort_by(|a, b| a.name.cmp(&b.name));
        let kind = entry_kind(&full, &path, &meta, &mut first_link)?;
        entries.push(LayerEntry {
            path,
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec() as u32,
            xattrs,
        });
    }
    Ok(entries)
}

fn collect(upper: &Path, rel: PathBuf, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let dir = upper.join(&rel);
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let child = rel.join(entry.file_name());
        let is_dir = entry.file_type().map_err(|e| format!("{}: {e}", child.display()))?.is_dir();
        out.push(child.clone());
        if is_dir {
            collect(upper, child, out)?;
        }
    }
    Ok(())
}

fn entry_kind(
    full: &Path,
    path: &str,
    meta: &std::fs::Metadata,
    first_link: &mut HashMap<(u64, u64), String>,
) -> Result<EntryKind, String> {
    let ft = meta.file_type();
    let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
    Ok(if ft.is_dir() {
        EntryKind::Dir { opaque: is_opaque(full) }
    } else if ft.is_file() {
        let link = if meta.nlink() > 1 {
            match first_link.get(&(meta.dev(), meta.ino())) {
                Some(first) => Some(first.clone()),
                None => {
                    first_link.insert((meta.dev(), meta.ino()), path.to_string());
                    None
                }
            }
        } else {
            None
        };
        EntryKind::File { size: meta.len(), link }
    } else if ft.is_symlink() {
        let target = std::fs::read_link(full).map_err(|e| format!("{path}: {e}"))?;
        let target = file_name::from_bytes(target.as_os_str().as_bytes()).into_owned();
        EntryKind::Symlink { target }
    } else if ft.is_char_device() && major == 0 && minor == 0 {
        EntryKind::Whiteout
    } else if ft.is_char_device() {
        EntryKind::CharDevice { major, minor }
    } else if ft.is_block_device() {
        EntryKind::BlockDevice { major, minor }
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else {
        EntryKind::Socket
    })
}

/// Freezes /scratch for the first holder and thaws it after the last, and
/// refuses new freezes once the agent is shutting down (a frozen file system
/// would hang the final sync).
#[derive(Clone, Default)]
pub struct Freezer(Arc<Mutex<FreezeState>>);

#[derive(Default)]
struct FreezeState {
    holders: u32,
    closed: bool,
}

impl Freezer {
    pub fn freeze(&self) -> Result<(), String> {
        let mut state = self.0.lock().unwrap();
        if state.closed {
            return Err("the agent is shutting down".into());
        }
        if state.holders == 0 {
            let dir = File::open(SCRATCH).map_err(|e| format!("opening {SCRATCH}: {e}"))?;
            // SAFETY: syncfs(2) on an open descriptor.
            if unsafe { libc::syncfs(dir.as_raw_fd()) } < 0 {
                return Err(format!("syncing {SCRATCH}: {}", io::Error::last_os_error()));
            }
            ioctl(&dir, FIFREEZE).map_err(|e| format!("freezing {SCRATCH}: {e}"))?;
        }
        state.holders += 1;
        Ok(())
    }

    pub fn thaw(&self) -> Result<(), String> {
        let mut state = self.0.lock().unwrap();
        match state.holders {
            0 => Err(format!("{SCRATCH} is not frozen")),
            1 => {
                thaw_scratch()?;
                state.holders = 0;
                Ok(())
            }
            _ => {
                state.holders -= 1;
                Ok(())
            }
        }
    }

    /// Fails while /scratch is frozen: a write to it would block the
    /// request loop, which then could never read the `Thaw`.
    pub fn check_writable(&self) -> Result<(), String> {
        if self.0.lock().unwrap().holders > 0 {
            return Err(format!("{SCRATCH} is frozen by a snapshot; send Thaw first"));
        }
        Ok(())
    }

    /// Thaws for good before power-off.
    pub fn close(&self) {
        let mut state = self.0.lock().unwrap();
        state.closed = true;
        if state.holders > 0 {
            if let Err(e) = thaw_scratch() {
                log(e);
            }
            state.holders = 0;
        }
    }
}

fn thaw_scratch() -> Result<(), String> {
    let dir = File::open(SCRATCH).map_err(|e| format!("opening {SCRATCH}: {e}"))?;
    ioctl(&dir, FITHAW).map_err(|e| format!("thawing {SCRATCH}: {e}"))
}

// The request type of ioctl(2) differs between libcs.
#[allow(clippy::unnecessary_cast)]
fn ioctl(file: &File, request: u32) -> io::Result<()> {
    let mut arg: libc::c_int = 0;
    // SAFETY: FIFREEZE/FITHAW take (and ignore) an int pointer.
    if unsafe { libc::ioctl(file.as_raw_fd(), request as libc::Ioctl, &mut arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::sort_for_layer;

    #[test]
    fn manifest_lists_parents_first_and_links_point_back() {
        let dir = tempfile::tempdir().unwrap();
        let up = dir.path();
        std::fs::create_dir_all(up.join("a/b")).unwrap();
        std::fs::write(up.join("a.txt"), b"hello").unwrap();
        std::fs::write(up.join("a/b/f"), b"x").unwrap();
        std::fs::hard_link(up.join("a/b/f"), up.join("z")).unwrap();
        std::os::unix::fs::symlink("a.txt", up.join("s")).unwrap();
        let mut entries = manifest(up).unwrap();
        let at = |entries: &[LayerEntry], p: &str| entries.iter().position(|e| e.path == p).unwrap();
        assert!(at(&entries, "a") < at(&entries, "a/b") && at(&entries, "a/b") < at(&entries, "a/b/f"));
        // Of two hardlinked names, the one walked first holds the content.
        let (first, second) = if at(&entries, "a/b/f") < at(&entries, "z") { ("a/b/f", "z") } else { ("z", "a/b/f") };
        sort_for_layer(&mut entries);
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "a/b", "a/b/f", "a.txt", "s", "z"]);
        assert_eq!(entries[3].kind, EntryKind::File { size: 5, link: None });
        assert_eq!(entries[at(&entries, first)].kind, EntryKind::File { size: 1, link: None });
        assert_eq!(entries[at(&entries, second)].kind, EntryKind::File { size: 1, link: Some(first.into()) });
        assert_eq!(entries[4].kind, EntryKind::Symlink { target: "a.txt".into() });
        assert_eq!(entries[0].kind, EntryKind::Dir { opaque: false });
    }

    #[test]
    fn names_that_are_not_utf8_are_carried_whole() {
        let dir = tempfile::tempdir().unwrap();
        let up = dir.path();
        let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9");
        std::fs::create_dir(up.join(latin1)).unwrap();
        std::os::unix::fs::symlink(latin1, up.join(latin1).join("l")).unwrap();
        let entries = manifest(up).unwrap();
        let name = file_name::from_bytes(b"caf\xe9").into_owned();
        assert_eq!(entries[0].path, name);
        assert_eq!(entries[1].path, format!("{name}/l"));
        assert_eq!(entries[1].kind, EntryKind::Symlink { target: name });
    }
}
