//! Per-architecture machine definitions behind one interface.

mod aarch64;
mod arm;
mod ppc64le;
mod riscv64;
mod s390x;
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

/// How virtio devices attach to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioBus {
    Pci,
    /// s390x channel I/O.
    Ccw,
}

impl VirtioBus {
    /// The QEMU device `name` (`virtio-blk`, `virtio-serial`, ...) on this bus.
    pub fn device(self, name: &str) -> String {
        match self {
            VirtioBus::Pci => format!("{name}-pci"),
            VirtioBus::Ccw => format!("{name}-ccw"),
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
    /// The VM's own OCI architecture (the host's, for an accelerator to apply).
    fn architecture(&self) -> &'static str;
    /// `uname -m` of the guest kernel, as the agent reports it.
    fn machine(&self) -> &'static str;
    /// How virtio devices attach.
    fn virtio_bus(&self) -> VirtioBus {
        VirtioBus::Pci
    }
    /// Why the agent cannot talk over vsock in this guest, if it cannot:
    /// the transport is then virtio-serial.
    fn no_vsock(&self) -> Option<&'static str> {
        None
    }
    /// Whether a guest restored from a boot snapshot runs as well as a
    /// freshly booted one.
    fn restores_from_snapshots(&self) -> bool {
        true
    }
    /// The key of the embedded agent and kernel manifest (`arm64`, `amd64`, `armv7`).
    fn key(&self) -> &'static str;
}

/// Every platform kiln builds for, in the order `kiln version` lists them.
pub const PLATFORMS: [&str; 9] = [
    "linux/amd64",
    "linux/arm64",
    "linux/386",
    "linux/arm/v7",
    "linux/arm/v6",
    "linux/arm/v5",
    "linux/riscv64",
    "linux/ppc64le",
    "linux/s390x",
];

#[derive(Debug, thiserror::Error)]
#[error("no guest support for platform {0}: kiln can build for linux/arm64, linux/amd64, linux/386, linux/arm/v7, linux/arm/v6, linux/arm/v5, linux/riscv64, linux/ppc64le and linux/s390x")]
pub struct UnsupportedPlatform(pub String);

/// The VM that runs `platform`'s userland: its own, or for a 32-bit
/// platform that a 64-bit or newer CPU runs as it is, that machine's.
pub fn for_platform(platform: &Platform) -> Result<&'static dyn GuestArch, UnsupportedPlatform> {
    match (platform.os.as_str(), platform.architecture.as_str(), platform.variant.as_deref()) {
        ("linux", "arm64", _) => Ok(&aarch64::Aarch64),
        ("linux", "amd64", _) | ("linux", "386", None) => Ok(&x86_64::X86_64),
        ("linux", "arm", Some("v7" | "v6" | "v5")) => Ok(&arm::Armv7),
        ("linux", "riscv64", None) => Ok(&riscv64::Riscv64),
        ("linux", "ppc64le", None) => Ok(&ppc64le::Ppc64le),
        ("linux", "s390x", None) => Ok(&s390x::S390x),
        _ => Err(UnsupportedPlatform(platform.to_string())),
    }
}

/// Whether commands of `platform` run under the 32-bit personality: a
/// 32-bit userland in a 64-bit VM (linux/386 in the amd64 one), so that
/// `uname -m` says `i686` as on a 32-bit machine and as qemu-user says.
pub fn runs_as_linux32(platform: &Platform) -> bool {
    platform.architecture == "386"
}

/// The fastest accelerator usable for `guest`'s VM on this host.
pub fn best_accel(guest: &dyn GuestArch, cache_dir: &Path) -> Accel {
    let key = guest.key();
    pick_accel(guest.architecture(), &Platform::host().architecture, host_accel(), |a| known_unusable(a, key, cache_dir))
}

/// The accelerator for a VM of `guest_arch` on a host of `host_arch` that
/// offers `available` (KVM, HVF or WHPX): only for a VM of the host's own
/// architecture, and not once it failed to boot one here; TCG otherwise.
pub fn pick_accel(guest_arch: &str, host_arch: &str, available: Option<Accel>, unusable: impl Fn(Accel) -> bool) -> Accel {
    match available {
        Some(accel) if guest_arch == host_arch && !unusable(accel) => accel,
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
    machine_cpu_accel("virt", tcg_cpu, accel)
}

/// `-M machine -cpu C -accel A`: `tcg_cpu` with multi-threaded TCG, or the
/// host's CPU under a hardware accelerator.
pub(crate) fn machine_cpu_accel(machine: &str, tcg_cpu: &str, accel: Accel) -> Vec<String> {
    let (cpu, accel) = match accel {
        Accel::Tcg => (tcg_cpu, "tcg,thread=multi".to_string()),
        other => ("host", other.name().to_string()),
    };
    ["-M", machine, "-cpu", cpu, "-accel", &accel].map(String::from).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accelerators_serve_only_their_hosts_own_architecture() {
        let (arm64, amd64) = ("arm64", "amd64");
        let never = |_| false;
        // An Apple Silicon Mac: HVF for arm64 guests, TCG for amd64 ones.
        assert_eq!(pick_accel(arm64, "arm64", Some(Accel::Hvf), never), Accel::Hvf);
        assert_eq!(pick_accel(amd64, "arm64", Some(Accel::Hvf), never), Accel::Tcg);
        // A Windows PC: WHPX for amd64 guests, and so for linux/386 ones (their VM is amd64).
        assert_eq!(pick_accel(amd64, "amd64", Some(Accel::Whpx), never), Accel::Whpx);
        let i386_vm = for_platform(&"linux/386".parse().unwrap()).unwrap().architecture();
        assert_eq!(pick_accel(i386_vm, "amd64", Some(Accel::Whpx), never), Accel::Whpx);
        // KVM that failed to boot a guest here, or no accelerator at all: TCG.
        assert_eq!(pick_accel(amd64, "amd64", Some(Accel::Kvm), |a| a == Accel::Kvm), Accel::Tcg);
        assert_eq!(pick_accel(amd64, "amd64", None, never), Accel::Tcg);
    }

    fn arch(platform: &str) -> Result<&'static dyn GuestArch, UnsupportedPlatform> {
        for_platform(&platform.parse::<Platform>().unwrap())
    }

    #[test]
    fn every_listed_platform_has_a_vm() {
        for platform in PLATFORMS {
            assert!(arch(platform).is_ok(), "{platform}");
        }
    }

    #[test]
    fn every_supported_platform_has_its_emulator_and_keys() {
        for (platform, binary, key, linux32) in [
            ("linux/arm64", "qemu-system-aarch64", "arm64", false),
            ("linux/amd64", "qemu-system-x86_64", "amd64", false),
            ("linux/arm/v7", "qemu-system-arm", "armv7", false),
            // 32-bit userlands in the VM of a CPU that runs them as they are
            ("linux/386", "qemu-system-x86_64", "amd64", true),
            ("linux/arm/v6", "qemu-system-arm", "armv7", false),
            ("linux/arm/v5", "qemu-system-arm", "armv7", false),
            // containerd's spellings of the same platforms
            ("linux/arm", "qemu-system-arm", "armv7", false),
            ("linux/armhf", "qemu-system-arm", "armv7", false),
            ("linux/armel", "qemu-system-arm", "armv7", false),
            ("linux/i386", "qemu-system-x86_64", "amd64", true),
            ("linux/arm64/v8", "qemu-system-aarch64", "arm64", false),
            ("linux/aarch64", "qemu-system-aarch64", "arm64", false),
            ("linux/x86_64", "qemu-system-x86_64", "amd64", false),
            ("linux/riscv64", "qemu-system-riscv64", "riscv64", false),
            ("linux/ppc64le", "qemu-system-ppc64", "ppc64le", false),
            ("linux/s390x", "qemu-system-s390x", "s390x", false),
        ] {
            let p: Platform = platform.parse().unwrap();
            let arch = arch(platform).unwrap_or_else(|e| panic!("{platform}: {e}"));
            assert_eq!((arch.qemu_binary(), arch.key(), runs_as_linux32(&p)), (binary, key, linux32), "{platform}");
        }
    }

    #[test]
    fn other_arches_are_refused_by_name() {
        for platform in ["linux/arm/v8", "linux/386/v2", "linux/mips64le", "windows/amd64"] {
            let err = arch(platform).err().unwrap_or_else(|| panic!("{platform} accepted"));
            assert!(err.to_string().contains(&platform.parse::<Platform>().unwrap().to_string()), "{err}");
        }
    }
}
