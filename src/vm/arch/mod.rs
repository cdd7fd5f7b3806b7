//! Per-architecture machine definitions behind one interface.

mod aarch64;
mod x86_64;

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
    /// Machine, CPU and accelerator arguments.
    fn machine_args(&self, accel: Accel) -> Vec<String>;
    /// The kernel's serial console device.
    fn console(&self) -> &'static str;
    /// The key of the embedded agent and kernel manifest (`arm64`, `amd64`).
    fn key(&self) -> &'static str;
}

#[derive(Debug, thiserror::Error)]
#[error("no guest support for platform {0}: kiln can build for linux/arm64 and linux/amd64")]
pub struct UnsupportedPlatform(pub String);

pub fn for_platform(platform: &Platform) -> Result<&'static dyn GuestArch, UnsupportedPlatform> {
    match (platform.os.as_str(), platform.architecture.as_str()) {
        ("linux", "arm64") => Ok(&aarch64::Aarch64),
        ("linux", "amd64") => Ok(&x86_64::X86_64),
        _ => Err(UnsupportedPlatform(platform.to_string())),
    }
}

/// The fastest accelerator usable for `guest` on this host.
pub fn best_accel(guest: &Platform) -> Accel {
    if guest.architecture != Platform::host().architecture {
        return Accel::Tcg;
    }
    host_accel().unwrap_or(Accel::Tcg)
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
