//! Guest VMs: kernels, QEMU, the transport to the guest agent.
