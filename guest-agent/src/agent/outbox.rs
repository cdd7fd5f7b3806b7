//! The agent's outgoing frames: the shared sending half of the connection
//! and the two ways to put a frame on it. A leaf: workers reply through it
//! without knowing the request loop.

use std::io::Write;
use std::sync::{Arc, Mutex};

use kiln_protocol::{AgentMsg, FrameWriter};

/// The agent's sending half, shared by every thread that reports to the host.
pub type Out = Arc<Mutex<FrameWriter<Box<dyn Write + Send>>>>;

/// Sends a control message; a broken connection surfaces on the read side.
pub fn send(out: &Out, msg: &AgentMsg) {
    let _ = out.lock().unwrap().send(msg);
}

pub fn send_data(out: &Out, id: u32, stream: u8, bytes: &[u8]) -> bool {
    out.lock().unwrap().send_data(id, stream, bytes).is_ok()
}
