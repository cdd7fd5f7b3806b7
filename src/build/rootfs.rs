//! A read-only view of an image's merged file system, built from its layer
//! blobs in the store on the host without unpacking anything to disk.
//!
//! Indexing streams each layer blob once through its decompressor and a tar
//! parser, keeping per path the entry's metadata and where its bytes start
//! in the uncompressed tar. Whiteouts (`.wh.<name>`) and opaque markers
//! (`.wh..wh..opq`) hide what the layers below hold, as the OCI image spec
//! says. Paths from a layer are normalised (`.` and empty components
//! dropped, no leading `/`); a `..` component is an error, so nothing can
//! point outside the root. Hardlinks become regular files sharing the
//! target's bytes. File contents are only read when asked for.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Bound;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};

use kiln_protocol::{EntryKind, LayerEntry, Xattr};
use oci_spec::image::Descriptor;

use super::layer_tar::ContentSource;
use super::tar_read::TarReader;
use crate::oci::layer::Compression;
use crate::oci::media;
use crate::oci::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading layer {digest}: {source}")]
    Layer { digest: String, source: io::Error },
    #[error("{path}: {message}")]
    Path { path: String, message: String },
}

fn path_err(path: &str, message: impl Into<String>) -> RootfsError {
    RootfsError::Path { path: path.to_string(), message: message.into() }
}

/// Symlinks followed while resolving one path before it counts as a loop
/// (Linux gives up at 40).
const MAX_SYMLINKS: usize = 40;

/// Where a regular file's bytes are: a layer (index into `layers`) and the
/// offset of the content in its uncompressed tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Content {
    layer: usize,
    offset: u64,
}

#[derive(Debug, Clone)]
struct Node {
    entry: LayerEntry,
    content: Option<Content>,
}

/// The merged view: every path's final entry after whiteouts.
#[derive(Debug, Default, Clone)]
pub struct LayerStack {
    /// Keyed by the path with `/` replaced by NUL, so the map's order is
    /// component order and a subtree is one contiguous range.
    nodes: BTreeMap<String, Node>,
    layers: Vec<Descriptor>,
}

fn key(path: &str) -> String {
    path.replace('/', "\0")
}

/// The range of keys strictly below `path` ("" is the root).
fn below(path: &str) -> (Bound<String>, Bound<String>) {
    if path.is_empty() {
        return (Bound::Unbounded, Bound::Unbounded);
    }
    let k = key(path);
    (Bound::Included(format!("{k}\0")), Bound::Excluded(format!("{k}\u{1}")))
}

/// Normalises a path for lookups: leading and repeated `/` and `.`
/// components go; `..` is kept for [`LayerStack::resolve`] to handle.
fn lookup_path(path: &str) -> String {
    path.split('/').filter(|c| !c.is_empty() && *c != ".").collect::<Vec<_>>().join("/")
}

/// Normalises a path read from a layer; `..` is refused.
fn layer_path(raw: &str) -> Result<String, RootfsError> {
    let mut parts = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(path_err(raw, "a layer path with `..` would escape the root")),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

impl LayerStack {
    pub fn empty() -> Self {
        Self::default()
    }

    /// Indexes `layers` (bottom first) in one streaming pass each.
    pub fn open(store: &Store, layers: &[Descriptor]) -> Result<Self, RootfsError> {
        let mut stack = Self::empty();
        for layer in layers {
            stack.push(store, layer)?;
        }
        Ok(stack)
    }

    /// Adds a layer on top (a step's new layer) without re-reading the ones below.
    pub fn push(&mut self, store: &Store, layer: &Descriptor) -> Result<(), RootfsError> {
        let index = self.layers.len();
        let parsed = {
            let layer_err = |source| RootfsError::Layer { digest: layer.digest().to_string(), source };
            let compression = compression_of(layer)?;
            let mut raw = BufReader::with_capacity(1 << 16, store.get_blob(layer)?);
            let parsed = parse_layer(decompress(&mut raw, compression).map_err(layer_err)?, index)?;
            // Read to the end so the blob's digest is checked: a corrupt layer is never indexed.
            io::copy(&mut raw, &mut io::sink()).map_err(layer_err)?;
            parsed
        };
        self.layers.push(layer.clone());
        self.apply(parsed)
    }

    /// Applies one parsed layer: whiteouts and opaque markers hide the
    /// lower layers' entries only, then the layer's entries go on top.
    fn apply(&mut self, layer: ParsedLayer) -> Result<(), RootfsError> {
        for dir in &layer.opaque {
            self.remove_below(dir);
        }
        for path in &layer.whiteouts {
            self.nodes.remove(&key(path));
            self.remove_below(path);
        }
        let mut added: HashMap<String, Node> = HashMap::new();
        for item in layer.items {
            let node = match item {
                Item::Node(node) => node,
                Item::Hardlink { mut entry, target } => {
                    let found = added.get(&target).or_else(|| self.nodes.get(&key(&target)));
                    match found {
                        Some(Node { entry: t, content: Some(c) }) => {
                            entry.kind = t.kind.clone();
                            entry.mode = t.mode;
                            entry.uid = t.uid;
                            entry.gid = t.gid;
                            entry.mtime = t.mtime;
                            entry.xattrs = t.xattrs.clone();
                            Node { entry, content: Some(*c) }
                        }
                        _ => return Err(path_err(&entry.path, format!("hardlink to {target}, which is not a regular file below it"))),
                    }
                }
            };
            let path = node.entry.path.clone();
            let k = key(&path);
            let replaces_dir = self.nodes.get(&k).is_some_and(|n| matches!(n.entry.kind, EntryKind::Dir { .. }));
            if replaces_dir && !matches!(node.entry.kind, EntryKind::Dir { .. }) {
                self.remove_below(&path);
            }
            added.insert(path, node.clone());
            self.nodes.insert(k, node);
        }
        Ok(())
    }

    fn remove_below(&mut self, path: &str) {
        let (lo, hi) = below(path);
        let doomed: Vec<String> = self.nodes.range((lo, hi)).map(|(k, _)| k.clone()).collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
    }

    /// The entry at `path` (relative, normalised), symlinks not followed.
    pub fn entry(&self, path: &str) -> Option<&LayerEntry> {
        self.nodes.get(&key(&lookup_path(path))).map(|n| &n.entry)
    }

    /// `path` with every symlink in it resolved, confined to the root
    /// (`..` never climbs above it; absolute link targets start at it).
    /// The result need not exist. Errors on a symlink loop.
    pub fn resolve(&self, path: &str) -> Result<String, RootfsError> {
        let mut done: Vec<String> = Vec::new();
        // Components still to walk, next one last.
        let mut todo: Vec<String> = path.split('/').rev().map(str::to_string).collect();
        let mut followed = 0;
        while let Some(c) = todo.pop() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    done.pop();
                    continue;
                }
                _ => {}
            }
            done.push(c);
            let here = done.join("/");
            if let Some(Node { entry: LayerEntry { kind: EntryKind::Symlink { target }, .. }, .. }) = self.nodes.get(&key(&here)) {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(path_err(path, "too many levels of symbolic links"));
                }
                done.pop();
                if target.starts_with('/') {
                    done.clear();
                }
                todo.extend(target.split('/').rev().map(str::to_string));
            }
        }
        Ok(done.join("/"))
    }

    /// The content of the regular file at `path` (symlinks followed), if any.
    pub fn read_file(&self, store: &Store, path: &str) -> Result<Option<Vec<u8>>, RootfsError> {
        let resolved = self.resolve(path)?;
        let Some(Node { entry: LayerEntry { kind: EntryKind::File { size, .. }, .. }, content: Some(c) }) =
            self.nodes.get(&key(&resolved))
        else {
            return Ok(None);
        };
        let layer = &self.layers[c.layer];
        let layer_err = |source| RootfsError::Layer { digest: layer.digest().to_string(), source };
        let mut raw = BufReader::with_capacity(1 << 16, store.get_blob(layer)?);
        let mut tar = decompress(&mut raw, compression_of(layer)?).map_err(layer_err)?;
        skip(&mut tar, c.offset).map_err(layer_err)?;
        let mut out = Vec::with_capacity(*size as usize);
        tar.take(*size).read_to_end(&mut out).map_err(layer_err)?;
        if out.len() as u64 != *size {
            return Err(layer_err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{resolved} is cut short"))));
        }
        Ok(Some(out))
    }

    /// Entries at and below `path` (relative, normalised; "" is the root), sorted.
    pub fn walk(&self, path: &str) -> Vec<&LayerEntry> {
        let path = lookup_path(path);
        let mut out = Vec::new();
        if let Some(n) = self.nodes.get(&key(&path)) {
            out.push(&n.entry);
        }
        let (lo, hi) = below(&path);
        out.extend(self.nodes.range((lo, hi)).map(|(_, n)| &n.entry));
        out
    }

    /// Copies the contents of the given regular-file paths into a private
    /// spool file (each layer blob read once), to feed [`super::layer_tar::write_layer`].
    ///
    /// The returned source answers `open` for entries whose `path` is one of
    /// `paths` (symlinks not followed); a caller writing the files under
    /// other names maps its entries back to these paths.
    pub fn spool(&self, store: &Store, paths: &[String]) -> Result<Box<dyn ContentSource>, RootfsError> {
        let mut wanted: BTreeMap<Content, (u64, Vec<String>)> = BTreeMap::new();
        for p in paths {
            let path = lookup_path(p);
            match self.nodes.get(&key(&path)) {
                Some(Node { entry: LayerEntry { kind: EntryKind::File { size, .. }, .. }, content: Some(c) }) => {
                    wanted.entry(*c).or_insert_with(|| (*size, Vec::new())).1.push(path);
                }
                _ => return Err(path_err(&path, "not a regular file in this file system")),
            }
        }
        let tmp = store.root().join("tmp");
        let file = tempfile::tempfile_in(&tmp).map_err(|source| StoreError::Io { path: tmp.clone(), source })?;
        let spool_err = |source| StoreError::Io { path: tmp.clone(), source };
        let mut out = BufWriter::with_capacity(1 << 17, &file);
        let mut index = HashMap::new();
        let mut at = 0u64;
        // Offsets are sorted per layer, so each blob is streamed once, front to back.
        let mut by_layer: BTreeMap<usize, Vec<(u64, u64, Vec<String>)>> = BTreeMap::new();
        for (c, (size, names)) in wanted {
            by_layer.entry(c.layer).or_default().push((c.offset, size, names));
        }
        for (layer_index, files) in by_layer {
            let layer = &self.layers[layer_index];
            let layer_err = |source| RootfsError::Layer { digest: layer.digest().to_string(), source };
            let mut raw = BufReader::with_capacity(1 << 16, store.get_blob(layer)?);
            let mut tar = decompress(&mut raw, compression_of(layer)?).map_err(layer_err)?;
            let mut pos = 0u64;
            for (offset, size, names) in files {
                skip(&mut tar, offset - pos).map_err(layer_err)?;
                let n = io::copy(&mut (&mut tar).take(size), &mut out).map_err(|e| match e.kind() {
                    io::ErrorKind::WriteZero => RootfsError::Store(spool_err(e)),
                    _ => layer_err(e),
                })?;
                if n != size {
                    return Err(layer_err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{} is cut short", names[0]))));
                }
                pos = offset + size;
                for name in names {
                    index.insert(name, (at, size));
                }
                at += size;
            }
        }
        out.flush().map_err(spool_err)?;
        drop(out);
        Ok(Box::new(Spool { file, index }))
    }
}

/// File contents copied out of layer blobs into one unnamed temp file
/// (gone when dropped, even if kiln is killed).
struct Spool {
    file: File,
    index: HashMap<String, (u64, u64)>,
}

impl ContentSource for Spool {
    fn open(&mut self, entry: &LayerEntry) -> io::Result<Box<dyn Read + '_>> {
        let path = lookup_path(&entry.path);
        let &(offset, size) = self
            .index
            .get(&path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{path} was not spooled")))?;
        let mut f = &self.file;
        f.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(f.take(size)))
    }
}

fn compression_of(layer: &Descriptor) -> Result<Compression, RootfsError> {
    media::layer_compression(layer.media_type().as_ref()).ok_or_else(|| RootfsError::Layer {
        digest: layer.digest().to_string(),
        source: io::Error::new(io::ErrorKind::InvalidData, format!("unsupported layer media type {}", layer.media_type())),
    })
}

fn decompress<'a, R: io::BufRead + 'a>(raw: R, compression: Compression) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(raw),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(raw)?),
    })
}

fn skip(r: &mut dyn Read, n: u64) -> io::Result<()> {
    let skipped = io::copy(&mut r.take(n), &mut io::sink())?;
    if skipped != n {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the layer ends early"));
    }
    Ok(())
}

enum Item {
    Node(Node),
    Hardlink { entry: LayerEntry, target: String },
}

struct ParsedLayer {
    items: Vec<Item>,
    whiteouts: Vec<String>,
    opaque: Vec<String>,
}

fn parse_layer(reader: Box<dyn Read + '_>, layer: usize) -> Result<ParsedLayer, RootfsError> {
    let mut out = ParsedLayer { items: Vec::new(), whiteouts: Vec::new(), opaque: Vec::new() };
    let mut tar = TarReader::new(BufReader::with_capacity(1 << 16, reader));
    let io_err = |source: io::Error| path_err(&format!("layer {layer}"), format!("reading the tar: {source}"));
    while let Some(m) = tar.next_member().map_err(io_err)? {
        let raw_path = String::from_utf8_lossy(&m.path).into_owned();
        let path = layer_path(&raw_path)?;
        let (parent, name) = match path.rsplit_once('/') {
            Some((p, n)) => (p.to_string(), n.to_string()),
            None => (String::new(), path.clone()),
        };
        if let Some(hidden) = name.strip_prefix(".wh.") {
            if hidden == ".wh..opq" {
                out.opaque.push(parent);
            } else if !hidden.starts_with(".wh.") && !hidden.is_empty() {
                // `.wh..wh.*` other than the opaque marker is aufs bookkeeping: ignored.
                out.whiteouts.push(if parent.is_empty() { hidden.to_string() } else { format!("{parent}/{hidden}") });
            }
            continue;
        }
        if path.is_empty() {
            continue; // the root directory itself
        }
        let link = String::from_utf8_lossy(&m.link).into_owned();
        let mut e = LayerEntry {
            path: path.clone(),
            kind: EntryKind::Fifo,
            mode: m.mode,
            uid: m.uid as u32,
            gid: m.gid as u32,
            mtime: m.mtime,
            mtime_nsec: 0,
            xattrs: m.xattrs.into_iter().map(|(name, value)| Xattr { name, value }).collect(),
        };
        let mut content = None;
        e.kind = match m.kind {
            b'0' | b'\0' | b'7' => {
                content = Some(Content { layer, offset: m.offset });
                EntryKind::File { size: m.size, link: None }
            }
            b'1' => {
                let target = layer_path(&link)?;
                out.items.push(Item::Hardlink { entry: e, target });
                continue;
            }
            b'2' => EntryKind::Symlink { target: link },
            b'3' => EntryKind::CharDevice { major: m.dev.0, minor: m.dev.1 },
            b'4' => EntryKind::BlockDevice { major: m.dev.0, minor: m.dev.1 },
            b'5' => EntryKind::Dir { opaque: false },
            b'6' => EntryKind::Fifo,
            other => return Err(path_err(&path, format!("unsupported tar entry type {:?} in layer", other as char))),
        };
        out.items.push(Item::Node(Node { entry: e, content }));
    }
    Ok(out)
}
