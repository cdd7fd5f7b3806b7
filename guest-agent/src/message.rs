//! Control messages. Requests carry a host-chosen `id` that ties them to their
//! data streams and to the agent's answers.

use serde::{Deserialize, Serialize};

use crate::frame::FrameError;
use crate::{MAGIC, PROTOCOL_VERSION};

/// Data stream numbers (the `stream` byte of a data frame).
pub mod stream {
    /// Host → agent: the command's standard input.
    pub const STDIN: u8 = 0;
    /// Agent → host: the command's standard output.
    pub const STDOUT: u8 = 1;
    /// Agent → host: the command's standard error.
    pub const STDERR: u8 = 2;
    /// Host → agent: a tar archive to unpack.
    pub const TAR: u8 = 3;
    /// Agent → host: a snapshot manifest, one JSON [`crate::LayerEntry`] per line.
    pub const MANIFEST: u8 = 4;
    /// Both ways: the bytes of a forwarded ssh-agent connection, on the
    /// channel [`crate::AgentMsg::SshOpen`] opened; an empty frame ends a direction.
    pub const SSH: u8 = 5;
}

/// Host → agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMsg {
    /// The host's answer to the agent's hello. It carries the host's clock
    /// and fresh entropy: a VM restored from a boot snapshot wakes with the
    /// snapshot's clock and random state, shared by every VM restored from it.
    Hello {
        magic: String,
        version: u32,
        /// The host's time, nanoseconds since the Unix epoch.
        #[serde(default)]
        unix_nanos: u64,
        /// Random bytes for the guest's entropy pool (the kernel reseeds from them).
        #[serde(default)]
        entropy: Vec<u8>,
    },
    /// Run a command; stdout/stderr stream back, then [`AgentMsg::Exited`].
    Exec(Box<ExecRequest>),
    /// Send a signal to a running command's process group.
    Signal { id: u32, signal: i32 },
    /// The terminal of a command started with [`ExecRequest::tty`] changed
    /// size; its foreground process group gets SIGWINCH.
    Resize { id: u32, rows: u16, cols: u16 },
    /// Unpack the tar that follows on stream [`stream::TAR`] of `id` into
    /// `dest` (a path under the agent's scratch root). Answered by
    /// [`AgentMsg::Done`] or [`AgentMsg::Failed`].
    Unpack { id: u32, dest: String },
    /// Describe the upper directory `upper` (scratch-relative) of a finished
    /// overlay step: the agent syncs and freezes the scratch file system,
    /// streams the manifest on [`stream::MANIFEST`] of `id`, then answers
    /// [`AgentMsg::Done`]. The file system stays frozen (so the host can read
    /// file contents from the disk image) until [`HostMsg::Thaw`]. Entries
    /// come sorted by the bytes of their path (parents before children); the
    /// upper directory itself is not listed. Freezes nest: the file system
    /// thaws with the last `Thaw`, and always before the VM powers off.
    Snapshot { id: u32, upper: String },
    /// Thaw the scratch file system frozen by [`HostMsg::Snapshot`]; answered by `Done`.
    Thaw { id: u32 },
    /// Mount the read-only EROFS layer image on the virtio disk whose serial
    /// is `disk` at `dest` (scratch-relative, created if missing), so `dest`
    /// can be an overlay lower like an unpacked layer. Answered by `Done`, or
    /// by `Failed` when the disk or the kernel's erofs support is missing:
    /// the host then unpacks the layer instead.
    MountLayer { id: u32, disk: String, dest: String },
    /// Sync filesystems and power the VM off.
    Shutdown,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecRequest {
    pub id: u32,
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries; the command sees exactly these.
    pub env: Vec<String>,
    /// Working directory inside the root.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// When false, stdin is /dev/null; when true the host sends stream STDIN.
    pub stdin: bool,
    /// Kill the command (SIGKILL to its process group) after this long.
    pub timeout_ms: Option<u64>,
    /// The command's root file system; `None` runs in the agent's own
    /// initramfs root.
    pub root: Option<RootSpec>,
    /// Give the command its own network namespace with only loopback up.
    #[serde(default)]
    pub no_network: bool,
    /// Extra mounts inside the root, applied in order after the standard
    /// ones (proc, sys, dev, tmp).
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    /// Run the command on a pseudo-terminal of this size: it is the
    /// command's controlling terminal and its stdin, stdout and stderr, all
    /// output comes on stream STDOUT, and STDIN data is typed into it.
    #[serde(default)]
    pub tty: Option<TtySize>,
    /// Run under the 32-bit personality (`linux32`): a 32-bit platform in a
    /// 64-bit guest (linux/386 in the amd64 VM) then sees `uname -m` say
    /// `i686`, as on a 32-bit machine, instead of `x86_64`.
    #[serde(default)]
    pub linux32: bool,
    /// Lines added to the command's private /etc/hosts (`--add-host`);
    /// only overlay roots of images with an /etc get one.
    #[serde(default)]
    pub extra_hosts: Vec<HostEntry>,
    /// Size of the private /dev/shm of an overlay root (`--shm-size`);
    /// `None` is docker's 64 MiB.
    #[serde(default)]
    pub shm_size_bytes: Option<u64>,
    /// Resource limits set before exec (`--ulimit`).
    #[serde(default)]
    pub ulimits: Vec<Ulimit>,
}

/// One `/etc/hosts` line: `ip name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    pub name: String,
    pub ip: String,
}

/// A resource limit by docker's name (one of [`ULIMIT_NAMES`]); the agent
/// maps it to its kernel's RLIMIT_* number, which differs between
/// architectures. [`Ulimit::UNLIMITED`] is RLIM_INFINITY.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

impl Ulimit {
    pub const UNLIMITED: u64 = u64::MAX;
}

/// Agent-chosen channel ids start here; the host numbers requests from 1.
pub const SSH_CHANNEL_BASE: u32 = 0x8000_0000;

/// The resource names `docker --ulimit` accepts.
pub const ULIMIT_NAMES: [&str; 15] = [
    "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc", "rss", "rtprio", "rttime",
    "sigpending", "stack",
];

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// Where a command's root comes from. Every path is relative to the
/// agent's scratch root (`/scratch`) and may not contain `..`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RootSpec {
    /// chroot into an existing directory.
    Dir { path: String },
    /// Mount an overlay of `lowers` (topmost first; may be empty) under a
    /// writable `upper` (created empty if missing) with `work` as overlayfs'
    /// work directory, run the command in it in its own PID namespace, and
    /// unmount it when the command's process group is gone.
    ///
    /// As in a docker RUN: the command is PID 1 (every process it leaves
    /// behind dies with it), /proc, /sys, a private /dev (null, zero, full,
    /// random, urandom, tty, pts, shm) and the VM's resolv.conf and hosts
    /// (private copies, when the image has /etc) are mounted; /tmp is the
    /// image's own. Mount points the image lacks are created for the run and
    /// removed from `upper` afterwards, along with directories overlayfs
    /// copied up only to hold them, so `upper` holds exactly the command's
    /// changes. Lower paths should be short (`l/N`): all overlay options
    /// must fit the kernel's 4095 bytes (about 260 lowers like `l/NNN`).
    /// Layer directories made by [`HostMsg::Unpack`] or [`HostMsg::MountLayer`]
    /// can be lowers as they are (OCI whiteouts are overlayfs ones in both).
    Overlay { lowers: Vec<String>, upper: String, work: String },
}

/// A mount inside a command's root (`target` is an absolute path in the
/// root; symlinks in it resolve inside the root, and missing parts are
/// created, then removed after an overlay run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MountSpec {
    /// Bind a scratch-relative directory or file.
    Bind { source: String, target: String, readonly: bool },
    /// A fresh tmpfs.
    Tmpfs { target: String, size_bytes: Option<u64> },
    /// A read-only overlay of scratch-relative lower directories (topmost
    /// first): another stage's or an image's file system (`--mount=from=`).
    /// `subpath` (relative, may be empty) picks a directory of that file
    /// system to mount, as `--mount=from=...,source=...` does.
    Overlay { lowers: Vec<String>, subpath: String, target: String },
    /// A file holding `data`, kept in memory (a private tmpfs) and never on
    /// the scratch disk: `--mount=type=secret`.
    Secret { target: String, data: Vec<u8>, mode: u32, uid: u32, gid: u32 },
    /// A unix socket whose connections are forwarded to the host's ssh
    /// agent number `agent` of the request (`--mount=type=ssh`): each one
    /// is announced with [`AgentMsg::SshOpen`] and carried on stream
    /// [`stream::SSH`] of its channel.
    Ssh { target: String, agent: u32, mode: u32, uid: u32, gid: u32 },
    /// The virtio-fs device with this `tag`: a host directory shared live
    /// (`kiln run -v`).
    Virtiofs { tag: String, target: String, readonly: bool },
}

/// Agent → host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMsg {
    Hello(AgentHello),
    /// The command of request `id` started.
    Started { id: u32, pid: i32 },
    /// The command of request `id` ended; its output streams are closed before this.
    Exited { id: u32, status: ExitStatus },
    /// Request `id` completed.
    Done { id: u32 },
    /// Request `id` failed; the VM stays usable.
    Failed { id: u32, message: String },
    /// The agent hit an error it cannot recover from; the VM powers off next.
    Fatal { message: String },
    /// The command of request `id` connected to its ssh socket for host
    /// agent `agent`; the connection's bytes use `channel` (an id the
    /// agent picks, [`SSH_CHANNEL_BASE`] and up, never a request's).
    SshOpen { id: u32, agent: u32, channel: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHello {
    pub magic: String,
    pub version: u32,
    pub agent_version: String,
    /// `uname -r` of the guest kernel.
    pub kernel: String,
    /// `uname -m` of the guest.
    pub arch: String,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum ExitStatus {
    Code { code: i32 },
    Signal { signal: i32 },
    /// Killed by the agent because `timeout_ms` passed.
    TimedOut,
}

impl ExitStatus {
    /// The exit code a shell would report: the code, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code { code } => code,
            ExitStatus::Signal { signal } => 128 + signal,
            ExitStatus::TimedOut => 124,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code { code } => write!(f, "exit code {code}"),
            ExitStatus::Signal { signal } => write!(f, "killed by signal {signal}"),
            ExitStatus::TimedOut => write!(f, "timed out"),
        }
    }
}

impl HostMsg {
    /// The host's hello with its clock and `entropy`.
    pub fn hello(entropy: Vec<u8>) -> Self {
        let unix_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        HostMsg::Hello { magic: MAGIC.to_string(), version: PROTOCOL_VERSION, unix_nanos, entropy }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the peer is not a kiln agent (got magic {0:?})")]
    BadMagic(String),
    #[error("protocol version mismatch: host speaks {host}, agent speaks {agent}; rebuild kiln and its agents together (scripts/build-agents.sh)")]
    Version { host: u32, agent: u32 },
    #[error("expected a hello, got {0}")]
    Unexpected(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Checks the peer's magic and version from either side of the handshake.
pub fn check_hello(magic: &str, version: u32) -> Result<(), HandshakeError> {
    if magic != MAGIC {
        return Err(HandshakeError::BadMagic(magic.to_string()));
    }
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version { host: PROTOCOL_VERSION, agent: version });
    }
    Ok(())
}

/// Decodes a control payload.
pub fn decode<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(json)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_checks() {
        assert!(check_hello(MAGIC, PROTOCOL_VERSION).is_ok());
        assert!(matches!(check_hello("nope", PROTOCOL_VERSION), Err(HandshakeError::BadMagic(_))));
        assert!(matches!(
            check_hello(MAGIC, PROTOCOL_VERSION + 1),
            Err(HandshakeError::Version { .. })
        ));
    }

    #[test]
    fn exit_status_shell_codes() {
        assert_eq!(ExitStatus::Code { code: 42 }.shell_code(), 42);
        assert_eq!(ExitStatus::Signal { signal: 9 }.shell_code(), 137);
    }

    #[test]
    fn messages_are_tagged_json() {
        let json = serde_json::to_string(&HostMsg::Signal { id: 3, signal: 15 }).unwrap();
        assert_eq!(json, r#"{"type":"signal","id":3,"signal":15}"#);
        let back: AgentMsg = decode(br#"{"type":"exited","id":1,"status":{"how":"code","code":0}}"#).unwrap();
        assert!(matches!(back, AgentMsg::Exited { id: 1, status: ExitStatus::Code { code: 0 } }));
    }

    #[test]
    fn tty_is_optional_on_the_wire() {
        // A request from a host that predates terminals still decodes.
        let old = r#"{"type":"exec","id":1,"argv":["sh"],"env":[],"cwd":"/","uid":0,"gid":0,"groups":[],"stdin":true,"timeout_ms":null,"root":null}"#;
        let HostMsg::Exec(req) = decode::<HostMsg>(old.as_bytes()).unwrap() else { panic!() };
        assert_eq!(req.tty, None);
        let req = ExecRequest { tty: Some(TtySize { rows: 40, cols: 132 }), ..Default::default() };
        let json = serde_json::to_string(&HostMsg::Exec(Box::new(req))).unwrap();
        assert!(json.contains(r#""tty":{"rows":40,"cols":132}"#), "{json}");
        let json = serde_json::to_string(&HostMsg::Resize { id: 2, rows: 50, cols: 100 }).unwrap();
        assert_eq!(json, r#"{"type":"resize","id":2,"rows":50,"cols":100}"#);
    }
}
