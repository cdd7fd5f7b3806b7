//! Kernel manifests (`kernels/<arch>.toml`): which Debian kernel package a
//! guest architecture boots and which modules the guest agent needs.
//!
//! The manifests are embedded in the binary so a static kiln works anywhere;
//! a manifest directory (`KILN_KERNEL_MANIFESTS`) overrides them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::KernelError;

/// The manifests shipped with kiln, by architecture key (`Platform::arch_key`).
const EMBEDDED: &[(&str, &str)] = &[
    ("arm64", include_str!("../../../kernels/arm64.toml")),
    ("amd64", include_str!("../../../kernels/amd64.toml")),
    ("armv7", include_str!("../../../kernels/armv7.toml")),
    ("riscv64", include_str!("../../../kernels/riscv64.toml")),
    ("ppc64le", include_str!("../../../kernels/ppc64le.toml")),
    ("s390x", include_str!("../../../kernels/s390x.toml")),
];

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Debian's name for the architecture (`arm64`, `amd64`, `armhf`).
    pub debian_arch: String,
    pub suite: String,
    pub component: String,
    /// Metapackage that depends on the current ABI package; used by the refresh script.
    pub meta_package: String,
    /// Modules the guest agent loads, without their dependencies.
    pub modules: Vec<String>,
    pub package: PackagePin,
}

/// One exact .deb on the mirror.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagePin {
    pub name: String,
    pub version: String,
    /// Path of the .deb relative to the mirror root (`pool/main/...`).
    pub path: String,
    pub size: u64,
    /// Lower-case hex sha256 of the .deb.
    pub sha256: String,
}

impl Manifest {
    /// Parses a manifest; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, KernelError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| KernelError::Manifest {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        manifest.validate(origin)?;
        Ok(manifest)
    }

    fn validate(&self, origin: &str) -> Result<(), KernelError> {
        let bad = |message: String| KernelError::Manifest { origin: origin.to_string(), message };
        let sha = &self.package.sha256;
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad(format!("package.sha256 {sha:?} is not 64 lower-case hex digits")));
        }
        let path = &self.package.path;
        // The path is appended to the mirror URL; it must stay inside the mirror.
        if path.starts_with('/') || path.split('/').any(|c| c == ".." || c.is_empty()) || !path.ends_with(".deb") {
            return Err(bad(format!("package.path {path:?} must be a relative path to a .deb, like pool/main/...")));
        }
        let version = &self.package.version;
        // The version names the cache directory.
        if version.is_empty() || version.starts_with('.') || !version.bytes().all(|b| b.is_ascii_alphanumeric() || b".+~-:".contains(&b)) {
            return Err(bad(format!("package.version {version:?} is not a Debian version")));
        }
        for m in &self.modules {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                return Err(bad(format!("module name {m:?} is not a kernel module name")));
            }
        }
        Ok(())
    }
}

/// Loads the manifest for `arch_key`: from `override_dir/<arch_key>.toml` when
/// that file exists, else the embedded one.
pub fn load(arch_key: &str, override_dir: Option<&Path>) -> Result<Manifest, KernelError> {
    if let Some(dir) = override_dir {
        let file: PathBuf = dir.join(format!("{arch_key}.toml"));
        if file.exists() {
            let text = std::fs::read_to_string(&file)
                .map_err(|source| KernelError::Io { context: format!("reading {}", file.display()), source })?;
            return Manifest::parse(&text, &file.display().to_string());
        }
    }
    match EMBEDDED.iter().find(|(key, _)| *key == arch_key) {
        Some((key, text)) => Manifest::parse(text, &format!("kernels/{key}.toml (built in)")),
        None => Err(KernelError::UnsupportedArch {
            arch: arch_key.to_string(),
            supported: EMBEDDED.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_manifests_parse_and_pin_their_arch() {
        for (key, _) in EMBEDDED {
            let m = load(key, None).unwrap();
            assert!(m.package.path.ends_with(&format!("_{}.deb", m.debian_arch)), "{key}: {}", m.package.path);
            assert!(m.package.name.starts_with("linux-image-"), "{key}");
            assert!(m.modules.iter().any(|x| x == "vmw_vsock_virtio_transport"), "{key}");
        }
    }

    #[test]
    fn unknown_arch_lists_supported_ones() {
        let err = load("mips64le", None).unwrap_err().to_string();
        assert!(err.contains("mips64le") && err.contains("arm64") && err.contains("riscv64"), "{err}");
    }

    const GOOD: &str = r#"
debian_arch = "arm64"
suite = "bookworm"
component = "main"
meta_package = "linux-image-cloud-arm64"
modules = ["virtio_pci", "vsock"]
[package]
name = "linux-image-6.1.0-1-cloud-arm64"
version = "6.1.1-1"
path = "pool/main/l/x/linux-image_6.1.1-1_arm64.deb"
size = 10
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
"#;

    #[test]
    fn parses_fields() {
        let m = Manifest::parse(GOOD, "t.toml").unwrap();
        assert_eq!(m.modules, ["virtio_pci", "vsock"]);
        assert_eq!(m.package.version, "6.1.1-1");
        assert_eq!(m.package.size, 10);
    }

    #[test]
    fn rejects_bad_pins_naming_the_file() {
        let cases = [
            (GOOD.replace("\"0000000000000000000000000000000000000000000000000000000000000000\"", "\"abc\""), "sha256"),
            (GOOD.replace("pool/main/l/x/", "../../etc/"), "package.path"),
            (GOOD.replace("\"vsock\"", "\"vsock/../x\""), "module name"),
            (GOOD.replace("6.1.1-1", "../6.1"), "package.version"),
            (GOOD.replace("suite", "suit"), "suit"),
            (GOOD.replace("size = 10", "size = \"ten\""), "size"),
        ];
        for (text, needle) in cases {
            let err = Manifest::parse(&text, "kernels/x.toml").unwrap_err().to_string();
            assert!(err.contains("kernels/x.toml") && err.contains(needle), "{err}");
        }
    }

    #[test]
    fn override_dir_wins_over_embedded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("arm64.toml"), GOOD).unwrap();
        assert_eq!(load("arm64", Some(dir.path())).unwrap().package.version, "6.1.1-1");
        // Architectures without an override file still come from the binary.
        assert_eq!(load("amd64", Some(dir.path())).unwrap().debian_arch, "amd64");
    }
}
