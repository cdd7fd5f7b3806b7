//! The mounts a command's child makes between fork and exec, prepared
//! beforehand as plain data, and the private /dev of a RUN step.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// One mount(2) the child makes, prepared before fork.
#[derive(Clone)]
pub struct RawMount {
    source: CString,
    target: CString,
    fstype: Option<CString>,
    flags: libc::c_ulong,
    data: Option<CString>,
    /// Bind mounts become read-only only through a second, remounting call.
    readonly_bind: bool,
}

impl RawMount {
    /// Makes a bind mount read-only (with a second, remounting call).
    pub fn readonly(mut self, readonly: bool) -> Self {
        self.readonly_bind = readonly;
        self
    }

    /// Runs in the child after fork: raw syscalls on prepared memory only.
    pub fn apply(&self) -> io::Result<()> {
        let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: every pointer is a live CString or null.
        unsafe {
            if libc::mount(
                self.source.as_ptr(),
                self.target.as_ptr(),
                ptr(&self.fstype),
                self.flags,
                ptr(&self.data).cast(),
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            if self.readonly_bind {
                let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | (self.flags & libc::MS_REC);
                if libc::mount(std::ptr::null(), self.target.as_ptr(), std::ptr::null(), flags, std::ptr::null()) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

/// One step of building the command's mounts in the child, prepared before fork.
#[derive(Clone)]
pub enum RawStep {
    Mount(RawMount),
    /// A device node (mode set exactly, whatever the umask).
    Node { path: CString, mode: libc::mode_t, major: u32, minor: u32 },
    Dir { path: CString },
    Symlink { target: CString, path: CString },
}

impl RawStep {
    /// Runs in the child after fork: raw syscalls on prepared memory only.
    pub fn apply(&self) -> io::Result<()> {
        let check = |rc: libc::c_int| if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
        // SAFETY: every pointer is a live CString.
        unsafe {
            match self {
                RawStep::Mount(m) => m.apply(),
                RawStep::Node { path, mode, major, minor } => {
                    check(libc::mknod(path.as_ptr(), libc::S_IFCHR | mode, libc::makedev(*major, *minor)))?;
                    check(libc::chmod(path.as_ptr(), *mode))
                }
                RawStep::Dir { path } => check(libc::mkdir(path.as_ptr(), 0o755)),
                RawStep::Symlink { target, path } => check(libc::symlink(target.as_ptr(), path.as_ptr())),
            }
        }
    }
}

/// The device nodes of a RUN step's private /dev, as docker gives them.
const DEV_NODES: [(&str, u32, u32); 6] =
    [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];
const DEV_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// Docker's /dev/shm size.
const DEFAULT_SHM_BYTES: u64 = 64 << 20;

/// A private devpts instance, as docker mounts it.
pub const DEVPTS_OPTIONS: &str = "newinstance,ptmxmode=0666,mode=0620,gid=5";

/// A fresh /dev at `dev`: a tmpfs with the usual nodes, its own devpts and
/// shm. The VM's disks (the scratch disk holding every layer) stay out of reach.
/// `devpts`, when given, is a devpts instance the agent mounted for the
/// command (its terminal lives there), bound in place of a fresh one.
/// `shm_bytes` sizes /dev/shm (`None`: docker's 64 MiB).
pub fn private_dev(dev: &Path, devpts: Option<&Path>, shm_bytes: Option<u64>) -> Result<Vec<RawStep>, String> {
    let c = |p: &Path| cstr(p);
    let mut steps = vec![RawStep::Mount(raw(
        "tmpfs",
        dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?)];
    for (name, major, minor) in DEV_NODES {
        steps.push(RawStep::Node { path: c(&dev.join(name))?, mode: 0o666, major, minor });
    }
    for (name, target) in DEV_LINKS {
        steps.push(RawStep::Symlink { target: c(Path::new(target))?, path: c(&dev.join(name))? });
    }
    for name in ["pts", "shm"] {
        steps.push(RawStep::Dir { path: c(&dev.join(name))? });
    }
    steps.push(RawStep::Mount(match devpts {
        Some(instance) => raw(instance, &dev.join("pts"), None, libc::MS_BIND, None)?,
        None => raw("devpts", &dev.join("pts"), Some("devpts"), libc::MS_NOSUID | libc::MS_NOEXEC, Some(DEVPTS_OPTIONS))?,
    }));
    steps.push(RawStep::Mount(raw(
        "shm",
        &dev.join("shm"),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(&format!("mode=1777,size={}", shm_bytes.unwrap_or(DEFAULT_SHM_BYTES))),
    )?));
    Ok(steps)
}


pub fn cstr(p: impl AsRef<Path>) -> Result<CString, String> {
    let p = p.as_ref();
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("path {p:?} contains a NUL byte"))
}

pub fn raw(
    source: impl AsRef<Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<RawMount, String> {
    Ok(RawMount {
        source: cstr(source)?,
        target: cstr(target)?,
        fstype: fstype.map(|t| CString::new(t).expect("static fs type")),
        flags,
        data: data.map(|d| CString::new(d).map_err(|_| "mount options contain a NUL byte".to_string())).transpose()?,
        readonly_bind: false,
    })
}
