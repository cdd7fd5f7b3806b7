//! The local image store: content-addressed blobs plus tags.
//!
//! On disk it is an OCI image layout (so `skopeo inspect oci:DIR:NAME` reads
//! it), with the full image name in `org.opencontainers.image.ref.name`:
//!
//! ```text
//! oci-layout, index.json        layout marker and the tags
//! blobs/sha256/<hex>            content, written to tmp/ first then renamed
//! verified/<hex>                the file stamp a blob had when last known
//!                               intact (kiln's own; layout readers ignore it)
//! tmp/                          temp files and ingest staging folders
//! index.lock                    held exclusively while index.json changes
//! gc.lock                       held shared by every open Store, exclusively by prune
//! ```
//!
//! Two kiln processes may use one store at once: blob writes are atomic
//! renames of verified content, tag updates are read-modify-write under
//! `index.lock`, and prune waits until no other process has the store open,
//! so it never deletes a blob that a running pull or build is about to tag.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, Digest, ImageConfiguration, MediaType};
use tempfile::{NamedTempFile, TempDir};

use crate::oci::digest::{self, DigestError, HashingWriter, VerifyingReader};
use crate::oci::media;
use crate::oci::model::{self, Image, Manifest, ModelError};
use crate::platform::Platform;

pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// The `oci-layout` file of an image layout: the store's and every export's.
pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error("blob {digest} is not in the image store")]
    MissingBlob { digest: String },
    #[error("blob {digest} does not match its digest: got {actual} ({actual_size} bytes, expected {expected_size})")]
    DigestMismatch { digest: String, actual: String, actual_size: u64, expected_size: u64 },
    #[error("image store index {path} is corrupt: {source}")]
    CorruptIndex { path: PathBuf, source: serde_json::Error },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("config {digest} is not a valid image config: {source}")]
    BadConfig { digest: String, source: serde_json::Error },
    #[error("no such image: {0}")]
    NoSuchImage(String),
    #[error("cannot tag {name}: {digest} references blob {missing}, which is not in the store")]
    Incomplete { name: String, digest: String, missing: String },
    #[error("cannot tag {name}: blob {damaged} in the image store no longer matches its digest (damaged on disk); pull or build the image again")]
    Damaged { name: String, damaged: String },
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// A tag and the manifest or index it points at.
#[derive(Debug, Clone)]
pub struct TaggedImage {
    pub name: String,
    pub descriptor: Descriptor,
}

/// What `prune` removed.
#[derive(Debug, Default, Clone, Copy)]
pub struct PruneReport {
    pub blobs: usize,
    pub bytes: u64,
    /// Leftovers in tmp/ of pulls and builds that were killed.
    pub partial_files: usize,
    pub partial_bytes: u64,
}

/// Where engine::rootfs keeps what it found in layer blobs (derived data,
/// removed with its blob by [`Store::prune`]).
pub const LAYER_INDEX_DIR: &str = "layer-index";

pub struct Store {
    root: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
    /// Stamps of blobs known intact (see [`Store::blob_is_intact`]).
    verified: PathBuf,
    gc_lock: File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

impl Store {
    /// The user's store, under [`crate::dirs::data_dir`].
    pub fn open_default() -> Result<Self> {
        Self::open(crate::dirs::data_dir().join("images"))
    }

    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let blobs = root.join("blobs").join("sha256");
        let tmp = root.join("tmp");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let gc_path = root.join("gc.lock");
        let gc_lock = open_lock(&gc_path)?;
        let verified = root.join("verified");
        let store = Self { root, blobs, tmp, verified, gc_lock };
        // Alone with the store: whatever is in tmp/ was left by a kiln that
        // was killed, so sweep it now instead of waiting for a prune.
        match lock(&store.gc_lock, LockKind::TryExclusive) {
            Ok(()) => {
                store.sweep_tmp();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(io_err(&gc_path)(e)),
        }
        // Another kiln opening the store holds the lock exclusively for the
        // moment its sweep takes; only a prune holds it for long, and that
        // wait is announced rather than silent.
        let patience = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match lock(&store.gc_lock, LockKind::TryShared) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && std::time::Instant::now() < patience => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    eprintln!("Waiting for a `kiln prune` in another process to finish with {}...", store.root.display());
                    lock(&store.gc_lock, LockKind::Shared).map_err(io_err(&gc_path))?;
                    break;
                }
                Err(e) => return Err(io_err(&gc_path)(e)),
            }
        }
        // Written through tmp/ only under the lock, so another kiln's sweep cannot take it away.
        let layout = store.root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&store.tmp, &layout, OCI_LAYOUT)?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> Result<PathBuf> {
        Ok(self.blobs.join(digest::sha256_hex(digest)?))
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// A writer whose content becomes a blob of this store on [`BlobWriter::commit`].
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        BlobWriter::new(&self.tmp, self.blobs.clone(), self.verified.clone())
    }

    /// Copies a reader into the store and returns its descriptor.
    pub fn put_blob_from_reader(&self, mut reader: impl Read, media_type: MediaType) -> Result<Descriptor> {
        let mut w = self.blob_writer()?;
        io::copy(&mut reader, &mut w).map_err(io_err(&self.tmp))?;
        w.commit(media_type, None)
    }

    pub fn put_blob_bytes(&self, bytes: &[u8], media_type: MediaType) -> Result<Descriptor> {
        self.put_blob_from_reader(bytes, media_type)
    }

    /// Serialises `value` as JSON and stores it.
    pub fn put_json<T: serde::Serialize>(&self, value: &T, media_type: MediaType) -> Result<Descriptor> {
        let bytes = serde_json::to_vec(value).expect("image JSON types always serialise");
        self.put_blob_bytes(&bytes, media_type)
    }

    /// A reader over a blob that fails with `InvalidData` at the end if the
    /// content does not match `descriptor`'s digest and size.
    pub fn get_blob(&self, descriptor: &Descriptor) -> Result<VerifyingReader<File>> {
        let path = self.blob_path(descriptor.digest())?;
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::MissingBlob { digest: descriptor.digest().to_string() },
            _ => StoreError::Io { path: path.clone(), source: e },
        })?;
        Ok(VerifyingReader::new(file, descriptor.digest().clone(), descriptor.size()))
    }

    /// Whether `descriptor`'s blob is intact, cheaply: a blob whose file is
    /// unchanged since kiln last knew it intact (same size, mtime and inode
    /// as its stamp in `verified/`, written when the blob was committed) is
    /// trusted; any other is read whole, and stamped if intact. So a warm
    /// build hashes nothing, yet a blob rewritten in place is caught.
    pub fn blob_is_intact(&self, descriptor: &Descriptor) -> bool {
        let Ok(path) = self.blob_path(descriptor.digest()) else { return false };
        let Ok(meta) = fs::metadata(&path) else { return false };
        if meta.len() != descriptor.size() {
            return false;
        }
        let stamp_path = self.verified.join(path.file_name().expect("blob paths end in a name"));
        let stamp = file_stamp(&meta);
        if fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
            return true;
        }
        if !self.has_intact_blob(descriptor) {
            return false;
        }
        // Best effort: without the stamp the next check reads the blob again.
        let _ = write_stamp(&self.verified, &stamp_path, &stamp);
        true
    }

    /// Whether the store holds `descriptor`'s blob with exactly its digest
    /// and size (reads it whole: a damaged blob is then fetched anew).
    pub fn has_intact_blob(&self, descriptor: &Descriptor) -> bool {
        let size_ok = self
            .blob_path(descriptor.digest())
            .and_then(|p| fs::metadata(&p).map_err(io_err(&p)))
            .is_ok_and(|m| m.len() == descriptor.size());
        size_ok && self.get_blob(descriptor).is_ok_and(|mut r| io::copy(&mut r, &mut io::sink()).is_ok())
    }

    /// A whole blob, verified against its digest (and size, when known).
    pub fn read_blob(&self, digest: &Digest, size: Option<u64>) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::MissingBlob { digest: digest.to_string() },
            _ => StoreError::Io { path: path.clone(), source: e },
        })?;
        verify_bytes(&bytes, digest, size)?;
        Ok(bytes)
    }

    pub fn read_manifest(&self, descriptor: &Descriptor) -> Result<(Manifest, Vec<u8>)> {
        let bytes = self.read_blob(descriptor.digest(), Some(descriptor.size()))?;
        let m = Manifest::parse(&bytes, Some(descriptor.media_type().as_ref()), descriptor.digest().as_ref())?;
        Ok((m, bytes))
    }

    /// A staging area for a multi-blob operation (a pull, an import): blobs
    /// only enter the store when [`Ingest::commit`] is called, and vanish if
    /// the ingest is dropped, so a failed pull adds nothing.
    pub fn begin_ingest(&self) -> Result<Ingest<'_>> {
        let dir = tempfile::Builder::new().prefix("ingest-").tempdir_in(&self.tmp).map_err(io_err(&self.tmp))?;
        Ok(Ingest { store: self, dir })
    }

    /// The single-platform image behind `descriptor`: the manifest itself, or
    /// the entry of an index for `platform` (the host's when None).
    pub fn image(&self, descriptor: &Descriptor, platform: Option<&Platform>) -> Result<Image> {
        let (manifest, _) = self.read_manifest(descriptor)?;
        match manifest {
            Manifest::Index(index) => {
                let want = platform.cloned().unwrap_or_else(Platform::host);
                let child = model::select_platform(&index, &want, descriptor.digest().as_ref())?;
                self.image(&child.clone(), None)
            }
            Manifest::Image(manifest) => {
                let cfg = manifest.config();
                let config_bytes = self.read_blob(cfg.digest(), Some(cfg.size()))?;
                let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
                    .map_err(|source| StoreError::BadConfig { digest: cfg.digest().to_string(), source })?;
                Ok(Image { manifest_descriptor: descriptor.clone(), manifest: *manifest, config, config_bytes })
            }
        }
    }

    /// Every descriptor reachable from `root` (itself included), children
    /// before parents; fails on the first missing blob.
    pub fn closure(&self, root: &Descriptor) -> Result<Vec<Descriptor>> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        self.walk(root, &mut seen, &mut out)?;
        Ok(out)
    }

    fn walk(&self, d: &Descriptor, seen: &mut HashSet<Digest>, out: &mut Vec<Descriptor>) -> Result<()> {
        if !seen.insert(d.digest().clone()) {
            return Ok(());
        }
        let mt = d.media_type().as_ref();
        if media::is_index(mt) || media::is_manifest(mt) {
            let (m, _) = self.read_manifest(d)?;
            for child in m.children() {
                self.walk(&child, seen, out)?;
            }
        } else if !self.has_blob(d.digest()) {
            return Err(StoreError::MissingBlob { digest: d.digest().to_string() });
        }
        out.push(d.clone());
        Ok(())
    }

    /// Points `name` at `descriptor`, after checking that every blob it
    /// references is present and intact ([`Store::blob_is_intact`]), so a
    /// tag never names an incomplete or damaged image.
    pub fn tag(&self, name: &str, descriptor: &Descriptor) -> Result<()> {
        let blobs = self.closure(descriptor).map_err(|e| match e {
            StoreError::MissingBlob { digest } => {
                StoreError::Incomplete { name: name.to_string(), digest: descriptor.digest().to_string(), missing: digest }
            }
            other => other,
        })?;
        if let Some(damaged) = blobs.iter().find(|b| !self.blob_is_intact(b)) {
            return Err(StoreError::Damaged { name: name.to_string(), damaged: damaged.digest().to_string() });
        }
        self.update_index(|tags| {
            tags.insert(name.to_string(), descriptor.clone());
            Ok(())
        })
    }

    /// Removes a tag and returns what it pointed at. Blobs stay until [`Store::prune`].
    pub fn untag(&self, name: &str) -> Result<Descriptor> {
        let mut removed = None;
        self.update_index(|tags| {
            removed = tags.remove(name);
            removed.is_some().then_some(()).ok_or_else(|| StoreError::NoSuchImage(name.to_string()))
        })?;
        Ok(removed.expect("checked above"))
    }

    pub fn tags(&self) -> Result<Vec<TaggedImage>> {
        Ok(self
            .read_index()?
            .into_iter()
            .map(|(name, descriptor)| TaggedImage { name, descriptor })
            .collect())
    }

    /// Finds an image by full name, by digest (`sha256:...`), or by a
    /// unique digest prefix of at least 12 hex digits.
    pub fn resolve(&self, name_or_digest: &str) -> Result<Descriptor> {
        let tags = self.read_index()?;
        if let Some(d) = tags.get(name_or_digest) {
            return Ok(d.clone());
        }
        let hex = name_or_digest.strip_prefix("sha256:").unwrap_or(name_or_digest);
        if hex.len() >= 12 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            let mut found: Vec<&Descriptor> = tags.values().filter(|d| d.digest().digest().starts_with(hex)).collect();
            found.dedup_by(|a, b| a.digest() == b.digest());
            if found.len() == 1 {
                return Ok(found[0].clone());
            }
            if let Ok(digest) = digest::parse(name_or_digest) {
                if self.has_blob(&digest) {
                    let bytes = self.read_blob(&digest, None)?;
                    let m = Manifest::parse(&bytes, None, name_or_digest)?;
                    let mt = match m {
                        Manifest::Index(_) => media::OCI_INDEX,
                        Manifest::Image(_) => media::OCI_MANIFEST,
                    };
                    let mt = media_type_of(&bytes).unwrap_or_else(|| mt.to_string());
                    return Ok(Descriptor::new(MediaType::from(mt.as_str()), bytes.len() as u64, digest));
                }
            }
        }
        Err(StoreError::NoSuchImage(name_or_digest.to_string()))
    }

    /// Deletes blobs no tag reaches and leftovers in tmp/. Waits until no
    /// other kiln process has the store open.
    pub fn prune(&self) -> Result<PruneReport> {
        let path = self.root.join("gc.lock");
        lock(&self.gc_lock, LockKind::Exclusive).map_err(io_err(&path))?;
        let result = self.prune_locked();
        lock(&self.gc_lock, LockKind::Shared).map_err(io_err(&path))?;
        result
    }

    /// Like [`Store::prune`], but returns None at once when another process
    /// has the store open.
    pub fn try_prune(&self) -> Result<Option<PruneReport>> {
        let path = self.root.join("gc.lock");
        match lock(&self.gc_lock, LockKind::TryExclusive) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        }
        let result = self.prune_locked();
        lock(&self.gc_lock, LockKind::Shared).map_err(io_err(&path))?;
        result.map(Some)
    }

    fn prune_locked(&self) -> Result<PruneReport> {
        let mut keep = HashSet::new();
        for (_, d) in self.read_index()? {
            // A tag whose blobs were damaged still protects what remains.
            let mut out = Vec::new();
            let _ = self.walk(&d, &mut keep, &mut out);
        }
        let mut report = PruneReport::default();
        for entry in fs::read_dir(&self.blobs).map_err(io_err(&self.blobs))? {
            let entry = entry.map_err(io_err(&self.blobs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let keep_it = digest::parse(&format!("sha256:{name}")).map(|d| keep.contains(&d)).unwrap_or(false);
            if !keep_it {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
                report.blobs += 1;
                report.bytes += len;
            }
        }
        // Stamps and layer indexes of blobs that are gone.
        for entry in fs::read_dir(&self.verified).into_iter().flatten().flatten() {
            if !self.blobs.join(entry.file_name()).exists() {
                let _ = fs::remove_file(entry.path());
            }
        }
        for format in fs::read_dir(self.root.join(LAYER_INDEX_DIR)).into_iter().flatten().flatten() {
            for entry in fs::read_dir(format.path()).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.strip_suffix(".json").is_some_and(|hex| self.blobs.join(hex).exists()) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        (report.partial_files, report.partial_bytes) = self.sweep_tmp();
        Ok(report)
    }

    /// Removes everything in tmp/; the caller holds gc.lock exclusively, and
    /// every writer holds it shared, so nothing there is in use. Returns the
    /// files and bytes removed. Best effort: what cannot be removed stays for
    /// the next sweep.
    fn sweep_tmp(&self) -> (usize, u64) {
        let (mut files, mut bytes) = (0, 0);
        for entry in fs::read_dir(&self.tmp).into_iter().flatten().flatten() {
            let p = entry.path();
            let (f, b) = tree_size(&p);
            if if p.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) }.is_ok() {
                files += f;
                bytes += b;
            }
        }
        (files, bytes)
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn read_index(&self) -> Result<BTreeMap<String, Descriptor>> {
        let path = self.index_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let index: oci_spec::image::ImageIndex =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::CorruptIndex { path: path.clone(), source })?;
        let mut tags = BTreeMap::new();
        for d in index.manifests() {
            if let Some(name) = d.annotations().as_ref().and_then(|a| a.get(REF_NAME_ANNOTATION)) {
                let mut plain = d.clone();
                plain.set_annotations(None);
                tags.insert(name.clone(), plain);
            }
        }
        Ok(tags)
    }

    fn update_index(&self, change: impl FnOnce(&mut BTreeMap<String, Descriptor>) -> Result<()>) -> Result<()> {
        let lock_path = self.root.join("index.lock");
        let lock_file = open_lock(&lock_path)?;
        lock(&lock_file, LockKind::Exclusive).map_err(io_err(&lock_path))?;
        let mut tags = self.read_index()?;
        change(&mut tags)?;
        let manifests: Vec<Descriptor> = tags
            .into_iter()
            .map(|(name, mut d)| {
                d.set_annotations(Some(HashMap::from([(REF_NAME_ANNOTATION.to_string(), name)])));
                d
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": manifests,
        });
        let bytes = serde_json::to_vec_pretty(&index).expect("index serialises");
        write_atomic(&self.tmp, &self.index_path(), &bytes)
        // lock_file drops here, releasing the lock after the rename.
    }
}

/// The `mediaType` a manifest document declares about itself.
pub fn media_type_of(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Probe>(bytes).ok()?.media_type
}

/// Blobs of one pull or import, staged in tmp/ until all of them are verified.
pub struct Ingest<'s> {
    store: &'s Store,
    dir: TempDir,
}

impl Ingest<'_> {
    pub fn store(&self) -> &Store {
        self.store
    }

    /// Whether the blob is in the store or already staged here.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.store.has_blob(digest) || self.is_staged(digest)
    }

    /// Like [`Ingest::has_blob`], but a stored blob counts only when it
    /// is intact, so that a pull repairs a damaged one.
    pub fn has_intact_blob(&self, descriptor: &Descriptor) -> bool {
        self.is_staged(descriptor.digest()) || self.store.has_intact_blob(descriptor)
    }

    fn is_staged(&self, digest: &Digest) -> bool {
        digest::sha256_hex(digest).map(|h| self.dir.path().join(h).is_file()).unwrap_or(false)
    }

    pub fn blob_writer(&self) -> Result<BlobWriter> {
        BlobWriter::new(&self.store.tmp, self.dir.path().to_path_buf(), self.store.verified.clone())
    }

    pub fn put_bytes(&self, bytes: &[u8], media_type: MediaType, expected: Option<(&Digest, u64)>) -> Result<Descriptor> {
        let mut w = self.blob_writer()?;
        w.write_all(bytes).map_err(io_err(&self.store.tmp))?;
        w.commit(media_type, expected)
    }

    /// Reads a staged (or stored) blob, verified.
    pub fn read_blob(&self, digest: &Digest, size: Option<u64>) -> Result<Vec<u8>> {
        let staged = self.dir.path().join(digest::sha256_hex(digest)?);
        if staged.is_file() {
            let bytes = fs::read(&staged).map_err(io_err(&staged))?;
            verify_bytes(&bytes, digest, size)?;
            return Ok(bytes);
        }
        self.store.read_blob(digest, size)
    }

    /// Moves every staged blob into the store. Tag afterwards with [`Store::tag`].
    pub fn commit(self) -> Result<()> {
        let dir = self.dir.path();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let dest = self.store.blobs.join(entry.file_name());
            fs::rename(entry.path(), &dest).map_err(io_err(&dest))?;
        }
        Ok(())
    }
}

/// Writes one blob: hashes while writing into a temp file, then on commit
/// checks the digest and renames the file into place.
pub struct BlobWriter {
    inner: HashingWriter<BufWriter<NamedTempFile>>,
    dest_dir: PathBuf,
    verified: PathBuf,
}

impl BlobWriter {
    fn new(tmp: &Path, dest_dir: PathBuf, verified: PathBuf) -> Result<Self> {
        let file = NamedTempFile::new_in(tmp).map_err(io_err(tmp))?;
        Ok(Self { inner: HashingWriter::new(BufWriter::with_capacity(1 << 20, file)), dest_dir, verified })
    }

    pub fn written(&self) -> u64 {
        self.inner.written()
    }

    /// Finishes the blob. With `expected`, a digest or size mismatch is an
    /// error and the content is discarded.
    pub fn commit(self, media_type: MediaType, expected: Option<(&Digest, u64)>) -> Result<Descriptor> {
        let (digest, size, buf) = self.inner.finish();
        let tmp_path = buf.get_ref().path().to_path_buf();
        let file = buf.into_inner().map_err(|e| io_err(&tmp_path)(e.into_error()))?;
        if let Some((want, want_size)) = expected {
            if &digest != want || size != want_size {
                return Err(StoreError::DigestMismatch {
                    digest: want.to_string(),
                    actual: digest.to_string(),
                    actual_size: size,
                    expected_size: want_size,
                });
            }
        }
        file.as_file().sync_data().map_err(io_err(&tmp_path))?;
        let name = digest::sha256_hex(&digest)?;
        let dest = self.dest_dir.join(name);
        file.persist(&dest).map_err(|e| io_err(&dest)(e.error))?;
        // The content was just hashed. An ingest's rename into blobs/ keeps
        // the inode and mtime, so the stamp stays valid there.
        if let Ok(meta) = fs::metadata(&dest) {
            let _ = write_stamp(&self.verified, &self.verified.join(name), &file_stamp(&meta));
        }
        Ok(Descriptor::new(media_type, size, digest))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_atomic(tmp: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = NamedTempFile::new_in(tmp).map_err(io_err(tmp))?;
    f.write_all(bytes).map_err(io_err(tmp))?;
    f.as_file().sync_data().map_err(io_err(tmp))?;
    f.persist(dest).map_err(|e| io_err(dest)(e.error))?;
    Ok(())
}

/// What changes when a file is written to or replaced: its size, its
/// modification time and (on Unix) its inode.
fn file_stamp(meta: &fs::Metadata) -> String {
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let ino = 0u64;
    format!("{}:{mtime}:{ino}", meta.len())
}

/// A stamp is a few bytes, written in place: one cut short by a crash just
/// fails to match, and the blob is read again.
fn write_stamp(dir: &Path, path: &Path, stamp: &str) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(path, stamp)
}

fn open_lock(path: &Path) -> Result<File> {
    fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(io_err(path))
}

pub(crate) enum LockKind {
    Shared,
    TryShared,
    Exclusive,
    TryExclusive,
}

/// Takes an advisory lock on `file` (flock on Unix), waiting unless a `Try` kind.
#[cfg(unix)]
pub(crate) fn lock(file: &File, kind: LockKind) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let op = match kind {
        LockKind::Shared => libc::LOCK_SH,
        LockKind::TryShared => libc::LOCK_SH | libc::LOCK_NB,
        LockKind::Exclusive => libc::LOCK_EX,
        LockKind::TryExclusive => libc::LOCK_EX | libc::LOCK_NB,
    };
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Windows locks stack instead of converting (a handle holding the lock
/// exclusively that asks for it shared holds both), so the old lock is
/// dropped first, as flock's conversion does; like flock's, that is not atomic.
// File::lock is std's portable lock, stable since 1.89: non-Unix builds need that toolchain.
#[cfg(not(unix))]
#[allow(clippy::incompatible_msrv)]
pub(crate) fn lock(file: &File, kind: LockKind) -> io::Result<()> {
    let _ = file.unlock();
    match kind {
        LockKind::Shared => file.lock_shared(),
        LockKind::TryShared => file.try_lock_shared().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => io::ErrorKind::WouldBlock.into(),
            std::fs::TryLockError::Error(e) => e,
        }),
        LockKind::Exclusive => file.lock(),
        LockKind::TryExclusive => file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => io::ErrorKind::WouldBlock.into(),
            std::fs::TryLockError::Error(e) => e,
        }),
    }
}


/// Files below `path` (or `path` itself) and their total size.
fn tree_size(path: &Path) -> (usize, u64) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| tree_size(&e.path()))
            .fold((0, 0), |(f, b), (f2, b2)| (f + f2, b + b2)),
        Ok(m) => (1, m.len()),
        Err(_) => (0, 0),
    }
}

/// Checks a whole blob against its digest and, when known, its size.
fn verify_bytes(bytes: &[u8], digest: &Digest, size: Option<u64>) -> Result<()> {
    let actual = digest::of_bytes(bytes);
    if &actual != digest || size.is_some_and(|s| s != bytes.len() as u64) {
        return Err(StoreError::DigestMismatch {
            digest: digest.to_string(),
            actual: actual.to_string(),
            actual_size: bytes.len() as u64,
            expected_size: size.unwrap_or(bytes.len() as u64),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("s")).unwrap();
        (dir, s)
    }

    #[test]
    fn blobs_round_trip_and_corruption_is_caught_on_read() {
        let (_d, s) = store();
        let desc = s.put_blob_bytes(b"hello", MediaType::ImageLayer).unwrap();
        assert_eq!(desc.size(), 5);
        assert_eq!(s.read_blob(desc.digest(), Some(5)).unwrap(), b"hello");
        fs::write(s.blob_path(desc.digest()).unwrap(), b"hellO").unwrap();
        assert!(matches!(s.read_blob(desc.digest(), Some(5)), Err(StoreError::DigestMismatch { .. })));
        let mut out = Vec::new();
        assert!(s.get_blob(&desc).unwrap().read_to_end(&mut out).is_err());
    }

    #[test]
    fn commit_with_wrong_expected_digest_leaves_nothing() {
        let (_d, s) = store();
        let want = digest::of_bytes(b"other");
        let mut w = s.blob_writer().unwrap();
        w.write_all(b"hello").unwrap();
        assert!(w.commit(MediaType::ImageLayer, Some((&want, 5))).is_err());
        assert_eq!(fs::read_dir(s.root().join("blobs/sha256")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn dropped_ingest_adds_nothing() {
        let (_d, s) = store();
        {
            let ing = s.begin_ingest().unwrap();
            let d = ing.put_bytes(b"staged", MediaType::ImageLayer, None).unwrap();
            assert!(ing.has_blob(d.digest()));
            assert!(!s.has_blob(d.digest()));
        }
        assert_eq!(fs::read_dir(s.root().join("blobs/sha256")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    }

    // A forgotten writer stands in for a killed one; on Windows its open handle would keep the file.
    #[cfg(unix)]
    #[test]
    fn opening_a_store_nobody_uses_sweeps_what_killed_writers_left() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        let writer = first.blob_writer().unwrap();
        // A second handle while the first one writes leaves its file alone.
        let second = Store::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(&second.tmp).unwrap().count(), 1, "a live writer's file stays");
        drop(second);
        // What kill -9 leaves: the writer's file, and no process that holds the store.
        std::mem::forget(writer);
        drop(first);
        fs::create_dir(dir.path().join("tmp/ingest-killed")).unwrap();
        fs::write(dir.path().join("tmp/ingest-killed/partial"), [0u8; 10]).unwrap();
        let _reopened = Store::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn tag_refuses_incomplete_image_and_prune_keeps_tagged() {
        let (_d, s) = store();
        let layer = s.put_blob_bytes(b"layer", MediaType::ImageLayerGzip).unwrap();
        let config = s.put_blob_bytes(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#, MediaType::ImageConfig).unwrap();
        let missing = Descriptor::new(MediaType::ImageLayerGzip, 3, digest::of_bytes(b"nope"));
        let bad = serde_json::json!({"schemaVersion":2,"mediaType":media::OCI_MANIFEST,"config":config,"layers":[layer, missing]});
        let bad = s.put_json(&bad, MediaType::ImageManifest).unwrap();
        let err = s.tag("x:1", &bad).unwrap_err();
        assert!(matches!(err, StoreError::Incomplete { .. }), "{err}");
        assert!(s.tags().unwrap().is_empty());

        let good = serde_json::json!({"schemaVersion":2,"mediaType":media::OCI_MANIFEST,"config":config,"layers":[layer]});
        let good = s.put_json(&good, MediaType::ImageManifest).unwrap();
        s.tag("x:1", &good).unwrap();
        let orphan = s.put_blob_bytes(b"orphan", MediaType::ImageLayer).unwrap();
        // What a killed pull leaves: a staging directory with a partial blob.
        fs::create_dir(s.tmp.join("ingest-killed")).unwrap();
        fs::write(s.tmp.join("ingest-killed/partial"), [0u8; 1000]).unwrap();
        let report = s.prune().unwrap();
        assert_eq!(report.blobs, 2, "the bad manifest and the orphan go");
        assert_eq!((report.partial_files, report.partial_bytes), (1, 1000), "and the killed pull's file is counted");
        assert_eq!(fs::read_dir(&s.tmp).unwrap().count(), 0);
        assert!(!s.has_blob(orphan.digest()));
        assert!(s.has_blob(layer.digest()) && s.has_blob(config.digest()));
        assert_eq!(s.resolve("x:1").unwrap().digest(), good.digest());
        assert_eq!(s.resolve(&good.digest().digest()[..12]).unwrap().digest(), good.digest());
        let img = s.image(&good, None).unwrap();
        assert_eq!(img.manifest.layers().len(), 1);
        s.untag("x:1").unwrap();
        assert!(matches!(s.untag("x:1"), Err(StoreError::NoSuchImage(_))));
    }

    #[test]
    fn tag_refuses_an_image_whose_blob_was_damaged_in_place() {
        let (_d, s) = store();
        let layer = s.put_blob_bytes(b"layer", MediaType::ImageLayerGzip).unwrap();
        let config = s.put_blob_bytes(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#, MediaType::ImageConfig).unwrap();
        let m = serde_json::json!({"schemaVersion":2,"mediaType":media::OCI_MANIFEST,"config":config,"layers":[layer]});
        let m = s.put_json(&m, MediaType::ImageManifest).unwrap();
        // Committed blobs carry their stamp: checking them reads nothing.
        assert!(s.verified.join(digest::sha256_hex(layer.digest()).unwrap()).is_file());
        s.tag("x:1", &m).unwrap();

        // Rewritten with the same size (a later write: a new mtime).
        let path = s.blob_path(layer.digest()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        fs::write(&path, b"LAYER").unwrap();
        let err = s.tag("x:2", &m).unwrap_err();
        assert!(matches!(&err, StoreError::Damaged { damaged, .. } if damaged == &layer.digest().to_string()), "{err}");
        assert!(err.to_string().contains("pull or build the image again"), "{err}");
        assert!(s.resolve("x:2").is_err(), "nothing tagged");

        // Intact again (a re-pull's write), the check hashes it once and stamps it.
        std::thread::sleep(std::time::Duration::from_millis(50));
        fs::write(&path, b"layer").unwrap();
        s.tag("x:2", &m).unwrap();
        // Prune drops the stamps of the blobs it removes.
        s.untag("x:1").unwrap();
        s.untag("x:2").unwrap();
        s.prune().unwrap();
        assert_eq!(fs::read_dir(&s.verified).unwrap().count(), 0);
    }

    #[test]
    fn concurrent_taggers_lose_no_tags() {
        let (_d, s) = store();
        let config = s.put_blob_bytes(b"{}", MediaType::ImageConfig).unwrap();
        let m = serde_json::json!({"schemaVersion":2,"mediaType":media::OCI_MANIFEST,"config":config,"layers":[]});
        let m = s.put_json(&m, MediaType::ImageManifest).unwrap();
        let root = s.root().to_path_buf();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let root = root.clone();
                let m = m.clone();
                scope.spawn(move || {
                    let s = Store::open(root).unwrap();
                    for i in 0..10 {
                        s.tag(&format!("t{t}:{i}"), &m).unwrap();
                    }
                });
            }
        });
        assert_eq!(s.tags().unwrap().len(), 40);
    }
}
