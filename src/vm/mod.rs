//! Guest VMs: kernels, QEMU, the transport to the guest agent.
//!
//! [`Vm::boot`] starts QEMU with the guest kernel and an initramfs whose
//! `/init` is kiln's agent, waits for the agent to connect and shake hands,
//! and then runs requests ([`Vm::exec`], [`Vm::unpack`]). Dropping a `Vm`
//! always stops QEMU and any helper process and removes its run directory.

pub mod agents;
pub mod arch;
#[cfg(target_os = "linux")]
mod boot_snapshot;
pub mod client;
pub mod initramfs;
pub mod kernel;
pub mod layer_slots;
pub mod process;
pub mod qemu;
#[cfg(target_os = "linux")]
mod qmp;
pub mod scratch;
pub mod shares;
pub mod transport;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kiln_protocol::{ExecRequest, ExitStatus, LayerEntry};

use crate::platform::Platform;
use arch::{Accel, GuestArch};
use client::{AgentClient, ClientError};
use qemu::{log_tail, QemuConfig, QemuProcess};
use transport::{HostEnd, Transport, TransportChoice};

/// How long a hardware accelerator gets to boot a guest before kiln falls back to TCG.
const ACCEL_PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Lines of guest console shown when something goes wrong.
const CONSOLE_TAIL: usize = 25;

/// Layer disks a VM can have (each takes a PCI slot); a boot snapshot's
/// machine has exactly this many.
pub const LAYER_DISK_SLOTS: usize = 16;

/// Every layer disk's size: images are padded to it (sparsely), so a slot
/// of a restored machine can hold any of them.
pub const LAYER_DISK_SIZE: u64 = 64 << 30;

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub platform: Platform,
    pub memory_mib: u64,
    pub cpus: u32,
    pub transport: TransportChoice,
    pub boot_timeout: Duration,
    /// Force an accelerator; `None` picks the fastest usable one.
    pub accel: Option<Accel>,
    /// QEMU user networking (NAT to the host's network).
    pub network: bool,
    /// Attach a fresh scratch disk (ext4, mounted at /scratch in the guest).
    pub scratch: bool,
    /// `-netdev user` host forwards, e.g. `hostfwd=tcp:127.0.0.1:8080-:80`.
    pub netdev_extra: Vec<String>,
    /// Appended to the guest kernel command line (`KILN_GUEST_CMDLINE`).
    pub extra_cmdline: String,
    /// The CPU model under TCG instead of the architecture's default
    /// (`KILN_QEMU_CPU`; for experiments and benchmarks).
    pub tcg_cpu: Option<String>,
    /// Read-only disks (EROFS layer images), attached with serials
    /// [`layer_disk_serial`]`(0..)` in this order.
    pub layer_disks: Vec<PathBuf>,
    /// Host directories shared live, as virtio-fs tags [`shares::tag`]`(0..)`.
    pub shares: Vec<shares::Share>,
}

/// The virtio serial of the `index`th of [`VmConfig::layer_disks`].
pub fn layer_disk_serial(index: usize) -> String {
    format!("kiln-layer-{index}")
}

impl VmConfig {
    pub fn new(platform: Platform) -> Self {
        VmConfig {
            platform,
            memory_mib: 2048,
            cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(2).min(4),
            transport: TransportChoice::Auto,
            boot_timeout: Duration::from_secs(90),
            accel: None,
            network: true,
            scratch: true,
            netdev_extra: Vec::new(),
            extra_cmdline: std::env::var("KILN_GUEST_CMDLINE").unwrap_or_default(),
            tcg_cpu: std::env::var("KILN_QEMU_CPU").ok().filter(|c| !c.is_empty()),
            layer_disks: Vec::new(),
            shares: Vec::new(),
        }
    }
}

/// The kernel and initramfs to boot.
#[derive(Debug, Clone)]
pub struct BootFiles {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Arch(#[from] arch::UnsupportedPlatform),
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    #[error(transparent)]
    Qemu(#[from] qemu::QemuError),
    #[error(transparent)]
    Scratch(#[from] scratch::ScratchError),
    #[error(transparent)]
    Shares(#[from] shares::ShareError),
    #[error("creating the VM's run directory: {0}")]
    RunDir(std::io::Error),
    #[error("the guest did not come up within {timeout:?} ({accel} emulation of {platform}); last console lines:\n{console}")]
    BootTimeout { timeout: Duration, accel: &'static str, platform: String, console: String },
    /// `cause` is the guest kernel's panic message when it panicked, or
    /// QEMU's exit status.
    #[error("the VM stopped unexpectedly: {cause}; last console lines:\n{console}")]
    Died { cause: String, console: String },
    #[error("{error}; last console lines:\n{console}")]
    Agent { error: ClientError, console: String },
    #[error("the guest is {got}, not {want}: the kernel or agent is for the wrong architecture")]
    WrongArch { got: String, want: String },
    #[error("interrupted")]
    Interrupted,
}

impl VmError {
    /// QEMU exited: names the guest kernel's panic when there was one (the
    /// kernel reboots on panic, and QEMU's -no-reboot turns that into a clean exit).
    fn died(qemu: &str, status: &str, console: &Path) -> VmError {
        let cause = match qemu::kernel_panic(console) {
            Some(message) => format!("the guest kernel panicked ({message})"),
            None => format!("{qemu} {status}"),
        };
        VmError::Died { cause, console: log_tail(console, CONSOLE_TAIL) }
    }
}

/// A running VM with a connected agent.
pub struct Vm {
    client: AgentClient,
    qemu: QemuProcess,
    /// The listener QEMU or the guest connected to (none when the host
    /// connected to QEMU's socket, as after a boot snapshot).
    _host_end: Option<HostEnd>,
    /// virtiofsd processes of shared directories; dropped after QEMU stops.
    _shares: shares::ShareDaemons,
    run_dir: tempfile::TempDir,
    scratch: Option<PathBuf>,
    pub transport: Transport,
    pub accel: Accel,
    /// From QEMU start to the agent's hello.
    pub boot_time: Duration,
    arch: &'static dyn GuestArch,
    /// Commands run under the 32-bit personality ([`arch::runs_as_linux32`]).
    linux32: bool,
    /// Layer disk slots no layer took at boot (boot-snapshot machines only).
    spare_slots: Vec<layer_slots::SpareSlot>,
}

impl Vm {
    pub fn boot(config: &VmConfig, files: &BootFiles, cancel: &AtomicBool) -> Result<Vm, VmError> {
        let arch = arch::for_platform(&config.platform)?;
        let cache = crate::dirs::cache_dir();
        let accel = config.accel.unwrap_or_else(|| arch::best_accel(arch, &cache));
        let mut vm = Self::boot_accelerated(config, files, arch, accel, &cache, cancel)?;
        vm.linux32 = arch::runs_as_linux32(&config.platform);
        Ok(vm)
    }

    /// Boots with `accel`, falling back to TCG once if it cannot run the guest.
    fn boot_accelerated(
        config: &VmConfig,
        files: &BootFiles,
        arch: &dyn GuestArch,
        accel: Accel,
        cache: &Path,
        cancel: &AtomicBool,
    ) -> Result<Vm, VmError> {
        if config.accel.is_some() || accel == Accel::Tcg {
            return Self::boot_with(config, files, accel, config.boot_timeout, cancel);
        }
        // An accelerator that opens fine can still fail to run a guest (nested
        // virtualisation, for one): give it a short deadline, then fall back
        // to TCG and remember the verdict until the host reboots.
        let probe = config.boot_timeout.min(ACCEL_PROBE_TIMEOUT);
        match Self::boot_with(config, files, accel, probe, cancel) {
            Err(VmError::BootTimeout { .. }) => {
                arch::mark_unusable(accel, arch.key(), cache);
                eprintln!(
                    "kiln: warning: {} did not boot the {} guest within {probe:?}; using TCG (remembered until the host reboots)",
                    accel.name(),
                    config.platform
                );
                Self::boot_with(config, files, Accel::Tcg, config.boot_timeout, cancel)
            }
            other => other,
        }
    }

    fn boot_with(
        config: &VmConfig,
        files: &BootFiles,
        accel: Accel,
        boot_timeout: Duration,
        cancel: &AtomicBool,
    ) -> Result<Vm, VmError> {
        let arch = arch::for_platform(&config.platform)?;
        #[cfg(target_os = "linux")]
        if boot_snapshot::eligible(config, accel) {
            return boot_snapshot::boot(config, files, boot_timeout, cancel);
        }
        let transport = transport::choose(config.transport, arch.no_vsock())?;
        let run_dir = new_run_dir()?;
        let scratch = if config.scratch {
            let path = run_dir.path().join("scratch.img");
            scratch::create(&path)?;
            Some(path)
        } else {
            None
        };
        let host_end = HostEnd::setup(transport, run_dir.path(), arch.virtio_bus())?;
        let shares = shares::ShareDaemons::start(&config.shares, run_dir.path(), arch.virtio_bus())?;
        let console_log = run_dir.path().join("console.log");
        let qemu_config = QemuConfig {
            arch,
            accel,
            tcg_cpu: config.tcg_cpu.as_deref(),
            memory_mib: config.memory_mib,
            cpus: config.cpus,
            kernel: &files.kernel,
            initramfs: &files.initramfs,
            scratch: scratch.as_deref(),
            console_log: &console_log,
            transport,
            transport_args: &host_end.qemu_args,
            network: config.network,
            netdev_extra: &config.netdev_extra,
            extra_cmdline: &config.extra_cmdline,
            layer_disks: &config.layer_disks,
            shared_memory: host_end.needs_shared_memory() || !config.shares.is_empty(),
            device_args: &shares.qemu_args,
        };
        let started = Instant::now();
        let mut qemu = QemuProcess::spawn(&qemu_config, &run_dir.path().join("qemu.stderr"))?;
        let deadline = started + boot_timeout;
        let timeout_error = || VmError::BootTimeout {
            timeout: boot_timeout,
            accel: accel.name(),
            platform: config.platform.to_string(),
            console: log_tail(&console_log, CONSOLE_TAIL),
        };
        let qemu_pid = qemu.pid();
        let mut watcher = Watcher::new(&mut qemu, run_dir.path(), cancel);
        let conn = match host_end.accept(deadline, Some(qemu_pid), &mut || watcher.check()) {
            Ok(Some(conn)) => conn,
            Ok(None) => return Err(timeout_error()),
            Err(msg) => return Err(watcher.error(ClientError::Aborted(msg), &console_log)),
        };
        let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        let client = match AgentClient::connect(conn.reader, conn.writer, remaining, &mut || watcher.check()) {
            Ok(client) => client,
            Err(ClientError::HelloTimeout(_)) => return Err(timeout_error()),
            Err(error) => return Err(watcher.error(error, &console_log)),
        };
        let boot_time = started.elapsed();
        check_arch(&client, config)?;
        Ok(Vm {
            client,
            qemu,
            _host_end: Some(host_end),
            _shares: shares,
            run_dir,
            scratch,
            transport,
            accel,
            boot_time,
            arch,
            linux32: false,
            spare_slots: Vec::new(),
        })
    }

    /// A TCG VM over the serial transport whose agent shook hands (`started`: QEMU's start).
    #[cfg(target_os = "linux")]
    fn assemble(
        client: AgentClient,
        qemu: QemuProcess,
        run_dir: tempfile::TempDir,
        scratch: PathBuf,
        spare_slots: Vec<layer_slots::SpareSlot>,
        started: Instant,
        arch: &'static dyn GuestArch,
    ) -> Vm {
        let boot_time = started.elapsed();
        let (transport, accel) = (Transport::Serial, Accel::Tcg);
        let _shares = shares::ShareDaemons::default();
        Vm {
            client,
            qemu,
            _host_end: None,
            _shares,
            run_dir,
            scratch: Some(scratch),
            transport,
            accel,
            boot_time,
            arch,
            linux32: false,
            spare_slots,
        }
    }

    /// The layer disk slots no layer took at boot, for layers that later
    /// steps need (see [`layer_slots`]); empty for machines without slots.
    pub fn take_spare_slots(&mut self) -> Vec<layer_slots::SpareSlot> {
        std::mem::take(&mut self.spare_slots)
    }

    pub fn agent_kernel(&self) -> &str {
        &self.client.hello().kernel
    }

    pub fn arch_key(&self) -> &'static str {
        self.arch.key()
    }

    /// The VM's private directory on the host (console log, sockets, scratch disk).
    pub fn run_dir(&self) -> &Path {
        self.run_dir.path()
    }

    pub fn qemu_pid(&self) -> u32 {
        self.qemu.pid()
    }

    pub fn exec(
        &mut self,
        req: ExecRequest,
        stdin: Option<Box<dyn Read + Send>>,
        sink: &mut dyn FnMut(u8, &[u8]),
        cancel: &AtomicBool,
    ) -> Result<ExitStatus, VmError> {
        self.exec_resizable(req, stdin, sink, &mut || None, cancel)
    }

    /// [`Vm::exec`] for a command with a terminal (`req.tty`), passing on
    /// the sizes `resizes` reports while it runs.
    pub fn exec_resizable(
        &mut self,
        req: ExecRequest,
        stdin: Option<Box<dyn Read + Send>>,
        sink: &mut dyn FnMut(u8, &[u8]),
        resizes: client::Resizes,
        cancel: &AtomicBool,
    ) -> Result<ExitStatus, VmError> {
        let req = ExecRequest { linux32: self.linux32, ..req };
        let mut watcher = Watcher::new(&mut self.qemu, self.run_dir.path(), cancel);
        let result = self.client.exec_resizable(req, stdin, sink, resizes, &mut || watcher.check());
        result.map_err(|e| watcher.error(e, &self.run_dir.path().join("console.log")))
    }

    /// The host ssh agent sockets the next command's ssh mounts forward to.
    pub fn forward_ssh_agents(&mut self, sockets: Vec<std::path::PathBuf>) {
        self.client.forward_ssh_agents(sockets);
    }

    /// Streams a tar into the guest, unpacked as root under `dest` on the scratch disk.
    pub fn unpack(&mut self, dest: &str, tar: &mut dyn Read, cancel: &AtomicBool) -> Result<(), VmError> {
        let mut watcher = Watcher::new(&mut self.qemu, self.run_dir.path(), cancel);
        let result = self.client.unpack(dest, tar, &mut || watcher.check());
        result.map_err(|e| watcher.error(e, &self.run_dir.path().join("console.log")))
    }

    /// Describes the upper directory `upper` (relative to the scratch disk)
    /// of a finished overlay step. The scratch file system stays frozen, so
    /// [`Vm::scratch_image`] can be read consistently, until [`Vm::thaw`].
    pub fn snapshot(&mut self, upper: &str, cancel: &AtomicBool) -> Result<Vec<LayerEntry>, VmError> {
        let mut watcher = Watcher::new(&mut self.qemu, self.run_dir.path(), cancel);
        let result = self.client.snapshot(upper, &mut || watcher.check());
        result.map_err(|e| watcher.error(e, &self.run_dir.path().join("console.log")))
    }

    /// Mounts the layer disk with serial `disk` (see [`VmConfig::layer_disks`])
    /// read-only at `dest` on the scratch disk.
    pub fn mount_layer(&mut self, disk: &str, dest: &str, cancel: &AtomicBool) -> Result<(), VmError> {
        let mut watcher = Watcher::new(&mut self.qemu, self.run_dir.path(), cancel);
        let result = self.client.mount_layer(disk, dest, &mut || watcher.check());
        result.map_err(|e| watcher.error(e, &self.run_dir.path().join("console.log")))
    }

    /// Lets the guest write to its scratch disk again after [`Vm::snapshot`].
    pub fn thaw(&mut self, cancel: &AtomicBool) -> Result<(), VmError> {
        let mut watcher = Watcher::new(&mut self.qemu, self.run_dir.path(), cancel);
        let result = self.client.thaw(&mut || watcher.check());
        result.map_err(|e| watcher.error(e, &self.run_dir.path().join("console.log")))
    }

    /// The scratch disk image (ext4) on the host, when the VM has one.
    pub fn scratch_image(&self) -> Option<&Path> {
        self.scratch.as_deref()
    }

    /// Powers the guest off cleanly (the agent syncs first) and waits for QEMU.
    pub fn shutdown(mut self) {
        let _ = self.client.shutdown();
        self.qemu.stop(Duration::from_secs(10));
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.qemu.try_wait().is_none() {
            let _ = self.client.shutdown();
            self.qemu.stop(Duration::from_secs(5));
        }
    }
}

/// Why a wait on the guest was abandoned.
enum Abort {
    Interrupted,
    QemuExited { qemu: String, status: String },
}

/// Watches QEMU and the cancel flag during a wait; remembers why it stopped.
struct Watcher<'a> {
    qemu: &'a mut QemuProcess,
    stderr_path: PathBuf,
    cancel: &'a AtomicBool,
    abort: Option<Abort>,
}

impl<'a> Watcher<'a> {
    fn new(qemu: &'a mut QemuProcess, run_dir: &Path, cancel: &'a AtomicBool) -> Self {
        Watcher { qemu, stderr_path: run_dir.join("qemu.stderr"), cancel, abort: None }
    }

    fn check(&mut self) -> Result<(), String> {
        if self.cancel.load(Ordering::SeqCst) {
            self.abort = Some(Abort::Interrupted);
            return Err("interrupted".into());
        }
        let Some(status) = self.qemu.try_wait() else { return Ok(()) };
        let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let stderr = stderr.trim();
        let status = if stderr.is_empty() { format!("{status}") } else { format!("{status} ({stderr})") };
        self.abort = Some(Abort::QemuExited { qemu: self.qemu.binary.clone(), status });
        Err("qemu exited".into())
    }

    /// Turns a failed wait into the error the user should see.
    fn error(mut self, error: ClientError, console: &Path) -> VmError {
        if self.abort.is_none() && matches!(error, ClientError::Disconnected | ClientError::Send(_)) {
            // A closed connection usually means QEMU died; give it a moment to be reaped.
            for _ in 0..20 {
                if self.qemu.try_wait().is_some() {
                    let _ = self.check();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        match self.abort {
            Some(Abort::Interrupted) => VmError::Interrupted,
            Some(Abort::QemuExited { qemu, status }) => {
                VmError::died(&qemu, &status, console)
            }
            None => VmError::Agent { error, console: log_tail(console, CONSOLE_TAIL) },
        }
    }
}

const RUN_DIR_PREFIX: &str = "kiln-vm-";

/// The agent that answered must be of the platform asked for.
fn check_arch(client: &AgentClient, config: &VmConfig) -> Result<(), VmError> {
    let want = arch::for_platform(&config.platform)?.machine();
    match &client.hello().arch {
        got if got == want => Ok(()),
        got => Err(VmError::WrongArch { got: got.clone(), want: want.to_string() }),
    }
}

/// A fresh private run directory for a VM, after removing those of killed
/// kiln processes (their QEMU died with them through the parent-death signal).
fn new_run_dir() -> Result<tempfile::TempDir, VmError> {
    crate::dirs::remove_stale(&std::env::temp_dir(), RUN_DIR_PREFIX);
    tempfile::Builder::new().prefix(&crate::dirs::owned_prefix(RUN_DIR_PREFIX)).tempdir().map_err(VmError::RunDir)
}

#[derive(Debug, thiserror::Error)]
pub enum BootFilesError {
    #[error(transparent)]
    Arch(#[from] arch::UnsupportedPlatform),
    #[error(transparent)]
    Agent(#[from] agents::AgentError),
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    Initramfs(#[from] initramfs::InitramfsError),
}

/// The kernel (fetched, verified and cached on first use, or `kernel_image`
/// when given) and the initramfs carrying this binary's agent for `platform`.
pub fn boot_files(platform: &Platform, kernel_image: Option<&Path>) -> Result<BootFiles, BootFilesError> {
    let arch = arch::for_platform(platform)?;
    let agent = agents::agent_binary(arch.key())?;
    let mut opts = kernel::KernelOptions::from_env();
    if let Some(image) = kernel_image {
        opts.kernel_image = Some(image.to_path_buf());
    }
    let kernel = kernel::ensure_kernel(platform, &opts)?;
    let initramfs = initramfs::ensure_initramfs(&agent, &kernel, &opts.cache_dir)?;
    Ok(BootFiles { kernel: kernel.image, initramfs })
}

/// Boots the same kernel and initramfs with no agent work (the agent powers
/// off at once) and returns the wall time until QEMU exits: the reference
/// that kiln's boot-to-agent-ready time is measured against.
pub fn reference_boot(config: &VmConfig, files: &BootFiles) -> Result<Duration, VmError> {
    let arch = arch::for_platform(&config.platform)?;
    let run_dir = tempfile::Builder::new().prefix(RUN_DIR_PREFIX).tempdir().map_err(VmError::RunDir)?;
    let console_log = run_dir.path().join("console.log");
    let qemu_config = QemuConfig {
        arch,
        tcg_cpu: config.tcg_cpu.as_deref(),
        accel: config.accel.unwrap_or_else(|| arch::best_accel(arch, &crate::dirs::cache_dir())),
        memory_mib: config.memory_mib,
        cpus: config.cpus,
        kernel: &files.kernel,
        initramfs: &files.initramfs,
        scratch: None,
        console_log: &console_log,
        transport: Transport::Serial,
        transport_args: &[],
        network: false,
        netdev_extra: &[],
        extra_cmdline: kiln_protocol::CMDLINE_POWEROFF,
        layer_disks: &[],
        shared_memory: false,
        device_args: &[],
    };
    let started = Instant::now();
    let mut qemu = QemuProcess::spawn(&qemu_config, &run_dir.path().join("qemu.stderr"))?;
    let status = qemu.stop(config.boot_timeout);
    if !status.success() {
        return Err(VmError::died(&qemu.binary, &status.to_string(), &console_log));
    }
    Ok(started.elapsed())
}
