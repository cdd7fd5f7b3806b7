//! File contents of a RUN step, read from the scratch disk image on the host.
//!
//! The guest froze the scratch ext4 file system before reporting its
//! manifest, so the image file is consistent; ext4-view reads it (journal
//! included) through positioned reads on one open file. A file's path must
//! contain no symlink in the image: the manifest said it is a regular file
//! below the upper directory, and a disagreeing image is an error rather
//! than a read of some other file.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ext4_view::{Ext4, Ext4Read};
use kiln_protocol::LayerEntry;

use super::layer_tar::ContentSource;

/// Reads `<upper>/<entry.path>` from an ext4 image with ext4-view.
pub struct Ext4Contents {
    fs: Ext4,
    image: PathBuf,
    /// Absolute upper directory inside the image, no trailing `/`.
    upper: String,
}

/// The image file, read with one positioned read per request (ext4-view
/// asks for blocks in groups of 32 KiB through its block cache).
struct ImageFile(File);

impl Ext4Read for ImageFile {
    fn read(&mut self, start_byte: u64, dst: &mut [u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        read_exact_at(&self.0, dst, start_byte).map_err(|e| Box::new(e) as _)
    }
}

#[cfg(unix)]
fn read_exact_at(f: &File, dst: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, dst, offset)
}

#[cfg(not(unix))]
fn read_exact_at(mut f: &File, dst: &mut [u8], offset: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(dst)
}

fn ext4_err(image: &Path, what: &str, e: ext4_view::Ext4Error) -> io::Error {
    let kind = match e {
        ext4_view::Ext4Error::NotFound => io::ErrorKind::NotFound,
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, format!("{}: {what}: {e}", image.display()))
}

impl Ext4Contents {
    /// `upper` is the scratch-relative upper directory the manifest describes.
    pub fn open(image: &Path, upper: &str) -> io::Result<Self> {
        let file = File::open(image).map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", image.display())))?;
        let fs = Ext4::load(Box::new(ImageFile(file))).map_err(|e| ext4_err(image, "not a readable ext4 file system", e))?;
        let upper = upper.trim_matches('/');
        let upper = if upper.is_empty() { String::new() } else { format!("/{upper}") };
        Ok(Self { fs, image: image.to_path_buf(), upper })
    }
}

impl ContentSource for Ext4Contents {
    fn open(&mut self, entry: &LayerEntry) -> io::Result<Box<dyn Read + '_>> {
        let path = format!("{}/{}", self.upper, entry.path.trim_start_matches('/'));
        let what = |m: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {path}: {m}", self.image.display()));
        // canonicalize follows every symlink: an unchanged path has none.
        let canonical = self.fs.canonicalize(path.as_str()).map_err(|e| ext4_err(&self.image, &path, e))?;
        if canonical.as_ref() != path.as_bytes() {
            return Err(what("a symlink in the image where the manifest has a regular file (or its directories)"));
        }
        // Size differences surface in the tar writer as SizeMismatch.
        let file = self.fs.open(path.as_str()).map_err(|e| ext4_err(&self.image, &path, e))?;
        Ok(Box::new(file))
    }
}
