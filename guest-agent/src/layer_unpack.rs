//! Unpacking a layer tar into a directory, as the guest agent does with
//! every layer it cannot mount as a disk. Layers are untrusted, so this runs
//! only inside the VM, as root: ownership, modes, xattrs, device nodes and
//! hardlinks survive, and no member can leave `dest`. OCI whiteouts become
//! overlayfs ones on the way, so each layer's directory can serve as an
//! overlay lower layer as it is.
//!
//! In the library (Linux only) rather than the agent binary so that a fuzz
//! target can drive it on the host.

use std::ffi::{CString, OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::tar_read::{Kind, Member, TarReader};
use crate::xattr::{self, OPAQUE_XATTR};

/// Unpacks the layer tar `reader` into `dest`.
pub fn unpack(reader: &mut dyn Read, dest: &Path) -> io::Result<()> {
    let mut tar = TarReader::new(reader);
    // Directory mtimes are set last: creating their contents changes them.
    let mut dirs: Vec<(PathBuf, i64)> = Vec::new();
    while let Some(member) = tar.next_member()? {
        let rel = PathBuf::from(OsStr::from_bytes(&member.path));
        if !rel.components().any(|c| matches!(c, Component::Normal(_))) {
            continue; // "./": the destination itself
        }
        if let Some(whiteout) = Whiteout::of(&rel) {
            whiteout.apply(dest, &rel)?;
            continue;
        }
        let target = confined(dest, &rel)?;
        let at = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", rel.display()));
        match member.kind {
            Kind::File => {
                replace_non_dir(&target).map_err(at)?;
                let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&target).map_err(at)?;
                io::copy(&mut tar, &mut file).map_err(at)?;
            }
            Kind::HardLink => {
                let source = confined(dest, Path::new(OsStr::from_bytes(&member.link)))?;
                replace_non_dir(&target).map_err(at)?;
                std::fs::hard_link(&source, &target).map_err(at)?;
                continue; // a hardlink shares its source's metadata
            }
            Kind::Symlink => {
                replace_non_dir(&target).map_err(at)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&member.link), &target).map_err(at)?;
            }
            Kind::Dir => {
                if !std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                    replace_non_dir(&target).map_err(at)?;
                    std::fs::create_dir(&target).map_err(at)?;
                }
                dirs.push((target.clone(), member.mtime));
            }
            Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => {
                replace_non_dir(&target).map_err(at)?;
                make_node(&target, member.kind, member.mode, member.dev).map_err(at)?;
            }
            Kind::Other(_) => continue, // no file system object (e.g. a GNU volume label)
        }
        set_metadata(&target, &member).map_err(at)?;
        if member.kind != Kind::Dir {
            set_mtime(&target, member.mtime).map_err(at)?;
        }
    }
    for (dir, mtime) in dirs.iter().rev() {
        set_mtime(dir, *mtime)?;
    }
    Ok(())
}

/// Removes what is at `path` unless it is a directory (a later layer member
/// replaces an earlier one of the same name; directories merge).
fn replace_non_dir(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Owner, mode (after the owner: chown clears set-id bits) and xattrs, on
/// the path itself, never through a symlink.
fn set_metadata(path: &Path, member: &Member) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let (uid, gid) = (u32::try_from(member.uid).map_err(io::Error::other)?, u32::try_from(member.gid).map_err(io::Error::other)?);
    // SAFETY: lchown/chmod with a live C string.
    unsafe {
        if libc::lchown(c.as_ptr(), uid, gid) < 0 {
            return Err(io::Error::last_os_error());
        }
        if member.kind != Kind::Symlink && libc::chmod(c.as_ptr(), member.mode) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    for (name, value) in &member.xattrs {
        xattr::set(path, name, value).map_err(|e| io::Error::other(format!("xattr {name}: {e}")))?;
    }
    Ok(())
}

fn set_mtime(path: &Path, mtime: i64) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let t = libc::timespec { tv_sec: mtime as _, tv_nsec: 0 };
    // SAFETY: utimensat with a live C string and two timespecs.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

/// A character or block device or a FIFO (owner and mode are set after).
fn make_node(target: &Path, kind: Kind, mode: u32, (major, minor): (u32, u32)) -> io::Result<()> {
    let file_type = match kind {
        Kind::CharDevice => libc::S_IFCHR,
        Kind::BlockDevice => libc::S_IFBLK,
        _ => libc::S_IFIFO,
    };
    let path = CString::new(target.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: mknod(2) with a live C string.
    if unsafe { libc::mknod(path.as_ptr(), file_type | mode, libc::makedev(major, minor)) } < 0 {
        return Err(io::Error::other(format!("mknod: {}", io::Error::last_os_error())));
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
    let leaves = || io::Error::other(format!("{}: path leaves the root", rel.display()));
    // Create the missing parents one at a time, checking each existing one:
    // create_dir_all would follow a symlink out of `dest` and create
    // directories there before any check could refuse the path.
    let root = dest.canonicalize()?;
    let mut at = root.clone();
    let parent = out.parent().unwrap_or(dest).strip_prefix(dest).map_err(|_| leaves())?.to_path_buf();
    for part in parent.components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir(&at)?,
            Err(e) => return Err(e),
            Ok(m) if m.file_type().is_symlink() => {
                // ELOOP for a symlink loop.
                at = at.canonicalize().map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", rel.display())))?;
                if !at.starts_with(&root) || !at.is_dir() {
                    return Err(leaves());
                }
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(io::Error::other(format!("{}: {} is not a directory", rel.display(), part.as_os_str().to_string_lossy()))),
        }
    }
    Ok(at.join(out.file_name().unwrap_or_default()))
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

    /// A PAX record: `<len> <key>=<value>\n`, the length counting itself.
    fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
        let body = [b" ", key.as_bytes(), b"=", value, b"\n"].concat();
        let mut len = body.len() + 1;
        while len.to_string().len() + body.len() != len {
            len += 1;
        }
        [len.to_string().as_bytes(), &body].concat()
    }

    #[test]
    fn members_keep_owners_modes_mtimes_links_and_binary_xattrs() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: chown and mknod need root (the agent runs as root)");
            return;
        }
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o750);
        h.set_mtime(1_000);
        h.set_size(0);
        b.append_data(&mut h, "d/", io::empty()).unwrap();
        // A value with a newline and a NUL: the tar crate split records at the newline.
        let xattr = b"a\nb\0c".to_vec();
        let pax = pax_record("SCHILY.xattr.user.bin", &xattr);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(pax.len() as u64);
        b.append_data(&mut h, "PaxHeaders/f", &pax[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o4750);
        h.set_uid(7);
        h.set_gid(8);
        h.set_mtime(2_000);
        h.set_size(2);
        b.append_data(&mut h, "d/f", &b"hi"[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mtime(3_000);
        h.set_size(0);
        b.append_link(&mut h, "d/l", "f").unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "d/h", "d/f").unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Fifo);
        h.set_mode(0o600);
        h.set_size(0);
        b.append_data(&mut h, "p", io::empty()).unwrap();
        let bytes = b.into_inner().unwrap();

        let dir = tempfile::tempdir().unwrap();
        unpack(&mut &bytes[..], dir.path()).unwrap();
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let meta = |p: &str| std::fs::symlink_metadata(dir.path().join(p)).unwrap();
        assert_eq!(std::fs::read(dir.path().join("d/f")).unwrap(), b"hi");
        let f = meta("d/f");
        assert_eq!((f.uid(), f.gid(), f.mode() & 0o7777, f.mtime()), (7, 8, 0o4750, 2_000));
        assert_eq!(xattr::get(&dir.path().join("d/f"), "user.bin").unwrap(), Some(xattr), "the whole value, newline and NUL included");
        assert_eq!(std::fs::read_link(dir.path().join("d/l")).unwrap(), Path::new("f"));
        assert_eq!(meta("d/l").mtime(), 3_000);
        assert_eq!(meta("d/h").ino(), f.ino(), "a hardlink stays one");
        assert!(meta("p").file_type().is_fifo());
        let d = meta("d");
        assert_eq!((d.mode() & 0o7777, d.mtime()), (0o750, 1_000), "a directory's mtime survives its contents");
    }

    #[test]
    fn hostile_members_stay_inside_and_fail_clearly() {
        let outside = tempfile::tempdir().unwrap();
        let member = |h: &mut tar::Header, kind: tar::EntryType| {
            h.set_entry_type(kind);
            h.set_mode(0o644);
        };
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("symlink out, then a dir through it", {
                let mut b = tar::Builder::new(Vec::new());
                let mut h = tar::Header::new_ustar();
                member(&mut h, tar::EntryType::Symlink);
                b.append_link(&mut h, "out", outside.path()).unwrap();
                let mut h = tar::Header::new_ustar();
                member(&mut h, tar::EntryType::Regular);
                h.set_size(1);
                b.append_data(&mut h, "out/made/x", &b"x"[..]).unwrap();
                b.into_inner().unwrap()
            }, "leaves the root"),
            ("symlink loop", {
                let mut b = tar::Builder::new(Vec::new());
                for (link, target) in [("a", "b"), ("b", "a")] {
                    let mut h = tar::Header::new_ustar();
                    member(&mut h, tar::EntryType::Symlink);
                    b.append_link(&mut h, link, target).unwrap();
                }
                let mut h = tar::Header::new_ustar();
                member(&mut h, tar::EntryType::Regular);
                h.set_size(1);
                b.append_data(&mut h, "a/x", &b"x"[..]).unwrap();
                b.into_inner().unwrap()
            }, "symbolic links"),
            ("'..' in a PAX path", {
                let mut b = tar::Builder::new(Vec::new());
                b.append_pax_extensions([("path", &b"../escaped"[..])]).unwrap();
                let mut h = tar::Header::new_ustar();
                member(&mut h, tar::EntryType::Regular);
                h.set_size(1);
                b.append_data(&mut h, "fine", &b"x"[..]).unwrap();
                b.into_inner().unwrap()
            }, "leaves the root"),
            ("a sparse member", {
                let mut b = tar::Builder::new(Vec::new());
                b.append_pax_extensions([("GNU.sparse.major", &b"1"[..]), ("GNU.sparse.realsize", &b"1099511627776"[..])]).unwrap();
                let mut h = tar::Header::new_ustar();
                member(&mut h, tar::EntryType::Regular);
                h.set_size(1);
                b.append_data(&mut h, "big", &b"x"[..]).unwrap();
                b.into_inner().unwrap()
            }, "sparse"),
        ];
        for (what, bytes, why) in cases {
            let dir = tempfile::tempdir().unwrap();
            let err = unpack(&mut &bytes[..], dir.path()).unwrap_err();
            assert!(err.to_string().contains(why), "{what}: {err}");
            assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "{what}: nothing was made outside");
        }
    }

    #[test]
    fn whiteouts_stay_confined() {
        let dir = tempfile::tempdir().unwrap();
        let err = Whiteout::of(Path::new("a/.wh...")).unwrap().apply(dir.path(), Path::new("a/.wh...")).unwrap_err();
        assert!(err.to_string().contains("leaves the root"), "{err}");
    }
}
