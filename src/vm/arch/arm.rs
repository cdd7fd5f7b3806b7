//! 32-bit arm (linux/arm/v7) guests on QEMU's `virt` board.

use super::{Accel, GuestArch};

pub struct Armv7;

impl GuestArch for Armv7 {
    fn qemu_binary(&self) -> &'static str {
        "qemu-system-arm"
    }

    fn machine_args(&self, accel: Accel) -> Vec<String> {
        let cpu = match accel {
            // cortex-a15 has LPAE, which the armmp-lpae kernel needs.
            Accel::Tcg => "cortex-a15",
            // Only a 32-bit arm host with KVM gets here (best_accel picks
            // TCG for every other host).
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
        "armv7"
    }
}
