//! `do_unpack`: unpack a tar streamed from the host. Layers are untrusted, so
//! they are unpacked only here, inside the VM, as root: ownership, modes,
//! xattrs, device nodes and hardlinks survive. OCI whiteouts become
//! overlayfs ones on the way, so each layer's directory can serve as an
//! overlay lower layer as it is.

use std::ffi::{CString, OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use kiln_protocol::AgentMsg;

use super::outbox::{send, Out};
use super::scratch::scratch_path;
use super::xattr::{self, OPAQUE_XATTR};

pub fn do_unpack(id: u32, dest: &str, out: Out) -> Result<SyncSender<Vec<u8>>, String> {
    let dest = scratch_path(dest)?;
    std::fs::create_dir_all(&dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
    let (tx, rx) = sync_channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut reader = ChannelReader { rx, buf: Vec::new(), pos: 0 };
        let result = unpack(&mut reader, &dest);
        // Drain what is left so the host's stream is consumed either way.
        let _ = io::copy(&mut reader, &mut io::sink());
        match result {
            Ok(()) => send(&out, &AgentMsg::Done { id }),
            Err(e) => send(&out, &AgentMsg::Failed { id, message: format!("unpacking into {}: {}", dest.display(), with_causes(&e)) }),
        }
    });
    Ok(tx)
}

fn unpack(reader: &mut dyn Read, dest: &Path) -> io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        let path = entry.path()?.into_owned();
        if let Some(whiteout) = Whiteout::of(&path) {
            whiteout.apply(dest, &path)?;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            make_node(&entry, dest)?;
        } else {
            entry.unpack_in(dest)?;
        }
    }
    Ok(())
}

/// `e` and the errors under it (the tar crate puts the OS error one level down).
fn with_causes(e: &io::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// An OCI whiteout file (`.wh.NAME`, or `.wh..wh..opq` for an opaque directory).
enum Whiteout {
    /// Hide `NAME` of the lower layers: a 0:0 character device.
    Entry(OsString),
    /// Hide the whole lower directory: `trusted.overlay.opaque=y`.
    Opaque,
    /// Other `.wh..wh.` names are aufs bookkeeping; docker skips them too.
    Internal,
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

impl Whiteout {
    fn of(path: &Path) -> Option<Whiteout> {
        let name = path.file_name()?.as_bytes();
        if name == OPAQUE_MARKER {
            Some(Whiteout::Opaque)
        } else if name.starts_with(b".wh..wh.") {
            Some(Whiteout::Internal)
        } else {
            let hidden = name.strip_prefix(WHITEOUT_PREFIX)?;
            (!hidden.is_empty()).then(|| Whiteout::Entry(OsStr::from_bytes(hidden).to_os_string()))
        }
    }

    fn apply(&self, dest: &Path, path: &Path) -> io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new(""));
        match self {
            Whiteout::Internal => Ok(()),
            Whiteout::Opaque => {
                // `confined` creates (and checks) the directory the marker is in.
                let marker = confined(dest, path)?;
                let dir_path = marker.parent().unwrap_or(dest);
                xattr::set(dir_path, OPAQUE_XATTR, b"y")
                    .map_err(|e| io::Error::other(format!("marking {} opaque: {e}", dir.display())))
            }
            Whiteout::Entry(name) => {
                let target = confined(dest, &dir.join(name))?;
                let c = CString::new(target.as_os_str().as_bytes()).map_err(io::Error::other)?;
                let _ = std::fs::remove_file(&target);
                // SAFETY: mknod(2) with a live C string.
                if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) } < 0 {
                    let err = io::Error::last_os_error();
                    return Err(io::Error::other(format!("whiteout {}: {err}", path.display())));
                }
                Ok(())
            }
        }
    }
}

/// The tar crate writes device nodes as empty files; make real ones.
fn make_node<R: Read>(entry: &tar::Entry<R>, dest: &Path) -> io::Result<()> {
    let header = entry.header();
    let rel = entry.path()?;
    let target = confined(dest, &rel)?;
    let kind = header.entry_type();
    let file_type = if kind.is_character_special() {
        libc::S_IFCHR
    } else if kind.is_block_special() {
        libc::S_IFBLK
    } else {
        libc::S_IFIFO
    };
    let major = header.device_major()?.unwrap_or(0);
    let minor = header.device_minor()?.unwrap_or(0);
    let mode = header.mode()? & 0o7777;
    let path = CString::new(target.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let _ = std::fs::remove_file(&target);
    // SAFETY: path is a valid C string; mknod/lchown/chmod are plain syscalls.
    unsafe {
        if libc::mknod(path.as_ptr(), file_type | mode, libc::makedev(major, minor)) < 0 {
            return Err(io::Error::other(format!("mknod {}: {}", rel.display(), io::Error::last_os_error())));
        }
        if libc::lchown(path.as_ptr(), header.uid()? as u32, header.gid()? as u32) < 0
            || libc::chmod(path.as_ptr(), mode) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Joins an archive path under `dest`, refusing `..` and paths whose parent
/// resolves (through symlinks) outside `dest`.
fn confined(dest: &Path, rel: &Path) -> io::Result<PathBuf> {
    let mut out = dest.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            _ => return Err(io::Error::other(format!("{}: path leaves the root", rel.display()))),
        }
    }
    let parent = out.parent().unwrap_or(dest);
    std::fs::create_dir_all(parent)?;
    if !parent.canonicalize()?.starts_with(dest.canonicalize()?) {
        return Err(io::Error::other(format!("{}: path leaves the root", rel.display())));
    }
    Ok(out)
}

struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(path: &str) -> Option<String> {
        Whiteout::of(Path::new(path)).map(|w| match w {
            Whiteout::Entry(name) => format!("hide {}", name.to_string_lossy()),
            Whiteout::Opaque => "opaque".into(),
            Whiteout::Internal => "internal".into(),
        })
    }

    #[test]
    fn oci_whiteout_names() {
        assert_eq!(kind("etc/.wh.group").as_deref(), Some("hide group"));
        assert_eq!(kind(".wh.top").as_deref(), Some("hide top"));
        assert_eq!(kind("usr/.wh..wh..opq").as_deref(), Some("opaque"));
        assert_eq!(kind("a/.wh..wh.plnk").as_deref(), Some("internal"));
        assert_eq!(kind("etc/group"), None);
        assert_eq!(kind("etc/.wh."), None, "a bare prefix hides nothing");
        assert_eq!(kind("etc/x.wh.y"), None);
    }

    #[test]
    fn whiteouts_stay_confined() {
        let dir = tempfile::tempdir().unwrap();
        let err = Whiteout::of(Path::new("a/.wh...")).unwrap().apply(dir.path(), Path::new("a/.wh...")).unwrap_err();
        assert!(err.to_string().contains("leaves the root"), "{err}");
    }
}
