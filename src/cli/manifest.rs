//! `kiln manifest create NAME IMAGE...`: one multi-platform name over
//! images (as `docker manifest create` / `buildah manifest` do), so a `FROM`
//! can serve every `--platform` of a build. An image the store lacks is
//! pulled from its registry; a multi-platform image adds all its platforms.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;

use crate::oci::{media, Descriptor, MediaType, Store};
use crate::platform::Platform;
use crate::registry::PullOptions;
use crate::registry::reference::resolve_local;
use crate::registry::Reference;

#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Create (or replace) NAME as an index of the given local images
    Create {
        name: String,
        #[arg(required = true)]
        images: Vec<String>,
        #[command(flatten)]
        registry: super::image::RegistryArgs,
    },
}

pub fn run(cmd: ManifestCommand) -> anyhow::Result<ExitCode> {
    let ManifestCommand::Create { name, images, registry } = cmd;
    let name = Reference::parse(&name).with_context(|| format!("invalid image name {name:?}"))?.to_string();
    let store = Store::open_default().context("opening the image store")?;
    let mut manifests: Vec<Descriptor> = Vec::new();
    let mut seen: Vec<(Platform, String)> = Vec::new();
    for image in &images {
        let desc = match resolve_local(&store, image) {
            Ok((_, desc)) => desc,
            Err(_) => pull(&store, image, &registry)?,
        };
        let singles: Vec<Descriptor> = if media::is_index(desc.media_type().as_ref()) {
            let (index, _) = store.read_manifest(&desc)?;
            index.children().into_iter().filter(|d| media::is_manifest(d.media_type().as_ref())).collect()
        } else {
            vec![desc]
        };
        for single in singles {
            if manifests.iter().any(|m| m.digest() == single.digest()) {
                continue;
            }
            let platform = store.image(&single, None)?.platform();
            if let Some((_, other)) = seen.iter().find(|(p, _)| p == &platform) {
                bail!("{image}: a second image for {platform} (the first came from {other})");
            }
            let mut entry = single.clone();
            entry.set_platform(Some(crate::oci::model::oci_platform(&platform)));
            seen.push((platform, image.clone()));
            manifests.push(entry);
        }
    }
    let index = serde_json::json!({ "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": manifests });
    let desc = store.put_json(&index, MediaType::ImageIndex)?;
    store.tag(&name, &desc)?;
    println!("{name} {}", desc.digest());
    Ok(ExitCode::SUCCESS)
}

/// Pulls every platform of `image` into the store (it is not there).
fn pull(store: &Store, image: &str, registry: &super::image::RegistryArgs) -> anyhow::Result<Descriptor> {
    let reference = Reference::parse(image).with_context(|| format!("{image}: not in the local store, and not a valid image name"))?;
    let client = registry.client()?;
    let opts = PullOptions { platform: None, all_platforms: true };
    let cancel = super::signals::install();
    let report = crate::cancel::block_on(&crate::cancel::runtime()?, cancel, client.pull(store, &reference, &opts))?
        .with_context(|| format!("{image}: not in the local store, and pulling it failed"))?;
    eprintln!("{}: pulled {}", report.name, report.descriptor.digest());
    Ok(report.descriptor)
}
