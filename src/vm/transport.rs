//! The host side of the agent transport.
//!
//! In every mode the host listens first and the guest connects when its agent
//! is ready, so there is no polling for readiness:
//! * `serial`: a virtio-serial port whose chardev connects to our socket
//!   (QEMU is the client): a unix socket, or on hosts without them (Windows)
//!   a TCP listener on 127.0.0.1. Works with any QEMU on any host OS.
//! * `vsock` via `vhost-device-vsock` (user space, no privileges): the agent
//!   connects to host CID 2, which the daemon forwards to `<uds>_<port>`.
//! * `vsock` via the kernel (`/dev/vhost-vsock`): the agent connects to an
//!   AF_VSOCK listener.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use kiln_protocol::{SERIAL_PORT_NAME, VSOCK_PORT};

use super::arch::VirtioBus;

/// What the user asked for with `--transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportChoice {
    #[default]
    Auto,
    Vsock,
    Serial,
}

impl FromStr for TransportChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "vsock" => Ok(Self::Vsock),
            "serial" => Ok(Self::Serial),
            other => Err(format!("unknown transport {other:?}: expected auto, vsock or serial")),
        }
    }
}

/// The transport actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Serial,
    /// vsock through a `vhost-device-vsock` process.
    VsockUser,
    /// vsock through the host kernel's vhost-vsock.
    VsockKernel,
}

impl Transport {
    /// The value of `kiln.transport=` on the guest kernel command line.
    pub fn cmdline_value(self) -> &'static str {
        match self {
            Transport::Serial => "serial",
            Transport::VsockUser | Transport::VsockKernel => "vsock",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("--transport vsock: this host offers no vsock (no usable /dev/vhost-vsock and no vhost-device-vsock on PATH; `cargo install vhost-device-vsock` provides it)")]
    NoVsock,
    #[error("--transport vsock: not for this guest: {0}; use --transport serial")]
    NoVsockInGuest(&'static str),
    #[error("starting vhost-device-vsock: {0}")]
    Daemon(io::Error),
    #[error("vhost-device-vsock did not create its socket {0} within 10 s")]
    DaemonTimeout(String),
    #[error("listening on {path}: {source}")]
    Listen { path: String, source: io::Error },
}

const VHOST_USER_VSOCK: &str = "vhost-device-vsock";

/// `no_vsock`: why the guest cannot use vsock, if it cannot ([`crate::vm::arch::GuestArch::no_vsock`]).
pub fn choose(choice: TransportChoice, no_vsock: Option<&'static str>) -> Result<Transport, TransportError> {
    if let Some(why) = no_vsock {
        return match choice {
            TransportChoice::Vsock => Err(TransportError::NoVsockInGuest(why)),
            TransportChoice::Auto | TransportChoice::Serial => Ok(Transport::Serial),
        };
    }
    let kernel = kernel_vsock_usable();
    let user = || find_in_path(VHOST_USER_VSOCK).is_some();
    match choice {
        TransportChoice::Serial => Ok(Transport::Serial),
        TransportChoice::Vsock | TransportChoice::Auto if kernel => Ok(Transport::VsockKernel),
        TransportChoice::Vsock | TransportChoice::Auto if user() => Ok(Transport::VsockUser),
        TransportChoice::Vsock => Err(TransportError::NoVsock),
        TransportChoice::Auto => Ok(Transport::Serial),
    }
}

#[cfg(target_os = "linux")]
fn kernel_vsock_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/vhost-vsock").is_ok()
}

#[cfg(not(target_os = "linux"))]
fn kernel_vsock_usable() -> bool {
    false
}

pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// A connection from the agent, split for a reader thread and a writer.
pub struct Connection {
    pub reader: Box<dyn io::Read + Send>,
    pub writer: Box<dyn io::Write + Send>,
}

/// The host end, set up before QEMU starts.
pub struct HostEnd {
    pub transport: Transport,
    /// Extra QEMU arguments for the device.
    pub qemu_args: Vec<String>,
    /// The helper daemon, if any; killed on drop.
    daemon: Option<Child>,
    listener: Listener,
}

enum Listener {
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixListener),
    Tcp(std::net::TcpListener),
    #[cfg(target_os = "linux")]
    Vsock(vsock::VsockListener),
}

/// One row of the host's TCP connection table: a connection's local and
/// remote ends and the process that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRow {
    pub local: std::net::SocketAddrV4,
    pub remote: std::net::SocketAddrV4,
    pub pid: u32,
}

/// The owner of the connection that reached `ours` from `peer`: the row
/// whose local end is `peer` and whose remote end is `ours`.
pub fn owner_of(rows: impl IntoIterator<Item = TcpRow>, ours: std::net::SocketAddrV4, peer: std::net::SocketAddrV4) -> Option<u32> {
    rows.into_iter().find(|r| r.local == peer && r.remote == ours).map(|r| r.pid)
}

/// Whether the loopback connection `stream` may come from process
/// `expected`. Any local user may connect to a loopback port before QEMU
/// does; on Windows, where the agent's port is TCP, kiln therefore refuses a
/// connection the system's TCP table names another owner for. A table that
/// names none (pid 0, as wine's does) cannot tell, and is trusted (other
/// hosts use a unix socket in a private directory).
#[cfg(windows)]
fn from_process(stream: &std::net::TcpStream, expected: u32) -> io::Result<bool> {
    use std::net::SocketAddr;
    match (stream.local_addr()?, stream.peer_addr()?) {
        (SocketAddr::V4(ours), SocketAddr::V4(peer)) => {
            let owner = crate::win32::tcp_peer_pid(ours, peer)?;
            Ok(matches!(owner, None | Some(0)) || owner == Some(expected))
        }
        _ => Ok(false),
    }
}

#[cfg(not(windows))]
fn from_process(_: &std::net::TcpStream, _: u32) -> io::Result<bool> {
    Ok(true)
}

/// The kind of socket the serial port's chardev connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerialSocket {
    /// A unix socket in the VM's private run directory.
    Unix,
    /// A TCP listener on 127.0.0.1 with a port the OS picks (hosts without
    /// unix sockets that QEMU can use: Windows).
    TcpLoopback,
}

impl SerialSocket {
    /// What this host uses.
    pub fn for_host() -> Self {
        if cfg!(unix) { SerialSocket::Unix } else { SerialSocket::TcpLoopback }
    }
}

/// Listens for the agent's serial connection; returns the listener and the
/// QEMU chardev that connects to it.
fn listen_serial(kind: SerialSocket, dir: &Path) -> Result<(Listener, String), TransportError> {
    match kind {
        SerialSocket::Unix => {
            let sock = dir.join("agent.sock");
            Ok((listen_unix(&sock)?, format!("socket,id=agent,path={},server=off", sock.display())))
        }
        SerialSocket::TcpLoopback => {
            let listen_err = |source| TransportError::Listen { path: "127.0.0.1 (TCP)".into(), source };
            let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(listen_err)?;
            let port = listener.local_addr().map_err(listen_err)?.port();
            Ok((Listener::Tcp(listener), format!("socket,id=agent,host=127.0.0.1,port={port},server=off")))
        }
    }
}

/// QEMU arguments for the agent's virtio-serial port on `chardev` (whose id must be `agent`).
pub fn serial_port_args(chardev: &str, bus: VirtioBus) -> Vec<String> {
    vec![
        "-chardev".into(),
        chardev.to_string(),
        "-device".into(),
        bus.device("virtio-serial"),
        "-device".into(),
        format!("virtserialport,chardev=agent,name={SERIAL_PORT_NAME}"),
    ]
}

/// The guest CID used with vsock; the VM is the only guest its daemon serves.
const GUEST_CID: u32 = 3;

impl HostEnd {
    /// Prepares the host end inside `dir` (the VM's private run directory).
    pub fn setup(transport: Transport, dir: &Path, bus: VirtioBus) -> Result<HostEnd, TransportError> {
        match transport {
            Transport::Serial => {
                let (listener, chardev) = listen_serial(SerialSocket::for_host(), dir)?;
                Ok(HostEnd { transport, qemu_args: serial_port_args(&chardev, bus), daemon: None, listener })
            }
            Transport::VsockUser => {
                let vhost_sock = dir.join("vhost.sock");
                let uds = dir.join("v.vsock");
                // Listen before the guest can possibly connect.
                let listener = listen_unix(&PathBuf::from(format!("{}_{VSOCK_PORT}", uds.display())))?;
                let daemon = spawn_daemon(&vhost_sock, &uds)?;
                let mut end = HostEnd { transport, qemu_args: Vec::new(), daemon: Some(daemon), listener };
                let daemon = end.daemon.as_mut().expect("just set");
                wait_for_socket(&vhost_sock, daemon).map_err(|e| match e {
                    SocketWait::Exited(status) => TransportError::Daemon(io::Error::other(format!("exited early with {status}"))),
                    SocketWait::Timeout => TransportError::DaemonTimeout(vhost_sock.display().to_string()),
                })?;
                end.qemu_args = vec![
                    "-chardev".into(),
                    format!("socket,id=vsc,path={}", vhost_sock.display()),
                    "-device".into(),
                    "vhost-user-vsock-pci,chardev=vsc".into(),
                ];
                Ok(end)
            }
            Transport::VsockKernel => kernel_vsock_end(transport),
        }
    }

    /// Whether the device needs guest RAM shared with a helper daemon
    /// ([`QemuConfig::shared_memory`](super::qemu::QemuConfig::shared_memory)).
    pub fn needs_shared_memory(&self) -> bool {
        self.transport == Transport::VsockUser
    }

    /// Waits for the guest's connection, made by QEMU's process `qemu_pid`
    /// (a TCP connection from another process is dropped). `alive` is polled
    /// so a dead QEMU ends the wait early; it returns an error description when dead.
    pub fn accept(
        &self,
        deadline: Instant,
        qemu_pid: Option<u32>,
        mut alive: impl FnMut() -> Result<(), String>,
    ) -> Result<Option<Connection>, String> {
        self.set_nonblocking(true).map_err(|e| e.to_string())?;
        loop {
            match self.try_accept(qemu_pid) {
                Ok(conn) => return Ok(Some(conn)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("accepting the agent connection: {e}")),
            }
            alive()?;
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match &self.listener {
            #[cfg(unix)]
            Listener::Unix(l) => l.set_nonblocking(on),
            Listener::Tcp(l) => l.set_nonblocking(on),
            #[cfg(target_os = "linux")]
            Listener::Vsock(l) => l.set_nonblocking(on),
        }
    }

    fn try_accept(&self, qemu_pid: Option<u32>) -> io::Result<Connection> {
        match &self.listener {
            #[cfg(unix)]
            Listener::Unix(l) => {
                let (stream, _) = l.accept()?;
                stream.set_nonblocking(false)?;
                let reader = stream.try_clone()?;
                Ok(Connection { reader: Box::new(reader), writer: Box::new(stream) })
            }
            Listener::Tcp(l) => {
                let (stream, _) = l.accept()?;
                if let Some(pid) = qemu_pid {
                    if !from_process(&stream, pid)? {
                        // Not QEMU: drop it and keep waiting for the real connection.
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                }
                stream.set_nonblocking(false)?;
                stream.set_nodelay(true)?;
                let reader = stream.try_clone()?;
                Ok(Connection { reader: Box::new(reader), writer: Box::new(stream) })
            }
            #[cfg(target_os = "linux")]
            Listener::Vsock(l) => {
                let (stream, _) = l.accept()?;
                stream.set_nonblocking(false)?;
                let reader = stream.try_clone()?;
                Ok(Connection { reader: Box::new(reader), writer: Box::new(stream) })
            }
        }
    }
}

/// Why a vhost-user daemon's socket did not appear.
pub enum SocketWait {
    Exited(std::process::ExitStatus),
    Timeout,
}

/// Waits (up to 10 s) for the vhost-user daemon `daemon` to create its socket `path`.
pub fn wait_for_socket(path: &Path, daemon: &mut Child) -> Result<(), SocketWait> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if let Ok(Some(status)) = daemon.try_wait() {
            return Err(SocketWait::Exited(status));
        }
        if Instant::now() > deadline {
            return Err(SocketWait::Timeout);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

impl Drop for HostEnd {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }
}

#[cfg(unix)]
fn listen_unix(path: &Path) -> Result<Listener, TransportError> {
    std::os::unix::net::UnixListener::bind(path)
        .map(Listener::Unix)
        .map_err(|source| TransportError::Listen { path: path.display().to_string(), source })
}

#[cfg(not(unix))]
fn listen_unix(path: &Path) -> Result<Listener, TransportError> {
    Err(TransportError::Listen {
        path: path.display().to_string(),
        source: io::Error::new(io::ErrorKind::Unsupported, "unix sockets are not supported on this host yet"),
    })
}

fn spawn_daemon(vhost_sock: &Path, uds: &Path) -> Result<Child, TransportError> {
    let mut cmd = Command::new(VHOST_USER_VSOCK);
    cmd.arg("--vm")
        .arg(format!("guest-cid={GUEST_CID},socket={},uds-path={}", vhost_sock.display(), uds.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    crate::vm::process::die_with_parent(&mut cmd);
    cmd.spawn().map_err(TransportError::Daemon)
}

#[cfg(target_os = "linux")]
fn kernel_vsock_end(transport: Transport) -> Result<HostEnd, TransportError> {
    // The CID is per kiln process, but the port is the fixed VSOCK_PORT: two
    // kiln processes using kernel vsock at once collide on bind (the second
    // gets a clear "listening on vsock port" error).
    let cid = 3 + (std::process::id() % 100_000);
    let listener = vsock::VsockListener::bind(&vsock::VsockAddr::new(vsock::VMADDR_CID_ANY, VSOCK_PORT))
        .map_err(|source| TransportError::Listen { path: format!("vsock port {VSOCK_PORT}"), source })?;
    let qemu_args = vec!["-device".into(), format!("vhost-vsock-pci,guest-cid={cid}")];
    Ok(HostEnd { transport, qemu_args, daemon: None, listener: Listener::Vsock(listener) })
}

#[cfg(not(target_os = "linux"))]
fn kernel_vsock_end(_: Transport) -> Result<HostEnd, TransportError> {
    Err(TransportError::NoVsock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_connection_is_owned_by_the_process_at_its_other_end() {
        let addr = |s: &str| s.parse::<std::net::SocketAddrV4>().unwrap();
        let (kiln, qemu, intruder) = (addr("127.0.0.1:5000"), addr("127.0.0.1:40001"), addr("127.0.0.1:40002"));
        let rows = [
            TcpRow { local: kiln, remote: qemu, pid: 10 },
            TcpRow { local: qemu, remote: kiln, pid: 20 },
            TcpRow { local: intruder, remote: kiln, pid: 30 },
        ];
        // kiln's own end of the connection (pid 10) never answers for the peer.
        assert_eq!(owner_of(rows, kiln, qemu), Some(20));
        assert_eq!(owner_of(rows, kiln, intruder), Some(30));
        assert_eq!(owner_of(rows, kiln, addr("127.0.0.1:40003")), None);
    }

    #[test]
    fn the_serial_port_listens_where_the_host_can() {
        assert_eq!(SerialSocket::for_host(), if cfg!(windows) { SerialSocket::TcpLoopback } else { SerialSocket::Unix });
        let dir = tempfile::tempdir().unwrap();
        // The loopback listener (Windows' kind) works everywhere; QEMU's chardev names its port.
        let (listener, chardev) = listen_serial(SerialSocket::TcpLoopback, dir.path()).unwrap();
        let port: u16 = chardev.rsplit_once("port=").unwrap().1.trim_end_matches(",server=off").parse().unwrap();
        assert!(chardev.starts_with("socket,id=agent,host=127.0.0.1,"), "{chardev}");
        let end = HostEnd { transport: Transport::Serial, qemu_args: serial_port_args(&chardev, VirtioBus::Pci), daemon: None, listener };
        let mut guest = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut conn = end.accept(Instant::now() + Duration::from_secs(5), Some(std::process::id()), || Ok(())).unwrap().expect("connected");
        io::Write::write_all(&mut guest, b"ready").unwrap();
        let mut got = [0u8; 5];
        io::Read::read_exact(&mut conn.reader, &mut got).unwrap();
        assert_eq!(&got, b"ready");
        #[cfg(unix)]
        {
            let (_, chardev) = listen_serial(SerialSocket::Unix, dir.path()).unwrap();
            assert_eq!(chardev, format!("socket,id=agent,path={},server=off", dir.path().join("agent.sock").display()));
        }
    }

    #[test]
    fn serial_is_always_available() {
        assert_eq!(choose(TransportChoice::Serial, None).unwrap(), Transport::Serial);
        assert!(choose(TransportChoice::Auto, None).is_ok());
        // A guest without vsock (s390x, riscv64): automatic choice is the
        // serial port, and asking for vsock says why not.
        let why = Some("no vsock here");
        assert_eq!(choose(TransportChoice::Auto, why).unwrap(), Transport::Serial);
        let err = choose(TransportChoice::Vsock, why).unwrap_err().to_string();
        assert!(err.contains("no vsock here") && err.contains("--transport serial"), "{err}");
        for platform in ["linux/s390x", "linux/riscv64"] {
            let arch = crate::vm::arch::for_platform(&platform.parse().unwrap()).unwrap();
            assert_eq!(choose(TransportChoice::Auto, arch.no_vsock()).unwrap(), Transport::Serial, "{platform}");
        }
        assert_eq!(serial_port_args("c", VirtioBus::Ccw)[3], "virtio-serial-ccw");
        assert!("carrier-pigeon".parse::<TransportChoice>().is_err());
    }
}
