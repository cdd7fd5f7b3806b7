//! Ctrl-C and termination: set a flag the long-running work polls, so kiln
//! stops the guest command, shuts the VM down and cleans up before exiting.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static CANCEL: AtomicBool = AtomicBool::new(false);
/// The signal that set CANCEL, for the exit code (128 + its number).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Installs the handlers and returns the flag they set.
pub fn install() -> &'static AtomicBool {
    #[cfg(unix)]
    {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
        extern "C" fn on_signal(sig: libc::c_int) {
            let _ = SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
            CANCEL.store(true, Ordering::SeqCst);
        }
        let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
        for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            // SAFETY: the handler only stores to an atomic.
            let _ = unsafe { sigaction(sig, &action) };
        }
    }
    #[cfg(windows)]
    crate::win32::on_console_interrupt(|sig| {
        let _ = SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
        CANCEL.store(true, Ordering::SeqCst);
    });
    &CANCEL
}

/// The signal that interrupted kiln, if one did.
pub fn received() -> Option<i32> {
    CANCEL.load(Ordering::SeqCst).then(|| SIGNAL.load(Ordering::SeqCst))
}

static RESIZED: AtomicBool = AtomicBool::new(false);

/// Installs a SIGWINCH handler and returns the flag it sets when the
/// user's terminal changes size (`kiln run -t` polls and clears it).
pub fn watch_resize() -> &'static AtomicBool {
    #[cfg(unix)]
    {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
        extern "C" fn on_winch(_: libc::c_int) {
            RESIZED.store(true, Ordering::SeqCst);
        }
        let action = SigAction::new(SigHandler::Handler(on_winch), SaFlags::SA_RESTART, SigSet::empty());
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(Signal::SIGWINCH, &action) };
    }
    &RESIZED
}
