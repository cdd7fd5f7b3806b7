//! The build context on the host: a directory filtered by .dockerignore.
//!
//! Every lookup is a path relative to the context root. Symlinks are
//! resolved as if the root were `/` (BuildKit copies the context into a
//! snapshot and resolves inside it), so neither `..` nor a link pointing
//! outside ever reaches a host file outside the root. Paths that
//! .dockerignore excludes do not exist for COPY.

use std::fs::{File, Metadata};
use std::io;
use std::path::{Path, PathBuf};

use kiln_protocol::confined_path::{resolve_lexically, Node, Tree};
use kiln_protocol::{file_name, EntryKind, LayerEntry, Xattr};

use crate::dockerfile::dockerignore::IgnoreMatcher;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("build context {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Ignore(#[from] crate::dockerfile::Error),
    #[error("build context: too many levels of symbolic links resolving /{path}")]
    SymlinkLoop { path: String },
    /// Only on Windows: a name of unpaired UTF-16 surrogates.
    #[error("build context: {path}: the name is not valid Unicode")]
    NotUnicode { path: PathBuf },
}

/// A build context directory and its .dockerignore rules.
pub struct BuildContext {
    root: PathBuf,
    ignore: IgnoreMatcher,
}

/// One visible context entry, symlinks not followed. Ownership is 0:0: the
/// context's owners on the host mean nothing in the image (as in BuildKit).
#[derive(Debug, Clone)]
pub struct ContextEntry {
    /// `path` is relative to the context root.
    pub entry: LayerEntry,
    /// (device, inode) of a regular file with more than one link, to keep
    /// hardlinks within a copied tree.
    pub inode: Option<(u64, u64)>,
}

impl BuildContext {
    /// Opens `root`, reading `<dockerfile>.dockerignore` next to the
    /// Dockerfile first, then `.dockerignore` at the root (as BuildKit does).
    pub fn open(root: &Path, dockerfile: Option<&Path>) -> Result<Self, ContextError> {
        let root = checked_root(root)?;
        let dockerfile = dockerfile.map(Path::to_path_buf).unwrap_or_else(|| root.join("Dockerfile"));
        let ignore = IgnoreMatcher::load(&root, &dockerfile)?;
        Ok(BuildContext { root, ignore })
    }

    /// Opens a `--build-context` directory: only its own `.dockerignore`
    /// applies (the Dockerfile lives elsewhere).
    pub fn open_named(root: &Path) -> Result<Self, ContextError> {
        let root = checked_root(root)?;
        let path = root.join(".dockerignore");
        let text = match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(ContextError::Io { path, source }),
        };
        let ignore = IgnoreMatcher::parse(&text, &path)?;
        Ok(BuildContext { root, ignore })
    }

    /// Opens a directory with no .dockerignore rules (an `ADD <git URL>`
    /// checkout: BuildKit's git source ignores none).
    pub fn open_unfiltered(root: &Path) -> Result<Self, ContextError> {
        let root = checked_root(root)?;
        let ignore = IgnoreMatcher::parse("", &root)?;
        Ok(BuildContext { root, ignore })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether .dockerignore hides `path` (relative, `/`-separated).
    pub fn is_excluded(&self, path: &str) -> bool {
        !path.is_empty() && self.ignore.is_excluded(path)
    }

    fn host_path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(file_name::to_os(rel))
        }
    }

    /// The entry at `rel` (normalised, relative), symlinks not followed;
    /// `None` when it does not exist or .dockerignore hides it.
    pub fn entry(&self, rel: &str) -> Result<Option<ContextEntry>, ContextError> {
        let host = self.host_path(rel);
        let meta = match std::fs::symlink_metadata(&host) {
            Ok(m) => m,
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => return Ok(None),
            Err(source) => return Err(ContextError::Io { path: host, source }),
        };
        if !self.visible(rel, meta.is_dir()) {
            return Ok(None);
        }
        to_entry(rel, &host, &meta)
    }

    /// A directory excluded by .dockerignore still exists when a `!` pattern
    /// may re-include something below it (BuildKit sends such parents).
    fn visible(&self, rel: &str, is_dir: bool) -> bool {
        !self.is_excluded(rel) || is_dir && self.ignore.may_include_below(rel)
    }

    /// The visible children of the directory `rel`, sorted by name.
    pub fn read_dir(&self, rel: &str) -> Result<Vec<ContextEntry>, ContextError> {
        let host = self.host_path(rel);
        let rd = std::fs::read_dir(&host).map_err(|source| ContextError::Io { path: host.clone(), source })?;
        let mut names = Vec::new();
        for item in rd {
            let item = item.map_err(|source| ContextError::Io { path: host.clone(), source })?;
            let name = item.file_name();
            let Some(name) = file_name::from_os(&name) else {
                // Only on Windows (unpaired surrogates); such a name only
                // matters when .dockerignore lets it into the build.
                let lossy = name.to_string_lossy();
                let is_dir = item.file_type().is_ok_and(|t| t.is_dir());
                if self.visible(&join(rel, &lossy), is_dir) {
                    return Err(ContextError::NotUnicode { path: item.path() });
                }
                continue;
            };
            names.push(name.into_owned());
        }
        names.sort_unstable();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let child = join(rel, &name);
            if let Some(e) = self.entry(&child)? {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// `rel` with every symlink in it resolved (the last component too),
    /// confined to the root: `..` stops at the root and absolute targets
    /// start at it. The result need not exist.
    pub fn resolve(&self, rel: &str) -> Result<String, ContextError> {
        match resolve_lexically(self, rel) {
            Ok(path) => Ok(super::slash_path(&path)),
            // A failed lookup comes back as it was; anything else is a loop.
            Err(e) => match e.into_inner().map(|inner| inner.downcast::<ContextError>()) {
                Some(Ok(lookup)) => Err(*lookup),
                _ => Err(ContextError::SymlinkLoop { path: rel.to_string() }),
            },
        }
    }

    /// Opens the regular file at `rel` (already resolved) for reading.
    pub fn open_file(&self, rel: &str) -> io::Result<File> {
        open_in_root(&self.root, rel)
    }
}

impl Tree for BuildContext {
    fn node(&self, rel: &Path) -> io::Result<Node> {
        let entry = self.entry(&super::slash_path(rel)).map_err(io::Error::other)?;
        Ok(Node::of_entry(entry.as_ref().map(|e| &e.entry.kind)))
    }
}

/// `root`, canonical, once it is known to be a directory.
fn checked_root(root: &Path) -> Result<PathBuf, ContextError> {
    let meta = std::fs::metadata(root).map_err(|source| ContextError::Io { path: root.to_path_buf(), source })?;
    if !meta.is_dir() {
        return Err(ContextError::Invalid { path: root.to_path_buf(), message: "not a directory".into() });
    }
    root.canonicalize().map_err(|source| ContextError::Io { path: root.to_path_buf(), source })
}

/// Opens the file `rel` below `root` for reading without following any
/// symlink, so a link swapped in after the walk cannot lead outside the
/// root: `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` on Linux 5.6+,
/// else (and on other systems) `O_NOFOLLOW` on the last component.
pub fn open_in_root(root: &Path, rel: &str) -> io::Result<File> {
    #[cfg(target_os = "linux")]
    match open_beneath(root, rel) {
        // ENOSYS: an older kernel; EPERM: a seccomp filter that does not know openat2.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => {}
        other => return other,
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NOFOLLOW);
    }
    opts.open(root.join(file_name::to_os(rel)))
}

#[cfg(target_os = "linux")]
fn open_beneath(root: &Path, rel: &str) -> io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let dir = File::open(root)?;
    let c_rel = std::ffi::CString::new(file_name::to_bytes(rel)).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    /// The kernel's `struct open_how` (libc's is non-exhaustive).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: valid fd, NUL-terminated path, and `how` lives across the call with its exact size.
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, dir.as_raw_fd(), c_rel.as_ptr(), &how as *const OpenHow, std::mem::size_of::<OpenHow>())
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new fd that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// `dir/name`, or `name` at the root.
pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// `None` for a socket: it cannot be copied, and like Docker's context tar
/// a COPY skips it rather than failing.
fn to_entry(rel: &str, host: &Path, meta: &Metadata) -> Result<Option<ContextEntry>, ContextError> {
    let ft = meta.file_type();
    let (mode, mtime, mtime_nsec, inode) = unix_bits(meta);
    let kind = if ft.is_symlink() {
        let target = std::fs::read_link(host).map_err(|source| ContextError::Io { path: host.to_path_buf(), source })?;
        let target = file_name::from_os(target.as_os_str()).ok_or_else(|| ContextError::NotUnicode { path: host.to_path_buf() })?;
        EntryKind::Symlink { target: target.into_owned() }
    } else if ft.is_dir() {
        EntryKind::Dir { opaque: false }
    } else if ft.is_file() {
        EntryKind::File { size: meta.len(), link: None }
    } else {
        match special_kind(meta) {
            Some(k) => k,
            None => return Ok(None),
        }
    };
    let inode = if matches!(kind, EntryKind::File { .. }) { inode } else { None };
    let xattrs = if matches!(kind, EntryKind::Symlink { .. }) { Vec::new() } else { xattrs(host)? };
    Ok(Some(ContextEntry {
        entry: LayerEntry { path: rel.to_string(), kind, mode, uid: 0, gid: 0, mtime, mtime_nsec, xattrs },
        inode,
    }))
}

/// (permission bits, mtime seconds, mtime nanoseconds, (dev, ino) if nlink > 1).
#[cfg(unix)]
fn unix_bits(meta: &Metadata) -> (u32, i64, u32, Option<(u64, u64)>) {
    use std::os::unix::fs::MetadataExt;
    let inode = (meta.nlink() > 1).then(|| (meta.dev(), meta.ino()));
    (meta.mode() & 0o7777, meta.mtime(), meta.mtime_nsec() as u32, inode)
}

#[cfg(not(unix))]
fn unix_bits(meta: &Metadata) -> (u32, i64, u32, Option<(u64, u64)>) {
    let mode = if meta.is_dir() { 0o755 } else { 0o644 };
    let (secs, nsec) = match meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()) {
        Some(d) => (d.as_secs() as i64, d.subsec_nanos()),
        None => (0, 0),
    };
    (mode, secs, nsec, None)
}

/// The extended attributes an image may carry from the context (BuildKit
/// sends them too): `user.*` and file capabilities. SELinux labels and ACLs
/// describe the host, not the image.
#[cfg(target_os = "linux")]
fn xattrs(host: &Path) -> Result<Vec<Xattr>, ContextError> {
    use std::ffi::{CStr, CString};
    use std::os::unix::ffi::OsStrExt;
    let io_err = |source| ContextError::Io { path: host.to_path_buf(), source };
    let c_path = CString::new(host.as_os_str().as_bytes()).map_err(|_| io_err(io::ErrorKind::InvalidInput.into()))?;
    let mut names = vec![0u8; 1024];
    let len = loop {
        // SAFETY: the buffer is valid for names.len() bytes.
        let n = unsafe { libc::llistxattr(c_path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => names.resize(names.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(io_err(e)),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !(name.starts_with(b"user.") || name == b"security.capability") {
            continue;
        }
        let c_name = CString::new(name).expect("split at NUL");
        let mut value = vec![0u8; 256];
        let n = loop {
            // SAFETY: both strings are NUL-terminated; the buffer is valid for value.len() bytes.
            let n = unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => value.resize(value.len() * 4, 0),
                Some(libc::ENODATA) => break usize::MAX,
                _ => return Err(io_err(e)),
            }
        };
        if n == usize::MAX {
            continue; // removed between list and get
        }
        value.truncate(n);
        let name = CStr::from_bytes_with_nul(c_name.as_bytes_with_nul()).expect("NUL-terminated").to_string_lossy().into_owned();
        out.push(Xattr { name, value });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(not(target_os = "linux"))]
fn xattrs(_host: &Path) -> Result<Vec<Xattr>, ContextError> {
    Ok(Vec::new())
}

#[cfg(unix)]
fn special_kind(meta: &Metadata) -> Option<EntryKind> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let ft = meta.file_type();
    let rdev = meta.rdev();
    // glibc's major()/minor() encoding, spelled out so it builds on every unix.
    let major = (((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)) as u32;
    let minor = (((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)) as u32;
    if ft.is_fifo() {
        Some(EntryKind::Fifo)
    } else if ft.is_char_device() {
        Some(EntryKind::CharDevice { major, minor })
    } else if ft.is_block_device() {
        Some(EntryKind::BlockDevice { major, minor })
    } else {
        None
    }
}

#[cfg(not(unix))]
fn special_kind(_meta: &Metadata) -> Option<EntryKind> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(files: &[(&str, &str)], ignore: Option<&str>) -> (tempfile::TempDir, BuildContext) {
        let dir = tempfile::tempdir().unwrap();
        for (p, content) in files {
            let host = dir.path().join(p);
            std::fs::create_dir_all(host.parent().unwrap()).unwrap();
            std::fs::write(host, content).unwrap();
        }
        if let Some(ig) = ignore {
            std::fs::write(dir.path().join(".dockerignore"), ig).unwrap();
        }
        let c = BuildContext::open(dir.path(), None).unwrap();
        (dir, c)
    }

    #[cfg(unix)]
    #[test]
    fn a_name_that_is_not_utf8_is_walked_and_read_like_any_other() {
        use std::os::unix::ffi::OsStrExt;
        let (dir, _) = ctx(&[("sub/ok.txt", "ok")], None);
        std::fs::write(dir.path().join("sub").join(std::ffi::OsStr::from_bytes(b"bad\xff")), "x").unwrap();
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(b"bad\xff"), dir.path().join("sub/l")).unwrap();
        let c = BuildContext::open(dir.path(), None).unwrap();
        let bad = format!("sub/{}", file_name::from_bytes(b"bad\xff"));
        let entries = c.read_dir("sub").unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.entry.path.as_str()).collect();
        assert_eq!(names, [bad.as_str(), "sub/l", "sub/ok.txt"]);
        let link = file_name::from_bytes(b"bad\xff").into_owned();
        assert_eq!(entries[1].entry.kind, EntryKind::Symlink { target: link });
        assert_eq!(std::io::read_to_string(c.open_file(&bad).unwrap()).unwrap(), "x");
        assert!(c.entry(&bad).unwrap().is_some());
        std::fs::write(dir.path().join(".dockerignore"), "sub/bad*\n").unwrap();
        let c = BuildContext::open(dir.path(), None).unwrap();
        let names: Vec<String> = c.read_dir("sub").unwrap().into_iter().map(|e| e.entry.path).collect();
        assert_eq!(names, ["sub/l", "sub/ok.txt"], "`*` matches the name's bytes, as in Docker");
    }

    #[test]
    fn open_rejects_files_and_missing_dirs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "").unwrap();
        assert!(matches!(BuildContext::open(&dir.path().join("f"), None), Err(ContextError::Invalid { .. })));
        assert!(matches!(BuildContext::open(&dir.path().join("nope"), None), Err(ContextError::Io { .. })));
    }

    #[test]
    fn dockerignore_hides_entries_and_bang_reincludes() {
        let (_d, c) = ctx(
            &[("a.txt", "a"), ("secret.key", "k"), ("docs/x.md", "x"), ("docs/keep.md", "k"), ("Dockerfile", "FROM x")],
            Some("*.key\ndocs\n!docs/keep.md\nDockerfile\n"),
        );
        assert!(c.entry("a.txt").unwrap().is_some());
        assert!(c.entry("secret.key").unwrap().is_none());
        assert!(c.entry("Dockerfile").unwrap().is_none(), "excluded for COPY, the engine reads it directly");
        assert!(c.entry("docs").unwrap().is_some(), "parent of a re-included file stays");
        let names: Vec<String> = c.read_dir("docs").unwrap().into_iter().map(|e| e.entry.path).collect();
        assert_eq!(names, vec!["docs/keep.md"]);
        let root: Vec<String> = c.read_dir("").unwrap().into_iter().map(|e| e.entry.path).collect();
        assert_eq!(root, vec![".dockerignore", "a.txt", "docs"]);
    }

    #[test]
    fn per_dockerfile_ignore_file_takes_precedence() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".dockerignore"), "a\n").unwrap();
        std::fs::write(dir.path().join("app.Dockerfile.dockerignore"), "b\n").unwrap();
        std::fs::write(dir.path().join("a"), "").unwrap();
        std::fs::write(dir.path().join("b"), "").unwrap();
        let c = BuildContext::open(dir.path(), Some(&dir.path().join("app.Dockerfile"))).unwrap();
        assert!(c.entry("a").unwrap().is_some() && c.entry("b").unwrap().is_none());
    }

    #[cfg(unix)]
    #[test]
    fn resolve_stays_inside_the_root() {
        let (d, c) = ctx(&[("real/f", "1"), ("etc/passwd", "inside")], None);
        let root = d.path();
        std::os::unix::fs::symlink("real", root.join("rel")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("up")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert_eq!(c.resolve("rel/f").unwrap(), "real/f");
        assert_eq!(c.resolve("abs/passwd").unwrap(), "etc/passwd", "absolute targets start at the context root");
        assert_eq!(c.resolve("up/passwd").unwrap(), "etc/passwd", "`..` stops at the root");
        assert_eq!(c.resolve("../../x").unwrap(), "x");
        assert_eq!(c.resolve("missing/a/b").unwrap(), "missing/a/b");
        assert!(matches!(c.resolve("loop"), Err(ContextError::SymlinkLoop { .. })));
    }

    #[cfg(unix)]
    #[test]
    fn open_file_never_follows_links() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host").unwrap();
        let (d, c) = ctx(&[("dir/f", "inside")], None);
        std::os::unix::fs::symlink(outside.path(), d.path().join("out")).unwrap();
        std::os::unix::fs::symlink("dir/f", d.path().join("lf")).unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut c.open_file("dir/f").unwrap(), &mut s).unwrap();
        assert_eq!(s, "inside");
        assert!(c.open_file("out/secret").is_err(), "a symlinked parent is refused");
        assert!(c.open_file("lf").is_err(), "a symlink as the file is refused");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn user_xattrs_and_capabilities_come_along() {
        let (d, c) = ctx(&[("bin", "elf")], None);
        let path = std::ffi::CString::new(d.path().join("bin").to_str().unwrap()).unwrap();
        let set = |name: &str, value: &[u8]| {
            let name = std::ffi::CString::new(name).unwrap();
            // SAFETY: valid NUL-terminated strings and a valid buffer.
            unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) }
        };
        if set("user.kiln.test", b"v\0\xff") != 0 {
            eprintln!("skipping: the temp dir's file system has no user xattrs");
            return;
        }
        let e = c.entry("bin").unwrap().unwrap().entry;
        assert_eq!(e.xattrs, vec![Xattr { name: "user.kiln.test".into(), value: b"v\0\xff".to_vec() }]);
    }

    #[cfg(unix)]
    #[test]
    fn sockets_are_skipped_and_fifos_kept() {
        let (d, c) = ctx(&[("f", "")], None);
        let _sock = std::os::unix::net::UnixListener::bind(d.path().join("sock")).unwrap();
        let fifo = std::ffi::CString::new(d.path().join("fifo").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let kinds: Vec<(String, EntryKind)> = c.read_dir("").unwrap().into_iter().map(|e| (e.entry.path, e.entry.kind)).collect();
        assert_eq!(kinds, vec![("f".into(), EntryKind::File { size: 0, link: None }), ("fifo".into(), EntryKind::Fifo)]);
    }
}
