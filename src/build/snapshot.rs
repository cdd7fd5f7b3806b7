//! File contents of a RUN step, read from the scratch disk image on the host.
//! (Interface fixed; implementation owned by the `layers` branch.)

use std::io::{self, Read};
use std::path::Path;

use kiln_protocol::LayerEntry;

use super::layer_tar::ContentSource;

/// Reads `<upper>/<entry.path>` from an ext4 image with ext4-view.
pub struct Ext4Contents {}

impl Ext4Contents {
    /// `upper` is the scratch-relative upper directory the manifest describes.
    pub fn open(_image: &Path, _upper: &str) -> io::Result<Self> {
        unimplemented!("layers branch")
    }
}

impl ContentSource for Ext4Contents {
    fn open(&mut self, _entry: &LayerEntry) -> io::Result<Box<dyn Read + '_>> {
        unimplemented!("layers branch")
    }
}
