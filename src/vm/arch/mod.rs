//! Per-architecture machine definitions behind one interface.

mod aarch64;
mod arm;
mod x86_64;

use std::path::{Path, PathBuf};

use crate::platform::Platform;

/// How the VM is accelerated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation (QEMU's tiny code generator).
    Tcg,
    /// Linux KVM.
    Kvm,
    /// macOS Hypervisor.framework.
    Hvf,
    /// Windows Hypervisor Platform.
    Whpx,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcg" => Ok(Accel::Tcg),
            "kvm" => Ok(Accel::Kvm),
            "hvf" => Ok(Accel::Hvf),
            "whpx" => Ok(Accel::Whpx),
            other => Err(format!("unknown accelerator {other:?}: expected tcg, kvm, hvf or whpx")),
        }
    }
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
            Accel::Hvf => "hvf",
            Accel::Whpx => "whpx",
        }
    }
}

/// What differs between guest architectures.
pub trait GuestArch: Send + Sync {
    /// The QEMU system emulator for this architecture.
    fn qemu_binary(&self) -> &'static str;
    /// The CPU model under TCG (under an accelerator the guest gets the host's).
    fn tcg_cpu(&self) -> &'static str;
    /// Machine, CPU and accelerator arguments; `tcg_cpu` is the model under TCG.
    fn machine_args(&self, accel: Accel, tcg_cpu: &str) -> Vec<String>;
    /// The kernel's serial console device.
    fn console(&self) -> &'static str;
    /// The key of the embedded agent and kernel manifest (`arm64`, `amd64`, `armv7`).
    fn key(&self) -> &'static str;
}

#[derive(Debug, thiserror::Error)]
#[error("no guest support for platform {0}: kiln can build for linux/arm64, linux/amd64 and linux/arm/v7")]
pub struct UnsupportedPlatform(pub String);

pub fn for_platform(platform: &Platform) -> Result<&'static dyn GuestArch, UnsupportedPlatform> {
    match (platform.os.as_str(), platform.architecture.as_str()) {
        ("linux", "arm64") => Ok(&aarch64::Aarch64),
        ("linux", "amd64") => Ok(&x86_64::X86_64),
        ("linux", "arm") if platform.variant.as_deref() == Some("v7") => Ok(&arm::Armv7),
        _ => Err(UnsupportedPlatform(platform.to_string())),
    }
}

/// The fastest accelerator usable for `guest` on this host.
pub fn best_accel(guest: &Platform, cache_dir: &Path) -> Accel {
    let arch_key = guest.arch_key();
    pick_accel(guest, &Platform::host().architecture, host_accel(), |a| known_unusable(a, &arch_key, cache_dir))
}

/// The accelerator for `guest` on a host of `host_arch` that offers
/// `available` (KVM, HVF or WHPX): only for a guest of the host's own
/// architecture, and not once it failed to boot one here; TCG otherwise.
pub fn pick_accel(guest: &Platform, host_arch: &str, available: Option<Accel>, unusable: impl Fn(Accel) -> bool) -> Accel {
    match available {
        Some(accel) if guest.architecture == host_arch && !unusable(accel) => accel,
        _ => Accel::Tcg,
    }
}

/// Verdicts live in `<cache>/accel/<accel>-<arch>.unusable`, holding the host's
/// boot id, so a reboot (new kernel, new modules) earns another try.
fn verdict_path(accel: Accel, arch_key: &str, cache_dir: &Path) -> PathBuf {
    cache_dir.join("accel").join(format!("{}-{arch_key}.unusable", accel.name()))
}

fn host_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim().to_string()
}

fn known_unusable(accel: Accel, arch_key: &str, cache_dir: &Path) -> bool {
    std::fs::read_to_string(verdict_path(accel, arch_key, cache_dir)).is_ok_and(|id| id.trim() == host_boot_id())
}

/// Records that `accel` could not boot `arch_key` guests on this host.
pub fn mark_unusable(accel: Accel, arch_key: &str, cache_dir: &Path) {
    let path = verdict_path(accel, arch_key, cache_dir);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(path, host_boot_id());
}

#[cfg(target_os = "linux")]
fn host_accel() -> Option<Accel> {
    // Usable means openable read-write by this (unprivileged) user.
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").ok().map(|_| Accel::Kvm)
}

#[cfg(target_os = "macos")]
fn host_accel() -> Option<Accel> {
    Some(Accel::Hvf)
}

#[cfg(target_os = "windows")]
fn host_accel() -> Option<Accel> {
    Some(Accel::Whpx)
}

#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
fn host_accel() -> Option<Accel> {
    None
}

/// QEMU's `virt` board (arm and arm64): `tcg_cpu` under TCG, the host's CPU
/// under a hardware accelerator.
pub(crate) fn virt_board_args(tcg_cpu: &str, accel: Accel) -> Vec<String> {
    let (cpu, accel) = match accel {
        Accel::Tcg => (tcg_cpu, "tcg,thread=multi".to_string()),
        other => ("host", other.name().to_string()),
    };
    ["-M", "virt", "-cpu", cpu, "-accel", &accel].map(String::from).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accelerators_serve_only_their_hosts_own_architecture() {
        let arm64: Platform = "linux/arm64".parse().unwrap();
        let amd64: Platform = "linux/amd64".parse().unwrap();
        let never = |_| false;
        // An Apple Silicon Mac: HVF for arm64 guests, TCG for amd64 ones.
        assert_eq!(pick_accel(&arm64, "arm64", Some(Accel::Hvf), never), Accel::Hvf);
        assert_eq!(pick_accel(&amd64, "arm64", Some(Accel::Hvf), never), Accel::Tcg);
        // A Windows PC: WHPX for amd64 guests.
        assert_eq!(pick_accel(&amd64, "amd64", Some(Accel::Whpx), never), Accel::Whpx);
        // KVM that failed to boot a guest here, or no accelerator at all: TCG.
        assert_eq!(pick_accel(&amd64, "amd64", Some(Accel::Kvm), |a| a == Accel::Kvm), Accel::Tcg);
        assert_eq!(pick_accel(&amd64, "amd64", None, never), Accel::Tcg);
    }

    fn arch(platform: &str) -> Result<&'static dyn GuestArch, UnsupportedPlatform> {
        for_platform(&platform.parse::<Platform>().unwrap())
    }

    #[test]
    fn every_supported_platform_has_its_emulator_and_keys() {
        for (platform, binary, key) in [
            ("linux/arm64", "qemu-system-aarch64", "arm64"),
            ("linux/amd64", "qemu-system-x86_64", "amd64"),
            ("linux/arm/v7", "qemu-system-arm", "armv7"),
            // containerd's spellings of the same platforms
            ("linux/arm", "qemu-system-arm", "armv7"),
            ("linux/armhf", "qemu-system-arm", "armv7"),
        ] {
            let arch = arch(platform).unwrap_or_else(|e| panic!("{platform}: {e}"));
            assert_eq!(arch.qemu_binary(), binary, "{platform}");
            assert_eq!(arch.key(), key, "{platform}");
            // The agent and kernel manifest are looked up by this key.
            assert_eq!(arch.key(), platform.parse::<Platform>().unwrap().arch_key(), "{platform}");
        }
    }

    #[test]
    fn armv6_and_other_arches_are_refused_by_name() {
        for platform in ["linux/arm/v6", "linux/riscv64", "windows/amd64"] {
            let err = arch(platform).err().unwrap_or_else(|| panic!("{platform} accepted"));
            assert!(err.to_string().contains(&platform.parse::<Platform>().unwrap().to_string()), "{err}");
        }
    }
}
