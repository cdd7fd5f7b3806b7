//! `kiln debug ...`: tools for developers and the conformance suites.

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Print a Dockerfile's AST in BuildKit's Node.Dump() format
    DockerfileDump { file: std::path::PathBuf },
}

pub fn run(cmd: DebugCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DebugCommand::DockerfileDump { file } => {
            anyhow::bail!("{}: the Dockerfile parser is not built yet", file.display())
        }
    }
}
