//! Platforms (`os/arch[/variant]`) with containerd's normalisation rules, so
//! `linux/arm64`, `linux/arm64/v8` and `linux/aarch64` are the same thing.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/arm64")]
    Syntax(String),
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        normalize(os, architecture, variant)
    }

    /// The platform of the machine kiln runs on.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "arm" => "arm",
            "riscv64" => "riscv64",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            other => other,
        };
        // Images are Linux images whatever the host OS is: kiln runs them in a Linux VM.
        Self::new("linux", arch, None)
    }

    /// Short name used for per-architecture files (kernels/<name>.toml, agents).
    pub fn arch_key(&self) -> String {
        match &self.variant {
            Some(v) if self.architecture == "arm" => format!("arm{v}"),
            _ => self.architecture.clone(),
        }
    }
}

fn normalize(os: &str, arch: &str, variant: Option<&str>) -> Platform {
    let os = os.to_ascii_lowercase();
    let arch = arch.to_ascii_lowercase();
    let variant = variant.map(str::to_ascii_lowercase).filter(|v| !v.is_empty());
    let (architecture, variant) = match (arch.as_str(), variant.as_deref()) {
        ("i386", _) => ("386".to_string(), None),
        ("x86_64" | "x86-64" | "amd64", v) => {
            // amd64/v1 is the baseline and is spelled without a variant.
            ("amd64".to_string(), v.filter(|v| *v != "v1").map(str::to_string))
        }
        ("aarch64" | "arm64", v) => {
            // arm64 with no variant means v8, and v8 is spelled without one.
            ("arm64".to_string(), v.filter(|v| *v != "v8" && *v != "8").map(str::to_string))
        }
        ("armhf", _) => ("arm".to_string(), Some("v7".to_string())),
        ("armel", _) => ("arm".to_string(), Some("v6".to_string())),
        ("arm", None) => ("arm".to_string(), Some("v7".to_string())),
        ("arm", Some(v)) => {
            let v = if v.starts_with('v') { v.to_string() } else { format!("v{v}") };
            ("arm".to_string(), Some(v))
        }
        (a, v) => (a.to_string(), v.map(str::to_string)),
    };
    Platform { os, architecture, variant }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(PlatformError::Syntax(s.to_string()));
        }
        match parts.as_slice() {
            // A bare architecture ("arm64") means Linux, as in buildx.
            [arch] => Ok(Self::new("linux", arch, None)),
            [os, arch] => Ok(Self::new(os, arch, None)),
            [os, arch, variant] => Ok(Self::new(os, arch, Some(variant))),
            _ => Err(PlatformError::Syntax(s.to_string())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        s.parse::<Platform>().unwrap().to_string()
    }

    #[test]
    fn normalises_like_containerd() {
        assert_eq!(p("linux/arm64"), "linux/arm64");
        assert_eq!(p("linux/arm64/v8"), "linux/arm64");
        assert_eq!(p("linux/aarch64"), "linux/arm64");
        assert_eq!(p("linux/x86_64"), "linux/amd64");
        assert_eq!(p("linux/amd64/v1"), "linux/amd64");
        assert_eq!(p("linux/amd64/v3"), "linux/amd64/v3");
        assert_eq!(p("linux/arm"), "linux/arm/v7");
        assert_eq!(p("linux/armhf"), "linux/arm/v7");
        assert_eq!(p("linux/arm/7"), "linux/arm/v7");
        assert_eq!(p("arm64"), "linux/arm64");
        assert_eq!(p("Linux/ARM64"), "linux/arm64");
        assert_eq!(p("linux/i386"), "linux/386");
        assert_eq!(p("linux/armel"), "linux/arm/v6");
        assert_eq!(p("linux/arm/6"), "linux/arm/v6");
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "linux/", "/arm64", "a/b/c/d", "linux//v7"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn guest_names() {
        let arm: Platform = "linux/arm64".parse().unwrap();
        assert_eq!(arm.arch_key(), "arm64");
        let v7: Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!(v7.arch_key(), "armv7");
    }
}
