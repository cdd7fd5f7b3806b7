//! 32-bit arm guests on QEMU's `virt` board: linux/arm/v7, and the v6 and
//! v5 userlands an ARMv7 CPU runs as they are.

use super::{virt_board_args, Accel, GuestArch};

pub struct Armv7;

impl GuestArch for Armv7 {
    fn qemu_binary(&self) -> &'static str {
        "qemu-system-arm"
    }

    fn tcg_cpu(&self) -> &'static str {
        // cortex-a15 has LPAE, which the armmp-lpae kernel needs.
        "cortex-a15"
    }

    fn machine_args(&self, accel: Accel, tcg_cpu: &str) -> Vec<String> {
        // ("host" only applies on a 32-bit arm host with KVM: best_accel
        // picks TCG everywhere else.)
        virt_board_args(tcg_cpu, accel)
    }

    fn console(&self) -> &'static str {
        "ttyAMA0"
    }

    fn architecture(&self) -> &'static str {
        "arm"
    }

    fn machine(&self) -> &'static str {
        "armv7l"
    }

    fn key(&self) -> &'static str {
        "armv7"
    }
}
