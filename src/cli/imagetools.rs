//! `kiln imagetools create|inspect`: buildx's commands for multi-platform
//! names in a registry, without a local image store in between.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::image::RegistryArgs;
use crate::oci::model::{self, Manifest};
use crate::oci::Store;
use crate::registry::combine::entry_platform;
use crate::registry::Reference;

#[derive(Debug, Subcommand)]
pub enum ImagetoolsCommand {
    /// Create a multi-platform index from images or indexes in registries
    Create(CreateArgs),
    /// Show an image or index in a registry
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Images or indexes to combine (REF, REF@sha256:..., REPO@sha256:...)
    #[arg(required = true)]
    sources: Vec<String>,
    /// Name of the new index (repeatable)
    #[arg(short = 't', long = "tag", required_unless_present = "dry_run")]
    tags: Vec<String>,
    /// Print the index instead of pushing it
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    name: String,
    /// Print the manifest or index exactly as the registry sends it
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

fn parse_refs(names: &[String]) -> anyhow::Result<Vec<Reference>> {
    names.iter().map(|n| Reference::parse(n).with_context(|| format!("invalid image name {n:?}"))).collect()
}

pub fn run(cmd: ImagetoolsCommand) -> anyhow::Result<ExitCode> {
    let cancel = super::signals::install();
    match cmd {
        ImagetoolsCommand::Create(args) => {
            let sources = parse_refs(&args.sources)?;
            let tags = parse_refs(&args.tags)?;
            if let Some(t) = tags.iter().find(|t| t.tag.is_none()) {
                bail!("--tag {t}: name the index with a tag, not a digest");
            }
            let client = args.registry.client()?;
            // Configs of single images are read through the store, verified.
            let store = Store::open_default().context("opening the image store")?;
            let made = crate::cancel::block_on(&crate::cancel::runtime()?, cancel, client.create_index(&store, &sources, &tags, args.dry_run))??;
            if args.dry_run {
                std::io::stdout().write_all(&made.bytes)?;
                println!();
            } else {
                for t in &tags {
                    println!("{t}@{}", made.descriptor.digest());
                }
            }
        }
        ImagetoolsCommand::Inspect(args) => {
            let reference = Reference::parse(&args.name).with_context(|| format!("invalid image name {:?}", args.name))?;
            let client = args.registry.client()?;
            let scopes = [format!("repository:{}:pull", reference.repository)];
            let target = reference.target();
            let fetching = client.fetch_manifest(&reference, &target, None, &scopes);
            let (bytes, desc) = crate::cancel::block_on(&crate::cancel::runtime()?, cancel, fetching)??;
            if args.raw {
                std::io::stdout().write_all(&bytes)?;
                return Ok(ExitCode::SUCCESS);
            }
            println!("Name:      {reference}");
            println!("MediaType: {}", desc.media_type());
            println!("Digest:    {}", desc.digest());
            if let Manifest::Index(index) = Manifest::parse(&bytes, Some(desc.media_type().as_ref()), &reference.to_string())? {
                println!("\nManifests:");
                for (n, m) in index.manifests().iter().enumerate() {
                    if n > 0 {
                        println!();
                    }
                    println!("  Name:      {}@{}", reference.name(), m.digest());
                    println!("  MediaType: {}", m.media_type());
                    println!("  Platform:  {}", entry_platform(m));
                }
            } else if let Some(p) = model::descriptor_platform(&desc) {
                println!("Platform:  {p}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
