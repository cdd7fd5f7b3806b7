//! The image model: manifests and indexes (OCI or Docker v2 schema 2),
//! platform selection from an index, and a resolved single-platform image.

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use crate::oci::media;
use crate::platform::Platform;

/// The largest manifest or index kiln reads, from a registry or a layout
/// (registries cap them at 4 MiB); larger ones are refused, not buffered.
pub const MAX_MANIFEST_SIZE: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{what} is not valid JSON for an image manifest or index: {source}")]
    Json { what: String, source: serde_json::Error },
    #[error("{what} has unsupported media type {media_type:?} (expected an OCI or Docker v2 schema 2 manifest or index)")]
    UnsupportedMediaType { what: String, media_type: String },
    #[error("{what} is a Docker schema 1 manifest, which kiln does not support; re-push the image with a current client")]
    SchemaV1 { what: String },
    #[error("no image for platform {wanted} in {what}; it has: {available}")]
    NoMatchingPlatform { what: String, wanted: String, available: String },
}

/// A parsed manifest document: either an index (manifest list) or an image manifest.
#[derive(Debug, Clone)]
pub enum Manifest {
    Index(Box<ImageIndex>),
    Image(Box<ImageManifest>),
}

impl Manifest {
    /// Parses raw manifest bytes. `hint` is the media type from the
    /// descriptor or the Content-Type header; the document's own `mediaType`
    /// wins when present, and structure decides when neither says.
    pub fn parse(bytes: &[u8], hint: Option<&str>, what: &str) -> Result<Self, ModelError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            schema_version: Option<u32>,
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
            config: Option<serde_json::Value>,
        }
        let json_err = |source| ModelError::Json { what: what.to_string(), source };
        let probe: Probe = serde_json::from_slice(bytes).map_err(json_err)?;
        if probe.schema_version == Some(1) {
            return Err(ModelError::SchemaV1 { what: what.to_string() });
        }
        let media_type = probe.media_type.or_else(|| hint.map(str::to_string)).unwrap_or_default();
        let is_index = if media::is_index(&media_type) {
            true
        } else if media::is_manifest(&media_type) {
            false
        } else if media_type.is_empty() || media_type.starts_with("application/json") || media_type == "text/plain" {
            probe.manifests.is_some() && probe.config.is_none()
        } else {
            return Err(ModelError::UnsupportedMediaType { what: what.to_string(), media_type });
        };
        if is_index {
            Ok(Manifest::Index(Box::new(serde_json::from_slice(bytes).map_err(json_err)?)))
        } else {
            Ok(Manifest::Image(Box::new(serde_json::from_slice(bytes).map_err(json_err)?)))
        }
    }

    /// Descriptors this document points at directly (children of an index,
    /// or config + layers of a manifest).
    pub fn children(&self) -> Vec<Descriptor> {
        match self {
            Manifest::Index(i) => i.manifests().clone(),
            Manifest::Image(m) => {
                let mut v = vec![m.config().clone()];
                v.extend(m.layers().iter().cloned());
                v
            }
        }
    }
}

/// The normalised platform of an index entry, if it names one.
pub fn descriptor_platform(d: &Descriptor) -> Option<Platform> {
    let p = d.platform().as_ref()?;
    Some(Platform::new(&p.os().to_string(), &p.architecture().to_string(), p.variant().as_deref()))
}

/// kiln's platform as an OCI descriptor platform.
pub fn oci_platform(p: &Platform) -> oci_spec::image::Platform {
    let mut out = oci_spec::image::PlatformBuilder::default()
        .architecture(p.architecture.as_str())
        .os(p.os.as_str())
        .build()
        .expect("architecture and os are set");
    out.set_variant(p.variant.clone());
    out
}

/// The platform an image config declares.
pub fn config_platform(c: &ImageConfiguration) -> Platform {
    Platform::new(&c.os().to_string(), &c.architecture().to_string(), c.variant().as_deref())
}

/// Whether an image for `have` satisfies a request for `want`: equal after
/// normalisation, or the same os/arch when the request names no variant.
pub fn platform_matches(want: &Platform, have: &Platform) -> bool {
    want == have || (want.variant.is_none() && want.os == have.os && want.architecture == have.architecture)
}

/// Picks the index entry for `want`, preferring an exact match over a
/// variant-less one.
pub fn select_platform<'a>(index: &'a ImageIndex, want: &Platform, what: &str) -> Result<&'a Descriptor, ModelError> {
    let candidates: Vec<(&Descriptor, Platform)> = index
        .manifests()
        .iter()
        .filter(|d| media::is_manifest(d.media_type().as_ref()))
        .filter_map(|d| descriptor_platform(d).map(|p| (d, p)))
        .collect();
    if let Some((d, _)) = candidates.iter().find(|(_, p)| p == want) {
        return Ok(d);
    }
    if let Some((d, _)) = candidates.iter().find(|(_, p)| platform_matches(want, p)) {
        return Ok(d);
    }
    let available: Vec<String> = candidates.iter().map(|(_, p)| p.to_string()).collect();
    Err(ModelError::NoMatchingPlatform {
        what: what.to_string(),
        wanted: want.to_string(),
        available: if available.is_empty() { "no platforms".into() } else { available.join(", ") },
    })
}

/// One resolved single-platform image: its manifest and config.
#[derive(Debug, Clone)]
pub struct Image {
    pub manifest_descriptor: Descriptor,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
    /// The config blob exactly as stored (what `kiln inspect` prints).
    pub config_bytes: Vec<u8>,
}

impl Image {
    pub fn platform(&self) -> Platform {
        config_platform(&self.config)
    }

    /// Uncompressed layer digests, in order, from the config.
    pub fn diff_ids(&self) -> &[String] {
        self.config.rootfs().diff_ids()
    }

    /// Total size of the manifest's layers as stored (compressed).
    pub fn layers_size(&self) -> u64 {
        self.manifest.layers().iter().map(|l| l.size()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_LIST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[
      {"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":1,"digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","platform":{"architecture":"amd64","os":"linux"}},
      {"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":1,"digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","platform":{"architecture":"arm64","os":"linux","variant":"v8"}},
      {"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":1,"digest":"sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","platform":{"architecture":"arm","os":"linux","variant":"v7"}}]}"#;

    const DOCKER_MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
      "config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},
      "layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":3,"digest":"sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"}]}"#;

    #[test]
    fn reads_docker_schema2_list_and_selects_platform() {
        let Manifest::Index(idx) = Manifest::parse(DOCKER_LIST.as_bytes(), None, "test").unwrap() else {
            panic!("expected an index")
        };
        let arm64 = select_platform(&idx, &"linux/arm64".parse().unwrap(), "t").unwrap();
        assert!(arm64.digest().to_string().contains("bbbb"));
        let armv7 = select_platform(&idx, &"linux/arm".parse().unwrap(), "t").unwrap();
        assert!(armv7.digest().to_string().contains("cccc"));
        let err = select_platform(&idx, &"linux/s390x".parse().unwrap(), "docker.io/library/x:1").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("linux/s390x") && msg.contains("linux/arm64") && msg.contains("docker.io/library/x:1"), "{msg}");
    }

    #[test]
    fn reads_docker_schema2_manifest() {
        let m = Manifest::parse(DOCKER_MANIFEST.as_bytes(), None, "test").unwrap();
        assert!(matches!(m, Manifest::Image(_)));
        assert_eq!(m.children().len(), 2);
    }

    #[test]
    fn rejects_schema1_and_unknown_types() {
        assert!(matches!(
            Manifest::parse(br#"{"schemaVersion":1,"name":"x"}"#, None, "t"),
            Err(ModelError::SchemaV1 { .. })
        ));
        assert!(matches!(
            Manifest::parse(br#"{"schemaVersion":2,"mediaType":"application/x-foo"}"#, None, "t"),
            Err(ModelError::UnsupportedMediaType { .. })
        ));
    }
}
