//! The scratch disk: where it is mounted, and host-supplied paths confined
//! under it; and finding the host's disks by their virtio serial.

use std::fs;
use std::path::{Component, Path, PathBuf};

/// Where the scratch disk (serial `kiln-scratch`) is mounted.
pub const SCRATCH: &str = "/scratch";

/// Resolves a host-supplied path under the scratch mount, refusing `..`.
pub fn scratch_path(rel: &str) -> Result<PathBuf, String> {
    let rel = Path::new(rel.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("path {rel:?} must stay under the scratch disk"));
    }
    Ok(Path::new(SCRATCH).join(rel))
}

/// `/dev/vdX` for the block device whose `serial` attribute is `serial`.
pub fn find_disk(sys_block: &Path, serial: &str) -> Result<PathBuf, String> {
    let entries = fs::read_dir(sys_block).map_err(|e| format!("listing {}: {e}", sys_block.display()))?;
    for entry in entries.flatten() {
        let Ok(found) = fs::read_to_string(entry.path().join("serial")) else { continue };
        if found.trim_end() == serial {
            return Ok(Path::new("/dev").join(entry.file_name()));
        }
    }
    Err(format!("no disk with serial {serial}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_disk_by_serial() {
        let sys = tempfile::tempdir().unwrap();
        for (dev, serial) in [("vda", "kiln-scratch\n"), ("vdb", "kiln-layer-0\n"), ("vdc", "kiln-layer-1\n")] {
            fs::create_dir(sys.path().join(dev)).unwrap();
            fs::write(sys.path().join(dev).join("serial"), serial).unwrap();
        }
        fs::create_dir(sys.path().join("loop0")).unwrap();
        assert_eq!(find_disk(sys.path(), "kiln-layer-1").unwrap(), Path::new("/dev/vdc"));
        let err = find_disk(sys.path(), "kiln-layer-7").unwrap_err();
        assert!(err.contains("no disk with serial kiln-layer-7"), "{err}");
    }
}
