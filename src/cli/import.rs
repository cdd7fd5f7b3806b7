//! `kiln import`: a root file system tar becomes a one-layer image, like `docker import`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;

use crate::oci::import::{import_tar, ImportOptions};
use crate::oci::Store;
use crate::platform::Platform;
use crate::registry::Reference;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Root file system tar (plain, gzip, zstd or xz); `-` reads standard input
    pub file: PathBuf,
    /// Name for the image (REPOSITORY[:TAG]); untagged when omitted
    pub reference: Option<String>,
    /// Platform the file system is for (default: the host's)
    #[arg(long)]
    pub platform: Option<Platform>,
    /// Dockerfile instruction to apply to the config (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR), repeatable
    #[arg(short, long = "change")]
    pub changes: Vec<String>,
    /// Comment for the image's history entry
    #[arg(short, long)]
    pub message: Option<String>,
}

pub fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    // Name and timestamp are checked before the (possibly large) input is read.
    let name = args
        .reference
        .as_deref()
        .map(|r| Reference::parse(r).map(|r| r.to_string()).with_context(|| format!("invalid image name {r:?}")))
        .transpose()?;
    let opts = ImportOptions {
        platform: args.platform.unwrap_or_else(Platform::host),
        changes: args.changes,
        message: args.message,
        created: created()?,
    };
    let store = Store::open_default().context("opening the image store")?;
    let descriptor = if args.file.as_os_str() == "-" {
        import_tar(&store, std::io::stdin().lock(), "standard input", &opts)?
    } else {
        let shown = args.file.display().to_string();
        let file = std::fs::File::open(&args.file).with_context(|| format!("{shown}: cannot open"))?;
        import_tar(&store, file, &shown, &opts)?
    };
    if let Some(name) = name {
        store.tag(&name, &descriptor)?;
    }
    println!("{}", descriptor.digest());
    Ok(ExitCode::SUCCESS)
}

/// SOURCE_DATE_EPOCH when set (reproducible builds), else now.
fn created() -> anyhow::Result<i64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => match v.trim().parse::<i64>() {
            Ok(secs) => Ok(secs),
            Err(_) => bail!("SOURCE_DATE_EPOCH={v:?} is not a whole number of seconds since 1970"),
        },
        _ => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)),
    }
}
