//! Building the QEMU command line and running the process.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use super::arch::{Accel, GuestArch};
use super::transport::Transport;

/// Kernel parameters that shorten the guest's boot without changing what
/// it runs: `cryptomgr.notests` skips the crypto self-tests (about 0.3 s
/// of a 1.6 s arm64 TCG boot).
const BOOT_TUNING: &str = "cryptomgr.notests=1";

/// The host as the guest reaches it on QEMU's user network (`-netdev user`'s
/// default gateway; the agent routes through it): docker's `host-gateway`.
pub const HOST_GATEWAY: &str = "10.0.2.2";

/// Everything that decides the QEMU command line.
pub struct QemuConfig<'a> {
    pub arch: &'a dyn GuestArch,
    pub accel: Accel,
    /// The CPU model under TCG instead of the architecture's default.
    pub tcg_cpu: Option<&'a str>,
    pub memory_mib: u64,
    pub cpus: u32,
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub scratch: Option<&'a Path>,
    pub console_log: &'a Path,
    pub transport: Transport,
    pub transport_args: &'a [String],
    pub network: bool,
    /// Extra `-netdev user` options such as `hostfwd=tcp:127.0.0.1:8080-:80`.
    pub netdev_extra: &'a [String],
    /// Appended to the kernel command line.
    pub extra_cmdline: &'a str,
    /// Read-only disks after the scratch disk, serials `kiln-layer-N`.
    pub layer_disks: &'a [PathBuf],
    /// Guest RAM in a shared memfd: vhost-user daemons (vhost-device-vsock,
    /// virtiofsd) read and write it directly.
    pub shared_memory: bool,
    /// Extra arguments for devices besides the transport (shared directories).
    pub device_args: &'a [String],
}

impl QemuConfig<'_> {
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> =
            ["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"].map(String::from).to_vec();
        let scratch_flag = if self.scratch.is_some() { kiln_protocol::CMDLINE_SCRATCH } else { "" };
        let cmdline = format!(
            "console={} panic=-1 quiet loglevel=4 {BOOT_TUNING} kiln.transport={} {scratch_flag} {}",
            self.arch.console(),
            self.transport.cmdline_value(),
            self.extra_cmdline
        );
        args.extend(self.arch.machine_args(self.accel, self.tcg_cpu.unwrap_or(self.arch.tcg_cpu())));
        args.extend([
            "-m".into(),
            format!("{}M", self.memory_mib),
            "-smp".into(),
            self.cpus.to_string(),
            "-serial".into(),
            format!("file:{}", self.console_log.display()),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initramfs.display().to_string(),
            "-append".into(),
            cmdline,
        ]);
        if self.shared_memory {
            // `-machine memory-backend=` rather than a NUMA node: s390x has no NUMA.
            args.extend([
                "-object".into(),
                format!("memory-backend-memfd,id=mem,size={}M,share=on", self.memory_mib),
                "-machine".into(),
                "memory-backend=mem".into(),
            ]);
        }
        if let Some(scratch) = self.scratch {
            // The scratch disk is disposable: cache=unsafe makes the guest's
            // fsyncs free, and the host reads it only after the guest syncs.
            args.extend([
                "-drive".into(),
                format!("file={},if=none,id=scratch,format=raw,cache=unsafe,discard=unmap", option_value(scratch)),
                "-device".into(),
                format!("{},drive=scratch,serial={}", self.arch.virtio_bus().device("virtio-blk"), kiln_protocol::SCRATCH_DISK_SERIAL),
            ]);
        }
        for (index, disk) in self.layer_disks.iter().enumerate() {
            // Shared, read-only and never written: several VMs may use one image.
            args.extend([
                "-drive".into(),
                format!("file={},if=none,id=layer{index},format=raw,readonly=on", option_value(disk)),
                "-device".into(),
                format!("{},drive=layer{index},serial={}", self.arch.virtio_bus().device("virtio-blk"), super::layer_disk_serial(index)),
            ]);
        }
        if self.network {
            let mut netdev = "user,id=net0".to_string();
            for extra in self.netdev_extra {
                netdev.push(',');
                netdev.push_str(extra);
            }
            args.extend(["-netdev".into(), netdev, "-device".into(), format!("{},netdev=net0", self.arch.virtio_bus().device("virtio-net"))]);
        }
        args.extend(self.transport_args.iter().cloned());
        args.extend(self.device_args.iter().cloned());
        args
    }
}

/// A path as a QEMU option value: commas are doubled, or they would end it.
fn option_value(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// The host kinds whose QEMU installs kiln knows where to look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostOs {
    Linux,
    MacOs,
    Windows,
}

impl HostOs {
    pub fn current() -> Self {
        if cfg!(target_os = "macos") {
            HostOs::MacOs
        } else if cfg!(windows) {
            HostOs::Windows
        } else {
            HostOs::Linux
        }
    }

    /// How to get the emulator `binary` on this kind of host.
    pub fn install_hint(self, binary: &str) -> String {
        match self {
            HostOs::Linux => format!(
                "on Debian 12: apt-get install -t bookworm-backports {}, or scripts/setup-host.sh",
                debian_package(binary)
            ),
            HostOs::MacOs => "brew install qemu (or MacPorts' qemu), or set KILN_QEMU_DIR to the folder holding qemu-system-*".into(),
            HostOs::Windows => "install QEMU from https://qemu.weilnetz.de/w64/ into C:\\Program Files\\qemu, or set KILN_QEMU_DIR".into(),
        }
    }
}

/// The Debian package that ships the emulator `binary`.
pub fn debian_package(binary: &str) -> &'static str {
    match binary.trim_start_matches("qemu-system-") {
        "aarch64" | "arm" => "qemu-system-arm",
        "x86_64" | "i386" => "qemu-system-x86",
        "riscv64" | "riscv32" => "qemu-system-riscv",
        "ppc64" | "ppc" => "qemu-system-ppc",
        "s390x" => "qemu-system-s390x",
        _ => "qemu-system-misc",
    }
}

/// Where to look for the emulator `name`, in order: `KILN_QEMU_DIR`, then
/// `PATH`, then where the host's usual installers put QEMU (Homebrew on
/// Apple Silicon and Intel, MacPorts; the Windows installer's folder).
/// Pure, so that every host's order is tested on any host.
pub fn qemu_candidates(name: &str, host: HostOs, qemu_dir: Option<&std::ffi::OsStr>, path: Option<&std::ffi::OsStr>) -> Vec<PathBuf> {
    let file = if host == HostOs::Windows { format!("{name}.exe") } else { name.to_string() };
    let mut dirs: Vec<PathBuf> = Vec::new();
    dirs.extend(qemu_dir.filter(|d| !d.is_empty()).map(PathBuf::from));
    if let Some(path) = path {
        // PATH's separator is the host's; on another host (tests) split both ways.
        let list = path.to_string_lossy();
        let sep = if host == HostOs::Windows { ';' } else { ':' };
        dirs.extend(list.split(sep).filter(|d| !d.is_empty()).map(PathBuf::from));
    }
    let known: &[&str] = match host {
        HostOs::Linux => &[],
        HostOs::MacOs => &["/opt/homebrew/bin", "/usr/local/bin", "/opt/local/bin"],
        HostOs::Windows => &["C:\\Program Files\\qemu"],
    };
    dirs.extend(known.iter().map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(&file)).collect()
}

/// The emulator `name` on this host, or an error saying how to install it.
pub fn locate(name: &str) -> Result<PathBuf, QemuError> {
    let host = HostOs::current();
    let qemu_dir = std::env::var_os("KILN_QEMU_DIR");
    let path = std::env::var_os("PATH");
    qemu_candidates(name, host, qemu_dir.as_deref(), path.as_deref())
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| QemuError::NotFound { binary: name.to_string(), hint: host.install_hint(name) })
}

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("{binary} not found: install QEMU ({hint})")]
    NotFound { binary: String, hint: String },
    #[error("starting {binary}: {source}")]
    Spawn { binary: String, source: io::Error },
}

pub struct QemuProcess {
    child: Child,
    pub binary: String,
    pub console_log: PathBuf,
}

impl QemuProcess {
    pub fn spawn(config: &QemuConfig, stderr_log: &Path) -> Result<QemuProcess, QemuError> {
        let path = locate(config.arch.qemu_binary())?;
        let binary = path.display().to_string();
        let stderr = std::fs::File::create(stderr_log)
            .map_err(|source| QemuError::Spawn { binary: binary.clone(), source })?;
        let mut cmd = Command::new(&path);
        cmd.args(config.args()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        super::process::die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|source| QemuError::Spawn { binary: binary.clone(), source })?;
        if let Err(source) = super::process::bind_to_kiln(&child) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(QemuError::Spawn { binary, source });
        }
        Ok(QemuProcess { child, binary, console_log: config.console_log.to_path_buf() })
    }

    /// `Some(status)` once QEMU has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for a clean exit, then kills.
    pub fn stop(&mut self, timeout: std::time::Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return status;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = self.child.kill();
        self.child.wait().unwrap_or_else(|_| self.try_wait().expect("killed child has a status"))
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `lines` lines of a log file (the guest console), for error reports.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = read_end(path, 16 * 1024);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The message of the last kernel panic in the console log, if any.
pub fn kernel_panic(console: &Path) -> Option<String> {
    const MARK: &str = "Kernel panic - not syncing: ";
    let text = read_end(console, 64 * 1024);
    let line = text.lines().rev().find(|l| l.contains(MARK))?;
    Some(line[line.find(MARK)? + MARK.len()..].trim().to_string())
}

/// Up to the last `max` bytes of a log file, lossily decoded ("" if unreadable).
fn read_end(path: &Path, max: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(len.saturating_sub(max))).is_err() || file.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::Platform;

    #[test]
    fn qemu_is_looked_for_where_each_host_installs_it() {
        use std::ffi::OsStr;
        let name = "qemu-system-aarch64";
        let linux = qemu_candidates(name, HostOs::Linux, Some(OsStr::new("/opt/q")), Some(OsStr::new("/usr/bin:/bin")));
        assert_eq!(linux, ["/opt/q", "/usr/bin", "/bin"].map(|d| Path::new(d).join(name)).to_vec());
        let mac = qemu_candidates(name, HostOs::MacOs, None, Some(OsStr::new("/usr/bin")));
        assert_eq!(
            mac,
            ["/usr/bin", "/opt/homebrew/bin", "/usr/local/bin", "/opt/local/bin"].map(|d| Path::new(d).join(name)).to_vec()
        );
        let win = qemu_candidates(name, HostOs::Windows, Some(OsStr::new("D:\\qemu")), Some(OsStr::new("C:\\Windows;C:\\bin")));
        let win: Vec<String> = win.iter().map(|p| p.to_string_lossy().replace('/', "\\")).collect();
        assert_eq!(win.len(), 4);
        assert!(win[0].starts_with("D:\\qemu") && win[3].starts_with("C:\\Program Files\\qemu"), "{win:?}");
        assert!(win.iter().all(|p| p.ends_with("qemu-system-aarch64.exe")), "{win:?}");
        // An empty KILN_QEMU_DIR is no directory.
        assert_eq!(qemu_candidates(name, HostOs::Linux, Some(OsStr::new("")), None), Vec::<PathBuf>::new());
        // What is not installed is named, with how to install it on this host.
        let err = locate("qemu-system-kiln-test-none").unwrap_err().to_string();
        assert!(err.contains("qemu-system-kiln-test-none not found") && err.contains(&HostOs::current().install_hint("none")), "{err}");
        // On Debian, the hint names the package of each guest's emulator.
        for (binary, package) in [
            ("qemu-system-aarch64", "qemu-system-arm"),
            ("qemu-system-arm", "qemu-system-arm"),
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("qemu-system-riscv64", "qemu-system-riscv"),
            ("qemu-system-ppc64", "qemu-system-ppc"),
            ("qemu-system-s390x", "qemu-system-s390x"),
        ] {
            assert!(HostOs::Linux.install_hint(binary).contains(&format!("apt-get install -t bookworm-backports {package},")), "{binary}");
        }
    }

    #[test]
    fn arm64_command_line() {
        let arch = crate::vm::arch::for_platform(&"linux/arm64".parse::<Platform>().unwrap()).unwrap();
        let cfg = QemuConfig {
            arch,
            accel: Accel::Tcg,
            tcg_cpu: None,
            memory_mib: 1024,
            cpus: 2,
            kernel: Path::new("/k"),
            initramfs: Path::new("/i"),
            scratch: Some(Path::new("/s.img")),
            console_log: Path::new("/c.log"),
            transport: Transport::Serial,
            transport_args: &[],
            network: true,
            netdev_extra: &["hostfwd=tcp:127.0.0.1:8080-:80".to_string()],
            extra_cmdline: "",
            layer_disks: &[PathBuf::from("/c/base.erofs"), PathBuf::from("/c/odd,name.erofs")],
            shared_memory: true,
            device_args: &[],
        };
        let args = cfg.args().join(" ");
        assert!(args.contains("-M virt -cpu max,pauth=off -accel tcg,thread=multi"), "{args}");
        assert!(args.contains("console=ttyAMA0"), "{args}");
        assert!(args.contains("kiln.transport=serial"), "{args}");
        assert!(args.contains("cryptomgr.notests=1"), "{args}");
        assert!(args.contains("cache=unsafe"), "{args}");
        assert!(args.contains("user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80"), "{args}");
        assert!(args.contains("-no-reboot"), "{args}");
        assert!(args.contains("file=/c/base.erofs,if=none,id=layer0,format=raw,readonly=on"), "{args}");
        assert!(args.contains("virtio-blk-pci,drive=layer0,serial=kiln-layer-0"), "{args}");
        assert!(args.contains("file=/c/odd,,name.erofs,if=none,id=layer1"), "{args}");
        // Guest RAM for vhost-user daemons, the same size as -m.
        assert!(args.contains("-object memory-backend-memfd,id=mem,size=1024M,share=on -machine memory-backend=mem"), "{args}");
    }

    #[test]
    fn armv7_command_line() {
        let arch = crate::vm::arch::for_platform(&"linux/arm/v7".parse::<Platform>().unwrap()).unwrap();
        let cfg = QemuConfig {
            arch,
            accel: Accel::Tcg,
            tcg_cpu: None,
            memory_mib: 2048,
            cpus: 2,
            kernel: Path::new("/k"),
            initramfs: Path::new("/i"),
            scratch: Some(Path::new("/s.img")),
            console_log: Path::new("/c.log"),
            transport: Transport::Serial,
            transport_args: &[],
            network: false,
            netdev_extra: &[],
            extra_cmdline: "",
            layer_disks: &[],
            shared_memory: false,
            device_args: &[],
        };
        let args = cfg.args().join(" ");
        // cortex-a15 has the LPAE the armmp-lpae kernel needs.
        assert!(args.contains("-M virt -cpu cortex-a15 -accel tcg,thread=multi"), "{args}");
        assert!(args.contains("console=ttyAMA0"), "{args}");
        assert!(args.contains("-m 2048M"), "{args}");
        assert!(!args.contains("memory-backend"), "{args}");
    }

    #[test]
    fn tail_returns_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, (1..=100).map(|i| format!("line {i}\n")).collect::<String>()).unwrap();
        assert_eq!(log_tail(&log, 2), "line 99\nline 100");
        assert_eq!(log_tail(&dir.path().join("missing"), 5), "");
    }

    #[test]
    fn kernel_panic_finds_the_last_panic_message() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, "[    1.0] booting\n").unwrap();
        assert_eq!(kernel_panic(&log), None);
        let panic = "[    2.05] Kernel panic - not syncing: sysrq triggered crash\n[    2.06] Call trace:\n[    2.07]  dump_backtrace+0xe4/0x140\n";
        std::fs::write(&log, format!("[    1.0] booting\n{panic}")).unwrap();
        assert_eq!(kernel_panic(&log).as_deref(), Some("sysrq triggered crash"));
        assert_eq!(kernel_panic(&dir.path().join("missing")), None);
    }
}
