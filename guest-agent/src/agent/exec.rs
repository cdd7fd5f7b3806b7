//! `do_exec`: run one command, stream its output, report how it ended.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::{stream, AgentMsg, ExecRequest, ExitStatus, TtySize, Ulimit};

use super::mounts::RawStep;
use super::outbox::{send, send_data, Out};
use super::pty;
use super::reaper::Reaper;
use super::root::{self, PreparedRoot};

/// After the command exits, how long its output pipes may stay open (held by
/// processes it left behind, which are killed) before the agent stops reading.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// The VM's own devpts, which commands in plain directory roots share.
const VM_DEVPTS: &str = "/dev/pts";

pub struct Running {
    pub stdin: Option<SyncSender<Vec<u8>>>,
    pgid: i32,
    done: Arc<AtomicBool>,
    /// The master side of the command's terminal, for resizing.
    terminal: Option<File>,
}

impl Running {
    pub fn finished(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// Signals the whole process group (the command ran in its own session).
    pub fn signal(&self, signal: i32) {
        if !self.finished() {
            // SAFETY: kill(2) on a process group we created.
            unsafe { libc::kill(-self.pgid, signal) };
        }
    }

    /// Resizes the command's terminal; commands without one ignore it.
    pub fn resize(&self, size: TtySize) {
        if let Some(master) = &self.terminal {
            let _ = pty::set_size(master, size);
        }
    }
}

/// Where the command's standard input is written.
type Input = Box<dyn Write + Send>;
/// One output of the command and the stream it goes out on.
type Output = (Box<dyn Read + Send>, u8);

pub fn do_exec(req: ExecRequest, out: Out, reaper: &Reaper) -> Result<Running, String> {
    if req.argv.is_empty() {
        return Err("empty command".into());
    }
    let mut root = root::prepare(&req, &out)?;
    let spawned = spawn(&req, root.as_ref(), reaper);
    let (mut child, terminal, exited) = match spawned {
        Ok(spawned) => spawned,
        Err(e) => {
            let teardown = root.as_mut().map_or(Ok(()), |r| r.teardown());
            return Err(match teardown {
                Ok(()) => e,
                Err(t) => format!("{e}; then {t}"),
            });
        }
    };
    let pid = child.id() as i32;
    send(&out, &AgentMsg::Started { id: req.id, pid });

    // With a terminal everything the command writes comes out of its
    // master (which reads EIO once the last holder of the slave is gone).
    let (outputs, input, terminal): (Vec<Output>, Option<Input>, _) = match terminal {
        Some(ends) => {
            let input = if req.stdin { Some(Box::new(ends.input) as Input) } else { None };
            (vec![(Box::new(ends.output), stream::STDOUT)], input, Some(ends.control))
        }
        None => (
            vec![
                (Box::new(child.stdout.take().expect("piped")), stream::STDOUT),
                (Box::new(child.stderr.take().expect("piped")), stream::STDERR),
            ],
            child.stdin.take().map(|p| Box::new(p) as Input),
            None,
        ),
    };
    let pumps = outputs.len();
    let (drained_tx, drained_rx) = sync_channel::<()>(pumps);
    for (mut pipe, kind) in outputs {
        let (out, tx) = (out.clone(), drained_tx.clone());
        std::thread::spawn(move || {
            pump_output(&mut *pipe, &out, req.id, kind);
            let _ = tx.send(());
        });
    }
    drop(drained_tx);

    let stdin = input.map(|mut pipe| {
        let (tx, rx) = sync_channel::<Vec<u8>>(16);
        std::thread::spawn(move || {
            for chunk in rx {
                if pipe.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        tx
    });

    let done = Arc::new(AtomicBool::new(false));
    let running = Running { stdin, pgid: pid, done: done.clone(), terminal };
    let timeout = req.timeout_ms.map(Duration::from_millis);
    let id = req.id;
    std::thread::spawn(move || {
        let status = wait_with_timeout(&exited, timeout, pid);
        // Leftover processes of the command's session die with it, as in a
        // container (in its own PID namespace the kernel already saw to that).
        // SAFETY: kill(2) on the process group we created.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        for _ in 0..pumps {
            if drained_rx.recv_timeout(DRAIN_AFTER_EXIT).is_err() {
                break;
            }
        }
        // The root is unmounted before the host hears of the exit, so a
        // snapshot that follows sees a settled upper directory.
        let teardown = root.as_mut().map_or(Ok(()), |r| r.teardown());
        done.store(true, Ordering::SeqCst);
        match teardown {
            Ok(()) => send(&out, &AgentMsg::Exited { id, status }),
            Err(message) => send(&out, &AgentMsg::Failed { id, message: format!("after the command ({status}): {message}") }),
        }
    });
    Ok(running)
}

/// Starts the command; in a new PID namespace when the root asks for one.
/// With a terminal, also returns the agent's ends of its master.
fn spawn(
    req: &ExecRequest,
    root: Option<&PreparedRoot>,
    reaper: &Reaper,
) -> Result<(Child, Option<pty::MasterEnds>, Receiver<ExitStatus>), String> {
    let setup = ChildSetup::new(root, req)?;
    let terminal = match req.tty {
        None => None,
        Some(size) => {
            let devpts = root.and_then(|r| r.devpts.as_deref()).unwrap_or(Path::new(VM_DEVPTS));
            Some(pty::open(devpts, size, req.uid)?.split()?)
        }
    };
    let mut cmd = Command::new(&req.argv[0]);
    cmd.args(&req.argv[1..]).env_clear();
    for entry in &req.env {
        match entry.split_once('=') {
            Some((k, v)) => cmd.env(k, v),
            None => cmd.env(entry, ""),
        };
    }
    let (terminal, slave) = match terminal {
        Some((ends, slave)) => (Some(ends), Some(slave)),
        None => (None, None),
    };
    match slave {
        Some(slave) => {
            // The command's copies; the agent's close when `cmd` is dropped.
            let copy = || slave.try_clone().map(Stdio::from).map_err(|e| format!("duplicating the terminal: {e}"));
            cmd.stdin(copy()?).stdout(copy()?).stderr(Stdio::from(slave));
        }
        None => {
            cmd.stdin(if req.stdin { Stdio::piped() } else { Stdio::null() })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
    }
    // SAFETY: the closure only makes raw syscalls on memory prepared before fork.
    unsafe { cmd.pre_exec(move || setup.apply()) };
    let mut start = || {
        reaper.spawn(|| {
            let child = cmd.spawn()?;
            Ok((child.id() as i32, child))
        })
    };
    let new_pid_ns = root.is_some_and(|r| r.new_pid_ns);
    let result = if new_pid_ns {
        // unshare(CLONE_NEWPID) applies to the calling thread's future
        // children only, so a short-lived thread makes the command PID 1 of a
        // fresh namespace while the agent stays where it is.
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: unshare(2) affecting only this thread's children.
                if unsafe { libc::unshare(libc::CLONE_NEWPID) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                start()
            })
            .join()
            .expect("the spawning thread does not panic")
        })
    } else {
        start()
    };
    let (child, exited) = result.map_err(|e| format!("cannot start {:?}: {e}", req.argv[0]))?;
    Ok((child, terminal, exited))
}

fn wait_with_timeout(exited: &Receiver<ExitStatus>, timeout: Option<Duration>, pid: i32) -> ExitStatus {
    let Some(timeout) = timeout else {
        return exited.recv().unwrap_or(ExitStatus::Signal { signal: libc::SIGKILL });
    };
    match exited.recv_timeout(timeout) {
        Ok(status) => status,
        Err(RecvTimeoutError::Timeout) => {
            // SAFETY: kill(2) on the process group we created.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = exited.recv();
            ExitStatus::TimedOut
        }
        Err(RecvTimeoutError::Disconnected) => ExitStatus::Signal { signal: libc::SIGKILL },
    }
}

fn pump_output(pipe: &mut dyn Read, out: &Out, id: u32, kind: u8) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if !send_data(out, id, kind, &buf[..n]) {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    send_data(out, id, kind, &[]);
}

/// Everything the child does between fork and exec, prepared beforehand:
/// after fork in a threaded process only raw syscalls are safe.
struct ChildSetup {
    root: Option<ChildRoot>,
    /// Own network namespace with only loopback up.
    no_network: bool,
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    /// stdin is a terminal to make the controlling one of the new session.
    controlling_tty: bool,
    /// Switch to the 32-bit personality (see [`ExecRequest::linux32`]).
    linux32: bool,
    /// `setrlimit` calls: (resource, limits).
    rlimits: Vec<(i32, libc::rlimit)>,
}

/// `PER_LINUX32` from the kernel's `<linux/personality.h>` (the libc crate lacks it).
const PER_LINUX32: libc::c_ulong = 0x0008;

struct ChildRoot {
    dir: CString,
    mounts: Vec<RawStep>,
}

impl ChildSetup {
    fn new(root: Option<&PreparedRoot>, req: &ExecRequest) -> Result<ChildSetup, String> {
        let root = match root {
            None => None,
            Some(root) => Some(ChildRoot {
                dir: CString::new(root.dir.as_os_str().as_bytes()).map_err(|_| "root path contains a NUL byte")?,
                mounts: root.mounts.clone(),
            }),
        };
        let cwd = if req.cwd.is_empty() { "/" } else { req.cwd.as_str() };
        let rlimits = req.ulimits.iter().map(rlimit).collect::<Result<_, _>>()?;
        Ok(ChildSetup {
            root,
            no_network: req.no_network,
            cwd: CString::new(cwd).map_err(|_| "working directory contains a NUL byte".to_string())?,
            uid: req.uid,
            gid: req.gid,
            groups: req.groups.clone(),
            controlling_tty: req.tty.is_some(),
            linux32: req.linux32,
            rlimits,
        })
    }

    /// Runs in the child after fork. Raw libc calls only.
    fn apply(&self) -> std::io::Result<()> {
        let check = |rc: libc::c_int| if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
        // SAFETY: every pointer is a live CString owned by self.
        unsafe {
            check(libc::setsid())?;
            if self.linux32 {
                // Inherited through exec and by every process the command starts.
                check(libc::personality(PER_LINUX32))?;
            }
            if self.controlling_tty {
                // Job control and ^C need the terminal to belong to the session.
                check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
            }
            if self.no_network {
                check(libc::unshare(libc::CLONE_NEWNET))?;
                loopback_up()?;
            }
            if let Some(root) = &self.root {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                let none = std::ptr::null();
                check(libc::mount(none, c"/".as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
                for mount in &root.mounts {
                    mount.apply()?;
                }
                check(libc::chroot(root.dir.as_ptr()))?;
                check(libc::chdir(c"/".as_ptr()))?;
            }
            check(libc::chdir(self.cwd.as_ptr()))?;
            // Before dropping root: raising a hard limit needs it.
            for (resource, limit) in &self.rlimits {
                check(libc::setrlimit(*resource as _, limit))?;
            }
            check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
            check(libc::setgid(self.gid))?;
            check(libc::setuid(self.uid))?;
        }
        Ok(())
    }
}

/// The kernel's resource number and limits for a `--ulimit` (the numbers
/// differ between architectures, so the host sends docker's names).
fn rlimit(u: &Ulimit) -> Result<(i32, libc::rlimit), String> {
    let resource = match u.name.as_str() {
        "core" => libc::RLIMIT_CORE,
        "cpu" => libc::RLIMIT_CPU,
        "data" => libc::RLIMIT_DATA,
        "fsize" => libc::RLIMIT_FSIZE,
        "locks" => libc::RLIMIT_LOCKS,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "msgqueue" => libc::RLIMIT_MSGQUEUE,
        "nice" => libc::RLIMIT_NICE,
        "nofile" => libc::RLIMIT_NOFILE,
        "nproc" => libc::RLIMIT_NPROC,
        "rss" => libc::RLIMIT_RSS,
        "rtprio" => libc::RLIMIT_RTPRIO,
        "rttime" => libc::RLIMIT_RTTIME,
        "sigpending" => libc::RLIMIT_SIGPENDING,
        "stack" => libc::RLIMIT_STACK,
        other => return Err(format!("unknown ulimit {other:?}")),
    };
    // Checked here, not left to setrlimit in the child: the kernel refuses
    // more open files than fs.nr_open (EPERM even for root), and a failure
    // between fork and exec surfaces only as that errno.
    if resource == libc::RLIMIT_NOFILE {
        let max: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20);
        if u.hard > max {
            return Err(format!("--ulimit nofile: the hard limit may be at most {max} (the guest kernel's fs.nr_open)"));
        }
    }
    let value = |v: u64| if v == Ulimit::UNLIMITED { libc::RLIM_INFINITY } else { libc::rlim_t::try_from(v).unwrap_or(libc::RLIM_INFINITY) };
    Ok((resource as i32, libc::rlimit { rlim_cur: value(u.soft), rlim_max: value(u.hard) }))
}

/// Brings `lo` up in a fresh network namespace (the kernel then gives it
/// 127.0.0.1 and ::1). Raw syscalls only: runs between fork and exec.
#[allow(clippy::unnecessary_cast)]
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: socket/ioctl/close on a zeroed, correctly typed ifreq.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        let mut rc = libc::ioctl(sock, libc::SIOCGIFFLAGS as libc::Ioctl, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            rc = libc::ioctl(sock, libc::SIOCSIFFLAGS as libc::Ioctl, &mut req);
        }
        let err = std::io::Error::last_os_error();
        libc::close(sock);
        if rc < 0 {
            return Err(err);
        }
    }
    Ok(())
}
