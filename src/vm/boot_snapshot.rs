//! Boot snapshots: a TCG guest booted once to the point where its agent
//! waits for the host, saved with QEMU's migration to a file, and restored
//! by later VMs in a fraction of a boot.
//!
//! A snapshot is only valid for the exact machine that made it, so its
//! directory is named for a hash of the QEMU command line (with the
//! per-run paths left out), the QEMU binary, the kernel and the initramfs
//! (whose name is its content hash, agent included). It holds the saved
//! state and the scratch disk as it was at that moment (restored VMs start
//! from a sparse copy). The layer disk slots are part of the machine: every
//! snapshot VM has [`super::LAYER_DISK_SLOTS`] of them, the unused ones
//! backed by empty sparse files of the run's own, of the same size as a
//! layer image, which later steps can fill ([`super::layer_slots`]).
//!
//! The agent's serial port is a socket QEMU listens on. While the template
//! boots nobody connects, so the agent's hello blocks in the guest; that is
//! the moment saved. A restored VM continues from there when the host
//! connects, and the host's hello then sets the guest's clock and reseeds
//! its random pool ([`kiln_protocol::HostMsg::Hello`]).
//!
//! Any failure to restore removes the snapshot and boots from scratch (which
//! saves a new one), so a stale or damaged snapshot costs one boot.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::arch::{self, Accel, GuestArch};
use super::client::{AgentClient, ClientError};
use super::qemu::{log_tail, QemuConfig, QemuProcess};
use super::qmp::{Qmp, QmpError};
use super::transport::{serial_port_args, Transport, TransportChoice};
use super::{check_arch, layer_slots, scratch, BootFiles, Vm, VmConfig, VmError, Watcher, CONSOLE_TAIL, LAYER_DISK_SLOTS};

/// Bump when what a snapshot holds or how it is restored changes.
const FORMAT: &str = "1";

/// Set to `0` or `off` to boot every VM from scratch.
pub const ENV_SWITCH: &str = "KILN_BOOT_SNAPSHOT";


/// Whether `config` can boot from a snapshot: TCG (accelerated guests boot
/// fast anyway), the serial transport (vhost-user vsock cannot be
/// migrated), a scratch disk and no host port forwards (the user network's
/// options are part of the machine).
pub fn eligible(config: &VmConfig, accel: Accel) -> bool {
    accel == Accel::Tcg
        && arch::for_platform(&config.platform).is_ok_and(|a| a.restores_from_snapshots())
        && matches!(config.transport, TransportChoice::Auto | TransportChoice::Serial)
        && config.scratch
        && config.netdev_extra.is_empty()
        // Shared directories are vhost-user devices, whose state a snapshot cannot hold.
        && config.shares.is_empty()
        && config.layer_disks.len() <= LAYER_DISK_SLOTS
        && !matches!(std::env::var(ENV_SWITCH).as_deref(), Ok("0" | "off" | "false"))
}

/// Boots `config` from its snapshot, or boots it from scratch and saves
/// the snapshot on the way.
pub fn boot(config: &VmConfig, files: &BootFiles, boot_timeout: Duration, cancel: &AtomicBool) -> Result<Vm, VmError> {
    let arch = arch::for_platform(&config.platform)?;
    let root = crate::dirs::cache_dir().join("vm-snapshots");
    // Unused slots were one shared empty file here before they became the
    // run's own (so that a later step can fill one).
    let _ = fs::remove_file(root.join("empty-layer-disk.img"));
    let key = key(config, files, arch);
    let dir = root.join(format!("{}-{key}", arch.key()));
    if dir.join("state").is_file() {
        match restore(config, files, arch, &dir, cancel) {
            Ok(vm) => return Ok(vm),
            Err(VmError::Interrupted) => return Err(VmError::Interrupted),
            Err(_) => {
                let _ = fs::remove_dir_all(&dir);
            }
        }
    }
    boot_and_save(config, files, arch, &dir, boot_timeout, cancel)
}

/// The parts of a VM's run directory a snapshot boot uses.
struct Run {
    dir: tempfile::TempDir,
    scratch: PathBuf,
    console: PathBuf,
    agent_sock: PathBuf,
    qmp_sock: PathBuf,
}

impl Run {
    fn new() -> Result<Run, VmError> {
        let dir = super::new_run_dir()?;
        let p = |name: &str| dir.path().join(name);
        Ok(Run { scratch: p("scratch.img"), console: p("console.log"), agent_sock: p("agent.sock"), qmp_sock: p("qmp.sock"), dir })
    }
}

/// The QEMU arguments of a snapshot VM whose per-run files are in `run`.
fn qemu_config<'a>(
    config: &'a VmConfig,
    files: &'a BootFiles,
    arch: &'a dyn GuestArch,
    slots: &'a [PathBuf],
    scratch: &'a Path,
    console: &'a Path,
    extra: &'a [String],
) -> QemuConfig<'a> {
    QemuConfig {
        arch,
        accel: Accel::Tcg,
        tcg_cpu: config.tcg_cpu.as_deref(),
        memory_mib: config.memory_mib,
        cpus: config.cpus,
        kernel: &files.kernel,
        initramfs: &files.initramfs,
        scratch: Some(scratch),
        console_log: console,
        transport: Transport::Serial,
        transport_args: extra,
        network: config.network,
        netdev_extra: &config.netdev_extra,
        extra_cmdline: &config.extra_cmdline,
        layer_disks: slots,
        shared_memory: false,
        device_args: &[],
    }
}

/// The serial port as a socket QEMU listens on, and the QMP socket.
fn device_args(agent_sock: &Path, qmp_sock: &Path, arch: &dyn GuestArch) -> Vec<String> {
    let chardev = format!("socket,id=agent,path={},server=on,wait=off", agent_sock.display());
    let mut args = serial_port_args(&chardev, arch.virtio_bus());
    args.extend(["-qmp".into(), format!("unix:{},server=on,wait=off", qmp_sock.display())]);
    args
}

/// The snapshot's name: everything that shapes the saved machine.
fn key(config: &VmConfig, files: &BootFiles, arch: &dyn GuestArch) -> String {
    let canonical = Path::new("/run");
    let slot_names: Vec<PathBuf> = (0..LAYER_DISK_SLOTS).map(|i| PathBuf::from(format!("/slot{i}"))).collect();
    let extra = device_args(&canonical.join("agent.sock"), &canonical.join("qmp.sock"), arch);
    let (scratch, console) = (canonical.join("scratch.img"), canonical.join("console.log"));
    let args = qemu_config(config, files, arch, &slot_names, &scratch, &console, &extra).args();
    let mut hash = Sha256::new();
    hash.update(FORMAT);
    for arg in &args {
        hash.update(arg.as_bytes());
        hash.update([0]);
    }
    // The emulator and the boot files, by identity (the initramfs is named for its content).
    for path in [super::qemu::locate(arch.qemu_binary()).ok(), Some(files.kernel.clone()), Some(files.initramfs.clone())].into_iter().flatten() {
        if let Ok(meta) = fs::metadata(&path) {
            let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            hash.update(format!("{}:{}:{:?}", path.display(), meta.len(), mtime));
        }
    }
    hex::encode(&hash.finalize()[..12])
}

/// Restores the snapshot in `dir` into a fresh run directory.
fn restore(
    config: &VmConfig,
    files: &BootFiles,
    arch: &'static dyn GuestArch,
    dir: &Path,
    cancel: &AtomicBool,
) -> Result<Vm, VmError> {
    let run = Run::new()?;
    let (slots, spare) = layer_slots::fill_up(&config.layer_disks, run.dir.path()).map_err(VmError::RunDir)?;
    scratch::copy_sparse(&dir.join("scratch.img"), &run.scratch).map_err(VmError::RunDir)?;
    let mut extra = device_args(&run.agent_sock, &run.qmp_sock, arch);
    extra.extend(["-incoming".to_string(), format!("file:{}", dir.join("state").display())]);
    let qemu_config = qemu_config(config, files, arch, &slots, &run.scratch, &run.console, &extra);
    let started = Instant::now();
    let mut qemu = QemuProcess::spawn(&qemu_config, &run.dir.path().join("qemu.stderr"))?;
    let timeout = Duration::from_secs(20);
    let resumed = (|| {
        let mut qmp = Qmp::connect(&run.qmp_sock, timeout)?;
        qmp.wait_for_migration(timeout)?;
        qmp.execute("cont", None)
    })();
    if let Err(e) = resumed {
        return Err(qmp_failed(e, &run.console));
    }
    finish(config, run, &mut qemu, started, timeout, cancel)
        .map(|(client, run)| Vm::assemble(client, qemu, run.dir, run.scratch, spare, started, arch))
}

/// Boots from scratch with the serial port unconnected, saves the machine
/// once the agent waits for the host, then lets it go on.
fn boot_and_save(
    config: &VmConfig,
    files: &BootFiles,
    arch: &'static dyn GuestArch,
    dir: &Path,
    boot_timeout: Duration,
    cancel: &AtomicBool,
) -> Result<Vm, VmError> {
    let run = Run::new()?;
    let (slots, spare) = layer_slots::fill_up(&config.layer_disks, run.dir.path()).map_err(VmError::RunDir)?;
    scratch::create(&run.scratch)?;
    let extra = device_args(&run.agent_sock, &run.qmp_sock, arch);
    let qemu_config = qemu_config(config, files, arch, &slots, &run.scratch, &run.console, &extra);
    let started = Instant::now();
    let mut qemu = QemuProcess::spawn(&qemu_config, &run.dir.path().join("qemu.stderr"))?;
    let deadline = started + boot_timeout;
    {
        let mut watcher = Watcher::new(&mut qemu, run.dir.path(), cancel);
        loop {
            if fs::read_to_string(&run.console).is_ok_and(|log| log.contains(kiln_protocol::AGENT_WAITS_FOR_HOST)) {
                break;
            }
            if let Err(e) = watcher.check() {
                return Err(watcher.error(ClientError::Aborted(e), &run.console));
            }
            if Instant::now() > deadline {
                return Err(VmError::BootTimeout {
                    timeout: boot_timeout,
                    accel: Accel::Tcg.name(),
                    platform: config.platform.to_string(),
                    console: log_tail(&run.console, CONSOLE_TAIL),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // A snapshot that cannot be saved only costs the next VM a full boot.
    let mut qmp = Qmp::connect(&run.qmp_sock, Duration::from_secs(10)).map_err(|e| qmp_failed(e, &run.console))?;
    if let Err(e) = save(&mut qmp, &run, dir) {
        eprintln!("kiln: note: could not save a boot snapshot ({e}); the next VM boots from scratch");
    }
    qmp.execute("cont", None).map_err(|e| qmp_failed(e, &run.console))?;
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5));
    finish(config, run, &mut qemu, started, remaining, cancel)
        .map(|(client, run)| Vm::assemble(client, qemu, run.dir, run.scratch, spare, started, arch))
}

/// A QMP failure as the user sees it, with the guest's last console lines.
fn qmp_failed(e: QmpError, console: &Path) -> VmError {
    VmError::Agent { error: ClientError::Aborted(e.to_string()), console: log_tail(console, CONSOLE_TAIL) }
}

/// Stops the machine and writes its state and scratch disk into `dir`
/// (through a temp dir renamed into place).
fn save(qmp: &mut Qmp, run: &Run, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let parent = dir.parent().expect("snapshot dirs have a parent");
    fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new().prefix(".tmp-").tempdir_in(parent)?;
    qmp.execute("stop", None)?;
    let uri = format!("file:{}", tmp.path().join("state").display());
    qmp.execute("migrate", Some(serde_json::json!({ "uri": uri })))?;
    qmp.wait_for_migration(Duration::from_secs(60))?;
    // Stopped and migrated: the scratch disk is as the saved machine knows it.
    scratch::copy_sparse(&run.scratch, &tmp.path().join("scratch.img"))?;
    // Snapshots of other machines for this architecture are stale now.
    let arch_prefix = dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.split('-').next()).unwrap_or_default();
    if let Ok(entries) = fs::read_dir(parent) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{arch_prefix}-")) && entry.path() != dir {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    match fs::rename(tmp.path(), dir) {
        Ok(()) => {
            let _ = tmp.keep();
            Ok(())
        }
        // Another kiln saved the same machine first: theirs is as good.
        Err(_) if dir.join("state").is_file() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Connects to the agent's port and shakes hands.
fn finish(
    config: &VmConfig,
    run: Run,
    qemu: &mut QemuProcess,
    started: Instant,
    timeout: Duration,
    cancel: &AtomicBool,
) -> Result<(AgentClient, Run), VmError> {
    let mut watcher = Watcher::new(qemu, run.dir.path(), cancel);
    let stream = match UnixStream::connect(&run.agent_sock) {
        Ok(stream) => stream,
        Err(e) => return Err(watcher.error(ClientError::Aborted(format!("connecting to the agent port: {e}")), &run.console)),
    };
    let reader = stream.try_clone().map_err(VmError::RunDir)?;
    let remaining = timeout.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
    let client = match AgentClient::connect(Box::new(reader), Box::new(stream), remaining, &mut || watcher.check()) {
        Ok(client) => client,
        Err(error) => return Err(watcher.error(error, &run.console)),
    };
    check_arch(&client, config)?;
    Ok((client, run))
}
