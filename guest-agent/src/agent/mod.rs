//! The agent proper: boot sequence, then the request loop.
//!
//! Module dependencies, top-down (each uses only modules on later lines;
//! only `server` speaks the protocol's requests, workers reply through `outbox`):
//!
//! ```text
//! mod (main)   -> init, reaper, transport, server, console
//! server       -> exec, unpack, layer_disk, snapshot, ssh, reaper, transport, outbox, console
//! exec         -> root, pty, reaper, mounts, outbox
//! root         -> mount_points, mounts, scratch, ssh
//! ssh          -> outbox (forwarded ssh-agent connections)
//! unpack       -> scratch, outbox (the unpacking: kiln_protocol::layer_unpack)
//! snapshot     -> scratch, outbox, console
//! mount_points -> (paths: kiln_protocol::confined_path)
//! init         -> scratch, console
//! layer_disk   -> scratch
//! leaves       : outbox, scratch, console, mounts, pty, reaper, transport
//! ```
//!
//! Extended attributes come from `kiln_protocol::xattr`, beside the unpacking.

mod console;
mod exec;
mod init;
mod layer_disk;
mod mount_points;
mod mounts;
mod outbox;
mod pty;
mod reaper;
mod root;
mod scratch;
mod server;
mod snapshot;
mod ssh;
mod transport;
mod unpack;

use std::fmt::Display;

use console::log;

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
    if cmdline.split_whitespace().any(|w| w == kiln_protocol::CMDLINE_SCRATCH) {
        init::mount_scratch();
    }
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
