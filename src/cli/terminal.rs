//! The user's terminal for `kiln run -t`: its size, and raw mode while the
//! guest's shell owns it (keys, Ctrl-C included, go to the guest as bytes).

use std::io::{IsTerminal, Read};

use kiln_protocol::TtySize;

#[cfg(unix)]
pub use raw::RawTerminal;

/// The guest terminal's size when kiln's own output is not a terminal.
const DEFAULT_SIZE: TtySize = TtySize { rows: 24, cols: 80 };

pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// The size of the terminal on stdout, else on stdin.
#[cfg(unix)]
pub fn size() -> Option<TtySize> {
    use std::os::fd::AsRawFd;
    size_of(std::io::stdout().as_raw_fd()).or_else(|| size_of(std::io::stdin().as_raw_fd()))
}

/// The size of the terminal on stderr (where build progress goes).
#[cfg(unix)]
pub fn stderr_size() -> Option<TtySize> {
    use std::os::fd::AsRawFd;
    size_of(std::io::stderr().as_raw_fd())
}

#[cfg(unix)]
fn size_of(fd: std::os::fd::RawFd) -> Option<TtySize> {
    // SAFETY: a zeroed winsize is valid; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some(TtySize { rows: ws.ws_row, cols: ws.ws_col })
}

#[cfg(not(unix))]
pub fn size() -> Option<TtySize> {
    None
}

#[cfg(not(unix))]
pub fn stderr_size() -> Option<TtySize> {
    None
}

/// The size to give the guest's terminal.
pub fn initial_size() -> TtySize {
    size().unwrap_or(DEFAULT_SIZE)
}

/// The guest's stdin for `kiln run`, and the guard that must outlive the
/// run: with `-it` the terminal goes raw and is restored when it drops.
#[cfg(unix)]
pub fn guest_stdin(interactive: bool, tty: bool) -> (Option<RawTerminal>, Option<Box<dyn Read + Send>>) {
    match (interactive, tty) {
        (true, true) => {
            let raw = RawTerminal::new();
            let input = raw.input();
            (Some(raw), Some(input))
        }
        (true, false) => (None, Some(Box::new(std::io::stdin()))),
        (false, _) => (None, None),
    }
}

#[cfg(not(unix))]
pub fn guest_stdin(interactive: bool, _tty: bool) -> ((), Option<Box<dyn Read + Send>>) {
    ((), interactive.then(|| Box::new(std::io::stdin()) as Box<dyn Read + Send>))
}

/// New terminal sizes to pass on, as SIGWINCH reports them.
pub fn resizes(tty: bool) -> impl FnMut() -> Option<TtySize> {
    #[cfg(unix)]
    let resized = tty.then(super::signals::watch_resize);
    #[cfg(not(unix))]
    let _ = tty;
    move || {
        #[cfg(unix)]
        if resized.is_some_and(|r| r.swap(false, std::sync::atomic::Ordering::SeqCst)) {
            return size();
        }
        None
    }
}

#[cfg(unix)]
mod raw {
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::sync::{Arc, Mutex};

    use nix::sys::termios::{self, SetArg, Termios};

    enum Mode {
        /// Untouched so far: kiln's own messages (booting...) print normally.
        Cooked,
        /// Raw; the settings to restore.
        Raw(Termios),
        /// Restored for good: a late first read must not make it raw again.
        Closed,
    }

    /// Owns stdin's terminal settings: the terminal goes raw when the command
    /// first reads input (so it stays cooked, and Ctrl-C cancels, while the VM
    /// boots) and is restored when this guard drops, on every path out of
    /// `kiln run` (errors and panics unwind through it).
    pub struct RawTerminal {
        mode: Arc<Mutex<Mode>>,
    }

    impl RawTerminal {
        #[allow(clippy::new_without_default)] // a guard: made on purpose, not by default
        pub fn new() -> RawTerminal {
            RawTerminal { mode: Arc::new(Mutex::new(Mode::Cooked)) }
        }

        /// stdin, switching the terminal to raw mode on its first read.
        pub fn input(&self) -> Box<dyn Read + Send> {
            Box::new(RawInput { mode: self.mode.clone(), stdin: std::io::stdin() })
        }
    }

    impl Drop for RawTerminal {
        fn drop(&mut self) {
            let mut mode = self.mode.lock().unwrap_or_else(|e| e.into_inner());
            if let Mode::Raw(saved) = &*mode {
                let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
            }
            *mode = Mode::Closed;
        }
    }

    struct RawInput {
        mode: Arc<Mutex<Mode>>,
        stdin: std::io::Stdin,
    }

    impl Read for RawInput {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            {
                let mut mode = self.mode.lock().unwrap_or_else(|e| e.into_inner());
                match &*mode {
                    Mode::Cooked => {
                        let fd = self.stdin.as_fd();
                        let saved = termios::tcgetattr(fd)?;
                        let mut raw = saved.clone();
                        termios::cfmakeraw(&mut raw);
                        termios::tcsetattr(fd, SetArg::TCSANOW, &raw)?;
                        *mode = Mode::Raw(saved);
                    }
                    Mode::Raw(_) => {}
                    Mode::Closed => return Ok(0),
                }
            }
            self.stdin.read(buf)
        }
    }
}
