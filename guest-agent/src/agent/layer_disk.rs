//! Layers the host attached as read-only EROFS disks: found by their virtio
//! serial and mounted under the scratch disk, where they serve as overlay
//! lowers exactly like unpacked layer directories.

use std::fs;
use std::path::Path;

use nix::mount::{mount, MsFlags};

use super::scratch::{find_disk, scratch_path};

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
