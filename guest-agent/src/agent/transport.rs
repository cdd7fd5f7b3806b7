//! The agent's side of the transport: it connects out to the host, which has
//! been listening since before the VM started, so neither side polls.

use std::fs;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use kiln_protocol::{CMDLINE_TRANSPORT, SERIAL_PORT_NAME, VSOCK_PORT};

/// How long to wait for the transport device to appear after module loading.
const DEVICE_WAIT: Duration = Duration::from_secs(20);

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
