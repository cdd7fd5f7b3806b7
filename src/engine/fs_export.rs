//! `--output type=tar` and `--output type=local`: the final file system of
//! built images (layers merged, whiteouts applied), as one tar stream or as
//! files below a directory, like buildx's tar and local exporters. Several
//! platforms each get a folder named like `linux_arm64`.
//!
//! Paths come from [`LayerStack`], which refuses `..`; the directory writer
//! also refuses to write through a symlink it finds on the way, so nothing
//! lands outside the destination. Files are owned by the user running kiln
//! (as buildx's local exporter does when unprivileged); device nodes and
//! sockets are skipped, and counted.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use kiln_protocol::{file_name, EntryKind, LayerEntry};

use super::layer_tar::{write_tar, ContentSource, LayerOptions, LayerTarError};
use super::rootfs::{LayerStack, RootfsError};
use crate::oci::{Compression, Descriptor, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum FsExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Tar(#[from] LayerTarError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: refusing to write through the symlink {link}")]
    ThroughSymlink { path: PathBuf, link: PathBuf },
}

/// One image's file system, under `prefix` ("" or e.g. `linux_arm64`).
pub struct Part<'a> {
    pub prefix: String,
    pub manifest: &'a Descriptor,
}

/// What [`write_dir`] skipped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    pub devices: usize,
}

/// The merged entries of every part (prefixed, opaque marks dropped: a
/// file system has no lower layer to hide) and their contents.
fn collect(store: &Store, parts: &[Part<'_>]) -> Result<(Vec<LayerEntry>, Contents), FsExportError> {
    let mut entries = Vec::new();
    let mut sources = Vec::new();
    for part in parts {
        let image = store.image(part.manifest, None)?;
        let stack = LayerStack::open(store, image.manifest.layers())?;
        let mine: Vec<LayerEntry> = stack.walk("").into_iter().filter(|e| !e.path.is_empty()).cloned().collect();
        let files: Vec<String> =
            mine.iter().filter(|e| matches!(e.kind, EntryKind::File { .. })).map(|e| e.path.clone()).collect();
        sources.push((part.prefix.clone(), stack.spool(store, &files)?));
        if !part.prefix.is_empty() {
            entries.push(LayerEntry {
                path: part.prefix.clone(),
                kind: EntryKind::Dir { opaque: false },
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: 0,
                mtime_nsec: 0,
                xattrs: Vec::new(),
            });
        }
        for mut e in mine {
            if let EntryKind::Dir { opaque } = &mut e.kind {
                *opaque = false;
            }
            if !part.prefix.is_empty() {
                e.path = format!("{}/{}", part.prefix, e.path);
            }
            entries.push(e);
        }
    }
    Ok((entries, Contents { sources }))
}

/// File contents of several parts, each answered by its own spool.
struct Contents {
    sources: Vec<(String, Box<dyn ContentSource>)>,
}

impl ContentSource for Contents {
    fn open(&mut self, entry: &LayerEntry) -> io::Result<Box<dyn Read + '_>> {
        for (prefix, source) in &mut self.sources {
            let rel = if prefix.is_empty() { Some(entry.path.as_str()) } else { entry.path.strip_prefix(&format!("{prefix}/")) };
            if let Some(rel) = rel {
                let inner = LayerEntry { path: rel.to_string(), ..entry.clone() };
                return source.open(&inner);
            }
        }
        Err(io::Error::new(io::ErrorKind::NotFound, format!("{} belongs to no exported image", entry.path)))
    }
}

/// Writes the parts' file systems as one uncompressed tar to `out`.
pub fn write_tar_stream(store: &Store, parts: &[Part<'_>], source_date_epoch: Option<i64>, out: &mut dyn Write) -> Result<(), FsExportError> {
    let (mut entries, mut contents) = collect(store, parts)?;
    let opts = LayerOptions { compression: Compression::None, source_date_epoch };
    write_tar(&mut entries, &mut contents, &opts, out)?;
    Ok(())
}

/// Writes the parts' file systems below `dest` (created if missing; what is
/// there is replaced entry by entry, as buildx does).
pub fn write_dir(store: &Store, parts: &[Part<'_>], dest: &Path) -> Result<Skipped, FsExportError> {
    let (mut entries, mut contents) = collect(store, parts)?;
    kiln_protocol::layer_entry::sort_for_layer(&mut entries);
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FsExportError::Io { path: path.clone(), source }
    };
    std::fs::create_dir_all(dest).map_err(io_err(dest))?;
    let mut skipped = Skipped::default();
    // Directory modes and mtimes are set last: filling them changes the
    // mtime, and a read-only directory could not be filled.
    let mut dirs: Vec<(PathBuf, &LayerEntry)> = Vec::new();
    for entry in &entries {
        let target = dest.join(file_name::to_os(&entry.path));
        check_parents(dest, &entry.path)?;
        let existing = std::fs::symlink_metadata(&target).ok();
        let is_dir_entry = matches!(entry.kind, EntryKind::Dir { .. });
        match existing {
            Some(m) if m.is_dir() && is_dir_entry => {}
            Some(m) if m.is_dir() => std::fs::remove_dir_all(&target).map_err(io_err(&target))?,
            Some(_) => std::fs::remove_file(&target).map_err(io_err(&target))?,
            None => {}
        }
        match &entry.kind {
            EntryKind::Dir { .. } => {
                if !target.is_dir() {
                    std::fs::create_dir(&target).map_err(io_err(&target))?;
                }
                dirs.push((target, entry));
                continue;
            }
            EntryKind::File { .. } => {
                let mut file = std::fs::File::create_new(&target).map_err(io_err(&target))?;
                let mut reader = contents.open(entry).map_err(io_err(&target))?;
                io::copy(&mut reader, &mut file).map_err(io_err(&target))?;
                set_mode(&target, entry.mode)?;
                set_mtime(&file, entry.mtime).map_err(io_err(&target))?;
            }
            EntryKind::Symlink { target: link } => symlink(link, &target).map_err(io_err(&target))?,
            EntryKind::Fifo => make_fifo(&target, entry.mode).map_err(io_err(&target))?,
            EntryKind::CharDevice { .. } | EntryKind::BlockDevice { .. } | EntryKind::Socket => skipped.devices += 1,
            EntryKind::Whiteout => {}
        }
    }
    for (path, entry) in dirs.iter().rev() {
        set_mode(path, entry.mode)?;
        if let Ok(dir) = std::fs::File::open(path) {
            let _ = set_mtime(&dir, entry.mtime);
        }
    }
    Ok(skipped)
}

/// Every parent of `rel` below `dest` must be a real directory: the writer
/// created it, so a symlink there (from the image, or raced in) is refused.
fn check_parents(dest: &Path, rel: &str) -> Result<(), FsExportError> {
    let mut at = dest.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        at.push(file_name::to_os(part));
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(FsExportError::ThroughSymlink { path: dest.join(rel), link: at });
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) | Err(_) => {
                return Err(FsExportError::Io {
                    path: dest.join(rel),
                    source: io::Error::new(io::ErrorKind::NotFound, format!("{} is not a directory", at.display())),
                })
            }
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), FsExportError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|source| FsExportError::Io { path: path.to_path_buf(), source })?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

fn set_mtime(file: &std::fs::File, mtime: i64) -> io::Result<()> {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime.max(0) as u64);
    file.set_modified(time)
}

/// Makes a symlink from an in-image (lossless, see `file_name`) target.
#[cfg(unix)]
pub(crate) fn symlink(link: &str, at: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(file_name::to_os(link), at)
}

#[cfg(not(unix))]
pub(crate) fn symlink(_link: &str, _at: &Path) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "symlinks are written on Unix hosts only"))
}

#[cfg(unix)]
fn make_fifo(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: mkfifo with a NUL-terminated path we own.
    if unsafe { libc::mkfifo(c.as_ptr(), (mode & 0o777) as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_fifo(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}
