//! OCI image layouts (directory or tar) and Docker archives (`docker load`),
//! written from the store; OCI layout directories read into the store.
//!
//! Both tar formats share one writer: a Docker archive is an OCI layout plus
//! the `manifest.json` that `docker load` reads, which is what
//! `docker save` itself writes since Docker 25.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use oci_spec::image::{Descriptor, Digest};

use crate::oci::digest;
use crate::oci::media;
use crate::oci::model::{Manifest, MAX_MANIFEST_SIZE};
use crate::oci::store::{BlobWriter, Ingest, Store, StoreError, OCI_LAYOUT, REF_NAME_ANNOTATION};
use crate::platform::Platform;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} already exists; choose a new path")]
    Exists { path: PathBuf },
    #[error("{path} is not an OCI image layout: {reason}")]
    NotALayout { path: PathBuf, reason: String },
    #[error("{path}: blob {digest} is missing from the layout")]
    MissingBlob { path: PathBuf, digest: String },
    #[error("{path}: no image named {name:?} in the layout (it has: {available})")]
    NoSuchRef { path: PathBuf, name: String, available: String },
    #[error(transparent)]
    Interrupted(#[from] crate::cancel::Interrupted),
}

type Result<T, E = LayoutError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io { path: path.to_path_buf(), source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An OCI image layout directory.
    OciDir,
    /// An OCI image layout in a tar file.
    OciTar,
    /// A tar file `docker load` accepts (also a valid OCI layout).
    DockerArchive,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "oci-dir" | "oci-layout" => Ok(Self::OciDir),
            "oci" | "oci-tar" => Ok(Self::OciTar),
            "docker" | "docker-archive" => Ok(Self::DockerArchive),
            _ => Err(format!("unknown format {s:?}: expected oci-dir, oci or docker")),
        }
    }
}

/// One image to export: the descriptor (manifest or index) and the names it
/// gets in the output (`ref_name` for the OCI index, `repo_tag` for Docker).
#[derive(Debug, Clone)]
pub struct ExportEntry {
    pub descriptor: Descriptor,
    pub ref_name: Option<String>,
    pub repo_tag: Option<String>,
}

/// Writes `entries` to `dest` in `format`. Docker archives hold one platform
/// per image (`platform`, or the host's); OCI layouts keep whole indexes.
/// The output appears atomically: it is written under a temp name first.
/// Writes `entries` to `dest` in `format`. Everything is written under a
/// temporary name next to `dest` and renamed into place at the end, so a
/// failed export leaves `dest` as it was. An archive (`OciTar`,
/// `DockerArchive`) replaces an existing file when `replace_file` is set, as
/// `docker save -o` and buildx's `dest=` do; a directory is never replaced.
pub fn export(
    store: &Store,
    entries: &[ExportEntry],
    format: Format,
    dest: &Path,
    platform: Option<&Platform>,
    replace_file: bool,
    cancel: &AtomicBool,
) -> Result<()> {
    let replaceable = replace_file && format != Format::OciDir && fs::symlink_metadata(dest).is_ok_and(|m| m.is_file());
    if dest.exists() && !replaceable {
        return Err(LayoutError::Exists { path: dest.to_path_buf() });
    }
    let parent = crate::dirs::parent_dir(dest);
    // Resolve what goes in first, so a bad entry fails before anything is written.
    let plan = plan_export(store, entries, format, platform)?;
    match format {
        Format::OciDir => {
            let tmp = export_builder(&export_prefix(parent), 0o777).tempdir_in(parent).map_err(io_err(parent))?;
            let b = tmp.path().join("blobs").join("sha256");
            fs::create_dir_all(&b).map_err(io_err(&b))?;
            for d in &plan.blobs {
                crate::cancel::check(cancel)?;
                let path = blob_path(tmp.path(), d.digest())?;
                let mut out = BufWriter::new(File::create(&path).map_err(io_err(&path))?);
                io::copy(&mut store.get_blob(d)?, &mut out).map_err(io_err(&path))?;
                out.flush().map_err(io_err(&path))?;
            }
            fs::write(tmp.path().join("oci-layout"), OCI_LAYOUT).map_err(io_err(tmp.path()))?;
            fs::write(tmp.path().join("index.json"), &plan.index).map_err(io_err(tmp.path()))?;
            let kept = tmp.keep();
            fs::rename(&kept, dest).map_err(|e| {
                let _ = fs::remove_dir_all(&kept);
                io_err(dest)(e)
            })?;
        }
        Format::OciTar | Format::DockerArchive => {
            let tmp = export_temp_file(dest).map_err(io_err(parent))?;
            write_archive(store, &plan, BufWriter::with_capacity(1 << 20, tmp.as_file()), dest, cancel)?;
            tmp.persist(dest).map_err(|e| io_err(dest)(e.error))?;
        }
    }
    Ok(())
}

/// Like [`export`] for an archive format, streamed to `out` (e.g. standard
/// output, for `kiln save IMAGE | kiln load`).
pub fn export_to_writer(
    store: &Store,
    entries: &[ExportEntry],
    format: Format,
    platform: Option<&Platform>,
    out: &mut dyn Write,
    cancel: &AtomicBool,
) -> Result<()> {
    assert!(format != Format::OciDir, "a layout directory cannot be streamed");
    let plan = plan_export(store, entries, format, platform)?;
    write_archive(store, &plan, BufWriter::with_capacity(1 << 20, out), Path::new("standard output"), cancel)
}

/// containerd's annotation for an image's full name in a layout's index.
const IMAGE_NAME_ANNOTATION: &str = "io.containerd.image.name";

/// What an export writes: every blob once, the index, and for a Docker
/// archive its manifest.json.
struct ExportPlan {
    blobs: Vec<Descriptor>,
    index: Vec<u8>,
    docker_manifest: Option<Vec<u8>>,
}

fn plan_export(store: &Store, entries: &[ExportEntry], format: Format, platform: Option<&Platform>) -> Result<ExportPlan> {
    let mut roots = Vec::new();
    let mut blobs: Vec<Descriptor> = Vec::new();
    let mut seen = HashSet::new();
    let mut docker_manifest = Vec::new();
    for e in entries {
        let root = if format == Format::DockerArchive {
            let image = store.image(&e.descriptor, platform)?;
            let mut layers = Vec::new();
            for l in image.manifest.layers() {
                layers.push(blob_name(l.digest()));
            }
            docker_manifest.push(serde_json::json!({
                "Config": blob_name(image.manifest.config().digest()),
                "RepoTags": e.repo_tag.iter().collect::<Vec<_>>(),
                "Layers": layers,
            }));
            image.manifest_descriptor
        } else {
            e.descriptor.clone()
        };
        for d in store.closure(&root)? {
            if seen.insert(d.digest().clone()) {
                blobs.push(d);
            }
        }
        // Annotations in a sorted map, so the index's bytes are the same every time.
        let mut annotations = serde_json::Map::new();
        if let Some(name) = e.ref_name.as_ref().or(e.repo_tag.as_ref()) {
            annotations.insert(REF_NAME_ANNOTATION.to_string(), name.clone().into());
        }
        if let Some(full) = &e.repo_tag {
            // The full name, as containerd and Docker 25+ write it, so a load names the image as it was.
            annotations.insert(IMAGE_NAME_ANNOTATION.to_string(), full.clone().into());
        }
        let mut annotated = serde_json::to_value(&root).expect("serialises");
        if !annotations.is_empty() {
            annotated["annotations"] = annotations.into();
        }
        roots.push(annotated);
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": roots});
    let index = serde_json::to_vec_pretty(&index).expect("serialises");
    let docker_manifest = (format == Format::DockerArchive).then(|| serde_json::to_vec(&docker_manifest).expect("serialises"));
    Ok(ExportPlan { blobs, index, docker_manifest })
}

/// Writes the plan as a tar to `w` (`dest` names it in errors).
fn write_archive<W: Write>(store: &Store, plan: &ExportPlan, w: W, dest: &Path, cancel: &AtomicBool) -> Result<()> {
    let mut tar = tar::Builder::new(w);
    let t = |e| io_err(dest)(e);
    append_dir(&mut tar, "blobs/").map_err(t)?;
    append_dir(&mut tar, "blobs/sha256/").map_err(t)?;
    for d in &plan.blobs {
        crate::cancel::check(cancel)?;
        let mut r = store.get_blob(d)?;
        append_file(&mut tar, &blob_name(d.digest()), d.size(), &mut r).map_err(t)?;
    }
    append_file(&mut tar, "oci-layout", OCI_LAYOUT.len() as u64, &mut &OCI_LAYOUT[..]).map_err(t)?;
    append_file(&mut tar, "index.json", plan.index.len() as u64, &mut &plan.index[..]).map_err(t)?;
    if let Some(m) = &plan.docker_manifest {
        append_file(&mut tar, "manifest.json", m.len() as u64, &mut &m[..]).map_err(t)?;
    }
    let mut w = tar.into_inner().map_err(t)?;
    w.flush().map_err(t)?;
    Ok(())
}

const EXPORT_PREFIX: &str = ".kiln-export-";

/// A temporary file beside `dest`, for an export that replaces `dest` by
/// renaming this file over it (named and moded like every export's).
pub fn export_temp_file(dest: &Path) -> io::Result<tempfile::NamedTempFile> {
    let parent = crate::dirs::parent_dir(dest);
    export_builder(&export_prefix(parent), 0o666).tempfile_in(parent)
}

/// The temporary-name prefix for an export into `parent`, after removing
/// what a killed export left there.
fn export_prefix(parent: &Path) -> String {
    crate::dirs::remove_stale(parent, EXPORT_PREFIX);
    crate::dirs::owned_prefix(EXPORT_PREFIX)
}

/// Temporary names for an export in progress, created with `mode` less
/// the umask (0666 for a file, 0777 for a directory, as a plain create
/// makes them) rather than tempfile's private 0600: they become the user's output.
fn export_builder(prefix: &str, mode: u32) -> tempfile::Builder<'_, 'static> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = mode;
    b
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.digest())
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, path: &str) -> io::Result<()> {
    let mut h = header(tar::EntryType::Directory, 0, 0o755);
    tar.append_data(&mut h, path, io::empty())
}

fn append_file<W: Write>(tar: &mut tar::Builder<W>, path: &str, size: u64, r: &mut dyn Read) -> io::Result<()> {
    let mut h = header(tar::EntryType::Regular, size, 0o644);
    tar.append_data(&mut h, path, r)
}

/// Copies images from an OCI layout directory into the store. `select`
/// picks by `org.opencontainers.image.ref.name` (all named images when None);
/// each imported image is tagged `name_for(ref_name, full_name)`, the full
/// name coming from `io.containerd.image.name` when the layout has one.
/// Returns the tags made.
pub fn import_dir(
    store: &Store,
    dir: &Path,
    select: Option<&str>,
    name_for: impl Fn(&str, Option<&str>) -> String,
) -> Result<Vec<(String, Descriptor)>> {
    let index = read_index(dir)?;
    let named: Vec<(String, Descriptor)> = index
        .manifests()
        .iter()
        .filter_map(|d| {
            let name = d.annotations().as_ref()?.get(REF_NAME_ANNOTATION)?.clone();
            let mut plain = d.clone();
            plain.set_annotations(None);
            Some((name, plain))
        })
        .collect();
    // The full names (io.containerd.image.name) of the named entries, by ref name.
    let full_names: HashMap<String, String> = index
        .manifests()
        .iter()
        .filter_map(|d| {
            let a = d.annotations().as_ref()?;
            Some((a.get(REF_NAME_ANNOTATION)?.clone(), a.get(IMAGE_NAME_ANNOTATION)?.clone()))
        })
        .collect();
    let chosen: Vec<(String, Descriptor)> = match select {
        Some(want) => {
            let found: Vec<_> = named.iter().filter(|(n, _)| n == want).cloned().collect();
            if found.is_empty() {
                let available = named.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
                return Err(LayoutError::NoSuchRef { path: dir.to_path_buf(), name: want.to_string(), available });
            }
            found
        }
        None => named,
    };
    let ingest = store.begin_ingest()?;
    let mut seen = HashSet::new();
    for (_, d) in &chosen {
        copy_closure(dir, &ingest, d, &mut seen)?;
    }
    ingest.commit()?;
    let mut tagged = Vec::new();
    for (ref_name, d) in chosen {
        let name = name_for(&ref_name, full_names.get(&ref_name).map(String::as_str));
        store.tag(&name, &d)?;
        tagged.push((name, d));
    }
    Ok(tagged)
}

/// The layout's `index.json`, once its `oci-layout` marker says 1.0.0.
fn read_index(dir: &Path) -> Result<oci_spec::image::ImageIndex> {
    let not_layout = |reason: String| LayoutError::NotALayout { path: dir.to_path_buf(), reason };
    let marker = fs::read(dir.join("oci-layout")).map_err(|e| not_layout(format!("oci-layout: {e}")))?;
    let marker: serde_json::Value =
        serde_json::from_slice(&marker).map_err(|e| not_layout(format!("oci-layout: {e}")))?;
    if marker.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
        return Err(not_layout("oci-layout does not declare imageLayoutVersion 1.0.0".into()));
    }
    let index = fs::read(dir.join("index.json")).map_err(|e| not_layout(format!("index.json: {e}")))?;
    serde_json::from_slice(&index).map_err(|e| not_layout(format!("index.json: {e}")))
}

/// Which image of a layout `oci-layout://DIR[:TAG|@DIGEST]` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutSelector {
    Tag(String),
    Digest(String),
    /// `latest`, or the layout's only image.
    Default,
}

/// Copies the one image `select` names from the layout `dir` into the
/// store, untagged (a build input, not a `kiln load`), and returns it.
pub fn import_selected(store: &Store, dir: &Path, select: &LayoutSelector) -> Result<Descriptor> {
    let index = read_index(dir)?;
    let ref_name = |d: &Descriptor| d.annotations().as_ref().and_then(|a| a.get(REF_NAME_ANNOTATION)).cloned();
    let available = || index.manifests().iter().filter_map(ref_name).collect::<Vec<_>>().join(", ");
    let no_such = |name: &str| LayoutError::NoSuchRef { path: dir.to_path_buf(), name: name.to_string(), available: available() };
    let chosen = match select {
        LayoutSelector::Tag(tag) => index.manifests().iter().find(|d| ref_name(d).as_deref() == Some(tag.as_str())).ok_or_else(|| no_such(tag))?,
        LayoutSelector::Digest(digest) => {
            index.manifests().iter().find(|d| d.digest().to_string() == *digest).ok_or_else(|| no_such(digest))?
        }
        LayoutSelector::Default => match index.manifests().iter().find(|d| ref_name(d).as_deref() == Some("latest")) {
            Some(d) => d,
            None if index.manifests().len() == 1 => &index.manifests()[0],
            None => return Err(no_such("latest")),
        },
    };
    let mut plain = chosen.clone();
    plain.set_annotations(None);
    let ingest = store.begin_ingest()?;
    copy_closure(dir, &ingest, &plain, &mut HashSet::new())?;
    ingest.commit()?;
    Ok(plain)
}

fn copy_closure(dir: &Path, ingest: &Ingest<'_>, d: &Descriptor, seen: &mut HashSet<Digest>) -> Result<()> {
    if !seen.insert(d.digest().clone()) {
        return Ok(());
    }
    let path = blob_path(dir, d.digest())?;
    let mt = d.media_type().as_ref();
    if media::is_index(mt) || media::is_manifest(mt) {
        // Bounded: a blob may be a link to /dev/zero. One byte over is enough
        // for put_bytes to refuse it.
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|f| f.take(d.size().min(MAX_MANIFEST_SIZE) + 1).read_to_end(&mut bytes))
            .map_err(|_| LayoutError::MissingBlob { path: dir.to_path_buf(), digest: d.digest().to_string() })?;
        ingest.put_bytes(&bytes, d.media_type().clone(), Some((d.digest(), d.size())))?;
        let m = Manifest::parse(&bytes, Some(mt), &path.display().to_string()).map_err(StoreError::from)?;
        for child in m.children() {
            copy_closure(dir, ingest, &child, seen)?;
        }
    } else if !ingest.has_blob(d.digest()) {
        copy_blob(dir, d, ingest.blob_writer()?)?;
    }
    Ok(())
}

/// Where the layout directory `dir` keeps the blob `digest`.
pub fn blob_path(dir: &Path, digest: &Digest) -> Result<PathBuf> {
    Ok(dir.join("blobs").join("sha256").join(digest::sha256_hex(digest).map_err(StoreError::from)?))
}

/// Copies the blob `d` of the layout directory `dir` through `writer`,
/// verified against its digest and size on commit.
pub fn copy_blob(dir: &Path, d: &Descriptor, mut writer: BlobWriter) -> Result<()> {
    let path = blob_path(dir, d.digest())?;
    let mut f = File::open(&path).map_err(|_| LayoutError::MissingBlob { path: dir.to_path_buf(), digest: d.digest().to_string() })?;
    // One byte over the descriptor's size is enough for commit to refuse it
    // (and a link to /dev/zero is read no further).
    io::copy(&mut (&mut f).take(d.size() + 1), &mut writer).map_err(io_err(&path))?;
    writer.commit(d.media_type().clone(), Some((d.digest(), d.size())))?;
    Ok(())
}
