//! The agent's side of the transport: it connects out to the host, which has
//! been listening since before the VM started, so neither side polls.

use std::fs;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use kiln_protocol::{CMDLINE_TRANSPORT, SERIAL_PORT_NAME, VSOCK_PORT};

/// How long to wait for the transport device to appear after module loading.
const DEVICE_WAIT: Duration = Duration::from_secs(20);
/// How long a serial port may wait for its host end (guest time; a boot
/// snapshot saved while waiting resumes the wait when restored).
const HOST_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Vsock,
    Serial,
}

impl Kind {
    pub fn from_cmdline(cmdline: &str) -> Kind {
        let key = format!("{CMDLINE_TRANSPORT}=");
        match cmdline.split_whitespace().find_map(|w| w.strip_prefix(key.as_str())) {
            Some("vsock") => Kind::Vsock,
            _ => Kind::Serial,
        }
    }
}

pub struct Conn {
    pub reader: Box<dyn Read + Send>,
    pub writer: Box<dyn Write + Send>,
}

pub fn connect(kind: Kind) -> io::Result<Conn> {
    match kind {
        Kind::Vsock => connect_vsock(),
        Kind::Serial => open_serial(),
    }
}

fn connect_vsock() -> io::Result<Conn> {
    let addr = vsock::VsockAddr::new(vsock::VMADDR_CID_HOST, VSOCK_PORT);
    let deadline = Instant::now() + DEVICE_WAIT;
    loop {
        match vsock::VsockStream::connect(&addr) {
            Ok(stream) => {
                let reader = stream.try_clone()?;
                return Ok(Conn { reader: Box::new(reader), writer: Box::new(stream) });
            }
            // The transport device may still be probing right after module load.
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

fn open_serial() -> io::Result<Conn> {
    let deadline = Instant::now() + DEVICE_WAIT;
    loop {
        if let Some(dev) = find_serial_port()? {
            let file = fs::OpenOptions::new().read(true).write(true).open(&dev)?;
            // The host saves boot snapshots at this line (vm/boot_snapshot.rs).
            super::console::line(kiln_protocol::AGENT_WAITS_FOR_HOST);
            wait_for_host(&file)?;
            let reader = file.try_clone()?;
            return Ok(Conn { reader: Box::new(reader), writer: Box::new(file) });
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no virtio-serial port named {SERIAL_PORT_NAME}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the port's host end is connected, which poll reports as
/// writable (HUP while it is not). Writing sooner would block for good: a
/// kiln killed while its VM booted never connects, and without this the
/// agent would wait forever and keep that QEMU alive on hosts where the
/// kernel does not kill QEMU with kiln (macOS, Windows). After `HOST_WAIT`
/// the agent gives up, which powers the VM off.
fn wait_for_host(port: &fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + HOST_WAIT;
    loop {
        let mut fds = [libc::pollfd { fd: port.as_raw_fd(), events: libc::POLLOUT, revents: 0 }];
        // SAFETY: one pollfd that lives across the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
        if n > 0 && fds[0].revents & libc::POLLOUT != 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("the host did not connect within {HOST_WAIT:?}")));
        }
        if n != 0 {
            // HUP (or EINTR) comes back at once: pace the retries.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Finds `/dev/vportNpM` whose sysfs name is ours (there is no udev to make
/// the `/dev/virtio-ports/<name>` symlink).
fn find_serial_port() -> io::Result<Option<String>> {
    let dir = match fs::read_dir("/sys/class/virtio-ports") {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for entry in dir {
        let entry = entry?;
        let name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == SERIAL_PORT_NAME {
            let dev = format!("/dev/{}", entry.file_name().to_string_lossy());
            if fs::metadata(&dev).is_ok() {
                return Ok(Some(dev));
            }
        }
    }
    Ok(None)
}
