//! amd64 guests on QEMU's q35 machine; linux/386 userlands run in them
//! through the kernel's IA32 emulation, under the 32-bit personality.

use super::{Accel, GuestArch};

pub struct X86_64;

impl GuestArch for X86_64 {
    fn qemu_binary(&self) -> &'static str {
        "qemu-system-x86_64"
    }

    fn tcg_cpu(&self) -> &'static str {
        "max"
    }

    fn machine_args(&self, accel: Accel, tcg_cpu: &str) -> Vec<String> {
        let mut args: Vec<String> = ["-M", "q35"].map(String::from).to_vec();
        match accel {
            // `-cpu host`/`max` abort under some KVM hosts (MSR 0x10a); the
            // default model works everywhere.
            Accel::Kvm | Accel::Hvf | Accel::Whpx => {
                args.extend(["-accel".to_string(), accel.name().to_string()]);
            }
            Accel::Tcg => {
                args.extend(["-cpu", tcg_cpu, "-accel", "tcg,thread=multi"].map(String::from));
            }
        }
        args
    }

    fn console(&self) -> &'static str {
        "ttyS0"
    }

    fn architecture(&self) -> &'static str {
        "amd64"
    }

    fn machine(&self) -> &'static str {
        "x86_64"
    }

    fn key(&self) -> &'static str {
        "amd64"
    }
}
