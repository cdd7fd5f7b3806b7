//! riscv64 guests on QEMU's `virt` board (OpenSBI firmware, PCIe virtio).

use super::{virt_board_args, Accel, GuestArch};

pub struct Riscv64;

impl GuestArch for Riscv64 {
    fn qemu_binary(&self) -> &'static str {
        "qemu-system-riscv64"
    }

    fn tcg_cpu(&self) -> &'static str {
        // RVA20-level rv64gc, what Debian's riscv64 port targets.
        "rv64"
    }

    fn machine_args(&self, accel: Accel, tcg_cpu: &str) -> Vec<String> {
        virt_board_args(tcg_cpu, accel)
    }

    fn console(&self) -> &'static str {
        "ttyS0"
    }

    fn architecture(&self) -> &'static str {
        "riscv64"
    }

    fn machine(&self) -> &'static str {
        "riscv64"
    }

    fn no_vsock(&self) -> Option<&'static str> {
        // Measured: 20 MB of a command's output arrive over virtio-serial,
        // while over vhost-user vsock 1 MB never arrived (arm64 and ppc64le
        // stream 20 MB over either).
        Some("guest-to-host streams over vhost-user vsock stall in riscv64 guests")
    }

    fn restores_from_snapshots(&self) -> bool {
        // QEMU 10's riscv64 guest restored from a migration file keeps
        // running, but its timer stalls: a RUN's snapshot (sync, freeze)
        // took 168 s instead of 0.1 s. A cold boot takes about 3 s.
        false
    }

    fn key(&self) -> &'static str {
        "riscv64"
    }
}
