//! Where kiln keeps its files. Everything is per user; nothing needs root.
//!
//! `KILN_CACHE_DIR` and `KILN_DATA_DIR` override the platform defaults so tests
//! and hermetic builds can point kiln at private folders.

use std::path::{Path, PathBuf};

/// Disposable, re-creatable files: kernels, initramfs images, build cache.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("kiln")
}

/// Files the user would miss: the image store (blobs and tags).
pub fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_DATA_DIR") {
        return PathBuf::from(dir);
    }
    dirs::data_dir().unwrap_or_else(std::env::temp_dir).join("kiln")
}

/// The directory `path` is in: "." for a bare file name, whose parent is
/// the empty path.
pub fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Writes `bytes` to `path` through a temporary file beside it, renamed
/// into place, so a reader sees the old file or the new one, never half.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(parent_dir(path))?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Creates `dir`, a directory named for the format of what it holds (a
/// hash of the code that writes it), and removes its siblings: what other
/// formats left is never read again.
pub fn create_format_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) {
        for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            if entry.file_name() != name {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    std::fs::create_dir_all(dir)
}

/// A temporary-name prefix that carries this process's id (`<prefix><pid>-`),
/// so that [`remove_stale`] can tell a dead kiln's leftovers from a live one's.
pub fn owned_prefix(prefix: &str) -> String {
    format!("{prefix}{}-", std::process::id())
}

/// Removes the entries of `dir` named `<prefix><pid>-...` whose process is
/// gone: what a kiln killed by SIGKILL (or a power cut) left behind.
pub fn remove_stale(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !process_exists(pid) {
            let path = entry.path();
            let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        }
    }
}

#[cfg(target_os = "linux")]
fn process_exists(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Other Unix hosts (macOS): signal 0 checks for the process without touching it.
#[cfg(all(unix, not(target_os = "linux")))]
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill with signal 0 only checks whether the process exists.
    unsafe { libc::kill(pid, 0) == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) }
}

#[cfg(windows)]
fn process_exists(pid: u32) -> bool {
    crate::win32::process_exists(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dead_processes_leftovers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join("kiln-x-4000000000-abc");
        let mine = dir.path().join(format!("{}abc", owned_prefix("kiln-x-")));
        let other = dir.path().join("unrelated-4000000000-abc");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("f"), "x").unwrap();
        std::fs::write(&mine, "x").unwrap();
        std::fs::write(&other, "x").unwrap();
        remove_stale(dir.path(), "kiln-x-");
        assert!(!dead.exists(), "a dead process's directory goes");
        assert!(mine.exists() && other.exists(), "a live process's file and other names stay");
    }
}
