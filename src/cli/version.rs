//! `kiln version`: what this kiln is made of and what it will run: its
//! version and commit, per platform the guest kernel pinned for it and the
//! embedded agent's digest, and the QEMU emulators found on this host.

use std::process::{ExitCode, Stdio};

use clap::Args;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::platform::Platform;
use crate::vm::arch::{self, PLATFORMS};
use crate::vm::qemu;

/// `kiln --version`'s line: the version and, when known, the commit.
pub const VERSION_LINE: &str = env!("KILN_VERSION_LINE");

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// `text` (the default) or `json`
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
}

#[derive(Debug, Serialize)]
struct Report {
    version: &'static str,
    /// The git commit kiln was built from, when known.
    commit: Option<&'static str>,
    platforms: Vec<PlatformReport>,
    emulators: Vec<Emulator>,
}

#[derive(Debug, Serialize)]
struct PlatformReport {
    platform: &'static str,
    /// The VM's architecture key (`armv7` runs arm/v5, v6 and v7).
    vm: &'static str,
    emulator: &'static str,
    /// `package version` of the pinned Debian kernel, or why there is none.
    kernel: String,
    /// sha256 of the guest agent, or why there is none.
    agent: String,
}

#[derive(Debug, Serialize)]
struct Emulator {
    binary: &'static str,
    path: Option<String>,
    /// The first line of `--version`.
    version: Option<String>,
    /// Why it cannot be used (not found, with how to install it).
    error: Option<String>,
}

pub fn run(args: VersionArgs) -> anyhow::Result<ExitCode> {
    let report = report();
    if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("kiln {VERSION_LINE}");
    println!("\nPLATFORM        VM       KERNEL                                           AGENT");
    for p in &report.platforms {
        println!("{:<15} {:<8} {:<48} {}", p.platform, p.vm, p.kernel, p.agent);
    }
    println!("\nEMULATOR              VERSION");
    for e in &report.emulators {
        match (&e.version, &e.path, &e.error) {
            (Some(v), Some(path), _) => println!("{:<21} {v} ({path})", e.binary),
            (_, _, Some(error)) => println!("{:<21} {error}", e.binary),
            _ => println!("{:<21} unknown", e.binary),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report() -> Report {
    let kernels = crate::vm::kernel::KernelOptions::from_env();
    let mut platforms = Vec::new();
    let mut binaries: Vec<&'static str> = Vec::new();
    for name in PLATFORMS {
        let platform: Platform = name.parse().expect("the listed platforms parse");
        let guest = arch::for_platform(&platform).expect("the listed platforms have VMs");
        let kernel = match crate::vm::kernel::manifest::load(guest.key(), kernels.manifest_dir.as_deref()) {
            Ok(m) => format!("{} {}", m.package.name, m.package.version),
            Err(e) => format!("none: {e}"),
        };
        let agent = match crate::vm::agents::agent_binary(guest.key()) {
            Ok(bytes) => format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
            Err(e) => format!("none: {e}"),
        };
        platforms.push(PlatformReport { platform: name, vm: guest.key(), emulator: guest.qemu_binary(), kernel, agent });
        if !binaries.contains(&guest.qemu_binary()) {
            binaries.push(guest.qemu_binary());
        }
    }
    let emulators = binaries.into_iter().map(emulator).collect();
    let commit = Some(env!("KILN_GIT_COMMIT")).filter(|c| !c.is_empty());
    Report { version: env!("CARGO_PKG_VERSION"), commit, platforms, emulators }
}

fn emulator(binary: &'static str) -> Emulator {
    let path = match qemu::locate(binary) {
        Ok(path) => path,
        Err(e) => return Emulator { binary, path: None, version: None, error: Some(e.to_string()) },
    };
    let output = std::process::Command::new(&path).arg("--version").stdin(Stdio::null()).stderr(Stdio::null()).output();
    let first_line = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).lines().next().map(str::to_string);
    let (version, error) = match output {
        Ok(out) if out.status.success() => (first_line(&out), None),
        Ok(out) => (None, Some(format!("`{} --version` failed ({})", path.display(), out.status))),
        Err(e) => (None, Some(format!("running {}: {e}", path.display()))),
    };
    Emulator { binary, path: Some(path.display().to_string()), version, error }
}
