//! `kiln vm ...`: boot a guest and run commands in it.

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Boot a VM, run one command in it and exit with its exit code
    Exec {
        #[arg(long, default_value = "linux/arm64")]
        platform: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

pub fn run(cmd: VmCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        VmCommand::Exec { platform, .. } => anyhow::bail!("vm exec on {platform}: not built yet"),
    }
}
