//! The end of a build: the target stage's config and manifest, written
//! into the store (the caller tags or exports the manifest).

use oci_spec::image::{Descriptor, MediaType};

use super::image_config::ImageConfigFile;
use super::vm_session::LayerRef;
use crate::oci::media;
use crate::oci::store::{Store, StoreError};
use crate::platform::Platform;

/// Stores `config` and a manifest over `layers`; returns the manifest's
/// descriptor (with its platform) and the config's digest.
pub fn write_image(store: &Store, config: &ImageConfigFile, layers: &[LayerRef]) -> Result<(Descriptor, String), StoreError> {
    let config_desc = store.put_json(config, MediaType::Other(media::OCI_CONFIG.into()))?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": config_desc,
        "layers": layers.iter().map(|l| &l.descriptor).collect::<Vec<_>>(),
    });
    let mut desc = store.put_json(&manifest, MediaType::Other(media::OCI_MANIFEST.into()))?;
    let platform = Platform::new(&config.os, &config.architecture, config.variant.as_deref());
    desc.set_platform(Some(crate::oci::model::oci_platform(&platform)));
    Ok((desc, config_desc.digest().to_string()))
}
