//! Guest VMs: kernels, QEMU, the transport to the guest agent.

pub mod initramfs;
pub mod kernel;
