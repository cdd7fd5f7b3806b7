//! One guest for a build (or a `kiln run`), and the whole life of a RUN in
//! it: layers become lower directories on the scratch disk (EROFS disks
//! mounted, or else unpacked, once per VM), the command runs in a fresh
//! overlay, and on success the session
//! freezes the scratch file system, reads the upper directory's manifest
//! and contents, writes the layer, thaws, and keeps the upper directory as
//! that layer's lower for the steps that follow. Callers never see a frozen
//! disk: [`Session::capture`] is the one place that freezes and thaws.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use kiln_protocol::{EntryKind, ExecRequest, ExitStatus, LayerEntry, RootSpec};
use oci_spec::image::Descriptor;

use super::layer_images::{LayerDisks, LayerImages};
use super::layer_tar::{write_layer, write_tar, LayerOptions, LayerTarError, NoContent};
use super::progress::StepLog;
use super::snapshot::Ext4Contents;
use crate::oci::layer::{open_layer, Compression};
use crate::oci::store::{Store, StoreError};
use crate::platform::Platform;
use crate::vm::client::{ClientError, Resizes};
use crate::vm::layer_slots::SpareSlot;
use crate::vm::{BootFiles, BootFilesError, Vm, VmConfig, VmError};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    BootFiles(#[from] BootFilesError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Layer(#[from] LayerTarError),
    #[error("the VM has no scratch disk")]
    NoScratch,
    #[error("reading {dir} from the scratch disk: {source}")]
    Read { dir: String, source: std::io::Error },
    #[error("saving the cache volume {}: {source}", path.display())]
    CacheVolume { path: PathBuf, source: std::io::Error },
}

/// A `RUN --mount=type=cache` volume: a host tar between builds, a
/// directory on the scratch disk while a VM uses it. The tar holds one
/// directory, [`CACHE_ROOT`], the mount's source: its owner and mode are
/// set when the volume is created and kept from then on, as in BuildKit.
#[derive(Debug, Clone)]
pub struct CacheVolume {
    /// Where it lives on the host between builds.
    pub host_tar: PathBuf,
    /// Its name (the tar's stem): steps of one VM share the volume's
    /// directory, unpacked again only when another build saved it since.
    pub name: String,
    /// The mount's `mode`, `uid`, `gid`, for a new volume's root.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The directory in a cache volume's tar that is mounted.
pub const CACHE_ROOT: &str = "d";

/// A cache volume unpacked in this VM.
struct LoadedCache {
    /// Its directory on the scratch disk (the mount source is `CACHE_ROOT` in it).
    dir: String,
    /// The host tar's size and mtime when this copy was loaded or saved.
    stamp: Option<(u64, std::time::SystemTime)>,
}

/// A layer as the step chain knows it: its blob and its diff_id.
#[derive(Debug, Clone)]
pub struct LayerRef {
    pub descriptor: Descriptor,
    pub diff_id: String,
}

/// What one command needs from the VM: the request (argv, env, cwd, user,
/// network, mounts; the session sets its root) and the layers it runs over.
pub struct RunSpec<'a> {
    pub request: ExecRequest,
    /// The stage's layers, bottom first.
    pub layers: &'a [LayerRef],
    /// Host ssh agent sockets the request's `MountSpec::Ssh` mounts forward to.
    pub ssh_agents: Vec<PathBuf>,
}

/// The command's side of the user's terminal (`kiln run`).
pub struct ExecIo<'a> {
    /// Forwarded as the command's input when given (`-i`).
    pub stdin: Option<Box<dyn Read + Send>>,
    /// Output by stream (all of it on STDOUT with a terminal).
    pub sink: &'a mut dyn FnMut(u8, &[u8]),
    /// Polled for the terminal's new sizes (with `ExecRequest::tty`).
    pub resizes: Resizes<'a>,
}

/// What making a command's layers available took.
#[derive(Debug, Default, Clone, Copy)]
pub struct LayersReady {
    /// Layers mounted from their disk images.
    pub mounted: usize,
    /// Layers the agent unpacked.
    pub unpacked: usize,
    pub seconds: f64,
}

/// How a RUN ended; a successful one carries its snapshot.
pub struct RunOutcome {
    pub status: ExitStatus,
    pub snapshot: Option<Snapshot>,
}

/// A successful RUN's changes, written as a layer (`None`: no changes).
pub struct Snapshot {
    pub layer: Option<LayerRef>,
    pub entries: usize,
    /// Bytes of regular files in the layer.
    pub file_bytes: u64,
    /// From the command's exit to the layer written and the disk thawed.
    pub seconds: f64,
}

pub struct Session {
    vm: Vm,
    /// diff_id → scratch-relative directory holding that layer's files.
    lowers: HashMap<String, String>,
    /// diff_id → (serial, host image) of the attached disk holding that
    /// layer's EROFS image, until it is mounted (then it is in `lowers`).
    disks: HashMap<String, (String, PathBuf)>,
    /// Layer disk slots still empty, for layers no disk held at boot.
    spare_slots: Vec<SpareSlot>,
    /// Cache volumes unpacked in this VM, by name.
    caches: HashMap<String, LoadedCache>,
    next: usize,
}

impl Session {
    /// Boots a VM with `disks` attached. Layers of later steps go through
    /// the VM's spare slots; any left over (no slot left, a machine without
    /// slots) or that the guest cannot mount are unpacked in the guest.
    pub fn boot(config: &VmConfig, files: &BootFiles, disks: LayerDisks, cancel: &AtomicBool) -> Result<Self, SessionError> {
        let mut config = config.clone();
        let mut by_layer = HashMap::new();
        for (diff_id, image) in disks.images {
            by_layer.insert(diff_id, (crate::vm::layer_disk_serial(config.layer_disks.len()), image.clone()));
            config.layer_disks.push(image);
        }
        let mut vm = Vm::boot(&config, files, cancel)?;
        let spare_slots = vm.take_spare_slots();
        Ok(Session { vm, lowers: HashMap::new(), disks: by_layer, spare_slots, caches: HashMap::new(), next: 0 })
    }

    /// Runs a command in an overlay over `spec.layers` without keeping its
    /// changes (`kiln run`), wired to the user's terminal.
    pub fn exec(&mut self, store: &Store, spec: RunSpec<'_>, io: ExecIo<'_>, cancel: &AtomicBool) -> Result<ExitStatus, SessionError> {
        let (req, _upper) = self.request(store, spec, cancel)?;
        let req = ExecRequest { stdin: io.stdin.is_some(), ..req };
        Ok(self.vm.exec_resizable(req, io.stdin, io.sink, io.resizes, cancel)?)
    }

    /// Runs a RUN step's command in a fresh overlay over `spec.layers`,
    /// streaming its output to `sink`. When it succeeds, its upper directory
    /// becomes a layer in `store` and the lower of what follows.
    pub fn run(
        &mut self,
        store: &Store,
        spec: RunSpec<'_>,
        layer_options: &LayerOptions,
        sink: &mut dyn FnMut(u8, &[u8]),
        cancel: &AtomicBool,
    ) -> Result<RunOutcome, SessionError> {
        self.vm.forward_ssh_agents(spec.ssh_agents.clone());
        let (req, upper) = self.request(store, spec, cancel)?;
        let status = self.vm.exec(req, None, sink, cancel)?;
        if status != (ExitStatus::Code { code: 0 }) {
            return Ok(RunOutcome { status, snapshot: None });
        }
        let exited_at = Instant::now();
        let (layer, entries, file_bytes) = self.capture(&upper, cancel, |entries, contents| {
            let (count, bytes) = (entries.len(), file_bytes(entries));
            let layer = write_layer(store, entries, contents, layer_options)?;
            Ok((layer.map(|l| LayerRef { descriptor: l.descriptor, diff_id: l.diff_id.to_string() }), count, bytes))
        })?;
        if let Some(layer) = &layer {
            self.lowers.insert(layer.diff_id.clone(), upper);
        }
        let seconds = exited_at.elapsed().as_secs_f64();
        Ok(RunOutcome { status, snapshot: Some(Snapshot { layer, entries, file_bytes, seconds }) })
    }

    /// Makes every layer of `layers` available as a lower directory: its
    /// disk mounted, or else unpacked by the agent. Says what it took.
    pub fn prepare_layers(&mut self, store: &Store, layers: &[LayerRef], cancel: &AtomicBool) -> Result<LayersReady, SessionError> {
        let started = Instant::now();
        let mut ready = LayersReady::default();
        for layer in layers {
            if self.lowers.contains_key(&layer.diff_id) {
                continue;
            }
            let dir = self.fresh_dir("l");
            if self.mount_disk(&layer.diff_id, &dir, cancel)? || self.mount_late_disk(store, layer, &dir, cancel)? {
                ready.mounted += 1;
            } else {
                let mut tar = open_layer(store, &layer.descriptor)?;
                self.vm.unpack(&dir, &mut tar, cancel)?;
                ready.unpacked += 1;
            }
            self.lowers.insert(layer.diff_id.clone(), dir);
        }
        ready.seconds = started.elapsed().as_secs_f64();
        Ok(ready)
    }

    /// The lower directories of `layers` ([`Session::prepare_layers`]
    /// first), topmost first as overlayfs wants them.
    pub fn lowers_for(&mut self, store: &Store, layers: &[LayerRef], cancel: &AtomicBool) -> Result<Vec<String>, SessionError> {
        self.prepare_layers(store, layers, cancel)?;
        Ok(layers.iter().rev().map(|l| self.lowers[&l.diff_id].clone()).collect())
    }

    /// Mounts the layer's disk at `dir` if it has one. False when it has
    /// none, or the guest cannot mount it (no erofs in its kernel, a
    /// damaged image): the caller unpacks the layer instead, and the image
    /// is dropped from the cache so the next build makes it again.
    fn mount_disk(&mut self, diff_id: &str, dir: &str, cancel: &AtomicBool) -> Result<bool, SessionError> {
        let Some((disk, image)) = self.disks.remove(diff_id) else { return Ok(false) };
        match self.vm.mount_layer(&disk, dir, cancel) {
            Ok(()) => Ok(true),
            Err(VmError::Agent { error: ClientError::RequestFailed(_), .. }) => {
                let _ = std::fs::remove_file(&image);
                // The guest may not mount EROFS at all: the rest of this
                // VM's layers are unpacked rather than made into images.
                self.spare_slots.clear();
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Mounts a layer that no disk held at boot (a later stage's base, a
    /// COPY's layer) through a spare slot, its image made now if the cache
    /// has none. False when no slot is left, disks are off, or the image
    /// cannot be made, written or mounted: the caller unpacks the layer.
    fn mount_late_disk(&mut self, store: &Store, layer: &LayerRef, dir: &str, cancel: &AtomicBool) -> Result<bool, SessionError> {
        if self.spare_slots.is_empty() || !LayerImages::enabled() {
            return Ok(false);
        }
        let Ok(image) = LayerImages::new(&crate::dirs::cache_dir()).image(store, layer) else { return Ok(false) };
        let Some(len) = LayerImages::data_len(&image) else {
            // Damaged: made again by the next build that needs it.
            let _ = std::fs::remove_file(&image);
            return Ok(false);
        };
        // A slot is used once: after a failed write it holds part of an image.
        let slot = self.spare_slots.remove(0);
        if slot.fill(&image, len).is_err() {
            return Ok(false);
        }
        self.disks.insert(layer.diff_id.clone(), (slot.serial, image));
        self.mount_disk(&layer.diff_id, dir, cancel)
    }

    /// Makes the cache volume's directory exist in the VM and returns the
    /// mount's source. A `kept` volume is unpacked from its host tar the
    /// first time this VM uses it, and again when another build saved it
    /// since; otherwise (a private mount whose volume another step holds)
    /// it is a fresh, empty instance that is never saved.
    pub fn ensure_cache(&mut self, volume: &CacheVolume, kept: bool, cancel: &AtomicBool) -> Result<String, SessionError> {
        let stamp = host_stamp(&volume.host_tar);
        if let Some(loaded) = self.caches.get(&volume.name).filter(|l| kept && l.stamp == stamp) {
            return Ok(format!("{}/{CACHE_ROOT}", loaded.dir));
        }
        let dir = self.fresh_dir("c");
        let existing = if kept { std::fs::File::open(&volume.host_tar).ok() } else { None };
        match existing {
            Some(f) => self.vm.unpack(&dir, &mut std::io::BufReader::new(f), cancel)?,
            None => self.vm.unpack(&dir, &mut std::io::Cursor::new(new_volume_tar(volume)?), cancel)?,
        }
        if kept {
            self.caches.insert(volume.name.clone(), LoadedCache { dir: dir.clone(), stamp });
        }
        Ok(format!("{dir}/{CACHE_ROOT}"))
    }

    /// Writes a cache volume back to its host tar: a temp file renamed over
    /// the old one, so a crash leaves the previous volume whole.
    pub fn save_cache(&mut self, volume: &CacheVolume, cancel: &AtomicBool) -> Result<(), SessionError> {
        let io = |source| SessionError::CacheVolume { path: volume.host_tar.clone(), source };
        let scratch_dir = self.caches.get(&volume.name).expect("saved volumes were loaded").dir.clone();
        let dir = volume.host_tar.parent().expect("volume paths have a parent");
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        self.capture(&scratch_dir, cancel, |entries, contents| {
            let opts = LayerOptions { compression: Compression::None, source_date_epoch: None };
            Ok(write_tar(entries, contents, &opts, &mut std::io::BufWriter::new(tmp.as_file_mut()))?)
        })?;
        tmp.persist(&volume.host_tar).map_err(|e| io(e.error))?;
        let stamp = host_stamp(&volume.host_tar);
        self.caches.insert(volume.name.clone(), LoadedCache { dir: scratch_dir, stamp });
        Ok(())
    }

    /// Unpacks `tar` into a fresh scratch directory and returns its path
    /// (the build context's files for a `--mount=type=bind`).
    pub fn unpack_fresh(&mut self, tar: &mut dyn Read, cancel: &AtomicBool) -> Result<String, SessionError> {
        let dir = self.fresh_dir("b");
        self.vm.unpack(&dir, tar, cancel)?;
        Ok(dir)
    }

    pub fn shutdown(self) {
        self.vm.shutdown();
    }

    /// The exec request for `spec` in a fresh overlay; returns it and its upper dir.
    fn request(&mut self, store: &Store, spec: RunSpec<'_>, cancel: &AtomicBool) -> Result<(ExecRequest, String), SessionError> {
        let lowers = self.lowers_for(store, spec.layers, cancel)?;
        let n = self.next;
        self.next += 1;
        let upper = format!("u/{n}");
        let root = RootSpec::Overlay { lowers, upper: upper.clone(), work: format!("w/{n}") };
        Ok((ExecRequest { root: Some(root), ..spec.request }, upper))
    }

    /// A scratch directory name no other use of this VM has.
    fn fresh_dir(&mut self, prefix: &str) -> String {
        let dir = format!("{prefix}/{}", self.next);
        self.next += 1;
        dir
    }

    /// Freezes the scratch file system with `dir` described (the agent's
    /// manifest), lets `read` take the entries and their contents from the
    /// disk image on the host, and thaws whatever `read` returned.
    fn capture<T>(
        &mut self,
        dir: &str,
        cancel: &AtomicBool,
        read: impl FnOnce(&mut Vec<LayerEntry>, &mut Ext4Contents) -> Result<T, SessionError>,
    ) -> Result<T, SessionError> {
        let mut entries = self.vm.snapshot(dir, cancel)?;
        let read = self.vm.scratch_image().ok_or(SessionError::NoScratch).and_then(|image| {
            let mut contents =
                Ext4Contents::open(image, dir).map_err(|source| SessionError::Read { dir: dir.to_string(), source })?;
            read(&mut entries, &mut contents)
        });
        // Thaw whatever happened, so the VM stays usable (and can shut down cleanly).
        let thawed = self.vm.thaw(cancel);
        let value = read?;
        thawed?;
        Ok(value)
    }
}

/// A file's size and mtime: whether a cache volume's tar changed.
fn host_stamp(path: &std::path::Path) -> Option<(u64, std::time::SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// The tar of a new cache volume: its root directory, owned and moded as the mount asks.
fn new_volume_tar(volume: &CacheVolume) -> Result<Vec<u8>, SessionError> {
    let mut entries = vec![LayerEntry {
        path: CACHE_ROOT.to_string(),
        kind: EntryKind::Dir { opaque: false },
        mode: volume.mode & 0o7777,
        uid: volume.uid,
        gid: volume.gid,
        mtime: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64),
        mtime_nsec: 0,
        xattrs: Vec::new(),
    }];
    let mut tar = Vec::new();
    let opts = LayerOptions { compression: Compression::None, source_date_epoch: None };
    write_tar(&mut entries, &mut NoContent, &opts, &mut tar)?;
    Ok(tar)
}

/// A build's VMs: one per platform a stage runs on (`FROM
/// --platform=$BUILDPLATFORM` stages get one of the build platform),
/// booted on the first step that needs it.
pub struct Sessions {
    memory_mib: u64,
    cpus: u32,
    by_platform: HashMap<String, Session>,
    booted: bool,
}

impl Sessions {
    pub fn new(memory_mib: u64, cpus: u32) -> Self {
        Sessions { memory_mib, cpus, by_platform: HashMap::new(), booted: false }
    }

    /// The VM for `platform`, booted now (shown as a step) if there is none.
    /// `layers` are the ones its first command runs over (attached as disks).
    pub fn get(
        &mut self,
        platform: &Platform,
        store: &Store,
        layers: &[LayerRef],
        progress: &StepLog,
        cancel: &AtomicBool,
    ) -> Result<&mut Session, SessionError> {
        let key = platform.to_string();
        if !self.by_platform.contains_key(&key) {
            let mut config = VmConfig::new(platform.clone());
            config.memory_mib = self.memory_mib;
            config.cpus = self.cpus;
            let disks = LayerDisks::for_boot(store, layers, Some(progress));
            let session = progress.step(&format!("[internal] booting a {platform} VM"), || {
                let files = crate::vm::boot_files(platform, None)?;
                Session::boot(&config, &files, disks, cancel)
            })?;
            self.by_platform.insert(key.clone(), session);
            self.booted = true;
        }
        Ok(self.by_platform.get_mut(&key).expect("inserted above"))
    }

    /// Whether any VM was booted (a fully cached build boots none).
    pub fn booted(&self) -> bool {
        self.booted
    }

    pub fn shutdown(&mut self) {
        for (_, session) in self.by_platform.drain() {
            session.shutdown();
        }
    }
}

fn file_bytes(entries: &[LayerEntry]) -> u64 {
    entries.iter().map(|e| if let EntryKind::File { size, .. } = e.kind { size } else { 0 }).sum()
}
