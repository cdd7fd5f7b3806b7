//! arm64 guests on QEMU's `virt` board.

use super::{virt_board_args, Accel, GuestArch};

pub struct Aarch64;

impl GuestArch for Aarch64 {
    fn qemu_binary(&self) -> &'static str {
        "qemu-system-aarch64"
    }

    fn tcg_cpu(&self) -> &'static str {
        // max,pauth=off measured fastest for user code under TCG; pointer
        // authentication is expensive to emulate and nothing in a build needs it.
        "max,pauth=off"
    }

    fn machine_args(&self, accel: Accel, tcg_cpu: &str) -> Vec<String> {
        virt_board_args(tcg_cpu, accel)
    }

    fn console(&self) -> &'static str {
        "ttyAMA0"
    }

    fn architecture(&self) -> &'static str {
        "arm64"
    }

    fn machine(&self) -> &'static str {
        "aarch64"
    }

    fn key(&self) -> &'static str {
        "arm64"
    }
}
