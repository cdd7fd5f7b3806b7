//! Child processes (QEMU, vhost-device-vsock) that must never outlive kiln.

use std::process::Command;

/// Puts the child in its own process group (a terminal's Ctrl-C reaches kiln,
/// which shuts the VM down in order, not QEMU directly) and, on Linux, has the
/// kernel SIGKILL it when kiln dies, even by SIGKILL.
///
/// The parent-death signal fires when the *thread* that spawned the child
/// exits, so spawn from a thread that lives as long as the child.
pub fn die_with_parent(cmd: &mut Command) {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        {
            let parent = std::process::id() as libc::pid_t;
            // SAFETY: prctl and getppid are async-signal-safe raw syscalls.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The parent may have died between fork and prctl.
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                    Ok(())
                });
            }
        }
    }
    #[cfg(not(unix))]
    let _ = cmd;
}
