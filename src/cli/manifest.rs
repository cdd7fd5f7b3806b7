//! `kiln manifest create NAME IMAGE...`: one multi-platform name over local
//! single-platform images (as `docker manifest create` / `buildah manifest`
//! do), so a `FROM` can serve every `--platform` of a build.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;

use crate::oci::{media, MediaType, Store};
use crate::registry::reference::resolve_local;
use crate::registry::Reference;

#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Create (or replace) NAME as an index of the given local images
    Create {
        name: String,
        #[arg(required = true)]
        images: Vec<String>,
    },
}

pub fn run(cmd: ManifestCommand) -> anyhow::Result<ExitCode> {
    let ManifestCommand::Create { name, images } = cmd;
    let name = Reference::parse(&name).with_context(|| format!("invalid image name {name:?}"))?.to_string();
    let store = Store::open_default().context("opening the image store")?;
    let mut manifests = Vec::new();
    let mut seen = Vec::new();
    for image in &images {
        let (_, desc) = resolve_local(&store, image)?;
        if media::is_index(desc.media_type().as_ref()) {
            bail!("{image} is already a multi-platform image; give its single-platform images");
        }
        let platform = store.image(&desc, None)?.platform();
        if seen.contains(&platform) {
            bail!("{image}: a second image for {platform}");
        }
        let mut entry = desc.clone();
        entry.set_platform(Some(crate::oci::model::oci_platform(&platform)));
        seen.push(platform);
        manifests.push(entry);
    }
    let index = serde_json::json!({ "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": manifests });
    let desc = store.put_json(&index, MediaType::ImageIndex)?;
    store.tag(&name, &desc)?;
    println!("{name} {}", desc.digest());
    Ok(ExitCode::SUCCESS)
}
