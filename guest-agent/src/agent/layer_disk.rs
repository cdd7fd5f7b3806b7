//! Layers the host attached as read-only EROFS disks: found by their virtio
//! serial and mounted under the scratch disk, where they serve as overlay
//! lowers exactly like unpacked layer directories.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use super::scratch::scratch_path;

/// Mounts the EROFS image on the disk with serial `disk` read-only at `dest`.
pub fn do_mount_layer(disk: &str, dest: &str) -> Result<(), String> {
    let device = find_disk(Path::new("/sys/block"), disk)?;
    let target = scratch_path(dest)?;
    fs::create_dir_all(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    drop_cached_blocks(&device)?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOATIME;
    mount(Some(&device), &target, Some("erofs"), flags, None::<&str>).map_err(|e| {
        let _ = fs::remove_dir(&target);
        format!("mounting {} (disk {disk}) as erofs: {e}", device.display())
    })
}

/// Drops the device's cached blocks. In a VM restored from a boot snapshot
/// the disk behind a slot changed after the kernel read (and cached) its
/// first blocks while probing partitions; the mount must see the new ones.
fn drop_cached_blocks(device: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    // _IO(0x12, 97), as in <linux/fs.h>.
    const BLKFLSBUF: libc::c_ulong = 0x1261;
    let file = fs::File::open(device).map_err(|e| format!("opening {}: {e}", device.display()))?;
    // SAFETY: BLKFLSBUF takes no argument and acts on the open block device.
    if unsafe { libc::ioctl(file.as_raw_fd(), BLKFLSBUF as _) } < 0 {
        return Err(format!("flushing {}: {}", device.display(), std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `/dev/vdX` for the block device whose `serial` attribute is `serial`.
fn find_disk(sys_block: &Path, serial: &str) -> Result<PathBuf, String> {
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
