//! Extended attributes of a path itself (symlinks are never followed).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn cname(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(io::Error::other)
}

/// The attribute names of `path`.
pub fn list(path: &Path) -> io::Result<Vec<String>> {
    let p = cpath(path)?;
    loop {
        // SAFETY: a null buffer with size 0 asks for the needed size.
        let size = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: buf has exactly buf.len() writable bytes.
        let got = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ERANGE) {
                continue; // grew in between
            }
            return Err(err);
        }
        buf.truncate(got as usize);
        return buf
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| String::from_utf8(n.to_vec()).map_err(|_| io::Error::other("xattr name is not UTF-8")))
            .collect();
    }
}

/// The value of attribute `name`, `None` when `path` does not have it.
pub fn get(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let (p, n) = (cpath(path)?, cname(name)?);
    loop {
        // SAFETY: a null buffer with size 0 asks for the needed size.
        let size = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENODATA) => Ok(None),
                _ => Err(err),
            };
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: buf has exactly buf.len() writable bytes.
        let got = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ERANGE) => continue,
                Some(libc::ENODATA) => return Ok(None),
                _ => return Err(err),
            }
        }
        buf.truncate(got as usize);
        return Ok(Some(buf));
    }
}

pub fn set(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let (p, n) = (cpath(path)?, cname(name)?);
    // SAFETY: live C strings and a value slice of the given length.
    if unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// overlayfs marks a directory that hides its lower namesakes with this xattr.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

pub fn is_opaque(path: &Path) -> bool {
    get(path, OPAQUE_XATTR).ok().flatten().as_deref() == Some(b"y")
}
