//! The wire protocol between the kiln host and its guest agent.
//!
//! One byte stream (a vsock connection or a virtio-serial port) carries
//! length-prefixed frames in both directions:
//!
//! ```text
//! +----------------+----------+------------------------+
//! | u32 BE length  | u8 kind  | payload (length bytes) |
//! +----------------+----------+------------------------+
//! ```
//!
//! * `kind = 1` (control): the payload is one JSON-encoded [`HostMsg`] or
//!   [`AgentMsg`]. JSON keeps the control plane debuggable from a console log.
//! * `kind = 2` (data): the payload is `u32 BE request id`, `u8 stream`, then
//!   raw bytes. An empty data frame closes that stream.
//!
//! Every frame is at most [`MAX_FRAME`] bytes of payload, so a corrupt length
//! can never make either side allocate without bound. The first exchange is a
//! [`HostMsg::Hello`] answered by [`AgentMsg::Hello`]; both carry
//! [`PROTOCOL_VERSION`] and a magic string so garbage on the line (a console
//! message, a wrong port) is reported as such and not misparsed.

pub mod confined_path;
pub mod file_name;
pub mod frame;
pub mod message;
pub mod layer_entry;
pub mod tar_read;
#[cfg(target_os = "linux")]
pub mod layer_unpack;
#[cfg(target_os = "linux")]
pub mod xattr;

pub use frame::{Frame, FrameError, FrameReader, FrameWriter, MAX_FRAME};
pub use message::*;
pub use layer_entry::{sort_for_layer, EntryKind, LayerEntry, Xattr};

/// Bumped on any incompatible change to [`message`] or [`frame`].
pub const PROTOCOL_VERSION: u32 = 4;

/// Sent in both hellos; anything else at the start of a stream is garbage.
pub const MAGIC: &str = "kiln-agent";

/// The vsock port the agent listens on.
pub const VSOCK_PORT: u32 = 1024;

/// The virtio-serial port name the agent looks for (`/sys/class/virtio-ports/*/name`).
pub const SERIAL_PORT_NAME: &str = "org.kiln.agent";

/// The agent's console line right before its hello on the serial port:
/// the hello blocks there until the host connects, and the host saves boot
/// snapshots at this line.
pub const AGENT_WAITS_FOR_HOST: &str = "kiln-agent: waiting for the host";

/// Kernel command-line key telling the agent which transport the host set up.
pub const CMDLINE_TRANSPORT: &str = "kiln.transport";

/// Kernel command-line flag: the host attached a scratch disk, with the
/// virtio serial [`SCRATCH_DISK_SERIAL`]. The agent waits for it: on s390x
/// the channel subsystem finds disks after the agent has started.
pub const CMDLINE_SCRATCH: &str = "kiln.scratch";

/// The scratch disk's virtio serial.
pub const SCRATCH_DISK_SERIAL: &str = "kiln-scratch";

/// Kernel command-line flag: power off right after boot (benchmark reference runs).
pub const CMDLINE_POWEROFF: &str = "kiln.poweroff";

/// The agent's own version, reported in the handshake.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
