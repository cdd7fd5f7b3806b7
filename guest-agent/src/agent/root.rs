//! A command's root file system: a plain directory, or the overlay of a RUN
//! step mounted for it; the mounts the child makes in it (the standard ones,
//! then the request's); and the teardown once the command is gone.

use std::ffi::CString;
use std::io;
use std::path::{Component, Path, PathBuf};

use kiln_protocol::{ExecRequest, HostEntry, MountSpec, RootSpec};

use super::mount_points::{check_cwd, Stubs};
use super::mounts::{cstr, private_dev, raw, RawStep, DEVPTS_OPTIONS};
use super::outbox::Out;
use super::scratch::scratch_path;
use super::ssh::Listener;

/// Private mount points and per-command files live here (the agent's tmpfs).
const RUN_DIR: &str = "/run/kiln";
/// The kernel copies mount(2) options into one page, NUL included. With
/// lower layers named like `l/NNN` (`/scratch/l/NNN`, 15 bytes with the
/// separator) that allows about 260 of them; docker allows 127.
const MAX_MOUNT_OPTIONS: usize = 4095;
/// overlayfs' own limit on lower layers (OVL_MAX_STACK).
const MAX_LOWERS: usize = 500;

/// The root a command runs in, ready for the child to mount into and chroot.
pub struct PreparedRoot {
    /// The directory to chroot into, in the agent's view.
    pub dir: PathBuf,
    /// Mounts (and /dev contents) for the child, in order.
    pub mounts: Vec<RawStep>,
    /// Run the command as PID 1 of its own PID namespace.
    pub new_pid_ns: bool,
    /// The devpts instance the command sees, mounted in the agent's view so
    /// its terminal can be allocated there; `None` means the VM's /dev/pts.
    pub devpts: Option<PathBuf>,
    overlay: Option<Overlay>,
    /// The sockets of `--mount=type=ssh`, forwarding to the host.
    ssh: Vec<Listener>,
}

/// An overlay mounted in the agent's namespace for one command.
struct Overlay {
    mountpoint: PathBuf,
    upper: PathBuf,
    /// Per-command files (resolv.conf, hosts copies) and the mount point.
    run_dir: PathBuf,
    stubs: Stubs,
}

/// `out` carries forwarded ssh connections (`MountSpec::Ssh`) to the host.
pub fn prepare(req: &ExecRequest, out: &Out) -> Result<Option<PreparedRoot>, String> {
    match &req.root {
        None if req.mounts.is_empty() => Ok(None),
        None => Err("mounts need a root file system (root is not set)".into()),
        Some(RootSpec::Dir { path }) => {
            let dir = scratch_path(path)?;
            if !dir.is_dir() {
                return Err(format!("root file system {} does not exist", dir.display()));
            }
            let mut root = PreparedRoot { dir, mounts: Vec::new(), new_pid_ns: false, devpts: None, overlay: None, ssh: Vec::new() };
            // A plain directory root is the agent's own: mount points it needs stay.
            let mut stubs = Stubs::default();
            check_cwd(&root.dir, &req.cwd)?;
            let result =
                root.standard_mounts(&mut stubs, true, None, req).and_then(|()| root.extra_mounts(req, out, &mut stubs, None));
            result.map(|()| Some(root))
        }
        Some(RootSpec::Overlay { lowers, upper, work }) => {
            let overlay = mount_overlay(req.id, lowers, upper, work)?;
            let mut root = PreparedRoot {
                dir: overlay.mountpoint.clone(),
                mounts: Vec::new(),
                new_pid_ns: true,
                devpts: None,
                overlay: None,
                ssh: Vec::new(),
            };
            let mut stubs = Stubs::default();
            let run_dir = overlay.run_dir.clone();
            let devpts = if req.tty.is_some() { root.mount_devpts(&run_dir) } else { Ok(()) };
            // The working directory is checked after the mounts: it may be
            // a mount point they created (`kiln run -v DIR:/src -w /src`).
            let result = devpts
                .and_then(|()| root.standard_mounts(&mut stubs, false, Some(&run_dir), req))
                .and_then(|()| root.extra_mounts(req, out, &mut stubs, Some(&run_dir)))
                .and_then(|()| check_cwd_unless_shared(&root.dir, &req.cwd, &req.mounts));
            root.overlay = Some(Overlay { stubs, ..overlay });
            match result {
                Ok(()) => Ok(Some(root)),
                Err(e) => {
                    if let Err(t) = root.teardown() {
                        return Err(format!("{e}; then {t}"));
                    }
                    Err(e)
                }
            }
        }
    }
}

impl PreparedRoot {
    /// proc, sys, dev (and tmp for a plain directory root; a RUN's /tmp is
    /// part of the image, as with docker), and the VM's name resolution
    /// (with the request's extra hosts, in an overlay root's private copy).
    fn standard_mounts(&mut self, stubs: &mut Stubs, tmpfs_tmp: bool, private: Option<&Path>, req: &ExecRequest) -> Result<(), String> {
        let extra_hosts = &req.extra_hosts;
        let proc_ = self.mount_point("/proc", true, stubs)?;
        self.mounts.push(RawStep::Mount(raw(
            "proc",
            &proc_,
            Some("proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )?));
        let sys = self.mount_point("/sys", true, stubs)?;
        self.mounts.push(RawStep::Mount(raw(
            "sysfs",
            &sys,
            Some("sysfs"),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )?));
        let dev = self.mount_point("/dev", true, stubs)?;
        match private {
            Some(_) => self.mounts.extend(private_dev(&dev, self.devpts.as_deref(), req.shm_size_bytes)?),
            // A plain directory root (kiln vm exec) shares the VM's devices.
            None => self.mounts.push(RawStep::Mount(raw("/dev", &dev, None, libc::MS_BIND | libc::MS_REC, None)?)),
        }
        if tmpfs_tmp {
            let tmp = self.mount_point("/tmp", true, stubs)?;
            self.mounts.push(RawStep::Mount(raw("tmpfs", &tmp, Some("tmpfs"), 0, Some("mode=1777"))?));
        }
        // Only images with an /etc get the VM's resolv.conf and hosts.
        if std::fs::symlink_metadata(self.dir.join("etc")).is_ok() {
            for file in ["resolv.conf", "hosts"] {
                let vm_copy = Path::new("/etc").join(file);
                if !vm_copy.is_file() {
                    continue;
                }
                // Each overlay command gets its own copy: its writes must not
                // change the VM's (and so the next step's) name resolution.
                let source = match private {
                    Some(dir) => {
                        let copy = dir.join(file);
                        std::fs::copy(&vm_copy, &copy).map_err(|e| format!("copying {}: {e}", vm_copy.display()))?;
                        if file == "hosts" && !extra_hosts.is_empty() {
                            append_hosts(&copy, extra_hosts).map_err(|e| format!("adding hosts to {}: {e}", copy.display()))?;
                        }
                        copy
                    }
                    None => vm_copy,
                };
                let target = self.mount_point(&format!("/etc/{file}"), false, stubs)?;
                self.mounts.push(RawStep::Mount(raw(&source, &target, None, libc::MS_BIND, None)?));
            }
        }
        Ok(())
    }

    /// `private` is the command's own directory on the agent's tmpfs (overlay
    /// roots only): secrets and the staging points of overlay mounts live there.
    fn extra_mounts(&mut self, req: &ExecRequest, out: &Out, stubs: &mut Stubs, private: Option<&Path>) -> Result<(), String> {
        let need_private = || private.ok_or_else(|| "overlay, secret and ssh mounts need an overlay root".to_string());
        for (n, spec) in req.mounts.iter().enumerate() {
            match spec {
                MountSpec::Bind { source, target, readonly } => {
                    let src = scratch_path(source)?;
                    let meta = std::fs::metadata(&src).map_err(|e| format!("bind source {source:?}: {e}"))?;
                    let dst = self.mount_point(target, meta.is_dir(), stubs)?;
                    let mount = raw(&src, &dst, None, libc::MS_BIND | libc::MS_REC, None)?.readonly(*readonly);
                    self.mounts.push(RawStep::Mount(mount));
                }
                MountSpec::Tmpfs { target, size_bytes } => {
                    let dst = self.mount_point(target, true, stubs)?;
                    let data = match size_bytes {
                        Some(n) => format!("mode=1777,size={n}"),
                        None => "mode=1777".to_string(),
                    };
                    let mount = raw("tmpfs", &dst, Some("tmpfs"), libc::MS_NOSUID | libc::MS_NODEV, Some(&data))?;
                    self.mounts.push(RawStep::Mount(mount));
                }
                MountSpec::Overlay { lowers, subpath, target } => {
                    let private = need_private()?;
                    let lowers = lowers.iter().map(|l| scratch_path(l)).collect::<Result<Vec<_>, _>>()?;
                    // Staged in the command's private dir, then the wanted subdirectory bound over the target.
                    let stage = private.join(format!("m{n}"));
                    std::fs::create_dir_all(&stage).map_err(|e| format!("creating {}: {e}", stage.display()))?;
                    match lowers.as_slice() {
                        [] => {}
                        [only] => {
                            let m = raw(only, &stage, None, libc::MS_BIND | libc::MS_REC, None)?.readonly(true);
                            self.mounts.push(RawStep::Mount(m));
                        }
                        _ => {
                            let dirs: Vec<&str> = lowers.iter().filter_map(|p| p.to_str()).collect();
                            let data = format!("lowerdir={},redirect_dir=off,metacopy=off,index=off,xino=off", dirs.join(":"));
                            if data.len() > MAX_MOUNT_OPTIONS {
                                return Err(format!("mount of {target}: too many layers for one overlay ({})", lowers.len()));
                            }
                            self.mounts.push(RawStep::Mount(raw("overlay", &stage, Some("overlay"), libc::MS_RDONLY, Some(&data))?));
                        }
                    }
                    let source = confined_join(&stage, subpath)?;
                    let dst = self.mount_point(target, true, stubs)?;
                    let m = raw(&source, &dst, None, libc::MS_BIND | libc::MS_REC, None)?.readonly(true);
                    self.mounts.push(RawStep::Mount(m));
                }
                MountSpec::Secret { target, data, mode, uid, gid } => {
                    let private = need_private()?;
                    let file = private.join(format!("secret{n}"));
                    write_secret(&file, data, *mode, *uid, *gid).map_err(|e| format!("secret for {target}: {e}"))?;
                    let dst = self.mount_point(target, false, stubs)?;
                    let m = raw(&file, &dst, None, libc::MS_BIND, None)?.readonly(true);
                    self.mounts.push(RawStep::Mount(m));
                }
                MountSpec::Ssh { target, agent, mode, uid, gid } => {
                    let socket = need_private()?.join(format!("ssh{n}"));
                    self.ssh.push(Listener::start(&socket, *mode, *uid, *gid, req.id, *agent, out.clone())?);
                    let dst = self.mount_point(target, false, stubs)?;
                    self.mounts.push(RawStep::Mount(raw(&socket, &dst, None, libc::MS_BIND, None)?));
                }
                MountSpec::Virtiofs { tag, target, readonly } => {
                    check_virtiofs()?;
                    let dst = self.mount_point(target, true, stubs)?;
                    let flags = if *readonly { libc::MS_RDONLY } else { 0 };
                    self.mounts.push(RawStep::Mount(raw(tag, &dst, Some("virtiofs"), flags, None)?));
                }
            }
        }
        Ok(())
    }

    /// Resolves `target` inside the root (symlinks confined to it) and
    /// creates what is missing, remembering what it created.
    fn mount_point(&self, target: &str, dir: bool, stubs: &mut Stubs) -> Result<PathBuf, String> {
        let rel = stubs.create(&self.dir, target, dir).map_err(|e| format!("mount point {target}: {e}"))?;
        Ok(self.dir.join(rel))
    }

    /// Mounts the command's own devpts instance under its run directory
    /// (the child binds it as /dev/pts).
    fn mount_devpts(&mut self, run_dir: &Path) -> Result<(), String> {
        let dir = run_dir.join("pts");
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let (target, data) = (cstr(&dir)?, CString::new(DEVPTS_OPTIONS).expect("static options"));
        // SAFETY: plain mount(2) with live C strings.
        let rc = unsafe {
            libc::mount(
                c"devpts".as_ptr(),
                target.as_ptr(),
                c"devpts".as_ptr(),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                data.as_ptr().cast(),
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            let _ = std::fs::remove_dir(&dir);
            return Err(format!("mounting a devpts for the terminal on {}: {err}", dir.display()));
        }
        self.devpts = Some(dir);
        Ok(())
    }

    /// Unmounts the overlay (the command's own mount namespace is gone with
    /// its last process) and removes the mount points the agent created from
    /// the upper directory. Plain directory roots need nothing.
    pub fn teardown(&mut self) -> Result<(), String> {
        for mut listener in self.ssh.drain(..) {
            listener.stop();
        }
        if let Some(devpts) = self.devpts.take() {
            // Detached: the agent may still hold the terminal's master open.
            let c = cstr(&devpts)?;
            // SAFETY: umount2(2) with a live C string.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } < 0 {
                return Err(format!("unmounting {}: {}", devpts.display(), io::Error::last_os_error()));
            }
            let _ = std::fs::remove_dir(&devpts);
        }
        let Some(overlay) = self.overlay.take() else { return Ok(()) };
        unmount(&overlay.mountpoint)?;
        // Entry by entry, never recursively: nothing here may reach into a mount.
        for file in ["resolv.conf", "hosts"] {
            let _ = std::fs::remove_file(overlay.run_dir.join(file));
        }
        let _ = std::fs::remove_dir(&overlay.run_dir);
        overlay.stubs.remove_from(&overlay.upper)
    }
}

/// [`check_cwd`], except below a shared host directory, which only the
/// command's own namespace has mounted (its chdir reports a missing one).
fn check_cwd_unless_shared(root: &Path, cwd: &str, mounts: &[MountSpec]) -> Result<(), String> {
    let shared = |m: &MountSpec| matches!(m, MountSpec::Virtiofs { target, .. } if Path::new(cwd).starts_with(target));
    if mounts.iter().any(shared) {
        return Ok(());
    }
    check_cwd(root, cwd)
}

/// A kernel without virtio-fs fails the mount with a bare ENODEV: say what is missing.
fn check_virtiofs() -> Result<(), String> {
    let known = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if known.lines().any(|l| l.split_whitespace().last() == Some("virtiofs")) {
        return Ok(());
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    Err(format!("the guest kernel ({}) has no virtio-fs, which shared host directories (-v) need", release.trim()))
}

/// `base/sub` where `sub` is a plain relative path (no `..`); symlinks in it
/// are resolved by the kernel at mount time inside the read-only tree.
fn confined_join(base: &Path, sub: &str) -> Result<PathBuf, String> {
    let rel = Path::new(sub.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(format!("mount source {sub:?} may not contain '..'"));
    }
    Ok(base.join(rel))
}

/// Appends `ip name` lines to a command's private hosts file (`--add-host`).
fn append_hosts(path: &Path, entries: &[HostEntry]) -> io::Result<()> {
    let mut text = std::fs::read_to_string(path)?;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    for HostEntry { name, ip } in entries {
        // Both were checked on the host; a line break would forge more entries.
        if name.contains(char::is_whitespace) || ip.contains(char::is_whitespace) {
            return Err(io::Error::other(format!("bad host entry {name:?} {ip:?}")));
        }
        text.push_str(&format!("{ip}\t{name}\n"));
    }
    std::fs::write(path, text)
}

/// Writes a secret on the agent's tmpfs (never the scratch disk), owned and
/// moded as the mount asked.
fn write_secret(path: &Path, data: &[u8], mode: u32, uid: u32, gid: u32) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    io::Write::write_all(&mut f, data)?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
}

/// The overlay options for `lowers` (topmost first) over `upper`.
/// `redirect_dir`, `metacopy` and `index` off keep the upper directory a plain
/// diff (renamed directories are copied, metadata changes copy the data), so
/// it converts directly into an OCI layer.
///
/// `volatile` (Linux 5.10+) makes fsync and syncfs through the overlay no-ops.
/// A step's changes become durable when the host takes them from the frozen
/// scratch disk, never through the guest's fsyncs; dpkg fsyncs every file it
/// unpacks, and waiting for those under emulation cost a fifth of an
/// `apt-get install`. Every overlay gets a fresh upper and work directory, so
/// the mark `volatile` leaves in the work directory never blocks a remount.
pub fn overlay_options(lowers: &[PathBuf], upper: &Path, work: &Path, volatile: bool) -> Result<String, String> {
    if lowers.len() > MAX_LOWERS {
        return Err(format!("{} lower layers exceed overlayfs' limit of {MAX_LOWERS}", lowers.len()));
    }
    for p in lowers.iter().map(PathBuf::as_path).chain([upper, work]) {
        let s = p.to_str().ok_or_else(|| format!("overlay path {p:?} is not UTF-8"))?;
        // overlayfs splits its options on ',' and lowerdir on ':'.
        if s.contains([',', ':', '\\']) {
            return Err(format!("overlay path {s:?} may not contain ',', ':' or '\\'"));
        }
    }
    let lowerdir = lowers.iter().map(|p| p.to_str().unwrap()).collect::<Vec<_>>().join(":");
    let options = format!(
        "lowerdir={lowerdir},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off,xino=off{}",
        upper.display(),
        work.display(),
        if volatile { ",volatile" } else { "" }
    );
    if options.len() > MAX_MOUNT_OPTIONS {
        return Err(format!(
            "the overlay's mount options are {} bytes, over the kernel's {MAX_MOUNT_OPTIONS}-byte limit: \
             {} lower layers with these paths are too many (short names like l/12 allow about 250)",
            options.len(),
            lowers.len()
        ));
    }
    Ok(options)
}

fn mount_overlay(id: u32, lowers: &[String], upper: &str, work: &str) -> Result<Overlay, String> {
    let mut lower_dirs = lowers.iter().map(|l| scratch_path(l)).collect::<Result<Vec<_>, _>>()?;
    for dir in &lower_dirs {
        if !dir.is_dir() {
            return Err(format!("lower layer {} does not exist", dir.display()));
        }
    }
    let (upper, work) = (scratch_path(upper)?, scratch_path(work)?);
    for dir in [&upper, &work] {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let run_dir = Path::new(RUN_DIR).join(id.to_string());
    let mountpoint = run_dir.join("root");
    std::fs::create_dir_all(&mountpoint).map_err(|e| format!("creating {}: {e}", mountpoint.display()))?;
    if lower_dirs.is_empty() {
        // overlayfs needs a lower layer; FROM scratch gets an empty one.
        let empty = Path::new(RUN_DIR).join("empty");
        std::fs::create_dir_all(&empty).map_err(|e| format!("creating {}: {e}", empty.display()))?;
        lower_dirs.push(empty);
    }
    let target = cstr(&mountpoint)?;
    let mount = |volatile: bool| -> Result<(), String> {
        let options = overlay_options(&lower_dirs, &upper, &work, volatile)?;
        let data = CString::new(options).map_err(|_| "NUL in overlay options")?;
        // SAFETY: plain mount(2) with live C strings.
        if unsafe { libc::mount(c"overlay".as_ptr(), target.as_ptr(), c"overlay".as_ptr(), 0, data.as_ptr().cast()) } < 0 {
            return Err(format!("mounting the overlay root (upper {}): {}", upper.display(), io::Error::last_os_error()));
        }
        Ok(())
    };
    // A kernel older than 5.10 refuses `volatile`; the overlay works without it.
    mount(true).or_else(|_| mount(false)).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&run_dir);
    })?;
    Ok(Overlay { mountpoint, upper, run_dir, stubs: Stubs::default() })
}

/// Unmounts `target`. The command's processes are gone, but the kernel may
/// still be releasing the last references of its namespace for a moment.
fn unmount(target: &Path) -> Result<(), String> {
    let c = cstr(target)?;
    for _ in 0..100 {
        // SAFETY: umount2(2) with a live C string.
        if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
            let _ = std::fs::remove_dir(target);
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            return Err(format!("unmounting the overlay root {}: {err}", target.display()));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(format!("unmounting the overlay root {}: still busy after 2 s", target.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_have_the_diff_friendly_flags() {
        let opts = overlay_options(
            &[PathBuf::from("/scratch/l/1"), PathBuf::from("/scratch/l/0")],
            Path::new("/scratch/u/2"),
            Path::new("/scratch/w/2"),
            true,
        )
        .unwrap();
        assert_eq!(
            opts,
            "lowerdir=/scratch/l/1:/scratch/l/0,upperdir=/scratch/u/2,workdir=/scratch/w/2,\
             redirect_dir=off,metacopy=off,index=off,xino=off,volatile"
        );
    }

    #[test]
    fn overlay_options_refuse_separators_and_overlong_stacks() {
        let err = overlay_options(&[PathBuf::from("/scratch/a,b")], Path::new("/u"), Path::new("/w"), true).unwrap_err();
        assert!(err.contains("may not contain"), "{err}");
        let many: Vec<PathBuf> = (0..300).map(|i| PathBuf::from(format!("/scratch/layers/{i:04}"))).collect();
        let err = overlay_options(&many, Path::new("/u"), Path::new("/w"), true).unwrap_err();
        assert!(err.contains("4095-byte limit"), "{err}");
        let short: Vec<PathBuf> = (0..250).map(|i| PathBuf::from(format!("/scratch/l/{i}"))).collect();
        assert!(overlay_options(&short, Path::new("/scratch/u/1"), Path::new("/scratch/w/1"), true).is_ok());
    }
}
