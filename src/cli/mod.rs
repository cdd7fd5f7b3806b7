//! Command-line interface: argument definitions and dispatch only. Each
//! subcommand module turns its arguments into a call into the library.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

pub mod build;
pub mod call;
pub mod debug;
pub mod docs;
pub mod examples;
pub mod image;
pub mod images;
pub mod imagetools;
pub mod import;
pub mod kernel;
pub mod manifest;
pub mod run;
pub mod signals;
pub mod terminal;
pub mod tabwriter;
pub mod version;
pub mod vm;

/// Build OCI images from Dockerfiles for any architecture, without binfmt_misc or root.
#[derive(Debug, Parser)]
#[command(name = "kiln", version = version::VERSION_LINE, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile (docker buildx build's flags)
    Build(Box<build::BuildArgs>),
    /// Run a command in a new container (a VM of the image's platform)
    Run(run::RunArgs),
    /// Combine local single-platform images under one multi-platform name
    #[command(subcommand)]
    Manifest(manifest::ManifestCommand),
    /// Work with multi-platform images in registries (buildx imagetools)
    #[command(subcommand)]
    Imagetools(imagetools::ImagetoolsCommand),
    /// Run commands in a guest VM
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Manage guest kernels
    #[command(subcommand)]
    Kernel(kernel::KernelCommand),
    #[command(flatten)]
    Image(image::ImageCommand),
    /// Create an image from a root file system tar (like `docker import`)
    Import(import::ImportArgs),
    /// Show kiln's version, commit, guest kernels and agents, and the QEMU emulators found
    Version(version::VersionArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish)
    Completion(docs::CompletionArgs),
    /// Write man pages (kiln.1 to standard output, or every page into --dir)
    Man(docs::ManArgs),
    /// Developer tools (conformance runners, dumps)
    #[command(subcommand, hide = true)]
    Debug(debug::DebugCommand),
}

/// `kiln run`'s status when kiln itself fails (a bad flag, a missing image,
/// a VM that does not boot), as `docker run` exits 125; the command's own
/// status is passed through, and 126/127 mean it could not be started.
pub const RUN_OWN_FAILURE: u8 = 125;

/// Parses the arguments, runs the command and turns failures into exit
/// statuses: `kiln run`'s own failures exit 125 as `docker run`'s do, every
/// other command exits 1 as `docker buildx build` does (clap's usage errors 2).
pub fn main() -> ExitCode {
    let cli = match command().try_get_matches().and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            let is_run = std::env::args_os().nth(1).is_some_and(|a| a == "run");
            return match err.use_stderr() && is_run {
                true => ExitCode::from(RUN_OWN_FAILURE),
                false => ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(1)),
            };
        }
    };
    let own_failure = match cli.command {
        Command::Run(_) => RUN_OWN_FAILURE,
        _ => 1,
    };
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            report_error(&err);
            ExitCode::from(interrupted_exit_code().unwrap_or(own_failure))
        }
    }
}

/// The command line's definition, with each command's examples in its help.
pub fn command() -> clap::Command {
    examples::add(Cli::command(), "")
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Build(args) => build::run(*args, signals::install()),
        Command::Run(args) => run::run(args, signals::install()),
        Command::Manifest(cmd) => manifest::run(cmd),
        Command::Imagetools(cmd) => imagetools::run(cmd),
        Command::Vm(cmd) => vm::run(cmd),
        Command::Kernel(cmd) => kernel::run(cmd),
        Command::Image(cmd) => image::run(cmd),
        Command::Import(args) => import::run(args),
        Command::Version(args) => version::run(args),
        Command::Completion(args) => docs::completion(args),
        Command::Man(args) => docs::man(args),
        Command::Debug(cmd) => debug::run(cmd),
    }
}

/// The exit code for a command that a signal stopped: 128 + the signal's
/// number, as shells and docker report it (130 after Ctrl-C).
pub fn interrupted_exit_code() -> Option<u8> {
    signals::received().map(|sig| 128u8.saturating_add(u8::try_from(sig).unwrap_or(2)))
}

/// Prints an error with its chain of causes, one per line, like `docker` does.
pub fn report_error(err: &anyhow::Error) {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}
