//! Kernel module metadata and load order. Debian's kernel .debs carry no
//! `modules.dep` (depmod writes it at install time), so the dependencies come
//! from each module's `.modinfo` ELF section (`depends=a,b`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::KernelError;

/// Module names use `_` and `-` interchangeably; the kernel normalises to `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name for a path inside `lib/modules/<release>/`, e.g.
/// `kernel/drivers/char/hw_random/virtio-rng.ko.xz` → `virtio_rng`.
pub fn name_from_path(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file.strip_suffix(".ko").or_else(|| file.strip_suffix(".ko.xz")).or_else(|| file.strip_suffix(".ko.zst"))?;
    Some(normalize(stem))
}

/// What kiln needs from a module's `.modinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModInfo {
    /// `name=` (present since Linux 5.x); absent in older modules.
    pub name: Option<String>,
    pub depends: Vec<String>,
}

/// Reads `.modinfo` from a module's ELF image. `origin` names the module in errors.
pub fn parse(elf: &[u8], origin: &str) -> Result<ModInfo, KernelError> {
    let section = modinfo_section(elf).map_err(|why| KernelError::BadModule { module: origin.to_string(), why })?;
    let mut info = ModInfo { name: None, depends: Vec::new() };
    for field in section.split(|b| *b == 0) {
        let field = String::from_utf8_lossy(field);
        if let Some(deps) = field.strip_prefix("depends=") {
            info.depends.extend(deps.split(',').map(str::trim).filter(|d| !d.is_empty()).map(normalize));
        } else if let Some(name) = field.strip_prefix("name=") {
            info.name = Some(normalize(name));
        }
    }
    // The name becomes a file name in the cache; it must not be a path.
    if let Some(name) = &info.name {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(KernelError::BadModule { module: origin.to_string(), why: format!("invalid module name {name:?}") });
        }
    }
    Ok(info)
}

/// Finds the `.modinfo` section through the ELF section headers (32- or
/// 64-bit, either byte order).
fn modinfo_section(elf: &[u8]) -> Result<&[u8], String> {
    if elf.len() < 52 || &elf[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    let is64 = match elf[4] {
        1 => false,
        2 => true,
        c => return Err(format!("unknown ELF class {c}")),
    };
    let big = match elf[5] {
        1 => false,
        2 => true,
        d => return Err(format!("unknown ELF data encoding {d}")),
    };
    let rd = |off: usize, len: usize| -> Result<u64, String> {
        let b = elf.get(off..off + len).ok_or_else(|| format!("ELF field at {off} is past the end"))?;
        let mut v = 0u64;
        for i in 0..len {
            let byte = if big { b[i] } else { b[len - 1 - i] };
            v = (v << 8) | u64::from(byte);
        }
        Ok(v)
    };
    let (shoff, shentsize, shnum, shstrndx) = if is64 {
        (rd(0x28, 8)?, rd(0x3A, 2)?, rd(0x3C, 2)?, rd(0x3E, 2)?)
    } else {
        (rd(0x20, 4)?, rd(0x2E, 2)?, rd(0x30, 2)?, rd(0x32, 2)?)
    };
    let header = |i: u64| -> Result<(u64, u64, u64), String> {
        // (name offset, file offset, size) of section i.
        let base = usize::try_from(shoff + i * shentsize).map_err(|_| "section header offset overflows")?;
        if is64 {
            Ok((rd(base, 4)?, rd(base + 0x18, 8)?, rd(base + 0x20, 8)?))
        } else {
            Ok((rd(base, 4)?, rd(base + 0x10, 4)?, rd(base + 0x14, 4)?))
        }
    };
    let bytes = |off: u64, size: u64| -> Result<&[u8], String> {
        let start = usize::try_from(off).map_err(|_| "offset overflows")?;
        let end = start.checked_add(usize::try_from(size).map_err(|_| "size overflows")?).ok_or("size overflows")?;
        elf.get(start..end).ok_or_else(|| format!("section at {start}..{end} is past the end of the file"))
    };
    if shnum == 0 || shstrndx >= shnum {
        return Err("no section headers".into());
    }
    let (_, stroff, strsize) = header(shstrndx)?;
    let names = bytes(stroff, strsize)?;
    for i in 0..shnum {
        let (name_off, off, size) = header(i)?;
        let name = names.get(name_off as usize..).unwrap_or(&[]);
        let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
        if name == b".modinfo" {
            return bytes(off, size);
        }
    }
    Err("no .modinfo section".into())
}

/// Names of built-in modules from `modules.builtin` (one path per line).
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines().filter_map(|l| name_from_path(l.trim())).collect()
}

/// Expands `wanted` with its dependencies and orders the result so every
/// module comes after the modules it depends on. Built-in modules are dropped
/// (they need no loading); a wanted or depended-on module that is neither
/// available nor built in is an error.
pub fn load_order(
    wanted: &[String],
    available: &BTreeMap<String, ModInfo>,
    builtin: &BTreeSet<String>,
) -> Result<Vec<String>, KernelError> {
    #[derive(PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        name: &str,
        needed_by: Option<&str>,
        available: &BTreeMap<String, ModInfo>,
        builtin: &BTreeSet<String>,
        marks: &mut HashMap<String, Mark>,
        stack: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), KernelError> {
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                stack.push(name.to_string());
                return Err(KernelError::ModuleCycle(stack.join(" -> ")));
            }
            None => {}
        }
        if builtin.contains(name) {
            marks.insert(name.to_string(), Mark::Done);
            return Ok(());
        }
        let Some(info) = available.get(name) else {
            return Err(KernelError::MissingModule { module: name.to_string(), needed_by: needed_by.map(str::to_string) });
        };
        marks.insert(name.to_string(), Mark::Visiting);
        stack.push(name.to_string());
        for dep in &info.depends {
            visit(dep, Some(name), available, builtin, marks, stack, order)?;
        }
        stack.pop();
        marks.insert(name.to_string(), Mark::Done);
        order.push(name.to_string());
        Ok(())
    }
    let mut marks = HashMap::new();
    let mut order = Vec::new();
    for name in wanted {
        visit(&normalize(name), None, available, builtin, &mut marks, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal relocatable ELF with a `.modinfo` section holding `fields`.
    pub(crate) fn fake_module(is64: bool, fields: &[&str]) -> Vec<u8> {
        let mut modinfo = Vec::new();
        for f in fields {
            modinfo.extend_from_slice(f.as_bytes());
            modinfo.push(0);
        }
        let shstrtab = b"\0.shstrtab\0.modinfo\0".to_vec();
        let (ehsize, shentsize) = if is64 { (64usize, 64usize) } else { (52, 40) };
        let modinfo_off = ehsize;
        let strtab_off = modinfo_off + modinfo.len();
        let shoff = (strtab_off + shstrtab.len() + 7) & !7;
        let mut elf = vec![0u8; shoff + 3 * shentsize];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = if is64 { 2 } else { 1 };
        elf[5] = 1;
        elf[6] = 1;
        let put = |elf: &mut Vec<u8>, off: usize, len: usize, v: u64| elf[off..off + len].copy_from_slice(&v.to_le_bytes()[..len]);
        if is64 {
            put(&mut elf, 0x28, 8, shoff as u64);
            put(&mut elf, 0x3A, 2, shentsize as u64);
            put(&mut elf, 0x3C, 2, 3);
            put(&mut elf, 0x3E, 2, 1);
        } else {
            put(&mut elf, 0x20, 4, shoff as u64);
            put(&mut elf, 0x2E, 2, shentsize as u64);
            put(&mut elf, 0x30, 2, 3);
            put(&mut elf, 0x32, 2, 1);
        }
        elf[modinfo_off..strtab_off].copy_from_slice(&modinfo);
        elf[strtab_off..strtab_off + shstrtab.len()].copy_from_slice(&shstrtab);
        // Section 0 is the null section; 1 is .shstrtab (name at 1), 2 is .modinfo (name at 11).
        for (i, name, off, size) in [(1usize, 1u64, strtab_off, shstrtab.len()), (2, 11, modinfo_off, modinfo.len())] {
            let base = shoff + i * shentsize;
            put(&mut elf, base, 4, name);
            if is64 {
                put(&mut elf, base + 0x18, 8, off as u64);
                put(&mut elf, base + 0x20, 8, size as u64);
            } else {
                put(&mut elf, base + 0x10, 4, off as u64);
                put(&mut elf, base + 0x14, 4, size as u64);
            }
        }
        elf
    }

    #[test]
    fn reads_depends_from_64_and_32_bit_elf() {
        for is64 in [true, false] {
            let elf = fake_module(is64, &["license=GPL", "depends=virtio_ring,virtio-pci-modern-dev", "name=virtio_pci"]);
            let info = parse(&elf, "virtio_pci.ko").unwrap();
            assert_eq!(info.name.as_deref(), Some("virtio_pci"));
            assert_eq!(info.depends, ["virtio_ring", "virtio_pci_modern_dev"]);
        }
        let none = parse(&fake_module(true, &["depends=", "name=failover"]), "failover.ko").unwrap();
        assert!(none.depends.is_empty());
    }

    #[test]
    fn rejects_garbage_naming_the_module() {
        let err = parse(b"not an elf file at all, really not one, no no no no no", "x.ko").unwrap_err().to_string();
        assert!(err.contains("x.ko") && err.contains("not an ELF"), "{err}");
        let err = parse(&fake_module(true, &["name=../../evil"]), "evil.ko").unwrap_err().to_string();
        assert!(err.contains("invalid module name"), "{err}");
        let mut truncated = fake_module(true, &["depends=a"]);
        truncated.truncate(70);
        assert!(parse(&truncated, "t.ko").is_err());
    }

    #[test]
    fn names_from_paths_and_builtin_list() {
        assert_eq!(name_from_path("kernel/drivers/char/hw_random/virtio-rng.ko").unwrap(), "virtio_rng");
        assert_eq!(name_from_path("a/overlay.ko.xz").unwrap(), "overlay");
        assert_eq!(name_from_path("a/modules.builtin"), None);
        let b = parse_builtin("kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\n");
        assert!(b.contains("virtio") && b.contains("virtio_ring"));
    }

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, ModInfo> {
        edges
            .iter()
            .map(|(n, d)| (n.to_string(), ModInfo { name: Some(n.to_string()), depends: d.iter().map(|s| s.to_string()).collect() }))
            .collect()
    }

    fn wanted(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let g = graph(&[
            ("virtio_ring", &[]),
            ("virtio", &[]),
            ("virtio_pci_modern_dev", &[]),
            ("virtio_pci_legacy_dev", &[]),
            ("virtio_pci", &["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev"]),
            ("vsock", &[]),
            ("vmw_vsock_virtio_transport_common", &["vsock", "virtio_ring", "virtio"]),
            ("vmw_vsock_virtio_transport", &["vmw_vsock_virtio_transport_common", "virtio_ring", "virtio", "vsock"]),
            ("unrelated", &[]),
        ]);
        let order = load_order(&wanted(&["vmw_vsock_virtio_transport", "virtio-pci"]), &g, &BTreeSet::new()).unwrap();
        let pos = |n: &str| order.iter().position(|x| x == n).unwrap_or_else(|| panic!("{n} missing from {order:?}"));
        for (name, info) in &g {
            if order.contains(name) {
                for dep in &info.depends {
                    assert!(pos(dep) < pos(name), "{dep} must load before {name}: {order:?}");
                }
            }
        }
        assert_eq!(order.len(), 8, "{order:?}");
        assert!(!order.contains(&"unrelated".to_string()));
    }

    #[test]
    fn builtins_are_skipped_and_missing_modules_named() {
        let g = graph(&[("virtio_pci", &["virtio_ring", "virtio"])]);
        let builtin: BTreeSet<String> = ["virtio_ring".to_string(), "virtio".to_string(), "overlay".to_string()].into();
        assert_eq!(load_order(&wanted(&["virtio_pci", "overlay"]), &g, &builtin).unwrap(), ["virtio_pci"]);
        let err = load_order(&wanted(&["virtio_pci"]), &g, &BTreeSet::new()).unwrap_err().to_string();
        assert!(err.contains("virtio_ring") && err.contains("virtio_pci"), "{err}");
    }

    #[test]
    fn cycles_are_reported() {
        let g = graph(&[("a", &["b"]), ("b", &["a"])]);
        let err = load_order(&wanted(&["a"]), &g, &BTreeSet::new()).unwrap_err().to_string();
        assert!(err.contains("a -> b -> a"), "{err}");
    }
}
