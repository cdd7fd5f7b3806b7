//! Layer disk slots that no layer took at boot. A boot-snapshot machine
//! always has [`LAYER_DISK_SLOTS`] layer disks; the ones the first RUN did
//! not need are empty sparse files in the VM's run directory. A layer that
//! a later step needs (a later stage's base, a COPY's layer) is written
//! into one while the VM runs, and the agent mounts it like a disk attached
//! at boot: it drops the disk's cached blocks first, so it reads what the
//! host wrote. QEMU opened the file read-only and reads it through the
//! host's page cache, so the guest sees the write at once.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::{layer_disk_serial, LAYER_DISK_SIZE, LAYER_DISK_SLOTS};

/// An empty slot of a running VM: the disk with serial [`SpareSlot::serial`].
#[derive(Debug)]
pub struct SpareSlot {
    pub serial: String,
    path: PathBuf,
}

impl SpareSlot {
    /// Copies the first `len` bytes of `image` into the slot (in the kernel
    /// where it can: `copy_file_range` on Linux).
    pub fn fill(&self, image: &Path, len: u64) -> io::Result<()> {
        if len > LAYER_DISK_SIZE {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the image exceeds a layer disk"));
        }
        let mut from = File::open(image)?.take(len);
        let mut to = OpenOptions::new().write(true).open(&self.path)?;
        let copied = io::copy(&mut from, &mut to)?;
        if copied != len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{} ends after {copied} bytes", image.display())));
        }
        Ok(())
    }
}

/// The disks of a machine with every slot: `attached` first, then an empty
/// sparse file in `run_dir` for each slot left, returned as spare slots.
// Boot snapshots, the only machines with slots, are Linux-only so far.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub fn fill_up(attached: &[PathBuf], run_dir: &Path) -> io::Result<(Vec<PathBuf>, Vec<SpareSlot>)> {
    let mut disks = attached.to_vec();
    let mut spare = Vec::new();
    for index in attached.len()..LAYER_DISK_SLOTS {
        let path = run_dir.join(format!("slot{index}.img"));
        let file = File::create(&path)?;
        super::scratch::set_sparse_len(&file, LAYER_DISK_SIZE)?;
        disks.push(path.clone());
        spare.push(SpareSlot { serial: layer_disk_serial(index), path });
    }
    Ok((disks, spare))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_left_are_empty_disks_that_take_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let attached = vec![PathBuf::from("/images/a.erofs")];
        let (disks, spare) = fill_up(&attached, dir.path()).unwrap();
        assert_eq!(disks.len(), LAYER_DISK_SLOTS);
        assert_eq!(disks[0], attached[0]);
        assert_eq!(spare.len(), LAYER_DISK_SLOTS - 1);
        assert_eq!(spare[0].serial, layer_disk_serial(1), "serials follow the attach order");
        assert_eq!(std::fs::metadata(&disks[1]).unwrap().len(), LAYER_DISK_SIZE);

        let image = dir.path().join("image");
        std::fs::write(&image, b"0123456789").unwrap();
        spare[0].fill(&image, 4).unwrap();
        let mut head = [0u8; 6];
        File::open(&disks[1]).unwrap().read_exact(&mut head).unwrap();
        assert_eq!(&head, b"0123\0\0", "only the image's length is copied");
        assert_eq!(std::fs::metadata(&disks[1]).unwrap().len(), LAYER_DISK_SIZE, "the disk keeps its size");
        assert!(spare[1].fill(&image, 11).is_err(), "an image shorter than it claims");
    }
}
