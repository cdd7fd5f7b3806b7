//! Takes a kernel image and modules out of a Debian kernel package: the .deb
//! is an `ar` archive whose `data.tar.{xz,zst,gz}` holds `boot/vmlinuz-<release>`
//! and `lib/modules/<release>/...`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::modinfo::{self, ModInfo};
use super::KernelError;

/// What [`extract`] wrote into its output directory.
#[derive(Debug)]
pub struct Extracted {
    /// `uname -r` of the kernel, from `boot/vmlinuz-<release>`.
    pub release: String,
    /// Module names in load order; each is `modules/<name>.ko` in the output directory.
    pub modules: Vec<String>,
}

/// The kernel image file name inside a cache entry.
pub const IMAGE_FILE: &str = "vmlinuz";
/// The module directory inside a cache entry.
pub const MODULES_DIR: &str = "modules";

/// Extracts the kernel image to `out/vmlinuz` and `wanted` modules plus their
/// dependencies (uncompressed) to `out/modules/<name>.ko`. `deb` must already
/// be verified: this parses untrusted formats only as far as a checked file goes.
pub fn extract(deb: &Path, wanted: &[String], out: &Path) -> Result<Extracted, KernelError> {
    let what = deb.display().to_string();
    let bad = |why: String| KernelError::BadPackage { package: what.clone(), why };
    let io = |context: String| move |source| KernelError::Io { context, source };
    let file = File::open(deb).map_err(io(format!("opening {what}")))?;
    let mut archive = ar::Archive::new(BufReader::new(file));
    while let Some(entry) = archive.next_entry() {
        let entry = entry.map_err(|e| bad(format!("reading the ar archive: {e}")))?;
        let name = String::from_utf8_lossy(entry.header().identifier()).trim_end_matches('/').to_string();
        let data: Box<dyn Read> = match name.as_str() {
            "data.tar.xz" => Box::new(xz2::read::XzDecoder::new_multi_decoder(entry)),
            "data.tar.zst" => Box::new(zstd::stream::read::Decoder::new(entry).map_err(|e| bad(format!("{name}: {e}")))?),
            "data.tar.gz" => Box::new(flate2::read::GzDecoder::new(entry)),
            "data.tar" => Box::new(entry),
            _ => continue,
        };
        return extract_data_tar(data, wanted, out).map_err(|e| match e {
            KernelError::Io { context, source } if context.starts_with("reading ") => bad(format!("{name}: {source}")),
            other => other,
        });
    }
    Err(bad("no data.tar member".into()))
}

fn extract_data_tar(data: impl Read, wanted: &[String], out: &Path) -> Result<Extracted, KernelError> {
    let io = |context: String| move |source| KernelError::Io { context, source };
    let read_err = |source| KernelError::Io { context: "reading data.tar".into(), source };
    let mut release: Option<String> = None;
    let mut image_seen = false;
    let mut builtin = BTreeSet::new();
    // Every module's bytes stay in memory until the dependency closure is
    // known (about 70 MB for a cloud kernel): one decompression pass instead of two.
    let mut modules: BTreeMap<String, (ModInfo, Vec<u8>)> = BTreeMap::new();
    let mut tar = tar::Archive::new(data);
    for entry in tar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(read_err)?.to_string_lossy().trim_start_matches("./").to_string();
        // riscv64 packages name their (uncompressed, EFI-stub) Image vmlinux-*.
        if let Some(rel) = path.strip_prefix("boot/vmlinuz-").or_else(|| path.strip_prefix("boot/vmlinux-")) {
            if image_seen {
                return Err(KernelError::BadPackage { package: "data.tar".into(), why: "more than one boot/vmlinu[xz]-*".into() });
            }
            image_seen = true;
            release = Some(rel.to_string());
            let dest = out.join(IMAGE_FILE);
            let mut f = File::create(&dest).map_err(io(format!("creating {}", dest.display())))?;
            std::io::copy(&mut entry, &mut f).map_err(io(format!("writing {}", dest.display())))?;
            continue;
        }
        let Some(under) = path.strip_prefix("lib/modules/").or_else(|| path.strip_prefix("usr/lib/modules/")) else { continue };
        let Some((_, inside)) = under.split_once('/') else { continue };
        if inside == "modules.builtin" {
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(read_err)?;
            builtin = modinfo::parse_builtin(&text);
        } else if let Some(name) = modinfo::name_from_path(inside) {
            let mut raw = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut raw).map_err(read_err)?;
            let elf = decompress_module(&path, raw)?;
            let info = modinfo::parse(&elf, &path)?;
            modules.insert(info.name.clone().unwrap_or(name), (info, elf));
        }
    }
    let release = release.ok_or_else(|| KernelError::BadPackage { package: "data.tar".into(), why: "no boot/vmlinuz-* or boot/vmlinux-* in the package".into() })?;
    let infos: BTreeMap<String, ModInfo> = modules.iter().map(|(n, (i, _))| (n.clone(), i.clone())).collect();
    let order = modinfo::load_order(wanted, &infos, &builtin)?;
    let dir = out.join(MODULES_DIR);
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    for name in &order {
        let dest = dir.join(format!("{name}.ko"));
        std::fs::write(&dest, &modules[name].1).map_err(io(format!("writing {}", dest.display())))?;
    }
    Ok(Extracted { release, modules: order })
}

/// Newer Debian kernels ship `.ko.xz`/`.ko.zst`; the guest gets plain ELF so
/// it needs no in-kernel decompressor.
fn decompress_module(path: &str, raw: Vec<u8>) -> Result<Vec<u8>, KernelError> {
    let fail = |e: std::io::Error| KernelError::BadModule { module: path.to_string(), why: format!("decompressing: {e}") };
    if path.ends_with(".xz") {
        let mut out = Vec::new();
        xz2::read::XzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(fail)?;
        Ok(out)
    } else if path.ends_with(".zst") {
        zstd::stream::decode_all(&raw[..]).map_err(fail)
    } else {
        Ok(raw)
    }
}
