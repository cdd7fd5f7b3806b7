//! Resolving a path inside a root the way the kernel would after
//! `chroot(root)`: `..` stops at the root, absolute symlinks restart at it,
//! and no lookup ever leaves it. One resolver for every tree kiln resolves
//! in: a directory on disk (the agent's mount points, [`DirTree`]), and on
//! the host an image's layers, the build context and an ADD's archive.
//!
//! A [`Tree`] only answers what is at one path, so a link is read, never
//! followed by the OS; for a directory on disk the caller must make sure
//! nothing else changes it while it resolves (the agent resolves before
//! the command starts).

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed while resolving one path, as the kernel's MAXSYMLINKS.
pub const MAX_SYMLINKS: u32 = 40;

/// What is at one root-relative path, as far as resolving needs to know.
pub enum Node {
    Missing,
    Dir,
    Symlink(PathBuf),
    /// A file, device, socket...
    Other,
}

impl Node {
    /// The node of a layer or context entry (`None`: nothing there).
    pub fn of_entry(kind: Option<&crate::EntryKind>) -> Node {
        match kind {
            None => Node::Missing,
            Some(crate::EntryKind::Dir { .. }) => Node::Dir,
            Some(crate::EntryKind::Symlink { target }) => Node::Symlink(PathBuf::from(target)),
            Some(_) => Node::Other,
        }
    }
}

/// A tree paths are resolved in.
pub trait Tree {
    /// What is at `rel` (relative, every part but the last resolved), links not followed.
    fn node(&self, rel: &Path) -> io::Result<Node>;
}

/// A directory on disk as a [`Tree`].
pub struct DirTree<'a>(pub &'a Path);

impl Tree for DirTree<'_> {
    fn node(&self, rel: &Path) -> io::Result<Node> {
        let full = self.0.join(rel);
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => Ok(Node::Symlink(std::fs::read_link(&full)?)),
            Ok(meta) if meta.is_dir() => Ok(Node::Dir),
            Ok(_) => Ok(Node::Other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Node::Missing),
            Err(e) => Err(e),
        }
    }
}

/// A part of the path that does not resolve to an existing entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// Nothing exists at this path.
    Missing,
    /// Something that is not a directory, with more parts below it.
    NotADirectory,
    /// A symlink that leads back to itself (`proc -> /proc`, `sys -> ../sys`,
    /// or a cycle through other links), met as the last part of the path:
    /// the kernel would answer ELOOP.
    LoopingLink,
}

/// What a resolver does with a [`Gap`]: called with the gap, the resolved
/// root-relative parent, the root-relative candidate, and whether it is the
/// path's last part. `Ok(())` takes the candidate as resolved (the handler
/// created it, or the caller wants the rest of the path as written); an
/// error stops resolution.
pub type GapHandler<'a> = dyn FnMut(Gap, &Path, &Path, bool) -> io::Result<()> + 'a;

/// [`resolve`] in a directory on disk.
pub fn resolve_in_root(root: &Path, target: impl AsRef<Path>, on_gap: &mut GapHandler<'_>) -> io::Result<PathBuf> {
    resolve(&DirTree(root), target, on_gap)
}

/// Resolves `target` in `tree` (see the module docs) and returns the
/// root-relative path it names, with every symlink resolved. A looping link
/// before the last part is an error; at the last part it goes to `on_gap`,
/// as do missing parts and non-directories with parts below them.
pub fn resolve(tree: &(impl Tree + ?Sized), target: impl AsRef<Path>, on_gap: &mut GapHandler<'_>) -> io::Result<PathBuf> {
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, target.as_ref());
    let mut resolved = PathBuf::new();
    let mut links = 0;
    // Symlinks met so far with what was left to resolve after them: meeting
    // the same link with the same rest again is a loop (`up/../up` is not).
    let mut seen: Vec<(PathBuf, Vec<OsString>)> = Vec::new();
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        match tree.node(&candidate)? {
            Node::Symlink(link) => {
                let state = (candidate, pending.clone());
                if seen.contains(&state) {
                    let candidate = state.0;
                    if !pending.is_empty() {
                        return Err(Gap::LoopingLink.error(&candidate));
                    }
                    on_gap(Gap::LoopingLink, &resolved, &candidate, true)?;
                    resolved = candidate;
                    continue;
                }
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::other("too many levels of symbolic links"));
                }
                seen.push(state);
                if link.is_absolute() {
                    resolved.clear();
                }
                push_components(&mut pending, &link);
            }
            Node::Dir => resolved = candidate,
            Node::Other => {
                if !pending.is_empty() {
                    on_gap(Gap::NotADirectory, &resolved, &candidate, false)?;
                }
                resolved = candidate;
            }
            Node::Missing => {
                on_gap(Gap::Missing, &resolved, &candidate, pending.is_empty())?;
                resolved = candidate;
            }
        }
    }
    Ok(resolved)
}

/// Resolves `target` under `root` to an existing entry; any gap is an error
/// naming the part that is missing, not a directory, or loops.
pub fn resolve_existing(root: &Path, target: impl AsRef<Path>) -> io::Result<PathBuf> {
    resolve_in_root(root, target, &mut |gap, _, candidate, _| Err(gap.error(candidate)))
}

/// Resolves `target` in `tree`, taking missing parts and what lies below
/// files as written (the result need not exist); only link loops are errors.
pub fn resolve_lexically(tree: &(impl Tree + ?Sized), target: impl AsRef<Path>) -> io::Result<PathBuf> {
    resolve(tree, target, &mut |gap, _, candidate, _| match gap {
        Gap::LoopingLink => Err(gap.error(candidate)),
        Gap::Missing | Gap::NotADirectory => Ok(()),
    })
}

impl Gap {
    /// The error a caller that cannot fill the gap reports.
    pub fn error(self, candidate: &Path) -> io::Error {
        match self {
            Gap::Missing => io::Error::new(io::ErrorKind::NotFound, format!("/{} does not exist", candidate.display())),
            Gap::NotADirectory => io::Error::other(format!("/{} is not a directory", candidate.display())),
            Gap::LoopingLink => io::Error::other(format!(
                "too many levels of symbolic links: /{} is a symbolic link that loops back to itself",
                candidate.display()
            )),
        }
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn gaps(root: &Path, target: &str) -> (io::Result<PathBuf>, Vec<(Gap, PathBuf)>) {
        let mut seen = Vec::new();
        let result = resolve_in_root(root, target, &mut |gap, _, candidate, _| {
            seen.push((gap, candidate.to_path_buf()));
            Ok(())
        });
        (result, seen)
    }

    #[test]
    fn links_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("var/tmp")).unwrap();
        symlink("/var/tmp", root.join("tmp")).unwrap();
        symlink("../../../../var", root.join("up")).unwrap();
        assert_eq!(resolve_existing(root, "/tmp").unwrap(), Path::new("var/tmp"));
        assert_eq!(resolve_existing(root, "/up/tmp").unwrap(), Path::new("var/tmp"), "`..` stops at the root");
        let err = resolve_existing(root, "/tmp/missing").unwrap_err();
        assert!(err.to_string().contains("/var/tmp/missing does not exist"), "{err}");
    }

    #[test]
    fn self_links_are_gaps_at_the_last_part_and_errors_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        symlink("/proc", root.join("proc")).unwrap();
        symlink("../sys", root.join("sys")).unwrap();
        symlink("./dev", root.join("dev")).unwrap();
        symlink("b", root.join("a")).unwrap();
        symlink("/a", root.join("b")).unwrap();
        for (target, looping) in [("/proc", "proc"), ("/sys", "sys"), ("dev", "dev"), ("/a", "a")] {
            let (result, seen) = gaps(root, target);
            assert_eq!(result.unwrap(), Path::new(looping), "{target}");
            assert_eq!(seen, vec![(Gap::LoopingLink, PathBuf::from(looping))], "{target}");
        }
        let err = resolve_existing(root, "/proc/self").unwrap_err();
        assert!(err.to_string().contains("/proc is a symbolic link that loops"), "{err}");
        assert!(resolve_existing(root, "/proc").unwrap_err().to_string().contains("loops back"));
    }

    #[test]
    fn long_chains_stop_at_the_kernel_limit() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for i in 0..45 {
            symlink(format!("l{}", i + 1), root.join(format!("l{i}"))).unwrap();
        }
        let err = resolve_existing(root, "l0").unwrap_err();
        assert!(err.to_string().contains("too many levels"), "{err}");
    }
}
