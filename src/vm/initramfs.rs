//! The guest's initramfs: a newc cpio archive whose `/init` is kiln's guest
//! agent, plus the kernel modules it loads and `/etc/kiln/modules` listing
//! them in load order (one absolute path per line).
//!
//! Built in Rust (no cpio/gzip tools) and cached by content hash under
//! `<cache_dir>/initramfs/<sha256>.cpio`. It is left uncompressed: QEMU copies
//! it into guest RAM as is, and under TCG the guest's gunzip costs more than
//! the extra megabytes. Measured with a 3.9 MB archive (1.7 MB gzipped), arm64
//! cloud kernel, TCG, 5 boots each: /init reached at a median 1.33 s guest
//! time (2.17 s wall) uncompressed vs 1.45 s (2.33 s wall) gzipped.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::kernel::GuestKernel;

/// Where the agent finds the module list.
pub const MODULE_LIST: &str = "etc/kiln/modules";
/// Where modules go inside the initramfs.
pub const MODULE_DIR: &str = "lib/modules";

/// Bumped whenever the archive layout changes, so old cache files are not reused.
const LAYOUT_VERSION: &[u8] = b"kiln-initramfs-1";

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("reading kernel module {}: {source}", path.display())]
    Module { path: PathBuf, source: std::io::Error },
    #[error("two kernel modules share the file name {0}")]
    DuplicateModule(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

/// The initramfs for `agent` + `kernel`, from the cache or built into it.
pub fn ensure_initramfs(agent: &[u8], kernel: &GuestKernel, cache_dir: &Path) -> Result<PathBuf, InitramfsError> {
    let modules = read_modules(kernel)?;
    let mut hash = Sha256::new();
    hash.update(LAYOUT_VERSION);
    hash.update((agent.len() as u64).to_le_bytes());
    hash.update(agent);
    hash.update((kernel.release.len() as u64).to_le_bytes());
    hash.update(kernel.release.as_bytes());
    for (name, bytes) in &modules {
        hash.update((name.len() as u64).to_le_bytes());
        hash.update(name.as_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    }
    let dir = cache_dir.join("initramfs");
    let path = dir.join(format!("{}.cpio", hex::encode(hash.finalize())));
    if path.is_file() {
        return Ok(path);
    }
    let io = |context: String| move |source| InitramfsError::Io { context, source };
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    super::kernel::remove_stale_temps(&dir);
    // A temp file renamed into place: a half-written archive never has the final name.
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(&dir)
        .map_err(io(format!("creating a temp file in {}", dir.display())))?;
    write_archive(agent, &modules, tmp.as_file_mut()).map_err(io(format!("writing {}", tmp.path().display())))?;
    tmp.persist(&path).map_err(|e| io(format!("moving the initramfs to {}", path.display()))(e.error))?;
    Ok(path)
}

/// Writes the initramfs for `agent` + `kernel` to `out`.
pub fn build_initramfs(agent: &[u8], kernel: &GuestKernel, out: &Path) -> Result<(), InitramfsError> {
    let modules = read_modules(kernel)?;
    let io = |source| InitramfsError::Io { context: format!("writing {}", out.display()), source };
    let mut file = std::fs::File::create(out).map_err(io)?;
    write_archive(agent, &modules, &mut file).map_err(io)
}

/// (file name, contents) of each module, in load order.
fn read_modules(kernel: &GuestKernel) -> Result<Vec<(String, Vec<u8>)>, InitramfsError> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for path in &kernel.modules {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if out.iter().any(|(n, _)| *n == name) {
            return Err(InitramfsError::DuplicateModule(name));
        }
        let bytes = std::fs::read(path).map_err(|source| InitramfsError::Module { path: path.clone(), source })?;
        out.push((name, bytes));
    }
    Ok(out)
}

fn write_archive(agent: &[u8], modules: &[(String, Vec<u8>)], out: &mut impl Write) -> std::io::Result<()> {
    let mut cpio = CpioWriter::new(std::io::BufWriter::new(out));
    // Mount points the agent uses; /dev/console so PID 1 has stdio before devtmpfs.
    for dir in ["dev", "proc", "sys", "tmp", "run", "etc", "etc/kiln", "lib", MODULE_DIR] {
        cpio.entry(dir, S_IFDIR | 0o755, 0, &[])?;
    }
    cpio.entry("dev/console", S_IFCHR | 0o600, dev(5, 1), &[])?;
    cpio.entry("init", S_IFREG | 0o755, 0, agent)?;
    let mut list = String::new();
    for (name, bytes) in modules {
        let path = format!("{MODULE_DIR}/{name}");
        cpio.entry(&path, S_IFREG | 0o644, 0, bytes)?;
        list.push_str(&format!("/{path}\n"));
    }
    cpio.entry(MODULE_LIST, S_IFREG | 0o644, 0, list.as_bytes())?;
    cpio.finish()?.flush()
}

use crate::oci::file_mode::{S_IFCHR, S_IFDIR, S_IFREG};

/// (major, minor) packed for [`CpioWriter::entry`].
const fn dev(major: u32, minor: u32) -> u64 {
    ((major as u64) << 32) | minor as u64
}

/// The "newc" cpio format the kernel unpacks: a 110-byte ASCII-hex header,
/// the NUL-terminated name, data, each padded to 4 bytes. Owner root, mtime 0,
/// so equal inputs give byte-identical archives.
struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    fn new(out: W) -> Self {
        CpioWriter { out, next_ino: 1 }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: u64, data: &[u8]) -> std::io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| std::io::Error::other(format!("{name} is over 4 GiB")))?;
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        let ino = self.next_ino;
        self.next_ino += 1;
        let (rmajor, rminor) = ((rdev >> 32) as u32, rdev as u32);
        let namesize = name.len() as u32 + 1;
        let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rmajor, rminor, namesize, 0];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(110 + namesize as usize)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, written: usize) -> std::io::Result<()> {
        let zeros = (4 - written % 4) % 4;
        self.out.write_all(&[0u8; 3][..zeros])
    }

    fn finish(mut self) -> std::io::Result<W> {
        self.entry("TRAILER!!!", 0, 0, &[])?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Entry {
        name: String,
        mode: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// An independent newc reader, strict about magic, padding and the trailer.
    fn parse_newc(mut buf: &[u8]) -> Vec<Entry> {
        let total = buf.len();
        let mut out = Vec::new();
        loop {
            assert_eq!((total - buf.len()) % 4, 0, "header not 4-byte aligned");
            assert_eq!(&buf[..6], b"070701", "bad magic");
            let field = |i: usize| u32::from_str_radix(std::str::from_utf8(&buf[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap();
            let (mode, size, rmaj, rmin, namesize) = (field(1), field(6) as usize, field(9), field(10), field(11) as usize);
            let name = std::str::from_utf8(&buf[110..110 + namesize - 1]).unwrap().to_string();
            assert_eq!(buf[110 + namesize - 1], 0);
            let data_at = (110 + namesize + 3) & !3;
            let data = buf[data_at..data_at + size].to_vec();
            let next = (data_at + size + 3) & !3;
            buf = &buf[next..];
            if name == "TRAILER!!!" {
                assert!(buf.is_empty(), "bytes after the trailer");
                return out;
            }
            out.push(Entry { name, mode, rdev: (rmaj, rmin), data });
        }
    }

    fn kernel_with_modules(dir: &Path, names: &[&str]) -> GuestKernel {
        let modules = names
            .iter()
            .map(|n| {
                let p = dir.join(format!("{n}.ko"));
                std::fs::write(&p, format!("ELF of {n}")).unwrap();
                p
            })
            .collect();
        GuestKernel { image: dir.join("vmlinuz"), release: "6.1.0-test".into(), modules }
    }

    #[test]
    fn archive_holds_init_modules_and_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = kernel_with_modules(dir.path(), &["virtio_ring", "virtio", "virtio_pci"]);
        let out = dir.path().join("initrd");
        // Odd sizes exercise the padding.
        build_initramfs(b"AGENT-BINARY!", &kernel, &out).unwrap();
        let entries = parse_newc(&std::fs::read(&out).unwrap());
        let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap_or_else(|| panic!("{n} missing"));
        let init = get("init");
        assert_eq!(init.data, b"AGENT-BINARY!");
        assert_eq!(init.mode, S_IFREG | 0o755);
        assert_eq!(get("lib/modules/virtio.ko").data, b"ELF of virtio");
        assert_eq!(
            String::from_utf8(get(MODULE_LIST).data.clone()).unwrap(),
            "/lib/modules/virtio_ring.ko\n/lib/modules/virtio.ko\n/lib/modules/virtio_pci.ko\n"
        );
        assert_eq!(get("dev/console").rdev, (5, 1));
        assert_eq!(get("dev/console").mode, S_IFCHR | 0o600);
        for d in ["proc", "sys", "dev", "tmp", "etc/kiln", "lib/modules"] {
            assert_eq!(get(d).mode, S_IFDIR | 0o755, "{d}");
        }
        // Parents come before children, as the kernel's unpacker needs.
        let pos = |n: &str| entries.iter().position(|e| e.name == n).unwrap();
        assert!(pos("lib") < pos("lib/modules") && pos("lib/modules") < pos("lib/modules/virtio.ko"));
    }

    #[test]
    fn cached_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let kernel = kernel_with_modules(dir.path(), &["vsock"]);
        let a = ensure_initramfs(b"agent v1", &kernel, &cache).unwrap();
        assert_eq!(ensure_initramfs(b"agent v1", &kernel, &cache).unwrap(), a);
        let b = ensure_initramfs(b"agent v2", &kernel, &cache).unwrap();
        assert_ne!(a, b);
        // A changed module (same name, same release) is a different initramfs.
        std::fs::write(&kernel.modules[0], "rebuilt vsock").unwrap();
        let c = ensure_initramfs(b"agent v1", &kernel, &cache).unwrap();
        assert_ne!(a, c);
        assert_eq!(parse_newc(&std::fs::read(&c).unwrap()).iter().find(|e| e.name == "lib/modules/vsock.ko").unwrap().data, b"rebuilt vsock");
        let names: Vec<_> = std::fs::read_dir(cache.join("initramfs")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 3, "no temp files left: {names:?}");
    }

    #[test]
    fn missing_module_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut kernel = kernel_with_modules(dir.path(), &[]);
        kernel.modules.push(dir.path().join("gone.ko"));
        let err = build_initramfs(b"a", &kernel, &dir.path().join("x")).unwrap_err().to_string();
        assert!(err.contains("gone.ko"), "{err}");
    }
}
