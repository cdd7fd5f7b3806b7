//! The agent's console log: one line per message, kept by the host in the VM's log.

use std::fmt::Display;

/// One line on the console, which the host keeps in the VM's log.
pub fn log(msg: impl Display) {
    line(format_args!("kiln-agent: {msg}"));
}

/// A line on the console exactly as given.
pub fn line(text: impl Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}
