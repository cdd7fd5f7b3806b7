//! s390x guests on QEMU's `s390-ccw-virtio` machine: virtio devices on the
//! channel subsystem, the SCLP console.

use super::{machine_cpu_accel, Accel, GuestArch, VirtioBus};

pub struct S390x;

impl GuestArch for S390x {
    fn qemu_binary(&self) -> &'static str {
        "qemu-system-s390x"
    }

    fn tcg_cpu(&self) -> &'static str {
        // The newest model QEMU's TCG implements; Debian's s390x baseline is z196.
        "max"
    }

    fn machine_args(&self, accel: Accel, tcg_cpu: &str) -> Vec<String> {
        machine_cpu_accel("s390-ccw-virtio", tcg_cpu, accel)
    }

    fn console(&self) -> &'static str {
        "ttysclp0"
    }

    fn architecture(&self) -> &'static str {
        "s390x"
    }

    fn machine(&self) -> &'static str {
        "s390x"
    }

    fn virtio_bus(&self) -> VirtioBus {
        VirtioBus::Ccw
    }

    fn no_vsock(&self) -> Option<&'static str> {
        Some("QEMU has no vsock device on the s390x channel subsystem")
    }

    fn key(&self) -> &'static str {
        "s390x"
    }
}
