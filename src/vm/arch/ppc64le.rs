//! ppc64le guests on QEMU's `pseries` machine (SLOF firmware, PCI virtio,
//! the hypervisor console hvc0).

use super::{machine_cpu_accel, Accel, GuestArch};

pub struct Ppc64le;

impl GuestArch for Ppc64le {
    fn qemu_binary(&self) -> &'static str {
        "qemu-system-ppc64"
    }

    fn tcg_cpu(&self) -> &'static str {
        // Debian's ppc64el baseline is POWER8; POWER9 is the newest model
        // QEMU's TCG runs the radix MMU of.
        "power9"
    }

    fn machine_args(&self, accel: Accel, tcg_cpu: &str) -> Vec<String> {
        // The Spectre mitigation capabilities default to "workaround", which
        // TCG cannot provide: say they are absent, as on a TCG host.
        machine_cpu_accel("pseries,cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,cap-ccf-assist=off", tcg_cpu, accel)
    }

    fn console(&self) -> &'static str {
        "hvc0"
    }

    fn architecture(&self) -> &'static str {
        "ppc64le"
    }

    fn machine(&self) -> &'static str {
        "ppc64le"
    }

    fn restores_from_snapshots(&self) -> bool {
        // Measured with `cargo bench --bench vm_boot`: a pseries guest took
        // 13.3 s to come back from its boot snapshot against 7.5 s to boot.
        false
    }

    fn key(&self) -> &'static str {
        "ppc64le"
    }
}
