//! Mount points the agent creates in a command's root (stubs) and their
//! removal from an overlay's upper directory afterwards, so a RUN's diff
//! holds only what the command changed. Paths are resolved inside the root
//! as the kernel would after chroot, by [`kiln_protocol::confined_path`].

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln_protocol::confined_path::{resolve_existing, resolve_in_root, Gap};

use kiln_protocol::xattr::is_opaque;

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
    /// Resolves `target` under `root` (see [`resolve_in_root`]) and creates
    /// missing parts: directories, and for the last part a directory or an
    /// empty file. Returns the resolved root-relative path.
    ///
    /// A mount point that is a symlink looping back to itself (debootstrap
    /// leaves `proc -> /proc` in containers) cannot be mounted on, so it is
    /// replaced by a stub like a missing one; in an overlay root the stub's
    /// removal from the upper directory brings the image's link back.
    pub fn create(&mut self, root: &Path, target: &str, dir: bool) -> io::Result<PathBuf> {
        resolve_in_root(root, target, &mut |gap, parent, candidate, last| {
            if gap == Gap::NotADirectory {
                return Err(gap.error(candidate));
            }
            self.note_parents(root, parent)?;
            let full = root.join(candidate);
            if gap == Gap::LoopingLink {
                std::fs::remove_file(&full)?;
            }
            if last && !dir {
                std::fs::OpenOptions::new().write(true).create_new(true).open(&full)?;
            } else {
                std::fs::create_dir(&full)?;
            }
            self.created.push((candidate.to_path_buf(), last && !dir));
            self.restore_mtime(root, parent)
        })
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

/// Checks that the working directory `cwd` exists in the root, so a missing
/// one is reported as such and not as a failure to start the command.
pub fn check_cwd(root: &Path, cwd: &str) -> Result<(), String> {
    let rel = resolve_existing(root, cwd)
        .map_err(|e| format!("working directory {cwd} is not usable in the root: {e}"))?;
    if !root.join(&rel).is_dir() {
        return Err(format!("working directory {cwd} is not a directory in the root"));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn looping_mount_point_links_become_stubs_and_go_again() {
        // debootstrap's container layout (proc -> /proc) and relative self-links.
        let dir = tempfile::tempdir().unwrap();
        let (root, upper) = (dir.path().join("root"), dir.path().join("upper"));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/proc", root.join("proc")).unwrap();
        std::os::unix::fs::symlink("../sys", root.join("sys")).unwrap();
        std::os::unix::fs::symlink("hosts", root.join("etc/hosts")).unwrap();
        let mut stubs = Stubs::default();
        assert_eq!(stubs.create(&root, "/proc", true).unwrap(), Path::new("proc"));
        assert_eq!(stubs.create(&root, "/sys", true).unwrap(), Path::new("sys"));
        assert_eq!(stubs.create(&root, "/etc/hosts", false).unwrap(), Path::new("etc/hosts"));
        assert!(root.join("proc").is_dir() && !root.join("proc").is_symlink());
        assert!(root.join("etc/hosts").is_file() && !root.join("etc/hosts").is_symlink());
        // As in an overlay's upper directory after the command: only the stubs.
        std::fs::create_dir_all(&upper).unwrap();
        for d in ["proc", "sys", "etc"] {
            std::fs::rename(root.join(d), upper.join(d)).unwrap();
        }
        stubs.remove_from(&upper).unwrap();
        assert_eq!(std::fs::read_dir(&upper).unwrap().count(), 0, "the upper directory holds no change");
    }

    #[test]
    fn working_directory_must_exist_in_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("app")).unwrap();
        std::fs::write(dir.path().join("file"), b"").unwrap();
        std::os::unix::fs::symlink("/app", dir.path().join("link")).unwrap();
        assert!(check_cwd(dir.path(), "/app").is_ok());
        assert!(check_cwd(dir.path(), "/link").is_ok());
        assert!(check_cwd(dir.path(), "").is_ok());
        let err = check_cwd(dir.path(), "/app/missing").unwrap_err();
        assert!(err.contains("/app/missing does not exist"), "{err}");
        assert!(check_cwd(dir.path(), "/file").unwrap_err().contains("not a directory"));
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
