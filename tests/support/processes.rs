//! Child processes of a kiln under test (QEMU, vhost-device-vsock), and
//! whether they outlive it.

use std::process::Command;
use std::time::{Duration, Instant};

/// The direct children of `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let out = Command::new("pgrep").args(["-P", &pid.to_string()]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Whether `pid` still runs; a zombie is dead for our purposes.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// Fails unless every one of `pids` is gone within `within`.
pub fn wait_gone(pids: &[u32], within: Duration) {
    let deadline = Instant::now() + within;
    while pids.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "processes {pids:?} outlived kiln by {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
