//! Pseudo-terminals for commands run with a tty. Each is allocated from the
//! devpts instance the command will see, so its name (`tty`) resolves there.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use kiln_protocol::TtySize;

pub struct Pty {
    /// The agent's side: output is read from it, input written to it.
    pub master: File,
    /// The command's terminal (stdin, stdout, stderr, controlling tty).
    pub slave: OwnedFd,
}

/// Opens a new terminal pair in the devpts file system mounted at `devpts`,
/// owned by `uid` (as login(1) does) and `size` big.
pub fn open(devpts: &Path, size: TtySize, uid: u32) -> Result<Pty, String> {
    let ptmx = devpts.join("ptmx");
    let err = |what: &str, e: io::Error| format!("allocating a terminal ({what} in {}): {e}", devpts.display());
    // std opens with O_CLOEXEC: other commands started meanwhile must not inherit either end.
    let master = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&ptmx)
        .map_err(|e| err("ptmx", e))?;
    let fd = master.as_raw_fd();
    let mut number: libc::c_uint = 0;
    let unlock: libc::c_int = 0;
    // SAFETY: ioctls on our own master fd with correctly typed arguments.
    unsafe {
        if libc::ioctl(fd, libc::TIOCSPTLCK, &unlock) < 0 {
            return Err(err("unlock", io::Error::last_os_error()));
        }
        if libc::ioctl(fd, libc::TIOCGPTN, &mut number) < 0 {
            return Err(err("number", io::Error::last_os_error()));
        }
    }
    let slave_path = devpts.join(number.to_string());
    let slave: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&slave_path)
        .map_err(|e| err(&number.to_string(), e))?
        .into();
    // SAFETY: fchown(2) on an fd we own; -1 keeps the group (tty).
    if unsafe { libc::fchown(slave.as_raw_fd(), uid, u32::MAX) } < 0 {
        return Err(err("chown", io::Error::last_os_error()));
    }
    set_size(&master, size).map_err(|e| err("size", e))?;
    Ok(Pty { master, slave })
}

/// Sets the terminal's size; the kernel sends SIGWINCH to its foreground group.
pub fn set_size(master: &impl AsRawFd, size: TtySize) -> io::Result<()> {
    let ws = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ with a valid winsize on a terminal fd.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The agent's descriptors of one terminal master.
pub struct MasterEnds {
    /// Kept for resizing.
    pub control: File,
    /// Read by the output pump.
    pub output: File,
    /// Written by the stdin forwarder.
    pub input: File,
}

impl Pty {
    /// Splits the pair into the agent's master descriptors and the slave,
    /// before the command starts (nothing can fail after it did).
    pub fn split(self) -> Result<(MasterEnds, OwnedFd), String> {
        let dup = |f: &File| f.try_clone().map_err(|e| format!("duplicating the terminal: {e}"));
        let ends = MasterEnds { output: dup(&self.master)?, input: dup(&self.master)?, control: self.master };
        Ok((ends, self.slave))
    }
}

