//! `kiln kernel ...`: fetch and inspect guest kernels.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Subcommand;

use crate::platform::Platform;
use crate::vm::kernel::{self, KernelOptions};

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Download, verify and cache the guest kernel for platforms (for offline use)
    Fetch {
        /// Comma-separated platforms, e.g. linux/arm64,linux/amd64
        #[arg(long, default_value = "linux/arm64", value_delimiter = ',')]
        platform: Vec<String>,
    },
    /// Show the cached guest kernels
    List,
}

pub fn run(cmd: KernelCommand) -> anyhow::Result<ExitCode> {
    let opts = KernelOptions::from_env();
    match cmd {
        KernelCommand::Fetch { platform } => {
            for p in platform {
                let platform: Platform = p.parse()?;
                let started = Instant::now();
                let k = kernel::ensure_kernel(&platform, &opts)
                    .with_context(|| format!("fetching the guest kernel for {platform}"))?;
                println!("{platform}: kernel {} ({:.1}s)", k.release, started.elapsed().as_secs_f64());
                println!("  image   {}", k.image.display());
                for m in &k.modules {
                    println!("  module  {}", m.display());
                }
            }
        }
        KernelCommand::List => {
            let cached = kernel::list_cached(&opts.cache_dir)?;
            if cached.is_empty() {
                println!("no kernels cached in {}", opts.cache_dir.join("kernels").display());
            }
            for k in cached {
                println!(
                    "{:<6} {:<36} {:<28} {:>3} modules {:>6.1} MiB  {}",
                    k.arch,
                    k.record.package,
                    k.record.release,
                    k.record.modules.len(),
                    k.size as f64 / (1024.0 * 1024.0),
                    k.dir.display()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
