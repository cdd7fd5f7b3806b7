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

use kiln_protocol::confined_path::{self, resolve_lexically, Tree};
use kiln_protocol::{file_name, EntryKind, LayerEntry, Xattr};
use oci_spec::image::Descriptor;
use serde::{Deserialize, Serialize};

mod layer_index;

use super::layer_tar::ContentSource;
use super::tar_read::{Kind, TarReader};
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

/// Where a regular file's bytes are: a layer (index into `layers`) and the
/// offset of the content in its uncompressed tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
struct Content {
    layer: usize,
    offset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
        let parsed = match layer_index::load(store, layer, index) {
            Some(parsed) => parsed,
            None => {
                let layer_err = |source| RootfsError::Layer { digest: layer.digest().to_string(), source };
                let compression = compression_of(layer)?;
                let mut raw = BufReader::with_capacity(1 << 16, store.get_blob(layer)?);
                let parsed = parse_layer(decompress(&mut raw, compression).map_err(layer_err)?, index)?;
                // Read to the end so the blob's digest is checked: a corrupt layer is never indexed.
                io::copy(&mut raw, &mut io::sink()).map_err(layer_err)?;
                layer_index::save(store, layer, &parsed);
                parsed
            }
        };
        self.apply(parsed)?;
        self.layers.push(layer.clone());
        Ok(())
    }

    /// Applies one parsed layer: whiteouts and opaque markers hide the
    /// lower layers' entries only, then the layer's entries go on top.
    /// Hardlinks are resolved first, so a bad layer changes nothing.
    fn apply(&mut self, layer: ParsedLayer) -> Result<(), RootfsError> {
        let nodes = self.resolve_hardlinks(layer.items)?;
        for dir in &layer.opaque {
            self.remove_below(dir);
        }
        for path in &layer.whiteouts {
            self.nodes.remove(&key(path));
            self.remove_below(path);
        }
        for node in nodes {
            let k = key(&node.entry.path);
            let replaces_dir = self.nodes.get(&k).is_some_and(|n| matches!(n.entry.kind, EntryKind::Dir { .. }));
            if replaces_dir && !matches!(node.entry.kind, EntryKind::Dir { .. }) {
                self.remove_below(&node.entry.path);
            }
            self.nodes.insert(k, node);
        }
        Ok(())
    }

    /// Turns hardlinks into files sharing their target's bytes and
    /// metadata (one inode). A target is an earlier member of the same
    /// layer or, as on extraction, a file already in the layers below.
    fn resolve_hardlinks(&self, items: Vec<Item>) -> Result<Vec<Node>, RootfsError> {
        let mut out: Vec<Node> = Vec::with_capacity(items.len());
        let mut files_here: HashMap<String, usize> = HashMap::new();
        for item in items {
            let node = match item {
                Item::Node(node) => node,
                Item::Hardlink { mut entry, target } => {
                    let found = match files_here.get(&target) {
                        Some(&i) => Some(&out[i]),
                        None => self.nodes.get(&key(&target)),
                    };
                    let Some(Node { entry: t, content: Some(c) }) = found else {
                        return Err(path_err(&entry.path, format!("hardlink to {target}, which is not a regular file before it")));
                    };
                    entry.kind = t.kind.clone();
                    entry.mode = t.mode;
                    entry.uid = t.uid;
                    entry.gid = t.gid;
                    entry.mtime = t.mtime;
                    entry.xattrs = t.xattrs.clone();
                    Node { entry, content: Some(*c) }
                }
            };
            if node.content.is_some() {
                files_here.insert(node.entry.path.clone(), out.len());
            } else {
                files_here.remove(&node.entry.path);
            }
            out.push(node);
        }
        Ok(out)
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
        let resolved = resolve_lexically(self, path).map_err(|e| path_err(path, e.to_string()))?;
        Ok(super::slash_path(&resolved))
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

impl Tree for LayerStack {
    fn node(&self, rel: &std::path::Path) -> io::Result<confined_path::Node> {
        Ok(confined_path::Node::of_entry(self.entry(&super::slash_path(rel)).map(|e| &e.kind)))
    }
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

#[derive(Serialize, Deserialize)]
enum Item {
    Node(Node),
    Hardlink { entry: LayerEntry, target: String },
}

#[derive(Serialize, Deserialize)]
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
        let raw_path = file_name::from_bytes(&m.path).into_owned();
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
        let link = file_name::from_bytes(&m.link).into_owned();
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
            Kind::File => {
                content = Some(Content { layer, offset: m.offset });
                EntryKind::File { size: m.size, link: None }
            }
            Kind::HardLink => {
                let target = layer_path(&link)?;
                out.items.push(Item::Hardlink { entry: e, target });
                continue;
            }
            Kind::Symlink => EntryKind::Symlink { target: link },
            Kind::CharDevice => EntryKind::CharDevice { major: m.dev.0, minor: m.dev.1 },
            Kind::BlockDevice => EntryKind::BlockDevice { major: m.dev.0, minor: m.dev.1 },
            Kind::Dir => EntryKind::Dir { opaque: false },
            Kind::Fifo => EntryKind::Fifo,
            Kind::Other(other) => return Err(path_err(&path, format!("unsupported tar entry type {:?} in layer", other as char))),
        };
        out.items.push(Item::Node(Node { entry: e, content }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::layer_tar::tests::{dir, entry, file, MapContents};
    use crate::engine::layer_tar::{write_layer, LayerOptions};
    use crate::oci::digest;
    use std::fs;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path().join("store")).unwrap();
        (d, s)
    }

    fn layer(s: &Store, mut entries: Vec<LayerEntry>, c: &mut MapContents, compression: Compression) -> Descriptor {
        let opts = LayerOptions { compression, ..Default::default() };
        write_layer(s, &mut entries, c, &opts).unwrap().unwrap().descriptor
    }

    fn paths(stack: &LayerStack, at: &str) -> Vec<String> {
        stack.walk(at).iter().map(|e| e.path.clone()).collect()
    }

    /// A base layer and an upper one that deletes, hides and replaces parts of it.
    fn two_layers(s: &Store) -> Vec<Descriptor> {
        let mut c = MapContents::default();
        let base = vec![
            dir("etc"),
            file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", &mut c),
            file("etc/gone", b"bye", &mut c),
            dir("var"),
            dir("var/cache"),
            file("var/cache/old", b"old", &mut c),
            dir("opt"),
            file("opt/x", b"x", &mut c),
            dir("usr"),
            dir("usr/bin"),
            file("usr/bin/tool", b"tool", &mut c),
        ];
        let base = layer(s, base, &mut c, Compression::Gzip);
        let mut c = MapContents::default();
        let upper = vec![
            entry("etc/gone", EntryKind::Whiteout),
            entry("var/cache", EntryKind::Dir { opaque: true }),
            file("var/cache/new", b"new", &mut c),
            file("opt", b"now a file", &mut c),
            entry("usr/bin/alias", EntryKind::Symlink { target: "tool".into() }),
        ];
        let upper = layer(s, upper, &mut c, Compression::Zstd);
        vec![base, upper]
    }

    #[test]
    fn whiteouts_and_opaque_dirs_hide_lower_entries() {
        let (_d, s) = store();
        let stack = LayerStack::open(&s, &two_layers(&s)).unwrap();
        assert!(stack.entry("etc/gone").is_none(), "whiteout hides the lower file");
        assert!(stack.entry("etc/passwd").is_some());
        assert_eq!(paths(&stack, "var"), ["var", "var/cache", "var/cache/new"], "opaque dir hides lower contents only");
        assert!(matches!(stack.entry("var/cache").unwrap().kind, EntryKind::Dir { opaque: false }));
        assert_eq!(paths(&stack, "opt"), ["opt"], "a file replacing a dir drops its children");
        assert_eq!(stack.read_file(&s, "/opt").unwrap().unwrap(), b"now a file");
        assert_eq!(stack.read_file(&s, "var/cache/new").unwrap().unwrap(), b"new");
        assert_eq!(stack.read_file(&s, "/usr/bin/alias").unwrap().unwrap(), b"tool", "symlinks followed");
        assert_eq!(stack.read_file(&s, "etc/gone").unwrap(), None);
        assert_eq!(stack.read_file(&s, "etc").unwrap(), None, "a directory has no content");
        let all = paths(&stack, "");
        assert_eq!(all.len(), 10, "{all:?}");
        assert_eq!(all, {
            let mut sorted = all.clone();
            sorted.sort_by(|a, b| crate::engine::layer_tar::path_order(a, b));
            sorted
        });
    }

    /// The second look at a layer reads its stored index instead of the
    /// blob and sees the same files; a damaged index is indexed again.
    #[test]
    fn layers_are_indexed_once_and_read_back_from_their_index() {
        let (_d, s) = store();
        let layers = two_layers(&s);
        let first = LayerStack::open(&s, &layers).unwrap();
        let index_dir = s.root().join(crate::oci::store::LAYER_INDEX_DIR);
        let formats: Vec<_> = fs::read_dir(&index_dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(formats.len(), 1, "{formats:?}");
        let index = |d: &Descriptor| formats[0].join(format!("{}.json", d.digest().digest()));
        assert!(layers.iter().all(|d| index(d).is_file()), "one index per layer");

        // An index is what the stack is built from: one that lies shows.
        let mut parsed: serde_json::Value = serde_json::from_slice(&fs::read(index(&layers[1])).unwrap()).unwrap();
        parsed["whiteouts"] = serde_json::json!([]);
        fs::write(index(&layers[1]), serde_json::to_vec(&parsed).unwrap()).unwrap();
        let from_index = LayerStack::open(&s, &layers).unwrap();
        assert!(from_index.entry("etc/gone").is_some(), "the stored index was used");

        // Paths that escape the root are refused like unreadable indexes.
        parsed["whiteouts"] = serde_json::json!(["../etc/passwd"]);
        fs::write(index(&layers[1]), serde_json::to_vec(&parsed).unwrap()).unwrap();
        let refused = LayerStack::open(&s, &layers).unwrap();
        assert!(refused.entry("etc/gone").is_none(), "indexed again from the blob");

        fs::write(index(&layers[1]), b"{not json").unwrap();
        let again = LayerStack::open(&s, &layers).unwrap();
        assert_eq!(paths(&again, ""), paths(&first, ""));
        assert_eq!(again.read_file(&s, "var/cache/new").unwrap().unwrap(), b"new", "contents found from the index");
        assert!(serde_json::from_slice::<serde_json::Value>(&fs::read(index(&layers[1])).unwrap()).is_ok(), "indexed again");

        // Pruning the blobs removes their indexes.
        s.prune().unwrap();
        assert!(layers.iter().all(|d| !index(d).exists()));
    }

    #[test]
    fn push_adds_a_layer_on_top() {
        let (_d, s) = store();
        let layers = two_layers(&s);
        let mut stack = LayerStack::open(&s, &layers[..1]).unwrap();
        assert!(stack.entry("etc/gone").is_some());
        stack.push(&s, &layers[1]).unwrap();
        assert!(stack.entry("etc/gone").is_none());
        assert_eq!(stack.read_file(&s, "etc/passwd").unwrap().unwrap(), b"root:x:0:0::/root:/bin/sh\n");
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let (_d, s) = store();
        let mut c = MapContents::default();
        let link = |p: &str, t: &str| entry(p, EntryKind::Symlink { target: t.into() });
        let entries = vec![
            dir("etc"),
            file("etc/passwd", b"pw", &mut c),
            link("a", "../../etc"),
            link("abs", "/etc/passwd"),
            dir("lib"),
            link("lib/up", ".."),
            link("loop1", "loop2"),
            link("loop2", "loop1"),
            link("dangling", "nowhere/file"),
        ];
        let stack = LayerStack::open(&s, &[layer(&s, entries, &mut c, Compression::None)]).unwrap();
        assert_eq!(stack.resolve("/a/passwd").unwrap(), "etc/passwd");
        assert_eq!(stack.resolve("a").unwrap(), "etc");
        assert_eq!(stack.resolve("abs").unwrap(), "etc/passwd");
        assert_eq!(stack.resolve("lib/up/lib/up/a/../etc/./passwd").unwrap(), "etc/passwd");
        assert_eq!(stack.resolve("../../../etc").unwrap(), "etc");
        assert_eq!(stack.resolve("dangling").unwrap(), "nowhere/file", "the result need not exist");
        assert_eq!(stack.resolve("").unwrap(), "");
        let err = stack.resolve("loop1/x").unwrap_err();
        assert!(err.to_string().contains("too many levels of symbolic links"), "{err}");
        assert_eq!(stack.read_file(&s, "a/passwd").unwrap().unwrap(), b"pw");
        assert!(matches!(stack.entry("a").unwrap().kind, EntryKind::Symlink { .. }), "entry does not follow");
    }

    /// A raw USTAR member, for layers kiln's writer would refuse to produce.
    fn raw_member(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, data: &[u8]) {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_mode(0o640);
        h.set_size(data.len() as u64);
        h.set_mtime(5);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn raw_layer(s: &Store, members: &[(&str, u8, &str, &[u8])]) -> Descriptor {
        let mut tar = Vec::new();
        for (name, kind, link, data) in members {
            raw_member(&mut tar, name, *kind, link, data);
        }
        tar.extend_from_slice(&[0; 1024]);
        s.put_blob_bytes(&tar, MediaType::Other(media::OCI_LAYER_TAR.into())).unwrap()
    }

    use oci_spec::image::MediaType;

    #[test]
    fn hardlinks_read_their_targets_content_even_from_lower_layers() {
        let (_d, s) = store();
        let lower = raw_layer(&s, &[("./bin/", b'5', "", b""), ("./bin/busybox", b'0', "", b"BUSYBOX")]);
        let upper = raw_layer(&s, &[("bin/sh", b'1', "bin/busybox", b""), ("/bin/ls", b'1', "./bin/sh", b"")]);
        let stack = LayerStack::open(&s, &[lower, upper]).unwrap();
        for p in ["bin/sh", "bin/ls"] {
            assert_eq!(stack.read_file(&s, p).unwrap().unwrap(), b"BUSYBOX", "{p}");
            assert!(matches!(stack.entry(p).unwrap().kind, EntryKind::File { size: 7, link: None }));
        }
        let bad = raw_layer(&s, &[("bin/new", b'0', "", b"n"), ("x", b'1', "missing", b"")]);
        assert!(LayerStack::open(&s, std::slice::from_ref(&bad)).is_err());
        let mut kept = stack.clone();
        assert!(kept.push(&s, &bad).is_err());
        assert_eq!(paths(&kept, ""), paths(&stack, ""), "a failed push changes nothing");
        assert_eq!(kept.read_file(&s, "bin/ls").unwrap().unwrap(), b"BUSYBOX");
    }

    #[test]
    fn paths_escaping_the_root_are_refused() {
        let (_d, s) = store();
        for name in ["../etc/passwd", "a/../../b", "ok/../x"] {
            let l = raw_layer(&s, &[(name, b'0', "", b"evil")]);
            let err = LayerStack::open(&s, &[l]).unwrap_err();
            assert!(err.to_string().contains(".."), "{name}: {err}");
        }
        let l = raw_layer(&s, &[("x", b'1', "../../etc/shadow", b"")]);
        assert!(LayerStack::open(&s, &[l]).is_err());
    }

    #[test]
    fn binary_xattrs_and_ids_survive_a_round_trip() {
        let (_d, s) = store();
        let mut c = MapContents::default();
        let mut f = file("bin/ping", b"ELF", &mut c);
        f.xattrs = vec![Xattr { name: "security.capability".into(), value: vec![1, 0, 0, 2, 0x0a, 0x20, 0, 0, b'\n'] }];
        f.uid = 5_000_000;
        f.gid = 7;
        f.mode = 0o4755;
        let dev = entry("dev/null", EntryKind::CharDevice { major: 1, minor: 3 });
        let long = format!("{}/{}", "p".repeat(180), "q".repeat(150));
        let entries = vec![dir("bin"), f.clone(), dir("dev"), dev.clone(), file(&long, b"long", &mut c)];
        let stack = LayerStack::open(&s, &[layer(&s, entries, &mut c, Compression::Gzip)]).unwrap();
        let got = stack.entry("bin/ping").unwrap();
        assert_eq!((got.uid, got.gid, got.mode, &got.xattrs), (f.uid, f.gid, f.mode, &f.xattrs));
        assert_eq!(stack.entry("dev/null").unwrap().kind, dev.kind);
        assert_eq!(stack.read_file(&s, &long).unwrap().unwrap(), b"long");
    }

    #[test]
    fn spool_streams_each_layer_once_and_serves_contents() {
        let (_d, s) = store();
        let layers = two_layers(&s);
        let stack = LayerStack::open(&s, &layers).unwrap();
        let want = ["usr/bin/tool", "var/cache/new", "etc/passwd", "opt"];
        let mut spool = stack.spool(&s, &want.map(String::from)).unwrap();
        // (On Windows a temp file has a name until it is closed.)
        if cfg!(unix) {
            assert_eq!(std::fs::read_dir(s.root().join("tmp")).unwrap().count(), 0, "the spool file has no name");
        }
        for p in want.iter().rev() {
            let expected = stack.read_file(&s, p).unwrap().unwrap();
            let mut got = Vec::new();
            spool.open(stack.entry(p).unwrap()).unwrap().read_to_end(&mut got).unwrap();
            assert_eq!(got, expected, "{p}");
        }
        assert!(spool.open(stack.entry("etc").unwrap()).is_err());
        let err = stack.spool(&s, &["usr/bin/alias".to_string()]).err().expect("a symlink is not spooled");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn corrupt_or_unknown_layers_are_errors() {
        let (_d, s) = store();
        let layers = two_layers(&s);
        let path = s.blob_path(layers[1].digest()).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(LayerStack::open(&s, &layers).is_err(), "a corrupt blob is never indexed");
        let odd = Descriptor::new(MediaType::Other("application/x-unknown".into()), 3, digest::of_bytes(b"abc"));
        let err = LayerStack::open(&s, &[odd]).unwrap_err();
        assert!(err.to_string().contains("unsupported layer media type"), "{err}");
    }
}
