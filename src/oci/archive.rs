//! `kiln load` of an archive (a file or standard input): an OCI layout in a
//! tar (`kiln save`, `buildx -o type=oci`, Docker 25+ `docker save`) or a
//! classic Docker archive (`manifest.json` with `<id>/layer.tar` members).
//!
//! The archive is a container of blobs, never a file system: only members
//! whose names the formats define are kept (`blobs/sha256/<hex>`,
//! `index.json`, `oci-layout`, `manifest.json`, `<hex>.json`,
//! `<hex>/layer.tar`), each copied to a fixed name in a private staging
//! directory; everything else is skipped. Blobs are verified against their
//! digests as they enter the store, as for a layout directory.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use kiln_protocol::tar_read::{Kind, TarReader};
use oci_spec::image::{Descriptor, MediaType};

use super::layout::{import_dir, LayoutError};
use super::media;
use super::model::MAX_MANIFEST_SIZE;
use super::store::Store;

type Result<T, E = LayoutError> = std::result::Result<T, E>;

const STAGING_PREFIX: &str = "kiln-load-";

/// Where a member of the archive is kept in the staging directory, if it is
/// one the formats define.
fn staged_name(raw: &[u8]) -> Option<PathBuf> {
    let name = std::str::from_utf8(raw).ok()?.trim_start_matches("./");
    let is_hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    match name {
        "oci-layout" | "index.json" | "manifest.json" => Some(PathBuf::from(name)),
        _ => {
            if let Some(hex) = name.strip_prefix("blobs/sha256/").filter(|h| is_hex(h)) {
                return Some(Path::new("blobs/sha256").join(hex));
            }
            if let Some(hex) = name.strip_suffix("/layer.tar").filter(|h| is_hex(h)) {
                return Some(Path::new("legacy").join(format!("{hex}.tar")));
            }
            name.strip_suffix(".json").filter(|h| is_hex(h)).map(|hex| Path::new("legacy").join(format!("{hex}.json")))
        }
    }
}

/// Imports the images of the archive read from `reader` (named `what` in
/// errors). `select` and `name_for` work as for [`import_dir`]; a classic
/// Docker archive's images are named by their `RepoTags`, as full names
/// (`name_for("", None)` for an image without any).
pub fn import_archive(
    store: &Store,
    reader: impl Read,
    what: &Path,
    select: Option<&str>,
    name_for: impl Fn(&str, Option<&str>) -> String,
) -> Result<Vec<(String, Descriptor)>> {
    let tmp_root = std::env::temp_dir();
    crate::dirs::remove_stale(&tmp_root, STAGING_PREFIX);
    let staging = tempfile::Builder::new()
        .prefix(&crate::dirs::owned_prefix(STAGING_PREFIX))
        .tempdir_in(&tmp_root)
        .map_err(|source| LayoutError::Io { path: tmp_root.clone(), source })?;
    let dir = staging.path();
    let not_archive = |reason: String| LayoutError::NotALayout { path: what.to_path_buf(), reason };
    let mut tar = TarReader::new(reader);
    let mut members = 0usize;
    while let Some(member) = tar.next_member().map_err(|e| not_archive(format!("not a readable tar: {e}")))? {
        members += 1;
        if member.kind != Kind::File {
            continue;
        }
        let Some(name) = staged_name(&member.path) else { continue };
        let path = dir.join(&name);
        fs::create_dir_all(path.parent().expect("staged names have a parent")).map_err(io_at(dir))?;
        let mut out = File::create(&path).map_err(io_at(&path))?;
        io::copy(&mut tar, &mut out).map_err(io_at(&path))?;
        out.flush().map_err(io_at(&path))?;
    }
    if members == 0 {
        return Err(not_archive("the tar is empty".into()));
    }
    if dir.join("oci-layout").is_file() && dir.join("index.json").is_file() {
        let tagged = import_dir(store, dir, select, &name_for);
        // Docker's own archives may name images only in manifest.json.
        let untagged = matches!(&tagged, Ok(t) if t.is_empty());
        if !(untagged && dir.join("manifest.json").is_file()) {
            return tagged.map_err(|e| rename_path(e, dir, what));
        }
    }
    if dir.join("manifest.json").is_file() {
        return import_docker(store, dir, what, select, &name_for);
    }
    Err(not_archive("it holds neither an OCI layout (oci-layout, index.json) nor a Docker manifest.json".into()))
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io { path: path.to_path_buf(), source }
}

/// Errors name the archive, not the staging directory.
fn rename_path(e: LayoutError, staging: &Path, archive: &Path) -> LayoutError {
    let fix = |p: PathBuf| if p.starts_with(staging) { archive.to_path_buf() } else { p };
    match e {
        LayoutError::NotALayout { path, reason } => LayoutError::NotALayout { path: fix(path), reason },
        LayoutError::MissingBlob { path, digest } => LayoutError::MissingBlob { path: fix(path), digest },
        LayoutError::NoSuchRef { path, name, available } => LayoutError::NoSuchRef { path: fix(path), name, available },
        other => other,
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A classic `docker save` archive: each image's config and uncompressed
/// layers become an OCI manifest (the layers' digests must be the config's
/// diff_ids, as `docker load` checks).
fn import_docker(
    store: &Store,
    dir: &Path,
    what: &Path,
    select: Option<&str>,
    name_for: &dyn Fn(&str, Option<&str>) -> String,
) -> Result<Vec<(String, Descriptor)>> {
    let bad = |reason: String| LayoutError::NotALayout { path: what.to_path_buf(), reason };
    let bytes = read_bounded(&dir.join("manifest.json"))?;
    let images: Vec<DockerImage> = serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest.json: {e}")))?;
    let staged = |member: &str| staged_name(member.as_bytes()).map(|n| dir.join(n)).filter(|p| p.is_file());
    let ingest = store.begin_ingest()?;
    let mut to_tag = Vec::new();
    for image in &images {
        let names: Vec<String> = image.repo_tags.clone().unwrap_or_default();
        if let Some(want) = select {
            if !names.iter().any(|n| n == want) {
                continue;
            }
        }
        let config_path = staged(&image.config).ok_or_else(|| bad(format!("the config {} is missing", image.config)))?;
        let config_bytes = read_bounded(&config_path)?;
        let config: serde_json::Value =
            serde_json::from_slice(&config_bytes).map_err(|e| bad(format!("{}: {e}", image.config)))?;
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        if diff_ids.len() != image.layers.len() {
            return Err(bad(format!("{}: the config lists {} layers, manifest.json {}", image.config, diff_ids.len(), image.layers.len())));
        }
        let config_desc = ingest.put_bytes(&config_bytes, MediaType::ImageConfig, None)?;
        let mut layers = Vec::new();
        for (layer, diff_id) in image.layers.iter().zip(&diff_ids) {
            let path = staged(layer).ok_or_else(|| bad(format!("the layer {layer} is missing")))?;
            let mut w = ingest.blob_writer()?;
            io::copy(&mut File::open(&path).map_err(io_at(&path))?, &mut w).map_err(io_at(&path))?;
            let desc = w.commit(MediaType::ImageLayer, None)?;
            if desc.digest().to_string() != *diff_id {
                return Err(bad(format!("the layer {layer} is {}, but the config says {diff_id}", desc.digest())));
            }
            layers.push(desc);
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": config_desc,
            "layers": layers,
        });
        let manifest = serde_json::to_vec(&manifest).expect("serialises");
        let desc = ingest.put_bytes(&manifest, MediaType::ImageManifest, None)?;
        let names = if names.is_empty() { vec![name_for("", None)] } else { names.iter().map(|n| name_for(n, Some(n))).collect() };
        to_tag.push((names, desc));
    }
    if let Some(want) = select {
        if to_tag.is_empty() {
            let available: Vec<String> = images.iter().flat_map(|i| i.repo_tags.clone().unwrap_or_default()).collect();
            return Err(LayoutError::NoSuchRef { path: what.to_path_buf(), name: want.to_string(), available: available.join(", ") });
        }
    }
    ingest.commit()?;
    let mut tagged = Vec::new();
    for (names, desc) in to_tag {
        for name in names {
            store.tag(&name, &desc)?;
            tagged.push((name, desc.clone()));
        }
    }
    Ok(tagged)
}

/// A JSON member, refused above the manifest size bound.
fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|f| f.take(MAX_MANIFEST_SIZE + 1).read_to_end(&mut bytes)).map_err(io_at(path))?;
    if bytes.len() as u64 > MAX_MANIFEST_SIZE {
        return Err(LayoutError::NotALayout { path: path.to_path_buf(), reason: "a JSON member larger than 8 MiB".into() });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_formats_member_names_are_staged() {
        let hex = "a".repeat(64);
        assert_eq!(staged_name(b"./index.json"), Some(PathBuf::from("index.json")));
        assert_eq!(staged_name(format!("blobs/sha256/{hex}").as_bytes()), Some(Path::new("blobs/sha256").join(&hex)));
        assert_eq!(staged_name(format!("{hex}/layer.tar").as_bytes()), Some(Path::new("legacy").join(format!("{hex}.tar"))));
        assert_eq!(staged_name(format!("{hex}.json").as_bytes()), Some(Path::new("legacy").join(format!("{hex}.json"))));
        for hostile in ["../index.json", "blobs/sha256/../../x", "/etc/passwd", "blobs/sha256/ABC", "x/layer.tar"] {
            assert_eq!(staged_name(hostile.as_bytes()), None, "{hostile}");
        }
    }
}
