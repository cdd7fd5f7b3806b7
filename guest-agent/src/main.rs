//! kiln-agent: PID 1 of kiln's build VMs.
//!
//! It prepares the guest (mounts, kernel modules, network, scratch disk),
//! connects to the host over vsock or virtio-serial, and serves requests
//! until the host says shut down or goes away. Any fatal error is printed to
//! the console (which the host keeps in a log) and powers the VM off.

#[cfg(target_os = "linux")]
mod agent;

#[cfg(target_os = "linux")]
fn main() {
    agent::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("kiln-agent runs only as PID 1 of a Linux guest");
    std::process::exit(1);
}
