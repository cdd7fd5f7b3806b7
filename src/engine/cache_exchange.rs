//! The build cache outside the local store, as buildx's `--cache-to` and
//! `--cache-from` move it: a build's cache records (step key → layer and
//! history) written to a registry or a directory, and read back by another
//! machine's build.
//!
//! The records travel as an OCI image manifest any registry accepts: its
//! config is the record list ([`CACHE_CONFIG_MEDIA_TYPE`]), its layers the
//! records' layer blobs. Those are the image's own layers, so a push skips
//! or mounts them instead of uploading them twice. A directory holds the
//! same manifest as an OCI layout.
//!
//! `type=inline` puts the image's own records in its config instead (under
//! [`INLINE_CACHE_KEY`]), so `--cache-from IMAGE` finds them there.
//!
//! An imported record is trusted no more than a local one: its layer is
//! downloaded by digest and size, and its uncompressed content must hash to
//! the record's diff_id before the step counts as cached. The key already
//! covers the step's inputs, since it is computed here from them.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use oci_spec::image::{Descriptor, MediaType};
use serde::{Deserialize, Serialize};

use super::cache::{CacheEntry, CacheKey};
use super::progress::StepLog;
use crate::oci::digest::{self, HashingWriter};
use crate::oci::layout;
use crate::oci::store::Store;
use crate::oci::{media, Compression};
use crate::registry::{Client, ClientOptions, PushOptions, Reference};

/// The media type of the record list, the config of a cache manifest.
pub const CACHE_CONFIG_MEDIA_TYPE: &str = "application/vnd.kiln.build-cache.config.v1+json";
/// The artifact type that marks a manifest as a kiln build cache.
pub const CACHE_ARTIFACT_TYPE: &str = "application/vnd.kiln.build-cache.v1";
/// The image config field that holds inline cache records.
pub const INLINE_CACHE_KEY: &str = "kiln.build-cache.v1";
/// The largest record list read (a record is about 600 bytes).
const MAX_RECORDS_SIZE: u64 = 32 << 20;

/// One step's cached result under its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheRecord {
    pub key: CacheKey,
    #[serde(flatten)]
    pub entry: CacheEntry,
}

#[derive(Serialize, Deserialize)]
struct RecordList {
    records: Vec<CacheRecord>,
}

/// Where cache records live outside the local store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLocation {
    /// A manifest in a registry, under this reference.
    Registry(Reference),
    /// An OCI layout directory.
    Local(PathBuf),
    /// The image's own config (`--cache-to type=inline`).
    Inline,
}

impl std::fmt::Display for CacheLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheLocation::Registry(r) => write!(f, "{r}"),
            CacheLocation::Local(p) => write!(f, "{}", p.display()),
            CacheLocation::Inline => write!(f, "the image config"),
        }
    }
}

/// Which records an export holds: those of the image's own steps (`min`,
/// buildx's default) or of every stage the build ran (`max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    Min,
    Max,
}

/// One `--cache-to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheExport {
    pub location: CacheLocation,
    pub mode: CacheMode,
    /// `ignore-error=true`: a failed export is a warning.
    pub ignore_error: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheSpecError {
    #[error("{option} {spec}: {reason}")]
    Invalid { option: &'static str, spec: String, reason: String },
}

/// The `key=value` fields of a cache option (a bare value is a registry reference).
fn fields(option: &'static str, spec: &str) -> Result<HashMap<String, String>, CacheSpecError> {
    let invalid = |reason: String| CacheSpecError::Invalid { option, spec: spec.to_string(), reason };
    if !spec.contains('=') {
        return Ok(HashMap::from([("type".to_string(), "registry".to_string()), ("ref".to_string(), spec.to_string())]));
    }
    let mut out = HashMap::new();
    for field in spec.split(',') {
        let (k, v) = field.split_once('=').ok_or_else(|| invalid(format!("{field:?} is not key=value")))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

fn location(option: &'static str, spec: &str, kv: &mut HashMap<String, String>, dir_key: &str) -> Result<CacheLocation, CacheSpecError> {
    let invalid = |reason: String| CacheSpecError::Invalid { option, spec: spec.to_string(), reason };
    match kv.remove("type").as_deref() {
        Some("registry") => {
            let r = kv.remove("ref").filter(|r| !r.is_empty()).ok_or_else(|| invalid("ref= is required".into()))?;
            let reference = Reference::parse(&r).map_err(|e| invalid(e.to_string()))?;
            Ok(CacheLocation::Registry(reference))
        }
        Some("local") => {
            let dir = kv.remove(dir_key).filter(|d| !d.is_empty()).ok_or_else(|| invalid(format!("{dir_key}= is required")))?;
            Ok(CacheLocation::Local(dir.into()))
        }
        Some("inline") if option == "--cache-to" => Ok(CacheLocation::Inline),
        Some("inline") => Err(invalid("type=inline is written with --cache-to; read it with --cache-from IMAGE".into())),
        Some(other) => Err(invalid(format!("unknown type {other:?} (expected registry or local)"))),
        None => Err(invalid("type= is required".into())),
    }
}

/// Fields buildx accepts whose values kiln's cache always has: OCI media
/// types and an image manifest. Other values are refused, not ignored.
fn check_fixed_fields(option: &'static str, spec: &str, kv: &mut HashMap<String, String>, compression: Compression) -> Result<(), CacheSpecError> {
    let invalid = |reason: String| CacheSpecError::Invalid { option, spec: spec.to_string(), reason };
    for key in ["oci-mediatypes", "image-manifest"] {
        if let Some(v) = kv.remove(key) {
            if v != "true" {
                return Err(invalid(format!("{key}={v}: kiln's cache is always an OCI image manifest")));
            }
        }
    }
    if let Some(v) = kv.remove("compression") {
        let wanted: Compression = v.parse().map_err(|e: String| invalid(e))?;
        if wanted != compression {
            return Err(invalid(format!(
                "compression={v}: the cache shares the image's layers, which this build compresses otherwise; build with --compression {v}"
            )));
        }
    }
    Ok(())
}

fn no_more_fields(option: &'static str, spec: &str, kv: HashMap<String, String>) -> Result<(), CacheSpecError> {
    let mut left: Vec<String> = kv.into_keys().collect();
    left.sort();
    match left.first() {
        None => Ok(()),
        Some(k) => Err(CacheSpecError::Invalid { option, spec: spec.to_string(), reason: format!("unknown field {k:?}") }),
    }
}

/// Parses `--cache-to`: `type=registry,ref=REF` or `type=local,dest=DIR`,
/// with `mode=min|max` and `ignore-error=true|false`.
pub fn parse_cache_to(spec: &str, compression: Compression) -> Result<CacheExport, CacheSpecError> {
    const OPT: &str = "--cache-to";
    let mut kv = fields(OPT, spec)?;
    let location = location(OPT, spec, &mut kv, "dest")?;
    let mode = match kv.remove("mode").as_deref() {
        None | Some("min") => CacheMode::Min,
        Some("max") => CacheMode::Max,
        Some(other) => return Err(CacheSpecError::Invalid { option: OPT, spec: spec.into(), reason: format!("mode={other}: expected min or max") }),
    };
    if location == CacheLocation::Inline && mode == CacheMode::Max {
        return Err(CacheSpecError::Invalid { option: OPT, spec: spec.into(), reason: "an image holds only its own steps' layers: type=inline supports mode=min".into() });
    }
    let ignore_error = kv.remove("ignore-error").is_some_and(|v| v == "true");
    check_fixed_fields(OPT, spec, &mut kv, compression)?;
    no_more_fields(OPT, spec, kv)?;
    Ok(CacheExport { location, mode, ignore_error })
}

/// Parses `--cache-from`: `REF`, `type=registry,ref=REF` or `type=local,src=DIR`.
pub fn parse_cache_from(spec: &str) -> Result<CacheLocation, CacheSpecError> {
    const OPT: &str = "--cache-from";
    let mut kv = fields(OPT, spec)?;
    let location = location(OPT, spec, &mut kv, "src")?;
    // buildx's local cache may name a digest or tag of the layout; kiln's holds one cache.
    kv.remove("digest");
    kv.remove("tag");
    no_more_fields(OPT, spec, kv)?;
    Ok(location)
}

/// Records read from `--cache-from` sources, with what is needed to fetch
/// their layers. Shared by the builds of every platform.
pub struct ImportedCache {
    sources: Vec<CacheLocation>,
    /// Each key's entry and the index of the source it came from (the first source wins).
    records: HashMap<CacheKey, (usize, CacheEntry)>,
    client: Option<Client>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for ImportedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportedCache").field("sources", &self.sources).field("records", &self.records.len()).finish()
    }
}

impl ImportedCache {
    /// No imported records.
    pub fn empty() -> Self {
        ImportedCache { sources: Vec::new(), records: HashMap::new(), client: None, runtime: None }
    }

    /// Reads the records of every source. A source that is missing or
    /// unreadable adds a warning, not an error, as in buildx.
    pub fn load(sources: &[CacheLocation], registry: &ClientOptions, store: &Store, cancel: &AtomicBool) -> (Self, Vec<String>) {
        let mut cache = ImportedCache::empty();
        let mut warnings = Vec::new();
        for source in sources {
            let read = match source {
                CacheLocation::Registry(reference) => cache.registry_records(reference, registry, store, cancel),
                CacheLocation::Local(dir) => read_local_records(dir),
                CacheLocation::Inline => unreachable!("--cache-from never reads type=inline"),
            };
            match read {
                Ok(records) => {
                    let index = cache.sources.len();
                    cache.sources.push(source.clone());
                    for r in records {
                        cache.records.entry(r.key).or_insert((index, r.entry));
                    }
                }
                Err(e) => warnings.push(format!("--cache-from {source}: {e}; building without it")),
            }
        }
        (cache, warnings)
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn runtime(&mut self) -> Result<&tokio::runtime::Runtime, String> {
        if self.runtime.is_none() {
            let rt = crate::cancel::runtime().map_err(|e| format!("starting the async runtime: {e}"))?;
            self.runtime = Some(rt);
        }
        Ok(self.runtime.as_ref().expect("set above"))
    }

    fn registry_records(&mut self, reference: &Reference, registry: &ClientOptions, store: &Store, cancel: &AtomicBool) -> Result<Vec<CacheRecord>, String> {
        if self.client.is_none() {
            self.client = Some(Client::new(registry.clone()).map_err(|e| e.to_string())?);
        }
        self.runtime()?;
        let (client, runtime) = (self.client.as_ref().expect("set above"), self.runtime.as_ref().expect("set above"));
        let work = client_records(client, store, reference);
        crate::cancel::block_on(runtime, cancel, work).map_err(|e| e.to_string())?
    }

    /// The imported entry for `key`, its layer fetched into `store` and
    /// checked. `Ok(None)` when no source has the key; an error when a
    /// source has it but its layer cannot be fetched or is not what the
    /// record says (the step then runs, and the caller warns).
    pub fn fetch(&self, store: &Store, key: &CacheKey, cancel: &AtomicBool) -> Result<Option<CacheEntry>, String> {
        let Some((source, entry)) = self.records.get(key) else { return Ok(None) };
        let Some(layer) = &entry.layer else { return Ok(Some(entry.clone())) };
        let blob = &layer.descriptor;
        if !store.has_intact_blob(blob) {
            match &self.sources[*source] {
                CacheLocation::Registry(reference) => {
                    let (client, runtime) = (self.client.as_ref().expect("a registry source has a client"), self.runtime.as_ref().expect("and a runtime"));
                    crate::cancel::block_on(runtime, cancel, client.pull_blob(store, reference, blob))
                        .map_err(|e| e.to_string())?
                        .map_err(|e| format!("layer {} from {reference}: {e}", blob.digest()))?;
                }
                CacheLocation::Local(dir) => copy_local_blob(dir, store, blob)?,
                CacheLocation::Inline => unreachable!("--cache-from never reads type=inline"),
            }
        }
        let actual = diff_id_of(store, blob).map_err(|e| format!("layer {}: {e}", blob.digest()))?;
        if actual != layer.diff_id {
            return Err(format!("layer {} unpacks to {actual}, but the cache record says {}", blob.digest(), layer.diff_id));
        }
        Ok(Some(entry.clone()))
    }
}

/// The records `reference` holds: a cache manifest's, or those inline in
/// an image's config (every platform's, for an index).
async fn client_records(client: &Client, store: &Store, reference: &Reference) -> Result<Vec<CacheRecord>, String> {
    let scopes = [format!("repository:{}:pull", reference.repository)];
    let (bytes, desc) = client.fetch_manifest(reference, &reference.target(), None, &scopes).await.map_err(|e| e.to_string())?;
    let manifests = match crate::oci::Manifest::parse(&bytes, Some(desc.media_type().as_ref()), &reference.to_string()).map_err(|e| e.to_string())? {
        crate::oci::Manifest::Image(m) => vec![*m],
        crate::oci::Manifest::Index(index) => {
            let mut images = Vec::new();
            for child in index.manifests().iter().filter(|d| media::is_manifest(d.media_type().as_ref())) {
                let (b, _) = client.fetch_manifest(reference, child.digest().as_ref(), Some(child), &scopes).await.map_err(|e| e.to_string())?;
                images.push(serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", child.digest()))?);
            }
            images
        }
    };
    let mut records = Vec::new();
    for m in &manifests {
        let config = m.config();
        if config.size() > MAX_RECORDS_SIZE {
            return Err(format!("its config is larger than {MAX_RECORDS_SIZE} bytes"));
        }
        client.pull_blob(store, reference, config).await.map_err(|e| e.to_string())?;
        let bytes = store.read_blob(config.digest(), Some(config.size())).map_err(|e| e.to_string())?;
        records.extend(records_in(config.media_type().as_ref(), &bytes)?);
    }
    Ok(records)
}

/// The records in a config blob: a cache manifest's record list, or the
/// inline records of an image config. An image without them is an error,
/// so that a wrong `--cache-from` is reported.
fn records_in(media_type: &str, config: &[u8]) -> Result<Vec<CacheRecord>, String> {
    if media_type == CACHE_CONFIG_MEDIA_TYPE {
        return parse_records(config);
    }
    let value: serde_json::Value = serde_json::from_slice(config).map_err(|e| format!("its config is not JSON: {e}"))?;
    match value.get(INLINE_CACHE_KEY) {
        Some(list) => serde_json::from_value(list.clone()).map_err(|e| format!("its inline cache records are not valid: {e}")),
        None => Err("this is neither a kiln build cache nor an image built with --cache-to type=inline".into()),
    }
}

/// The sha256 of a layer's uncompressed tar.
fn diff_id_of(store: &Store, blob: &Descriptor) -> Result<String, String> {
    let mut tar = crate::oci::layer::open_layer(store, blob).map_err(|e| e.to_string())?;
    let mut hashing = HashingWriter::new(std::io::sink());
    std::io::copy(&mut tar, &mut hashing).map_err(|e| e.to_string())?;
    Ok(hashing.finish().0.to_string())
}

fn parse_records(bytes: &[u8]) -> Result<Vec<CacheRecord>, String> {
    let list: RecordList = serde_json::from_slice(bytes).map_err(|e| format!("the record list is not valid: {e}"))?;
    Ok(list.records)
}

/// A verified file from a layout's `blobs/sha256/`, read at most to its
/// recorded size plus one byte (a link to /dev/zero cannot stall us).
fn read_local_blob(dir: &Path, blob: &Descriptor) -> Result<Vec<u8>, String> {
    let path = local_blob_path(dir, blob)?;
    let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(blob.size() + 1).read_to_end(&mut bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let actual = digest::of_bytes(&bytes);
    if &actual != blob.digest() || bytes.len() as u64 != blob.size() {
        return Err(format!("{} does not match its digest", path.display()));
    }
    Ok(bytes)
}

fn local_blob_path(dir: &Path, blob: &Descriptor) -> Result<PathBuf, String> {
    layout::blob_path(dir, blob.digest()).map_err(|e| e.to_string())
}

fn copy_local_blob(dir: &Path, store: &Store, blob: &Descriptor) -> Result<(), String> {
    let writer = store.blob_writer().map_err(|e| e.to_string())?;
    layout::copy_blob(dir, blob, writer).map_err(|e| e.to_string())
}

/// The records of a cache directory: its index's manifest, then that
/// manifest's record list, each checked against its digest.
fn read_local_records(dir: &Path) -> Result<Vec<CacheRecord>, String> {
    let index_path = dir.join("index.json");
    let file = std::fs::File::open(&index_path).map_err(|e| format!("{}: {e}", index_path.display()))?;
    let mut bytes = Vec::new();
    file.take(crate::oci::model::MAX_MANIFEST_SIZE).read_to_end(&mut bytes).map_err(|e| format!("{}: {e}", index_path.display()))?;
    let index: oci_spec::image::ImageIndex = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", index_path.display()))?;
    let manifest = index
        .manifests()
        .iter()
        .find(|d| media::is_manifest(d.media_type().as_ref()))
        .ok_or_else(|| format!("{} lists no manifest", index_path.display()))?;
    if manifest.size() > crate::oci::model::MAX_MANIFEST_SIZE {
        return Err(format!("its manifest is larger than {} bytes", crate::oci::model::MAX_MANIFEST_SIZE));
    }
    let manifest: oci_spec::image::ImageManifest =
        serde_json::from_slice(&read_local_blob(dir, manifest)?).map_err(|e| format!("its manifest is not valid: {e}"))?;
    let config = manifest.config();
    if config.size() > MAX_RECORDS_SIZE {
        return Err(format!("its config is larger than {MAX_RECORDS_SIZE} bytes"));
    }
    records_in(config.media_type().as_ref(), &read_local_blob(dir, config)?)
}

/// Writes `records` as a cache manifest into `store` and returns it.
fn write_cache_manifest(store: &Store, records: &[CacheRecord]) -> Result<Descriptor, String> {
    let list = serde_json::to_vec(&RecordList { records: records.to_vec() }).expect("records serialise");
    let config = store.put_blob_bytes(&list, MediaType::Other(CACHE_CONFIG_MEDIA_TYPE.into())).map_err(|e| e.to_string())?;
    let mut layers: Vec<&Descriptor> = Vec::new();
    for l in records.iter().filter_map(|r| r.entry.layer.as_ref()) {
        if !layers.iter().any(|d| d.digest() == l.descriptor.digest()) {
            layers.push(&l.descriptor);
        }
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": CACHE_ARTIFACT_TYPE,
        "config": config,
        "layers": layers,
    });
    store.put_json(&manifest, MediaType::ImageManifest).map_err(|e| e.to_string())
}

/// Writes `records` to `export`'s location: pushed to a registry (layers
/// that `mount_from`, a repository of the same registry, has are mounted;
/// those the destination has are skipped), or into a layout directory
/// (created, or updated in place: blobs added, index.json replaced). Returns
/// the cache manifest's digest and, for a push, what moved.
/// A push is a step of its own on `progress`, with its transfers.
pub fn export(
    store: &Store,
    records: &[CacheRecord],
    export: &CacheExport,
    registry: &ClientOptions,
    mount_from: Option<&Reference>,
    progress: &StepLog,
    cancel: &AtomicBool,
) -> Result<String, String> {
    if export.location == CacheLocation::Inline {
        return Ok("no upload of its own".into());
    }
    let manifest = write_cache_manifest(store, records)?;
    match &export.location {
        CacheLocation::Registry(dest) => {
            let client = Client::new(registry.clone()).map_err(|e| e.to_string())?;
            let runtime = crate::cancel::runtime().map_err(|e| format!("starting the async runtime: {e}"))?;
            let mount_from = mount_from.filter(|m| m.registry == dest.registry && m.repository != dest.repository).map(|m| m.repository.clone());
            let opts = PushOptions { mount_from };
            let report = progress.step_with_id(&format!("exporting cache to {dest}"), |id| {
                let client = client.with_observer(progress.transfers(id));
                crate::cancel::block_on(&runtime, cancel, client.push(store, &manifest, dest, &opts))
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            })?;
            Ok(format!(
                "{}; {} blobs uploaded, {} mounted, {} already there",
                manifest.digest(),
                report.uploaded,
                report.mounted,
                report.skipped
            ))
        }
        CacheLocation::Local(dir) => {
            write_local(store, &manifest, dir, cancel)?;
            Ok(manifest.digest().to_string())
        }
        CacheLocation::Inline => unreachable!("returned above"),
    }
}

fn write_local(store: &Store, manifest: &Descriptor, dir: &Path, cancel: &AtomicBool) -> Result<(), String> {
    let io = |path: &Path, e: std::io::Error| format!("{}: {e}", path.display());
    let blobs = crate::dirs::parent_dir(&local_blob_path(dir, manifest)?).to_path_buf();
    std::fs::create_dir_all(&blobs).map_err(|e| io(&blobs, e))?;
    for blob in store.closure(manifest).map_err(|e| e.to_string())? {
        crate::cancel::check(cancel).map_err(|e| e.to_string())?;
        let path = local_blob_path(dir, &blob)?;
        if has_local_blob(dir, &blob) {
            continue;
        }
        let mut tmp = tempfile::NamedTempFile::new_in(&blobs).map_err(|e| io(&blobs, e))?;
        std::io::copy(&mut store.get_blob(&blob).map_err(|e| e.to_string())?, &mut tmp).map_err(|e| io(&path, e))?;
        tmp.persist(&path).map_err(|e| io(&path, e.error))?;
    }
    let layout = dir.join("oci-layout");
    let write = |path: &Path, bytes: &[u8]| crate::dirs::write_atomically(path, bytes).map_err(|e| io(path, e));
    write(&layout, crate::oci::store::OCI_LAYOUT)?;
    let index = serde_json::json!({ "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": [manifest] });
    write(&dir.join("index.json"), &serde_json::to_vec_pretty(&index).expect("serialises"))
}

/// Whether the layout already holds this blob, whole (size checked; the
/// content was verified when it was written).
fn has_local_blob(dir: &Path, blob: &Descriptor) -> bool {
    local_blob_path(dir, blob).ok().and_then(|p| std::fs::metadata(p).ok()).is_some_and(|m| m.is_file() && m.len() == blob.size())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cache::CachedLayer;
    use crate::engine::image_config::History;

    #[test]
    fn cache_options_parse_like_buildx() {
        let gz = Compression::Gzip;
        let to = parse_cache_to("type=registry,ref=127.0.0.1:5000/app:cache,mode=max", gz).unwrap();
        assert_eq!(to.mode, CacheMode::Max);
        assert_eq!(to.location, CacheLocation::Registry(Reference::parse("127.0.0.1:5000/app:cache").unwrap()));
        let to = parse_cache_to("type=local,dest=/tmp/c", gz).unwrap();
        assert_eq!((to.location, to.mode, to.ignore_error), (CacheLocation::Local("/tmp/c".into()), CacheMode::Min, false));
        assert!(parse_cache_to("type=local,dest=d,ignore-error=true,oci-mediatypes=true,compression=gzip", gz).unwrap().ignore_error);
        assert_eq!(parse_cache_from("ghcr.io/o/app:cache").unwrap(), CacheLocation::Registry(Reference::parse("ghcr.io/o/app:cache").unwrap()));
        assert_eq!(parse_cache_from("type=local,src=d").unwrap(), CacheLocation::Local("d".into()));
        for (bad, why) in [
            ("type=registry", "ref="),
            ("type=local", "dest="),
            ("type=gha", "unknown type"),
            ("type=inline,mode=max", "mode=min"),
            ("type=local,dest=d,mode=most", "mode=most"),
            ("type=local,dest=d,compression=zstd", "--compression zstd"),
            ("type=local,dest=d,oci-mediatypes=false", "OCI"),
            ("type=local,dest=d,colour=blue", "colour"),
        ] {
            let err = parse_cache_to(bad, gz).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(parse_cache_from("type=local,dest=d").unwrap_err().to_string().contains("src="));
        assert_eq!(parse_cache_to("type=inline", gz).unwrap().location, CacheLocation::Inline);
        assert!(parse_cache_from("type=inline").is_err());
    }

    fn record(store: &Store, key: &str, content: &[u8]) -> CacheRecord {
        // An uncompressed layer: its diff_id is its digest.
        let diff_id = digest::of_bytes(content).to_string();
        let descriptor = store.put_blob_bytes(content, MediaType::ImageLayer).unwrap();
        CacheRecord {
            key: CacheKey::root(key),
            entry: CacheEntry { layer: Some(CachedLayer { descriptor, diff_id }), history: History { created_by: format!("RUN {key}"), ..Default::default() } },
        }
    }

    #[test]
    fn a_local_cache_round_trips_and_checks_what_it_hands_out() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(dir.path().join("a")).unwrap();
        let cache_dir = dir.path().join("cache");
        let records = vec![record(&a, "one", b"1"), record(&a, "two", b"2")];
        let empty = CacheRecord { key: CacheKey::root("env"), entry: CacheEntry { layer: None, history: History::default() } };
        let mut all = records.clone();
        all.push(empty.clone());
        let to = CacheExport { location: CacheLocation::Local(cache_dir.clone()), mode: CacheMode::Max, ignore_error: false };
        let never = AtomicBool::new(false);
        let quiet = StepLog::new(std::sync::Arc::new(std::sync::Mutex::new(super::super::progress::Progress::new(super::super::progress::ProgressMode::Quiet))), "");
        export(&a, &all, &to, &ClientOptions::default(), None, &quiet, &never).unwrap();
        // Exporting again over the same directory updates it in place.
        export(&a, &all, &to, &ClientOptions::default(), None, &quiet, &never).unwrap();

        let b = Store::open(dir.path().join("b")).unwrap();
        let (cache, warnings) = ImportedCache::load(&[CacheLocation::Local(cache_dir.clone())], &ClientOptions::default(), &b, &never);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cache.fetch(&b, &records[0].key, &never).unwrap(), Some(records[0].entry.clone()));
        assert!(b.has_intact_blob(&records[0].entry.layer.as_ref().unwrap().descriptor), "the layer was fetched into the store");
        assert_eq!(cache.fetch(&b, &empty.key, &never).unwrap(), Some(empty.entry.clone()));
        assert_eq!(cache.fetch(&b, &CacheKey::root("three"), &never).unwrap(), None);

        // A damaged layer in the cache is refused, naming it.
        let second = &records[1].entry.layer.as_ref().unwrap().descriptor;
        let path = local_blob_path(&cache_dir, second).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = cache.fetch(&b, &records[1].key, &never).unwrap_err();
        assert!(err.contains(&second.digest().to_string()), "{err}");
        assert!(!b.has_blob(second.digest()));

        // A record whose diff_id lies is refused too.
        let c = Store::open(dir.path().join("c")).unwrap();
        let mut lying = records[0].clone();
        lying.entry.layer.as_mut().unwrap().diff_id = digest::of_bytes(b"other").to_string();
        let lying_dir = dir.path().join("lying");
        export(&a, &[lying.clone()], &CacheExport { location: CacheLocation::Local(lying_dir.clone()), ..to.clone() }, &ClientOptions::default(), None, &quiet, &never).unwrap();
        let (cache, _) = ImportedCache::load(&[CacheLocation::Local(lying_dir)], &ClientOptions::default(), &c, &never);
        assert!(cache.fetch(&c, &lying.key, &never).unwrap_err().contains("cache record says"));

        // A missing directory and an image layout are warnings, not errors.
        let (cache, warnings) = ImportedCache::load(&[CacheLocation::Local(dir.path().join("nowhere"))], &ClientOptions::default(), &c, &never);
        assert!(cache.is_empty());
        assert!(warnings[0].contains("nowhere"), "{warnings:?}");
    }
}
