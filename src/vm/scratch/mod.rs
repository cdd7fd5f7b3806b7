//! The per-VM scratch disk: an empty ext4 file system written sparsely from
//! an embedded template (scripts/make-scratch-template.sh), so creating one
//! needs neither root nor mkfs and costs a few megabytes of real disk.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

static TEMPLATE: &[u8] = include_bytes!("template.ext4.sparse.gz");
const MAGIC: &[u8; 12] = b"KILNSPARSE1\0";

#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("writing the scratch disk {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("the embedded scratch template is corrupt: {0}")]
    Template(&'static str),
}

/// Writes a fresh scratch disk image to `path` (which must not exist).
pub fn create(path: &Path) -> Result<u64, ScratchError> {
    let io_err = |source| ScratchError::Io { path: path.display().to_string(), source };
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(TEMPLATE).read_to_end(&mut raw).map_err(|_| ScratchError::Template("gzip"))?;
    let mut cursor = Cursor { data: &raw, pos: 0 };
    if cursor.take(MAGIC.len())? != MAGIC {
        return Err(ScratchError::Template("magic"));
    }
    let size = cursor.u64()?;
    let count = cursor.u32()?;
    let file = File::options().write(true).create_new(true).open(path).map_err(io_err)?;
    set_sparse_len(&file, size).map_err(io_err)?;
    for _ in 0..count {
        let offset = cursor.u64()?;
        let len = cursor.u32()? as usize;
        let block = cursor.take(len)?;
        write_at(&file, block, offset).map_err(io_err)?;
    }
    Ok(size)
}

/// Copies `src` to a new file `dst`, writing only its data: holes stay
/// holes (a scratch disk is 64 GiB of which a few MB are data).
#[cfg(target_os = "linux")]
pub fn copy_sparse(src: &Path, dst: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let from = File::open(src)?;
    let len = from.metadata()?.len();
    let to = File::options().write(true).create_new(true).open(dst)?;
    to.set_len(len)?;
    let mut offset: i64 = 0;
    let mut buf = vec![0u8; 1 << 20];
    while (offset as u64) < len {
        // SAFETY: lseek on an open fd; SEEK_DATA/SEEK_HOLE only move the offset.
        let start = unsafe { libc::lseek(from.as_raw_fd(), offset, libc::SEEK_DATA) };
        if start < 0 {
            let err = std::io::Error::last_os_error();
            // ENXIO: no data after `offset`.
            if err.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(err);
        }
        let end = unsafe { libc::lseek(from.as_raw_fd(), start, libc::SEEK_HOLE) };
        if end < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut pos = start as u64;
        while pos < end as u64 {
            let n = ((end as u64 - pos) as usize).min(buf.len());
            std::os::unix::fs::FileExt::read_exact_at(&from, &mut buf[..n], pos)?;
            std::os::unix::fs::FileExt::write_all_at(&to, &buf[..n], pos)?;
            pos += n as u64;
        }
        offset = end;
    }
    Ok(())
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ScratchError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or(ScratchError::Template("truncated"))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u64(&mut self) -> Result<u64, ScratchError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, ScratchError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
}

/// Grows `file` to `len` as a hole: free on Unix file systems, while NTFS
/// must be told the file is sparse first or it allocates the whole length.
pub fn set_sparse_len(file: &File, len: u64) -> io::Result<()> {
    #[cfg(windows)]
    crate::win32::mark_sparse(file)?;
    file.set_len(len)
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
fn write_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_write(buf, offset)?;
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_is_a_sparse_empty_ext4() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scratch.img");
        let size = create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        assert!(size >= 32 << 30, "scratch disks should leave room for real builds");
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
            assert!(allocated < 64 << 20, "scratch disk should be sparse, {allocated} bytes allocated");
        }
        let fs = ext4_view::Ext4::load_from_path(&path).unwrap();
        let names: Vec<String> = fs
            .read_dir("/")
            .unwrap()
            .map(|e| e.unwrap().file_name().as_str().unwrap().to_string())
            .collect();
        assert!(names.contains(&"lost+found".to_string()), "{names:?}");
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scratch.img");
        std::fs::write(&path, b"keep").unwrap();
        assert!(matches!(create(&path), Err(ScratchError::Io { .. })));
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    }
}
