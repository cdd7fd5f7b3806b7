//! Child processes (QEMU, vhost-device-vsock, virtiofsd) that must never outlive kiln.

use std::process::Command;

/// Puts the child in its own process group (a terminal's Ctrl-C reaches kiln,
/// which shuts the VM down in order, not QEMU directly) and, on Linux, has the
/// kernel SIGKILL it when kiln dies, even by SIGKILL. On Windows it gets a
/// console process group of its own; [`bind_to_kiln`] does the rest.
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
    #[cfg(windows)]
    {
        use std::os::windows::process::CommandExt;
        // Its own console process group: Ctrl-C reaches kiln, not QEMU.
        const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
        cmd.creation_flags(CREATE_NEW_PROCESS_GROUP);
    }
}

/// The rest of [`die_with_parent`] that needs the running child: on
/// Windows, kiln's kill-on-close job object (there is no parent-death
/// signal), so QEMU dies the moment kiln does.
pub fn bind_to_kiln(child: &std::process::Child) -> std::io::Result<()> {
    #[cfg(windows)]
    crate::win32::kill_with_kiln(child)?;
    #[cfg(not(windows))]
    let _ = child;
    Ok(())
}
