//! `kiln kernel ...`: fetch and inspect guest kernels.

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Download, verify and cache the guest kernel for a platform
    Fetch {
        #[arg(long, default_value = "linux/arm64")]
        platform: String,
    },
}

pub fn run(cmd: KernelCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KernelCommand::Fetch { platform } => anyhow::bail!("kernel fetch for {platform}: not built yet"),
    }
}
