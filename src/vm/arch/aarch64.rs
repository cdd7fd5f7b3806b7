//! arm64 guests on QEMU's `virt` board.

use super::{virt_board_args, Accel, GuestArch};

pub struct Aarch64;

impl GuestArch for Aarch64 {
    fn qemu_binary(&self) -> &'static str {
        "qemu-system-aarch64"
    }

    fn machine_args(&self, accel: Accel) -> Vec<String> {
        // max,pauth=off measured fastest for user code under TCG; pointer
        // authentication is expensive to emulate and nothing in a build needs it.
        virt_board_args("max,pauth=off", accel)
    }

    fn console(&self) -> &'static str {
        "ttyAMA0"
    }

    fn key(&self) -> &'static str {
        "arm64"
    }
}
