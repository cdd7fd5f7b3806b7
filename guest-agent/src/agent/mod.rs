//! The agent proper: boot sequence, then the request loop.

mod exec;
mod init;
mod reaper;
mod mounts;
mod pty;
mod root;
mod server;
mod snapshot;
mod stubs;
mod transport;
mod unpack;
mod xattr;

use std::fmt::Display;

/// Where the scratch disk (the first virtio-blk disk) is mounted.
pub const SCRATCH: &str = "/scratch";

pub fn main() {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("kiln-agent {}", kiln_protocol::AGENT_VERSION);
        return;
    }
    if std::process::id() != 1 {
        eprintln!("kiln-agent must run as PID 1 of a kiln VM");
        std::process::exit(2);
    }
    if let Err(err) = run() {
        fatal(err);
    }
    init::power_off();
}

fn run() -> Result<(), String> {
    // Signals must be blocked before any thread starts so that only the
    // reaper ever sees SIGCHLD.
    reaper::block_sigchld();
    init::early_mounts().map_err(|e| format!("mounting pseudo file systems: {e}"))?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    // Reference boots for benchmarks: kernel + initramfs to power-off, no agent work.
    if cmdline.split_whitespace().any(|w| w == kiln_protocol::CMDLINE_POWEROFF) {
        return Ok(());
    }
    init::load_modules().map_err(|e| format!("loading kernel modules: {e}"))?;
    init::mount_scratch();
    init::network();
    let reaper = reaper::Reaper::start();
    let transport = transport::Kind::from_cmdline(&cmdline);
    let conn = transport::connect(transport).map_err(|e| format!("connecting to the host over {transport:?}: {e}"))?;
    server::serve(conn, reaper)
}

/// Prints a fatal error on the console and powers off; never returns.
pub fn fatal(err: impl Display) -> ! {
    log(format_args!("fatal: {err}"));
    init::power_off()
}

/// One line on the console, which the host keeps in the VM's log.
pub fn log(msg: impl Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "kiln-agent: {msg}");
}
