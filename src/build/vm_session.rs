//! The build's guest: booted on the first RUN that misses the cache (a fully
//! cached build boots nothing), then kept for the rest of the build. Layers
//! are unpacked by the agent into their own lower directories on the scratch
//! disk once per VM; a RUN's upper directory becomes the next step's lower
//! as it is, without a round trip through the host.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;

use kiln_protocol::{ExecRequest, ExitStatus, LayerEntry, MountSpec, RootSpec, TtySize};
use oci_spec::image::Descriptor;

use super::run_mounts::CacheVolume;
use crate::oci::layer::open_layer;
use crate::oci::store::{Store, StoreError};
use crate::vm::client::Resizes;
use crate::vm::{BootFiles, BootFilesError, Vm, VmConfig, VmError};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    BootFiles(#[from] BootFilesError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the VM has no scratch disk")]
    NoScratch,
}

/// A layer as the step chain knows it: its blob and its diff_id.
#[derive(Debug, Clone)]
pub struct LayerRef {
    pub descriptor: Descriptor,
    pub diff_id: String,
}

/// What one RUN needs from the VM.
pub struct RunSpec<'a> {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub no_network: bool,
    pub mounts: Vec<MountSpec>,
    /// The stage's layers, bottom first.
    pub layers: &'a [LayerRef],
}

/// A finished RUN whose upper directory is described and frozen; call
/// [`Session::thaw`] after reading its contents.
pub struct RunOutcome {
    pub status: ExitStatus,
    /// When the command's exit was reported (the snapshot starts then).
    pub exited_at: std::time::Instant,
    /// Scratch-relative upper directory (already an overlay lower for what follows).
    pub upper: String,
}

pub struct Session {
    vm: Vm,
    /// diff_id → scratch-relative directory holding that layer's files.
    lowers: HashMap<String, String>,
    /// Cache volumes already unpacked in this VM (scratch dirs).
    caches: HashSet<String>,
    next: usize,
}

impl Session {
    /// Runs a command in an overlay over `spec.layers` without keeping its
    /// changes (`kiln run`): stdin is forwarded when given; with `tty` the
    /// command gets a terminal of that size, resized as `resizes` reports.
    #[allow(clippy::too_many_arguments)]
    pub fn exec(
        &mut self,
        store: &Store,
        spec: RunSpec<'_>,
        stdin: Option<Box<dyn std::io::Read + Send>>,
        tty: Option<TtySize>,
        sink: &mut dyn FnMut(u8, &[u8]),
        resizes: Resizes,
        cancel: &AtomicBool,
    ) -> Result<ExitStatus, SessionError> {
        let (req, _upper) = self.request(store, spec, cancel)?;
        let req = ExecRequest { stdin: stdin.is_some(), tty, ..req };
        Ok(self.vm.exec_resizable(req, stdin, sink, resizes, cancel)?)
    }

    /// The exec request for `spec` in a fresh overlay; returns it and its upper dir.
    fn request(&mut self, store: &Store, spec: RunSpec<'_>, cancel: &AtomicBool) -> Result<(ExecRequest, String), SessionError> {
        let lowers = self.lowers_for(store, spec.layers, cancel)?;
        let n = self.next;
        self.next += 1;
        let upper = format!("u/{n}");
        let req = ExecRequest {
            argv: spec.argv,
            env: spec.env,
            cwd: spec.cwd,
            uid: spec.uid,
            gid: spec.gid,
            groups: spec.groups,
            root: Some(RootSpec::Overlay { lowers, upper: upper.clone(), work: format!("w/{n}") }),
            no_network: spec.no_network,
            mounts: spec.mounts,
            ..Default::default()
        };
        Ok((req, upper))
    }

    pub fn boot(config: &VmConfig, files: &BootFiles, cancel: &AtomicBool) -> Result<Self, SessionError> {
        let vm = Vm::boot(config, files, cancel)?;
        Ok(Session { vm, lowers: HashMap::new(), caches: HashSet::new(), next: 0 })
    }

    /// Makes every layer of `layers` available as a lower directory (the
    /// agent unpacks the ones it does not have yet) and returns their
    /// directories topmost first, as overlayfs wants them.
    pub fn lowers_for(&mut self, store: &Store, layers: &[LayerRef], cancel: &AtomicBool) -> Result<Vec<String>, SessionError> {
        let mut dirs = Vec::with_capacity(layers.len());
        for layer in layers {
            let dir = match self.lowers.get(&layer.diff_id) {
                Some(dir) => dir.clone(),
                None => {
                    let dir = format!("l/{}", self.next);
                    self.next += 1;
                    let mut tar = open_layer(store, &layer.descriptor)?;
                    self.vm.unpack(&dir, &mut tar, cancel)?;
                    self.lowers.insert(layer.diff_id.clone(), dir.clone());
                    dir
                }
            };
            dirs.push(dir);
        }
        dirs.reverse();
        Ok(dirs)
    }

    /// Runs a command in an overlay over the stage's layers, streaming its
    /// output to `sink`. On success the upper directory is snapshotted:
    /// the manifest comes back and the scratch file system stays frozen.
    pub fn run(
        &mut self,
        store: &Store,
        spec: RunSpec<'_>,
        sink: &mut dyn FnMut(u8, &[u8]),
        cancel: &AtomicBool,
    ) -> Result<(RunOutcome, Option<Vec<LayerEntry>>), SessionError> {
        let (req, upper) = self.request(store, spec, cancel)?;
        let status = self.vm.exec(req, None, sink, cancel)?;
        let exited_at = std::time::Instant::now();
        if status != (ExitStatus::Code { code: 0 }) {
            return Ok((RunOutcome { status, exited_at, upper }, None));
        }
        let entries = self.vm.snapshot(&upper, cancel)?;
        Ok((RunOutcome { status, exited_at, upper }, Some(entries)))
    }

    /// The scratch disk image the frozen upper directory can be read from.
    pub fn scratch_image(&self) -> Result<&std::path::Path, SessionError> {
        self.vm.scratch_image().ok_or(SessionError::NoScratch)
    }

    pub fn thaw(&mut self, cancel: &AtomicBool) -> Result<(), SessionError> {
        Ok(self.vm.thaw(cancel)?)
    }

    /// Records that `upper` holds the files of the layer with `diff_id`, so
    /// later steps use it as a lower without unpacking the blob again.
    pub fn adopt(&mut self, diff_id: &str, upper: &str) {
        self.lowers.insert(diff_id.to_string(), upper.to_string());
    }

    /// Makes the cache volume's directory exist in the VM, unpacked from its
    /// host tar the first time this VM uses it.
    pub fn ensure_cache(&mut self, volume: &CacheVolume, cancel: &AtomicBool) -> Result<(), SessionError> {
        if self.caches.contains(&volume.scratch_dir) {
            return Ok(());
        }
        let mut tar: Box<dyn std::io::Read> = match std::fs::File::open(&volume.host_tar) {
            Ok(f) => Box::new(std::io::BufReader::new(f)),
            // A new volume: an empty archive just creates the directory.
            Err(_) => Box::new(std::io::Cursor::new(vec![0u8; 1024])),
        };
        self.vm.unpack(&volume.scratch_dir, &mut tar, cancel)?;
        self.caches.insert(volume.scratch_dir.clone());
        Ok(())
    }

    /// Unpacks `tar` into a fresh scratch directory and returns its path
    /// (the build context's files for a `--mount=type=bind`).
    pub fn unpack_fresh(&mut self, tar: &mut dyn std::io::Read, cancel: &AtomicBool) -> Result<String, SessionError> {
        let dir = format!("b/{}", self.next);
        self.next += 1;
        self.vm.unpack(&dir, tar, cancel)?;
        Ok(dir)
    }

    /// Describes a scratch directory (freezing the scratch file system until [`Session::thaw`]).
    pub fn snapshot_dir(&mut self, dir: &str, cancel: &AtomicBool) -> Result<Vec<LayerEntry>, SessionError> {
        Ok(self.vm.snapshot(dir, cancel)?)
    }

    pub fn shutdown(self) {
        self.vm.shutdown();
    }
}
