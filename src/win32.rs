//! The Windows counterparts of kiln's Unix host calls, in one place: the
//! process-lifetime job object that takes QEMU down with kiln (Linux has
//! PR_SET_PDEATHSIG), the console control handler (Unix signals), sparse
//! files on NTFS (holes come free on Unix file systems) and process liveness
//! (`/proc` or `kill(pid, 0)`).

use std::fs::File;
use std::io;
use std::net::SocketAddrV4;
use std::os::windows::io::AsRawHandle;
use std::process::Child;
use std::sync::OnceLock;

use windows_sys::Win32::Foundation::{CloseHandle, GetLastError, ERROR_ACCESS_DENIED, HANDLE, STILL_ACTIVE};
use windows_sys::Win32::System::Console::{SetConsoleCtrlHandler, CTRL_BREAK_EVENT, CTRL_CLOSE_EVENT, CTRL_C_EVENT};
use windows_sys::Win32::System::IO::DeviceIoControl;
use windows_sys::Win32::System::Ioctl::FSCTL_SET_SPARSE;
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation, SetInformationJobObject,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
};
use windows_sys::Win32::System::Threading::{GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION};

use crate::vm::transport::TcpRow;

/// A job object whose only handle kiln holds until it exits: when kiln dies,
/// however it dies, Windows closes the handle and kills every process in it.
struct KillOnCloseJob(HANDLE);

// SAFETY: a job handle may be used from any thread.
unsafe impl Send for KillOnCloseJob {}
unsafe impl Sync for KillOnCloseJob {}

fn job() -> io::Result<&'static KillOnCloseJob> {
    static JOB: OnceLock<Result<KillOnCloseJob, i32>> = OnceLock::new();
    let job = JOB.get_or_init(|| {
        // SAFETY: plain Win32 calls on a handle this function owns; the limit struct is zeroed then filled.
        unsafe {
            let handle = CreateJobObjectW(std::ptr::null(), std::ptr::null());
            if handle.is_null() {
                return Err(GetLastError() as i32);
            }
            let mut limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = std::mem::zeroed();
            limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
            let size = std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32;
            if SetInformationJobObject(handle, JobObjectExtendedLimitInformation, (&raw const limits).cast(), size) == 0 {
                let err = GetLastError() as i32;
                CloseHandle(handle);
                return Err(err);
            }
            Ok(KillOnCloseJob(handle))
        }
    });
    job.as_ref().map_err(|&code| io::Error::from_raw_os_error(code))
}

/// Puts `child` in kiln's kill-on-close job, so it cannot outlive kiln.
pub fn kill_with_kiln(child: &Child) -> io::Result<()> {
    let job = job()?;
    // SAFETY: both handles are valid for the duration of the call.
    if unsafe { AssignProcessToJobObject(job.0, child.as_raw_handle() as HANDLE) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ctrl-C, Ctrl-Break and closing the console call `on_event` with the Unix
/// signal number they stand for (SIGINT 2, SIGTERM 15), instead of ending kiln
/// at once: kiln then stops the VM and cleans up as on Unix.
pub fn on_console_interrupt(on_event: fn(i32)) {
    static HANDLER: OnceLock<fn(i32)> = OnceLock::new();
    unsafe extern "system" fn handler(event: u32) -> i32 {
        let signal = match event {
            CTRL_C_EVENT | CTRL_BREAK_EVENT => 2,
            CTRL_CLOSE_EVENT => 15,
            _ => return 0,
        };
        match HANDLER.get() {
            Some(f) => {
                f(signal);
                1
            }
            None => 0,
        }
    }
    if HANDLER.set(on_event).is_ok() {
        // SAFETY: the handler is a plain function that only calls `on_event`.
        unsafe { SetConsoleCtrlHandler(Some(handler), 1) };
    }
}

/// Marks `file` sparse, so that a 64 GiB disk image takes only what is
/// written: NTFS would otherwise allocate (zero-fill) the space set_len adds.
pub fn mark_sparse(file: &File) -> io::Result<()> {
    let mut returned = 0u32;
    // SAFETY: FSCTL_SET_SPARSE with no input buffer means "set sparse".
    let ok = unsafe {
        DeviceIoControl(file.as_raw_handle() as HANDLE, FSCTL_SET_SPARSE, std::ptr::null(), 0, std::ptr::null_mut(), 0, &mut returned, std::ptr::null_mut())
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The process that owns the other end of the loopback TCP connection
/// `ours` ← `peer`, from the system's TCP table.
pub fn tcp_peer_pid(ours: SocketAddrV4, peer: SocketAddrV4) -> io::Result<Option<u32>> {
    use windows_sys::Win32::NetworkManagement::IpHelper::{GetExtendedTcpTable, MIB_TCPROW_OWNER_PID, TCP_TABLE_OWNER_PID_CONNECTIONS};
    const AF_INET: u32 = 2;
    const ERROR_INSUFFICIENT_BUFFER: u32 = 122;
    let mut size = 0u32;
    let mut buf: Vec<u32> = Vec::new();
    // The table grows between calls when connections open; ask again until it fits.
    loop {
        // SAFETY: `buf` holds `size` bytes (u32-aligned, as the table is).
        let rc = unsafe { GetExtendedTcpTable(buf.as_mut_ptr().cast(), &mut size, 0, AF_INET, TCP_TABLE_OWNER_PID_CONNECTIONS, 0) };
        match rc {
            0 => break,
            ERROR_INSUFFICIENT_BUFFER => buf = vec![0u32; (size as usize).div_ceil(4)],
            code => return Err(io::Error::from_raw_os_error(code as i32)),
        }
    }
    let count = buf.first().copied().unwrap_or(0) as usize;
    let row_words = std::mem::size_of::<MIB_TCPROW_OWNER_PID>() / 4;
    let rows = buf[1..].chunks_exact(row_words).take(count).map(|r| {
        // Addresses and ports are in network byte order, ports in the low 16 bits.
        let addr = |a: u32, p: u32| SocketAddrV4::new(a.to_ne_bytes().into(), u16::from_be(p as u16));
        TcpRow { local: addr(r[1], r[2]), remote: addr(r[3], r[4]), pid: r[5] }
    });
    Ok(crate::vm::transport::owner_of(rows, ours, peer))
}

/// Whether process `pid` is running (a process kiln may not open counts as running).
pub fn process_exists(pid: u32) -> bool {
    // SAFETY: the handle is closed before returning.
    unsafe {
        let handle = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if handle.is_null() {
            return GetLastError() == ERROR_ACCESS_DENIED;
        }
        let mut code = 0u32;
        let running = GetExitCodeProcess(handle, &mut code) != 0 && code == STILL_ACTIVE as u32;
        CloseHandle(handle);
        running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_in_the_job_is_running_and_gone_once_killed() {
        let mut child = std::process::Command::new("cmd.exe").args(["/c", "ping -n 30 127.0.0.1 > nul"]).spawn().unwrap();
        kill_with_kiln(&child).unwrap();
        assert!(process_exists(child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!process_exists(child.id()));
        assert!(process_exists(std::process::id()));
    }

    #[test]
    fn the_tcp_table_names_the_process_at_the_other_end() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let v4 = |a: std::net::SocketAddr| match a {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("{other}"),
        };
        let (ours, peer) = (v4(server.local_addr().unwrap()), v4(server.peer_addr().unwrap()));
        let owner = tcp_peer_pid(ours, peer).unwrap();
        // Windows names this process; wine finds the connection but names no owner (0).
        assert!(owner == Some(std::process::id()) || owner == Some(0), "{owner:?}");
        assert_eq!(tcp_peer_pid(ours, "127.0.0.1:1".parse().unwrap()).unwrap(), None);
        drop(client);
    }

    #[test]
    fn sparse_files_keep_their_length() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("disk.img")).unwrap();
        mark_sparse(&file).unwrap();
        file.set_len(1 << 30).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 1 << 30);
    }
}
