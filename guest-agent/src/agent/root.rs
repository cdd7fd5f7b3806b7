//! A command's root file system: the overlay mount of a RUN step, the mount
//! points the agent's own mounts need, and their removal afterwards so the
//! step's upper directory holds only what the command changed.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use kiln_protocol::{ExecRequest, MountSpec, RootSpec};

use super::exec::scratch_path;

/// Private mount points and per-command files live here (the agent's tmpfs).
const RUN_DIR: &str = "/run/kiln";
/// The kernel copies mount(2) options into one page, NUL included.
const MAX_MOUNT_OPTIONS: usize = 4095;
/// overlayfs' own limit on lower layers (OVL_MAX_STACK).
const MAX_LOWERS: usize = 500;
/// Symlinks followed while resolving one mount target, as the kernel's MAXSYMLINKS.
const MAX_SYMLINKS: u32 = 40;

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

/// The root a command runs in, ready for the child to mount into and chroot.
pub struct PreparedRoot {
    /// The directory to chroot into, in the agent's view.
    pub dir: PathBuf,
    /// Mounts for the child, in order.
    pub mounts: Vec<RawMount>,
    /// Run the command as PID 1 of its own PID namespace.
    pub new_pid_ns: bool,
    overlay: Option<Overlay>,
}

/// An overlay mounted in the agent's namespace for one command.
struct Overlay {
    mountpoint: PathBuf,
    upper: PathBuf,
    /// Per-command files (resolv.conf, hosts copies) and the mount point.
    run_dir: PathBuf,
    stubs: Stubs,
}

pub fn prepare(req: &ExecRequest) -> Result<Option<PreparedRoot>, String> {
    match &req.root {
        None if req.mounts.is_empty() => Ok(None),
        None => Err("mounts need a root file system (root is not set)".into()),
        Some(RootSpec::Dir { path }) => {
            let dir = scratch_path(path)?;
            if !dir.is_dir() {
                return Err(format!("root file system {} does not exist", dir.display()));
            }
            let mut root = PreparedRoot { dir, mounts: Vec::new(), new_pid_ns: false, overlay: None };
            // A plain directory root is the agent's own: mount points it needs stay.
            let mut stubs = Stubs::default();
            let result =
                root.standard_mounts(&mut stubs, true, None).and_then(|()| root.extra_mounts(&req.mounts, &mut stubs, None));
            result.map(|()| Some(root))
        }
        Some(RootSpec::Overlay { lowers, upper, work }) => {
            let overlay = mount_overlay(req.id, lowers, upper, work)?;
            let mut root =
                PreparedRoot { dir: overlay.mountpoint.clone(), mounts: Vec::new(), new_pid_ns: true, overlay: None };
            let mut stubs = Stubs::default();
            let run_dir = overlay.run_dir.clone();
            let result = root
                .standard_mounts(&mut stubs, false, Some(&run_dir))
                .and_then(|()| root.extra_mounts(&req.mounts, &mut stubs, Some(&run_dir)));
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
    /// part of the image, as with docker), and the VM's name resolution.
    fn standard_mounts(&mut self, stubs: &mut Stubs, tmpfs_tmp: bool, private: Option<&Path>) -> Result<(), String> {
        let proc_ = self.mount_point("/proc", true, stubs)?;
        self.mounts.push(raw(
            "proc",
            &proc_,
            Some("proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )?);
        let sys = self.mount_point("/sys", true, stubs)?;
        self.mounts.push(raw(
            "sysfs",
            &sys,
            Some("sysfs"),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )?);
        let dev = self.mount_point("/dev", true, stubs)?;
        self.mounts.push(raw("/dev", &dev, None, libc::MS_BIND | libc::MS_REC, None)?);
        if tmpfs_tmp {
            let tmp = self.mount_point("/tmp", true, stubs)?;
            self.mounts.push(raw("tmpfs", &tmp, Some("tmpfs"), 0, Some("mode=1777"))?);
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
                        copy
                    }
                    None => vm_copy,
                };
                let target = self.mount_point(&format!("/etc/{file}"), false, stubs)?;
                self.mounts.push(raw(&source, &target, None, libc::MS_BIND, None)?);
            }
        }
        Ok(())
    }

    /// `private` is the command's own directory on the agent's tmpfs (overlay
    /// roots only): secrets and the staging points of overlay mounts live there.
    fn extra_mounts(&mut self, specs: &[MountSpec], stubs: &mut Stubs, private: Option<&Path>) -> Result<(), String> {
        let need_private = || private.ok_or_else(|| "overlay and secret mounts need an overlay root".to_string());
        for (n, spec) in specs.iter().enumerate() {
            match spec {
                MountSpec::Bind { source, target, readonly } => {
                    let src = scratch_path(source)?;
                    let meta = std::fs::metadata(&src).map_err(|e| format!("bind source {source:?}: {e}"))?;
                    let dst = self.mount_point(target, meta.is_dir(), stubs)?;
                    let mut mount = raw(&src, &dst, None, libc::MS_BIND | libc::MS_REC, None)?;
                    mount.readonly_bind = *readonly;
                    self.mounts.push(mount);
                }
                MountSpec::Tmpfs { target, size_bytes } => {
                    let dst = self.mount_point(target, true, stubs)?;
                    let data = match size_bytes {
                        Some(n) => format!("mode=1777,size={n}"),
                        None => "mode=1777".to_string(),
                    };
                    self.mounts.push(raw("tmpfs", &dst, Some("tmpfs"), libc::MS_NOSUID | libc::MS_NODEV, Some(&data))?);
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
                            let mut m = raw(only, &stage, None, libc::MS_BIND | libc::MS_REC, None)?;
                            m.readonly_bind = true;
                            self.mounts.push(m);
                        }
                        _ => {
                            let dirs: Vec<&str> = lowers.iter().filter_map(|p| p.to_str()).collect();
                            let data = format!("lowerdir={},redirect_dir=off,metacopy=off,index=off,xino=off", dirs.join(":"));
                            if data.len() > MAX_MOUNT_OPTIONS {
                                return Err(format!("mount of {target}: too many layers for one overlay ({})", lowers.len()));
                            }
                            self.mounts.push(raw("overlay", &stage, Some("overlay"), libc::MS_RDONLY, Some(&data))?);
                        }
                    }
                    let source = confined_join(&stage, subpath)?;
                    let dst = self.mount_point(target, true, stubs)?;
                    let mut m = raw(&source, &dst, None, libc::MS_BIND | libc::MS_REC, None)?;
                    m.readonly_bind = true;
                    self.mounts.push(m);
                }
                MountSpec::Secret { target, data, mode, uid, gid } => {
                    let private = need_private()?;
                    let file = private.join(format!("secret{n}"));
                    write_secret(&file, data, *mode, *uid, *gid).map_err(|e| format!("secret for {target}: {e}"))?;
                    let dst = self.mount_point(target, false, stubs)?;
                    let mut m = raw(&file, &dst, None, libc::MS_BIND, None)?;
                    m.readonly_bind = true;
                    self.mounts.push(m);
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

    /// Unmounts the overlay (the command's own mount namespace is gone with
    /// its last process) and removes the mount points the agent created from
    /// the upper directory. Plain directory roots need nothing.
    pub fn teardown(&mut self) -> Result<(), String> {
        let Some(overlay) = self.overlay.take() else { return Ok(()) };
        unmount(&overlay.mountpoint)?;
        let _ = std::fs::remove_dir_all(&overlay.run_dir);
        overlay.stubs.remove_from(&overlay.upper)
    }
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

/// Writes a secret on the agent's tmpfs (never the scratch disk), owned and
/// moded as the mount asked.
fn write_secret(path: &Path, data: &[u8], mode: u32, uid: u32, gid: u32) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    io::Write::write_all(&mut f, data)?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
}

fn cstr(p: impl AsRef<Path>) -> Result<CString, String> {
    let p = p.as_ref();
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("path {p:?} contains a NUL byte"))
}

fn raw(
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

/// The overlay options for `lowers` (topmost first) over `upper`.
/// `redirect_dir`, `metacopy` and `index` off keep the upper directory a plain
/// diff (renamed directories are copied, metadata changes copy the data), so
/// it converts directly into an OCI layer.
pub fn overlay_options(lowers: &[PathBuf], upper: &Path, work: &Path) -> Result<String, String> {
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
        "lowerdir={lowerdir},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off,xino=off",
        upper.display(),
        work.display()
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
    let options = overlay_options(&lower_dirs, &upper, &work).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&run_dir);
    })?;
    let (target, data) = (cstr(&mountpoint)?, CString::new(options).map_err(|_| "NUL in overlay options")?);
    // SAFETY: plain mount(2) with live C strings.
    if unsafe { libc::mount(c"overlay".as_ptr(), target.as_ptr(), c"overlay".as_ptr(), 0, data.as_ptr().cast()) } < 0 {
        let err = io::Error::last_os_error();
        let _ = std::fs::remove_dir_all(&run_dir);
        return Err(format!("mounting the overlay root (upper {}): {err}", upper.display()));
    }
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

/// Mount points created by the agent, and the state of the directories they
/// were created in, so both can be put back.
#[derive(Default)]
pub struct Stubs {
    /// Root-relative paths in creation order (parents first).
    created: Vec<(PathBuf, bool)>,
    /// Existing directories a stub was created in (their ancestors too),
    /// as they were before.
    parents: BTreeMap<PathBuf, DirState>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct DirState {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: i64,
}

impl DirState {
    fn of(meta: &std::fs::Metadata) -> DirState {
        DirState {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

impl Stubs {
    /// Resolves `target` under `root` like the kernel would inside a chroot
    /// (`..` stops at the root, absolute symlinks restart at it) and creates
    /// missing parts: directories, and for the last part a directory or an
    /// empty file. Returns the resolved root-relative path.
    pub fn create(&mut self, root: &Path, target: &str, dir: bool) -> io::Result<PathBuf> {
        let mut pending: Vec<OsString> = Vec::new();
        push_components(&mut pending, Path::new(target));
        let mut resolved = PathBuf::new();
        let mut links = 0;
        while let Some(part) = pending.pop() {
            if part == ".." {
                resolved.pop();
                continue;
            }
            let candidate = resolved.join(&part);
            let full = root.join(&candidate);
            match std::fs::symlink_metadata(&full) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(io::Error::other("too many levels of symbolic links"));
                    }
                    let link = std::fs::read_link(&full)?;
                    if link.is_absolute() {
                        resolved.clear();
                    }
                    push_components(&mut pending, &link);
                }
                Ok(meta) => {
                    if !pending.is_empty() && !meta.is_dir() {
                        return Err(io::Error::other(format!("/{} is not a directory", candidate.display())));
                    }
                    resolved = candidate;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.note_parents(root, &resolved)?;
                    if pending.is_empty() && !dir {
                        std::fs::OpenOptions::new().write(true).create_new(true).open(&full)?;
                    } else {
                        std::fs::create_dir(&full)?;
                    }
                    self.created.push((candidate.clone(), pending.is_empty() && !dir));
                    self.restore_mtime(root, &resolved)?;
                    resolved = candidate;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(resolved)
    }

    /// Records `dir` and its ancestors (except the root, which is not part
    /// of a layer) as they are before a stub goes into `dir`.
    fn note_parents(&mut self, root: &Path, dir: &Path) -> io::Result<()> {
        let mut cur = dir.to_path_buf();
        while cur.parent().is_some() {
            if !self.parents.contains_key(&cur) && !self.created.iter().any(|(p, _)| p == &cur) {
                let meta = std::fs::symlink_metadata(root.join(&cur))?;
                self.parents.insert(cur.clone(), DirState::of(&meta));
            }
            cur.pop();
        }
        Ok(())
    }

    /// Creating an entry changed `dir`'s mtime; put the original back.
    fn restore_mtime(&self, root: &Path, dir: &Path) -> io::Result<()> {
        match self.parents.get(dir) {
            Some(state) => set_mtime(&root.join(dir), state.mtime, state.mtime_nsec),
            None => Ok(()),
        }
    }

    /// After the overlay is unmounted: removes the stubs from the upper
    /// directory, then the parent directories that overlayfs copied up only
    /// because a stub went into them (empty, not opaque, unchanged).
    pub fn remove_from(&self, upper: &Path) -> Result<(), String> {
        // A parent whose mtime still is the original saw no change by the command.
        let untouched: BTreeMap<&PathBuf, bool> = self
            .parents
            .iter()
            .map(|(rel, state)| {
                let same = std::fs::symlink_metadata(upper.join(rel))
                    .map(|m| m.mtime() == state.mtime && m.mtime_nsec() == state.mtime_nsec)
                    .unwrap_or(true);
                (rel, same)
            })
            .collect();
        for (rel, file) in self.created.iter().rev() {
            let path = upper.join(rel);
            let result = if *file {
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_file() && m.len() == 0 => std::fs::remove_file(&path),
                    _ => Ok(()),
                }
            } else {
                std::fs::remove_dir(&path)
            };
            match result {
                Ok(()) => {}
                // Gone already, or the command put something there: it stays.
                Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTEMPTY) => {}
                Err(e) => return Err(format!("removing the mount point /{} from the upper directory: {e}", rel.display())),
            }
        }
        // Deepest first, so removing a directory is followed by fixing its parent.
        for (rel, state) in self.parents.iter().rev() {
            if !untouched[rel] {
                continue;
            }
            let path = upper.join(rel);
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if !meta.is_dir() {
                continue;
            }
            set_mtime(&path, state.mtime, state.mtime_nsec)
                .map_err(|e| format!("restoring the mtime of /{}: {e}", rel.display()))?;
            let empty = std::fs::read_dir(&path).map(|mut d| d.next().is_none()).unwrap_or(false);
            let same = DirState::of(&meta) == DirState { mtime: meta.mtime(), mtime_nsec: meta.mtime_nsec(), ..*state };
            if empty && same && !is_opaque(&path) {
                std::fs::remove_dir(&path).map_err(|e| format!("removing the copied-up /{}: {e}", rel.display()))?;
            }
        }
        Ok(())
    }
}

/// Pushes `path`'s parts onto a stack so that popping yields them in order.
fn push_components(stack: &mut Vec<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    stack.extend(parts.into_iter().rev());
}

fn set_mtime(path: &Path, sec: i64, nsec: i64) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let times = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: sec as libc::time_t, tv_nsec: nsec as _ },
    ];
    // SAFETY: utimensat(2) with a live C string and a two-element array.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// overlayfs marks a directory that hides its lower namesakes with this xattr.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

pub fn is_opaque(path: &Path) -> bool {
    super::xattr::get(path, OPAQUE_XATTR).ok().flatten().as_deref() == Some(b"y")
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
        )
        .unwrap();
        assert_eq!(
            opts,
            "lowerdir=/scratch/l/1:/scratch/l/0,upperdir=/scratch/u/2,workdir=/scratch/w/2,\
             redirect_dir=off,metacopy=off,index=off,xino=off"
        );
    }

    #[test]
    fn overlay_options_refuse_separators_and_overlong_stacks() {
        let err = overlay_options(&[PathBuf::from("/scratch/a,b")], Path::new("/u"), Path::new("/w")).unwrap_err();
        assert!(err.contains("may not contain"), "{err}");
        let many: Vec<PathBuf> = (0..300).map(|i| PathBuf::from(format!("/scratch/layers/{i:04}"))).collect();
        let err = overlay_options(&many, Path::new("/u"), Path::new("/w")).unwrap_err();
        assert!(err.contains("4095-byte limit"), "{err}");
        let short: Vec<PathBuf> = (0..250).map(|i| PathBuf::from(format!("/scratch/l/{i}"))).collect();
        assert!(overlay_options(&short, Path::new("/scratch/u/1"), Path::new("/scratch/w/1")).is_ok());
    }

    #[test]
    fn mount_points_resolve_symlinks_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("../../../run/stub", root.join("etc/resolv.conf")).unwrap();
        std::os::unix::fs::symlink("/", root.join("up")).unwrap();
        let mut stubs = Stubs::default();
        let rel = stubs.create(root, "/etc/resolv.conf", false).unwrap();
        assert_eq!(rel, Path::new("run/stub"));
        assert!(root.join("run/stub").is_file(), "created inside the root, not outside");
        let rel = stubs.create(root, "/up/../up/proc", true).unwrap();
        assert_eq!(rel, Path::new("proc"));
        assert_eq!(
            stubs.created,
            vec![(PathBuf::from("run"), false), (PathBuf::from("run/stub"), true), (PathBuf::from("proc"), false)]
        );
    }

    #[test]
    fn stubs_and_copied_up_parents_are_removed() {
        // The upper directory after a step whose only change was a stub in /etc
        // (as overlayfs copies /etc up) plus a file the command wrote in /var.
        let dir = tempfile::tempdir().unwrap();
        let (root, upper) = (dir.path().join("root"), dir.path().join("upper"));
        for d in ["etc", "var", "proc"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        set_mtime(&root.join("etc"), 1000, 0).unwrap();
        set_mtime(&root.join("var"), 2000, 0).unwrap();
        let mut stubs = Stubs::default();
        stubs.create(&root, "/etc/hosts", false).unwrap();
        stubs.create(&root, "/var/cache/x", true).unwrap();
        stubs.create(&root, "/proc", true).unwrap();
        assert_eq!(std::fs::metadata(root.join("etc")).unwrap().mtime(), 1000, "mtime put back after the stub");
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::rename(root.join("etc"), upper.join("etc")).unwrap();
        std::fs::rename(root.join("var"), upper.join("var")).unwrap();
        std::fs::write(upper.join("var/new"), b"x").unwrap();
        stubs.remove_from(&upper).unwrap();
        assert!(!upper.join("etc").exists(), "an untouched copied-up parent goes");
        assert!(upper.join("var/new").exists() && !upper.join("var/cache").exists());
    }
}
