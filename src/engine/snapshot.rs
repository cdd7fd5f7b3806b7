//! File contents of a RUN step, read from the scratch disk image on the host.
//!
//! The guest froze the scratch ext4 file system before reporting its
//! manifest, so the image file is consistent; ext4-view reads it (journal
//! included) through positioned reads on one open file. A file's path must
//! contain no symlink in the image: the manifest said it is a regular file
//! below the upper directory, and a disagreeing image is an error rather
//! than a read of some other file.
//!
//! Each directory is listed once and the file types of its entries kept,
//! so that check costs no extra path lookup per file: ext4-view scans
//! small (unindexed) directories linearly, and lookups dominate the time
//! spent on small files.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ext4_view::{Ext4, Ext4Read, FileType};
use kiln_protocol::{file_name, LayerEntry};

use super::layer_tar::ContentSource;

/// Reads `<upper>/<entry.path>` from an ext4 image with ext4-view.
pub struct Ext4Contents {
    fs: Ext4,
    image: PathBuf,
    /// Absolute upper directory inside the image, no trailing `/`.
    upper: String,
    /// Directory (upper-relative, "" for the upper dir) -> its entries' types.
    listings: HashMap<String, HashMap<Vec<u8>, FileType>>,
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
        let canonical = fs.canonicalize(if upper.is_empty() { "/" } else { upper.as_str() }).map_err(|e| ext4_err(image, &upper, e))?;
        if !upper.is_empty() && canonical.as_ref() != upper.as_bytes() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{}: {upper} is not a plain directory", image.display())));
        }
        Ok(Self { fs, image: image.to_path_buf(), upper, listings: HashMap::new() })
    }

    /// The types of the entries of `dir` (upper-relative), listed once.
    fn listing(&mut self, dir: &str) -> io::Result<&HashMap<Vec<u8>, FileType>> {
        if !self.listings.contains_key(dir) {
            let abs = format!("{}/{dir}", self.upper);
            let err = |e| ext4_err(&self.image, &abs, e);
            let mut types = HashMap::new();
            for entry in self.fs.read_dir(&*file_name::to_bytes(&abs)).map_err(err)? {
                let entry = entry.map_err(err)?;
                types.insert(entry.file_name().as_ref().to_vec(), entry.file_type().map_err(err)?);
            }
            self.listings.insert(dir.to_string(), types);
        }
        Ok(&self.listings[dir])
    }
}

impl ContentSource for Ext4Contents {
    fn open(&mut self, entry: &LayerEntry) -> io::Result<Box<dyn Read + '_>> {
        let rel = entry.path.trim_start_matches('/');
        let path = format!("{}/{rel}", self.upper);
        let image = self.image.clone();
        let what = |m: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {path}: {m}", image.display()));
        // Every component must be what the manifest implies: directories, then a regular file.
        let mut dir_end = 0;
        let parts: Vec<&str> = rel.split('/').collect();
        for (i, name) in parts.iter().enumerate() {
            let dir = if dir_end == 0 { "" } else { &rel[..dir_end - 1] };
            if matches!(*name, "" | "." | "..") {
                return Err(what("not a normalised path"));
            }
            let ty = self.listing(dir)?.get(&*file_name::to_bytes(name)).copied();
            let last = i + 1 == parts.len();
            match ty {
                None => return Err(io::Error::new(io::ErrorKind::NotFound, format!("{}: {path}: not found", image.display()))),
                Some(t) if last && !t.is_regular_file() => {
                    return Err(what("the image has no regular file here (a symlink or other type) where the manifest has one"))
                }
                Some(t) if !last && !t.is_dir() => return Err(what("a directory of the path is a symlink or file in the image")),
                Some(_) => {}
            }
            dir_end += name.len() + 1;
        }
        // Size differences surface in the tar writer as SizeMismatch.
        let file = self.fs.open(&*file_name::to_bytes(&path)).map_err(|e| ext4_err(&self.image, &path, e))?;
        Ok(Box::new(file))
    }
}

// The tests make symlinks and ext4 images with Unix tools.
#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::engine::layer_tar::tests::{entry, read_tar, uncompressed};
    use crate::engine::layer_tar::{write_layer, LayerOptions, LayerTarError};
    use kiln_protocol::EntryKind;
    use std::process::Command;

    fn mke2fs() -> Option<PathBuf> {
        ["/usr/sbin/mke2fs", "/sbin/mke2fs"].iter().map(PathBuf::from).find(|p| p.is_file())
    }

    /// A 16 MiB ext4 image of `root` made by mke2fs -d.
    fn image_of(root: &Path, out: &Path) {
        let bin = mke2fs().unwrap();
        let o = Command::new(bin).arg("-q").arg("-F").arg("-d").arg(root).args(["-t", "ext4"]).arg(out).arg("16M").output().unwrap();
        assert!(o.status.success(), "mke2fs: {}", String::from_utf8_lossy(&o.stderr));
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[(i % 3) + 1]).collect()
    }

    #[test]
    fn reads_manifest_files_back_from_an_ext4_image() {
        if mke2fs().is_none() {
            eprintln!("SKIPPED: mke2fs is not installed (Debian package e2fsprogs)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let upper = tmp.path().join("root/work/upper");
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::create_dir_all(upper.join("data")).unwrap();
        std::fs::write(upper.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
        std::fs::write(upper.join("empty"), b"").unwrap();
        let big = pattern(3 * 1024 * 1024 + 123);
        std::fs::write(upper.join("data/big"), &big).unwrap();
        std::os::unix::fs::symlink("../etc/hosts", upper.join("data/sl")).unwrap();
        std::os::unix::fs::symlink("data", upper.join("dl")).unwrap();
        // Outside the upper dir: must never be read for an entry.
        std::fs::write(tmp.path().join("root/work/secret"), b"no").unwrap();
        let img = tmp.path().join("scratch.img");
        image_of(&tmp.path().join("root"), &img);

        let mut src = Ext4Contents::open(&img, "/work/upper/").unwrap();
        let f = |p: &str, size: usize| entry(p, EntryKind::File { size: size as u64, link: None });
        for (p, want) in [("etc/hosts", &b"127.0.0.1 localhost\n"[..]), ("data/big", &big[..]), ("empty", b"")] {
            let mut got = Vec::new();
            ContentSource::open(&mut src, &f(p, want.len())).unwrap().read_to_end(&mut got).unwrap();
            assert!(got == want, "{p}: {} bytes back, {} expected", got.len(), want.len());
        }
        for p in ["data/sl", "dl/big", "missing", "../secret"] {
            let err = ContentSource::open(&mut src, &f(p, 1)).err().expect(p);
            assert!(err.to_string().contains("scratch.img"), "{p}: {err}");
        }

        // Through the tar writer: content and a size disagreement.
        let d = tempfile::tempdir().unwrap();
        let store = crate::oci::Store::open(d.path()).unwrap();
        let mut entries = vec![entry("data", EntryKind::Dir { opaque: false }), f("data/big", big.len()), f("etc/hosts", 20)];
        let layer = write_layer(&store, &mut entries, &mut src, &LayerOptions::default()).unwrap().unwrap();
        let back = read_tar(&uncompressed(&store, &layer));
        assert_eq!(back[1].data, big);
        assert_eq!(back[2].data, b"127.0.0.1 localhost\n");
        // The same entries read from the host tree give the same layer, byte for byte.
        struct Host(PathBuf);
        impl ContentSource for Host {
            fn open(&mut self, e: &LayerEntry) -> io::Result<Box<dyn Read + '_>> {
                Ok(Box::new(File::open(self.0.join(&e.path))?))
            }
        }
        let again = write_layer(&store, &mut entries, &mut Host(upper.clone()), &LayerOptions::default()).unwrap().unwrap();
        assert_eq!(again.descriptor.digest(), layer.descriptor.digest());
        let err = write_layer(&store, &mut vec![f("etc/hosts", 5)], &mut src, &LayerOptions::default()).unwrap_err();
        assert!(matches!(err, LayerTarError::SizeMismatch { expected: 5, actual: 20, .. }), "{err}");
        let err = Ext4Contents::open(&upper.join("etc/hosts"), "/").err().unwrap();
        assert!(err.to_string().contains("not a readable ext4"), "{err}");
    }
}
