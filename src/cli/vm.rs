//! `kiln vm ...`: boot a guest and run commands in it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use kiln_protocol::{stream, ExecRequest, RootSpec};

use crate::platform::Platform;
use crate::vm::transport::TransportChoice;
use crate::vm::{Vm, VmConfig};

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Boot a VM, run one command in it and exit with its exit code
    Exec(ExecArgs),
}

/// Options shared by everything that boots a VM.
#[derive(Debug, Args)]
pub struct VmOptions {
    /// Guest platform (os/arch[/variant])
    #[arg(long, default_value = "linux/arm64", env = "KILN_PLATFORM")]
    pub platform: Platform,
    /// Host/agent transport
    #[arg(long, default_value = "auto", value_parser = ["auto", "vsock", "serial"])]
    pub transport: String,
    /// Guest memory in MiB
    #[arg(long, default_value_t = 2048)]
    pub memory: u64,
    /// Guest CPUs (default: host cores, at most 4)
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Give up if the guest agent is not ready after this many seconds
    #[arg(long, default_value_t = 90)]
    pub boot_timeout: u64,
    /// Accelerator (tcg, kvm, hvf, whpx); default: the fastest usable one
    #[arg(long)]
    pub accel: Option<String>,
    /// Boot this kernel image instead of the pinned Debian kernel
    #[arg(long, env = "KILN_KERNEL")]
    pub kernel: Option<PathBuf>,
}

impl VmOptions {
    pub fn config(&self) -> anyhow::Result<VmConfig> {
        let mut config = VmConfig::new(self.platform.clone());
        config.transport = self.transport.parse::<TransportChoice>().map_err(anyhow::Error::msg)?;
        config.memory_mib = self.memory;
        if let Some(cpus) = self.cpus {
            config.cpus = cpus;
        }
        config.boot_timeout = Duration::from_secs(self.boot_timeout);
        if let Some(accel) = &self.accel {
            config.accel = Some(accel.parse().map_err(anyhow::Error::msg)?);
        }
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub vm: VmOptions,
    /// Root file system for the command: a tar unpacked in the guest
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// Pass kiln's standard input to the command
    #[arg(short, long)]
    pub interactive: bool,
    /// Environment variable for the command (KEY=VALUE), repeatable
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the guest
    #[arg(short, long, default_value = "/")]
    pub workdir: String,
    /// Run as this uid[:gid]
    #[arg(short, long, default_value = "0:0")]
    pub user: String,
    /// Kill the command after this many seconds
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Print boot and run timings to stderr
    #[arg(long)]
    pub timings: bool,
    /// The command and its arguments
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn run(cmd: VmCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        VmCommand::Exec(args) => exec(args),
    }
}

fn exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let cancel = super::signals::install();
    let config = args.vm.config()?;
    let (uid, gid) = parse_user(&args.user)?;
    let mut rootfs = match &args.rootfs {
        Some(path) => Some(std::fs::File::open(path).with_context(|| format!("opening --rootfs {}", path.display()))?),
        None => None,
    };
    let files = crate::vm::boot_files(&config.platform, args.vm.kernel.as_deref())?;
    let mut vm = Vm::boot(&config, &files, cancel)?;
    if args.timings {
        eprintln!("kiln: agent ready after {:.2}s ({:?}, {})", vm.boot_time.as_secs_f64(), vm.transport, vm.accel.name());
    }
    let root = if let Some(tar) = rootfs.as_mut() {
        let started = std::time::Instant::now();
        vm.unpack("rootfs", tar, cancel)?;
        if args.timings {
            eprintln!("kiln: rootfs unpacked in {:.2}s", started.elapsed().as_secs_f64());
        }
        Some(RootSpec::Dir { path: "rootfs".to_string() })
    } else {
        None
    };
    let mut env = args.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.to_string());
    }
    let req = ExecRequest {
        argv: args.command.clone(),
        env,
        cwd: args.workdir.clone(),
        uid,
        gid,
        timeout_ms: args.timeout.map(|s| s * 1000),
        root,
        ..Default::default()
    };
    let stdin: Option<Box<dyn std::io::Read + Send>> =
        if args.interactive { Some(Box::new(std::io::stdin())) } else { None };
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    let started = std::time::Instant::now();
    let status = vm.exec(req, stdin, &mut |s, bytes| {
        let _ = if s == stream::STDERR { err.write_all(bytes) } else { out.write_all(bytes).and_then(|_| out.flush()) };
    }, cancel);
    let status = status?;
    if args.timings {
        eprintln!("kiln: command ran in {:.3}s", started.elapsed().as_secs_f64());
    }
    vm.shutdown();
    if matches!(status, kiln_protocol::ExitStatus::TimedOut) {
        eprintln!("kiln: command timed out after {}s", args.timeout.unwrap_or(0));
    }
    Ok(ExitCode::from(status.shell_code().clamp(0, 255) as u8))
}

fn parse_user(user: &str) -> anyhow::Result<(u32, u32)> {
    let (u, g) = user.split_once(':').unwrap_or((user, user));
    let parse = |s: &str| s.parse::<u32>().with_context(|| format!("--user {user:?}: expected numeric uid[:gid]"));
    Ok((parse(u)?, parse(g)?))
}
