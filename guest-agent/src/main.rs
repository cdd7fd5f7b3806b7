//! kiln-agent: PID 1 of kiln's build VMs.
fn main() {}
