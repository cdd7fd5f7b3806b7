//! Guest kernels: the pinned Debian kernel for a platform, downloaded from a
//! Debian mirror, verified against its sha256, unpacked and cached; or a local
//! kernel the user points at.
//!
//! Cache layout, under `<cache_dir>/kernels/<arch>/<version>/`: the image
//! QEMU's `-kernel` takes (`vmlinuz` as packaged, or on x86 `vmlinux`, the
//! PVH ELF unpacked from the bzImage), `modules/<name>.ko` and `kernel.json`
//! (package, sha256, release, image file, module load order). An entry only
//! appears by renaming a finished temp dir, so a partial download never looks cached.

mod deb;
mod download;
pub mod manifest;
mod mirror;
pub mod modinfo;
mod vmlinux;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::platform::Platform;
pub use manifest::Manifest;

/// A kernel ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestKernel {
    /// The image for QEMU `-kernel`: arm64 `Image`, arm `zImage`, amd64 the
    /// PVH-bootable ELF `vmlinux` (or the `bzImage` if it has no PVH entry).
    pub image: PathBuf,
    /// `uname -r` in the guest.
    pub release: String,
    /// Modules the guest agent loads, in load order (dependencies first).
    pub modules: Vec<PathBuf>,
}

/// Where the kernel comes from. [`KernelOptions::from_env`] fills it from the
/// environment; the CLI overrides fields from its flags.
#[derive(Debug, Clone)]
pub struct KernelOptions {
    /// A local kernel image instead of the pinned Debian one (`--kernel`, `KILN_KERNEL`).
    pub kernel_image: Option<PathBuf>,
    /// Directory of `.ko` files for a local kernel (`KILN_KERNEL_MODULES`); none loaded without it.
    pub kernel_modules: Option<PathBuf>,
    /// Directory whose `<arch>.toml` files replace the built-in manifests (`KILN_KERNEL_MANIFESTS`).
    pub manifest_dir: Option<PathBuf>,
    /// Debian mirror root URL (`KILN_DEBIAN_MIRROR`); else taken from the host's apt sources.
    pub mirror: Option<String>,
    /// Where apt's configuration is looked up (`/` except in tests).
    pub apt_root: PathBuf,
    /// kiln's cache directory; kernels go under `kernels/`.
    pub cache_dir: PathBuf,
}

impl KernelOptions {
    pub fn from_env() -> Self {
        let path = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        KernelOptions {
            kernel_image: path("KILN_KERNEL"),
            kernel_modules: path("KILN_KERNEL_MODULES"),
            manifest_dir: path("KILN_KERNEL_MANIFESTS"),
            mirror: std::env::var("KILN_DEBIAN_MIRROR").ok().filter(|v| !v.trim().is_empty()),
            apt_root: PathBuf::from("/"),
            cache_dir: crate::dirs::cache_dir(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("kernel manifest {origin}: {message}")]
    Manifest { origin: String, message: String },
    #[error("no guest kernel manifest for architecture {arch:?} (kiln has: {supported})")]
    UnsupportedArch { arch: String, supported: String },
    #[error("no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; set KILN_DEBIAN_MIRROR to a mirror root, e.g. KILN_DEBIAN_MIRROR=https://<mirror>/debian")]
    NoMirror,
    #[error("KILN_DEBIAN_MIRROR={0:?} is not an http:// or https:// URL")]
    BadMirror(String),
    #[error("the pinned kernel package {package} is gone from the mirror ({url} answered 404): Debian removes superseded kernels, so the pin is stale; run scripts/refresh-kernels.sh (or use --kernel / KILN_KERNEL)")]
    StalePin { package: String, url: String },
    #[error("downloading {url}: {message}")]
    Download { url: String, message: String },
    #[error("checksum mismatch for {url}: expected sha256 {expected}, got {actual} ({size} bytes); nothing was cached")]
    ChecksumMismatch { url: String, expected: String, actual: String, size: u64 },
    #[error("size mismatch for {url}: the pin says {expected} bytes, the mirror sent at least {actual_at_least}; nothing was cached")]
    SizeMismatch { url: String, expected: u64, actual_at_least: u64 },
    #[error("kernel package {package}: {why}")]
    BadPackage { package: String, why: String },
    #[error("kernel module {module}: {why}")]
    BadModule { module: String, why: String },
    #[error("kernel module {module} is neither in the package nor built in{}", needed_by.as_ref().map(|n| format!(" (needed by {n})")).unwrap_or_default())]
    MissingModule { module: String, needed_by: Option<String> },
    #[error("kernel modules depend on each other in a cycle: {0}")]
    ModuleCycle(String),
    #[error("local kernel {}: {why}", path.display())]
    LocalKernel { path: PathBuf, why: String },
    #[error("KILN_KERNEL_MODULES={} is set without a local kernel (--kernel or KILN_KERNEL); the pinned kernel brings its own modules", .0.display())]
    ModulesWithoutKernel(PathBuf),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> KernelError {
    let context = context.into();
    move |source| KernelError::Io { context, source }
}

/// What `kernel.json` in a cache entry records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheRecord {
    pub package: String,
    pub version: String,
    pub sha256: String,
    pub release: String,
    /// The manifest's module list the entry was made for.
    pub requested_modules: Vec<String>,
    /// Module names in load order; files are `modules/<name>.ko`.
    pub modules: Vec<String>,
    /// File name of the image to boot: `vmlinuz` as packaged, or `vmlinux`
    /// (x86: the PVH ELF unpacked from the bzImage, which boots faster).
    pub image: String,
}

const RECORD_FILE: &str = "kernel.json";

/// The kernel for `platform`: a local override if set, else the pinned Debian
/// kernel from the cache, downloading and unpacking it on first use. Blocking.
pub fn ensure_kernel(platform: &Platform, opts: &KernelOptions) -> Result<GuestKernel, KernelError> {
    // A 32-bit platform that another VM runs (linux/386, linux/arm/v6) uses that VM's kernel.
    let key = crate::vm::arch::for_platform(platform).map(|a| a.key().to_string()).unwrap_or_else(|_| platform.arch_key());
    let manifest = manifest::load(&key, opts.manifest_dir.as_deref());
    if let (None, Some(dir)) = (&opts.kernel_image, &opts.kernel_modules) {
        return Err(KernelError::ModulesWithoutKernel(dir.clone()));
    }
    if let Some(image) = &opts.kernel_image {
        // A local kernel also serves architectures kiln has no manifest for.
        let wanted = manifest.map(|m| m.modules).unwrap_or_default();
        return local_kernel(image, opts.kernel_modules.as_deref(), &wanted);
    }
    ensure_pinned(&key, &manifest?, opts)
}

fn kernels_root(cache_dir: &Path) -> PathBuf {
    cache_dir.join("kernels")
}

fn ensure_pinned(arch: &str, manifest: &Manifest, opts: &KernelOptions) -> Result<GuestKernel, KernelError> {
    let arch_dir = kernels_root(&opts.cache_dir).join(arch);
    let entry = arch_dir.join(&manifest.package.version);
    if let Some(kernel) = read_entry(&entry, manifest) {
        return Ok(kernel);
    }
    let mirror = mirror::choose(opts.mirror.as_deref(), &opts.apt_root, &manifest.suite)?;
    let url = format!("{mirror}/{}", manifest.package.path);
    std::fs::create_dir_all(&arch_dir).map_err(io_err(format!("creating {}", arch_dir.display())))?;
    remove_stale_temps(&arch_dir);
    // Same filesystem as the entry, so the final rename is atomic; removed on drop.
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempdir_in(&arch_dir)
        .map_err(io_err(format!("creating a temp dir in {}", arch_dir.display())))?;
    let deb_path = tmp.path().join("package.deb");
    let pin = &manifest.package;
    download::fetch(&download::Pinned { url: &url, package: &pin.name, size: pin.size, sha256: &pin.sha256 }, &deb_path)?;
    let staged = tmp.path().join("entry");
    std::fs::create_dir(&staged).map_err(io_err(format!("creating {}", staged.display())))?;
    let extracted = deb::extract(&deb_path, &manifest.modules, &staged).map_err(|e| match e {
        KernelError::BadPackage { why, .. } => KernelError::BadPackage { package: pin.name.clone(), why },
        other => other,
    })?;
    let image = prefer_pvh_image(&staged)?;
    let record = CacheRecord {
        package: pin.name.clone(),
        version: pin.version.clone(),
        sha256: pin.sha256.clone(),
        release: extracted.release,
        requested_modules: manifest.modules.clone(),
        modules: extracted.modules,
        image,
    };
    let json = serde_json::to_vec_pretty(&record).expect("CacheRecord serialises");
    std::fs::write(staged.join(RECORD_FILE), json).map_err(io_err(format!("writing {}", staged.display())))?;
    install(&staged, &entry, tmp.path(), manifest)?;
    read_entry(&entry, manifest).ok_or_else(|| KernelError::Io {
        context: format!("reading the cache entry {} just written", entry.display()),
        source: std::io::Error::other("entry incomplete"),
    })
}

/// On x86, unpacks the bzImage's PVH-bootable vmlinux next to it and returns
/// the file name QEMU should boot.
fn prefer_pvh_image(staged: &Path) -> Result<String, KernelError> {
    let packaged = staged.join(deb::IMAGE_FILE);
    let bytes = std::fs::read(&packaged).map_err(io_err(format!("reading {}", packaged.display())))?;
    match vmlinux::unpack_pvh(&bytes) {
        Some(elf) => {
            let path = staged.join(PVH_IMAGE_FILE);
            std::fs::write(&path, elf).map_err(io_err(format!("writing {}", path.display())))?;
            // Only the booted image is kept.
            std::fs::remove_file(&packaged).map_err(io_err(format!("removing {}", packaged.display())))?;
            Ok(PVH_IMAGE_FILE.to_string())
        }
        None => Ok(deb::IMAGE_FILE.to_string()),
    }
}

const PVH_IMAGE_FILE: &str = "vmlinux";

/// Moves a finished entry into place. If another kiln installed a good entry
/// meanwhile, that one stays (it may be in use); an outdated entry (made for
/// another module list) is swapped out.
fn install(staged: &Path, entry: &Path, scratch: &Path, manifest: &Manifest) -> Result<(), KernelError> {
    if read_entry(entry, manifest).is_some() {
        return Ok(());
    }
    if entry.exists() {
        match std::fs::rename(entry, scratch.join("old")) {
            Ok(()) => {}
            Err(_) if !entry.exists() => {}
            Err(e) => return Err(io_err(format!("replacing {}", entry.display()))(e)),
        }
    }
    match std::fs::rename(staged, entry) {
        Ok(()) => Ok(()),
        // Lost a race with another kiln that installed the entry first.
        Err(_) if read_entry(entry, manifest).is_some() => Ok(()),
        Err(e) => Err(io_err(format!("moving the kernel into {}", entry.display()))(e)),
    }
}

/// Temp files and dirs (`.tmp-*`) older than this are leftovers of a killed kiln.
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Removes `.tmp-*` leftovers of killed kiln processes from a cache directory.
/// Young ones may belong to a running kiln and are left alone.
pub(crate) fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(".tmp-") {
            continue;
        }
        let age = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if age.is_some_and(|a| a > STALE_TEMP_AGE) {
            let path = e.path();
            let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        }
    }
}

/// A cache entry that is complete and made for this manifest.
fn read_entry(entry: &Path, manifest: &Manifest) -> Option<GuestKernel> {
    let record: CacheRecord = serde_json::from_slice(&std::fs::read(entry.join(RECORD_FILE)).ok()?).ok()?;
    if record.sha256 != manifest.package.sha256 || record.requested_modules != manifest.modules {
        return None;
    }
    let kernel = GuestKernel {
        image: entry.join(&record.image),
        release: record.release,
        modules: record.modules.iter().map(|m| entry.join(deb::MODULES_DIR).join(format!("{m}.ko"))).collect(),
    };
    (kernel.image.is_file() && kernel.modules.iter().all(|m| m.is_file())).then_some(kernel)
}

/// A cached kernel, as `kiln kernel list` shows it.
#[derive(Debug, Clone)]
pub struct CachedKernel {
    pub arch: String,
    pub dir: PathBuf,
    pub record: CacheRecord,
    /// Bytes on disk (image + modules).
    pub size: u64,
}

/// Every complete kernel in the cache, sorted by architecture and version.
pub fn list_cached(cache_dir: &Path) -> Result<Vec<CachedKernel>, KernelError> {
    let root = kernels_root(cache_dir);
    let mut out = Vec::new();
    let Ok(arches) = std::fs::read_dir(&root) else { return Ok(out) };
    for arch in arches.flatten() {
        let Ok(versions) = std::fs::read_dir(arch.path()) else { continue };
        for version in versions.flatten() {
            let dir = version.path();
            if version.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(bytes) = std::fs::read(dir.join(RECORD_FILE)) else { continue };
            let Ok(record) = serde_json::from_slice::<CacheRecord>(&bytes) else { continue };
            let size = dir_size(&dir);
            out.push(CachedKernel { arch: arch.file_name().to_string_lossy().into_owned(), dir, record, size });
        }
    }
    out.sort_by(|a, b| (&a.arch, &a.record.version).cmp(&(&b.arch, &b.record.version)));
    Ok(out)
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// A user-supplied kernel. Modules come from `modules_dir` (plain `.ko` files,
/// any depth, optional `modules.builtin`): the wanted ones found there plus
/// their dependencies. Wanted modules not found are taken to be built in.
fn local_kernel(image: &Path, modules_dir: Option<&Path>, wanted: &[String]) -> Result<GuestKernel, KernelError> {
    let fail = |why: String| KernelError::LocalKernel { path: image.to_path_buf(), why };
    let bytes = std::fs::read(image).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let release = detect_release(&bytes)
        .or_else(|| image.file_name()?.to_str()?.strip_prefix("vmlinuz-").map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string());
    let Some(dir) = modules_dir else {
        return Ok(GuestKernel { image: image.to_path_buf(), release, modules: Vec::new() });
    };
    let mut files = BTreeMap::new();
    let mut infos = BTreeMap::new();
    let mut builtin = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(io_err(format!("reading KILN_KERNEL_MODULES dir {}", d.display())))?;
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(path);
            } else if name == "modules.builtin" {
                let text = std::fs::read_to_string(&path).map_err(io_err(format!("reading {}", path.display())))?;
                builtin.extend(modinfo::parse_builtin(&text));
            } else if let Some(stem) = name.strip_suffix(".ko") {
                let elf = std::fs::read(&path).map_err(io_err(format!("reading {}", path.display())))?;
                let info = modinfo::parse(&elf, &path.display().to_string())?;
                let name = info.name.clone().unwrap_or_else(|| modinfo::normalize(stem));
                files.insert(name.clone(), path);
                infos.insert(name, info);
            }
        }
    }
    let present: Vec<String> = wanted.iter().map(|w| modinfo::normalize(w)).filter(|w| infos.contains_key(w)).collect();
    let order = modinfo::load_order(&present, &infos, &builtin)?;
    Ok(GuestKernel { image: image.to_path_buf(), release, modules: order.iter().map(|n| files[n].clone()).collect() })
}

/// `uname -r` of a kernel image: from the x86 boot header of a bzImage, else
/// the `Linux version <release>` banner of an uncompressed image.
fn detect_release(image: &[u8]) -> Option<String> {
    let first_word = |bytes: &[u8]| -> Option<String> {
        let end = bytes.iter().position(|b| *b == 0 || b.is_ascii_whitespace()).unwrap_or(bytes.len().min(256));
        let word = std::str::from_utf8(&bytes[..end]).ok()?;
        (!word.is_empty()).then(|| word.to_string())
    };
    if image.get(0x202..0x206) == Some(b"HdrS") {
        let ptr = u16::from_le_bytes([image[0x20E], image[0x20F]]) as usize;
        if let Some(s) = image.get(ptr + 0x200..) {
            return first_word(s);
        }
    }
    let banner = b"Linux version ";
    let at = image.windows(banner.len()).position(|w| w == banner)?;
    first_word(&image[at + banner.len()..])
}

#[cfg(test)]
mod tests;
