//! Image commands: `kiln images`, `rmi`, `tag`, `prune`, `inspect`, `pull`, `push`, `login`, `logout`.

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List images in the local store
    Images,
}

pub fn run(cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Images => anyhow::bail!("the image store is not built yet"),
    }
}
