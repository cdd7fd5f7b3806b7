//! arm64 guests on QEMU's `virt` board.

use super::{Accel, GuestArch};

pub struct Aarch64;

impl GuestArch for Aarch64 {
    fn qemu_binary(&self) -> &'static str {
        "qemu-system-aarch64"
    }

    fn machine_args(&self, accel: Accel) -> Vec<String> {
        let cpu = match accel {
            // Measured fastest for user code under TCG; pointer authentication
            // is expensive to emulate and nothing in a build needs it.
            Accel::Tcg => "max,pauth=off",
            _ => "host",
        };
        let accel = match accel {
            Accel::Tcg => "tcg,thread=multi".to_string(),
            other => other.name().to_string(),
        };
        ["-M", "virt", "-cpu", cpu, "-accel", &accel].map(String::from).to_vec()
    }

    fn console(&self) -> &'static str {
        "ttyAMA0"
    }

    fn key(&self) -> &'static str {
        "arm64"
    }
}
