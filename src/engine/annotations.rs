//! `--annotation`, as buildx reads it: `[TYPES[PLATFORM]:]KEY=VALUE`, where
//! TYPES is a comma list of `manifest` (the default), `index` and
//! `manifest-descriptor`, and `[linux/arm64]` limits it to one platform.
//! The annotations go into the image's manifests and index JSON, so they
//! change the digests as buildx's do.

use std::collections::BTreeMap;

use oci_spec::image::{Descriptor, MediaType};
use serde_json::Value;

use crate::oci::store::{Store, StoreError};
use crate::platform::Platform;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// In each platform's image manifest.
    Manifest,
    /// In the multi-platform index.
    Index,
    /// On each manifest's entry in the index.
    ManifestDescriptor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    pub targets: Vec<Target>,
    pub platform: Option<Platform>,
    pub key: String,
    pub value: String,
}

/// Reads one `--annotation` value.
pub fn parse(spec: &str) -> Result<Annotation, String> {
    let bad = |why: &str| format!("--annotation {spec}: {why}");
    let (head, value) = spec.split_once('=').ok_or_else(|| bad("expected KEY=VALUE"))?;
    let (types, key) = match head.rsplit_once(':') {
        Some((types, key)) => (Some(types), key),
        None => (None, head),
    };
    if key.is_empty() {
        return Err(bad("the key is empty"));
    }
    let (types, platform) = match types.map(|t| t.split_once('[')) {
        Some(Some((types, rest))) => {
            let platform = rest.strip_suffix(']').ok_or_else(|| bad("a [platform] is not closed"))?;
            (Some(types), Some(platform.parse::<Platform>().map_err(|e| bad(&e.to_string()))?))
        }
        _ => (types, None),
    };
    let targets = match types.filter(|t| !t.is_empty()) {
        None => vec![Target::Manifest],
        Some(list) => list
            .split(',')
            .map(|t| match t.trim() {
                "manifest" => Ok(Target::Manifest),
                "index" => Ok(Target::Index),
                "manifest-descriptor" => Ok(Target::ManifestDescriptor),
                "index-descriptor" => Err(bad("index-descriptor annotations are not supported (kiln writes them to no layout)")),
                other => Err(bad(&format!("unknown type {other:?} (expected manifest, index or manifest-descriptor)"))),
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(Annotation { targets, platform, key: key.to_string(), value: value.to_string() })
}

/// The annotations of `target` that apply to `platform` (None: the index).
pub fn select(all: &[Annotation], target: Target, platform: Option<&Platform>) -> BTreeMap<String, String> {
    all.iter()
        .filter(|a| a.targets.contains(&target))
        .filter(|a| match (&a.platform, platform) {
            (Some(want), Some(p)) => want == p,
            (Some(_), None) => false,
            (None, _) => true,
        })
        .map(|a| (a.key.clone(), a.value.clone()))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum AnnotateError {
    #[error("{digest} is not a JSON object: {detail}")]
    Malformed { digest: String, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Rewrites the manifest or index `desc` with `annotations` merged into its
/// own; returns the new descriptor (same media type and platform).
pub fn annotate(store: &Store, desc: &Descriptor, annotations: &BTreeMap<String, String>) -> Result<Descriptor, AnnotateError> {
    if annotations.is_empty() {
        return Ok(desc.clone());
    }
    let bytes = store.read_blob(desc.digest(), Some(desc.size()))?;
    let malformed = |detail: String| AnnotateError::Malformed { digest: desc.digest().to_string(), detail };
    let mut doc: Value = serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
    let map = doc.as_object_mut().ok_or_else(|| malformed("an array or value".into()))?;
    let entry = map.entry("annotations").or_insert_with(|| Value::Object(Default::default()));
    if let Some(existing) = entry.as_object_mut() {
        for (k, v) in annotations {
            existing.insert(k.clone(), Value::String(v.clone()));
        }
    }
    let media_type: MediaType = desc.media_type().clone();
    let mut out = store.put_json(&doc, media_type)?;
    out.set_platform(desc.platform().clone());
    out.set_annotations(desc.annotations().clone());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_parse_like_buildx() {
        let a = parse("org.opencontainers.image.source=https://example.com/x").unwrap();
        assert_eq!((a.targets.as_slice(), a.key.as_str(), a.value.as_str()), ([Target::Manifest].as_slice(), "org.opencontainers.image.source", "https://example.com/x"));
        let a = parse("index,manifest-descriptor:k=v").unwrap();
        assert_eq!(a.targets, vec![Target::Index, Target::ManifestDescriptor]);
        let a = parse("manifest[linux/arm64]:k=v=w").unwrap();
        assert_eq!((a.platform.unwrap().to_string().as_str(), a.value.as_str()), ("linux/arm64", "v=w"));
        assert!(parse("k").unwrap_err().contains("KEY=VALUE"));
        assert!(parse("blob:k=v").unwrap_err().contains("unknown type"));
        assert!(parse("index-descriptor:k=v").unwrap_err().contains("not supported"));
        assert!(parse("manifest[linux/arm64:k=v").is_err());
    }

    #[test]
    fn selection_follows_target_and_platform() {
        let all = vec![parse("a=1").unwrap(), parse("manifest[linux/amd64]:b=2").unwrap(), parse("index:c=3").unwrap()];
        let arm: Platform = "linux/arm64".parse().unwrap();
        let amd: Platform = "linux/amd64".parse().unwrap();
        assert_eq!(select(&all, Target::Manifest, Some(&arm)).into_iter().collect::<Vec<_>>(), vec![("a".into(), "1".into())]);
        assert_eq!(select(&all, Target::Manifest, Some(&amd)).len(), 2);
        assert_eq!(select(&all, Target::Index, None).into_iter().collect::<Vec<_>>(), vec![("c".into(), "3".into())]);
    }
}
