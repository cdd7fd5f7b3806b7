//! An image's manifests rewritten with Docker v2 schema 2 media types, for
//! registries and tools that still refuse OCI ones (buildx's
//! `oci-mediatypes=false`). Config and layer blobs keep their bytes; only
//! the manifests and the index that name them change, so their digests do.

use oci_spec::image::{Descriptor, MediaType};
use serde_json::Value;

use crate::oci::media;
use crate::oci::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DockerMediaError {
    #[error("{digest}: a {media_type} layer has no Docker media type; build with --compression gzip")]
    LayerType { digest: String, media_type: String },
    #[error("{digest}: {detail}")]
    Malformed { digest: String, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes Docker-typed copies of the manifest or index `root` (and of an
/// index's manifests) into `store`, returning the new root's descriptor.
/// An image that already has Docker types comes back unchanged.
pub fn convert(store: &Store, root: &Descriptor) -> Result<Descriptor, DockerMediaError> {
    let malformed = |detail: String| DockerMediaError::Malformed { digest: root.digest().to_string(), detail };
    let bytes = store.read_blob(root.digest(), Some(root.size()))?;
    let mut doc: Value = serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
    let media_type = match root.media_type().as_ref() {
        media::OCI_INDEX | media::DOCKER_MANIFEST_LIST => {
            let children = doc.get_mut("manifests").and_then(Value::as_array_mut).ok_or_else(|| malformed("no manifests".into()))?;
            for child in children.iter_mut() {
                let descriptor: Descriptor = serde_json::from_value(child.clone()).map_err(|e| malformed(e.to_string()))?;
                let converted = convert(store, &descriptor)?;
                child["mediaType"] = media::DOCKER_MANIFEST.into();
                child["digest"] = converted.digest().to_string().into();
                child["size"] = converted.size().into();
                strip_annotations(child);
            }
            media::DOCKER_MANIFEST_LIST
        }
        media::OCI_MANIFEST | media::DOCKER_MANIFEST => {
            if let Some(config) = doc.get_mut("config") {
                config["mediaType"] = media::DOCKER_CONFIG.into();
                strip_annotations(config);
            }
            let layers = doc.get_mut("layers").and_then(Value::as_array_mut).ok_or_else(|| malformed("no layers".into()))?;
            for layer in layers.iter_mut() {
                let from = layer.get("mediaType").and_then(Value::as_str).unwrap_or_default().to_string();
                let to = docker_layer_type(&from).ok_or_else(|| DockerMediaError::LayerType {
                    digest: layer.get("digest").and_then(Value::as_str).unwrap_or_default().to_string(),
                    media_type: from.clone(),
                })?;
                layer["mediaType"] = to.into();
                strip_annotations(layer);
            }
            media::DOCKER_MANIFEST
        }
        other => return Err(malformed(format!("{other} is neither a manifest nor an index"))),
    };
    doc["mediaType"] = media_type.into();
    strip_annotations(&mut doc);
    let out = serde_json::to_vec(&doc).map_err(|e| malformed(e.to_string()))?;
    let mut descriptor = store.put_blob_bytes(&out, MediaType::Other(media_type.to_string()))?;
    descriptor.set_platform(root.platform().clone());
    Ok(descriptor)
}

/// Docker's schema 2 has no annotations (and no artifact fields).
fn strip_annotations(v: &mut Value) {
    if let Some(map) = v.as_object_mut() {
        map.remove("annotations");
        map.remove("artifactType");
    }
}

fn docker_layer_type(oci: &str) -> Option<&'static str> {
    match oci {
        media::OCI_LAYER_GZIP | media::DOCKER_LAYER_GZIP => Some(media::DOCKER_LAYER_GZIP),
        media::OCI_LAYER_TAR | media::DOCKER_LAYER_TAR => Some(media::DOCKER_LAYER_TAR),
        media::DOCKER_FOREIGN_LAYER_GZIP => Some(media::DOCKER_FOREIGN_LAYER_GZIP),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::model::Manifest;

    fn image(store: &Store, layer_type: &str) -> Descriptor {
        let config = store.put_blob_bytes(br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#, MediaType::ImageConfig).unwrap();
        let layer = store.put_blob_bytes(b"layer", MediaType::Other(layer_type.into())).unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": config,
            "layers": [layer],
            "annotations": {"org.opencontainers.image.created": "now"},
        });
        let m = store.put_json(&manifest, MediaType::ImageManifest).unwrap();
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": [m]});
        store.put_json(&index, MediaType::ImageIndex).unwrap()
    }

    #[test]
    fn an_index_becomes_a_manifest_list_over_docker_manifests_with_the_same_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let root = image(&store, media::OCI_LAYER_GZIP);
        let list = convert(&store, &root).unwrap();
        assert_eq!(list.media_type().as_ref(), media::DOCKER_MANIFEST_LIST);
        let Manifest::Index(index) = store.read_manifest(&list).unwrap().0 else { panic!("not an index") };
        let child = &index.manifests()[0];
        assert_eq!(child.media_type().as_ref(), media::DOCKER_MANIFEST);
        let text = String::from_utf8(store.read_blob(child.digest(), Some(child.size())).unwrap()).unwrap();
        assert!(text.contains(media::DOCKER_CONFIG) && text.contains(media::DOCKER_LAYER_GZIP), "{text}");
        assert!(!text.contains("annotations") && !text.contains("vnd.oci"), "{text}");
        // Config and layer blobs are shared with the OCI image: the closure gains only the two new manifests.
        let (oci, docker) = (store.closure(&root).unwrap(), store.closure(&list).unwrap());
        let blobs = |c: &[Descriptor]| c.iter().filter(|d| !media::is_index(d.media_type().as_ref()) && !media::is_manifest(d.media_type().as_ref())).map(|d| d.digest().clone()).collect::<Vec<_>>();
        assert_eq!(blobs(&oci), blobs(&docker));
        // Converting again is stable.
        assert_eq!(convert(&store, &list).unwrap().digest(), list.digest());
    }

    #[test]
    fn zstd_layers_are_refused_with_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let root = image(&store, media::OCI_LAYER_ZSTD);
        let err = convert(&store, &root).unwrap_err().to_string();
        assert!(err.contains("--compression gzip"), "{err}");
    }
}
