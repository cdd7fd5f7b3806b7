//! `do_exec`: run one command, stream its output, report how it ended.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::{stream, AgentMsg, ExecRequest, ExitStatus, RootSpec};

use super::reaper::Reaper;
use super::server::{send, send_data, Out};
use super::SCRATCH;

/// After the command exits, how long its output pipes may stay open (held by
/// processes it left behind, which are killed) before the agent stops reading.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

pub struct Running {
    pub stdin: Option<SyncSender<Vec<u8>>>,
    pgid: i32,
    done: Arc<AtomicBool>,
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
}

pub fn do_exec(req: ExecRequest, out: Out, reaper: &Reaper) -> Result<Running, String> {
    if req.argv.is_empty() {
        return Err("empty command".into());
    }
    let root = match &req.root {
        Some(RootSpec::Dir { path }) => Some(scratch_path(path)?),
        Some(RootSpec::Overlay { .. }) => return Err("overlay roots are not implemented yet".into()),
        None => None,
    };
    let setup = ChildSetup::new(root.as_deref(), &req)?;
    let mut cmd = Command::new(&req.argv[0]);
    cmd.args(&req.argv[1..]).env_clear();
    for entry in &req.env {
        match entry.split_once('=') {
            Some((k, v)) => cmd.env(k, v),
            None => cmd.env(entry, ""),
        };
    }
    cmd.stdin(if req.stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure only makes raw syscalls on memory prepared before fork.
    unsafe { cmd.pre_exec(move || setup.apply()) };

    let (mut child, exited) = reaper
        .spawn(|| {
            let child = cmd.spawn()?;
            Ok((child.id() as i32, child))
        })
        .map_err(|e| format!("cannot start {:?}: {e}", req.argv[0]))?;
    let pid = child.id() as i32;
    send(&out, &AgentMsg::Started { id: req.id, pid });

    let (drained_tx, drained_rx) = sync_channel::<()>(2);
    for (pipe, kind) in [
        (child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>), stream::STDOUT),
        (child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>), stream::STDERR),
    ] {
        let (out, tx) = (out.clone(), drained_tx.clone());
        let mut pipe = pipe.expect("piped");
        std::thread::spawn(move || {
            pump_output(&mut *pipe, &out, req.id, kind);
            let _ = tx.send(());
        });
    }
    drop(drained_tx);

    let stdin = child.stdin.take().map(|mut pipe| {
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
    let running = Running { stdin, pgid: pid, done: done.clone() };
    let timeout = req.timeout_ms.map(Duration::from_millis);
    let id = req.id;
    std::thread::spawn(move || {
        let status = wait_with_timeout(&exited, timeout, pid);
        // Leftover processes of the command's session die with it, as in a container.
        // SAFETY: kill(2) on the process group we created.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        for _ in 0..2 {
            if drained_rx.recv_timeout(DRAIN_AFTER_EXIT).is_err() {
                break;
            }
        }
        done.store(true, Ordering::SeqCst);
        send(&out, &AgentMsg::Exited { id, status });
    });
    Ok(running)
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

/// Resolves a host-supplied path under the scratch mount, refusing `..`.
pub fn scratch_path(rel: &str) -> Result<PathBuf, String> {
    let rel = Path::new(rel.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(format!("path {rel:?} must stay under the scratch disk"));
    }
    Ok(Path::new(SCRATCH).join(rel))
}

/// Everything the child does between fork and exec, prepared beforehand:
/// after fork in a threaded process only raw syscalls are safe.
struct ChildSetup {
    root: Option<RootMounts>,
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
}

struct RootMounts {
    root: CString,
    proc_: CString,
    sys: CString,
    dev: CString,
    tmp: CString,
    /// (source in the agent's root, target inside the command's root)
    binds: Vec<(CString, CString)>,
}

fn cstr(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("path {p:?} contains a NUL byte"))
}

impl ChildSetup {
    fn new(root: Option<&Path>, req: &ExecRequest) -> Result<ChildSetup, String> {
        let root = match root {
            None => None,
            Some(root) => {
                if !root.is_dir() {
                    return Err(format!("root file system {} does not exist", root.display()));
                }
                let mut binds = Vec::new();
                for dir in ["proc", "sys", "dev", "tmp"] {
                    let _ = std::fs::create_dir_all(root.join(dir));
                }
                // Name resolution inside the command's root comes from the VM's.
                if root.join("etc").is_dir() {
                    for file in ["etc/resolv.conf", "etc/hosts"] {
                        let target = root.join(file);
                        if std::fs::symlink_metadata(&target).is_err() {
                            let _ = std::fs::write(&target, b"");
                        }
                        if target.is_file() {
                            binds.push((cstr(&Path::new("/").join(file))?, cstr(&target)?));
                        }
                    }
                }
                Some(RootMounts {
                    root: cstr(root)?,
                    proc_: cstr(&root.join("proc"))?,
                    sys: cstr(&root.join("sys"))?,
                    dev: cstr(&root.join("dev"))?,
                    tmp: cstr(&root.join("tmp"))?,
                    binds,
                })
            }
        };
        let cwd = if req.cwd.is_empty() { "/" } else { req.cwd.as_str() };
        Ok(ChildSetup {
            root,
            cwd: CString::new(cwd).map_err(|_| "working directory contains a NUL byte".to_string())?,
            uid: req.uid,
            gid: req.gid,
            groups: req.groups.clone(),
        })
    }

    /// Runs in the child after fork. Raw libc calls only.
    fn apply(&self) -> std::io::Result<()> {
        let check = |rc: libc::c_int| if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
        // SAFETY: every pointer is a live CString owned by self.
        unsafe {
            check(libc::setsid())?;
            if let Some(m) = &self.root {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                let none = std::ptr::null();
                check(libc::mount(none, c"/".as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
                check(libc::mount(c"proc".as_ptr(), m.proc_.as_ptr(), c"proc".as_ptr(), 0, std::ptr::null()))?;
                check(libc::mount(c"sysfs".as_ptr(), m.sys.as_ptr(), c"sysfs".as_ptr(), libc::MS_RDONLY, std::ptr::null()))?;
                check(libc::mount(c"/dev".as_ptr(), m.dev.as_ptr(), none, libc::MS_BIND | libc::MS_REC, std::ptr::null()))?;
                check(libc::mount(c"tmpfs".as_ptr(), m.tmp.as_ptr(), c"tmpfs".as_ptr(), 0, c"mode=1777".as_ptr().cast()))?;
                for (src, dst) in &m.binds {
                    check(libc::mount(src.as_ptr(), dst.as_ptr(), none, libc::MS_BIND, std::ptr::null()))?;
                }
                check(libc::chroot(m.root.as_ptr()))?;
                check(libc::chdir(c"/".as_ptr()))?;
            }
            check(libc::chdir(self.cwd.as_ptr()))?;
            check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
            check(libc::setgid(self.gid))?;
            check(libc::setuid(self.uid))?;
        }
        Ok(())
    }
}
